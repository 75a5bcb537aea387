//! Classifies an upstream's answer from its status AND body: what went wrong, and whose fault it is.

use std::time::{Duration, SystemTime};

use http::header::HeaderMap;
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
        // Redirects are never followed (a credential must not travel to wherever they point): a
        // profile that answers one is misconfigured (`base_url`) or its service moved.
        300..=399 => failure(FailureClass::Server),
        500..=599 => Verdict::Failure {
            class: FailureClass::Server,
            retry_after: retry_after(headers, SystemTime::now()),
        },
        _ => Verdict::ClientError,
    }
}

/// The longest cooldown an upstream's retry hint can ask for: the default `billing_cooldown.max`. A
/// longer hint is clamped to it, so no header value, however absurd, reaches duration arithmetic that
/// can overflow (`Duration::from_secs_f64` panics above `u64::MAX` seconds).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// The upstream's `retry-after-ms` or `Retry-After` (seconds or an HTTP date), at most
/// [`MAX_RETRY_AFTER`]. A value that is not a non-negative number or a date (`-5`, `NaN`, `inf`, `soon`)
/// counts as absent; an unusable `retry-after-ms` leaves the way to `Retry-After`.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let number = |name: &str| headers.get(name)?.to_str().ok()?.trim().parse::<f64>().ok();
    if let Some(d) = number("retry-after-ms").and_then(|ms| clamped_secs(ms / 1000.0)) {
        return Some(d);
    }
    if let Some(secs) = number("retry-after") {
        return clamped_secs(secs);
    }
    let raw = headers.get("retry-after")?.to_str().ok()?.trim();
    let when = httpdate::parse_http_date(raw).ok()?;
    Some(
        when.duration_since(now)
            .unwrap_or(Duration::ZERO)
            .min(MAX_RETRY_AFTER),
    )
}

/// `secs` as a duration of at most [`MAX_RETRY_AFTER`]; `None` for NaN, infinities and negatives.
fn clamped_secs(secs: f64) -> Option<Duration> {
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    // Compared as floats first: converting a huge value is what panics.
    Some(if secs >= MAX_RETRY_AFTER.as_secs_f64() {
        MAX_RETRY_AFTER
    } else {
        Duration::from_secs_f64(secs)
    })
}

/// Words of an error's `type` or `code` that mean the profile is rate limited.
const RATE_LIMIT_WORDS: &[&str] = &[
    "rate_limit_exceeded",
    "rate_limit_error",
    "rate_limited",
    "too_many_requests",
    "requests",
    "tokens",
];

/// Words that mean the credential was refused.
const AUTH_WORDS: &[&str] = &[
    "invalid_api_key",
    "authentication_error",
    "permission_error",
    "unauthorized",
    "forbidden",
];

/// Classifies an error event inside a 2xx stream (`{"error": {...}}`) like an HTTP error body: a
/// numeric `code` is the status the upstream would have sent (OpenRouter), else the words of `type` and
/// `code` decide. Whatever is not rate_limited, billing or auth is a server failure: the upstream
/// accepted the request and then could not answer it (no client error, which would have come as a 4xx).
pub fn classify_stream_error(body: &[u8]) -> FailureClass {
    if is_billing_body(body) {
        return FailureClass::Billing;
    }
    let Ok(ErrorEnvelope { error: Some(e) }) = serde_json::from_slice::<ErrorEnvelope>(body) else {
        return FailureClass::Server;
    };
    let status = e
        .code
        .as_ref()
        .and_then(serde_json::Value::as_u64)
        .and_then(|c| u16::try_from(c).ok())
        .filter(|c| (400..=599).contains(c));
    if let Some(status) = status {
        return match classify(status, &HeaderMap::new(), body) {
            Verdict::Failure { class, .. } => class,
            Verdict::ClientError => FailureClass::Server,
        };
    }
    let words: Vec<&str> = [&e.kind, &e.code]
        .into_iter()
        .filter_map(|v| v.as_ref().and_then(serde_json::Value::as_str))
        .collect();
    if words.iter().any(|w| RATE_LIMIT_WORDS.contains(w)) {
        FailureClass::RateLimited
    } else if words.iter().any(|w| AUTH_WORDS.contains(w)) {
        FailureClass::Auth
    } else {
        FailureClass::Server
    }
}

/// What an operator reads about a redirect: its status and where it pointed, since that is how to fix
/// the profile's `base_url`.
pub fn redirect_detail(status: u16, headers: &HeaderMap) -> String {
    let location = headers.get(http::header::LOCATION).map(|v| {
        String::from_utf8_lossy(v.as_bytes())
            .chars()
            .take(300)
            .collect::<String>()
    });
    match location {
        Some(l) => {
            format!("HTTP {status} redirect to {l} (redirects are not followed: check base_url)")
        }
        None => format!("HTTP {status} redirect without a Location (redirects are not followed)"),
    }
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
    use http::header::HeaderValue;

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
    fn absurd_retry_after_is_clamped_and_garbage_is_absent() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let ra = |pairs: &[(&'static str, &str)]| retry_after(&h(pairs), now);
        for huge in ["99999999999999999999", "1e300", "1e20", "86401"] {
            assert_eq!(
                ra(&[("retry-after", huge)]),
                Some(MAX_RETRY_AFTER),
                "{huge}"
            );
        }
        assert_eq!(ra(&[("retry-after-ms", "1e30")]), Some(MAX_RETRY_AFTER));
        assert_eq!(
            ra(&[("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT")]),
            Some(MAX_RETRY_AFTER)
        );
        assert_eq!(ra(&[("retry-after", "86400")]), Some(MAX_RETRY_AFTER));
        assert_eq!(
            ra(&[("retry-after", "0.25")]),
            Some(Duration::from_millis(250))
        );
        for garbage in ["-5", "-1e300", "NaN", "nan", "inf", "-inf", "infinity", ""] {
            assert_eq!(ra(&[("retry-after", garbage)]), None, "{garbage:?}");
            assert_eq!(ra(&[("retry-after-ms", garbage)]), None, "ms {garbage:?}");
        }
        // A garbage `retry-after-ms` leaves the way to a sensible `Retry-After`.
        assert_eq!(
            ra(&[("retry-after-ms", "NaN"), ("retry-after", "7")]),
            Some(Duration::from_secs(7))
        );
        // And the whole classification survives them.
        let v = classify(429, &h(&[("retry-after", "1e300")]), b"");
        assert_eq!(
            v,
            Verdict::Failure {
                class: FailureClass::RateLimited,
                retry_after: Some(MAX_RETRY_AFTER)
            }
        );
        let v = classify(503, &h(&[("retry-after-ms", "1e30")]), b"");
        assert_eq!(
            v,
            Verdict::Failure {
                class: FailureClass::Server,
                retry_after: Some(MAX_RETRY_AFTER)
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
    fn stream_error_events_are_classified_like_error_bodies() {
        let c = |b: &str| classify_stream_error(b.as_bytes());
        assert_eq!(
            c(r#"{"error":{"code":429,"message":"Rate limit exceeded"}}"#),
            FailureClass::RateLimited
        );
        assert_eq!(
            c(r#"{"error":{"code":402,"message":"Insufficient credits"}}"#),
            FailureClass::Billing
        );
        assert_eq!(
            c(r#"{"error":{"code":401,"message":"No auth"}}"#),
            FailureClass::Auth
        );
        assert_eq!(
            c(r#"{"error":{"type":"rate_limit_error","message":"slow"}}"#),
            FailureClass::RateLimited
        );
        assert_eq!(
            c(r#"{"error":{"type":"overloaded_error","message":"Overloaded"}}"#),
            FailureClass::Server
        );
        assert_eq!(
            c(r#"{"error":{"code":400,"message":"bad"}}"#),
            FailureClass::Server
        );
        assert_eq!(c("not json"), FailureClass::Server);
    }

    #[test]
    fn redirects_are_server_failures_named_with_their_location() {
        let hs = h(&[("location", "https://example.com/login")]);
        assert_eq!(class(classify(302, &hs, b"")), FailureClass::Server);
        assert_eq!(
            class(classify(301, &HeaderMap::new(), b"")),
            FailureClass::Server
        );
        let d = redirect_detail(302, &hs);
        assert!(
            d.contains("302") && d.contains("https://example.com/login"),
            "{d}"
        );
        assert!(redirect_detail(307, &HeaderMap::new()).contains("307"));
    }

    #[test]
    fn detail_is_short_and_has_no_body_dump() {
        let long = format!(r#"{{"error":{{"message":"{}"}}}}"#, "x".repeat(1000));
        assert!(error_detail(500, long.as_bytes()).len() < 220);
        assert_eq!(error_detail(502, b"<html>"), "HTTP 502");
    }
}
