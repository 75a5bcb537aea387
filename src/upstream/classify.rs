//! Classifies an upstream's answer from its status AND body: what went wrong, and whose fault it is.

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;
use serde::Deserialize;
use switchyard_actors::outcome::FailureClass;

/// What a non-2xx answer means for routing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The client's fault (bad request, context too long...): return it as it is, no failover.
    ClientError,
    /// The profile's fault: cool it down / disable it, and try the next profile.
    Failure {
        class: FailureClass,
        retry_after: Option<Duration>,
    },
}

/// Error codes and types that mean "out of money", whatever the status says.
const BILLING_CODES: &[&str] = &[
    "insufficient_quota",
    "credit_balance_exhausted",
    "billing_hard_limit_reached",
    "billing_not_active",
    "payment_required",
];

/// Message fragments (lowercased) providers use for the same.
const BILLING_PHRASES: &[&str] = &[
    "credit balance is too low",
    "insufficient credits",
    "insufficient_quota",
    "exceeded your current quota",
    "out of credits",
];

#[derive(Deserialize)]
struct ErrorEnvelope {
    error: Option<ErrorBody>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    message: Option<serde_json::Value>,
    #[serde(default, rename = "type")]
    kind: Option<serde_json::Value>,
    #[serde(default)]
    code: Option<serde_json::Value>,
}

fn is_billing_body(body: &[u8]) -> bool {
    if let Ok(ErrorEnvelope { error: Some(e) }) = serde_json::from_slice::<ErrorEnvelope>(body) {
        let word =
            |v: &Option<serde_json::Value>| v.as_ref().and_then(|v| v.as_str()).map(str::to_owned);
        for w in [word(&e.code), word(&e.kind)].into_iter().flatten() {
            if BILLING_CODES.contains(&w.as_str()) {
                return true;
            }
        }
        if let Some(m) = word(&e.message) {
            let m = m.to_lowercase();
            return BILLING_PHRASES.iter().any(|p| m.contains(p));
        }
    }
    let text = String::from_utf8_lossy(&body[..body.len().min(16 * 1024)]).to_lowercase();
    BILLING_PHRASES.iter().any(|p| text.contains(p))
}

/// Classifies a non-2xx answer.
pub fn classify(status: u16, headers: &HeaderMap, body: &[u8]) -> Verdict {
    let failure = |class| Verdict::Failure {
        class,
        retry_after: None,
    };
    match status {
        402 => failure(FailureClass::Billing),
        429 if is_billing_body(body) => failure(FailureClass::Billing),
        429 => Verdict::Failure {
            class: FailureClass::RateLimited,
            retry_after: retry_after(headers, SystemTime::now()),
        },
        401 | 403 => failure(FailureClass::Auth),
        400 if is_billing_body(body) => failure(FailureClass::Billing),
        408 | 504 => failure(FailureClass::Timeout),
        500..=599 => Verdict::Failure {
            class: FailureClass::Server,
            retry_after: retry_after(headers, SystemTime::now()),
        },
        _ => Verdict::ClientError,
    }
}

/// The upstream's `retry-after-ms` or `Retry-After` (seconds or an HTTP date), when sensible.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    if let Some(ms) = headers
        .get("retry-after-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|ms| ms.is_finite() && *ms >= 0.0)
    {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    let raw = headers.get("retry-after")?.to_str().ok()?.trim();
    if let Ok(secs) = raw.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let when = httpdate::parse_http_date(raw).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A short, secret-free description of an upstream error body for operators: its message, truncated.
pub fn error_detail(status: u16, body: &[u8]) -> String {
    let msg = serde_json::from_slice::<ErrorEnvelope>(body)
        .ok()
        .and_then(|e| e.error)
        .and_then(|e| e.message)
        .and_then(|m| m.as_str().map(str::to_owned));
    match msg {
        Some(m) => {
            let m: String = m.chars().take(200).collect();
            format!("HTTP {status}: {m}")
        }
        None => format!("HTTP {status}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn h(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        m
    }

    fn class(v: Verdict) -> FailureClass {
        match v {
            Verdict::Failure { class, .. } => class,
            Verdict::ClientError => panic!("client error"),
        }
    }

    #[test]
    fn rate_limit_honours_retry_after() {
        let v = classify(
            429,
            &h(&[("retry-after", "7")]),
            br#"{"error":{"message":"slow down","type":"requests","code":"rate_limit_exceeded"}}"#,
        );
        assert_eq!(
            v,
            Verdict::Failure {
                class: FailureClass::RateLimited,
                retry_after: Some(Duration::from_secs(7))
            }
        );
        let v = classify(429, &h(&[("retry-after-ms", "1500")]), b"");
        assert_eq!(
            v,
            Verdict::Failure {
                class: FailureClass::RateLimited,
                retry_after: Some(Duration::from_millis(1500))
            }
        );
    }

    #[test]
    fn retry_after_http_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        let got = retry_after(&h(&[("retry-after", &later)]), now);
        assert_eq!(got, Some(Duration::from_secs(30)));
        assert_eq!(retry_after(&h(&[("retry-after", "soon")]), now), None);
    }

    #[test]
    fn billing_is_recognised_under_any_status() {
        let openai = br#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
        assert_eq!(
            class(classify(429, &HeaderMap::new(), openai)),
            FailureClass::Billing
        );
        let exhausted = br#"{"error":{"message":"no credit","type":"invalid_request_error","code":"credit_balance_exhausted"}}"#;
        assert_eq!(
            class(classify(429, &HeaderMap::new(), exhausted)),
            FailureClass::Billing
        );
        let anthropic = br#"{"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low to access the Anthropic API."}}"#;
        assert_eq!(
            class(classify(400, &HeaderMap::new(), anthropic)),
            FailureClass::Billing
        );
        let openrouter = br#"{"error":{"code":402,"message":"Insufficient credits"}}"#;
        assert_eq!(
            class(classify(402, &HeaderMap::new(), openrouter)),
            FailureClass::Billing
        );
    }

    #[test]
    fn auth_server_timeout_and_client_errors() {
        assert_eq!(
            class(classify(401, &HeaderMap::new(), b"")),
            FailureClass::Auth
        );
        assert_eq!(
            class(classify(403, &HeaderMap::new(), b"")),
            FailureClass::Auth
        );
        assert_eq!(
            class(classify(500, &HeaderMap::new(), b"")),
            FailureClass::Server
        );
        assert_eq!(
            class(classify(529, &HeaderMap::new(), b"")),
            FailureClass::Server
        );
        assert_eq!(
            class(classify(504, &HeaderMap::new(), b"")),
            FailureClass::Timeout
        );
        let ctx = br#"{"error":{"message":"This model's maximum context length is 8192 tokens","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#;
        assert_eq!(classify(400, &HeaderMap::new(), ctx), Verdict::ClientError);
        assert_eq!(
            classify(404, &HeaderMap::new(), b"{}"),
            Verdict::ClientError
        );
    }

    #[test]
    fn detail_is_short_and_has_no_body_dump() {
        let long = format!(r#"{{"error":{{"message":"{}"}}}}"#, "x".repeat(1000));
        assert!(error_detail(500, long.as_bytes()).len() < 220);
        assert_eq!(error_detail(502, b"<html>"), "HTTP 502");
    }
}
