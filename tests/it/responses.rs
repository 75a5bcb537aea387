//! The Responses API beyond a single call: a response id pinned to the profile that created it, so
//! `previous_response_id`, `GET`/`DELETE /v1/responses/{id}` and `.../input_items` reach that profile
//! under round robin; an id the proxy never saw is an OpenAI-shaped 404.

use serde_json::{json, Value};

use crate::support::*;

fn two_profiles(a: &MockUpstream, b: &MockUpstream) -> Server {
    Server::start(
        &ConfigBuilder::default()
            .profile("a", a)
            .profile("b", b)
            .model("gpt-4o-mini", &["a", "b"]),
    )
}

/// Creates a response (JSON or streamed); its id and the profile that made it.
async fn create(server: &Server, body: &Value) -> (String, String) {
    let resp = client()
        .post(server.url("/v1/responses"))
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let profile = resp.headers()["x-switchyard-profile"]
        .to_str()
        .unwrap()
        .to_owned();
    let text = resp.text().await.unwrap();
    let id = if body["stream"] == true {
        let line = text
            .lines()
            .find(|l| l.starts_with("data: ") && l.contains("response.created"))
            .unwrap();
        let v: Value = serde_json::from_str(&line["data: ".len()..]).unwrap();
        v["response"]["id"].as_str().unwrap().to_owned()
    } else {
        let v: Value = serde_json::from_str(&text).unwrap();
        v["id"].as_str().unwrap().to_owned()
    };
    (id, profile)
}

fn turn(previous: Option<&str>, stream: bool) -> Value {
    let mut body = json!({"model": "gpt-4o-mini", "input": "next turn", "stream": stream});
    if let Some(id) = previous {
        body["previous_response_id"] = json!(id);
    }
    body
}

#[tokio::test]
async fn previous_response_id_goes_to_the_profile_that_created_it() {
    let (a, b) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
    );
    let server = two_profiles(&a, &b);
    for stream in [false, true] {
        let (id, maker) = create(&server, &turn(None, stream)).await;
        assert!(
            id.starts_with(&format!("resp_{maker}_")),
            "the id passes unchanged: {id}"
        );
        let mut seen = Vec::new();
        for _ in 0..4 {
            let (_, profile) = create(&server, &turn(Some(&id), stream)).await;
            seen.push(profile);
        }
        assert!(seen.iter().all(|p| *p == maker), "{maker}: {seen:?}");
        // Without it, round robin spreads the same turns over both.
        let mut spread = Vec::new();
        for _ in 0..4 {
            spread.push(create(&server, &turn(None, stream)).await.1);
        }
        assert!(spread.iter().any(|p| *p != spread[0]), "{spread:?}");
    }
}

#[tokio::test]
async fn a_pinned_profile_that_is_down_is_not_replaced_by_one_that_never_saw_the_id() {
    let (a, b) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
    );
    let server = two_profiles(&a, &b);
    let (id, maker) = create(&server, &turn(None, false)).await;
    let (mock, other) = if maker == "a" { (&a, &b) } else { (&b, &a) };
    mock.set_default(Reply::status(500, "down"));
    other.clear();
    let resp = client()
        .post(server.url("/v1/responses"))
        .json(&turn(Some(&id), false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    let v: Value = resp.json().await.unwrap();
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("created by profile {maker}")),
        "{message}"
    );
    assert_eq!(
        other.request_count(),
        0,
        "the other profile does not know the id"
    );
}

#[tokio::test]
async fn stored_response_routes_reach_the_profile_that_created_it() {
    let (a, b) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
    );
    let server = two_profiles(&a, &b);
    // Two responses, one on each profile (round robin).
    let first = create(&server, &turn(None, false)).await;
    let second = create(&server, &turn(None, false)).await;
    assert_ne!(first.1, second.1);
    for (id, maker) in [&first, &second] {
        for _ in 0..2 {
            let resp = client()
                .get(server.url(&format!("/v1/responses/{id}")))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.headers()["x-switchyard-profile"], maker.as_str());
            let v: Value = resp.json().await.unwrap();
            assert_eq!(v["id"], id.as_str());
        }
        let resp = client()
            .get(server.url(&format!("/v1/responses/{id}/input_items?limit=5")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["x-switchyard-profile"], maker.as_str());
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["object"], "list");
        let mock = if maker == "a" { &a } else { &b };
        let got = mock.requests();
        let last = got.last().unwrap();
        assert_eq!(last.method, "GET");
        assert_eq!(last.path, format!("/v1/responses/{id}/input_items?limit=5"));
        assert_eq!(last.bearer(), Some(format!("sk-{maker}-secret").as_str()));
        let resp = client()
            .delete(server.url(&format!("/v1/responses/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["deleted"], true);
        assert_eq!(mock.requests().last().unwrap().method, "DELETE");
        // Deleted: the proxy forgets the id.
        let (s, _, _) = server.get(&format!("/v1/responses/{id}")).send().await;
        assert_eq!(s, 404);
    }
}

#[tokio::test]
async fn an_unknown_response_id_is_an_openai_shaped_404() {
    let (a, b) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
    );
    let server = two_profiles(&a, &b);
    for path in [
        "/v1/responses/resp_never_made",
        "/v1/responses/resp_never_made/input_items",
        "/v1/responses/..%2F..%2Fadmin",
    ] {
        let resp = client().get(server.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{path}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["type"], "not_found_error", "{v}");
        assert!(v["error"]["message"].is_string());
    }
    let (s, _, _) = server.delete("/v1/responses/resp_never_made").send().await;
    assert_eq!(s, 404);
    assert_eq!(
        a.request_count() + b.request_count(),
        0,
        "nothing asked upstream"
    );
}

/// The captured Codex request's body, for `model`.
fn codex(model: &str, stream: bool) -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/clients/codex-responses.json"
    );
    let fixture: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let mut body = fixture["request"]["body"].clone();
    body["model"] = json!(model);
    body["stream"] = json!(stream);
    body
}

/// A chat-only profile (DeepSeek has no Responses API) and an Anthropic one, each a model of its own.
fn bridged(d: &MockUpstream, a: &MockUpstream) -> Server {
    Server::start(
        &ConfigBuilder::default()
            .profile_with(
                "d",
                &d.base_url(),
                &["provider: deepseek", "api_key: \"sk-d-secret\""],
            )
            .profile_with(
                "a",
                &a.base_url(),
                &["provider: anthropic", "api_key: \"sk-ant-a\""],
            )
            .model("gpt-4o-mini", &["d"])
            .model("claude-opus-4-8", &["a"]),
    )
}

async fn send(server: &Server, body: &Value) -> (u16, String) {
    let resp = client()
        .post(server.url("/v1/responses"))
        .json(body)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// The `data:` of every event, each checked against its `event:` name.
fn events(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let (name, data) = e.split_once("\ndata: ").unwrap();
            let v: Value = serde_json::from_str(data).unwrap();
            assert_eq!(name.strip_prefix("event: "), v["type"].as_str(), "{e}");
            v
        })
        .collect()
}

#[tokio::test]
async fn codex_is_bridged_to_a_chat_only_profile_and_to_an_anthropic_one() {
    let (d, a) = (
        MockUpstream::start_named("d").await,
        MockUpstream::start_named("a").await,
    );
    let server = bridged(&d, &a);
    for (model, mock) in [("gpt-4o-mini", &d), ("claude-opus-4-8", &a)] {
        for stream in [false, true] {
            mock.clear();
            let (status, text) = send(&server, &codex(model, stream)).await;
            assert_eq!(status, 200, "{model} {stream}: {text}");
            let sent = mock.requests()[0].json();
            let tools = sent["tools"].as_array().unwrap();
            assert_eq!(
                tools.len(),
                7,
                "function tools kept, namespace and web_search dropped: {sent}"
            );
            if model == "gpt-4o-mini" {
                assert_eq!(mock.requests()[0].path_only(), "/v1/chat/completions");
                let roles: Vec<&str> = sent["messages"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m["role"].as_str().unwrap())
                    .collect();
                assert_eq!(
                    roles,
                    ["system", "system", "user", "user"],
                    "developer becomes system"
                );
                assert_eq!(tools[0]["function"]["name"], "exec_command");
                assert_eq!(
                    sent["reasoning_effort"],
                    Value::Null,
                    "Codex sent only a summary setting"
                );
                if stream {
                    assert_eq!(sent["stream_options"]["include_usage"], true);
                }
            } else {
                assert_eq!(mock.requests()[0].path_only(), "/v1/messages");
                assert_eq!(tools[0]["name"], "exec_command");
                assert!(tools[0]["input_schema"].is_object());
                assert!(sent["system"][0]["text"].is_string(), "{sent}");
            }
            for dropped in [
                "store",
                "include",
                "input",
                "prompt_cache_key",
                "client_metadata",
            ] {
                assert!(sent.get(dropped).is_none(), "{dropped}: {sent}");
            }
            let done = if stream {
                assert!(!text.contains("[DONE]"), "{text}");
                let evs = events(&text);
                assert_eq!(evs[0]["type"], "response.created");
                assert!(evs
                    .iter()
                    .any(|e| e["type"] == "response.output_text.delta"));
                let last = evs.last().unwrap().clone();
                assert_eq!(last["type"], "response.completed", "{text}");
                last["response"].clone()
            } else {
                serde_json::from_str(&text).unwrap()
            };
            assert_eq!(done["object"], "response");
            assert_eq!(done["status"], "completed");
            assert_eq!(done["model"], model);
            assert_eq!(done["output"][0]["type"], "message");
            assert!(!done["output"][0]["content"][0]["text"]
                .as_str()
                .unwrap()
                .is_empty());
            assert!(
                done["usage"]["input_tokens"].as_u64().unwrap() > 0,
                "{done}"
            );
            // A bridged response is kept nowhere.
            let id = done["id"].as_str().unwrap();
            let (s, _, _) = server.get(&format!("/v1/responses/{id}")).send().await;
            assert_eq!(s, 404);
        }
    }
}

#[tokio::test]
async fn a_bridged_tool_call_comes_back_as_a_function_call_item() {
    let (d, a) = (
        MockUpstream::start_named("d").await,
        MockUpstream::start_named("a").await,
    );
    let server = bridged(&d, &a);
    d.push(Reply::status(
        200,
        json!({"id": "chatcmpl-7", "object": "chat.completion", "created": 1, "model": "x",
               "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant", "content": null,
                   "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "exec_command", "arguments": "{\"cmd\":\"ls\"}"}}]}}],
               "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}})
        .to_string(),
    ));
    let (status, text) = send(&server, &codex("gpt-4o-mini", false)).await;
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["output"][0]["type"], "function_call", "{v}");
    assert_eq!(v["output"][0]["call_id"], "call_1");
    assert_eq!(v["output"][0]["name"], "exec_command");
    assert_eq!(v["output"][0]["arguments"], "{\"cmd\":\"ls\"}");
    // The next turn sends the call and its output back: they become an assistant tool call and a
    // tool message.
    let mut next = codex("gpt-4o-mini", false);
    let input = next["input"].as_array_mut().unwrap();
    input.push(v["output"][0].clone());
    input.push(json!({"type": "function_call_output", "call_id": "call_1", "output": "a.txt"}));
    d.clear();
    let (status, _) = send(&server, &next).await;
    assert_eq!(status, 200);
    let sent = d.requests()[0].json();
    let msgs = sent["messages"].as_array().unwrap();
    let n = msgs.len();
    assert_eq!(msgs[n - 2]["tool_calls"][0]["id"], "call_1");
    assert_eq!(
        msgs[n - 1],
        json!({"role": "tool", "tool_call_id": "call_1", "content": "a.txt"})
    );
}

#[tokio::test]
async fn what_the_bridge_cannot_express_is_an_openai_shaped_400_naming_the_field() {
    let (d, a) = (
        MockUpstream::start_named("d").await,
        MockUpstream::start_named("a").await,
    );
    let server = bridged(&d, &a);
    for (body, field) in [
        (
            json!({"model": "gpt-4o-mini", "input": "hi", "previous_response_id": "resp_x"}),
            "previous_response_id",
        ),
        (
            json!({"model": "claude-opus-4-8", "input": "hi", "tools": [{"type": "code_interpreter"}]}),
            "tools[0].type",
        ),
    ] {
        let (status, text) = send(&server, &body).await;
        assert_eq!(status, 400, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(field),
            "{v}"
        );
    }
    assert_eq!(d.request_count() + a.request_count(), 0, "nothing was sent");
}
