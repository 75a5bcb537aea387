//! Tiers, rate limits and credits against the real server: exact counting under concurrency, the
//! `X-RateLimit-*` headers and an honest `Retry-After`, `max_tokens_per_request`, credits that are never
//! overdrawn (the transaction log sums to the balance), streams charged, refunds on upstream failure,
//! the signed billing webhook, and usage reports that add up.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use switchyard::limits::webhook;

use crate::support::*;

const WEBHOOK_SECRET: &str = "whsec-test-0123456789";

/// Prices of 1000 USD per million tokens: one token costs 1000 micro-USD, so costs are easy to check.
const TIERS: &str = "\
tiers:
  default:
    requests_per_hour: 1000
  burst:
    requests_per_hour: 1000
    llm_requests_per_hour: 100
  tiny:
    requests_per_hour: 3
    rate_window: 5s
  trio:
    requests_per_hour: 3
  onekey:
    max_keys: 1
  capped:
    max_tokens_per_request: 50
  thin:
    requests_per_hour: 100
    tokens_per_day: 10
  daily50:
    requests_per_hour: 1000
    tokens_per_day: 50
  monthly:
    monthly_credits: 1
  metered:
    max_tokens_per_request: 20
    monthly_credits: 0
pricing:
  m:
    input_per_million: 1000
    output_per_million: 1000";

/// A key of `account` in `tier`; returns the secret.
async fn new_key(server: &Server, account: &str, tier: &str) -> String {
    let body = json!({"name": "t", "account": account, "tier": tier});
    let v = admin(server, reqwest::Method::POST, "/admin/keys", Some(body)).await;
    v["key"].as_str().unwrap().to_owned()
}

async fn server_with(mock: &MockUpstream, env: &[(&str, &str)]) -> Server {
    let mut config = ConfigBuilder::default()
        .profile("a", mock)
        .model("m", &["a"])
        .model("n", &["a"]);
    config.auth_required = true;
    config.max_attempts = 1;
    config.extra_yaml = TIERS.lines().map(str::to_owned).collect();
    Server::start_with_env(&config, env)
}

fn chat_req(model: &str, extra: Value) -> Value {
    let mut body = chat_body(model);
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

fn header(h: &reqwest::header::HeaderMap, name: &str) -> u64 {
    h.get(name)
        .unwrap_or_else(|| panic!("no {name} in {h:?}"))
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn credits(server: &Server, account: &str) -> Value {
    let path = format!("/admin/accounts/{account}/credits");
    admin(server, reqwest::Method::GET, &path, None).await
}

/// Checks the ledger's invariant and returns the balance in micro-USD.
async fn balance_matching_log(server: &Server, account: &str) -> i64 {
    let c = credits(server, account).await;
    let balance = c["balance_micros"].as_i64().unwrap();
    let sum: i64 = c["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["amount_micros"].as_i64().unwrap())
        .sum();
    assert_eq!(
        sum, balance,
        "the transaction log must sum to the balance: {c}"
    );
    assert!(balance >= 0);
    balance
}

#[tokio::test]
async fn exactly_the_limit_gets_through_under_concurrency() {
    let mock = MockUpstream::start_named("a").await;
    let server = server_with(&mock, &[]).await;
    let key = new_key(&server, "crowd", "burst").await;
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let url = server.url("/v1/chat/completions");
            let key = key.clone();
            tokio::spawn(async move {
                let resp = client()
                    .post(url)
                    .bearer_auth(key)
                    .json(&chat_body("m"))
                    .send()
                    .await
                    .unwrap();
                (resp.status().as_u16(), resp.headers().clone())
            })
        })
        .collect();
    let mut ok = 0;
    let mut limited = 0;
    for t in tasks {
        let (status, h) = t.await.unwrap();
        assert_eq!(header(&h, "x-ratelimit-limit"), 100);
        match status {
            200 => ok += 1,
            429 => {
                limited += 1;
                assert_eq!(header(&h, "x-ratelimit-remaining"), 0);
                assert_eq!(header(&h, "retry-after"), header(&h, "x-ratelimit-reset"));
            }
            s => panic!("unexpected status {s}"),
        }
    }
    assert_eq!((ok, limited), (100, 100));
    assert_eq!(
        mock.request_count(),
        100,
        "refused requests never reach the upstream"
    );
    let (_, _, body) = call(
        &server,
        reqwest::Method::POST,
        "/v1/chat/completions",
        Some(&key),
        Some(chat_body("m")),
    )
    .await;
    let e = error_of(&body.to_string());
    assert_eq!(e["type"], "rate_limit_error");
    assert!(e["message"].as_str().unwrap().contains("burst"), "{e}");
    let metrics = client().get(server.url("/metrics")).send().await.unwrap();
    let text = metrics.text().await.unwrap();
    assert!(
        text.contains("switchyard_rate_limited_total{scope=\"llm_requests\"} 101"),
        "{text}"
    );
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Waits until at most 200 ms after the start of a `len_ms` window (windows are aligned to the epoch)
/// and returns that start.
async fn just_after_window_start(len_ms: u64) -> u64 {
    let deadline = epoch_ms() + 20 * len_ms;
    loop {
        let now = epoch_ms();
        if now % len_ms < 200 {
            return now - now % len_ms;
        }
        assert!(now < deadline, "never woke up near a window start");
        tokio::time::sleep(Duration::from_millis(len_ms - now % len_ms)).await;
    }
}

/// Runs `call`, returning the epoch milliseconds just before it was sent and just after its answer:
/// the server saw it somewhere in between.
async fn timed<T>(call: impl std::future::Future<Output = T>) -> (u64, T, u64) {
    let sent = epoch_ms();
    let answer = call.await;
    (sent, answer, epoch_ms())
}

#[tokio::test]
async fn headers_count_down_and_retry_after_is_honest() {
    const WINDOW_MS: u64 = 5_000;
    let mock = MockUpstream::start_named("a").await;
    let server = server_with(&mock, &[]).await;
    let key = new_key(&server, "small", "tiny").await;
    // Start just after a window boundary, so the four calls below share one window with 4.8 s to
    // spare, and judge every later answer against that window's end, not against a rounded
    // Retry-After: where the calls fall within their second no longer matters.
    let window_end = just_after_window_start(WINDOW_MS).await + WINDOW_MS;
    let chat = || {
        call(
            &server,
            reqwest::Method::POST,
            "/v1/chat/completions",
            Some(&key),
            Some(chat_body("m")),
        )
    };
    let (s, h, _) = chat().await;
    assert_eq!((s, header(&h, "x-ratelimit-remaining")), (200, 2));
    assert_eq!(header(&h, "x-ratelimit-limit"), 3);
    // Every /v1 route counts and carries the headers, errors included.
    let (s, h, _) = call(
        &server,
        reqwest::Method::GET,
        "/v1/models",
        Some(&key),
        None,
    )
    .await;
    assert_eq!((s, header(&h, "x-ratelimit-remaining")), (200, 1));
    let (s, h, _) = call(
        &server,
        reqwest::Method::POST,
        "/v1/chat/completions",
        Some(&key),
        Some(chat_body("no-such-model")),
    )
    .await;
    assert_eq!((s, header(&h, "x-ratelimit-remaining")), (404, 0));
    let (sent, (s, h, body), answered) = timed(chat()).await;
    assert!(
        answered < window_end,
        "four calls took more than a {WINDOW_MS} ms window"
    );
    assert_eq!(s, 429, "{body}");
    assert_eq!(header(&h, "x-ratelimit-remaining"), 0);
    // Honest: the time left in the window when the server answered, rounded up to whole seconds.
    let retry = header(&h, "retry-after");
    let left_secs = |at: u64| (window_end - at).div_ceil(1000).max(1);
    assert!(
        (left_secs(answered)..=left_secs(sent)).contains(&retry),
        "Retry-After {retry} s, with {}..{} ms left in the window",
        window_end - answered,
        window_end - sent
    );
    assert_eq!(retry, header(&h, "x-ratelimit-reset"));

    // Still refused just before the window ends...
    tokio::time::sleep(Duration::from_millis(
        (window_end - 400).saturating_sub(epoch_ms()),
    ))
    .await;
    let (_, (s, _, body), late) = timed(chat()).await;
    let counted_late = match s {
        429 => false,
        // Only when the machine was so slow that the call may have reached the next window.
        200 if late >= window_end => true,
        _ => panic!("{s} {late} ms before the window's end: {body}"),
    };
    // ...and admitted once Retry-After has passed since the refusal's answer.
    tokio::time::sleep(Duration::from_millis(
        (answered + retry * 1000).saturating_sub(epoch_ms()),
    ))
    .await;
    let (s, h, body) = chat().await;
    assert_eq!(s, 200, "{body}");
    let remaining = header(&h, "x-ratelimit-remaining");
    if counted_late {
        assert!((1..=2).contains(&remaining), "{remaining}");
    } else {
        assert_eq!(remaining, 2);
    }
    assert_eq!(mock.request_count(), 2 + usize::from(counted_late));
}

#[tokio::test]
async fn max_tokens_above_the_tier_is_refused_with_400() {
    let mock = MockUpstream::start_named("a").await;
    let server = server_with(&mock, &[]).await;
    let key = new_key(&server, "capped-co", "capped").await;
    let (s, h, body) = call(
        &server,
        reqwest::Method::POST,
        "/v1/chat/completions",
        Some(&key),
        Some(chat_req("m", json!({"max_tokens": 51}))),
    )
    .await;
    assert_eq!(s, 400);
    let e = error_of(&body.to_string());
    assert_eq!(e["type"], "invalid_request_error");
    assert_eq!(e["code"], "max_tokens_exceeded");
    assert_eq!(e["param"], "max_tokens");
    assert!(e["message"].as_str().unwrap().contains("50"), "{e}");
    // The tier has no request limit of its own: the default tier's is not used for it.
    assert!(h.get("x-ratelimit-limit").is_none());
    let (s, _, _) = call(
        &server,
        reqwest::Method::POST,
        "/v1/chat/completions",
        Some(&key),
        Some(chat_req("m", json!({"max_tokens": 50}))),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(mock.request_count(), 1);
    // /v1/messages answers in Anthropic's shape.
    let body = json!({"model": "m", "max_tokens": 51,
                      "messages": [{"role": "user", "content": "hi"}]});
    let (s, _, body) = call(
        &server,
        reqwest::Method::POST,
        "/v1/messages",
        Some(&key),
        Some(body),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn max_tokens_in_any_other_spelling_is_refused_naming_the_field() {
    let mock = MockUpstream::start_named("a").await;
    let server = server_with(&mock, &[]).await;
    let capped = new_key(&server, "spell-co", "capped").await;
    let msgs = r#""messages":[{"role":"user","content":"hi"}]"#;
    for (field, value) in [
        ("max_tokens", "100.0"),
        ("max_tokens", "1e2"),
        ("max_tokens", r#""100""#),
        ("max_tokens", "18446744073709551616"),
        ("max_tokens", "-1"),
        ("max_completion_tokens", "100.0"),
        ("max_tokens", "10,\"max_tokens\":100"),
        ("max_completion_tokens", "10,\"max_completion_tokens\":100"),
    ] {
        let body = format!(r#"{{"model":"m",{msgs},"{field}":{value}}}"#);
        let (s, _, text) = server
            .post("/v1/chat/completions")
            .bearer(&capped)
            .raw_json(&body)
            .send_text()
            .await;
        assert_eq!(s, 400, "{body} -> {text}");
        let e = error_of(&text);
        assert_eq!(e["type"], "invalid_request_error", "{text}");
        assert_eq!(e["param"], field, "{text}");
    }
    // /v1/messages: the translation reads `max_tokens` strictly too, and a duplicate is refused.
    for value in ["100.0", "1e2", r#""100""#, "10,\"max_tokens\":100"] {
        let body = format!(r#"{{"model":"m",{msgs},"max_tokens":{value}}}"#);
        let (s, _, text) = server
            .post("/v1/messages")
            .bearer(&capped)
            .raw_json(&body)
            .send_text()
            .await;
        assert_eq!(s, 400, "{body} -> {text}");
        assert!(text.contains("max_tokens"), "{text}");
    }
    // Metered or not, a duplicate is ambiguous: refused without any key or tier too.
    let mut open = ConfigBuilder::default()
        .profile("a", &mock)
        .model("m", &["a"]);
    open.auth_required = false;
    let open = Server::start(&open);
    let (s, _, text) = open
        .post("/v1/chat/completions")
        .raw_json(r#"{"model":"m","messages":[],"max_tokens":1,"max_tokens":2}"#)
        .send_text()
        .await;
    assert_eq!(
        (s, error_of(&text)["param"].as_str()),
        (400, Some("max_tokens"))
    );
    assert_eq!(
        mock.request_count(),
        0,
        "nothing refused reached the upstream"
    );
}

#[tokio::test]
async fn the_daily_token_budget_refuses_once_spent() {
    let mock = MockUpstream::start_named("a").await;
    let server = server_with(&mock, &[]).await;
    let key = new_key(&server, "wordy", "thin").await;
    let mut used = 0;
    while used < 10 {
        let (s, h, body) = call(
            &server,
            reqwest::Method::POST,
            "/v1/chat/completions",
            Some(&key),
            Some(chat_body("m")),
        )
        .await;
        assert_eq!(s, 200, "{body}");
        assert_eq!(header(&h, "x-ratelimit-limit-tokens"), 10);
        assert_eq!(header(&h, "x-ratelimit-remaining-tokens"), 10 - used);
        used += body["usage"]["total_tokens"].as_u64().unwrap();
    }
    let (s, h, body) = call(
        &server,
        reqwest::Method::POST,
        "/v1/chat/completions",
        Some(&key),
        Some(chat_body("m")),
    )
    .await;
    assert_eq!(s, 429, "{body}");
    assert_eq!(header(&h, "x-ratelimit-remaining-tokens"), 0);
    assert_eq!(
        header(&h, "retry-after"),
        header(&h, "x-ratelimit-reset-tokens")
    );
    assert!(
        header(&h, "x-ratelimit-remaining") > 0,
        "the request limit is not what refused"
    );
    assert!(error_of(&body.to_string())["message"]
        .as_str()
        .unwrap()
        .contains("tokens per day"));
}

#[tokio::test]
async fn concurrent_calls_cannot_overspend_the_daily_token_budget() {
    let mock = MockUpstream::start_named("a").await;
    mock.set_default(Reply::delayed(Duration::from_millis(300)));
    let server = server_with(&mock, &[]).await;
    let key = new_key(&server, "crowd50", "daily50").await;
    let body = chat_req("m", json!({"max_tokens": 5}));
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let (url, key, body) = (
                server.url("/v1/chat/completions"),
                key.clone(),
                body.clone(),
            );
            tokio::spawn(async move {
                let resp = client()
                    .post(url)
                    .bearer_auth(key)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let status = resp.status().as_u16();
                let v: Value = resp.json().await.unwrap();
                (status, v["usage"]["total_tokens"].as_u64().unwrap_or(0))
            })
        })
        .collect();
    let (mut admitted, mut refused, mut spent) = (0, 0, 0);
    for t in tasks {
        match t.await.unwrap() {
            (200, tokens) => {
                admitted += 1;
                spent += tokens;
            }
            (429, _) => refused += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    let per_call = spent / admitted.max(1);
    eprintln!("daily budget 50: admitted {admitted} of 40, {spent} tokens ({per_call} a call)");
    assert_eq!(admitted + refused, 40);
    // What the budget allows: whole calls while anything remains; the last one may cross it.
    assert!(
        admitted <= 50 / per_call + 1,
        "admitted {admitted}, {spent} tokens at {per_call} a call"
    );
    assert!(spent <= 50 + per_call, "spent {spent}");
    assert_eq!(mock.request_count(), admitted as usize);
}

#[tokio::test]
async fn concurrent_requests_never_overdraw_a_small_balance() {
    let mock = MockUpstream::start_named("a").await;
    mock.set_default(Reply::delayed(Duration::from_millis(300)));
    let server = server_with(&mock, &[]).await;
    let key = new_key(&server, "thrifty", "metered").await;
    let path = "/admin/accounts/thrifty/credits";
    let c = admin(
        &server,
        reqwest::Method::POST,
        path,
        Some(json!({"amount_usd": 0.5})),
    )
    .await;
    assert_eq!(c["balance_usd"], "0.500000");
    let tasks: Vec<_> = (0..30)
        .map(|_| {
            let url = server.url("/v1/chat/completions");
            let key = key.clone();
            tokio::spawn(async move {
                let resp = client()
                    .post(url)
                    .bearer_auth(key)
                    .json(&chat_req("m", json!({"max_tokens": 10})))
                    .send()
                    .await
                    .unwrap();
                let status = resp.status().as_u16();
                (status, resp.json::<Value>().await.unwrap())
            })
        })
        .collect();
    let mut spent_tokens = 0;
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        let (status, body) = t.await.unwrap();
        match status {
            200 => {
                ok += 1;
                spent_tokens += body["usage"]["total_tokens"].as_i64().unwrap();
            }
            402 => {
                refused += 1;
                let e = error_of(&body.to_string());
                assert_eq!(e["type"], "insufficient_quota");
                assert!(e["message"].as_str().unwrap().contains("upgrade"), "{e}");
            }
            s => panic!("unexpected {s}: {body}"),
        }
    }
    assert!(ok >= 1 && refused >= 1, "ok {ok}, refused {refused}");
    let balance = balance_matching_log(&server, "thrifty").await;
    assert_eq!(balance, 500_000 - spent_tokens * 1000);
    let metrics = client().get(server.url("/metrics")).send().await.unwrap();
    let text = metrics.text().await.unwrap();
    assert!(
        text.contains(&format!("switchyard_credit_refusals_total {refused}")),
        "{text}"
    );
    assert!(text.contains("switchyard_cost_usd_total{model=\"m\",profile=\"a\"}"));
}

#[tokio::test]
async fn streams_are_charged_and_failures_refunded() {
    let mock = MockUpstream::start_named("a").await;
    let server = server_with(&mock, &[]).await;
    let key = new_key(&server, "streamer", "metered").await;
    let path = "/admin/accounts/streamer/credits";
    add_credits(&server, path, 1.0).await;

    let resp = client()
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&chat_req("m", json!({"stream": true, "max_tokens": 10})))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.contains("[DONE]"), "{text}");
    let usage = admin(
        &server,
        reqwest::Method::GET,
        "/admin/usage?account=streamer",
        None,
    )
    .await;
    let tokens = usage["total"]["total_tokens"].as_i64().unwrap();
    assert!(tokens > 0, "{usage}");
    let balance = balance_matching_log(&server, "streamer").await;
    assert_eq!(balance, 1_000_000 - tokens * 1000);

    // The upstream fails: the reservation comes back in full.
    mock.set_default(Reply::status(500, r#"{"error":{"message":"boom"}}"#));
    let (s, _, _) = call(
        &server,
        reqwest::Method::POST,
        "/v1/chat/completions",
        Some(&key),
        Some(chat_req("m", json!({"max_tokens": 10}))),
    )
    .await;
    assert_eq!(s, 502);
    assert_eq!(balance_matching_log(&server, "streamer").await, balance);
    let c = credits(&server, "streamer").await;
    let kinds: Vec<&str> = c["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["adjust", "reserve", "settle", "reserve", "release"]);
}

/// A client that leaves while the profile has not answered gets its credit hold back at once, not
/// when the first-byte timeout (5 s here) ends the attempt for nobody.
#[tokio::test]
async fn a_client_that_leaves_gets_its_hold_released_at_once() {
    let mock = MockUpstream::start_named("a").await;
    mock.push(Reply::Hang);
    let server = server_with(&mock, &[]).await;
    let key = new_key(&server, "leaver", "metered").await;
    let path = "/admin/accounts/leaver/credits";
    add_credits(&server, path, 1.0).await;
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(400))
        .build()
        .unwrap();
    let sent = impatient
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&chat_req("m", json!({"max_tokens": 10})))
        .send()
        .await;
    assert!(sent.is_err(), "{sent:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let c = credits(&server, "leaver").await;
        let kinds: Vec<String> = c["transactions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["kind"].as_str().unwrap().to_owned())
            .collect();
        if kinds == ["adjust", "reserve", "release"] {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{kinds:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(balance_matching_log(&server, "leaver").await, 1_000_000);
}

fn signed(body: &str, t: u64, secret: &str) -> String {
    webhook::sign(secret.as_bytes(), t, body.as_bytes())
}

async fn deliver(server: &Server, body: &str, signature: &str) -> (u16, String) {
    deliver_webhook(server, body, signature).await
}

#[tokio::test]
async fn the_webhook_refuses_bad_signatures_old_timestamps_and_replays() {
    let mock = MockUpstream::start_named("a").await;
    let server = server_with(&mock, &[(webhook::SECRET_ENV, WEBHOOK_SECRET)]).await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let body = json!({"id": "evt_1", "type": "subscription.updated",
                      "data": {"account": "shop", "tier": "tiny"}})
    .to_string();

    let (s, text) = deliver(&server, &body, &signed(&body, now, "not-the-secret")).await;
    assert_eq!(s, 401, "{text}");
    assert!(text.contains("does not match"), "{text}");
    let (s, text) = deliver(&server, &body, &signed(&body, now - 301, WEBHOOK_SECRET)).await;
    assert_eq!(s, 401, "{text}");
    assert!(text.contains("timestamp"), "{text}");
    let (s, _) = deliver(&server, &body, "").await;
    assert_eq!(s, 401);
    assert!(credits(&server, "shop").await["tier"].is_null());

    let good = signed(&body, now, WEBHOOK_SECRET);
    let (s, text) = deliver(&server, &body, &good).await;
    assert_eq!(s, 200, "{text}");
    assert_eq!(credits(&server, "shop").await["tier"], "tiny");
    let (s, text) = deliver(&server, &body, &good).await;
    assert_eq!(s, 409, "{text}");
    assert!(text.contains("replay"), "{text}");

    // The tier applies at once: `tiny` allows 3 requests per window.
    let key = new_key(&server, "shop", "burst").await;
    let (_, h, _) = call(
        &server,
        reqwest::Method::GET,
        "/v1/models",
        Some(&key),
        None,
    )
    .await;
    assert_eq!(header(&h, "x-ratelimit-limit"), 3);

    let buy = json!({"id": "evt_2", "type": "credits.purchased",
                     "data": {"account": "shop", "amount_usd": 2.5}})
    .to_string();
    let (s, _) = deliver(&server, &buy, &signed(&buy, now, WEBHOOK_SECRET)).await;
    assert_eq!(s, 200);
    assert_eq!(credits(&server, "shop").await["balance_usd"], "2.500000");
    let (s, _) = deliver(&server, &buy, &signed(&buy, now + 1, WEBHOOK_SECRET)).await;
    assert_eq!(s, 409, "a replay with a fresh signature is still a replay");
    assert_eq!(balance_matching_log(&server, "shop").await, 2_500_000);
}

#[tokio::test]
async fn admin_routes_set_tiers_and_credits() {
    let mock = MockUpstream::start_named("a").await;
    let server = server_with(&mock, &[]).await;
    let key = new_key(&server, "upgrader", "tiny").await;
    let (_, h, _) = call(
        &server,
        reqwest::Method::GET,
        "/v1/models",
        Some(&key),
        None,
    )
    .await;
    assert_eq!(header(&h, "x-ratelimit-limit"), 3);
    let path = "/admin/accounts/upgrader/tier";
    admin(
        &server,
        reqwest::Method::PUT,
        path,
        Some(json!({"tier": "burst"})),
    )
    .await;
    let (_, h, _) = call(
        &server,
        reqwest::Method::GET,
        "/v1/models",
        Some(&key),
        None,
    )
    .await;
    assert_eq!(header(&h, "x-ratelimit-limit"), 1000);
    let (s, _, body) = call(
        &server,
        reqwest::Method::PUT,
        path,
        Some(ADMIN_TOKEN),
        Some(json!({"tier": "platinum"})),
    )
    .await;
    assert_eq!(s, 400, "{body}");
    let (s, _, _) = call(
        &server,
        reqwest::Method::PUT,
        path,
        Some(&key),
        Some(json!({"tier": "burst"})),
    )
    .await;
    assert_eq!(s, 403);
    let credits_path = "/admin/accounts/upgrader/credits";
    admin(
        &server,
        reqwest::Method::POST,
        credits_path,
        Some(json!({"amount_usd": 1})),
    )
    .await;
    let (s, _, _) = call(
        &server,
        reqwest::Method::POST,
        credits_path,
        Some(ADMIN_TOKEN),
        Some(json!({"amount_usd": -2})),
    )
    .await;
    assert_eq!(s, 400, "a debit beyond the balance is refused");
    admin(
        &server,
        reqwest::Method::POST,
        credits_path,
        Some(json!({"amount_usd": -0.25})),
    )
    .await;
    assert_eq!(balance_matching_log(&server, "upgrader").await, 750_000);
}

#[tokio::test]
async fn usage_groups_add_up_to_the_raw_records() {
    let mock = MockUpstream::start_named("a").await;
    let server = server_with(&mock, &[]).await;
    let key = new_key(&server, "acme", "default").await;
    let other = new_key(&server, "globex", "default").await;
    let mut prompt = 0;
    let mut completion = 0;
    for (model, n) in [("m", 3), ("n", 2)] {
        for _ in 0..n {
            let (s, _, body) = call(
                &server,
                reqwest::Method::POST,
                "/v1/chat/completions",
                Some(&key),
                Some(chat_body(model)),
            )
            .await;
            assert_eq!(s, 200);
            prompt += body["usage"]["prompt_tokens"].as_i64().unwrap();
            completion += body["usage"]["completion_tokens"].as_i64().unwrap();
        }
    }
    let (s, _, _) = call(
        &server,
        reqwest::Method::POST,
        "/v1/chat/completions",
        Some(&other),
        Some(chat_body("m")),
    )
    .await;
    assert_eq!(s, 200);

    let (s, h, by_model) = call(
        &server,
        reqwest::Method::GET,
        "/v1/usage?group_by=model",
        Some(&key),
        None,
    )
    .await;
    assert_eq!(s, 200, "{by_model}");
    assert!(h.get("x-ratelimit-remaining").is_some());
    let total = &by_model["total"];
    assert_eq!(
        total["requests"], 5,
        "only the caller's account: {by_model}"
    );
    assert_eq!(total["prompt_tokens"], prompt);
    assert_eq!(total["completion_tokens"], completion);
    let rows = by_model["data"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (rows[0]["model"].clone(), rows[0]["requests"].clone()),
        (json!("m"), json!(3))
    );
    assert_eq!(
        (rows[1]["model"].clone(), rows[1]["requests"].clone()),
        (json!("n"), json!(2))
    );
    for field in [
        "requests",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
    ] {
        let sum: i64 = rows.iter().map(|r| r[field].as_i64().unwrap()).sum();
        assert_eq!(sum, total[field].as_i64().unwrap(), "{field}");
    }
    // Only model m is priced: 1000 micro-USD per token.
    let m_tokens = rows[0]["total_tokens"].as_i64().unwrap();
    assert_eq!(rows[0]["cost_usd"], format!("0.{:06}", m_tokens * 1000));
    assert_eq!(rows[1]["cost_usd"], "0.000000");

    let (_, _, by_day) = call(
        &server,
        reqwest::Method::GET,
        "/v1/usage?group_by=day",
        Some(&key),
        None,
    )
    .await;
    assert_eq!(by_day["data"].as_array().unwrap().len(), 1);
    assert_eq!(by_day["data"][0]["total_tokens"], total["total_tokens"]);
    for (path, status) in [
        ("/v1/usage?group_by=profile", 400),
        ("/v1/usage?from=yesterday", 400),
        ("/v1/usage?from=2000-01-01&to=2000-01-02", 200),
    ] {
        let (s, _, _) = call(&server, reqwest::Method::GET, path, Some(&key), None).await;
        assert_eq!(s, status, "{path}");
    }

    let by_account = admin(
        &server,
        reqwest::Method::GET,
        "/admin/usage?group_by=account",
        None,
    )
    .await;
    let rows = by_account["data"].as_array().unwrap();
    let acme = rows.iter().find(|r| r["account"] == "acme").unwrap();
    assert_eq!(acme["total_tokens"], total["total_tokens"]);
    assert_eq!(by_account["total"]["requests"], 6);
    let by_profile = admin(
        &server,
        reqwest::Method::GET,
        "/admin/usage?group_by=profile",
        None,
    )
    .await;
    assert_eq!(by_profile["data"][0]["profile"], "a");
    assert_eq!(by_profile["data"][0]["requests"], 6);
    let (s, _, _) = call(
        &server,
        reqwest::Method::GET,
        "/admin/usage",
        Some(&key),
        None,
    )
    .await;
    assert_eq!(s, 403);
}

/// README, "Limits and credits": `/v1/me` and `/v1/keys` are not counted against `requests_per_hour`
/// (nor refused over it), but answer with the tier's current `X-RateLimit-*`.
#[tokio::test]
async fn own_account_routes_are_not_counted_but_carry_the_headers() {
    let mock = MockUpstream::start_named("a").await;
    let server = server_with(&mock, &[]).await;
    let key = new_key(&server, "acc-me", "thin").await;
    let (status, h, v) = call(&server, reqwest::Method::GET, "/v1/me", Some(&key), None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(header(&h, "x-ratelimit-limit"), 100);
    let first = header(&h, "x-ratelimit-remaining");
    assert_eq!(first, 100, "nothing counted yet");
    // `/v1/keys` wants a signed-in session, not a key: refused, and not counted either.
    for (path, want) in [("/v1/me", 200), ("/v1/keys", 403), ("/v1/me", 200)] {
        let (status, h, v) = call(&server, reqwest::Method::GET, path, Some(&key), None).await;
        assert_eq!(status, want, "{path}: {v}");
        assert_eq!(header(&h, "x-ratelimit-remaining"), first, "{path}");
    }
    // A tier of 3 requests: many own-account calls, and the 3 counted calls are all still there.
    let tiny = new_key(&server, "acc-trio", "trio").await;
    for _ in 0..5 {
        let (status, _, v) = call(&server, reqwest::Method::GET, "/v1/me", Some(&tiny), None).await;
        assert_eq!(status, 200, "{v}");
    }
    for n in 0..3 {
        let (status, _, v) = call(
            &server,
            reqwest::Method::GET,
            "/v1/models",
            Some(&tiny),
            None,
        )
        .await;
        assert_eq!(status, 200, "call {n}: {v}");
    }
    let (status, _, _) = call(
        &server,
        reqwest::Method::GET,
        "/v1/models",
        Some(&tiny),
        None,
    )
    .await;
    assert_eq!(status, 429);
    // Over the limit, the caller can still see its account.
    let (status, h, v) = call(&server, reqwest::Method::GET, "/v1/me", Some(&tiny), None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(header(&h, "x-ratelimit-remaining"), 0);
}

#[tokio::test]
async fn the_tier_caps_self_service_keys() {
    let mock = MockUpstream::start_named("a").await;
    let server = server_with(&mock, &[]).await;
    let body = json!({"email": "dev@example.com", "password": "correct horse battery", "role": "developer", "tier": "onekey"});
    admin(
        &server,
        reqwest::Method::POST,
        "/admin/accounts",
        Some(body),
    )
    .await;
    let login = json!({"email": "dev@example.com", "password": "correct horse battery"});
    let (status, _, tokens) = call(
        &server,
        reqwest::Method::POST,
        "/auth/login",
        None,
        Some(login),
    )
    .await;
    assert_eq!(status, 200, "{tokens}");
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    let new = json!({"name": "first"});
    let (status, _, v) = call(
        &server,
        reqwest::Method::POST,
        "/v1/keys",
        Some(&access),
        Some(new),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let (status, _, v) = call(
        &server,
        reqwest::Method::POST,
        "/v1/keys",
        Some(&access),
        Some(json!({"name": "second"})),
    )
    .await;
    assert!(
        status == 403 || status == 429 || status == 400,
        "{status} {v}"
    );
    assert!(
        v.to_string().contains('1'),
        "the refusal names the limit: {v}"
    );
}

/// The text a chat stream carried to the client (every `delta.content`).
fn streamed_content(text: &str) -> String {
    text.split("\n\n")
        .filter_map(|ev| ev.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|e| {
            e["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

/// The settles and releases the ledger holds for one request: (kind, amount).
async fn movements_of(server: &Server, account: &str, request_id: &str) -> Vec<(String, i64)> {
    credits(server, account).await["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["request_id"] == request_id && t["kind"] != "reserve")
        .map(|t| {
            (
                t["kind"].as_str().unwrap().to_owned(),
                t["amount_micros"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// `ceil(n / 4)` tokens at 1000 micro-USD each: the documented estimate.
fn estimate_micros(bytes: usize) -> i64 {
    (bytes as i64 + 3) / 4 * 1000
}

#[tokio::test]
async fn an_answer_without_usage_is_charged_an_estimate_and_counted() {
    let mock = MockUpstream::start_named("a").await;
    mock.set_default(Reply::NoUsage);
    let server = server_with(&mock, &[]).await;
    let key = new_key(&server, "silent", "metered").await;
    let path = "/admin/accounts/silent/credits";
    add_credits(&server, path, 1.0).await;
    let mut balance = 1_000_000;
    for (i, stream) in [false, true].into_iter().enumerate() {
        let body = chat_req("m", json!({"max_tokens": 10, "stream": stream}));
        let rid = format!("no-usage-{i}");
        let (s, _, text) = server
            .post("/v1/chat/completions")
            .bearer(&key)
            .header("x-request-id", &rid)
            .json(&body)
            .send_text()
            .await;
        assert_eq!(s, 200, "{text}");
        assert!(!text.contains("\"usage\""), "the mock sent usage: {text}");
        let answer = if stream {
            streamed_content(&text)
        } else {
            serde_json::from_str::<Value>(&text).unwrap()["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        assert_eq!(answer, "mock reply from a");
        // Input: a quarter of the body's bytes; output: a quarter of the text's, each rounded up.
        let cost = estimate_micros(serde_json::to_vec(&body).unwrap().len())
            + estimate_micros(answer.len());
        balance -= cost;
        assert_eq!(
            balance_matching_log(&server, "silent").await,
            balance,
            "stream {stream}"
        );
        let moved = movements_of(&server, "silent", &rid).await;
        assert_eq!(moved.len(), 1, "{moved:?}");
        assert_eq!(moved[0].0, "settle", "{moved:?}");
        assert!(server.logs().contains(&rid), "no warning names {rid}");
    }
    let metrics = server.get("/metrics").send_text().await.2;
    assert!(
        metrics.contains("switchyard_usage_missing_total{model=\"m\",profile=\"a\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_cut_stream_is_charged_for_the_text_that_reached_the_client() {
    let mock = MockUpstream::start_named("a").await;
    let server = server_with(&mock, &[]).await;
    let key = new_key(&server, "cutoff", "metered").await;
    let path = "/admin/accounts/cutoff/credits";
    add_credits(&server, path, 1.0).await;
    mock.push(Reply::CutStream { after: 3 });
    let body = chat_req("m", json!({"max_tokens": 10, "stream": true}));
    let (s, _, text) = server
        .post("/v1/chat/completions")
        .bearer(&key)
        .header("x-request-id", "cut-1")
        .json(&body)
        .send_text()
        .await;
    assert_eq!(s, 200, "{text}");
    assert!(!text.contains("[DONE]"), "{text}");
    let delivered = streamed_content(&text);
    assert!(!delivered.is_empty(), "{text}");
    let cost = estimate_micros(serde_json::to_vec(&body).unwrap().len())
        + estimate_micros(delivered.len());
    // The cut ends the client's stream as the settlement is decided: on a loaded machine the client
    // can read the end first, so the ledger is polled for it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let moved = loop {
        let moved = movements_of(&server, "cutoff", "cut-1").await;
        if !moved.is_empty() || std::time::Instant::now() > deadline {
            break moved;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        moved.iter().map(|m| m.0.as_str()).collect::<Vec<_>>(),
        ["settle"]
    );
    assert_eq!(
        balance_matching_log(&server, "cutoff").await,
        1_000_000 - cost
    );

    // A client that leaves mid-stream pays for the input and at most the whole answer's text; never
    // nothing. The ledger is polled: the server notices the departure on its next write.
    // The cut's cooldown reaches the profile after the client has the body: wait for it, or the reset
    // below can land first and the next request find the profile cooling down.
    wait_state(&server, "a", "cooldown", Duration::from_secs(10)).await;
    admin(
        &server,
        reqwest::Method::POST,
        "/admin/profiles/a/reset",
        None,
    )
    .await;
    mock.push(Reply::SlowStream {
        gap: Duration::from_millis(200),
    });
    let resp = client()
        .post(server.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .header("x-request-id", "cancel-1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let mut resp = resp;
    let first = resp.chunk().await.unwrap().unwrap();
    assert!(!first.is_empty());
    drop(resp);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let moved = loop {
        let moved = movements_of(&server, "cutoff", "cancel-1").await;
        if !moved.is_empty() {
            break moved;
        }
        assert!(std::time::Instant::now() < deadline, "never settled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!(moved[0].0, "settle", "{moved:?}");
    let c = credits(&server, "cutoff").await;
    let reserved = c["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["request_id"] == "cancel-1" && t["kind"] == "reserve")
        .unwrap()["amount_micros"]
        .as_i64()
        .unwrap();
    let charged = -reserved - moved[0].1;
    let input = estimate_micros(serde_json::to_vec(&body).unwrap().len());
    assert!(
        (input..=input + estimate_micros("mock reply from a".len())).contains(&charged),
        "charged {charged}, input {input}"
    );
}

#[tokio::test]
async fn metered_tiers_are_refused_unpriced_models_and_pay_the_answering_profiles_price() {
    let (a, b) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
    );
    let mut config = ConfigBuilder::default()
        .profile("a", &a)
        .profile_with(
            "b",
            &b.base_url(),
            &[
                "api_key: \"sk-b\"",
                "pricing: {p: {input_per_million: 3000, output_per_million: 3000}}",
            ],
        )
        .model("m", &["a"])
        .model("n", &["a"])
        .model("p", &["b"]);
    config.auth_required = true;
    config.max_attempts = 1;
    config.extra_yaml = TIERS.lines().map(str::to_owned).collect();
    let server = Server::start(&config);
    let key = new_key(&server, "pricey", "metered").await;
    let path = "/admin/accounts/pricey/credits";
    add_credits(&server, path, 1.0).await;

    // `n` has no price and there is no pricing_default: never free for a metered tier.
    let (s, _, body) = call(
        &server,
        reqwest::Method::POST,
        "/v1/chat/completions",
        Some(&key),
        Some(chat_req("n", json!({"max_tokens": 5}))),
    )
    .await;
    assert_eq!(s, 403, "{body}");
    let e = error_of(&body.to_string());
    assert_eq!(e["type"], "permission_error");
    assert!(
        e["message"].as_str().unwrap().contains("`n` has no price"),
        "{e}"
    );
    assert_eq!(a.request_count(), 0);
    assert_eq!(balance_matching_log(&server, "pricey").await, 1_000_000);

    // `p` is priced only by profile b: 3000 micro-USD a token.
    let (s, _, body) = call(
        &server,
        reqwest::Method::POST,
        "/v1/chat/completions",
        Some(&key),
        Some(chat_req("p", json!({"max_tokens": 5}))),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let tokens = body["usage"]["total_tokens"].as_i64().unwrap();
    assert_eq!(
        balance_matching_log(&server, "pricey").await,
        1_000_000 - tokens * 3000
    );
    let metrics = server.get("/metrics").send_text().await.2;
    assert!(
        metrics.contains("switchyard_unpriced_requests_total{model=\"n\",outcome=\"refused\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_reservation_left_open_by_a_crash_is_released_after_its_lease() {
    let mock = MockUpstream::start_named("a").await;
    mock.set_default(Reply::Hang);
    let mut config = ConfigBuilder::default()
        .profile("a", &mock)
        .model("m", &["a"]);
    config.auth_required = true;
    config.max_attempts = 1;
    config.timeouts.1 = "60s".into();
    config.extra_yaml = TIERS.lines().map(str::to_owned).collect();
    let mut server = Server::start(&config);
    let key = new_key(&server, "crashy", "metered").await;
    let path = "/admin/accounts/crashy/credits";
    add_credits(&server, path, 1.0).await;
    let url = server.url("/v1/chat/completions");
    let hanging = tokio::spawn(async move {
        let _ = client()
            .post(url)
            .bearer_auth(key)
            .header("x-request-id", "hung-1")
            .json(&chat_req("m", json!({"max_tokens": 10})))
            .send()
            .await;
    });
    assert!(mock.wait_for_requests(1, Duration::from_secs(10)).await);
    // An adjustment is written and flushed at once, the queued reserve with it: the crash below
    // then finds the reservation on disk.
    add_credits(&server, path, 1.0).await;
    let before = balance_matching_log(&server, "crashy").await;
    assert!(before < 2_000_000, "the reservation is taken: {before}");
    server.kill9();
    hanging.abort();

    // A short lease for the restart: the reservation is long past it.
    let mut yaml = std::fs::read_to_string(&server.config_path).unwrap();
    yaml.push_str("credits:\n  reservation_lease: 1s\n");
    std::fs::write(&server.config_path, yaml).unwrap();
    server.restart();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while balance_matching_log(&server, "crashy").await != 2_000_000 {
        assert!(
            std::time::Instant::now() < deadline,
            "the reservation never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let c = credits(&server, "crashy").await;
    let released: Vec<&Value> = c["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kind"] == "lease_expired")
        .collect();
    assert_eq!(released.len(), 1, "{c}");
    assert_eq!(released[0]["request_id"], "hung-1");
    assert_eq!(
        released[0]["amount_micros"].as_i64().unwrap(),
        2_000_000 - before
    );
    assert!(released[0]["reservation"]
        .as_str()
        .unwrap()
        .starts_with("tx_"));
}

#[tokio::test]
async fn crossing_a_share_of_the_monthly_credits_posts_one_signed_notice_per_month() {
    let (mock, receiver) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("notices").await,
    );
    let mut config = ConfigBuilder::default()
        .profile("a", &mock)
        .model("m", &["a"]);
    config.auth_required = true;
    config.max_attempts = 1;
    config.extra_yaml = TIERS.lines().map(str::to_owned).collect();
    config.extra_yaml.extend([
        "credits:".to_owned(),
        "  notify:".to_owned(),
        format!("    url: \"{}/notices\"", receiver.base_url()),
        "    thresholds: [0.8, 0.5]".to_owned(),
    ]);
    let mut server = Server::start_with_env(&config, &[(webhook::SECRET_ENV, WEBHOOK_SECRET)]);
    let key = new_key(&server, "spender", "monthly").await;
    let chat = |server: &Server| {
        let (server_url, key) = (server.url("/v1/chat/completions"), key.clone());
        async move {
            let resp = client()
                .post(server_url)
                .bearer_auth(key)
                .json(&chat_req("m", json!({"max_tokens": 5})))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
        }
    };
    let path = "/admin/accounts/spender/credits";
    let set_balance = |server: &Server, to: i64| {
        let server_url = server.url(path);
        async move {
            let c: Value = client()
                .get(&server_url)
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let delta = to - c["balance_micros"].as_i64().unwrap();
            let usd = delta as f64 / 1e6;
            let resp = client()
                .post(&server_url)
                .bearer_auth(ADMIN_TOKEN)
                .json(&json!({"amount_usd": usd}))
                .send()
                .await
                .unwrap();
            assert!(resp.status().is_success());
        }
    };
    chat(&server).await; // the month's grant: 1 USD
    set_balance(&server, 501_000).await;
    chat(&server).await; // used crosses 0.5
    assert!(receiver.wait_for_requests(1, Duration::from_secs(10)).await);
    chat(&server).await; // still above 0.5: no second notice
    set_balance(&server, 201_000).await;
    chat(&server).await; // crosses 0.8
    assert!(receiver.wait_for_requests(2, Duration::from_secs(10)).await);
    // Sent ones are remembered across a restart.
    server.terminate();
    server.restart();
    chat(&server).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = receiver.requests();
    assert_eq!(got.len(), 2, "one notice per threshold and month");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for (r, threshold) in got.iter().zip([0.5, 0.8]) {
        assert_eq!(r.path, "/v1/notices");
        let sig = &r
            .headers
            .iter()
            .find(|(n, _)| n == webhook::SIGNATURE_HEADER)
            .unwrap()
            .1;
        webhook::verify(WEBHOOK_SECRET.as_bytes(), sig, &r.body, now).unwrap();
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["type"], "credits.threshold_crossed");
        assert_eq!(v["account"], "spender");
        assert_eq!(v["threshold"], threshold);
        assert!(v["fraction_used"].as_f64().unwrap() >= threshold, "{v}");
    }
    let (s, _, me) = call(&server, reqwest::Method::GET, "/v1/me", Some(&key), None).await;
    assert_eq!(s, 200, "{me}");
    let c = &me["credits"];
    assert_eq!(c["monthly_credits_usd"], "1.000000", "{me}");
    assert_eq!(c["thresholds"], json!([0.5, 0.8]));
    assert_eq!(c["thresholds_crossed"], json!([0.5, 0.8]));
    assert!(c["fraction_used"].as_f64().unwrap() > 0.8, "{me}");
    assert!(
        c["balance_usd"].as_str().unwrap().starts_with("0.1"),
        "{me}"
    );
}

/// Adds `usd` to an account's credits through the admin API (`path` is its `/credits` route).
async fn add_credits(server: &Server, path: &str, usd: f64) {
    let body = Some(json!({ "amount_usd": usd }));
    admin(server, reqwest::Method::POST, path, body).await;
}
