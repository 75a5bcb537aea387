//! Usage and credits: `/v1/usage` for the caller, `/admin/usage`, an account's credits and tier, and the
//! billing front end's signed webhook. Thin: extract, ask `Limits` or the store, render.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};
use switchyard_actors::store::{now_ms, UsageRecord};

use super::{client::admit_other, identity, read_limited, Shared};
use crate::auth::{AuditEvent, Principal};
use crate::config::Config;
use crate::error::ApiError;
use crate::limits::webhook::{self, SignatureError};
use crate::limits::{cost_micros, usd, LedgerError};

const BODY_LIMIT: usize = 64 * 1024;
const DEFAULT_SPAN: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// Seen webhook event ids, kept so a replay is refused.
const WEBHOOK_PREFIX: &str = "v1/webhook/";

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/usage", web::get().to(own_usage))
        .route("/admin/usage", web::get().to(admin_usage))
        .route("/admin/accounts/{id}/credits", web::get().to(get_credits))
        .route("/admin/accounts/{id}/credits", web::post().to(add_credits))
        .route("/admin/accounts/{id}/tier", web::put().to(set_tier))
        .route("/billing/webhook", web::post().to(billing_webhook));
}

#[derive(Deserialize)]
struct UsageQuery {
    from: Option<String>,
    to: Option<String>,
    group_by: Option<String>,
    account: Option<String>,
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
fn report(
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
        cost: u64,
    }
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    let mut total = Row::default();
    for r in records {
        let cost = config
            .pricing
            .get(&r.model)
            .map(|p| cost_micros(*p, r.prompt_tokens, r.completion_tokens))
            .unwrap_or(0);
        let answered = u64::from(matches!(r.outcome.as_str(), "ok" | "client_error"));
        for row in [rows.entry(key(r)).or_default(), &mut total] {
            row.requests += answered;
            row.attempts += 1;
            row.prompt += r.prompt_tokens;
            row.completion += r.completion_tokens;
            row.cost += cost;
        }
    }
    let render = |group: Option<&str>, r: &Row| {
        let mut v = json!({
            "requests": r.requests, "attempts": r.attempts, "prompt_tokens": r.prompt,
            "completion_tokens": r.completion, "total_tokens": r.prompt + r.completion,
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

/// The records in the query's span, optionally for one account (or `key:<id>`).
fn records(
    shared: &Shared,
    q: &UsageQuery,
    allowed: &[&str],
    subject: Option<(&Option<String>, Option<&str>)>,
) -> Result<(Vec<UsageRecord>, u64, u64, String), ApiError> {
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
    let mut all = shared
        .store
        .usage_between(from, to)
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
    Ok((all, from, to, group_by))
}

/// `GET /v1/usage?from=&to=&group_by=day|model`: the caller's account (or key) only.
async fn own_usage(
    req: HttpRequest,
    q: web::Query<UsageQuery>,
    shared: web::Data<Shared>,
) -> Result<HttpResponse, ApiError> {
    let principal = identity::principal(&shared, &req)
        .await?
        .ok_or_else(|| ApiError::Unauthenticated("This route needs a credential.".into()))?;
    let admission = match admit_other(&shared, Some(&principal)) {
        Ok(a) => a,
        Err(refused) => return Ok(*refused),
    };
    let result = own_usage_body(&shared, &principal, &q).map(|v| HttpResponse::Ok().json(v));
    Ok(admission.decorate(result))
}

fn own_usage_body(shared: &Shared, p: &Principal, q: &UsageQuery) -> Result<Value, ApiError> {
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
    let (recs, from, to, group_by) = records(
        shared,
        &q,
        &["day", "model"],
        Some((&p.account, p.key_id())),
    )?;
    let config = shared.config();
    let mut v = report(&config, &recs, from, to, &group_by)?;
    v["account"] = json!(p.account);
    if let Some(s) = shared.limits.subject(&config, Some(p)) {
        v["tier"] = json!(s.tier_name);
    }
    if let Some(a) = &p.account {
        let balance = shared
            .limits
            .ledger
            .balance(a)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        v["credits"] = json!({"balance_usd": usd(balance)});
    }
    Ok(v)
}

/// The admin token or an admin-role credential; refused while the admin token is unset.
async fn require_admin(shared: &Shared, req: &HttpRequest) -> Result<Principal, ApiError> {
    if shared.admin_token.is_none() {
        return Err(ApiError::Unauthenticated(
            "The admin API is disabled: set the admin token's variable to enable it.".into(),
        ));
    }
    match identity::principal(shared, req).await? {
        Some(p) if p.admin => Ok(p),
        Some(_) => Err(ApiError::Forbidden(
            "This route needs the admin token or an admin credential.".into(),
        )),
        None => Err(ApiError::Unauthenticated(
            "Admin credentials required.".into(),
        )),
    }
}

/// `GET /admin/usage?from=&to=&group_by=account|profile|model|day&account=`
async fn admin_usage(
    req: HttpRequest,
    q: web::Query<UsageQuery>,
    shared: web::Data<Shared>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&shared, &req).await?;
    let (recs, from, to, group_by) =
        records(&shared, &q, &["account", "profile", "model", "day"], None)?;
    Ok(HttpResponse::Ok().json(report(&shared.config(), &recs, from, to, &group_by)?))
}

fn ledger_error(e: LedgerError) -> ApiError {
    match e {
        LedgerError::Insufficient { balance, needed } => ApiError::invalid(format!(
            "The balance (${}) is smaller than the debit (${}).",
            usd(balance),
            usd(needed)
        )),
        LedgerError::Store(e) => ApiError::Internal(format!("ledger: {e}")),
    }
}

/// `GET /admin/accounts/{id}/credits`: the balance and every transaction, oldest first.
async fn get_credits(
    req: HttpRequest,
    id: web::Path<String>,
    shared: web::Data<Shared>,
) -> Result<HttpResponse, ApiError> {
    require_admin(&shared, &req).await?;
    let ledger = &shared.limits.ledger;
    let balance = ledger.balance(&id).map_err(ledger_error)?;
    let txs = ledger.transactions(&id).map_err(ledger_error)?;
    Ok(HttpResponse::Ok().json(json!({
        "account": *id,
        "balance_micros": balance,
        "balance_usd": usd(balance),
        "tier": shared.limits.tier_override(&id),
        "transactions": txs,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreditsBody {
    /// Positive adds, negative removes (never below zero).
    amount_usd: f64,
    note: Option<String>,
}

fn usd_to_micros(amount: f64) -> Result<i64, ApiError> {
    if !amount.is_finite() || amount.abs() > 1e9 {
        return Err(ApiError::InvalidRequest {
            message: "`amount_usd` must be a number between -1e9 and 1e9.".into(),
            param: Some("amount_usd"),
            code: None,
        });
    }
    // Bounded above, so the cast cannot wrap.
    #[allow(clippy::cast_possible_truncation)]
    Ok((amount * 1e6).round() as i64)
}

async fn json_body<T: serde::de::DeserializeOwned>(
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<T, ApiError> {
    let body = read_limited(req, payload, BODY_LIMIT).await?;
    serde_json::from_slice(&body).map_err(|e| ApiError::invalid(format!("Invalid JSON body: {e}")))
}

/// `POST /admin/accounts/{id}/credits {amount_usd, note?}`
async fn add_credits(
    req: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
    shared: web::Data<Shared>,
) -> Result<HttpResponse, ApiError> {
    let admin = require_admin(&shared, &req).await?;
    let body: CreditsBody = json_body(&req, payload).await?;
    let micros = usd_to_micros(body.amount_usd)?;
    let tx = shared
        .limits
        .ledger
        .adjust(&id, micros, body.note)
        .map_err(ledger_error)?;
    flush(&shared).await?;
    shared.auth.audit(
        AuditEvent::AdminAction,
        true,
        &admin.actor(),
        Some(format!("account:{id}")),
        None,
        Some(format!("credits {} USD", usd_signed(micros))),
    );
    Ok(HttpResponse::Ok().json(json!({
        "account": *id,
        "balance_usd": usd(tx.balance_micros),
        "transaction": tx,
    })))
}

fn usd_signed(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    format!("{sign}{}", usd(micros.unsigned_abs()))
}

async fn flush(shared: &Shared) -> Result<(), ApiError> {
    shared
        .store
        .flush()
        .await
        .map_err(|e| ApiError::Internal(format!("flush: {e}")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TierBody {
    /// A tier under `tiers:`, or null to fall back to the key's or account's own.
    tier: Option<String>,
}

/// Sets an account's tier after checking it exists.
fn apply_tier(shared: &Shared, account: &str, tier: Option<&str>) -> Result<(), ApiError> {
    if let Some(t) = tier {
        if !shared.config().tiers.contains_key(t) {
            return Err(ApiError::InvalidRequest {
                message: format!("Unknown tier `{t}`: it is not under `tiers:`."),
                param: Some("tier"),
                code: None,
            });
        }
    }
    shared
        .limits
        .set_tier(account, tier)
        .map_err(|e| ApiError::Internal(format!("tier: {e}")))
}

/// `PUT /admin/accounts/{id}/tier {tier}`
async fn set_tier(
    req: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
    shared: web::Data<Shared>,
) -> Result<HttpResponse, ApiError> {
    let admin = require_admin(&shared, &req).await?;
    let body: TierBody = json_body(&req, payload).await?;
    apply_tier(&shared, &id, body.tier.as_deref())?;
    flush(&shared).await?;
    shared.auth.audit(
        AuditEvent::AdminAction,
        true,
        &admin.actor(),
        Some(format!("account:{id}")),
        None,
        Some(format!(
            "tier {}",
            body.tier.as_deref().unwrap_or("(cleared)")
        )),
    );
    Ok(HttpResponse::Ok().json(json!({"account": *id, "tier": body.tier})))
}

/// A billing front end's event.
#[derive(Deserialize)]
struct WebhookEvent {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    data: WebhookData,
}

#[derive(Deserialize)]
struct WebhookData {
    account: String,
    tier: Option<String>,
    amount_usd: Option<f64>,
}

/// `POST /billing/webhook`: `subscription.updated` {account, tier}, `subscription.deleted` {account},
/// `credits.purchased` {account, amount_usd}. Signed with `Switchyard-Signature`; replays are refused.
async fn billing_webhook(
    req: HttpRequest,
    payload: web::Payload,
    shared: web::Data<Shared>,
) -> Result<HttpResponse, ApiError> {
    let Some(secret) = std::env::var(webhook::SECRET_ENV)
        .ok()
        .filter(|s| !s.is_empty())
    else {
        return Err(ApiError::NotFound(format!(
            "The billing webhook is disabled: set {}.",
            webhook::SECRET_ENV
        )));
    };
    let body = read_limited(&req, payload, BODY_LIMIT).await?;
    let header = req
        .headers()
        .get(webhook::SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if let Err(e) = webhook::verify(secret.as_bytes(), header, &body, now) {
        let audit_detail = match e {
            SignatureError::Stale => "stale timestamp",
            SignatureError::Mismatch => "bad signature",
            SignatureError::Malformed => "malformed signature",
        };
        shared.auth.audit(
            AuditEvent::AdminAction,
            false,
            "billing_webhook",
            None,
            req.peer_addr().map(|a| a.ip().to_string()).as_deref(),
            Some(audit_detail.into()),
        );
        return Err(ApiError::Unauthenticated(format!("Webhook refused: {e}.")));
    }
    let Some(event) = webhook::handled_event::<WebhookEvent>(&body)
        .map_err(|e| ApiError::invalid(format!("Invalid event: {e}")))?
    else {
        return Ok(HttpResponse::Ok().json(json!({"received": true, "ignored": true})));
    };
    // Claim the id atomically: of two identical deliveries racing, exactly one gets through.
    let seen = shared
        .limits
        .ledger
        .tree()
        .compare_and_swap(
            format!("{WEBHOOK_PREFIX}{}", event.id),
            None as Option<&[u8]>,
            Some(now.to_string().as_bytes()),
        )
        .map_err(|e| ApiError::Internal(format!("webhook: {e}")))?;
    if seen.is_err() {
        return Ok(HttpResponse::Conflict().json(json!({"error": {
            "message": format!("Event {} was already processed; replays are refused.", event.id),
            "type": "invalid_request_error", "param": null, "code": "webhook_replay",
        }})));
    }
    let account = &event.data.account;
    let outcome = match event.kind.as_str() {
        "subscription.updated" => match &event.data.tier {
            Some(t) => apply_tier(&shared, account, Some(t)).map(|()| format!("tier {t}")),
            None => Err(ApiError::invalid("subscription.updated needs data.tier")),
        },
        "subscription.deleted" => {
            apply_tier(&shared, account, None).map(|()| "tier cleared".into())
        }
        "credits.purchased" => match event.data.amount_usd {
            Some(a) if a > 0.0 => {
                let micros = usd_to_micros(a)?;
                shared
                    .limits
                    .ledger
                    .adjust(account, micros, Some(format!("webhook {}", event.id)))
                    .map_err(ledger_error)
                    .map(|_| format!("credits {}", usd_signed(micros)))
            }
            _ => Err(ApiError::invalid(
                "credits.purchased needs a positive data.amount_usd",
            )),
        },
        other => Ok(format!("ignored event type {other}")),
    };
    let detail = match outcome {
        Ok(d) => d,
        Err(e) => {
            // Not applied: forget the id so a corrected delivery can be sent again.
            let _ = shared
                .limits
                .ledger
                .tree()
                .remove(format!("{WEBHOOK_PREFIX}{}", event.id));
            return Err(e);
        }
    };
    flush(&shared).await?;
    shared.auth.audit(
        AuditEvent::AdminAction,
        true,
        "billing_webhook",
        Some(format!("account:{account}")),
        None,
        Some(format!("{} {}: {detail}", event.kind, event.id)),
    );
    Ok(HttpResponse::Ok().json(json!({"received": true, "id": event.id})))
}
