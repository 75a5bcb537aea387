//! Model aliases (`models[].aliases`) and patterns (`name: "openrouter/*"`): routed, priced, scoped
//! and counted as the model they name.

use serde_json::{json, Value};

use crate::support::*;

/// The `model` the upstream received in its last request.
fn upstream_model(mock: &MockUpstream) -> String {
    let last = mock.requests().pop().expect("the upstream got a request");
    let body: Value = serde_json::from_slice(&last.body).unwrap();
    body["model"].as_str().unwrap().to_owned()
}

async fn get(server: &Server, path: &str) -> (u16, reqwest::header::HeaderMap, String) {
    server.get(path).send_text().await
}

fn listed(body: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(body).unwrap();
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn an_alias_routes_to_its_models_profiles_under_the_models_name() {
    let (a, r) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("r").await,
    );
    let server = Server::start(
        &ConfigBuilder::default()
            .profile("a", &a)
            .profile("r", &r)
            .model("gpt-4o-mini", &["a"])
            .aliases("gpt-4o-mini", &["mini", "gpt4-mini"])
            .model("openrouter/*", &["r"]),
    );
    let (status, headers, body) = chat(&server, &chat_body("mini")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-switchyard-profile"], "a");
    // The upstream knows the model by its name, not by the alias.
    assert_eq!(upstream_model(&a), "gpt-4o-mini");
    assert_eq!(r.request_count(), 0);

    // Concrete names and aliases are listed; the pattern is not.
    let (status, _, body) = get(&server, "/v1/models").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(listed(&body), ["gpt-4o-mini", "mini", "gpt4-mini"]);
    assert_eq!(get(&server, "/v1/models/gpt4-mini").await.0, 200);
    assert_eq!(
        get(&server, "/v1/models/openrouter/meta/llama").await.0,
        200
    );
    assert_eq!(get(&server, "/v1/models/nope").await.0, 404);
    // Counted under the model's name, a bounded label.
    let (_, _, metrics) = get(&server, "/metrics").await;
    assert!(
        metrics.contains("model=\"gpt-4o-mini\"") && !metrics.contains("model=\"mini\""),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_pattern_routes_every_name_under_its_prefix_and_sends_the_rest_upstream() {
    let (r, o) = (
        MockUpstream::start_named("r").await,
        MockUpstream::start_named("o").await,
    );
    let server = Server::start(
        &ConfigBuilder::default()
            .profile("r", &r)
            .profile("o", &o)
            .model("openrouter/*", &["r"])
            .model("openrouter/openai/*", &["o"])
            .model("openrouter/special", &["o"]),
    );
    let (status, headers, body) =
        chat(&server, &chat_body("openrouter/anthropic/claude-3.5")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-switchyard-profile"], "r");
    assert_eq!(upstream_model(&r), "anthropic/claude-3.5");
    // The longest prefix wins; a concrete name wins over every pattern.
    let (status, headers, _) = chat(&server, &chat_body("openrouter/openai/gpt-4o")).await;
    assert_eq!(
        (status, &headers["x-switchyard-profile"]),
        (200, &"o".parse().unwrap())
    );
    assert_eq!(upstream_model(&o), "gpt-4o");
    let (status, headers, _) = chat(&server, &chat_body("openrouter/special")).await;
    assert_eq!(
        (status, &headers["x-switchyard-profile"]),
        (200, &"o".parse().unwrap())
    );
    assert_eq!(upstream_model(&o), "openrouter/special");
    // The bare prefix names no model.
    let (status, _, body) = chat(&server, &chat_body("openrouter/")).await;
    assert_eq!(status, 404, "{body}");
    let (_, _, body) = get(&server, "/v1/models").await;
    assert_eq!(listed(&body), ["openrouter/special"]);
}

#[tokio::test]
async fn prices_and_scopes_follow_the_resolved_model() {
    let a = MockUpstream::start_named("a").await;
    let mut config = ConfigBuilder::default()
        .profile("a", &a)
        .model("m", &["a"])
        .aliases("m", &["m-alias"])
        .model("vendor/*", &["a"])
        .model("other", &["a"]);
    config.auth_required = true;
    config.extra_yaml = vec![
        "pricing:".into(),
        "  m: {input_per_million: 1000, output_per_million: 1000}".into(),
        "  \"vendor/*\": {input_per_million: 1000, output_per_million: 1000}".into(),
    ];
    let server = Server::start(&config);
    let key = admin(
        &server,
        reqwest::Method::POST,
        "/admin/keys",
        Some(json!({"name": "scoped", "scopes": ["m", "vendor/*"]})),
    )
    .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let as_key = |model: &str| {
        server
            .post("/v1/chat/completions")
            .bearer(&key)
            .json(chat_body(model))
    };
    assert_eq!(as_key("m-alias").send().await.0, 200);
    assert_eq!(as_key("vendor/x").send().await.0, 200);
    assert_eq!(as_key("other").send().await.0, 403);
    let (_, _, models) = server.get("/v1/models").bearer(&key).send().await;
    let names: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["m", "m-alias"]);
    // Priced, and counted, as the model the names resolved to.
    let metrics = client()
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for model in ["m", "vendor/*"] {
        let line = format!("switchyard_cost_usd_total{{model=\"{model}\",profile=\"a\"}} ");
        let cost: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .unwrap_or_else(|| panic!("no {line} in\n{metrics}"))
            .parse()
            .unwrap();
        assert!(cost > 0.0, "{model}: {cost}");
    }
}
