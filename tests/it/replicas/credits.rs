//! Credits and the daily token budget shared by three replicas through one real Redis: exact under
//! concurrency, a settle that happens once, a killed replica's reservation given back after its
//! lease, credits failing closed (503 with Retry-After) while Redis is away unless an allowance is
//! set, and a Redis restored from an old snapshot refused until an operator reseeds.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchyard::shared::credits::{Mark, Movement, Outcome};

use super::*;
use crate::support::redis::RedisServer;

/// 1000 USD per million tokens: one token costs 1000 micro-USD.
const PRICING: [&str; 4] = [
    "pricing:",
    "  m:",
    "    input_per_million: 1000",
    "    output_per_million: 1000",
];

/// The fleet's config with `tier` as every caller's tier, and `state` lines under `state.redis`.
pub(super) fn credit_config(
    mock: &MockUpstream,
    redis: &RedisServer,
    tier: &[&str],
    state: &[&str],
) -> ConfigBuilder {
    let mut config = replica_config(mock, redis, "2s");
    // The fleet's tier counts requests; these tiers count money and tokens instead.
    let tiers = config
        .extra_yaml
        .iter()
        .position(|l| l == "tiers:")
        .unwrap();
    config.extra_yaml.truncate(tiers);
    for line in state {
        config.extra_yaml.push(format!("    {line}"));
    }
    config.extra_yaml.push("tiers:".into());
    config.extra_yaml.push("  default:".into());
    for line in tier {
        config.extra_yaml.push(format!("    {line}"));
    }
    config
        .extra_yaml
        .extend(PRICING.iter().map(|l| (*l).to_owned()));
    config.extra_yaml.push("credits:".into());
    config.extra_yaml.push("  reservation_lease: 3s".into());
    config
}

pub(super) fn start(config: &ConfigBuilder, n: usize) -> Vec<Server> {
    (0..n)
        .map(|_| Server::start_with_env(config, &[("FLEET_JWT_SECRET", SECRET)]))
        .collect()
}

const METERED: [&str; 2] = ["monthly_credits: 0", "max_tokens_per_request: 20"];

/// The account's credits; retried while the replica answers 503 (each worker's connection to a
/// restarted Redis comes back on its own first command).
pub(super) async fn credits(server: &Server, account: &str) -> Value {
    let path = format!("/admin/accounts/{account}/credits");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, v) =
            call(server, reqwest::Method::GET, &path, Some(ADMIN_TOKEN), None).await;
        if status != 503 || Instant::now() > deadline {
            assert_eq!(status, 200, "{path}: {v}");
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(super) async fn add_credits(server: &Server, account: &str, usd: f64) {
    let path = format!("/admin/accounts/{account}/credits");
    admin(
        server,
        reqwest::Method::POST,
        &path,
        Some(json!({"amount_usd": usd})),
    )
    .await;
}

/// The balance, after checking that the fleet's log sums to it and closes every reservation.
pub(super) async fn settled_balance(server: &Server, account: &str) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let c = credits(server, account).await;
        let txs = c["transactions"].as_array().unwrap();
        let open = txs.iter().filter(|t| t["kind"] == "reserve").count();
        let closed = txs.iter().filter(|t| t["reservation"].is_string()).count();
        if open == closed {
            let balance = c["balance_micros"].as_i64().unwrap();
            let sum: i64 = txs
                .iter()
                .map(|t| t["amount_micros"].as_i64().unwrap())
                .sum();
            assert_eq!(sum, balance, "the log must sum to the balance: {c}");
            assert!(balance >= 0);
            return balance;
        }
        assert!(Instant::now() < deadline, "reservations left open: {c}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Repeats `f` while it answers the 503 of a worker whose connection to a restarted Redis is not
/// back yet (only that one: a 503 for another reason is returned).
async fn reconnected<F, Fut>(mut f: F) -> (u16, reqwest::header::HeaderMap, Value)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = (u16, reqwest::header::HeaderMap, Value)>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = f().await;
        let unreachable = answer.2.to_string().contains("unreachable");
        if answer.0 != 503 || !unreachable || Instant::now() > deadline {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One chat as `token` on `server`: (status, headers, body).
pub(super) async fn spend(
    server: &Server,
    token: &str,
    max_tokens: u64,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut body = chat_body("m");
    body["max_tokens"] = json!(max_tokens);
    call(
        server,
        reqwest::Method::POST,
        "/v1/chat/completions",
        Some(token),
        Some(body),
    )
    .await
}

/// `spend`, again while the replica answers 503 `credits_unavailable`: credits fail closed while a
/// Redis command runs past its deadline (on two loaded cores, a kill -9 beside it can do that), and
/// such a refusal reserves nothing, so the test can ask again.
async fn spend_once_redis_answers(
    server: &Server,
    token: &str,
    max_tokens: u64,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, headers, body) = spend(server, token, max_tokens).await;
        let unavailable =
            status == 503 && error_of(&body.to_string())["code"] == "credits_unavailable";
        if !unavailable || Instant::now() > deadline {
            return (status, headers, body);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `n` concurrent chats spread over the replicas; (status, total tokens) of each.
async fn crowd(replicas: &[Server], token: &str, n: usize, max_tokens: u64) -> Vec<(u16, i64)> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let url = replicas[i % replicas.len()].url("/v1/chat/completions");
            let token = token.to_owned();
            let mut body = chat_body("m");
            body["max_tokens"] = json!(max_tokens);
            tokio::spawn(async move {
                let resp = client()
                    .post(url)
                    .bearer_auth(token)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let status = resp.status().as_u16();
                let v: Value = resp.json().await.unwrap();
                (status, v["usage"]["total_tokens"].as_i64().unwrap_or(0))
            })
        })
        .collect();
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test]
async fn three_replicas_never_overdraw_one_balance_and_account_for_every_micro_usd() {
    let Some(redis) = RedisServer::start("credits_exact_across_replicas") else {
        return;
    };
    let mock = MockUpstream::start().await;
    mock.set_default(Reply::delayed(Duration::from_millis(300)));
    let replicas = start(&credit_config(&mock, &redis, &METERED, &[]), 3);
    let token = token("crowd");
    add_credits(&replicas[0], "crowd", 0.5).await;
    // Redis's share of one call, one at a time (reported, not checked: the machine is shared).
    let series = "switchyard_shared_state_round_trip_seconds";
    let sum = format!("{series}_sum{{resource=\"credits\"}}");
    let count = format!("{series}_count{{resource=\"credits\"}}");
    let (sum0, n0) = (
        metric(&replicas[0], &sum).await,
        metric(&replicas[0], &count).await,
    );
    let mut alone = 0;
    for _ in 0..10 {
        let (status, _, body) = spend(&replicas[0], &token, 10).await;
        assert_eq!(status, 200, "{body}");
        alone += body["usage"]["total_tokens"].as_i64().unwrap();
    }
    let (sum1, n1) = (
        metric(&replicas[0], &sum).await,
        metric(&replicas[0], &count).await,
    );
    eprintln!(
        "credits, one call at a time: {} round trips, {:.3} ms each on average",
        n1 - n0,
        (sum1 - sum0) / (n1 - n0).max(1.0) * 1e3
    );
    let mut results = crowd(&replicas, &token, 45, 10).await;
    results.push((200, alone));
    let ok: Vec<i64> = results.iter().filter(|r| r.0 == 200).map(|r| r.1).collect();
    let refused = results.iter().filter(|r| r.0 == 402).count();
    assert_eq!(ok.len() + refused, 46, "{results:?}");
    assert!(ok.len() > 1 && refused > 0, "{results:?}");
    let spent: i64 = ok.iter().sum::<i64>() * 1000;
    // Every replica reads the same balance: the start minus exactly what was answered.
    for r in &replicas {
        assert_eq!(settled_balance(r, "crowd").await, 500_000 - spent);
    }
    assert_eq!(mock.request_count(), ok.len() - 1 + 10);
    // The caller's own usage report shows the fleet's balance too.
    let (status, _, usage) = call(
        &replicas[2],
        reqwest::Method::GET,
        "/v1/usage",
        Some(&token),
        None,
    )
    .await;
    assert_eq!(status, 200, "{usage}");
    #[allow(clippy::cast_precision_loss)]
    let usd = format!("{:.6}", (500_000 - spent) as f64 / 1e6);
    assert_eq!(usage["credits"]["balance_usd"], usd.as_str(), "{usage}");
}

#[tokio::test]
async fn three_replicas_share_one_daily_token_budget() {
    let Some(redis) = RedisServer::start("token_budget_across_replicas") else {
        return;
    };
    let mock = MockUpstream::start().await;
    mock.set_default(Reply::delayed(Duration::from_millis(300)));
    let tier = ["tokens_per_day: 50"];
    let replicas = start(&credit_config(&mock, &redis, &tier, &[]), 3);
    let token = token("daily");
    let results = crowd(&replicas, &token, 45, 5).await;
    let admitted = results.iter().filter(|r| r.0 == 200).count() as i64;
    let refused = results.iter().filter(|r| r.0 == 429).count() as i64;
    assert_eq!(admitted + refused, 45, "{results:?}");
    assert!(admitted >= 1 && refused >= 1, "{results:?}");
    let mut spent: i64 = results.iter().map(|r| r.1).sum();
    let mut calls = admitted;
    // Then one at a time, round the fleet, until the day's budget is spent (not only held).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut i = 0;
    loop {
        let (status, headers, body) = spend(&replicas[i % 3], &token, 5).await;
        i += 1;
        if status == 200 {
            calls += 1;
            spent += body["usage"]["total_tokens"].as_i64().unwrap();
        } else {
            assert_eq!(status, 429, "{body}");
            let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
            // 1 s while calls in flight hold the rest; the day's end once it is spent.
            if retry > 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(Instant::now() < deadline, "never spent: {spent} tokens");
    }
    let per_call = spent / calls;
    // One budget for the fleet, not one per replica: the last call may cross it, by one call.
    assert!(
        spent >= 50 && spent <= 50 + per_call,
        "spent {spent} in {calls} calls"
    );
    assert_eq!(mock.request_count() as i64, calls);
}

#[tokio::test]
async fn with_redis_away_each_replica_spends_only_its_share_of_the_daily_budget() {
    let Some(mut redis) = RedisServer::start("token_budget_fallback") else {
        return;
    };
    let mock = MockUpstream::start().await;
    let tier = ["tokens_per_day: 50"];
    let replicas = start(&credit_config(&mock, &redis, &tier, &[]), 1);
    let token = token("alone");
    redis.kill();
    // 50 × (1 − 0.1) / 3 = 15 tokens for this replica alone.
    let (mut spent, mut calls) = (0, 0);
    loop {
        let (status, _, body) = spend(&replicas[0], &token, 5).await;
        if status == 429 {
            break;
        }
        assert_eq!(status, 200, "{body}");
        calls += 1;
        spent += body["usage"]["total_tokens"].as_i64().unwrap();
        assert!(calls < 50, "the share never ran out: {spent} tokens");
    }
    let per_call = spent / calls.max(1);
    assert!(
        spent >= 15 && spent <= 15 + per_call,
        "spent {spent} in {calls} calls"
    );
    assert!(
        metric(
            &replicas[0],
            "switchyard_shared_state_degraded{resource=\"tokens_per_day\"}"
        )
        .await
            > 0.0
    );
}

#[tokio::test]
async fn a_replica_killed_holding_daily_tokens_gives_them_back_after_the_lease() {
    let Some(redis) = RedisServer::start("token_budget_killed_replica") else {
        return;
    };
    let mock = MockUpstream::start().await;
    mock.push(Reply::Hang);
    let tier = ["tokens_per_day: 30"];
    let mut replicas = start(&credit_config(&mock, &redis, &tier, &[]), 2);
    let token = token("holder");
    // Its estimate (the body's bytes / 4 and 20 tokens) holds the whole budget.
    let url = replicas[0].url("/v1/chat/completions");
    let (t, mut body) = (token.clone(), chat_body("m"));
    body["max_tokens"] = json!(20);
    let pending = tokio::spawn(async move {
        let _ = client().post(url).bearer_auth(t).json(&body).send().await;
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while spend(&replicas[1], &token, 5).await.0 != 429 {
        assert!(Instant::now() < deadline, "the hold never reached Redis");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    replicas[0].kill9();
    pending.abort();
    // After the 3 s lease the hold is given back, and the budget is whole again.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (status, _, body) = spend(&replicas[1], &token, 5).await;
        if status == 200 {
            assert!(body["usage"]["total_tokens"].as_i64().unwrap() < 30);
            break;
        }
        assert!(Instant::now() < deadline, "the hold was never given back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_second_settle_of_one_reservation_changes_nothing() {
    let Some(redis) = RedisServer::start("credits_settle_once") else {
        return;
    };
    let metrics = switchyard::metrics::Metrics::new().unwrap();
    let config = switchyard::config::RedisConfig {
        url: redis.url(),
        key_prefix: "settle-test:".into(),
        command_timeout: Duration::from_secs(2),
        replicas: 1,
        margin: 0.0,
        health_resync: Duration::from_secs(1),
        credit_allowance_micros: 0,
    };
    let shared = switchyard::shared::Shared::new(&config, &metrics.shared).unwrap();
    let mark = Mark::default();
    let adjust = Movement::Adjust {
        micros: 1_000,
        kind: "adjust",
        note: "",
        charge: None,
    };
    shared.credit_move("a", mark, 0, adjust).await.unwrap();
    let reserve = Movement::Reserve {
        micros: 400,
        request_id: "r1",
        model: "m",
        lease_ms: 60_000,
        monthly: None,
        month: "2026-12",
    };
    let r = shared.credit_move("a", mark, 0, reserve).await.unwrap();
    assert_eq!((r.outcome, r.balance), (Outcome::Done, 600));
    let close = |cost| Movement::Close {
        reservation: &r.extra,
        cost: Some(cost),
    };
    let first = shared.credit_move("a", mark, 0, close(100)).await.unwrap();
    assert_eq!(
        (first.outcome, first.balance, first.extra.as_str()),
        (Outcome::Done, 900, "100")
    );
    let again = shared.credit_move("a", mark, 0, close(300)).await.unwrap();
    assert_eq!((again.outcome, again.balance), (Outcome::Closed, 900));
    assert_eq!(again.mark, first.mark, "nothing moved");
    // A debit beyond the balance is refused; a replica whose mark is ahead of Redis moves nothing.
    let overdraw = Movement::Adjust {
        micros: -901,
        kind: "adjust",
        note: "",
        charge: None,
    };
    let o = shared.credit_move("a", mark, 0, overdraw).await.unwrap();
    assert_eq!((o.outcome, o.balance), (Outcome::Insufficient, 900));
    let ahead = Mark {
        epoch: 0,
        seq: first.mark.seq + 1,
    };
    let b = shared
        .credit_move("a", ahead, 0, Movement::Read)
        .await
        .unwrap();
    assert_eq!(b.outcome, Outcome::Behind);
    let log = shared.credit_log("a").await.unwrap();
    let kinds: Vec<String> = log
        .iter()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(kinds, ["adjust", "reserve", "settle"]);
}

#[tokio::test]
async fn a_replica_killed_holding_a_reservation_gives_it_back_once_after_its_lease() {
    let Some(redis) = RedisServer::start("credits_killed_replica") else {
        return;
    };
    let mock = MockUpstream::start().await;
    mock.push(Reply::Hang);
    let mut replicas = start(&credit_config(&mock, &redis, &METERED, &[]), 2);
    let token = token("leaver");
    add_credits(&replicas[1], "leaver", 1.0).await;
    let url = replicas[0].url("/v1/chat/completions");
    let (t, mut body) = (token.clone(), chat_body("m"));
    body["max_tokens"] = json!(10);
    let pending = tokio::spawn(async move {
        let _ = client().post(url).bearer_auth(t).json(&body).send().await;
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !credits(&replicas[1], "leaver")
        .await
        .to_string()
        .contains("\"reserve\"")
    {
        assert!(Instant::now() < deadline, "no reservation made");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The reservation is made before the upstream is called: wait until the hanging reply is taken,
    // or the next call (on replica 1) would be the one to hang.
    while mock.request_count() == 0 {
        assert!(
            Instant::now() < deadline,
            "the held request never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    replicas[0].kill9();
    pending.abort();
    // The 3 s lease runs out; the next look at the account gives it back, once.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let c = credits(&replicas[1], "leaver").await;
        if c.to_string().contains("lease_expired") {
            break;
        }
        assert!(Instant::now() < deadline, "never released: {c}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(settled_balance(&replicas[1], "leaver").await, 1_000_000);
    let (status, _, body) = spend_once_redis_answers(&replicas[1], &token, 10).await;
    assert_eq!(status, 200, "{body}");
    let c = credits(&replicas[1], "leaver").await;
    let expired = c["transactions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["kind"] == "lease_expired")
        .count();
    assert_eq!(expired, 1, "{c}");
}

/// Saves Redis to its `dump.rdb` (so a restart comes back with the same data).
fn save(redis: &RedisServer) {
    let reply = redis.command(&["SAVE"]).unwrap_or_default();
    assert!(reply.starts_with("+OK"), "SAVE: {reply}");
}

#[tokio::test]
async fn credits_fail_closed_while_redis_is_away_in_both_dialects() {
    let Some(mut redis) = RedisServer::start("credits_fail_closed") else {
        return;
    };
    let mock = MockUpstream::start().await;
    let replicas = start(&credit_config(&mock, &redis, &METERED, &[]), 2);
    let token = token("closed");
    add_credits(&replicas[0], "closed", 1.0).await;
    assert_eq!(spend(&replicas[1], &token, 10).await.0, 200);
    let before = settled_balance(&replicas[0], "closed").await;
    save(&redis);
    redis.kill();
    let (status, headers, body) = spend(&replicas[1], &token, 10).await;
    assert_eq!(status, 503, "{body}");
    assert!(headers.get("retry-after").is_some(), "{headers:?}");
    let e = error_of(&body.to_string());
    assert_eq!(e["code"], "credits_unavailable", "{body}");
    let degraded = "switchyard_shared_state_degraded{resource=\"credits\"}";
    assert_eq!(metric(&replicas[1], degraded).await, 1.0);
    let messages = json!({"model": "m", "max_tokens": 10,
        "messages": [{"role": "user", "content": "hello"}]});
    let (status, headers, body) = call(
        &replicas[0],
        reqwest::Method::POST,
        "/v1/messages",
        Some(&token),
        Some(messages),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(headers.get("retry-after").is_some(), "{headers:?}");
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["error"]["type"], "overloaded_error", "{body}");
    assert_eq!(mock.request_count(), 1, "nothing was sent without credits");
    // Back with its data: credits as before, on every replica.
    redis.restart();
    for r in &replicas {
        until_status(r, &token, 200, Duration::from_secs(10)).await;
    }
    let after = settled_balance(&replicas[1], "closed").await;
    assert_eq!(metric(&replicas[1], degraded).await, 0.0);
    let spent = before - after;
    assert!(spent > 0 && spent % 1000 == 0, "{before} -> {after}");
}

#[tokio::test]
async fn an_allowance_lets_a_replica_spend_alone_and_is_charged_when_redis_is_back() {
    let Some(mut redis) = RedisServer::start("credits_allowance") else {
        return;
    };
    let mock = MockUpstream::start().await;
    // Each call reserves about 0.1 USD (its body's bytes and 10 tokens at 1000 USD per million).
    let state = ["credit_allowance_usd: 0.25"];
    let replicas = start(&credit_config(&mock, &redis, &METERED, &state), 1);
    let token = token("away");
    add_credits(&replicas[0], "away", 1.0).await;
    save(&redis);
    redis.kill();
    let (mut spent, mut admitted) = (0, 0);
    loop {
        let (status, headers, body) = spend(&replicas[0], &token, 10).await;
        if status == 503 {
            assert!(headers.get("retry-after").is_some());
            break;
        }
        assert_eq!(status, 200, "{body}");
        admitted += 1;
        spent += body["usage"]["total_tokens"].as_i64().unwrap() * 1000;
        assert!(admitted < 100, "the allowance never ran out");
    }
    // Up to the allowance (a call is admitted while its largest cost fits in what is left).
    assert!(
        admitted >= 1 && spent <= 250_000,
        "{admitted} calls, {spent}"
    );
    redis.restart();
    // What was spent alone is charged into Redis, once.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        // 503 until this replica reconnects; then the balance, once what it owes is charged.
        let path = "/admin/accounts/away/credits";
        let (_, _, c) = call(
            &replicas[0],
            reqwest::Method::GET,
            path,
            Some(ADMIN_TOKEN),
            None,
        )
        .await;
        if c["balance_micros"].as_i64() == Some(1_000_000 - spent) {
            break;
        }
        assert!(Instant::now() < deadline, "not charged: {c}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        settled_balance(&replicas[0], "away").await,
        1_000_000 - spent
    );
}

#[tokio::test]
async fn a_redis_restored_from_an_old_snapshot_refuses_credits_until_a_reseed() {
    let Some(mut redis) = RedisServer::start("credits_old_snapshot") else {
        return;
    };
    let mock = MockUpstream::start().await;
    let replicas = start(&credit_config(&mock, &redis, &METERED, &[]), 3);
    let token = token("restored");
    add_credits(&replicas[0], "restored", 1.0).await;
    assert_eq!(spend(&replicas[0], &token, 10).await.0, 200);
    settled_balance(&replicas[0], "restored").await;
    save(&redis);
    let old = redis.dir().join("dump.old");
    std::fs::copy(redis.dir().join("dump.rdb"), &old).unwrap();
    // Spend after the snapshot, on every replica, and let each see the newest balance.
    for r in &replicas {
        assert_eq!(spend(r, &token, 10).await.0, 200);
    }
    let newest = settled_balance(&replicas[0], "restored").await;
    for r in &replicas {
        assert_eq!(settled_balance(r, "restored").await, newest);
    }
    redis.kill();
    std::fs::copy(&old, redis.dir().join("dump.rdb")).unwrap();
    redis.restart();
    // Each replica, once it reaches the restarted Redis, finds it behind what it saw.
    for r in &replicas {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (status, headers, body) = spend(r, &token, 10).await;
            assert_eq!(status, 503, "{body}");
            assert!(headers.get("retry-after").is_some());
            if body.to_string().contains("reseed") {
                break;
            }
            assert!(Instant::now() < deadline, "{body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    #[allow(clippy::cast_precision_loss)]
    let usd = newest as f64 / 1e6;
    let reseed = json!({"balances_usd": {"restored": usd}});
    let (status, _, v) = reconnected(|| {
        call(
            &replicas[1],
            reqwest::Method::POST,
            "/admin/state/reseed",
            Some(ADMIN_TOKEN),
            Some(reseed.clone()),
        )
    })
    .await;
    assert_eq!(status, 200, "{v}");
    assert!(v["epoch"].as_u64().unwrap() > 0, "{v}");
    let mut spent = 0;
    for r in &replicas {
        let (status, _, body) = reconnected(|| spend(r, &token, 10)).await;
        assert_eq!(status, 200, "{body}");
        spent += body["usage"]["total_tokens"].as_i64().unwrap() * 1000;
    }
    for r in &replicas {
        assert_eq!(settled_balance(r, "restored").await, newest - spent);
    }
    let audit = admin(&replicas[1], reqwest::Method::GET, "/admin/audit", None).await;
    assert!(audit.to_string().contains("reseed"), "{audit}");
}
