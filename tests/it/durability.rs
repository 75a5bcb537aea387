//! Durability: one usage record per attempt, records that survive kill -9, and profile state and
//! counters that survive a restart.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use switchyard_actors::store::{Store, UsageRecord};

use crate::support::*;

/// Every usage record in the server's store as its next start sees it: after the journal's replay
/// (the server must have exited).
fn usage_records(server: &Server) -> Vec<UsageRecord> {
    let dir = server.data_dir();
    let store = Store::open(&dir).expect("open the store");
    switchyard::limits::recovery::recover(&store, &dir, Duration::from_secs(600))
        .expect("replay the journal");
    let records = store.all_usage().expect("read usage");
    drop(store);
    records
}

/// The usage records in the store as it is, without the journal (the server must have exited).
fn records_in_sled(server: &Server) -> Vec<UsageRecord> {
    let store = Store::open(&server.data_dir()).expect("open the store");
    let records = store.all_usage().expect("read usage");
    drop(store);
    records
}

#[tokio::test]
async fn a_failed_over_request_leaves_one_record_per_attempt() {
    let (a, b) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
    );
    a.push(Reply::server_error());
    let mut server = Server::start(
        &ConfigBuilder::default()
            .profile("a", &a)
            .profile("b", &b)
            .model_with_strategy("m", &["a", "b"], "priority"),
    );
    let (status, headers, body) = post(
        &server,
        "/v1/chat/completions",
        &chat_body("m"),
        &[("x-request-id", "dur-failover-1")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-switchyard-attempts"], "2");
    // A streamed request: its tokens come from the usage chunk the client never saw.
    let stream = json!({"model": "m", "stream": true,
        "messages": [{"role": "user", "content": "hello there"}]});
    let (status, _, text) = post(
        &server,
        "/v1/chat/completions",
        &stream,
        &[("x-request-id", "dur-stream-1")],
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert!(!text.contains("\"choices\":[]"), "{text}");
    let exit = server.terminate().expect("exit status");
    assert!(exit.success(), "{exit:?}");

    let records = usage_records(&server);
    let mut failover: Vec<&UsageRecord> = records
        .iter()
        .filter(|r| r.request_id == "dur-failover-1")
        .collect();
    failover.sort_by_key(|r| r.attempt);
    assert_eq!(failover.len(), 2, "{records:#?}");
    let (first, second) = (failover[0], failover[1]);
    assert_eq!(
        (
            first.attempt,
            first.profile.as_str(),
            first.outcome.as_str()
        ),
        (1, "a", "server"),
        "{first:?}"
    );
    assert_eq!(first.status, Some(500));
    assert_eq!((first.prompt_tokens, first.completion_tokens), (0, 0));
    assert_eq!(
        (
            second.attempt,
            second.profile.as_str(),
            second.outcome.as_str()
        ),
        (2, "b", "ok"),
        "{second:?}"
    );
    assert_eq!(second.status, Some(200));
    assert_eq!(
        (second.prompt_tokens, second.completion_tokens),
        (2, 5),
        "{second:?}"
    );
    assert!(!second.stream && second.model == "m");

    let streamed: Vec<&UsageRecord> = records
        .iter()
        .filter(|r| r.request_id == "dur-stream-1")
        .collect();
    assert_eq!(streamed.len(), 1, "{records:#?}");
    let s = streamed[0];
    assert_eq!(
        (s.profile.as_str(), s.outcome.as_str(), s.attempt, s.stream),
        ("b", "ok", 1, true),
        "{s:?}"
    );
    assert_eq!((s.prompt_tokens, s.completion_tokens), (2, 5), "{s:?}");
    assert_eq!(records.len(), 3, "{records:#?}");
}

#[tokio::test]
async fn every_answered_request_is_on_disk_after_kill_9() {
    const N: usize = 50;
    let a = MockUpstream::start_named("a").await;
    let mut server = Server::start(&ConfigBuilder::default().profile("a", &a).model("m", &["a"]));
    assert!(ConfigBuilder::default().durable, "durable is the default");
    let c = client();
    for i in 0..N {
        let resp = c
            .post(server.url("/v1/chat/completions"))
            .header("x-request-id", format!("k9-{i}"))
            .json(&chat_body("m"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.bytes().await.unwrap();
    }
    let before = admin_profile(&server, "a").await;
    server.kill9();

    let records = usage_records(&server);
    let ok: Vec<&UsageRecord> = records.iter().filter(|r| r.outcome == "ok").collect();
    assert_eq!(ok.len(), N, "{} records: {records:#?}", records.len());
    assert_eq!(records.len(), N);
    let mut ids: Vec<&str> = ok.iter().map(|r| r.request_id.as_str()).collect();
    ids.sort_unstable();
    let mut want: Vec<String> = (0..N).map(|i| format!("k9-{i}")).collect();
    want.sort_unstable();
    assert_eq!(ids, want);
    assert!(ok
        .iter()
        .all(|r| r.completion_tokens == 5 && r.profile == "a"));

    assert_eq!(before["requests"], json!(N), "{before}");
    assert_eq!(before["failures"], json!(0), "{before}");
    server.restart();
    let after = admin_profile(&server, "a").await;
    assert_eq!(after["requests"], before["requests"], "{after}");
    assert_eq!(after["failures"], before["failures"], "{after}");
}

/// The fields of a profile that must survive a restart.
fn durable_state(p: &Value) -> (Value, Value) {
    (p["state"].clone(), p["cooldown_until"].clone())
}

#[tokio::test]
async fn billing_and_auth_states_survive_restart_and_kill_9() {
    let (a, b, c) = (
        MockUpstream::start_named("a").await,
        MockUpstream::start_named("b").await,
        MockUpstream::start_named("c").await,
    );
    a.push(Reply::payment_required());
    b.push(Reply::unauthorized());
    let mut server = Server::start(
        &ConfigBuilder::default()
            .profile("a", &a)
            .profile("b", &b)
            .profile("c", &c)
            .model_with_strategy("m", &["a", "b", "c"], "priority"),
    );
    let (status, headers, body) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-switchyard-profile"], "c");
    assert_eq!(headers["x-switchyard-attempts"], "3");
    let pa = wait_state(&server, "a", "billing_disabled", Duration::from_secs(3)).await;
    let pb = wait_state(&server, "b", "auth_failed", Duration::from_secs(3)).await;
    assert!(pa["cooldown_until"].is_string(), "{pa}");
    let (sa, sb) = (durable_state(&pa), durable_state(&pb));
    tokio::time::sleep(Duration::from_millis(300)).await;

    server.kill9();
    server.restart();
    let started = Instant::now();
    let pa2 = admin_profile(&server, "a").await;
    let pb2 = admin_profile(&server, "b").await;
    assert_eq!(durable_state(&pa2), sa, "after kill -9: {pa2}");
    assert_eq!(durable_state(&pb2), sb, "after kill -9: {pb2}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The restored states route: a and b are skipped without being asked.
    let (status, headers, body) = chat(&server, &chat_body("m")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["x-switchyard-profile"], "c");
    assert_eq!(headers["x-switchyard-attempts"], "1");
    assert_eq!((a.request_count(), b.request_count()), (1, 1));

    // And across a clean stop too.
    server.terminate();
    server.restart();
    let pa3 = admin_profile(&server, "a").await;
    let pb3 = admin_profile(&server, "b").await;
    assert_eq!(durable_state(&pa3), sa, "after SIGTERM: {pa3}");
    assert_eq!(durable_state(&pb3), sb, "after SIGTERM: {pb3}");
}

/// A metered tier (model `m` at 1000 USD per million tokens: the mock's 2 + 5 tokens cost 7000
/// micro-USD) for the credit side of the kill -9 test.
const METERED: &str = "\
tiers:
  metered:
    max_tokens_per_request: 20
    monthly_credits: 0
pricing:
  m:
    input_per_million: 1000
    output_per_million: 1000";

#[tokio::test]
async fn kill_9_under_concurrent_load_loses_no_answered_record_or_credit_movement() {
    const TASKS: usize = 16;
    const KILL_AFTER: usize = 150;
    let mock = MockUpstream::start_named("a").await;
    let mut config = ConfigBuilder::default()
        .profile("a", &mock)
        .model("m", &["a"]);
    config.auth_required = true;
    config.max_attempts = 1;
    config.extra_yaml = METERED.lines().map(str::to_owned).collect();
    let mut server = Server::start(&config);
    let v = admin(
        &server,
        reqwest::Method::POST,
        "/admin/keys",
        Some(json!({"name": "k9", "account": "k9", "tier": "metered"})),
    )
    .await;
    let key = v["key"].as_str().unwrap().to_owned();
    let credits = Some(json!({ "amount_usd": 1000.0 }));
    admin(
        &server,
        reqwest::Method::POST,
        "/admin/accounts/k9/credits",
        credits,
    )
    .await;

    // Requests from many connections at once; an id counts as answered once its whole body arrived.
    let answered = std::sync::Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
    let url = server.url("/v1/chat/completions");
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let (answered, url, key) = (answered.clone(), url.clone(), key.clone());
            tokio::spawn(async move {
                let c = client();
                for i in 0.. {
                    let id = format!("c{t}-{i}");
                    let sent = c
                        .post(&url)
                        .bearer_auth(&key)
                        .header("x-request-id", &id)
                        .json(&chat_body("m"))
                        .send()
                        .await;
                    let Ok(resp) = sent else { return };
                    let ok = resp.status() == 200;
                    if resp.bytes().await.is_err() {
                        return;
                    }
                    assert!(ok, "{id} was refused");
                    answered.lock().push(id);
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while answered.lock().len() < KILL_AFTER {
        assert!(
            Instant::now() < deadline,
            "too slow: {}",
            answered.lock().len()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Mid-load: other requests are in flight, answered ones are at most a few milliseconds old.
    server.kill9();
    let acknowledged = answered.lock().clone();
    for t in tasks {
        let _ = t.await;
    }
    assert!(acknowledged.len() >= KILL_AFTER);

    // The next start replays the journal, with a short lease: the reservations the kill cut (their
    // leases under keys of their own or still in the process's fresh-lease value) are given back
    // once it runs out. A clean stop then flushes everything to sled.
    let mut yaml = std::fs::read_to_string(&server.config_path).unwrap();
    yaml.push_str("credits:\n  reservation_lease: 1s\n");
    std::fs::write(&server.config_path, yaml).unwrap();
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let c = admin(
            &server,
            reqwest::Method::GET,
            "/admin/accounts/k9/credits",
            None,
        )
        .await;
        let txs = c["transactions"].as_array().unwrap();
        let open: Vec<&Value> = txs
            .iter()
            .filter(|r| r["kind"] == "reserve" && !txs.iter().any(|t| t["reservation"] == r["id"]))
            .collect();
        if open.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} reservations never came back: {open:?}",
            open.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.terminate();
    assert!(
        !journal_holds_anything(&server),
        "a clean stop leaves no journal"
    );
    let records = records_in_sled(&server);
    let store = Store::open(&server.data_dir()).unwrap();
    let ledger = switchyard::limits::Ledger::open(&store).unwrap();
    let txs = ledger.transactions("k9").unwrap();
    drop(ledger);
    drop(store);
    let mut missing_records = Vec::new();
    let mut missing_settles = Vec::new();
    for id in &acknowledged {
        let ok = records
            .iter()
            .filter(|r| &r.request_id == id && r.outcome == "ok")
            .count();
        if ok != 1 {
            missing_records.push((id.clone(), ok));
        }
        let settled = txs
            .iter()
            .filter(|t| t.request_id.as_deref() == Some(id.as_str()) && t.kind == "settle")
            .count();
        if settled != 1 {
            missing_settles.push((id.clone(), settled));
        }
    }
    assert!(
        missing_records.is_empty(),
        "{} of {} answered requests have no single record: {missing_records:?}",
        missing_records.len(),
        acknowledged.len()
    );
    assert!(
        missing_settles.is_empty(),
        "{} of {} answered requests have no single settle: {missing_settles:?}",
        missing_settles.len(),
        acknowledged.len()
    );
    // Every settle charged the mock's 7 tokens, and the log still sums to the balance.
    let sum: i64 = txs.iter().map(|t| t.amount_micros).sum();
    let last = txs.last().unwrap().balance_micros;
    assert_eq!(sum, i64::try_from(last).unwrap(), "{txs:#?}");
    for t in txs.iter().filter(|t| t.kind == "settle") {
        assert_eq!(t.note.as_deref(), Some("cost 7000 micro-USD"), "{t:?}");
    }
    // Every reservation closed exactly once, so the balance is the credits less the settles' charges:
    // nothing the kill cut stays spent, nothing comes back twice.
    for r in txs.iter().filter(|t| t.kind == "reserve") {
        let closes: Vec<&str> = txs
            .iter()
            .filter(|t| t.reservation.as_deref() == Some(r.id.as_str()))
            .map(|t| t.kind.as_str())
            .collect();
        assert_eq!(closes.len(), 1, "{} closed by {closes:?}", r.id);
    }
    let settles = txs.iter().filter(|t| t.kind == "settle").count();
    let settles = i64::try_from(settles).unwrap();
    assert_eq!(
        i64::try_from(last).unwrap(),
        1_000_000_000 - 7_000 * settles,
        "{txs:#?}"
    );
}

/// Whether the server's data directory holds journal lines.
fn journal_holds_anything(server: &Server) -> bool {
    !switchyard::limits::journal::read(&server.data_dir())
        .unwrap()
        .0
        .is_empty()
}

#[tokio::test]
async fn with_fsync_every_answered_record_is_in_sled_itself_after_kill_9() {
    const N: usize = 20;
    let a = MockUpstream::start_named("a").await;
    let mut server = Server::start(&ConfigBuilder::default().profile("a", &a).model("m", &["a"]));
    // `usage.fsync` is read at start.
    let yaml = std::fs::read_to_string(&server.config_path).unwrap();
    let yaml = yaml.replace(
        "usage:\n  durable: true\n",
        "usage:\n  durable: true\n  fsync: true\n",
    );
    assert!(yaml.contains("fsync: true"), "{yaml}");
    std::fs::write(&server.config_path, yaml).unwrap();
    server.restart();
    for i in 0..N {
        let id = format!("fs-{i}");
        let (status, _, body) = post(
            &server,
            "/v1/chat/completions",
            &chat_body("m"),
            &[("x-request-id", &id)],
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }
    server.kill9();
    assert!(
        !journal_holds_anything(&server),
        "fsync mode writes no journal"
    );
    let records = records_in_sled(&server);
    assert_eq!(records.len(), N, "{records:#?}");
}
