//! The usage recorder: appends one record per attempt to sled and group-commits them, so a caller that
//! waits for its acknowledgement knows the record (and every earlier one) is on disk.

use std::collections::HashMap;

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::metrics::ActorMetrics;
use crate::store::{ProfileCounters, Store, UsageRecord};

/// The acknowledgement of a durable record: `Err` carries a secret-free message.
pub type Ack = Result<(), String>;

/// Records one attempt. With `ack`, the sender is answered once the record is flushed to disk.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RecordUsage {
    pub record: UsageRecord,
    pub ack: Option<oneshot::Sender<Ack>>,
}

/// Asks for a flush of everything recorded so far; answers when it is durable.
#[derive(Message)]
#[rtype(result = "Ack")]
pub struct FlushUsage;

/// Owns usage persistence and the persisted per-profile counters (derived from the records it writes).
pub struct UsageRecorder {
    store: Store,
    counters: HashMap<String, ProfileCounters>,
    /// Profiles whose counters changed since they were last written: written before each flush and on
    /// a short tick, rather than once per record.
    dirty: Vec<String>,
    /// Acks waiting for the next flush.
    pending: Vec<oneshot::Sender<Ack>>,
    flushing: bool,
    metrics: ActorMetrics,
}

impl UsageRecorder {
    /// A recorder writing to `store`.
    pub fn new(store: Store, metrics: ActorMetrics) -> UsageRecorder {
        UsageRecorder {
            store,
            counters: HashMap::new(),
            dirty: Vec::new(),
            pending: Vec::new(),
            flushing: false,
            metrics,
        }
    }

    /// Starts one flush covering everything written so far; records arriving meanwhile wait for the next.
    fn start_flush(&mut self, ctx: &mut Context<Self>) {
        if self.flushing || self.pending.is_empty() {
            return;
        }
        self.flushing = true;
        // The counters ride in the same flush as the records they count.
        self.save_counters();
        let batch = std::mem::take(&mut self.pending);
        let store = self.store.clone();
        let timer = self.metrics.store_flush.start_timer();
        let fut = actix::fut::wrap_future::<_, Self>(async move { store.flush().await }).map(
            move |res, act, ctx| {
                timer.observe_duration();
                let ack: Ack = res.map_err(|e| e.to_string());
                if let Err(e) = &ack {
                    tracing::error!(error = %e, "usage flush failed");
                }
                for tx in batch {
                    let _ = tx.send(ack.clone());
                }
                act.flushing = false;
                act.start_flush(ctx);
            },
        );
        ctx.spawn(fut);
    }

    fn write(&mut self, record: &UsageRecord) -> Result<(), String> {
        self.store.append_usage(record).map_err(|e| e.to_string())?;
        let c = match self.counters.get_mut(&record.profile) {
            Some(c) => c,
            None => {
                let loaded = self
                    .store
                    .load_counters(&record.profile)
                    .map_err(|e| e.to_string())?;
                self.counters
                    .entry(record.profile.clone())
                    .or_insert(loaded)
            }
        };
        c.requests += 1;
        if record.is_failure() {
            c.failures += 1;
        }
        if !self.dirty.contains(&record.profile) {
            self.dirty.push(record.profile.clone());
        }
        Ok(())
    }

    /// Writes the counters that changed since the last call.
    fn save_counters(&mut self) {
        for profile in std::mem::take(&mut self.dirty) {
            if let Some(c) = self.counters.get(&profile) {
                if let Err(e) = self.store.save_counters(&profile, c) {
                    tracing::error!(error = %e, profile = %profile, "cannot save profile counters");
                }
            }
        }
    }
}

impl Actor for UsageRecorder {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(crate::profile::MAILBOX_CAPACITY);
        ctx.run_interval(std::time::Duration::from_millis(200), |act, _| {
            act.save_counters()
        });
    }

    fn stopping(&mut self, _ctx: &mut Self::Context) -> Running {
        self.save_counters();
        Running::Stop
    }
}

impl Supervised for UsageRecorder {
    fn restarting(&mut self, _ctx: &mut Self::Context) {
        // Counters are re-read from the store on demand.
        self.metrics
            .restarts
            .with_label_values(&["usage_recorder"])
            .inc();
        self.counters.clear();
        self.flushing = false;
    }
}

impl Handler<RecordUsage> for UsageRecorder {
    type Result = ();

    fn handle(&mut self, msg: RecordUsage, ctx: &mut Self::Context) {
        match self.write(&msg.record) {
            Ok(()) => {
                if let Some(tx) = msg.ack {
                    self.pending.push(tx);
                    self.start_flush(ctx);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, request_id = %msg.record.request_id, "cannot record usage");
                if let Some(tx) = msg.ack {
                    let _ = tx.send(Err(e));
                }
            }
        }
    }
}

impl Handler<FlushUsage> for UsageRecorder {
    type Result = ResponseFuture<Ack>;

    fn handle(&mut self, _msg: FlushUsage, _ctx: &mut Self::Context) -> Self::Result {
        self.save_counters();
        let store = self.store.clone();
        Box::pin(async move { store.flush().await.map_err(|e| e.to_string()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(profile: &str, outcome: &str) -> UsageRecord {
        UsageRecord {
            ts_ms: crate::store::now_ms(),
            request_id: "r".into(),
            profile: profile.into(),
            model: "m".into(),
            account: None,
            key_id: None,
            outcome: outcome.into(),
            status: None,
            prompt_tokens: 0,
            completion_tokens: 0,
            latency_ms: 0,
            attempt: 1,
            stream: false,
        }
    }

    #[actix_rt::test]
    async fn records_are_acked_after_flush_and_counters_follow() {
        let store = Store::temporary().unwrap();
        store
            .save_counters(
                "a",
                &ProfileCounters {
                    requests: 10,
                    failures: 1,
                },
            )
            .unwrap();
        let addr = UsageRecorder::new(store.clone(), ActorMetrics::unregistered().unwrap()).start();
        let mut acks = Vec::new();
        for outcome in ["ok", "server", "client_error"] {
            let (tx, rx) = oneshot::channel();
            addr.send(RecordUsage {
                record: rec("a", outcome),
                ack: Some(tx),
            })
            .await
            .unwrap();
            acks.push(rx);
        }
        for rx in acks {
            rx.await.unwrap().unwrap();
        }
        assert_eq!(store.all_usage().unwrap().len(), 3);
        assert_eq!(
            store.load_counters("a").unwrap(),
            ProfileCounters {
                requests: 13,
                failures: 2
            }
        );
    }
}
