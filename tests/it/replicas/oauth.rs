//! OAuth tokens across replicas: one refresher for the fleet, the new token used by every replica,
//! and a replica whose secret key cannot open the fleet's token refused at start.

use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::*;
use crate::oauth::{login_sealed_with, MockOAuth};
use crate::support::redis::RedisServer;

/// Base64 of 32 bytes: the key every replica shares.
const FLEET_KEY: &str = "ZmxlZXQtc2VjcmV0LWtleS0wMTIzNDU2Nzg5YWJjZGU=";
/// Another one.
const OTHER_KEY: &str = "b3RoZXItc2VjcmV0LWtleS0wMTIzNDU2Nzg5YWJjZGU=";

/// The fleet's config with one OAuth profile `p` on `upstream`.
fn oauth_config(upstream: &MockUpstream, redis: &RedisServer, oauth: &MockOAuth) -> ConfigBuilder {
    let mut config = replica_config(upstream, redis, "2s");
    config.profiles.clear();
    let auth = oauth.auth_line("");
    config = config.profile_with("p", &upstream.base_url(), &["provider: openai", &auth]);
    config.models = vec![("m".into(), vec!["p".into()], None)];
    config
}

#[tokio::test]
async fn one_replica_refreshes_the_token_for_the_fleet_and_every_replica_sends_the_new_one() {
    let Some(redis) = RedisServer::start("oauth_one_refresher") else {
        return;
    };
    // The first access token lives one second: due by the time the fleet has started.
    let oauth = MockOAuth::start(1).await;
    let upstream = MockUpstream::start().await;
    let config = oauth_config(&upstream, &redis, &oauth);
    let env = [
        ("FLEET_JWT_SECRET", SECRET),
        ("SWITCHYARD_SECRET_KEY", FLEET_KEY),
    ];
    // Logged in on the first replica only: it offers its token to the fleet when it starts.
    let mut first = Server::start_with_env(&config, &env);
    first.terminate();
    login_sealed_with(&first, Some(FLEET_KEY)).await;
    first.restart();
    let mut replicas = vec![first];
    replicas.extend((0..2).map(|_| Server::start_with_env(&config, &env)));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(oauth.refreshes.load(Ordering::SeqCst), 0);

    let t = token("oauth");
    let calls = replicas
        .iter()
        .flat_map(|r| (0..4).map(move |_| r))
        .map(|r| chat_as(r, &t));
    let statuses: Vec<u16> = futures_util::future::join_all(calls)
        .await
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert!(
        statuses.iter().all(|s| *s == 200),
        "{statuses:?}\n{}",
        replicas[1].logs()
    );
    assert_eq!(
        oauth.refreshes.load(Ordering::SeqCst),
        1,
        "one refresh for the fleet"
    );
    let refreshed = oauth.state.lock().issued.last().unwrap().clone();
    assert!(refreshed.starts_with("at-refreshed-"), "{refreshed}");
    let sent = upstream.requests();
    assert_eq!(sent.len(), 12);
    assert!(
        sent.iter().all(|r| r.bearer() == Some(refreshed.as_str())),
        "every replica sent the new token"
    );
    for r in &replicas {
        assert!(!r.logs().contains(&refreshed), "a token reached the logs");
    }

    // A replica whose key cannot open the fleet's token refuses to start, and says why.
    let elsewhere = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .arg("serve")
        .arg("--config")
        .arg(&replicas[0].config_path)
        .arg("--data-dir")
        .arg(elsewhere.path())
        .arg("--listen")
        .arg("127.0.0.1:0")
        .env("FLEET_JWT_SECRET", SECRET)
        .env("SWITCHYARD_SECRET_KEY", OTHER_KEY)
        .env("SWITCHYARD_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("a replica with another secret key started");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("SWITCHYARD_SECRET_KEY") && text.contains("profile p"),
        "{text}"
    );
}

#[tokio::test]
async fn with_redis_down_a_replica_refreshes_the_token_alone() {
    let Some(mut redis) = RedisServer::start("oauth_redis_down") else {
        return;
    };
    let oauth = MockOAuth::start(1).await;
    let upstream = MockUpstream::start().await;
    let config = oauth_config(&upstream, &redis, &oauth);
    let env = [
        ("FLEET_JWT_SECRET", SECRET),
        ("SWITCHYARD_SECRET_KEY", FLEET_KEY),
    ];
    let mut replica = Server::start_with_env(&config, &env);
    replica.terminate();
    login_sealed_with(&replica, Some(FLEET_KEY)).await;
    replica.restart();
    redis.kill();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, _) = chat_as(&replica, &token("oauth-alone")).await;
    assert_eq!(status, 200, "{}", replica.logs());
    assert_eq!(oauth.refreshes.load(Ordering::SeqCst), 1);
    let refreshed = oauth.state.lock().issued.last().unwrap().clone();
    assert_eq!(upstream.requests()[0].bearer(), Some(refreshed.as_str()));
}

#[tokio::test]
async fn a_new_login_on_one_replica_replaces_the_fleets_token() {
    let Some(redis) = RedisServer::start("oauth_new_login") else {
        return;
    };
    let oauth = MockOAuth::start(3600).await;
    let upstream = MockUpstream::start().await;
    let config = oauth_config(&upstream, &redis, &oauth);
    let env = [
        ("FLEET_JWT_SECRET", SECRET),
        ("SWITCHYARD_SECRET_KEY", FLEET_KEY),
    ];
    let mut first = Server::start_with_env(&config, &env);
    first.terminate();
    login_sealed_with(&first, Some(FLEET_KEY)).await;
    first.restart();
    // Logged in again a second later (the token expires a second later): the fleet takes it.
    first.terminate();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    login_sealed_with(&first, Some(FLEET_KEY)).await;
    first.restart();
    let second = Server::start_with_env(&config, &env);
    let newest = oauth.state.lock().issued[2].clone();
    assert!(newest.starts_with("at-first-"), "{newest}");
    let (status, _) = chat_as(&second, &token("oauth-relogin")).await;
    assert_eq!(status, 200, "{}", second.logs());
    assert_eq!(upstream.requests()[0].bearer(), Some(newest.as_str()));
    assert_eq!(oauth.refreshes.load(Ordering::SeqCst), 0);
}
