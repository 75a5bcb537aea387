//! Usage retention: records older than `usage.retention` leave the store and the usage API, younger
//! ones stay, and a store swept by retention passes the high-water check at the next start.

use std::time::{Duration, Instant};

use switchyard_actors::store::Store;

use crate::support::*;

/// `/admin/usage`'s total request count.
async fn usage_requests(server: &Server) -> u64 {
    let v = admin(server, reqwest::Method::GET, "/admin/usage", None).await;
    v["total"]["requests"].as_u64().unwrap()
}

/// The value of the retention counter in `/metrics`.
async fn expired_metric(server: &Server) -> u64 {
    let (_, _, text) = server.get("/metrics").send_text().await;
    text.lines()
        .find_map(|l| l.strip_prefix("switchyard_usage_expired_records_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no retention counter in:\n{text}"))
}

/// Polls `check` until it holds, for at most `within`.
async fn until<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < within, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn expired_records_leave_the_usage_api_and_a_restart_after_the_sweep_is_clean() {
    let mock = MockUpstream::start().await;
    let mut cfg = ConfigBuilder::default()
        .profile("p", &mock)
        .model("m", &["p"]);
    cfg.extra_usage_yaml = vec!["retention: 4s".into()];
    let mut server = Server::start(&cfg);

    for _ in 0..3 {
        let (status, _, body) = post(&server, "/v1/chat/completions", &chat_body("m"), &[]).await;
        assert_eq!(status, 200, "{body}");
    }
    until(Duration::from_secs(5), "three records", || async {
        usage_requests(&server).await == 3
    })
    .await;
    assert_eq!(expired_metric(&server).await, 0);
    // Once older than 4 s they go (a sweep runs every second), and only they.
    until(Duration::from_secs(20), "the sweep", || async {
        expired_metric(&server).await == 3
    })
    .await;
    assert_eq!(usage_requests(&server).await, 0);
    for _ in 0..2 {
        let (status, _, body) = post(&server, "/v1/chat/completions", &chat_body("m"), &[]).await;
        assert_eq!(status, 200, "{body}");
    }
    until(Duration::from_secs(3), "the two young records", || async {
        usage_requests(&server).await == 2
    })
    .await;
    assert_eq!(expired_metric(&server).await, 3, "young records stay");

    let exit = server.terminate().expect("exit status");
    assert!(exit.success(), "{exit:?}");
    // The real binary's start compares the store with its high-water mark (5 records written):
    // it must come up and serve, not refuse a store that looks rolled back.
    server.restart();
    let (status, _, body) = post(&server, "/v1/chat/completions", &chat_body("m"), &[]).await;
    assert_eq!(status, 200, "{body}");
    assert!(!server.logs().contains("high-water"), "{}", server.logs());
    // And once more after a kill -9 mid-life, with the records now expiring too.
    until(Duration::from_secs(20), "the rest expiring", || async {
        usage_requests(&server).await == 0
    })
    .await;
    server.restart();
    let (status, _, body) = post(&server, "/v1/chat/completions", &chat_body("m"), &[]).await;
    assert_eq!(status, 200, "{body}");
    assert!(!server.logs().contains("high-water"), "{}", server.logs());

    let exit = server.terminate().expect("exit status");
    assert!(exit.success(), "{exit:?}");
    let store = Store::open(&server.data_dir()).expect("open the store");
    assert!(store.expired_usage_records() >= 6, "counted in the store");
    assert_eq!(store.count_usage_records().unwrap(), 7, "held + expired");
}
