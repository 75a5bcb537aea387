//! What a billing front end's events do to an account (the signed webhook delivers them): a tier set or
//! cleared, credits added. Each event id is applied at most once.

use std::time::Duration;

use serde::Deserialize;

use super::shared_tiers::TierError;
use super::{usd, LedgerError, Limits};
use crate::config::Config;
use crate::error::ApiError;
use crate::shared::Resource;

/// A billing front end's event.
#[derive(Debug, Deserialize)]
pub struct BillingEvent {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub data: EventData,
}

/// The fields the known event types read.
#[derive(Debug, Deserialize)]
pub struct EventData {
    pub account: String,
    pub tier: Option<String>,
    pub amount_usd: Option<f64>,
}

/// How long the fleet remembers an event id in Redis: far beyond any billing provider's retries of
/// one event (days), after which the signature's timestamp tolerance refuses a replay of the old
/// delivery anyway.
const SHARED_EVENT_KEEP: Duration = Duration::from_secs(30 * 24 * 3600);

/// Applies `event` once; what it changed, for the audit log. A replay changes nothing and is refused
/// (409), and an event that cannot be applied leaves its id unclaimed so a corrected delivery can follow.
/// With `state.backend: redis` the id is claimed for the whole fleet first (a delivery retried to
/// another replica is a replay too); while Redis cannot be asked the event is refused with 503, so
/// the sender retries it later rather than have two replicas apply it.
pub async fn apply(
    limits: &Limits,
    config: &Config,
    event: &BillingEvent,
    now_secs: u64,
) -> Result<String, ApiError> {
    let shared = limits.shared.as_deref();
    if let Some(shared) = shared {
        let name = format!("billing_event:{}", event.id);
        let claimed = shared
            .claim_once(Resource::BillingEvents, &name, SHARED_EVENT_KEEP)
            .await
            .map_err(|e| {
                shared.set_degraded(Resource::BillingEvents, true);
                ApiError::Unavailable {
                    message: format!(
                        "Billing events cannot be applied now (shared state: {e}); deliver it again later."
                    ),
                    code: "shared_state_unavailable",
                    retry_after: 5,
                }
            })?;
        shared.set_degraded(Resource::BillingEvents, false);
        if !claimed {
            return Err(replay(&event.id));
        }
    }
    let claimed = limits
        .ledger
        .claim_event(&event.id, now_secs)
        .map_err(|e| ApiError::Internal(format!("webhook: {e}")));
    let claimed_here = matches!(claimed, Ok(true));
    let result = match claimed {
        Ok(true) => change(limits, config, event).await,
        Ok(false) => Err(replay(&event.id)),
        Err(e) => Err(e),
    };
    if let Err(e) = &result {
        // Unclaim what this delivery claimed, unless it was refused as a replay (the claim is another
        // delivery's).
        let was_replay = matches!(
            e,
            ApiError::Conflict {
                code: "webhook_replay",
                ..
            }
        );
        if !was_replay {
            if claimed_here {
                if let Err(forget) = limits.ledger.forget_event(&event.id) {
                    tracing::error!(error = %forget, "cannot forget an unapplied billing event id");
                }
            }
            if let Some(shared) = shared {
                let name = format!("billing_event:{}", event.id);
                if let Err(forget) = shared.forget_claim(Resource::BillingEvents, &name).await {
                    tracing::error!(error = %forget, "cannot forget an unapplied billing event id in redis");
                }
            }
        }
    }
    result
}

fn replay(id: &str) -> ApiError {
    ApiError::Conflict {
        message: format!("Event {id} was already processed; replays are refused."),
        code: "webhook_replay",
    }
}

async fn change(
    limits: &Limits,
    config: &Config,
    event: &BillingEvent,
) -> Result<String, ApiError> {
    let account = &event.data.account;
    match event.kind.as_str() {
        "subscription.updated" => match &event.data.tier {
            Some(t) => set_tier(limits, config, account, Some(t))
                .await
                .map(|()| format!("tier {t}")),
            None => Err(ApiError::invalid("subscription.updated needs data.tier")),
        },
        "subscription.deleted" => set_tier(limits, config, account, None)
            .await
            .map(|()| "tier cleared".into()),
        "credits.purchased" => match event.data.amount_usd {
            Some(a) if a > 0.0 => {
                let micros = usd_to_micros(a)?;
                limits
                    .adjust_credits(account, micros, Some(format!("webhook {}", event.id)))
                    .await
                    .map(|_| format!("credits {}", usd_signed(micros)))
            }
            _ => Err(ApiError::invalid(
                "credits.purchased needs a positive data.amount_usd",
            )),
        },
        other => Ok(format!("ignored event type {other}")),
    }
}

/// Sets (or clears) an account's tier after checking the tier exists; with Redis, for the whole
/// fleet, or not at all (503) while Redis cannot take it.
pub async fn set_tier(
    limits: &Limits,
    config: &Config,
    account: &str,
    tier: Option<&str>,
) -> Result<(), ApiError> {
    if let Some(t) = tier {
        if !config.tiers.contains_key(t) {
            return Err(ApiError::InvalidRequest {
                message: format!("Unknown tier `{t}`: it is not under `tiers:`."),
                param: Some("tier"),
                code: None,
            });
        }
    }
    limits
        .set_tier_everywhere(account, tier)
        .await
        .map_err(|e| match e {
            TierError::Shared(e) => ApiError::Unavailable {
                message: format!(
                    "The tier cannot be set for the fleet now (shared state: {e}); try again."
                ),
                code: "shared_state_unavailable",
                retry_after: 5,
            },
            TierError::Store(e) => ApiError::Internal(format!("tier: {e}")),
        })
}

/// Dollars as micro-dollars; refused outside ±1e9 or when not finite.
pub fn usd_to_micros(amount: f64) -> Result<i64, ApiError> {
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

/// Signed micro-dollars as dollars (`-1.500000`).
pub fn usd_signed(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    format!("{sign}{}", usd(micros.unsigned_abs()))
}

/// A ledger error for the admin API and the webhook.
pub fn ledger_error(e: LedgerError) -> ApiError {
    match e {
        LedgerError::Insufficient { balance, needed } => ApiError::invalid(format!(
            "The balance (${}) is smaller than the debit (${}).",
            usd(balance),
            usd(needed)
        )),
        LedgerError::Store(e) => ApiError::Internal(format!("ledger: {e}")),
    }
}
