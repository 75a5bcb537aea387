//! Response ids across the fleet: a response created through one replica is continued
//! (`previous_response_id`) and read (`GET /v1/responses/{id}`) through another, on the profile that
//! created it, instead of a 404 from a replica that never saw the id.

use serde_json::{json, Value};

use super::*;

/// A Responses call as `token` on `server`; (response id, profile that answered).
async fn respond(server: &Server, token: &str, previous: Option<&str>) -> (String, String) {
    let mut body = json!({"model": "m", "input": "next turn", "stream": false});
    if let Some(id) = previous {
        body["previous_response_id"] = json!(id);
    }
    let resp = client()
        .post(server.url("/v1/responses"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let profile = resp.headers()["x-switchyard-profile"]
        .to_str()
        .unwrap()
        .to_owned();
    let v: Value = resp.json().await.unwrap();
    (v["id"].as_str().unwrap().to_owned(), profile)
}

#[tokio::test]
async fn a_response_made_through_one_replica_is_continued_and_read_through_another() {
    let Some(redis) = RedisServer::start("response_ids_across_replicas") else {
        return;
    };
    let (a, b) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
    );
    let mut config = replica_config(&a, &redis, "2s").profile("b", &b);
    config.models = vec![("m".into(), vec!["a".into(), "b".into()], None)];
    let replicas: Vec<Server> = (0..2)
        .map(|_| Server::start_with_env(&config, &[("FLEET_JWT_SECRET", SECRET)]))
        .collect();
    let t = token("conversation");
    for round in 0..2 {
        let (id, maker) = respond(&replicas[0], &t, None).await;
        // Round robin on the other replica would reach both profiles in four turns; the pin keeps
        // every one on the maker.
        for _ in 0..4 {
            let (_, profile) = respond(&replicas[1], &t, Some(&id)).await;
            assert_eq!(profile, maker, "round {round}: {id}");
        }
        let (maker_mock, other) = if maker == "a" { (&a, &b) } else { (&b, &a) };
        let (asked, other_asked) = (maker_mock.request_count(), other.request_count());
        let (status, _, body) = call(
            &replicas[1],
            reqwest::Method::GET,
            &format!("/v1/responses/{id}"),
            Some(&t),
            None,
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(maker_mock.request_count(), asked + 1);
        assert_eq!(other.request_count(), other_asked);
        // Another caller is told it does not exist, on either replica.
        let (status, _, _) = call(
            &replicas[1],
            reqwest::Method::GET,
            &format!("/v1/responses/{id}"),
            Some(&token("someone-else")),
            None,
        )
        .await;
        assert_eq!(status, 404);
    }
}
