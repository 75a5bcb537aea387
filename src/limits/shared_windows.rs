//! Request limits counted in Redis for every replica at once (`state.backend: redis`), and the
//! fallback while Redis cannot be asked: each replica alone enforces its share of each limit,
//! `limit × (1 − margin) / replicas`, so the fleet stays under the limit without coordination.
//! A model call with a daily token budget has its windows and its hold decided together, by one
//! script (`shared::admit`).

use std::time::Duration;

use switchyard_actors::store::now_ms;

use super::shared_credits::TokensAt;
use super::{
    request_checks, token_look, window_ms, CallKind, Limits, RateStatus, Refusal, Subject, DAY,
};
use crate::shared::admit::{BudgetAsk, BudgetOutcome};
use crate::shared::{Resource, Shared};

impl Limits {
    /// `admit`, with the request windows in Redis: one round trip counts every limit of the call or
    /// none; the clock and the window are Redis's.
    pub(super) async fn admit_shared(
        &self,
        shared: &Shared,
        s: &Subject,
        kind: CallKind,
    ) -> Result<RateStatus, Box<Refusal>> {
        let checks = request_checks(s, kind);
        if checks.is_empty() {
            return self.admit(s, kind);
        }
        let tokens = {
            let windows = self.windows.lock();
            token_look(windows.get(s.id.as_str()), s, now_ms())
        };
        let spent = tokens.and_then(|(_, spent)| spent);
        let count = kind != CallKind::Uncounted && spent.is_none();
        let window = window_ms(s);
        let answer = match shared.take_windows(&s.id, window, &checks, count).await {
            Ok(a) => {
                shared.set_degraded(Resource::RateLimits, false);
                a
            }
            Err(_) => {
                shared.set_degraded(Resource::RateLimits, true);
                return self.admit_local(s, kind, |limit| shared.local_share(limit));
            }
        };
        let reset = (answer.start_ms + window)
            .saturating_sub(answer.now_ms)
            .div_ceil(1000)
            .max(1);
        let mut status = RateStatus {
            requests: None,
            tokens: tokens.map(|(t, _)| t),
        };
        for ((_, limit), count) in checks.iter().zip(&answer.counts) {
            let remaining = limit.saturating_sub(*count);
            if status.requests.is_none_or(|(_, r, _)| remaining < r) {
                status.requests = Some((*limit, remaining, reset));
            }
        }
        if kind == CallKind::Uncounted {
            return Ok(status);
        }
        if let Some((name, limit)) = answer.full.and_then(|i| checks.get(i)) {
            return Err(self.rate_refusal(s, name, *limit, reset, status));
        }
        if let Some((scope, limit, retry)) = spent {
            return Err(self.rate_refusal(s, scope, limit, retry, status));
        }
        Ok(status)
    }
}

impl Limits {
    /// A model call's request windows and its daily token hold (`tokens`: the budget and the
    /// estimate) decided in Redis by one script: nothing is counted nor held when either refuses,
    /// the request limits answering first. While Redis cannot be asked, each is decided on this
    /// replica's share, as `admit_shared` does and the local budget
    /// (`hold_tokens`) on `local_share` of it. Returns the call's
    /// `X-RateLimit-*` and what it holds, and where.
    pub(super) async fn admit_holding_shared(
        &self,
        shared: &Shared,
        s: &Subject,
        kind: CallKind,
        (tokens, lease): (Option<(u64, u64)>, Duration),
    ) -> Result<(RateStatus, Option<(u64, TokensAt)>), Box<Refusal>> {
        let checks = request_checks(s, kind);
        let Some((limit, estimate)) = tokens else {
            return Ok((self.admit_shared(shared, s, kind).await?, None));
        };
        // As in `admit_shared`: tokens this replica counted alone (while Redis was away) that
        // already spend the budget refuse the call without counting it.
        let spent_here = {
            let windows = self.windows.lock();
            token_look(windows.get(s.id.as_str()), s, now_ms()).and_then(|(_, spent)| spent)
        };
        let count = kind != CallKind::Uncounted && spent_here.is_none();
        let window = window_ms(s);
        let day_ms = u64::try_from(DAY.as_millis()).unwrap_or(u64::MAX);
        let ask = BudgetAsk {
            limit,
            estimate,
            day_ms,
            lease_ms: u64::try_from(lease.as_millis()).unwrap_or(u64::MAX),
            id: uuid::Uuid::new_v4().as_u64_pair().0,
        };
        let degraded = |d: bool| {
            if !checks.is_empty() {
                shared.set_degraded(Resource::RateLimits, d);
            }
            shared.set_degraded(Resource::TokensPerDay, d);
        };
        let a = match shared
            .admit_call(&s.id, (window, &checks), Some(ask), count)
            .await
        {
            Ok(a) => {
                degraded(false);
                a
            }
            Err(_) => {
                degraded(true);
                let status = self.admit_local(s, kind, |l| shared.local_share(l))?;
                let held = self.hold_tokens(s, shared.local_share(limit), estimate)?;
                return Ok((status, Some((held, TokensAt::Local))));
            }
        };
        let reset = (a.start_ms + window)
            .saturating_sub(a.now_ms)
            .div_ceil(1000)
            .max(1);
        let day_reset = (a.day_start_ms + day_ms)
            .saturating_sub(a.now_ms)
            .div_ceil(1000)
            .max(1);
        let before = a.used.saturating_add(a.holding);
        let mut status = RateStatus {
            requests: None,
            // As of the call's start, like the local budget's headers.
            tokens: Some((limit, limit.saturating_sub(before), day_reset)),
        };
        for ((_, limit), count) in checks.iter().zip(&a.counts) {
            let remaining = limit.saturating_sub(*count);
            if status.requests.is_none_or(|(_, r, _)| remaining < r) {
                status.requests = Some((*limit, remaining, reset));
            }
        }
        if let Some((name, limit)) = a.full.and_then(|i| checks.get(i)) {
            return Err(self.rate_refusal(s, name, *limit, reset, status));
        }
        if let Some((scope, limit, retry)) = spent_here {
            return Err(self.rate_refusal(s, scope, limit, retry, status));
        }
        match a.budget {
            BudgetOutcome::Held => {
                let at = TokensAt::Shared {
                    day: a.day_start_ms,
                    id: ask.id,
                };
                Ok((status, Some((a.taken, at))))
            }
            BudgetOutcome::Spent => {
                // Spent by today's tokens: the day's end; else held by calls in flight: soon.
                let retry = if a.used >= limit || a.holding == 0 {
                    day_reset
                } else {
                    1
                };
                status.tokens = Some((limit, 0, day_reset));
                Err(self.rate_refusal(s, "tokens", limit, retry, status))
            }
            BudgetOutcome::None | BudgetOutcome::Looked => Ok((status, None)),
        }
    }
}
