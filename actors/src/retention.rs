//! Usage retention (`usage.retention`): a thread of its own removes the usage batches older than the
//! retention, a bounded chunk at a time, so the store stops growing with every request.
//!
//! Why a thread and chunks: sled's calls block, and one sweep after a long downtime may cover
//! millions of records; chunks of `CHUNK` values, each one sled batch, keep every write the recorder
//! and requests make from waiting long behind a sweep, and the thread keeps them off the actix and
//! tokio threads. Per-profile counters and the credit ledger are never touched: they are totals and
//! money history.

use std::time::Duration;

use prometheus::IntCounter;

use crate::metrics::ActorMetrics;
use crate::store::{now_ms, Store, StoreError};

/// Stored values looked at per sled batch.
pub const CHUNK: usize = 256;

/// A pause between two chunks of one sweep, so the recorder's writes go first.
const BETWEEN_CHUNKS: Duration = Duration::from_millis(2);

/// What retention keeps.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Records younger than this stay.
    pub keep: Duration,
    /// Batches not yet shipped to the fleet stay too (`state.backend: redis`), however old.
    pub keep_unshipped: bool,
}

impl Retention {
    /// How often a sweep runs: a tenth of the retention, between 1 s and 1 min.
    pub fn every(&self) -> Duration {
        (self.keep / 10).clamp(Duration::from_secs(1), Duration::from_secs(60))
    }
}

/// One sweep at `now`: removes every batch whose records are all older than the retention (and that
/// is shipped, when it must be), chunk by chunk, adding each chunk's records to `expired` as it
/// goes. Returns how many records went.
pub fn sweep(
    store: &Store,
    retention: &Retention,
    now: u64,
    expired: &IntCounter,
) -> Result<u64, StoreError> {
    let cutoff = now.saturating_sub(u64::try_from(retention.keep.as_millis()).unwrap_or(u64::MAX));
    // Read once per sweep: shipping only moves forward, so a stale cursor keeps more, never less.
    let keep_from_seq = if retention.keep_unshipped {
        Some(store.usage_shipped()?.map_or(0, |(_, next)| next))
    } else {
        None
    };
    let mut resume: Option<Vec<u8>> = None;
    let mut records = 0;
    loop {
        let step = store.expire_usage(cutoff, keep_from_seq, resume.as_deref(), CHUNK)?;
        records += step.records;
        expired.inc_by(step.records);
        match step.resume {
            Some(next) => resume = Some(next),
            None => return Ok(records),
        }
        std::thread::sleep(BETWEEN_CHUNKS);
    }
}

/// Starts the retention thread: a sweep at once, then every `retention.every()`, for as long as the
/// process runs. Each expired record is counted in `switchyard_usage_expired_records_total`.
pub fn spawn(
    store: Store,
    retention: Retention,
    metrics: ActorMetrics,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("usage-retention".into())
        .spawn(move || loop {
            match sweep(&store, &retention, now_ms(), &metrics.usage_expired) {
                Ok(0) => {}
                Ok(n) => tracing::debug!(records = n, "usage retention removed expired records"),
                Err(e) => tracing::error!(error = %e, "usage retention sweep failed"),
            }
            std::thread::sleep(retention.every());
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::rec;

    #[test]
    fn a_sweep_goes_through_every_chunk_and_counts_what_it_removed() {
        let s = Store::temporary().unwrap();
        let old = CHUNK as u64 * 2 + 3;
        for i in 0..old {
            s.append_usage(&rec(1_000 + i, "ok")).unwrap();
        }
        s.append_usage(&rec(100_000, "ok")).unwrap();
        let counter = IntCounter::new("t", "t").unwrap();
        let retention = Retention {
            keep: Duration::from_secs(10),
            keep_unshipped: false,
        };
        assert_eq!(sweep(&s, &retention, 100_500, &counter).unwrap(), old);
        assert_eq!(counter.get(), old);
        assert_eq!(s.all_usage().unwrap(), vec![rec(100_000, "ok")]);
    }

    #[test]
    fn with_the_fleet_a_sweep_keeps_what_was_not_shipped() {
        let s = Store::temporary().unwrap();
        for ts in [1_000, 2_000, 3_000] {
            s.append_usage(&rec(ts, "ok")).unwrap();
        }
        let counter = IntCounter::new("t", "t").unwrap();
        let retention = Retention {
            keep: Duration::from_secs(1),
            keep_unshipped: true,
        };
        assert_eq!(
            sweep(&s, &retention, 60_000, &counter).unwrap(),
            0,
            "none shipped"
        );
        let third = s.usage_batches_since(0, 0).unwrap()[2].1;
        s.set_usage_shipped(2_000, third).unwrap();
        assert_eq!(sweep(&s, &retention, 60_000, &counter).unwrap(), 2);
        assert_eq!(s.all_usage().unwrap(), vec![rec(3_000, "ok")]);
    }

    #[test]
    fn sweeps_run_a_tenth_of_the_retention_apart_within_bounds() {
        let every = |secs| {
            Retention {
                keep: Duration::from_secs(secs),
                keep_unshipped: false,
            }
            .every()
        };
        assert_eq!(every(5), Duration::from_secs(1));
        assert_eq!(every(100), Duration::from_secs(10));
        assert_eq!(every(90 * 86_400), Duration::from_secs(60));
    }
}
