//! Usage and credits: `/v1/usage` for the caller, `/admin/usage`, an account's credits and tier, and the
//! billing front end's signed webhook. Thin: extract, ask `limits`, render.

use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::json;

use super::extract::{address, json_body, read_limited, Admin, Caller, SMALL_BODY_LIMIT};
use super::respond::metered;
use crate::auth::AuditEvent;
use crate::error::ApiError;
use crate::limits::events::{self, usd_signed, usd_to_micros, BillingEvent};
use crate::limits::usage::{self, UsageQuery};
use crate::limits::usd;
use crate::limits::webhook::{self, SignatureError};
use crate::state::AppState;

type State = web::Data<AppState>;
type Reply = Result<HttpResponse, ApiError>;

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/usage", web::get().to(own_usage))
        .route("/admin/usage", web::get().to(admin_usage))
        .route("/admin/accounts/{id}/credits", web::get().to(get_credits))
        .route("/admin/accounts/{id}/credits", web::post().to(add_credits))
        .route("/admin/accounts/{id}/tier", web::put().to(set_tier))
        .route("/admin/state/reseed", web::post().to(reseed))
        .route("/billing/webhook", web::post().to(billing_webhook));
}

/// `GET /v1/usage?from=&to=&group_by=day|model`: the caller's account (or key) only.
async fn own_usage(caller: Caller, q: web::Query<UsageQuery>, state: State) -> HttpResponse {
    let work = async {
        let config = state.config();
        let shared = state.redis.as_deref();
        let mut v = usage::own_report(
            &config,
            &state.limits,
            &state.recorder,
            &state.store,
            shared,
            &caller.0,
            &q,
        )
        .await?;
        // With the state in Redis the balance is the fleet's, not this replica's ledger's.
        if let (Some(_), Some(account)) = (&state.redis, &caller.0.account) {
            if v.get("credits").is_some() {
                let balance = state.limits.balance_of(account).await?;
                v["credits"] = json!({"balance_usd": usd(balance)});
            }
        }
        Ok(HttpResponse::Ok().json(v))
    };
    metered(&state, &caller, work).await
}

/// `GET /admin/usage?from=&to=&group_by=account|profile|model|day&account=`
async fn admin_usage(_: Admin, q: web::Query<UsageQuery>, state: State) -> Reply {
    let allowed = ["account", "profile", "model", "day"];
    let shared = state.redis.as_deref();
    let span = usage::records(&state.recorder, &state.store, shared, &q, &allowed, None).await?;
    let v = span.report(&state.config())?;
    Ok(HttpResponse::Ok().json(v))
}

/// `GET /admin/accounts/{id}/credits`: the balance and every transaction, oldest first.
async fn get_credits(_: Admin, id: web::Path<String>, state: State) -> Reply {
    let (balance, txs) = state.limits.credits_of(&id).await?;
    Ok(HttpResponse::Ok().json(json!({
        "account": *id,
        "balance_micros": balance,
        "balance_usd": usd(balance),
        "tier": state.limits.tier_override(&id),
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

/// `POST /admin/accounts/{id}/credits {amount_usd, note?}`
async fn add_credits(
    Admin(admin): Admin,
    req: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
    state: State,
) -> Reply {
    let body: CreditsBody = json_body(&req, payload).await?;
    let micros = usd_to_micros(body.amount_usd)?;
    let tx = state.limits.adjust_credits(&id, micros, body.note).await?;
    flush(&state).await?;
    let detail = format!("credits {} USD", usd_signed(micros));
    audit_admin(&state, &admin.actor(), &id, detail);
    Ok(HttpResponse::Ok().json(json!({
        "account": *id,
        "balance_usd": usd(tx.balance_micros),
        "transaction": tx,
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReseedBody {
    /// Account -> the balance to set, for accounts whose balance Redis lost.
    #[serde(default)]
    balances_usd: std::collections::BTreeMap<String, f64>,
}

/// `POST /admin/state/reseed {balances_usd?}`: after Redis lost credits (restored from an old
/// snapshot, or emptied), every replica accepts Redis as it now is, with the given balances set.
/// Until then credits answer 503 on each replica whose high-water mark Redis is behind.
async fn reseed(
    Admin(admin): Admin,
    req: HttpRequest,
    payload: web::Payload,
    state: State,
) -> Reply {
    let body: ReseedBody = json_body(&req, payload).await?;
    let mut balances = Vec::with_capacity(body.balances_usd.len());
    for (account, amount) in &body.balances_usd {
        let micros = u64::try_from(usd_to_micros(*amount)?)
            .map_err(|_| ApiError::invalid("A reseeded balance cannot be negative."))?;
        balances.push((account.clone(), micros));
    }
    let result = state.limits.reseed(&balances).await;
    let detail = format!(
        "reseed of the shared credits: {}",
        match &result {
            Ok(epoch) => format!("epoch {epoch}, {} balances set", balances.len()),
            Err(e) => format!("failed: {e}"),
        }
    );
    state.auth.audit(
        AuditEvent::AdminAction,
        result.is_ok(),
        &admin.actor(),
        Some("state:credits".into()),
        address(&req).as_deref(),
        Some(detail),
    );
    let epoch = result?;
    let set: Vec<_> = balances
        .iter()
        .map(|(a, m)| json!({"account": a, "balance_usd": usd(*m)}))
        .collect();
    Ok(HttpResponse::Ok().json(json!({"epoch": epoch, "balances": set})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TierBody {
    /// A tier under `tiers:`, or null to fall back to the key's or account's own.
    tier: Option<String>,
}

/// `PUT /admin/accounts/{id}/tier {tier}`
async fn set_tier(
    Admin(admin): Admin,
    req: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
    state: State,
) -> Reply {
    let body: TierBody = json_body(&req, payload).await?;
    events::set_tier(&state.limits, &state.config(), &id, body.tier.as_deref()).await?;
    flush(&state).await?;
    let detail = format!("tier {}", body.tier.as_deref().unwrap_or("(cleared)"));
    audit_admin(&state, &admin.actor(), &id, detail);
    Ok(HttpResponse::Ok().json(json!({"account": *id, "tier": body.tier})))
}

/// `POST /billing/webhook`: `subscription.updated` {account, tier}, `subscription.deleted` {account},
/// `credits.purchased` {account, amount_usd}. Signed with `Switchyard-Signature`; replays are refused.
async fn billing_webhook(req: HttpRequest, payload: web::Payload, state: State) -> Reply {
    let Some(secret) = std::env::var(webhook::SECRET_ENV)
        .ok()
        .filter(|s| !s.is_empty())
    else {
        return Err(ApiError::NotFound(format!(
            "The billing webhook is disabled: set {}.",
            webhook::SECRET_ENV
        )));
    };
    let body = read_limited(&req, payload, SMALL_BODY_LIMIT).await?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    verify_signature(&state, &req, secret.as_bytes(), &body, now)?;
    let Some(event) = webhook::handled_event::<BillingEvent>(&body)
        .map_err(|e| ApiError::invalid(format!("Invalid event: {e}")))?
    else {
        return Ok(HttpResponse::Ok().json(json!({"received": true, "ignored": true})));
    };
    let detail = events::apply(&state.limits, &state.config(), &event, now).await?;
    flush(&state).await?;
    let what = Some(format!("{} {}: {detail}", event.kind, event.id));
    let target = Some(format!("account:{}", event.data.account));
    let audit = &state.auth;
    audit.audit(
        AuditEvent::AdminAction,
        true,
        "billing_webhook",
        target,
        None,
        what,
    );
    Ok(HttpResponse::Ok().json(json!({"received": true, "id": event.id})))
}

/// Checks the webhook's signature; a refusal is audited with why.
fn verify_signature(
    state: &AppState,
    req: &HttpRequest,
    secret: &[u8],
    body: &[u8],
    now: u64,
) -> Result<(), ApiError> {
    let header = req
        .headers()
        .get(webhook::SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let Err(e) = webhook::verify(secret, header, body, now) else {
        return Ok(());
    };
    let audit_detail = match e {
        SignatureError::Stale => "stale timestamp",
        SignatureError::Mismatch => "bad signature",
        SignatureError::Malformed => "malformed signature",
    };
    state.auth.audit(
        AuditEvent::AdminAction,
        false,
        "billing_webhook",
        None,
        address(req).as_deref(),
        Some(audit_detail.into()),
    );
    Err(ApiError::Unauthenticated(format!("Webhook refused: {e}.")))
}

fn audit_admin(state: &AppState, actor: &str, account: &str, detail: String) {
    state.auth.audit(
        AuditEvent::AdminAction,
        true,
        actor,
        Some(format!("account:{account}")),
        None,
        Some(detail),
    );
}

async fn flush(state: &AppState) -> Result<(), ApiError> {
    state
        .store
        .flush()
        .await
        .map_err(|e| ApiError::Internal(format!("flush: {e}")))
}
