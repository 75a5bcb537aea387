//! The shortest path through the proxy: one profile, one request.

use crate::support::*;

#[tokio::test]
async fn a_chat_completion_passes_through() {
    let mock = MockUpstream::start_named("a").await;
    let server = Server::start(
        &ConfigBuilder::default()
            .profile("a", &mock)
            .model("m", &["a"]),
    );
    let (status, headers, body) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-switchyard-profile"], "a");
    assert_eq!(headers["x-switchyard-attempts"], "1");
    assert!(headers.contains_key("x-request-id"));
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "mock reply from a");
    let got = mock.requests();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].bearer(), Some("sk-a-secret"));
}
