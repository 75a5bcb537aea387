//! The journal's two moments beside the store: replay at start (before anything reads the store) and
//! the checkpoint that deletes what a sled flush covers.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use switchyard_actors::store::{Store, StoreError, UsageRecord};

use super::credits::{Ledger, LedgerError, Transaction};
use super::journal::{self, Journal, JournalError, Kind};

/// What start-up took from the journal.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    /// Usage records the store lacked.
    pub usage_records: usize,
    /// Ledger transactions the store lacked.
    pub transactions: usize,
    /// Lines that did not parse (a torn tail after a power loss) or held no known entry.
    pub skipped: usize,
}

/// Why the journal could not be replayed or checkpointed.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("ledger: {0}")]
    Ledger(#[from] LedgerError),
}

/// Writes what the journal under `data_dir` holds and the store lacks, flushes the store, and deletes
/// the journal. `lease` is the reservation lease given to replayed reservations nothing closed.
pub fn recover(
    store: &Store,
    data_dir: &Path,
    lease: Duration,
) -> Result<Recovered, RecoveryError> {
    let (entries, mut skipped) = journal::read(data_dir)?;
    let mut usage: Vec<(u64, UsageRecord)> = Vec::new();
    let mut txs: Vec<(u64, Transaction)> = Vec::new();
    for e in entries {
        let decoded = match e.kind {
            Kind::Usage => serde_json::from_slice(&e.body).map(|r| usage.push((e.seq, r))),
            Kind::Ledger => serde_json::from_slice(&e.body).map(|t| txs.push((e.seq, t))),
        };
        if decoded.is_err() {
            skipped += 1;
        }
    }
    let recovered = Recovered {
        usage_records: store.replay_usage(&usage)?,
        transactions: Ledger::open(store)?.replay(&txs, lease)?,
        skipped,
    };
    store.flush_blocking()?;
    journal::remove_all(data_dir)?;
    Ok(recovered)
}

/// The journal's usage sequence for a run: an in-memory counter, so an append draws its number
/// without a sled call. sled's `generate_id` takes sled's global concurrency-control lock, which
/// the usage recorder's batch holds for writing: drawn under the journal's mutex, a request thread
/// waited there for the batch (and the other request threads for the mutex). The counter starts above
/// sled's id counter and above the store's `usage_through`, so it grows across restarts (replay skips
/// records at or below the store's mark): the store's mark covers every record of the previous run
/// that the journal or the store holds, once `recover` has run.
pub fn usage_sequence(store: &Store) -> Result<impl Fn() -> Option<u64> + Send + Sync, StoreError> {
    let start = store
        .next_id()?
        .max(store.usage_through()?.saturating_add(1));
    let next = AtomicU64::new(start);
    Ok(move || Some(next.fetch_add(1, Ordering::Relaxed)))
}

/// Makes the staged movements safe, starts a new segment, flushes the store and deletes the closed
/// segments that flush covers: `usage_through` (the recorder's) and the ledger's `written_through`
/// are read before the flush starts, so everything at or below them is on disk once it completes.
/// Returns how many segments were deleted.
pub async fn checkpoint(
    journal: &Journal,
    store: &Store,
    ledger: &Ledger,
    usage_through: &AtomicU64,
) -> Result<usize, RecoveryError> {
    journal.commit()?;
    journal.rotate()?;
    let (usage, ledger_through) = (
        usage_through.load(Ordering::Acquire),
        ledger.written_through(),
    );
    store.flush().await?;
    Ok(journal.forget(usage, ledger_through)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const LEASE: Duration = Duration::from_secs(600);

    fn rec(request_id: &str) -> UsageRecord {
        UsageRecord {
            ts_ms: 1_000,
            request_id: request_id.into(),
            profile: "p".into(),
            model: "m".into(),
            account: None,
            key_id: None,
            outcome: "ok".into(),
            status: Some(200),
            prompt_tokens: 1,
            completion_tokens: 2,
            latency_ms: 3,
            attempt: 1,
            stream: false,
            usage_estimated: false,
            cached_tokens: 0,
            cache_write_tokens: 0,
            cache_write_1h_tokens: 0,
            reasoning_tokens: 0,
        }
    }

    /// A ledger and journal over one store in `dir`, wired as the server wires them.
    fn open(dir: &Path) -> (Store, Ledger, Arc<Journal>) {
        let store = Store::open(dir).unwrap();
        let (ledger, journal) = wire(&store, dir);
        (store, ledger, journal)
    }

    /// `open` for a store already open (a run after `recover`).
    fn wire(store: &Store, dir: &Path) -> (Ledger, Arc<Journal>) {
        let ledger = Ledger::open(store).unwrap();
        let journal = Arc::new(Journal::create(dir, usage_sequence(store).unwrap()).unwrap());
        ledger.attach_journal(journal.clone());
        (ledger, journal)
    }

    /// What a crash leaves: the journal's lines, and a store that never got the movements queued
    /// for its next batch nor the record the recorder had not yet written (dropped unwritten here).
    #[test]
    fn what_the_store_lacks_comes_back_from_the_journal_once() {
        let dir = tempfile::tempdir().unwrap();
        let (store, ledger, journal) = open(dir.path());
        ledger.adjust("a", 1_000, None).unwrap();
        let r = ledger.reserve("a", None, 300, ("r1", "m"), LEASE).unwrap();
        ledger.settle(&r, 100).unwrap();
        ledger.reserve("a", None, 200, ("r2", "m"), LEASE).unwrap();
        journal
            .append(br#"{"not":"a record"}"#.to_vec(), |_, _| ())
            .unwrap();
        let body = serde_json::to_vec(&rec("r1")).unwrap();
        journal.append(body.clone(), |_, _| ()).unwrap();
        drop((ledger, journal));

        let got = recover(&store, dir.path(), LEASE).unwrap();
        assert_eq!(
            got,
            Recovered {
                usage_records: 1,
                transactions: 3,
                skipped: 1
            },
            "the adjustment was in the store already; the odd line is no record"
        );
        let ledger = Ledger::open(&store).unwrap();
        let kinds: Vec<String> = ledger
            .transactions("a")
            .unwrap()
            .iter()
            .map(|t| t.kind.clone())
            .collect();
        assert_eq!(kinds, ["adjust", "reserve", "settle", "reserve"]);
        assert_eq!(ledger.balance("a").unwrap(), 1_000 - 100 - 200);
        // The reservation nothing settled is leased to "an earlier process": released after it.
        let released = ledger
            .release_expired(Duration::ZERO, switchyard_actors::store::now_ms() + 1)
            .unwrap();
        assert_eq!(released.len(), 1, "{released:?}");
        assert_eq!(released[0].request_id.as_deref(), Some("r2"));
        assert_eq!(ledger.balance("a").unwrap(), 1_000 - 100);
        assert_eq!(store.all_usage().unwrap()[0].request_id, "r1");
        assert_eq!(store.load_counters("p").unwrap().requests, 1);
        assert!(
            journal::read(dir.path()).unwrap().0.is_empty(),
            "deleted once flushed"
        );
        assert_eq!(
            recover(&store, dir.path(), LEASE).unwrap(),
            Recovered::default()
        );
    }

    /// A run draws far more usage sequences than sled ids; the next run must still start above them,
    /// or replay would take its records for ones the store holds.
    #[test]
    fn the_next_runs_usage_sequence_starts_above_the_last_runs() {
        let dir = tempfile::tempdir().unwrap();
        let last = {
            let (store, _ledger, journal) = open(dir.path());
            let body = serde_json::to_vec(&rec("r")).unwrap();
            let mut last = 0;
            for _ in 0..5_000 {
                last = journal.append(body.clone(), |seq, _| seq).unwrap();
            }
            // The store got all but the last (as a kill -9 leaves it), the journal has all.
            store
                .write_usage_batch(&[rec("r")], &[], Some(last - 1))
                .unwrap();
            store.flush_blocking().unwrap();
            last
        };
        // Dropping a store does not wait for sled's threads to let go of the directory's lock.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let store = loop {
            match Store::open(dir.path()) {
                Ok(s) => break s,
                Err(e) if std::time::Instant::now() > deadline => panic!("cannot reopen: {e}"),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        };
        assert_eq!(
            recover(&store, dir.path(), LEASE).unwrap().usage_records,
            1,
            "the one the store lacked"
        );
        let next = usage_sequence(&store).unwrap();
        let first = next().unwrap();
        assert!(first > last, "{first} after {last}");
        assert_eq!(next().unwrap(), first + 1);
    }

    /// A kill -9 leaves movements that only the journal holds, with sequences above anything the
    /// store has; the next run's movements must get higher ones, or the run after a second crash
    /// would take them for transactions the store already holds and skip them.
    #[test]
    fn the_next_runs_transactions_are_numbered_above_those_only_the_journal_held() {
        let dir = tempfile::tempdir().unwrap();
        let (store, ledger, journal) = open(dir.path());
        ledger.adjust("a", 1_000, None).unwrap();
        ledger.adjust("b", 1_000, None).unwrap();
        let mut last = 0;
        for i in 0..100 {
            let r = ledger
                .reserve("b", None, 1, (&format!("r{i}"), "m"), LEASE)
                .unwrap();
            ledger.settle(&r, 1).unwrap();
            last = r.tx.rsplit('_').next().unwrap().parse::<u64>().unwrap();
        }
        let body = serde_json::to_vec(&rec("r99")).unwrap();
        journal.append(body.clone(), |_, _| ()).unwrap();
        // The crash: the queued movements never reach the store.
        drop((ledger, journal));
        assert!(
            store.next_id().unwrap() < last,
            "sled's counter alone would reuse them"
        );

        let got = recover(&store, dir.path(), LEASE).unwrap();
        assert_eq!(
            got.transactions, 200,
            "every settled reservation, from the journal"
        );
        let (ledger, journal) = wire(&store, dir.path());
        let r = ledger.reserve("a", None, 1, ("next", "m"), LEASE).unwrap();
        let next: u64 = r.tx.rsplit('_').next().unwrap().parse().unwrap();
        assert!(next > last + 1, "{next} after {last}");

        // And so a second crash loses none of this run's movements either.
        ledger.settle(&r, 1).unwrap();
        journal.append(body.clone(), |_, _| ()).unwrap();
        drop((ledger, journal));
        assert_eq!(recover(&store, dir.path(), LEASE).unwrap().transactions, 2);
        let ledger = Ledger::open(&store).unwrap();
        assert_eq!(ledger.balance("a").unwrap(), 999);
        assert_eq!(ledger.balance("b").unwrap(), 900);
    }

    #[tokio::test]
    async fn a_checkpoint_deletes_only_what_the_store_was_given() {
        let dir = tempfile::tempdir().unwrap();
        let (store, ledger, journal) = open(dir.path());
        let through = AtomicU64::new(0);
        ledger.adjust("a", 10, None).unwrap();
        let body = serde_json::to_vec(&rec("r")).unwrap();
        let seq = journal.append(body.clone(), |seq, _| seq).unwrap();
        assert_eq!(
            checkpoint(&journal, &store, &ledger, &through)
                .await
                .unwrap(),
            0
        );
        assert_eq!(
            journal.segment_count(),
            2,
            "rotated, kept: the record is not in the store"
        );
        store
            .write_usage_batch(&[rec("r")], &[], Some(seq))
            .unwrap();
        through.store(seq, Ordering::Release);
        assert_eq!(
            checkpoint(&journal, &store, &ledger, &through)
                .await
                .unwrap(),
            1
        );
        assert_eq!(journal.segment_count(), 1);
    }
}
