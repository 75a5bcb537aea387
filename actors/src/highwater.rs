//! The store's high-water mark: how many usage records, ledger transactions and keys are known to be on
//! disk, and where sled's id counter stood, kept in a small file beside sled (`highwater.json`). All of
//! them only ever grow, so a store that comes back from damage or a stale backup with fewer records
//! (or a lower counter) is caught at start, instead of serving with spent credit restored and keys gone.
//!
//! The mark is independent of sled on purpose: sled opens a damaged log by keeping what it can read and
//! says nothing about what it dropped. It is written atomically (temporary file, fsync, rename, fsync of
//! the directory) and only with counts a completed flush covers, so it never claims more than is on
//! disk; it may lag behind (a kill -9 between a flush and the next mark), which is harmless.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// The mark's file name inside the data directory.
pub const FILE: &str = "highwater.json";

/// The mark's format version.
const VERSION: u32 = 1;

/// What the mark compares. Every field only ever grows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub usage_records: u64,
    pub ledger_transactions: u64,
    pub keys: u64,
    /// sled's `generate_id` counter, monotonic across restarts and crashes by sled's guarantee: an
    /// emptied or replaced `db` starts it again from zero.
    pub id_counter: u64,
}

impl Counts {
    /// Each count that is below `mark`'s, as `name held < marked`; empty when none is.
    pub fn behind(&self, mark: &Counts) -> Vec<String> {
        let pairs = [
            ("usage records", self.usage_records, mark.usage_records),
            (
                "ledger transactions",
                self.ledger_transactions,
                mark.ledger_transactions,
            ),
            ("keys", self.keys, mark.keys),
            ("id counter", self.id_counter, mark.id_counter),
        ];
        pairs
            .iter()
            .filter(|(_, held, marked)| held < marked)
            .map(|(name, held, marked)| format!("{name} {held} < {marked}"))
            .collect()
    }

    /// Whether some record count is above `other`'s (the id counter aside: it moves without writes).
    fn adds_to(&self, other: &Counts) -> bool {
        self.usage_records > other.usage_records
            || self.ledger_transactions > other.ledger_transactions
            || self.keys > other.keys
    }
}

/// The file's contents.
#[derive(Debug, Serialize, Deserialize)]
struct MarkFile {
    version: u32,
    /// When it was written, for operators reading it.
    written_ms: u64,
    #[serde(flatten)]
    counts: Counts,
}

/// Why the mark refused the store, or could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum HighWaterError {
    #[error(
        "it holds less than its high-water mark {FILE} says was written ({}), so data was lost; \
         restore it from a backup, or accept what it holds with \
         `switchyard store accept-current --data-dir {}`",
        behind.join(", "),
        dir.display()
    )]
    Behind { dir: PathBuf, behind: Vec<String> },
    #[error(
        "its high-water mark {} cannot be read ({reason}); if the store is intact, rewrite the mark \
         with `switchyard store accept-current --data-dir {}`",
        path.display(),
        dir.display()
    )]
    Unreadable {
        path: PathBuf,
        dir: PathBuf,
        reason: String,
    },
    #[error("cannot write the high-water mark {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Reads the mark in `dir`: `None` when there is none (a fresh data directory, or a store from before
/// marks existed).
pub fn read(dir: &Path) -> Result<Option<Counts>, HighWaterError> {
    let path = dir.join(FILE);
    let unreadable = |reason: String| HighWaterError::Unreadable {
        path: path.clone(),
        dir: dir.to_owned(),
        reason,
    };
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(unreadable(e.to_string())),
    };
    let file: MarkFile = serde_json::from_slice(&text).map_err(|e| unreadable(e.to_string()))?;
    if file.version != VERSION {
        return Err(unreadable(format!("unknown version {}", file.version)));
    }
    Ok(Some(file.counts))
}

/// Replaces the mark in `dir` with `counts`, atomically: a crash leaves the old mark or the new one.
pub fn write(dir: &Path, counts: &Counts) -> Result<(), HighWaterError> {
    let path = dir.join(FILE);
    let failed = |source| HighWaterError::Write {
        path: path.clone(),
        source,
    };
    let file = MarkFile {
        version: VERSION,
        written_ms: crate::clock::now_ms(),
        counts: *counts,
    };
    let mut text = serde_json::to_vec_pretty(&file).map_err(|e| failed(e.into()))?;
    text.push(b'\n');
    let tmp = dir.join(format!("{FILE}.tmp"));
    let mut out = std::fs::File::create(&tmp).map_err(failed)?;
    out.write_all(&text).map_err(failed)?;
    out.sync_all().map_err(failed)?;
    drop(out);
    std::fs::rename(&tmp, &path).map_err(failed)?;
    // The rename is durable once the directory is.
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(failed)
}

/// Compares what the store holds now with the mark in `dir`: an error when it holds less. Otherwise
/// returns whether there was a mark at all.
pub fn check(dir: &Path, held: &Counts) -> Result<bool, HighWaterError> {
    let Some(mark) = read(dir)? else {
        return Ok(false);
    };
    let behind = held.behind(&mark);
    if behind.is_empty() {
        Ok(true)
    } else {
        Err(HighWaterError::Behind {
            dir: dir.to_owned(),
            behind,
        })
    }
}

/// The live side of the mark, shared by every writer of the store: what was written since start on top
/// of what the store held then, and where the mark goes once `arm`ed (temporary stores never are).
#[derive(Debug, Default)]
pub struct HighWater {
    /// Atomics: bumped by writers on any worker, read once per flush.
    usage_records: AtomicU64,
    ledger_transactions: AtomicU64,
    keys: AtomicU64,
    /// The highest counts a completed flush is known to cover. A mutex, so the three move together:
    /// taken once per flush, never held across one.
    covered: Mutex<Counts>,
    /// The data directory and the counts last written to the mark. A mutex: writes of the mark are
    /// rare (about once a second) and must not interleave.
    armed: Mutex<Option<(PathBuf, Counts)>>,
}

impl HighWater {
    pub fn add_usage_records(&self, n: u64) {
        self.usage_records.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_ledger_transactions(&self, n: u64) {
        self.ledger_transactions.fetch_add(n, Ordering::Relaxed);
    }

    pub fn add_keys(&self, n: u64) {
        self.keys.fetch_add(n, Ordering::Relaxed);
    }

    /// What was written so far (the id counter left at zero). Taken just before a flush starts, these
    /// counts are on disk once the flush completes: every counted write happened before it began.
    pub fn written(&self) -> Counts {
        Counts {
            usage_records: self.usage_records.load(Ordering::Relaxed),
            ledger_transactions: self.ledger_transactions.load(Ordering::Relaxed),
            keys: self.keys.load(Ordering::Relaxed),
            id_counter: 0,
        }
    }

    /// Notes that a flush which started after `written()` returned `counts` has completed.
    pub fn flushed(&self, counts: Counts) {
        let mut covered = self.covered.lock();
        covered.usage_records = covered.usage_records.max(counts.usage_records);
        covered.ledger_transactions = covered.ledger_transactions.max(counts.ledger_transactions);
        covered.keys = covered.keys.max(counts.keys);
    }

    /// The highest counts a completed flush covers: what the next mark may say.
    pub fn covered(&self) -> Counts {
        *self.covered.lock()
    }

    /// Starts from `held`, what the store holds now (checked against the mark), and writes the mark
    /// to `dir` from then on.
    pub fn arm(&self, dir: &Path, held: Counts) -> Result<(), HighWaterError> {
        self.usage_records
            .store(held.usage_records, Ordering::Relaxed);
        self.ledger_transactions
            .store(held.ledger_transactions, Ordering::Relaxed);
        self.keys.store(held.keys, Ordering::Relaxed);
        *self.covered.lock() = Counts {
            id_counter: 0,
            ..held
        };
        write(dir, &held)?;
        *self.armed.lock() = Some((dir.to_owned(), held));
        Ok(())
    }

    /// Whether `counts` would add anything to the mark (false when not armed).
    pub fn is_ahead(&self, counts: &Counts) -> bool {
        self.armed
            .lock()
            .as_ref()
            .is_some_and(|(_, marked)| counts.adds_to(marked))
    }

    /// Writes `counts` (which a completed flush must cover, see `covered`) as the mark when they add to it, with
    /// `id_counter` (a value the store's id generator has already handed out). Returns whether it wrote.
    pub fn mark(&self, mut counts: Counts, id_counter: u64) -> Result<bool, HighWaterError> {
        let mut armed = self.armed.lock();
        let Some((dir, marked)) = armed.as_mut() else {
            return Ok(false);
        };
        if !counts.adds_to(marked) {
            return Ok(false);
        }
        counts.id_counter = id_counter.max(marked.id_counter);
        write(dir, &counts)?;
        *marked = counts;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(usage: u64, tx: u64, keys: u64, id: u64) -> Counts {
        Counts {
            usage_records: usage,
            ledger_transactions: tx,
            keys,
            id_counter: id,
        }
    }

    #[test]
    fn a_store_behind_its_mark_is_refused_with_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!check(dir.path(), &Counts::default()).unwrap(), "no mark");
        write(dir.path(), &counts(40, 12, 3, 900)).unwrap();
        assert!(check(dir.path(), &counts(40, 12, 3, 900)).unwrap());
        assert!(check(dir.path(), &counts(41, 12, 5, 2_000_000)).unwrap());
        let err = check(dir.path(), &counts(13, 12, 0, 2_000_000)).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("usage records 13 < 40") && text.contains("keys 0 < 3"),
            "{text}"
        );
        assert!(!text.contains("ledger"), "{text}");
        assert!(
            text.contains("switchyard store accept-current --data-dir"),
            "{text}"
        );
        assert!(!text.contains('\n'));
        let err = check(dir.path(), &counts(40, 12, 3, 0)).unwrap_err();
        assert!(err.to_string().contains("id counter 0 < 900"), "{err}");
    }

    #[test]
    fn a_damaged_mark_is_refused_too() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), b"{\"version\":1,\"usage_rec").unwrap();
        let err = check(dir.path(), &Counts::default()).unwrap_err();
        assert!(matches!(err, HighWaterError::Unreadable { .. }), "{err}");
        assert!(err.to_string().contains("accept-current"), "{err}");
    }

    #[test]
    fn marks_only_grow_and_only_once_armed() {
        let dir = tempfile::tempdir().unwrap();
        let hw = HighWater::default();
        hw.add_usage_records(5);
        assert!(!hw.mark(hw.written(), 7).unwrap(), "not armed");
        assert_eq!(read(dir.path()).unwrap(), None);

        hw.arm(dir.path(), counts(10, 2, 1, 100)).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(counts(10, 2, 1, 100)));
        let before = hw.written();
        assert!(!hw.is_ahead(&before));
        hw.add_usage_records(3);
        hw.add_ledger_transactions(2);
        hw.add_keys(1);
        let after = hw.written();
        assert!(hw.is_ahead(&after));
        assert_eq!(hw.covered(), counts(10, 2, 1, 0), "no flush yet");
        hw.flushed(after);
        hw.flushed(before);
        assert_eq!(hw.covered(), after);
        assert!(hw.mark(after, 150).unwrap());
        assert_eq!(read(dir.path()).unwrap(), Some(counts(13, 4, 2, 150)));
        // An older snapshot (a flush that finished late) never lowers it.
        assert!(!hw.mark(before, 999).unwrap());
        assert_eq!(read(dir.path()).unwrap(), Some(counts(13, 4, 2, 150)));
        assert!(!dir.path().join(format!("{FILE}.tmp")).exists());
    }
}
