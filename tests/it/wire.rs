//! The wire: streaming relay, stream faults and timeouts, body pass-through, credentials, request ids,
//! the other endpoints, refused input and secrets in logs and errors.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::support::*;

/// Two profiles `a` then `b` (priority order) serving model `m`.
fn two(a: &MockUpstream, b: &MockUpstream) -> ConfigBuilder {
    ConfigBuilder::default()
        .profile("a", a)
        .profile("b", b)
        .model_with_strategy("m", &["a", "b"], "priority")
}

/// POSTs raw bytes as JSON with extra headers; returns (status, headers, body text).
async fn post_raw(
    server: &Server,
    path: &str,
    body: Vec<u8>,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut req = client()
        .post(server.url(path))
        .header("content-type", "application/json")
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("send");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.expect("body"))
}

/// GETs a path; returns (status, headers, body text).
async fn get(server: &Server, path: &str) -> (u16, reqwest::header::HeaderMap, String) {
    let resp = client().get(server.url(path)).send().await.expect("send");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.expect("body"))
}

/// The body an upstream received, as text (for messages).
fn body_text(r: &ReceivedRequest) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// The `data:` payloads of an SSE body, in order (`[DONE]` included as is).
fn sse_data(text: &str) -> Vec<String> {
    text.replace("\r\n", "\n")
        .split("\n\n")
        .filter_map(|event| {
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}

/// A streamed body and, for each non-empty chunk as it arrived, the time since `started`.
async fn read_chunks(resp: reqwest::Response, started: Instant) -> (Vec<u8>, Vec<Duration>) {
    let mut arrivals = Vec::new();
    let mut raw = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        if !chunk.is_empty() {
            arrivals.push(started.elapsed());
            raw.extend_from_slice(&chunk);
        }
    }
    (raw, arrivals)
}

/// The JSON events of an SSE body (everything but `[DONE]`).
fn sse_json(text: &str) -> Vec<Value> {
    sse_data(text)
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap_or_else(|_| panic!("event not JSON: {d}")))
        .collect()
}

/// The text a chat (delta.content) or completion (text) stream carries.
fn streamed_text(events: &[Value]) -> String {
    events
        .iter()
        .filter_map(|e| {
            let c = &e["choices"][0];
            c["delta"]["content"].as_str().or(c["text"].as_str())
        })
        .collect()
}

fn stream_body(model: &str) -> Value {
    json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "hello there"}]})
}

// ---------------------------------------------------------------------------------------------------
// Streaming

#[tokio::test]
async fn a_stream_is_relayed_chunk_by_chunk_and_hides_the_usage_chunk_the_client_did_not_ask_for() {
    let a = MockUpstream::start_named("a").await;
    a.push(Reply::SlowStream {
        gap: Duration::from_millis(150),
    });
    let server = Server::start(&ConfigBuilder::default().profile("a", &a).model("m", &["a"]));
    let started = Instant::now();
    let resp = client()
        .post(server.url("/v1/chat/completions"))
        .json(&stream_body("m"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    let (raw, arrivals) = read_chunks(resp, started).await;
    let end = started.elapsed();
    let first = arrivals[0];
    // The mock sends 9 events with 150ms between them (~1.2s): the first must not wait for the last.
    assert!(
        end >= Duration::from_millis(1000),
        "stream ended too soon: {end:?}"
    );
    assert!(
        end - first >= Duration::from_millis(700),
        "first bytes at {first:?}, end at {end:?}: the stream was buffered"
    );
    let spread = arrivals
        .windows(2)
        .filter(|w| w[1] - w[0] >= Duration::from_millis(80))
        .count();
    assert!(
        spread >= 4,
        "chunks did not arrive one by one: {arrivals:?}"
    );

    let text = String::from_utf8(raw).unwrap();
    let data = sse_data(&text);
    assert_eq!(
        data.last().map(String::as_str),
        Some("[DONE]"),
        "no [DONE]: {text}"
    );
    assert_eq!(data.iter().filter(|d| *d == "[DONE]").count(), 1, "{text}");
    let events = sse_json(&text);
    assert_eq!(streamed_text(&events), "mock reply from a", "{text}");
    // role chunk + 5 content chunks + finish chunk; the usage-only chunk is hidden.
    assert_eq!(events.len(), 7, "{text}");
    for e in &events {
        assert_ne!(e["choices"], json!([]), "usage-only chunk leaked: {text}");
        assert!(
            e["usage"].is_null(),
            "usage reached a client that did not ask: {text}"
        );
    }
    // ...but the upstream was asked for it.
    let got = a.requests();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].json()["stream_options"]["include_usage"],
        json!(true),
        "{}",
        body_text(&got[0])
    );
}

#[tokio::test]
async fn stream_events_that_arrive_together_are_sent_together() {
    let a = MockUpstream::start_named("a").await;
    // The default stream: 9 events, one chunk each, written back to back.
    let server = Server::start(&ConfigBuilder::default().profile("a", &a).model("m", &["a"]));
    for _ in 0..3 {
        let resp = client()
            .post(server.url("/v1/chat/completions"))
            .json(&stream_body("m"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let (raw, arrivals) = read_chunks(resp, Instant::now()).await;
        let chunks = arrivals.len();
        let text = String::from_utf8(raw).unwrap();
        assert_eq!(sse_json(&text).len(), 7, "{text}");
        // One write per event would be 8 chunks or more (7 events and [DONE]); the first event goes
        // out alone, with the response head, and what had arrived behind it follows in one write.
        assert!(chunks <= 4, "{chunks} chunks for 8 events: {text}");
    }
}

#[tokio::test]
async fn a_client_that_asks_for_stream_usage_receives_the_usage_chunk() {
    let a = MockUpstream::start_named("a").await;
    let server = Server::start(&ConfigBuilder::default().profile("a", &a).model("m", &["a"]));
    let mut body = stream_body("m");
    body["stream_options"] = json!({"include_usage": true});
    let (status, headers, text) = chat(&server, &body).await;
    assert_eq!(status, 200, "{text}");
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let data = sse_data(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{text}");
    let events = sse_json(&text);
    assert_eq!(streamed_text(&events), "mock reply from a");
    let last = events.last().unwrap();
    assert_eq!(last["choices"], json!([]), "{text}");
    assert_eq!(last["usage"]["completion_tokens"], 5, "{text}");
    assert_eq!(last["usage"]["prompt_tokens"], 2, "{text}");
    assert_eq!(
        a.requests()[0].json()["stream_options"]["include_usage"],
        json!(true)
    );
}

#[tokio::test]
async fn a_stream_cut_after_bytes_ends_with_an_error_event_and_no_done() {
    let (a, b) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
    );
    a.push(Reply::CutStream { after: 3 });
    let server = Server::start(&two(&a, &b));
    let (status, headers, text) = chat(&server, &stream_body("m")).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(headers["x-switchyard-profile"], "a");
    let data = sse_data(&text);
    assert!(!data.iter().any(|d| d == "[DONE]"), "fake [DONE]: {text}");
    assert_eq!(data.len(), 4, "3 events and an error event: {text}");
    let events = sse_json(&text);
    for e in &events[..3] {
        assert_eq!(e["object"], "chat.completion.chunk", "{text}");
    }
    let err = error_of(&events[3].to_string());
    assert!(err["type"].is_string(), "{text}");
    assert!(
        err["message"].as_str().unwrap().contains('a'),
        "the error names no profile: {text}"
    );
    // Bytes reached the client: no failover to b.
    assert_eq!(b.request_count(), 0);
}

#[tokio::test]
async fn a_stream_cut_before_any_event_fails_over_silently() {
    let (a, b) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
    );
    a.push(Reply::CutStream { after: 0 });
    let server = Server::start(&two(&a, &b));
    let (status, headers, text) = chat(&server, &stream_body("m")).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(headers["x-switchyard-profile"], "b");
    assert_eq!(headers["x-switchyard-attempts"], "2");
    let data = sse_data(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{text}");
    let events = sse_json(&text);
    assert!(events.iter().all(|e| e.get("error").is_none()), "{text}");
    assert_eq!(streamed_text(&events), "mock reply from b", "{text}");
    assert_eq!(a.request_count(), 1);
    assert_eq!(b.request_count(), 1);
}

#[tokio::test]
async fn an_idle_stream_ends_with_an_error_event() {
    let (a, b) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
    );
    a.push(Reply::SlowStream {
        gap: Duration::from_secs(2),
    });
    let mut cfg = two(&a, &b);
    cfg.timeouts = ("2s".into(), "5s".into(), "300ms".into());
    let server = Server::start(&cfg);
    let started = Instant::now();
    let (status, headers, text) = chat(&server, &stream_body("m")).await;
    let took = started.elapsed();
    assert_eq!(status, 200, "{text}");
    assert_eq!(headers["x-switchyard-profile"], "a");
    assert!(took < Duration::from_millis(1800), "took {took:?}");
    let data = sse_data(&text);
    assert!(!data.iter().any(|d| d == "[DONE]"), "{text}");
    let events = sse_json(&text);
    assert_eq!(events.len(), 2, "first event then the error: {text}");
    assert_eq!(events[0]["object"], "chat.completion.chunk");
    error_of(&events[1].to_string());
    assert_eq!(b.request_count(), 0);
}

#[tokio::test]
async fn a_first_byte_timeout_fails_over() {
    let (a, b) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
    );
    a.push(Reply::Hang);
    let mut cfg = two(&a, &b);
    cfg.timeouts = ("2s".into(), "300ms".into(), "5s".into());
    let server = Server::start(&cfg);
    let started = Instant::now();
    let (status, headers, body) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-switchyard-profile"], "b");
    assert_eq!(headers["x-switchyard-attempts"], "2");
    assert!(started.elapsed() < Duration::from_secs(2));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "mock reply from b");
}

#[tokio::test]
async fn a_first_byte_timeout_with_one_profile_is_a_504_timeout() {
    let a = MockUpstream::start_named("a").await;
    a.push(Reply::Hang);
    let mut cfg = ConfigBuilder::default().profile("a", &a).model("m", &["a"]);
    cfg.timeouts = ("2s".into(), "300ms".into(), "5s".into());
    let server = Server::start(&cfg);
    let started = Instant::now();
    let (status, headers, body) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 504, "{body}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(headers.contains_key("x-request-id"));
    let e = error_of(&body);
    assert_eq!(e["type"], "timeout", "{body}");
    assert!(e["message"].as_str().unwrap().contains('a'), "{body}");
}

// ---------------------------------------------------------------------------------------------------
// Bodies

#[tokio::test]
async fn an_untouched_body_reaches_the_upstream_byte_for_byte() {
    let a = MockUpstream::start_named("a").await;
    let server = Server::start(&ConfigBuilder::default().profile("a", &a).model("m", &["a"]));
    let sent = "{ \"model\" :\"m\",\n  \"messages\": [{\"role\":\"user\",\"content\":\"h\\u00e9llo \u{fc}\"}],\n  \
                \"x_vendor_ext\": {\"deep\": [1, 2.50, null, true, 1e3], \"s\": \"\\\"q\\\"\"},\n  \
                \"temperature\" : 0.70, \"seed\": 12345678901234567890, \"n\": 1\n}\n"
        .as_bytes()
        .to_vec();
    let (status, _, body) = post_raw(&server, "/v1/chat/completions", sent.clone(), &[]).await;
    assert_eq!(status, 200, "{body}");
    let got = a.requests();
    assert_eq!(got.len(), 1);
    assert_eq!(
        &got[0].body[..],
        &sent[..],
        "upstream got {:?}",
        body_text(&got[0])
    );
    assert_eq!(got[0].path, "/v1/chat/completions");
}

/// Byte offsets of `"key"` in `text`, in the order of `keys`.
fn key_positions(text: &str, keys: &[&str]) -> Vec<usize> {
    keys.iter()
        .map(|k| {
            text.find(&format!("\"{k}\""))
                .unwrap_or_else(|| panic!("no key {k} in {text}"))
        })
        .collect()
}

#[tokio::test]
async fn model_map_rewrites_only_the_model() {
    let a = MockUpstream::start_named("a").await;
    let cfg = ConfigBuilder::default()
        .profile_with(
            "a",
            &a.base_url(),
            &["api_key: \"sk-a-secret\"", "model_map: {m: upstream-m}"],
        )
        .model("m", &["a"]);
    let server = Server::start(&cfg);
    let sent = r#"{"zeta_first": {"k": [3, 2, 1]}, "model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.25, "x_custom": "keep me", "alpha_last": null}"#;
    let (status, _, body) = post_raw(
        &server,
        "/v1/chat/completions",
        sent.as_bytes().to_vec(),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let got = a.requests();
    assert_eq!(got.len(), 1);
    let up_text = body_text(&got[0]);
    let up = got[0].json();
    assert_eq!(up["model"], "upstream-m", "{up_text}");
    let mut expected: Value = serde_json::from_str(sent).unwrap();
    expected["model"] = json!("upstream-m");
    assert_eq!(up, expected, "{up_text}");
    let keys = [
        "zeta_first",
        "model",
        "messages",
        "temperature",
        "x_custom",
        "alpha_last",
    ];
    let pos = key_positions(&up_text, &keys);
    assert!(
        pos.windows(2).all(|w| w[0] < w[1]),
        "key order changed: {up_text}"
    );
    assert_eq!(up.as_object().unwrap().len(), keys.len(), "{up_text}");
}

// ---------------------------------------------------------------------------------------------------
// Credentials

#[tokio::test]
async fn the_upstream_gets_the_profile_key_never_the_clients_credentials() {
    let a = MockUpstream::start_named("a").await;
    let server = Server::start(&ConfigBuilder::default().profile("a", &a).model("m", &["a"]));
    for headers in [
        &[("authorization", "Bearer client-token-111")][..],
        &[("x-api-key", "client-key-222")][..],
        &[
            ("authorization", "Bearer client-token-111"),
            ("x-api-key", "client-key-222"),
        ][..],
    ] {
        let (status, _, body) =
            post(&server, "/v1/chat/completions", &chat_body("m"), headers).await;
        assert_eq!(status, 200, "{body}");
    }
    let got = a.requests();
    assert_eq!(got.len(), 3);
    for r in &got {
        assert_eq!(r.bearer(), Some("sk-a-secret"));
        assert_eq!(
            r.headers
                .iter()
                .filter(|(n, _)| n == "authorization")
                .count(),
            1
        );
        for (name, value) in &r.headers {
            assert!(
                !value.contains("client-token-111") && !value.contains("client-key-222"),
                "client credential forwarded in {name}: {value}"
            );
        }
        assert!(r.header("x-api-key").is_none(), "{:?}", r.headers);
    }
}

#[tokio::test]
async fn api_key_env_is_read_from_the_environment() {
    let a = MockUpstream::start_named("a").await;
    let cfg = ConfigBuilder::default()
        .profile_with(
            "a",
            &a.base_url(),
            &["api_key_env: SWITCHYARD_WIRE_TEST_KEY_A"],
        )
        .model("m", &["a"]);
    let server = Server::start_with_env(&cfg, &[("SWITCHYARD_WIRE_TEST_KEY_A", "sk-from-env-777")]);
    let (status, _, body) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(a.requests()[0].bearer(), Some("sk-from-env-777"));
}

#[tokio::test]
async fn an_unset_api_key_env_marks_the_profile_auth_failed_and_the_other_serves() {
    let (a, b) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
    );
    const VAR: &str = "SWITCHYARD_WIRE_TEST_UNSET_VAR_9F3";
    assert!(std::env::var(VAR).is_err());
    let cfg = ConfigBuilder::default()
        .profile_with("a", &a.base_url(), &[&format!("api_key_env: {VAR}")])
        .profile("b", &b)
        .model_with_strategy("m", &["a", "b"], "priority");
    let server = Server::start(&cfg);
    let p = wait_state(&server, "a", "auth_failed", Duration::from_secs(3)).await;
    let named = p
        .as_object()
        .unwrap()
        .values()
        .filter_map(Value::as_str)
        .any(|s| s.contains(VAR));
    assert!(named, "no reason naming {VAR}: {p}");
    assert_eq!(admin_profile(&server, "b").await["state"], "healthy");
    for _ in 0..3 {
        let (status, headers, body) = chat(&server, &chat_body("m")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(headers["x-switchyard-profile"], "b");
        assert_eq!(headers["x-switchyard-attempts"], "1");
    }
    assert_eq!(a.request_count(), 0);
    assert_eq!(b.request_count(), 3);
}

// ---------------------------------------------------------------------------------------------------
// Request ids and response headers

#[tokio::test]
async fn a_client_request_id_is_echoed_and_forwarded() {
    let a = MockUpstream::start_named("a").await;
    let server = Server::start(&ConfigBuilder::default().profile("a", &a).model("m", &["a"]));
    let (status, headers, body) = post(
        &server,
        "/v1/chat/completions",
        &chat_body("m"),
        &[("x-request-id", "client-req-42")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-request-id"], "client-req-42");
    assert_eq!(
        a.requests()[0].header("x-request-id"),
        Some("client-req-42")
    );
}

/// What goes upstream is the profile's request and none of the client's headers: the same set reqwest
/// sent (host, a content-length for the body, `accept: */*`, JSON, the request id, the credential, the
/// profile's own headers), on HTTP/1.1.
#[tokio::test]
async fn the_upstream_gets_the_profiles_headers_and_none_of_the_clients() {
    let a = MockUpstream::start_named("a").await;
    let cfg = ConfigBuilder::default()
        .profile_with(
            "a",
            &a.base_url(),
            &["api_key: \"sk-a-secret\"", "headers: {x-team: core}"],
        )
        .model("m", &["a"]);
    let server = Server::start(&cfg);
    let (status, _, body) = post(
        &server,
        "/v1/chat/completions",
        &chat_body("m"),
        &[
            ("x-request-id", "hdr-req-1"),
            ("x-client-only", "secret-ish"),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let got = &a.requests()[0];
    assert_eq!(got.method, "POST");
    assert_eq!(got.path, "/v1/chat/completions");
    assert_eq!(got.header("host"), Some(a.addr().to_string().as_str()));
    assert_eq!(
        got.header("content-length"),
        Some(got.body.len().to_string().as_str())
    );
    assert_eq!(got.header("accept"), Some("*/*"));
    assert_eq!(got.header("content-type"), Some("application/json"));
    assert_eq!(got.header("x-request-id"), Some("hdr-req-1"));
    assert_eq!(got.bearer(), Some("sk-a-secret"));
    assert_eq!(got.header("x-team"), Some("core"));
    assert_eq!(got.header("x-client-only"), None);
    let mut names: Vec<String> = got
        .headers
        .iter()
        .map(|(n, _)| n.to_ascii_lowercase())
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        [
            "accept",
            "authorization",
            "content-length",
            "content-type",
            "host",
            "x-request-id",
            "x-team"
        ],
        "{:?}",
        got.headers
    );
}

#[tokio::test]
async fn without_a_client_request_id_one_is_generated_and_forwarded() {
    let a = MockUpstream::start_named("a").await;
    let server = Server::start(&ConfigBuilder::default().profile("a", &a).model("m", &["a"]));
    let mut ids = Vec::new();
    for i in 0..2 {
        let (status, headers, body) = chat(&server, &chat_body("m")).await;
        assert_eq!(status, 200, "{body}");
        let id = headers["x-request-id"].to_str().unwrap().to_owned();
        assert!(id.len() >= 8, "{id}");
        assert_eq!(a.requests()[i].header("x-request-id"), Some(id.as_str()));
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1]);
}

#[tokio::test]
async fn error_responses_carry_a_request_id() {
    let a = MockUpstream::start_named("a").await;
    a.set_default(Reply::server_error());
    let server = Server::start(&ConfigBuilder::default().profile("a", &a).model("m", &["a"]));
    // Unknown model (404), malformed body (400), upstream failure (502), unknown path (404).
    let (s, h, b) = post(
        &server,
        "/v1/chat/completions",
        &chat_body("nope"),
        &[("x-request-id", "err-req-1")],
    )
    .await;
    assert_eq!(s, 404, "{b}");
    assert_eq!(h["x-request-id"], "err-req-1");
    let (s, h, b) = post_raw(
        &server,
        "/v1/chat/completions",
        b"{oops".to_vec(),
        &[("x-request-id", "err-req-2")],
    )
    .await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(h["x-request-id"], "err-req-2");
    let (s, h, b) = post(
        &server,
        "/v1/chat/completions",
        &chat_body("m"),
        &[("x-request-id", "err-req-3")],
    )
    .await;
    assert_eq!(s, 502, "{b}");
    assert_eq!(h["x-request-id"], "err-req-3");
    assert_eq!(a.requests()[0].header("x-request-id"), Some("err-req-3"));
    let (s, h, b) = get(&server, "/v1/nothing-here").await;
    assert_eq!(s, 404, "{b}");
    assert!(!h["x-request-id"].is_empty());
}

#[tokio::test]
async fn proxied_responses_name_the_profile_and_the_attempts() {
    let (a, b) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
    );
    a.push(Reply::server_error());
    let server = Server::start(&two(&a, &b));
    let (status, headers, body) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-switchyard-profile"], "b");
    assert_eq!(headers["x-switchyard-attempts"], "2");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "mock reply from b");
    // a cools down after its 500: the next request goes straight to b.
    let (status, headers, _) = chat(&server, &stream_body("m")).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-switchyard-profile"], "b");
    assert_eq!(headers["x-switchyard-attempts"], "1");
}

// ---------------------------------------------------------------------------------------------------
// Other endpoints

#[tokio::test]
async fn completions_pass_through_plain_and_streamed() {
    let a = MockUpstream::start_named("a").await;
    let server = Server::start(&ConfigBuilder::default().profile("a", &a).model("m", &["a"]));
    let (status, headers, body) = post(
        &server,
        "/v1/completions",
        &json!({"model": "m", "prompt": "say hi", "max_tokens": 5}),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-switchyard-profile"], "a");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], "mock reply from a");
    assert_eq!(v["usage"]["completion_tokens"], 5);

    let (status, headers, text) = post(
        &server,
        "/v1/completions",
        &json!({"model": "m", "prompt": "say hi", "stream": true}),
        &[],
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let data = sse_data(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{text}");
    let events = sse_json(&text);
    assert!(events.iter().all(|e| e["object"] == "text_completion"));
    assert!(events.iter().all(|e| e["choices"] != json!([])), "{text}");
    assert_eq!(streamed_text(&events), "mock reply from a");
    let got = a.requests();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|r| r.path == "/v1/completions"));
    assert_eq!(got[1].json()["stream_options"]["include_usage"], true);
}

#[tokio::test]
async fn embeddings_pass_through() {
    let a = MockUpstream::start_named("a").await;
    let server = Server::start(
        &ConfigBuilder::default()
            .profile("a", &a)
            .model("emb", &["a"]),
    );
    let sent = br#"{"model":"emb","input":["one two","three"],"encoding_format":"float"}"#.to_vec();
    let (status, headers, body) = post_raw(&server, "/v1/embeddings", sent.clone(), &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-switchyard-profile"], "a");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v,
        json!({
            "object": "list",
            "data": [
                {"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]},
                {"object": "embedding", "index": 1, "embedding": [0.1, 0.2, 0.3]},
            ],
            "model": "emb",
            "usage": {"prompt_tokens": 3, "total_tokens": 3},
        })
    );
    let got = a.requests();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].method, "POST");
    assert_eq!(got[0].path, "/v1/embeddings");
    assert_eq!(&got[0].body[..], &sent[..]);
}

#[tokio::test]
async fn models_lists_the_configured_names() {
    let a = MockUpstream::start_named("a").await;
    let server = Server::start(
        &ConfigBuilder::default()
            .profile("a", &a)
            .model("alpha-model", &["a"])
            .model("beta-model", &["a"]),
    );
    let (status, headers, body) = get(&server, "/v1/models").await;
    assert_eq!(status, 200, "{body}");
    assert!(headers.contains_key("x-request-id"));
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "list", "{body}");
    let data = v["data"].as_array().unwrap();
    let ids: Vec<&str> = data.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["alpha-model", "beta-model"], "{body}");
    assert!(data.iter().all(|m| m["object"] == "model"), "{body}");

    let (status, _, body) = get(&server, "/v1/models/beta-model").await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["id"], "beta-model");
    assert_eq!(v["object"], "model");

    let (status, _, body) = get(&server, "/v1/models/gpt-4o").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(error_of(&body)["type"], "not_found_error");
    // The model list is the proxy's own: the upstream is not asked.
    assert_eq!(a.request_count(), 0);
}

// ---------------------------------------------------------------------------------------------------
// Refused input

#[tokio::test]
async fn bad_input_is_refused_with_openai_errors_and_nothing_goes_upstream() {
    let a = MockUpstream::start_named("a").await;
    let mut cfg = ConfigBuilder::default().profile("a", &a).model("m", &["a"]);
    cfg.max_body_size = Some("1KiB".into());
    let server = Server::start(&cfg);
    let chat_path = "/v1/chat/completions";

    let (s, _, b) = post_raw(&server, chat_path, b"{\"model\": \"m\", ".to_vec(), &[]).await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(error_of(&b)["type"], "invalid_request_error", "{b}");

    let (s, _, b) = post_raw(&server, chat_path, Vec::new(), &[]).await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(error_of(&b)["type"], "invalid_request_error", "{b}");

    let (s, _, b) = post(&server, chat_path, &json!({"messages": []}), &[]).await;
    assert_eq!(s, 400, "{b}");
    let e = error_of(&b);
    assert_eq!(e["type"], "invalid_request_error", "{b}");
    assert_eq!(e["param"], "model", "{b}");

    let (s, _, b) = post(&server, chat_path, &chat_body("no-such-model"), &[]).await;
    assert_eq!(s, 404, "{b}");
    let e = error_of(&b);
    assert_eq!(e["type"], "not_found_error", "{b}");
    assert!(e["message"].as_str().unwrap().contains("no-such-model"));

    let big = json!({"model": "m", "messages": [{"role": "user", "content": "x".repeat(2048)}]});
    let (s, _, b) = post(&server, chat_path, &big, &[]).await;
    assert_eq!(s, 413, "{b}");
    error_of(&b);

    // Same without a Content-Length (chunked): the limit holds while reading.
    let bytes = serde_json::to_vec(&big).unwrap();
    let resp = client()
        .post(server.url(chat_path))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter([
            Ok::<_, std::io::Error>(bytes),
        ])))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    error_of(&resp.text().await.unwrap());

    let (s, _, b) = post(&server, "/v1/nope", &chat_body("m"), &[]).await;
    assert_eq!(s, 404, "{b}");
    assert_eq!(error_of(&b)["type"], "not_found_error", "{b}");
    let (s, _, b) = get(&server, "/v2/chat/completions").await;
    assert_eq!(s, 404, "{b}");
    error_of(&b);

    assert_eq!(a.request_count(), 0, "{:?}", a.requests());
}

#[tokio::test]
async fn upstream_garbage_fails_over() {
    let (a, b) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
    );
    a.push(Reply::Garbage);
    let server = Server::start(&two(&a, &b));
    let (status, headers, body) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-switchyard-profile"], "b");
    assert_eq!(headers["x-switchyard-attempts"], "2");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "mock reply from b");
}

#[tokio::test]
async fn upstream_garbage_with_one_profile_is_a_502() {
    let a = MockUpstream::start_named("a").await;
    a.push(Reply::Garbage);
    let server = Server::start(&ConfigBuilder::default().profile("a", &a).model("m", &["a"]));
    let (status, _, body) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 502, "{body}");
    let e = error_of(&body);
    assert_eq!(e["type"], "upstream_error", "{body}");
    assert!(!body.contains("<html>"), "garbage relayed: {body}");
}

// ---------------------------------------------------------------------------------------------------
// Secrets

#[tokio::test]
async fn profile_keys_never_reach_logs_or_error_messages() {
    let (a, b) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
    );
    let server = Server::start(&two(&a, &b));
    // A normal answer, a stream, then both keys refused upstream.
    let (status, _, _) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 200);
    let (status, _, _) = chat(&server, &stream_body("m")).await;
    assert_eq!(status, 200);
    a.push(Reply::unauthorized());
    b.push(Reply::unauthorized());
    let (status, _, body) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 502, "{body}");
    error_of(&body);
    assert!(
        !body.contains("sk-a-secret") && !body.contains("sk-b-secret"),
        "{body}"
    );
    wait_state(&server, "a", "auth_failed", Duration::from_secs(3)).await;
    wait_state(&server, "b", "auth_failed", Duration::from_secs(3)).await;
    let (status, _, body) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 503, "{body}");
    assert!(!body.contains("-secret"), "{body}");
    let admin = serde_json::to_string(&admin_profiles(&server).await).unwrap();
    assert!(!admin.contains("-secret"), "{admin}");
    // Let the log reader catch up with the last request.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = server.logs();
    assert!(logs.contains("attempt failed"), "{logs}");
    assert!(
        !logs.contains("sk-a-secret") && !logs.contains("sk-b-secret"),
        "{logs}"
    );
}

/// Some upstreams quote the key they refused; the proxy must not pass it on.
#[tokio::test]
async fn a_key_quoted_back_by_the_upstream_is_not_passed_on() {
    let a = MockUpstream::start_named("a").await;
    a.push(Reply::status(
        401,
        json!({"error": {
            "message": "Incorrect API key provided: sk-a-secret. You can find your API key at https://example.invalid/keys.",
            "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}})
        .to_string(),
    ));
    let server = Server::start(&ConfigBuilder::default().profile("a", &a).model("m", &["a"]));
    let (status, _, body) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 502, "{body}");
    error_of(&body);
    let p = wait_state(&server, "a", "auth_failed", Duration::from_secs(3)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let logs = server.logs();
    let leaks: Vec<String> = [
        ("the client's error", body.clone()),
        ("GET /admin/profiles", p.to_string()),
        ("the logs", logs),
    ]
    .into_iter()
    .filter(|(_, text)| text.contains("sk-a-secret"))
    .map(|(place, text)| {
        let lines: Vec<&str> = text.lines().filter(|l| l.contains("sk-a-secret")).collect();
        format!("{place}: {}", lines.join("\n"))
    })
    .collect();
    assert!(
        leaks.is_empty(),
        "the profile key leaked into:\n{}",
        leaks.join("\n")
    );
}
