//! Usage for the whole fleet: each replica ships its records to Redis, and the usage API of any
//! replica counts every answer of every replica, a replica killed with -9 mid-traffic included
//! (it ships the rest when it is back); without Redis a report says it is this replica's only.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::*;
use crate::support::redis::RedisServer;

/// `/admin/usage` of `server`.
async fn fleet_usage(server: &Server) -> Value {
    admin(
        server,
        reqwest::Method::GET,
        "/admin/usage?group_by=account",
        None,
    )
    .await
}

/// Polls `/admin/usage` on `server` until `done` holds for its total; the last report.
async fn until_usage(server: &Server, done: impl Fn(u64) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let v = fleet_usage(server).await;
        if done(v["total"]["requests"].as_u64().unwrap()) {
            return v;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{}: {v}",
            server.addr
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn usage_on_any_replica_counts_every_answer_of_the_fleet() {
    let Some(mut redis) = RedisServer::start("usage_across_replicas") else {
        return;
    };
    let mock = MockUpstream::start().await;
    let replicas = fleet(3, &mock, &redis, "2s");
    let mut ok = 0;
    for i in 0..24 {
        let r = &replicas[i % 3];
        if chat_as(r, &token(&format!("user{}", i % 4))).await.0 == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 24);
    for r in &replicas {
        let v = until_usage(r, |n| n == ok).await;
        assert_eq!(v["source"], "fleet", "{v}");
        let per_user: Vec<u64> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| row["requests"].as_u64().unwrap())
            .collect();
        assert_eq!(per_user, [6, 6, 6, 6], "{v}");
    }
    // A caller's own report is the fleet's too.
    let own = client()
        .get(replicas[1].url("/v1/usage"))
        .bearer_auth(token("user0"))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(own["total"]["requests"], 6, "{own}");

    // Redis comes back empty: each replica ships its records again.
    redis.restart();
    for r in &replicas {
        let v = until_usage(r, |n| n == ok).await;
        assert_eq!(v["source"], "fleet", "{v}");
    }

    // Without Redis: this replica's records only, and the report says so.
    redis.kill();
    let v = fleet_usage(&replicas[0]).await;
    assert_eq!(v["source"], "local", "{v}");
    assert_eq!(v["total"]["requests"], 8, "{v}");
}

#[tokio::test]
async fn a_replica_killed_mid_traffic_ships_every_acknowledged_record_when_it_is_back() {
    let Some(redis) = RedisServer::start("usage_after_kill9") else {
        return;
    };
    let mock = MockUpstream::start().await;
    let mut replicas = fleet(3, &mock, &redis, "2s");
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Four callers, each sending to every replica in turn until stopped.
    let mut callers = Vec::new();
    let urls: Vec<String> = replicas
        .iter()
        .map(|r| r.url("/v1/chat/completions"))
        .collect();
    for c in 0..4 {
        let (ok, failed, stop, urls) = (ok.clone(), failed.clone(), stop.clone(), urls.clone());
        callers.push(tokio::spawn(async move {
            let mut i = c;
            let mut sent = 0;
            // Under each caller's limit of 30 an hour.
            while !stop.load(Ordering::Relaxed) && sent < 28 {
                let resp = client()
                    .post(&urls[i % 3])
                    .bearer_auth(token(&format!("caller{c}")))
                    .json(&chat_body("m"))
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
                i += 1;
                sent += 1;
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        }));
    }
    let started = Instant::now();
    while ok.load(Ordering::Relaxed) < 30 {
        assert!(started.elapsed() < Duration::from_secs(20), "no traffic");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    replicas[1].kill9();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for c in callers {
        c.await.unwrap();
    }
    replicas[1].restart();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    // Every acknowledged answer counts; an answer cut by the kill may count as well. The restarted
    // replica reports the same total as the others once it has shipped what its journal held.
    let counted = settled_usage(&[&replicas[0], &replicas[1], &replicas[2]], ok).await;
    assert!(
        counted <= ok + failed,
        "{counted} counted, {ok} answered, {failed} cut"
    );
    eprintln!("after kill -9: {ok} answered with 200, {failed} failed or cut, {counted} counted");
}

/// Polls `/admin/usage` on every replica until they all report one total, at least `min`, that has
/// not moved for a second (five of the replicas' ship intervals); that total. Reaching `min` is not
/// enough: the record of an answer the kill cut may still be on its way from the restarted replica.
async fn settled_usage(servers: &[&Server], min: u64) -> u64 {
    let started = Instant::now();
    let mut last: Option<(u64, Instant)> = None;
    loop {
        let mut totals = Vec::with_capacity(servers.len());
        for s in servers {
            totals.push(fleet_usage(s).await["total"]["requests"].as_u64().unwrap());
        }
        let agreed = totals.iter().all(|t| *t == totals[0] && *t >= min);
        match last {
            Some((t, since)) if agreed && t == totals[0] => {
                if since.elapsed() >= Duration::from_secs(1) {
                    return t;
                }
            }
            _ if agreed => last = Some((totals[0], Instant::now())),
            _ => last = None,
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no settled total of at least {min}: {totals:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
