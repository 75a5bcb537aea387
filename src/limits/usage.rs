//! Usage reports: the attempt records of a span, grouped by day, model, profile or account, with token
//! counts and cost; the caller's own report adds its tier and credit balance. With
//! `state.backend: redis` the records are the whole fleet's (`shared::usage`), and a report says
//! where its records came from in `source`: `fleet`, or `local` while Redis cannot answer.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use actix::Addr;
use serde::Deserialize;
use serde_json::{json, Value};
use switchyard_actors::recorder::{UsageRecorder, WriteUsage};
use switchyard_actors::store::{now_ms, Store, UsageRecord};

use super::{cost_micros, record_usage, usd, Limits};
use crate::auth::Principal;
use crate::config::Config;
use crate::error::ApiError;
use crate::shared::usage::{self as fleet, Source};
use crate::shared::Shared;

const DEFAULT_SPAN: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// A usage query: a span (`from`, `to`), a grouping and, for admins, one account.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct UsageQuery {
    pub from: Option<String>,
    pub to: Option<String>,
    pub group_by: Option<String>,
    pub account: Option<String>,
}

/// `2026-11-01` (a UTC day) or an RFC 3339 time, as Unix milliseconds.
fn parse_time(name: &str, raw: &str) -> Result<u64, ApiError> {
    let t = if raw.len() == 10 {
        humantime::parse_rfc3339(&format!("{raw}T00:00:00Z"))
    } else {
        humantime::parse_rfc3339_weak(raw)
    };
    let t = t.map_err(|_| {
        ApiError::invalid(format!(
            "`{name}` must be a date (2026-11-01) or an RFC 3339 time, not {raw:?}."
        ))
    })?;
    Ok(t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0))
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// The usage report: one row per group, plus the total. Each row sums the raw attempt records.
pub fn report(
    config: &Config,
    records: &[UsageRecord],
    from: u64,
    to: u64,
    group_by: &str,
) -> Result<Value, ApiError> {
    let key = |r: &UsageRecord| -> String {
        match group_by {
            "day" => rfc3339(r.ts_ms)[..10].to_owned(),
            "model" => r.model.clone(),
            "profile" => r.profile.clone(),
            _ => r.account.clone().unwrap_or_else(|| match &r.key_id {
                Some(k) => format!("key:{k}"),
                None => "anonymous".to_owned(),
            }),
        }
    };
    #[derive(Default)]
    struct Row {
        requests: u64,
        attempts: u64,
        prompt: u64,
        completion: u64,
        /// Parts of `prompt` and `completion`, as the records hold them.
        cached: u64,
        cache_write: u64,
        cache_write_1h: u64,
        reasoning: u64,
        cost: u64,
    }
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    let mut total = Row::default();
    for r in records {
        let cost = config
            .price(&r.model, Some(&r.profile))
            .map(|p| cost_micros(p, &record_usage(r)))
            .unwrap_or(0);
        let answered = u64::from(matches!(r.outcome.as_str(), "ok" | "client_error"));
        for row in [rows.entry(key(r)).or_default(), &mut total] {
            row.requests += answered;
            row.attempts += 1;
            row.prompt += r.prompt_tokens;
            row.completion += r.completion_tokens;
            row.cached += r.cached_tokens;
            row.cache_write += r.cache_write_tokens;
            row.cache_write_1h += r.cache_write_1h_tokens;
            row.reasoning += r.reasoning_tokens;
            row.cost += cost;
        }
    }
    let render = |group: Option<&str>, r: &Row| {
        let mut v = json!({
            "requests": r.requests, "attempts": r.attempts, "prompt_tokens": r.prompt,
            "completion_tokens": r.completion, "total_tokens": r.prompt + r.completion,
            "cached_tokens": r.cached, "cache_write_tokens": r.cache_write,
            "cache_write_1h_tokens": r.cache_write_1h, "reasoning_tokens": r.reasoning,
            "cost_usd": usd(r.cost),
        });
        if let Some(g) = group {
            v[group_by] = json!(g);
        }
        v
    };
    Ok(json!({
        "object": "usage",
        "from": rfc3339(from),
        "to": rfc3339(to),
        "group_by": group_by,
        "data": rows.iter().map(|(g, r)| render(Some(g), r)).collect::<Vec<_>>(),
        "total": render(None, &total),
    }))
}

/// The records of a report and where they came from.
pub struct Span {
    pub records: Vec<UsageRecord>,
    pub from: u64,
    pub to: u64,
    pub group_by: String,
    /// `None` in local mode.
    pub source: Option<Source>,
}

impl Span {
    /// The report of these records, with `source` in redis mode.
    pub fn report(&self, config: &Config) -> Result<Value, ApiError> {
        let mut v = report(config, &self.records, self.from, self.to, &self.group_by)?;
        if let Some(s) = self.source {
            v["source"] = json!(s.as_str());
        }
        Ok(v)
    }
}

/// Waits until `recorder` has written every record handed on so far (it gathers them for a few
/// milliseconds first): a reader of the store then sees the records of every response already sent.
pub async fn written(recorder: &Addr<UsageRecorder>) {
    if let Err(e) = recorder.send(WriteUsage).await {
        // The reader still answers, from what the store has.
        tracing::warn!(error = %e, "usage recorder unavailable: recent records may be missing");
    }
}

/// The records in the query's span (the fleet's with Redis), optionally for one account (or
/// `key:<id>`). Asks `recorder` to write what it has gathered first, so the report holds every
/// record of a response sent before it was asked for.
pub async fn records(
    recorder: &Addr<UsageRecorder>,
    store: &Store,
    shared: Option<&Shared>,
    q: &UsageQuery,
    allowed: &[&str],
    subject: Option<(&Option<String>, Option<&str>)>,
) -> Result<Span, ApiError> {
    let to = match &q.to {
        Some(t) => parse_time("to", t)?,
        None => now_ms() + 1,
    };
    let from = match &q.from {
        Some(f) => parse_time("from", f)?,
        None => to.saturating_sub(u64::try_from(DEFAULT_SPAN.as_millis()).unwrap_or(0)),
    };
    let group_by = q.group_by.clone().unwrap_or_else(|| allowed[0].to_owned());
    if !allowed.contains(&group_by.as_str()) {
        return Err(ApiError::InvalidRequest {
            message: format!("`group_by` must be one of: {}.", allowed.join(", ")),
            param: Some("group_by"),
            code: None,
        });
    }
    written(recorder).await;
    let (mut all, source) = fleet::usage_between(shared, store, from, to)
        .await
        .map_err(|e| ApiError::Internal(format!("usage: {e}")))?;
    if let Some((account, key)) = subject {
        all.retain(|r| match account {
            Some(a) => r.account.as_deref() == Some(a),
            None => r.account.is_none() && r.key_id.as_deref() == key,
        });
    }
    if let Some(a) = &q.account {
        all.retain(|r| r.account.as_deref() == Some(a.as_str()));
    }
    Ok(Span {
        records: all,
        from,
        to,
        group_by,
        source,
    })
}

/// The caller's own usage report (`/v1/usage`): its account (or key) only, with its tier and balance.
pub async fn own_report(
    config: &Config,
    limits: &Limits,
    recorder: &Addr<UsageRecorder>,
    store: &Store,
    shared: Option<&Shared>,
    p: &Principal,
    q: &UsageQuery,
) -> Result<Value, ApiError> {
    if p.account.is_none() && p.key_id().is_none() {
        return Err(ApiError::invalid(
            "This credential has no account: use GET /admin/usage.",
        ));
    }
    let q = UsageQuery {
        account: None,
        from: q.from.clone(),
        to: q.to.clone(),
        group_by: q.group_by.clone(),
    };
    let span = records(
        recorder,
        store,
        shared,
        &q,
        &["day", "model"],
        Some((&p.account, p.key_id())),
    )
    .await?;
    let mut v = span.report(config)?;
    v["account"] = json!(p.account);
    if let Some(s) = limits.subject(config, Some(p)) {
        v["tier"] = json!(s.tier_name);
    }
    if let Some(a) = &p.account {
        let balance = limits
            .ledger
            .balance(a)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        v["credits"] = json!({"balance_usd": usd(balance)});
    }
    Ok(v)
}
