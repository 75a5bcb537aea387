//! The usage recorder: appends one record per attempt to sled and group-commits them, so a caller that
//! waits for its acknowledgement knows the record (and every earlier one) is on disk.
//!
//! Records are buffered while the mailbox has more, then written as one batch: the batch write is a
//! notification to self, which actix runs after the messages already queued.
//!
//! Records nobody waits for (the journal's, and every record of `usage.durable: false`) come through
//! a `UsageQueue` instead of one message each: the first record into an idle queue sends one message,
//! and the recorder takes everything queued `GATHER` later, so a burst of records (or a single
//! connection's steady stream of them) costs one wakeup of the recorder's thread and one sled batch,
//! instead of one per record. Readers of the store that must see every record handed on so far (the
//! usage reports) ask for `WriteUsage` first.
//!
//! It also keeps the store's high-water mark current: on its tick, at most once a second, it writes
//! what the flushes that completed meanwhile cover (its own, and those of auth and billing), off the
//! actor's thread. Only when nothing flushed what was written (`usage.durable: false`) does it flush
//! for the mark itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::metrics::ActorMetrics;
use crate::store::{ProfileCounters, Store, StoreError, UsageRecord};

/// Why a usage record is not durable (shared by every ack of its batch, hence the `Arc`s).
#[derive(Debug, Clone, thiserror::Error)]
pub enum RecordError {
    /// The batch could not be written.
    #[error("cannot write usage records: {0}")]
    Write(Arc<StoreError>),
    /// A companion's queue (the credit ledger's) could not be written before the batch.
    #[error("cannot write the ledger entries before the records: {0}")]
    Companion(Arc<StoreError>),
    /// The flush that would make the batch durable failed.
    #[error("cannot flush the store: {0}")]
    Flush(Arc<StoreError>),
}

/// The acknowledgement of a durable record.
pub type Ack = Result<(), RecordError>;

/// Records one attempt. With `ack`, the sender is answered once the record is flushed to disk.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RecordUsage {
    pub record: UsageRecord,
    pub ack: Option<oneshot::Sender<Ack>>,
    /// The record's journal sequence when it was journaled first. Such records must arrive in
    /// sequence order (the journal hands them on under its lock), so the store's `usage_through`
    /// says exactly which journaled records it holds.
    pub seq: Option<u64>,
    /// The record's JSON when the sender made it already (the journal's line): stored as is.
    pub encoded: Option<Vec<u8>>,
}

/// How long the recorder lets records gather in its queue after the first one, before it writes them.
/// A request's response never waits for this (a journaled record is safe once its line is written;
/// an unjournaled one waits for nothing); what it delays is the record's arrival in sled, which the
/// usage reports hide with `WriteUsage`. At one connection (a record every ~0.2 ms) 5 ms gathers
/// ~25 records a batch; sled's own periodic flush is 500 ms.
pub const GATHER: Duration = Duration::from_millis(5);

/// Records waiting for the recorder's next gathering, in the order they were handed on. Shared by
/// every request thread and the recorder (which outlives a restart of the actor, so nothing queued
/// is lost to one). A mutex, not a lock-free queue: it is held for one `Vec::push`, and its flag must
/// change with the vector (a record pushed into an idle queue sends the one wakeup).
#[derive(Default)]
pub struct UsageQueue {
    inner: parking_lot::Mutex<Queued>,
}

#[derive(Default)]
struct Queued {
    records: Vec<RecordUsage>,
    /// A `Gather` is on its way to the recorder, or its timer runs: nobody else sends one.
    scheduled: bool,
}

impl UsageQueue {
    /// Queues `msg` for `recorder` (its `ack`, if any, is answered as a message's would be); sends the
    /// one message that wakes the recorder when the queue was idle. Records of one caller keep their
    /// order, and calls serialised by the caller (the journal's lock) keep theirs.
    pub fn push(&self, recorder: &Addr<UsageRecorder>, msg: RecordUsage) {
        let wake = {
            let mut q = self.inner.lock();
            q.records.push(msg);
            !std::mem::replace(&mut q.scheduled, true)
        };
        if wake {
            // do_send: never dropped for a full mailbox.
            recorder.do_send(Gather);
        }
    }

    /// Everything queued, oldest first; the next push wakes the recorder again.
    fn take(&self) -> Vec<RecordUsage> {
        let mut q = self.inner.lock();
        q.scheduled = false;
        std::mem::take(&mut q.records)
    }

    /// How many records wait (for tests and metrics).
    pub fn len(&self) -> usize {
        self.inner.lock().records.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The queue has records: take them after `GATHER`.
#[derive(Message)]
#[rtype(result = "()")]
struct Gather;

/// Writes everything handed on so far to the store (not flushed); answers once written, so a reader
/// of the store that asked first sees every record handed on before it asked.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WriteUsage;

/// Asks for a flush of everything recorded so far; answers when it is durable.
#[derive(Message)]
#[rtype(result = "Ack")]
pub struct FlushUsage;

/// Writes another component keeps queued in memory until the recorder's next batch (the credit ledger's
/// transactions): written just before each batch of records, so the flush that acknowledges a record
/// covers everything its request decided before it.
pub trait BatchCompanion: Send + Sync + 'static {
    /// Writes what is queued to the store (not yet flushed).
    fn write_pending(&self) -> Result<(), StoreError>;
}

/// How often at most the high-water mark is rewritten: one small file, fsync'd, rather than one per
/// flush (under load there are hundreds of those a second).
pub const MARK_EVERY: Duration = Duration::from_secs(1);

/// Writes the buffered records (sent to self; runs after the queued messages).
#[derive(Message)]
#[rtype(result = "()")]
struct WriteBatch;

/// Owns usage persistence and the persisted per-profile counters (derived from the records it writes).
pub struct UsageRecorder {
    store: Store,
    /// Records not yet written to the store.
    buffer: Vec<UsageRecord>,
    /// Their JSON where the sender gave it (`RecordUsage::encoded`), index for index.
    buffer_encoded: Vec<Option<Vec<u8>>>,
    /// The highest journal sequence among them.
    buffer_through: Option<u64>,
    /// The highest journal sequence whose record the store has been given (shared with the journal's
    /// checkpoint, which deletes what a flush after that covers).
    through: Arc<AtomicU64>,
    /// Acks of buffered records: they join `pending` once their batch is written.
    buffered_acks: Vec<oneshot::Sender<Ack>>,
    /// A `WriteBatch` is queued.
    write_queued: bool,
    /// Records handed on without a message each (see `UsageQueue`).
    queue: Arc<UsageQueue>,
    companions: Vec<std::sync::Arc<dyn BatchCompanion>>,
    counters: HashMap<String, ProfileCounters>,
    /// Profiles whose counters changed since they were last written: written before each flush and on
    /// a short tick, rather than once per record.
    dirty: Vec<String>,
    /// Acks waiting for the next flush.
    pending: Vec<oneshot::Sender<Ack>>,
    flushing: bool,
    /// A write of the high-water mark is under way.
    marking: bool,
    last_mark: Option<Instant>,
    metrics: ActorMetrics,
}

impl UsageRecorder {
    /// A recorder writing to `store`.
    pub fn new(store: Store, metrics: ActorMetrics) -> UsageRecorder {
        let through = Arc::new(AtomicU64::new(store.usage_through().unwrap_or(0)));
        UsageRecorder {
            store,
            buffer: Vec::new(),
            buffer_encoded: Vec::new(),
            buffer_through: None,
            through,
            buffered_acks: Vec::new(),
            write_queued: false,
            queue: Arc::new(UsageQueue::default()),
            companions: Vec::new(),
            counters: HashMap::new(),
            dirty: Vec::new(),
            pending: Vec::new(),
            flushing: false,
            marking: false,
            last_mark: None,
            metrics,
        }
    }

    /// The highest journal sequence whose record was given to the store so far.
    pub fn through(&self) -> Arc<AtomicU64> {
        self.through.clone()
    }

    /// Uses `through` (shared with the journal's checkpoint) instead of its own.
    pub fn with_through(self, through: Arc<AtomicU64>) -> Self {
        UsageRecorder { through, ..self }
    }

    /// Takes records from `queue` (shared with the senders, and with the next actor after a restart)
    /// instead of its own.
    pub fn with_queue(self, queue: Arc<UsageQueue>) -> Self {
        UsageRecorder { queue, ..self }
    }

    /// The queue its senders push records into (see `UsageQueue::push`).
    pub fn queue(&self) -> Arc<UsageQueue> {
        self.queue.clone()
    }

    /// Moves what the queue holds into the buffer, as if each had come as a message.
    fn take_queue(&mut self) {
        for msg in self.queue.take() {
            self.buffer_record(msg);
        }
    }

    fn buffer_record(&mut self, msg: RecordUsage) {
        self.buffer.push(msg.record);
        self.buffer_encoded.push(msg.encoded);
        if msg.seq.is_some() {
            self.buffer_through = self.buffer_through.max(msg.seq);
        }
        if let Some(tx) = msg.ack {
            self.buffered_acks.push(tx);
        }
    }

    /// Also writes `companion`'s queue before every batch, on the counters' tick and before a flush.
    pub fn with_companion(mut self, companion: std::sync::Arc<dyn BatchCompanion>) -> Self {
        self.companions.push(companion);
        self
    }

    fn write_companions(&self) -> Result<(), RecordError> {
        self.companions
            .iter()
            .try_for_each(|c| c.write_pending())
            .map_err(|e| RecordError::Companion(Arc::new(e)))
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
                let ack: Ack = res.map_err(|e| RecordError::Flush(Arc::new(e)));
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

    /// Writes the buffered records as one batch and counts them; their acks then wait for the next flush
    /// (or get the error).
    fn write_buffer(&mut self) {
        self.write_queued = false;
        if self.buffer.is_empty() {
            if let Err(e) = self.write_companions() {
                tracing::error!(error = %e, "cannot write queued ledger entries");
            }
            return;
        }
        let mut records = std::mem::take(&mut self.buffer);
        let mut encoded = std::mem::take(&mut self.buffer_encoded);
        let acks = std::mem::take(&mut self.buffered_acks);
        let through = self.buffer_through.take();
        // Records are written even when a companion fails; their acks then carry its error.
        let companions = self.write_companions();
        let written = self
            .write_counted(&records, &encoded, through)
            .map_err(|e| RecordError::Write(Arc::new(e)));
        let result = companions.and(written.clone());
        match result {
            Ok(()) => self.pending.extend(acks),
            Err(e) => {
                tracing::error!(error = %e, records = records.len(), "cannot record usage");
                for tx in acks {
                    let _ = tx.send(Err(e.clone()));
                }
            }
        }
        if written.is_err() && through.is_some() {
            // Journaled records are retried with the next batch: a later batch's `through` would
            // otherwise tell replay that the store holds them.
            self.buffer_through = through;
            self.buffer = records;
            self.buffer_encoded = encoded;
        } else {
            records.clear();
            self.buffer = records;
            encoded.clear();
            self.buffer_encoded = encoded;
        }
    }

    /// Writes `records` with the counters that count them, atomically (see `write_usage_batch`);
    /// on failure the counters are read again from the store when next needed.
    fn write_counted(
        &mut self,
        records: &[UsageRecord],
        encoded: &[Option<Vec<u8>>],
        through: Option<u64>,
    ) -> Result<(), StoreError> {
        for r in records {
            if let Err(e) = self.count(r) {
                self.forget_dirty();
                return Err(e);
            }
        }
        let dirty = std::mem::take(&mut self.dirty);
        let counters: Vec<(&str, ProfileCounters)> = dirty
            .iter()
            .filter_map(|p| self.counters.get(p).map(|c| (p.as_str(), *c)))
            .collect();
        match self
            .store
            .write_encoded_usage_batch(records, encoded, &counters, through)
        {
            Ok(()) => {
                if let Some(seq) = through {
                    self.through.fetch_max(seq, Ordering::AcqRel);
                }
                Ok(())
            }
            Err(e) => {
                self.dirty = dirty;
                self.forget_dirty();
                Err(e)
            }
        }
    }

    /// Drops the in-memory counters of the profiles counted since the last write.
    fn forget_dirty(&mut self) {
        for p in std::mem::take(&mut self.dirty) {
            self.counters.remove(&p);
        }
    }

    /// Adds a written record to its profile's counters.
    fn count(&mut self, record: &UsageRecord) -> Result<(), StoreError> {
        let c = match self.counters.get_mut(&record.profile) {
            Some(c) => c,
            None => {
                let loaded = self.store.load_counters(&record.profile)?;
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

    /// Rewrites the high-water mark when completed flushes cover more than it says, at most every
    /// `MARK_EVERY`; flushes first only when written records are covered by no flush at all.
    fn maybe_mark(&mut self, ctx: &mut Context<Self>) {
        if self.marking || self.last_mark.is_some_and(|t| t.elapsed() < MARK_EVERY) {
            return;
        }
        let hw = self.store.high_water();
        let flush_first = !hw.is_ahead(&hw.covered());
        if flush_first && !hw.is_ahead(&hw.written()) {
            return;
        }
        self.marking = true;
        let store = self.store.clone();
        let work = async move {
            if flush_first {
                store.flush().await.map_err(|e| e.to_string())?;
            }
            tokio::task::spawn_blocking(move || store.mark_high_water())
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())
        };
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(work).map(|res, act, _ctx| {
                act.marking = false;
                act.last_mark = Some(Instant::now());
                if let Err(e) = res {
                    tracing::error!(error = %e, "cannot write the store's high-water mark");
                }
            }),
        );
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
        if !self.queue.is_empty() {
            // Queued before a restart (their `Gather` went to the actor that stopped).
            ctx.notify(Gather);
        }
        if !self.buffer.is_empty() {
            // Records buffered before a restart.
            self.write_queued = true;
            ctx.notify(WriteBatch);
        }
        ctx.run_interval(std::time::Duration::from_millis(200), |act, ctx| {
            // Also what the queue holds: a `Gather` timer lost to a restart leaves the queue's
            // flag set, and nobody would send another.
            act.take_queue();
            // With nothing buffered this writes the companions' queues alone.
            act.write_buffer();
            act.start_flush(ctx);
            act.save_counters();
            act.maybe_mark(ctx);
        });
    }

    fn stopping(&mut self, _ctx: &mut Self::Context) -> Running {
        self.take_queue();
        self.write_buffer();
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
        self.marking = false;
        self.write_queued = false;
    }
}

impl Handler<RecordUsage> for UsageRecorder {
    type Result = ();

    fn handle(&mut self, msg: RecordUsage, ctx: &mut Self::Context) {
        // What was queued before this message goes first, in its batch: with `usage.fsync`, the
        // flush that acknowledges a request's record covers its earlier attempts' records too.
        self.take_queue();
        self.buffer_record(msg);
        if !self.write_queued {
            self.write_queued = true;
            ctx.notify(WriteBatch);
        }
    }
}

impl Handler<WriteBatch> for UsageRecorder {
    type Result = ();

    fn handle(&mut self, _msg: WriteBatch, ctx: &mut Self::Context) {
        self.write_buffer();
        self.start_flush(ctx);
    }
}

impl Handler<Gather> for UsageRecorder {
    type Result = ();

    fn handle(&mut self, _msg: Gather, ctx: &mut Self::Context) {
        // The queue's flag stays set until `take_queue`: no other `Gather` comes meanwhile.
        ctx.run_later(GATHER, |act, ctx| {
            act.take_queue();
            act.write_buffer();
            act.start_flush(ctx);
        });
    }
}

impl Handler<WriteUsage> for UsageRecorder {
    type Result = ();

    fn handle(&mut self, _msg: WriteUsage, ctx: &mut Self::Context) {
        self.take_queue();
        self.write_buffer();
        self.start_flush(ctx);
    }
}

impl Handler<FlushUsage> for UsageRecorder {
    type Result = ResponseFuture<Ack>;

    fn handle(&mut self, _msg: FlushUsage, _ctx: &mut Self::Context) -> Self::Result {
        self.take_queue();
        self.write_buffer();
        self.save_counters();
        let store = self.store.clone();
        Box::pin(async move {
            store
                .flush()
                .await
                .map_err(|e| RecordError::Flush(Arc::new(e)))
        })
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
            usage_estimated: false,
            cached_tokens: 0,
            cache_write_tokens: 0,
            cache_write_1h_tokens: 0,
            reasoning_tokens: 0,
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
                seq: None,
                encoded: None,
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
            store
                .open_tree("usage")
                .unwrap()
                .scan_prefix("v2/usage/")
                .count(),
            3,
            "sent one at a time"
        );
        assert_eq!(
            store.load_counters("a").unwrap(),
            ProfileCounters {
                requests: 13,
                failures: 2
            }
        );
    }

    #[actix_rt::test]
    async fn a_burst_is_written_in_one_batch_and_acked_once_durable() {
        let store = Store::temporary().unwrap();
        let addr = UsageRecorder::new(store.clone(), ActorMetrics::unregistered().unwrap()).start();
        let mut acks = Vec::new();
        // Queued before the actor runs: one mailbox drain, so one batch.
        for i in 0..100 {
            let (tx, rx) = oneshot::channel();
            let outcome = if i % 4 == 0 { "server" } else { "ok" };
            addr.do_send(RecordUsage {
                record: rec("b", outcome),
                ack: Some(tx),
                seq: None,
                encoded: None,
            });
            acks.push(rx);
        }
        for rx in acks {
            rx.await.unwrap().unwrap();
        }
        assert_eq!(store.all_usage().unwrap().len(), 100);
        assert_eq!(
            store
                .open_tree("usage")
                .unwrap()
                .scan_prefix("v2/usage/")
                .count(),
            // One batch, in as few values as the store's cap on records a value allows.
            100usize.div_ceil(crate::store::MAX_RECORDS_PER_VALUE)
        );
        addr.send(FlushUsage).await.unwrap().unwrap();
        assert_eq!(
            store.load_counters("b").unwrap(),
            ProfileCounters {
                requests: 100,
                failures: 25
            }
        );
    }

    #[actix_rt::test]
    async fn a_flush_writes_what_is_buffered() {
        let store = Store::temporary().unwrap();
        let addr = UsageRecorder::new(store.clone(), ActorMetrics::unregistered().unwrap()).start();
        addr.do_send(RecordUsage {
            record: rec("c", "ok"),
            ack: None,
            seq: None,
            encoded: None,
        });
        addr.send(FlushUsage).await.unwrap().unwrap();
        assert_eq!(store.all_usage().unwrap().len(), 1);
    }

    fn batches(store: &Store) -> usize {
        store
            .open_tree("usage")
            .unwrap()
            .scan_prefix("v2/usage/")
            .count()
    }

    #[actix_rt::test]
    async fn records_handed_on_one_by_one_through_the_queue_are_gathered_into_few_batches() {
        let store = Store::temporary().unwrap();
        let recorder = UsageRecorder::new(store.clone(), ActorMetrics::unregistered().unwrap());
        let queue = recorder.queue();
        let addr = recorder.start();
        for seq in 1..=20 {
            queue.push(
                &addr,
                RecordUsage {
                    record: rec("q", "ok"),
                    ack: None,
                    seq: Some(seq),
                    encoded: None,
                },
            );
            // The recorder runs between them (as it would between requests): one message each
            // would be one batch each.
            tokio::task::yield_now().await;
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.all_usage().unwrap().len() < 20 {
            assert!(Instant::now() < deadline, "not written");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        // 20 yields take far less than GATHER; a stalled machine may split them once or twice.
        assert!(batches(&store) <= 3, "{} batches", batches(&store));
        assert_eq!(store.usage_through().unwrap(), 20);
        assert!(queue.is_empty());
    }

    #[actix_rt::test]
    async fn write_usage_writes_what_the_queue_holds_before_it_answers() {
        let store = Store::temporary().unwrap();
        let recorder = UsageRecorder::new(store.clone(), ActorMetrics::unregistered().unwrap());
        let queue = recorder.queue();
        let addr = recorder.start();
        let (tx, rx) = oneshot::channel();
        queue.push(
            &addr,
            RecordUsage {
                record: rec("w", "ok"),
                ack: None,
                seq: None,
                encoded: None,
            },
        );
        queue.push(
            &addr,
            RecordUsage {
                record: rec("w", "server"),
                ack: Some(tx),
                seq: None,
                encoded: None,
            },
        );
        addr.send(WriteUsage).await.unwrap();
        assert_eq!(
            store.all_usage().unwrap().len(),
            2,
            "written before the answer"
        );
        assert_eq!(batches(&store), 1);
        rx.await.unwrap().unwrap();
        assert_eq!(store.load_counters("w").unwrap().failures, 1);
    }

    #[actix_rt::test]
    async fn an_acked_record_takes_the_queued_ones_before_it_into_its_flush() {
        let store = Store::temporary().unwrap();
        let recorder = UsageRecorder::new(store.clone(), ActorMetrics::unregistered().unwrap());
        let queue = recorder.queue();
        let addr = recorder.start();
        // A failed attempt (queued), then the answered one, whose response waits for its flush.
        queue.push(
            &addr,
            RecordUsage {
                record: rec("f", "server"),
                ack: None,
                seq: None,
                encoded: None,
            },
        );
        let (tx, rx) = oneshot::channel();
        addr.do_send(RecordUsage {
            record: rec("f", "ok"),
            ack: Some(tx),
            seq: None,
            encoded: None,
        });
        rx.await.unwrap().unwrap();
        let outcomes: Vec<String> = store
            .all_usage()
            .unwrap()
            .into_iter()
            .map(|r| r.outcome)
            .collect();
        assert_eq!(outcomes, ["server", "ok"], "both flushed, in order");
    }

    /// Polls the mark in `dir` until it counts `n` usage records.
    async fn mark_reaches(dir: &std::path::Path, n: u64) -> crate::highwater::Counts {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mark = crate::highwater::read(dir).unwrap().unwrap();
            if mark.usage_records >= n {
                return mark;
            }
            assert!(Instant::now() < deadline, "the mark stayed at {mark:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[actix_rt::test]
    async fn the_high_water_mark_follows_the_flushes_acked_or_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .arm_high_water(dir.path(), crate::highwater::Counts::default())
            .unwrap();
        let addr = UsageRecorder::new(store.clone(), ActorMetrics::unregistered().unwrap()).start();
        let (tx, rx) = oneshot::channel();
        addr.send(RecordUsage {
            record: rec("f", "ok"),
            ack: Some(tx),
            seq: None,
            encoded: None,
        })
        .await
        .unwrap();
        rx.await.unwrap().unwrap();
        let first = mark_reaches(dir.path(), 1).await;
        assert_eq!(first.usage_records, 1);
        // Records nobody waits for (`usage.durable: false`) are flushed for the mark.
        for _ in 0..3 {
            addr.send(RecordUsage {
                record: rec("f", "ok"),
                ack: None,
                seq: None,
                encoded: None,
            })
            .await
            .unwrap();
        }
        let second = mark_reaches(dir.path(), 4).await;
        assert_eq!(second.usage_records, 4);
        assert!(second.id_counter > first.id_counter, "{first:?} {second:?}");
    }

    /// Counts its calls and notes how many usage records were in the store at the first one.
    struct Companion {
        store: Store,
        calls: std::sync::atomic::AtomicUsize,
        records_at_first_call: parking_lot::Mutex<Option<usize>>,
    }

    impl BatchCompanion for Companion {
        fn write_pending(&self) -> Result<(), StoreError> {
            self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut first = self.records_at_first_call.lock();
            if first.is_none() {
                *first = Some(self.store.all_usage().unwrap().len());
            }
            Ok(())
        }
    }

    #[actix_rt::test]
    async fn a_companion_writes_before_the_records_whose_ack_covers_it() {
        let store = Store::temporary().unwrap();
        let companion = std::sync::Arc::new(Companion {
            store: store.clone(),
            calls: std::sync::atomic::AtomicUsize::new(0),
            records_at_first_call: parking_lot::Mutex::new(None),
        });
        let addr = UsageRecorder::new(store.clone(), ActorMetrics::unregistered().unwrap())
            .with_companion(companion.clone())
            .start();
        let (tx, rx) = oneshot::channel();
        addr.send(RecordUsage {
            record: rec("e", "ok"),
            ack: Some(tx),
            seq: None,
            encoded: None,
        })
        .await
        .unwrap();
        rx.await.unwrap().unwrap();
        // Well before the 200 ms tick: the batch itself called it, ahead of its records.
        assert!(companion.calls.load(std::sync::atomic::Ordering::SeqCst) >= 1);
        assert_eq!(*companion.records_at_first_call.lock(), Some(0));
    }

    #[actix_rt::test]
    async fn journaled_records_move_the_stores_through_mark_with_their_counters() {
        let store = Store::temporary().unwrap();
        let recorder = UsageRecorder::new(store.clone(), ActorMetrics::unregistered().unwrap());
        let through = recorder.through();
        let addr = recorder.start();
        let mut sent = Vec::new();
        for (seq, outcome) in [(5, "ok"), (6, "server")] {
            let record = rec("j", outcome);
            // As the journal hands them on: with the line it wrote (the first one), or without.
            let encoded = (seq == 5).then(|| serde_json::to_vec(&record).unwrap());
            sent.push(record.clone());
            addr.do_send(RecordUsage {
                record,
                ack: None,
                seq: Some(seq),
                encoded,
            });
        }
        addr.send(FlushUsage).await.unwrap().unwrap();
        assert_eq!(store.all_usage().unwrap(), sent);
        assert_eq!(store.usage_through().unwrap(), 6);
        assert_eq!(through.load(Ordering::Acquire), 6);
        // Written with the records, not on a later tick.
        assert_eq!(
            store.load_counters("j").unwrap(),
            ProfileCounters {
                requests: 2,
                failures: 1
            }
        );
        // Replay writes only what the store lacks, and counts it.
        let replayed = store
            .replay_usage(&[
                (6, rec("j", "ok")),
                (7, rec("j", "ok")),
                (7, rec("j", "ok")),
            ])
            .unwrap();
        assert_eq!(replayed, 1);
        assert_eq!(store.all_usage().unwrap().len(), 3);
        assert_eq!(store.load_counters("j").unwrap().requests, 3);
        assert_eq!(store.usage_through().unwrap(), 7);
        assert_eq!(
            store.count_usage_records().unwrap(),
            3,
            "marks and counters are not records"
        );
    }
}
