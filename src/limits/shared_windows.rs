//! Request limits counted in Redis for every replica at once (`state.backend: redis`), and the
//! fallback while Redis cannot be asked: each replica alone enforces its share of each limit,
//! `limit × (1 − margin) / replicas`, so the fleet stays under the limit without coordination.
//! The daily token budget stays on each replica's own windows.

use switchyard_actors::store::now_ms;

use super::{request_checks, window_ms, CallKind, Limits, RateStatus, Refusal, Subject};
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
            self.token_look(&windows, s, now_ms())
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
