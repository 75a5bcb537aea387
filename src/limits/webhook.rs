//! The billing webhook's signature: Stripe-style `t=<unix seconds>,v1=<hex HMAC-SHA256>` over
//! `"<t>.<body>"`, with a timestamp tolerance, and a record of seen event ids so a replay is refused;
//! and which event types it acts on (every other one is acknowledged and ignored).

use serde::de::DeserializeOwned;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "switchyard-signature";
/// The variable holding the shared secret; unset = the webhook is disabled.
pub const SECRET_ENV: &str = "SWITCHYARD_BILLING_WEBHOOK_SECRET";
/// How far a signature's timestamp may be from our clock, either way.
pub const TOLERANCE_SECS: u64 = 300;

/// Why a delivery was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the {SIGNATURE_HEADER} header is missing or malformed")]
    Malformed,
    #[error("the signature's timestamp is more than {TOLERANCE_SECS} s from the server's clock")]
    Stale,
    #[error("the signature does not match")]
    Mismatch,
}

/// The event types the webhook acts on. A billing provider sends many more (`invoice.paid`,
/// `customer.created`...) to the same endpoint, and retries any it does not get a 2xx for.
pub const HANDLED_EVENTS: &[&str] = &[
    "subscription.updated",
    "subscription.deleted",
    "credits.purchased",
];

/// What every delivery has, whatever its type.
#[derive(Deserialize)]
struct Envelope {
    id: String,
    #[serde(rename = "type")]
    kind: String,
}

/// A verified delivery's event as `T` when its type is one of [`HANDLED_EVENTS`] (all of `T`'s fields
/// then required); `Ok(None)` for any other type, which is to be acknowledged and ignored. A body
/// without a string `id` and `type` is an error whatever it holds.
pub fn handled_event<T: DeserializeOwned>(body: &[u8]) -> Result<Option<T>, serde_json::Error> {
    let envelope: Envelope = serde_json::from_slice(body)?;
    if !HANDLED_EVENTS.contains(&envelope.kind.as_str()) {
        tracing::debug!(id = %envelope.id, kind = %envelope.kind, "billing webhook: event type ignored");
        return Ok(None);
    }
    serde_json::from_slice(body).map(Some)
}

/// HMAC-SHA256 (RFC 2104), written out over `sha2` rather than adding a crate for twenty lines.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| k.map(|b| b ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The header value for `body` signed at `t` (for senders and tests).
pub fn sign(secret: &[u8], t: u64, body: &[u8]) -> String {
    let mut msg = format!("{t}.").into_bytes();
    msg.extend_from_slice(body);
    format!("t={t},v1={}", to_hex(&hmac_sha256(secret, &msg)))
}

/// Checks a delivery's header against `body`, with `now` in Unix seconds.
pub fn verify(secret: &[u8], header: &str, body: &[u8], now: u64) -> Result<(), SignatureError> {
    let mut t = None;
    let mut sigs = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<u64>().ok(),
            Some(("v1", v)) => sigs.push(v),
            _ => {}
        }
    }
    let t = t.ok_or(SignatureError::Malformed)?;
    if sigs.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if t.abs_diff(now) > TOLERANCE_SECS {
        return Err(SignatureError::Stale);
    }
    let expected = sign(secret, t, body);
    let expected = expected.rsplit('=').next().unwrap_or_default().as_bytes();
    if sigs
        .iter()
        .any(|s| bool::from(s.as_bytes().ct_eq(expected)))
    {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// POSTs `body` (JSON) to `url`, signed like the billing webhook (`switchyard-signature: t=..,v1=..`
/// over `t.body` with `secret`). Logs the outcome; one try, 10 s at most.
pub async fn deliver(url: String, secret: Option<String>, body: String) {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut req = reqwest::Client::new()
        .post(&url)
        .timeout(std::time::Duration::from_secs(10))
        .header("content-type", "application/json");
    match &secret {
        Some(s) => req = req.header(SIGNATURE_HEADER, sign(s.as_bytes(), t, body.as_bytes())),
        None => tracing::warn!("credit notice sent unsigned: its secret variable is not set"),
    }
    match req.body(body).send().await {
        Ok(r) if r.status().is_success() => {
            tracing::info!(status = r.status().as_u16(), "credit notice delivered")
        }
        Ok(r) => tracing::warn!(
            status = r.status().as_u16(),
            "credit notice refused by its receiver"
        ),
        Err(e) => tracing::warn!(error = %e, "credit notice not delivered"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Debug, PartialEq)]
    struct Credit {
        #[serde(rename = "type")]
        kind: String,
        data: CreditData,
    }

    #[derive(Deserialize, Debug, PartialEq)]
    struct CreditData {
        account: String,
    }

    #[test]
    fn unhandled_types_are_ignored_and_handled_ones_validated() {
        let parse = |body: &str| handled_event::<Credit>(body.as_bytes());
        for ignored in [
            r#"{"id":"e1","type":"invoice.paid","data":{"object":{}}}"#,
            r#"{"id":"e2","type":"customer.created"}"#,
        ] {
            assert_eq!(parse(ignored).unwrap(), None, "{ignored}");
        }
        let ok = parse(r#"{"id":"e3","type":"credits.purchased","data":{"account":"a"}}"#);
        assert_eq!(ok.unwrap().unwrap().data.account, "a");
        let missing = parse(r#"{"id":"e4","type":"credits.purchased","data":{}}"#);
        assert!(missing.unwrap_err().to_string().contains("account"));
        for not_an_event in [r#"{"id":"e5"}"#, r#"{"type":"invoice.paid"}"#, "[]", "x"] {
            assert!(parse(not_an_event).is_err(), "{not_an_event}");
        }
    }

    #[test]
    fn hmac_matches_rfc_4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            to_hex(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn signatures_verify_and_stale_or_wrong_ones_do_not() {
        let h = sign(b"s3cret", 1_000, b"{}");
        assert_eq!(verify(b"s3cret", &h, b"{}", 1_100), Ok(()));
        assert_eq!(
            verify(b"s3cret", &h, b"{ }", 1_100),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"other", &h, b"{}", 1_100),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(b"s3cret", &h, b"{}", 2_000),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify(b"s3cret", "v1=ab", b"{}", 1_000),
            Err(SignatureError::Malformed)
        );
    }
}
