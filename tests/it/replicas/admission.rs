//! A metered call's admission in Redis: its request windows and daily token hold are one script and
//! its credit reserve is sent beside it, before either answers (one round trip of waiting, not
//! three); the precedence of today's sequence decides what the client sees, and whatever one part
//! took for a call another refuses is given back, once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::credits::{add_credits, credit_config, credits, settled_balance, spend, start};
use super::*;
use crate::support::redis::RedisServer;
use switchyard::shared::credits::account_tag;

/// A TCP proxy in front of Redis that keeps every command it forwards and, while closed, holds back
/// Redis's answers: what a client sends while its answers are held back, it sent without waiting.
struct AnswerGate {
    port: u16,
    sent: Arc<Mutex<Vec<u8>>>,
    open: watch::Sender<bool>,
}

impl AnswerGate {
    async fn start(redis: &RedisServer) -> AnswerGate {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let upstream = redis.url().replace("redis://", "").replace("/0", "");
        let sent = Arc::new(Mutex::new(Vec::new()));
        let (open, gate) = watch::channel(true);
        let log = sent.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let server = TcpStream::connect(&upstream).await.unwrap();
                let (mut from_client, mut to_client) = client.into_split();
                let (mut from_server, mut to_server) = server.into_split();
                let log = log.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n @ 1..) = from_client.read(&mut buf).await {
                        log.lock().extend_from_slice(&buf[..n]);
                        if to_server.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                let mut gate = gate.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n @ 1..) = from_server.read(&mut buf).await {
                        let opened = gate.wait_for(|open| *open).await.is_ok();
                        if !opened || to_client.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        AnswerGate { port, sent, open }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Holds answers back (`false`) or lets them, and those held, through.
    fn set_open(&self, open: bool) {
        self.open.send_replace(open);
    }

    /// Whether `needle` was sent since the log was last cleared.
    fn was_sent(&self, needle: &str) -> bool {
        let sent = self.sent.lock();
        sent.windows(needle.len()).any(|w| w == needle.as_bytes())
    }

    fn clear(&self) {
        self.sent.lock().clear();
    }
}

/// Every caller's tier here: request windows, a daily token budget and metered credits.
const FULL: [&str; 4] = [
    "requests_per_hour: 3",
    "tokens_per_day: 100000",
    "monthly_credits: 0",
    "max_tokens_per_request: 20",
];

/// The overlapping call's `x-request-id`, which its credit reserve carries to Redis.
const CALL_ID: &str = "overlap-call-0123";

/// A metered tier with one request an hour and no monthly grant: the second call is refused by its
/// request limit, and credits are only what a test adds.
const ONE_AN_HOUR: [&str; 3] = [
    "requests_per_hour: 1",
    "monthly_credits: 0",
    "max_tokens_per_request: 20",
];

#[tokio::test]
async fn a_metered_call_sends_its_credit_reserve_before_its_windows_and_budget_answer() {
    let Some(redis) = RedisServer::start("admission_one_round_trip") else {
        return;
    };
    let gate = AnswerGate::start(&redis).await;
    let mock = MockUpstream::start().await;
    let mut config = credit_config(&mock, &redis, &FULL, &[]);
    for line in &mut config.extra_yaml {
        if line.trim_start().starts_with("url:") {
            *line = format!("    url: \"{}\"", gate.url());
        }
        if line.trim_start().starts_with("command_timeout:") {
            // Longer than the answers are held back below.
            *line = "    command_timeout: 20s".into();
        }
    }
    let replica = &start(&config, 1)[0];
    add_credits(replica, "overlap", 1.0).await;
    let token = token("overlap");
    let (status, _, body) = spend(replica, &token, 10).await;
    assert_eq!(status, 200, "{body}");

    gate.set_open(false);
    gate.clear();
    let (url, t) = (replica.url("/v1/chat/completions"), token.clone());
    let pending = tokio::spawn(async move {
        let mut body = chat_body("m");
        body["max_tokens"] = serde_json::json!(10);
        let call = client().post(url).bearer_auth(t).json(&body);
        let resp = call.header("x-request-id", CALL_ID).send().await;
        resp.unwrap().status().as_u16()
    });
    // Sent one after the other, the reserve (which names the call's id) would wait for the
    // windows' answer, held back here.
    let (windows, reserve) = ("rl:{", CALL_ID);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(gate.was_sent(windows) && gate.was_sent(reserve)) {
        assert!(
            Instant::now() < deadline,
            "with no answer from Redis, the call sent its windows: {}, its reserve: {}",
            gate.was_sent(windows),
            gate.was_sent(reserve)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The windows and the daily budget went in one script (the budget's key is in it), and the
    // reserve under the account's own hash tag.
    assert!(gate.was_sent("tpd:{"));
    assert!(gate.was_sent(&account_tag("overlap")));
    gate.set_open(true);
    assert_eq!(pending.await.unwrap(), 200);
    // Two calls, each charged once.
    let c = credits(replica, "overlap").await;
    let txs = c["transactions"].as_array().unwrap();
    let reserves = txs.iter().filter(|t| t["kind"] == "reserve").count();
    assert_eq!(reserves, 2, "{c}");
    assert!(settled_balance(replica, "overlap").await < 1_000_000);
}

#[tokio::test]
async fn a_call_its_request_limit_refuses_gives_back_the_credits_reserved_beside_it_once() {
    let Some(redis) = RedisServer::start("admission_rate_gives_credits_back") else {
        return;
    };
    let mock = MockUpstream::start().await;
    let replicas = start(&credit_config(&mock, &redis, &ONE_AN_HOUR, &[]), 2);
    away_from_the_hour_edge().await;
    add_credits(&replicas[0], "limited", 1.0).await;
    let token = token("limited");
    let (status, _, first) = spend(&replicas[0], &token, 10).await;
    assert_eq!(status, 200, "{first}");
    let (status, headers, body) = spend(&replicas[1], &token, 10).await;
    assert_eq!(status, 429, "{body}");
    assert!(body.to_string().contains("requests per"), "{body}");
    assert!(headers.contains_key("retry-after"));
    // Only the answered call is charged, and every reservation is closed exactly once.
    let cost = first["usage"]["total_tokens"].as_i64().unwrap() * 1000;
    for r in &replicas {
        assert_eq!(settled_balance(r, "limited").await, 1_000_000 - cost);
    }
    let c = credits(&replicas[0], "limited").await;
    let txs = c["transactions"].as_array().unwrap();
    let reserves = txs.iter().filter(|t| t["kind"] == "reserve").count();
    let closes = txs.iter().filter(|t| t["reservation"].is_string()).count();
    assert_eq!(reserves, closes, "{c}");
    let released = txs.iter().filter(|t| t["kind"] == "release").count();
    assert_eq!(released, reserves - 1, "{c}");
    assert_eq!(mock.request_count(), 1);
}

#[tokio::test]
async fn a_spent_request_limit_answers_before_refused_credits_and_a_credit_refusal_counts() {
    let Some(redis) = RedisServer::start("admission_precedence") else {
        return;
    };
    let mock = MockUpstream::start().await;
    let replicas = start(&credit_config(&mock, &redis, &ONE_AN_HOUR, &[]), 1);
    away_from_the_hour_edge().await;
    let token = token("broke");
    // No credits: refused by them, and counted in the hour's window, as in local mode.
    let (status, _, body) = spend(&replicas[0], &token, 10).await;
    assert_eq!(status, 402, "{body}");
    // Both would refuse now: the request limit answers.
    let (status, _, body) = spend(&replicas[0], &token, 10).await;
    assert_eq!(status, 429, "{body}");
    assert!(body.to_string().contains("requests per"), "{body}");
    assert_eq!(settled_balance(&replicas[0], "broke").await, 0);
    assert_eq!(mock.request_count(), 0);
}

/// `field` of the one hash under `pattern` in Redis, once there is one.
fn hash_field(redis: &RedisServer, pattern: &str, field: &str) -> Option<String> {
    let keys = redis.command(&["KEYS", pattern])?;
    let key = keys
        .lines()
        .find(|l| l.contains(':') && !l.starts_with(['*', '$']))?;
    let reply = redis.command(&["HGET", key, field])?;
    reply.lines().nth(1).map(str::to_owned)
}

#[tokio::test]
async fn a_call_credits_refuse_gives_its_daily_tokens_back() {
    let Some(redis) = RedisServer::start("admission_credits_give_tokens_back") else {
        return;
    };
    let mock = MockUpstream::start().await;
    let replicas = start(&credit_config(&mock, &redis, &FULL, &[]), 1);
    let token = token("tokenless");
    let (status, _, body) = spend(&replicas[0], &token, 10).await;
    assert_eq!(status, 402, "{body}");
    // The day's counter (its `:h`/`:z` holds aside) holds nothing once the give-back has run.
    let pattern = "fleet-test:tpd:*[0-9]";
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let held = hash_field(&redis, pattern, "held");
        if held.as_deref() == Some("0") {
            break;
        }
        assert!(Instant::now() < deadline, "tokens still held: {held:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(hash_field(&redis, pattern, "used").as_deref(), Some("0"));
}

#[tokio::test]
async fn a_call_the_daily_budget_refuses_counts_in_no_request_window() {
    let Some(redis) = RedisServer::start("admission_budget_counts_nothing") else {
        return;
    };
    let mock = MockUpstream::start().await;
    let tier = ["requests_per_hour: 10", "tokens_per_day: 5"];
    let replicas = start(&credit_config(&mock, &redis, &tier, &[]), 1);
    away_from_the_hour_edge().await;
    let token = token("budgeted");
    let (status, _, body) = spend(&replicas[0], &token, 10).await;
    assert_eq!(status, 200, "{body}");
    // The answer's tokens (more than 5) spend the day once settled.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, headers, body) = spend(&replicas[0], &token, 10).await;
        assert_eq!(status, 429, "{body}");
        let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
        if retry > 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the day never looked spent");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let keys = redis.command(&["KEYS", "fleet-test:rl:*"]).unwrap();
    let key = keys
        .lines()
        .find(|l| l.starts_with("fleet-test:"))
        .unwrap_or_else(|| panic!("no window: {keys}"));
    let count = redis.command(&["GET", key]).unwrap();
    assert_eq!(count.lines().nth(1), Some("1"), "{key}: {count}");
    assert_eq!(mock.request_count(), 1);
}
