//! Tests of the mock upstream over real HTTP: echo shapes, streaming framing, keep-alive, every fault,
//! the reply queue and request recording.
// Helpers here are test code too; clippy's test exemption only covers `#[test]` functions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchyard_load_tests::{MockOptions, MockUpstream, Reply};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn post(mock: &MockUpstream, path: &str, body: Value) -> reqwest::Response {
    client()
        .post(format!("{}{path}", mock.base_url()))
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn chat(stream: bool) -> Value {
    json!({
        "model": "gpt-4o-mini",
        "stream": stream,
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "say hi please"}],
    })
}

/// Splits an SSE body into the JSON of its `data:` events; `[DONE]` becomes `Value::Null`.
fn sse_data(body: &str) -> Vec<Value> {
    body.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let data = e.strip_prefix("data: ").unwrap();
            if data == "[DONE]" {
                Value::Null
            } else {
                serde_json::from_str(data).unwrap()
            }
        })
        .collect()
}

/// A raw HTTP/1.1 exchange that keeps the chunk framing visible: returns the head and each chunk's payload.
async fn raw_chunks(addr: std::net::SocketAddr, request: &[u8]) -> (String, Vec<String>) {
    let mut stream = BufReader::new(TcpStream::connect(addr).await.unwrap());
    stream.get_mut().write_all(request).await.unwrap();
    let mut head = String::new();
    loop {
        let mut line = String::new();
        stream.read_line(&mut line).await.unwrap();
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    let mut chunks = Vec::new();
    loop {
        let mut size = String::new();
        stream.read_line(&mut size).await.unwrap();
        let size = usize::from_str_radix(size.trim_end(), 16).unwrap();
        let mut data = vec![0; size + 2];
        stream.read_exact(&mut data).await.unwrap();
        assert!(data.ends_with(b"\r\n"));
        if size == 0 {
            return (head, chunks);
        }
        data.truncate(size);
        chunks.push(String::from_utf8(data).unwrap());
    }
}

fn raw_post(path: &str, body: &Value) -> Vec<u8> {
    let body = body.to_string();
    format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[tokio::test]
async fn chat_completion_echo_has_openai_shape() {
    let mock = MockUpstream::start_named("a").await;
    let resp = post(&mock, "/chat/completions", chat(false)).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.headers()["x-mock-upstream"], "a");
    let v: Value = resp.json().await.unwrap();
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-mock-"));
    assert_eq!(v["object"], "chat.completion");
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(v["model"], "gpt-4o-mini");
    assert_eq!(v["choices"][0]["index"], 0);
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["message"]["content"], "mock reply from a");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10})
    );
}

#[tokio::test]
async fn completions_embeddings_and_models_echo() {
    let mock = MockUpstream::start().await;
    let v: Value = post(
        &mock,
        "/completions",
        json!({"model": "davinci", "prompt": "one two three"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["model"], "davinci");
    assert_eq!(v["choices"][0]["text"], "mock reply from mock");
    assert_eq!(v["usage"]["prompt_tokens"], 3);
    assert_eq!(v["usage"]["total_tokens"], 8);

    let v: Value = post(
        &mock,
        "/embeddings",
        json!({"model": "text-embedding-3-small", "input": "hello world"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(
        v["data"],
        json!([{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}])
    );
    assert_eq!(v["model"], "text-embedding-3-small");
    assert_eq!(v["usage"], json!({"prompt_tokens": 2, "total_tokens": 2}));

    let v: Value = post(
        &mock,
        "/embeddings",
        json!({"model": "e", "input": ["a", "b c", "d"]}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 3);
    assert_eq!(v["data"][2]["index"], 2);
    assert_eq!(v["usage"]["prompt_tokens"], 4);

    let models = client()
        .get(format!("{}/models", mock.base_url()))
        .send()
        .await
        .unwrap();
    let v: Value = models.json().await.unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(
        v["data"][0],
        json!({"id": "gpt-4o-mini", "object": "model", "created": 0, "owned_by": "mock"})
    );

    mock.set_models(vec!["only-one".into()]);
    let v: Value = client()
        .get(format!("{}/models", mock.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 1);
    let one = client()
        .get(format!("{}/models/only-one", mock.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(one.status(), 200);
    let missing = client()
        .get(format!("{}/models/nope", mock.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn unknown_paths_and_bad_json_get_openai_errors() {
    let mock = MockUpstream::start().await;
    let resp = client()
        .get(format!("{}/nope", mock.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"]["message"].as_str().unwrap().contains("/v1/nope"));

    let resp = client()
        .post(format!("{}/chat/completions", mock.base_url()))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"].get("code").is_some() && v["error"].get("param").is_some());
}

#[tokio::test]
async fn chat_stream_sends_each_event_as_its_own_chunk_and_ends_with_done() {
    let mock = MockUpstream::start_named("b").await;
    let (head, chunks) =
        raw_chunks(mock.addr(), &raw_post("/v1/chat/completions", &chat(true))).await;
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"));
    assert!(head.contains("content-type: text/event-stream"));
    for chunk in &chunks {
        assert!(
            chunk.starts_with("data: ") && chunk.ends_with("\n\n"),
            "{chunk:?}"
        );
        assert_eq!(
            chunk.matches("data: ").count(),
            1,
            "one event per chunk: {chunk:?}"
        );
    }
    let events: Vec<Value> = chunks.iter().flat_map(|c| sse_data(c)).collect();
    assert_eq!(
        events.len(),
        1 + 5 + 1 + 1,
        "role, 5 pieces, finish, [DONE]"
    );
    assert_eq!(events[0]["object"], "chat.completion.chunk");
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    assert_eq!(events[0]["choices"][0]["delta"]["content"], "");
    let text: String = events[1..6]
        .iter()
        .map(|e| e["choices"][0]["delta"]["content"].as_str().unwrap())
        .collect();
    assert_eq!(text, "mock reply from b");
    assert_eq!(events[6]["choices"][0]["delta"], json!({}));
    assert_eq!(events[6]["choices"][0]["finish_reason"], "stop");
    assert!(events[..7].iter().all(|e| e.get("usage").is_none()));
    assert!(events[..7]
        .iter()
        .all(|e| e["id"] == events[0]["id"] && e["model"] == "gpt-4o-mini"));
    assert_eq!(events[7], Value::Null);
    assert_eq!(chunks.last().unwrap(), "data: [DONE]\n\n");
}

#[tokio::test]
async fn include_usage_adds_a_final_usage_chunk() {
    let mock = MockUpstream::start().await;
    let mut body = chat(true);
    body["stream_options"] = json!({"include_usage": true});
    let text = post(&mock, "/chat/completions", body)
        .await
        .text()
        .await
        .unwrap();
    let events = sse_data(&text);
    assert_eq!(events.len(), 1 + 5 + 1 + 1 + 1);
    for e in &events[..7] {
        assert!(e["usage"].is_null() && e.get("usage").is_some(), "{e}");
    }
    let usage = &events[7];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        usage["usage"],
        json!({"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10})
    );
    assert_eq!(events[8], Value::Null);
}

#[tokio::test]
async fn completion_stream_uses_text_completion_chunks() {
    let mock = MockUpstream::start().await;
    let text = post(
        &mock,
        "/completions",
        json!({"model": "m", "prompt": "x", "stream": true}),
    )
    .await
    .text()
    .await
    .unwrap();
    let events = sse_data(&text);
    assert!(events[..events.len() - 1]
        .iter()
        .all(|e| e["object"] == "text_completion"));
    let joined: String = events[..events.len() - 1]
        .iter()
        .map(|e| e["choices"][0]["text"].as_str().unwrap())
        .collect();
    assert_eq!(joined, "mock reply from mock");
    assert_eq!(
        events[events.len() - 2]["choices"][0]["finish_reason"],
        "stop"
    );
    assert_eq!(*events.last().unwrap(), Value::Null);
}

#[tokio::test]
async fn keep_alive_reuses_one_connection() {
    let mock = MockUpstream::start().await;
    let client = client();
    for _ in 0..2 {
        let resp = client
            .post(format!("{}/chat/completions", mock.base_url()))
            .json(&chat(false))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    }
    // A stream finishes with the zero-length chunk, so the connection stays reusable after it too.
    let resp = client
        .post(format!("{}/chat/completions", mock.base_url()))
        .json(&chat(true))
        .send()
        .await
        .unwrap();
    resp.bytes().await.unwrap();
    let resp = client
        .get(format!("{}/models", mock.base_url()))
        .send()
        .await
        .unwrap();
    resp.bytes().await.unwrap();
    assert_eq!(mock.connection_count(), 1);
    let requests = mock.requests();
    assert_eq!(requests.len(), 4);
    assert!(requests.iter().all(|r| r.peer == requests[0].peer));
}

#[tokio::test]
async fn status_reply_sends_status_headers_and_body() {
    let mock = MockUpstream::start().await;
    mock.push(Reply::rate_limited(3));
    mock.push(Reply::Status {
        status: 503,
        headers: vec![
            ("content-type".into(), "text/plain".into()),
            ("x-extra".into(), "1".into()),
        ],
        body: "busy".into(),
    });
    let resp = post(&mock, "/chat/completions", chat(false)).await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "3");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert_eq!(v["error"]["message"], "Rate limit reached");

    let resp = post(&mock, "/chat/completions", chat(false)).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["content-type"], "text/plain");
    assert_eq!(resp.headers()["x-extra"], "1");
    assert_eq!(resp.text().await.unwrap(), "busy");

    for (reply, status, code) in [
        (
            Reply::insufficient_quota(),
            429,
            json!("insufficient_quota"),
        ),
        (Reply::payment_required(), 402, json!(402)),
        (Reply::unauthorized(), 401, json!("invalid_api_key")),
        (Reply::server_error(), 500, Value::Null),
        (
            Reply::context_length(),
            400,
            json!("context_length_exceeded"),
        ),
    ] {
        mock.push(reply);
        let resp = post(&mock, "/chat/completions", chat(false)).await;
        assert_eq!(resp.status(), status);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["code"], code);
        assert!(v["error"]["message"].is_string());
    }
    mock.push(Reply::overloaded());
    let resp = post(&mock, "/chat/completions", chat(false)).await;
    assert_eq!(resp.status(), 529);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "overloaded_error");
}

#[tokio::test]
async fn delay_waits_before_headers() {
    let mock = MockUpstream::start().await;
    mock.push(Reply::Delay(
        Duration::from_millis(300),
        Box::new(Reply::Echo),
    ));
    let start = Instant::now();
    let resp = post(&mock, "/chat/completions", chat(false)).await;
    assert!(start.elapsed() >= Duration::from_millis(300));
    assert_eq!(resp.status(), 200);

    mock.push(Reply::Delay(
        Duration::from_millis(200),
        Box::new(Reply::server_error()),
    ));
    let start = Instant::now();
    let resp = post(&mock, "/chat/completions", chat(false)).await;
    assert!(start.elapsed() >= Duration::from_millis(200));
    assert_eq!(resp.status(), 500);
}

#[tokio::test]
async fn hang_never_answers() {
    let mock = MockUpstream::start().await;
    mock.push(Reply::Hang);
    let err = reqwest::Client::new()
        .post(format!("{}/chat/completions", mock.base_url()))
        .json(&chat(false))
        .timeout(Duration::from_millis(300))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(
        mock.request_count(),
        1,
        "the request was read before hanging"
    );
    // The next request is answered normally.
    assert_eq!(
        post(&mock, "/chat/completions", chat(false)).await.status(),
        200
    );
}

#[tokio::test]
async fn cut_stream_closes_mid_body() {
    let mock = MockUpstream::start().await;
    mock.push(Reply::CutStream { after: 3 });
    let mut resp = post(&mock, "/chat/completions", chat(true)).await;
    assert_eq!(resp.status(), 200);
    let mut got = String::new();
    let err = loop {
        match resp.chunk().await {
            Ok(Some(bytes)) => got.push_str(std::str::from_utf8(&bytes).unwrap()),
            Ok(None) => panic!("stream ended cleanly after {got:?}"),
            Err(e) => break e,
        }
    };
    assert!(
        err.is_body() || err.is_decode() || err.is_request(),
        "{err:?}"
    );
    assert_eq!(sse_data(&got).len(), 3);
    assert!(!got.contains("[DONE]"));

    // after: 0 cuts right after the headers.
    mock.push(Reply::CutStream { after: 0 });
    let resp = post(&mock, "/chat/completions", chat(true)).await;
    assert!(resp.bytes().await.is_err());
}

#[tokio::test]
async fn slow_stream_spaces_events() {
    let mock = MockUpstream::start().await;
    let gap = Duration::from_millis(60);
    mock.push(Reply::SlowStream { gap });
    let start = Instant::now();
    let mut resp = post(&mock, "/chat/completions", chat(true)).await;
    let mut arrivals = Vec::new();
    while let Some(bytes) = resp.chunk().await.unwrap() {
        arrivals.push((start.elapsed(), String::from_utf8(bytes.to_vec()).unwrap()));
    }
    // With a gap, every event reaches the client as its own read.
    assert_eq!(arrivals.len(), 8, "{arrivals:?}");
    assert!(arrivals
        .iter()
        .all(|(_, e)| e.matches("data: ").count() == 1));
    assert_eq!(arrivals.last().unwrap().1, "data: [DONE]\n\n");
    // The mock sleeps `gap` before each later event, so event i cannot arrive before i gaps have
    // passed since the request was sent. (Gaps between two arrivals are not asserted: a reader that is
    // scheduled late for one event sees the next one sooner, which on a loaded machine is not a fault.)
    for (i, (at, _)) in arrivals.iter().enumerate() {
        let earliest = gap * u32::try_from(i).unwrap();
        assert!(*at >= earliest, "event {i} at {at:?}: {arrivals:?}");
    }
}

#[tokio::test]
async fn reset_yields_a_connection_error() {
    let mock = MockUpstream::start().await;
    mock.push(Reply::Reset);
    let err = client()
        .post(format!("{}/chat/completions", mock.base_url()))
        .json(&chat(false))
        .send()
        .await
        .unwrap_err();
    assert!(!err.is_timeout(), "{err:?}");

    // At the socket level it is a real RST, not a FIN.
    mock.push(Reply::Reset);
    let mut stream = TcpStream::connect(mock.addr()).await.unwrap();
    stream
        .write_all(&raw_post("/v1/chat/completions", &chat(false)))
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let err = stream.read(&mut buf).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionReset);
    assert_eq!(mock.request_count(), 2);
}

#[tokio::test]
async fn garbage_is_200_and_not_json() {
    let mock = MockUpstream::start().await;
    mock.push(Reply::Garbage);
    let resp = post(&mock, "/chat/completions", chat(false)).await;
    assert_eq!(resp.status(), 200);
    let body = resp.bytes().await.unwrap();
    assert!(serde_json::from_slice::<Value>(&body).is_err());
}

#[tokio::test]
async fn pushed_replies_are_fifo_then_default_resumes() {
    let mock = MockUpstream::start().await;
    mock.push(Reply::status(500, "{}"));
    mock.push_n(2, Reply::status(429, "{}"));
    mock.push(Reply::status(401, "{}"));
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(
            post(&mock, "/chat/completions", chat(false))
                .await
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, [500, 429, 429, 401, 200, 200]);

    mock.set_default(Reply::server_error());
    mock.push(Reply::Echo);
    assert_eq!(
        post(&mock, "/chat/completions", chat(false)).await.status(),
        200
    );
    assert_eq!(
        post(&mock, "/chat/completions", chat(false)).await.status(),
        500
    );

    mock.push(Reply::unauthorized());
    mock.clear();
    assert_eq!(mock.request_count(), 0);
    assert!(mock.requests().is_empty());
    assert_eq!(
        post(&mock, "/chat/completions", chat(false)).await.status(),
        200
    );
    assert_eq!(mock.request_count(), 1);
}

#[tokio::test]
async fn records_method_path_headers_and_body() {
    let mock = MockUpstream::start().await;
    let body = chat(false);
    client()
        .post(format!(
            "{}/chat/completions?api-version=1",
            mock.base_url()
        ))
        .bearer_auth("sk-upstream")
        .header("X-Custom", "Yes")
        .json(&body)
        .send()
        .await
        .unwrap();
    let req = &mock.requests()[0];
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/v1/chat/completions?api-version=1");
    assert_eq!(req.path_only(), "/v1/chat/completions");
    assert_eq!(req.header("x-custom"), Some("Yes"));
    assert_eq!(req.header("X-CUSTOM"), Some("Yes"));
    assert!(
        req.headers.iter().any(|(n, _)| n == "x-custom"),
        "names are lowercased"
    );
    assert_eq!(req.bearer(), Some("sk-upstream"));
    assert_eq!(req.json(), body);
    assert_eq!(req.body, serde_json::to_vec(&body).unwrap());
}

#[tokio::test]
async fn chunked_request_bodies_are_decoded() {
    let mock = MockUpstream::start().await;
    let body = chat(false).to_string();
    let (a, b) = body.split_at(10);
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n\
         {:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    );
    let mut stream = TcpStream::connect(mock.addr()).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK"), "{response}");
    assert!(response.contains("connection: close"));
    assert_eq!(mock.requests()[0].json(), chat(false));
}

#[tokio::test]
async fn wait_for_requests_waits_and_times_out() {
    let mock = MockUpstream::start().await;
    assert!(!mock.wait_for_requests(1, Duration::from_millis(50)).await);
    let url = format!("{}/models", mock.base_url());
    let sender = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        for _ in 0..2 {
            reqwest::get(&url).await.unwrap();
        }
    });
    assert!(mock.wait_for_requests(2, Duration::from_secs(5)).await);
    sender.await.unwrap();
}

#[tokio::test]
async fn drop_stops_the_server() {
    let mock = MockUpstream::start().await;
    let addr = mock.addr();
    drop(mock);
    let err = TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[tokio::test]
async fn fault_rate_answers_that_share_with_500() {
    let mock = MockUpstream::start_with(MockOptions {
        fault_rate: 0.3,
        record_requests: false,
        ..MockOptions::default()
    })
    .await
    .unwrap();
    let client = client();
    let mut failures = 0;
    for _ in 0..100 {
        let resp = client
            .get(format!("{}/models", mock.base_url()))
            .send()
            .await
            .unwrap();
        if resp.status() == 500 {
            failures += 1;
        }
        resp.bytes().await.unwrap();
    }
    assert!((27..=33).contains(&failures), "{failures}");
    assert_eq!(mock.request_count(), 100);
    assert!(mock.requests().is_empty());
}

#[tokio::test]
async fn binary_prints_its_address_and_serves_the_echo() {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mock-upstream"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--name",
            "bin",
            "--latency-ms",
            "1",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next_line().await.unwrap().unwrap();
    let addr = first.strip_prefix("listening on ").unwrap();
    let v: Value = client()
        .post(format!("http://{addr}/v1/chat/completions"))
        .json(&chat(false))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "mock reply from bin");
    child.kill().await.unwrap();
}
