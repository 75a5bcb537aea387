//! The journal: append-only files in the data directory (`journal/<segment>.log`) that make usage
//! records and credit movements survive a kill -9 with one write(2), before sled has them on disk.
//!
//! Why: a completed write(2) is in the kernel, which outlives the process, so a kill -9 loses nothing
//! written; an fsync (what a sled flush costs on every response) is only needed against power loss.
//! The store gets every entry as before, in batches; a checkpoint (about once a second) flushes sled
//! and deletes the segments that flush covers, so the journal stays small. At start, entries that the
//! store lacks are replayed into it before anything reads it (`limits::recover`).
//!
//! One line per entry: a tag (`U` usage record, `T` ledger transaction), the entry's sequence number
//! (unique and increasing across restarts within its kind: the ledger's in-memory counter for
//! transactions, `recovery::usage_sequence` for usage records) and the entry's JSON. Replay skips lines
//! that do not parse (a torn tail after a power loss), so the format needs no framing beyond `\n`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

/// The journal's folder inside the data directory.
pub const DIR: &str = "journal";

/// What an entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A usage record (the store's `UsageRecord`).
    Usage,
    /// A credit ledger transaction.
    Ledger,
}

impl Kind {
    fn tag(self) -> u8 {
        match self {
            Kind::Usage => b'U',
            Kind::Ledger => b'T',
        }
    }
}

/// One entry read back for replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    pub seq: u64,
    /// The entry's JSON.
    pub body: Vec<u8>,
}

/// Why the journal could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("journal {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A segment no longer written to, kept until a sled flush covers its entries.
#[derive(Debug)]
struct Closed {
    path: PathBuf,
    max_usage: u64,
    max_ledger: u64,
}

/// The segment being written, and what waits for the next write.
#[derive(Debug)]
struct Inner {
    file: File,
    path: PathBuf,
    number: u64,
    bytes: u64,
    /// The highest sequence numbers written to this segment, per kind.
    max_usage: u64,
    max_ledger: u64,
    closed: Vec<Closed>,
    /// What the next write(2) sends, kept for its capacity.
    out: Vec<u8>,
}

/// Ledger lines staged by movements, written ahead of the next usage line (or by `commit`).
#[derive(Debug, Default)]
struct Staged {
    lines: Vec<u8>,
    max_ledger: u64,
}

/// The append side. An append is one write(2) of a few hundred bytes, and holding `inner` across it
/// is what keeps the file's order equal to the sequence numbers' (and to the order in which callers
/// hand records on, see `append`). Staging takes only `staged`, never held across a system call:
/// the ledger stages under its accounts lock, and when staging waited for `inner`, every metered call
/// waited behind whichever write(2) was under way (and the others behind it, for the accounts lock).
/// Lock order: `inner`, then `staged`.
pub struct Journal {
    dir: PathBuf,
    /// Usage sequence numbers: `recovery::usage_sequence` in the server, so they grow across restarts.
    ids: Box<dyn Fn() -> Option<u64> + Send + Sync>,
    inner: Mutex<Inner>,
    staged: Mutex<Staged>,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The segment files in `dir` (the journal's folder), oldest first, with their numbers.
fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, JournalError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_error(dir)(e)),
    };
    for entry in entries {
        let path = entry.map_err(io_error(dir))?.path();
        let number = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(number) = number {
            out.push((number, path));
        }
    }
    out.sort();
    Ok(out)
}

/// One line back into an entry; `None` for a line that does not parse (torn or foreign).
fn parse_line(line: &[u8]) -> Option<Entry> {
    let (&tag, rest) = line.split_first()?;
    let kind = match tag {
        b'U' => Kind::Usage,
        b'T' => Kind::Ledger,
        _ => return None,
    };
    let rest = rest.strip_prefix(b" ")?;
    let space = rest.iter().position(|b| *b == b' ')?;
    let seq = std::str::from_utf8(&rest[..space]).ok()?.parse().ok()?;
    let body = &rest[space + 1..];
    // A torn line may still end in a complete number; its JSON will not be.
    serde_json::from_slice::<serde::de::IgnoredAny>(body).ok()?;
    Some(Entry {
        kind,
        seq,
        body: body.to_vec(),
    })
}

fn push_line(out: &mut Vec<u8>, kind: Kind, seq: u64, body: &[u8]) {
    out.push(kind.tag());
    out.push(b' ');
    out.extend_from_slice(itoa::Buffer::new().format(seq).as_bytes());
    out.push(b' ');
    out.extend_from_slice(body);
    out.push(b'\n');
}

/// Every entry in the journal under `data_dir`, in the order written. Lines that do not parse are
/// skipped and counted in the second value.
pub fn read(data_dir: &Path) -> Result<(Vec<Entry>, usize), JournalError> {
    let mut entries = Vec::new();
    let mut skipped = 0;
    for (_, path) in segments(&data_dir.join(DIR))? {
        let text = std::fs::read(&path).map_err(io_error(&path))?;
        for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            match parse_line(line) {
                Some(e) => entries.push(e),
                None => skipped += 1,
            }
        }
    }
    Ok((entries, skipped))
}

/// Deletes every segment under `data_dir` (once what they hold is durable in the store), and the
/// journal's folder when nothing else is in it: a stopped proxy leaves only the store.
pub fn remove_all(data_dir: &Path) -> Result<(), JournalError> {
    let dir = data_dir.join(DIR);
    for (_, path) in segments(&dir)? {
        std::fs::remove_file(&path).map_err(io_error(&path))?;
    }
    // Fails harmlessly when absent or not empty.
    let _ = std::fs::remove_dir(&dir);
    Ok(())
}

fn open_segment(dir: &Path, number: u64) -> Result<(File, PathBuf), JournalError> {
    let path = dir.join(format!("{number:012}.log"));
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io_error(&path))?;
    Ok((file, path))
}

impl Journal {
    /// Starts a new segment under `data_dir`, after any left there (which the caller has replayed;
    /// they are deleted by the first `forget`, as covered). `ids` draws the sequence numbers.
    pub fn create(
        data_dir: &Path,
        ids: impl Fn() -> Option<u64> + Send + Sync + 'static,
    ) -> Result<Journal, JournalError> {
        let dir = data_dir.join(DIR);
        std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        let old = segments(&dir)?;
        let number = old.last().map_or(1, |(n, _)| n + 1);
        let (file, path) = open_segment(&dir, number)?;
        let closed = old
            .into_iter()
            .map(|(_, path)| Closed {
                path,
                max_usage: 0,
                max_ledger: 0,
            })
            .collect();
        Ok(Journal {
            dir,
            ids: Box::new(ids),
            inner: Mutex::new(Inner {
                file,
                path,
                number,
                bytes: 0,
                max_usage: 0,
                max_ledger: 0,
                closed,
                out: Vec::new(),
            }),
            staged: Mutex::new(Staged::default()),
        })
    }

    /// Queues a ledger line for the next write (no system call): a movement is made safe by the write
    /// of the usage record that follows it, or by the next `commit`.
    pub fn stage(&self, seq: u64, body: &[u8]) {
        let mut staged = self.staged.lock();
        push_line(&mut staged.lines, Kind::Ledger, seq, body);
        staged.max_ledger = staged.max_ledger.max(seq);
    }

    /// Moves what is staged into `inner.out`, to be written by the holder of `inner`, and returns
    /// its highest sequence: a movement staged before an `append` started is in that append's write
    /// or in one that ended before the append took `inner`, so when the append returns it is in the
    /// kernel.
    fn take_staged(&self, inner: &mut Inner) -> u64 {
        let mut staged = self.staged.lock();
        inner.out.extend_from_slice(&staged.lines);
        staged.lines.clear();
        std::mem::take(&mut staged.max_ledger)
    }

    /// Puts back the first `len` bytes of `inner.out` (staged lines a failed write took), ahead of
    /// what was staged since.
    fn unstage(&self, inner: &mut Inner, len: usize, max_ledger: u64) {
        let mut staged = self.staged.lock();
        inner.out.truncate(len);
        inner.out.extend_from_slice(&staged.lines);
        std::mem::swap(&mut staged.lines, &mut inner.out);
        inner.out.clear();
        staged.max_ledger = staged.max_ledger.max(max_ledger);
    }

    /// Writes the staged lines and one usage line (`body`) with the next sequence number, in one
    /// write(2), then runs `then(seq, body)` still under the lock: a caller that hands the record on
    /// there hands records on in sequence order (and its JSON with it, not a copy). When this returns
    /// `Ok`, a kill -9 loses none of them.
    pub fn append<T>(
        &self,
        body: Vec<u8>,
        then: impl FnOnce(u64, Vec<u8>) -> T,
    ) -> Result<T, JournalError> {
        let mut inner = self.inner.lock();
        let Some(seq) = (self.ids)() else {
            return Err(JournalError::Io {
                path: inner.path.clone(),
                source: std::io::Error::other("no sequence number"),
            });
        };
        let inner = &mut *inner;
        let max_ledger = self.take_staged(inner);
        let staged_len = inner.out.len();
        push_line(&mut inner.out, Kind::Usage, seq, &body);
        if let Err(e) = inner.write(max_ledger) {
            // The staged lines stay queued; replay skips a partial line and repeats of a sequence.
            self.unstage(inner, staged_len, max_ledger);
            return Err(e);
        }
        inner.max_usage = inner.max_usage.max(seq);
        Ok(then(seq, body))
    }

    /// Writes what is staged, if anything.
    pub fn commit(&self) -> Result<(), JournalError> {
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        let max_ledger = self.take_staged(inner);
        if inner.out.is_empty() {
            return Ok(());
        }
        let len = inner.out.len();
        let written = inner.write(max_ledger);
        if written.is_err() {
            self.unstage(inner, len, max_ledger);
        }
        written
    }

    /// Closes the current segment when it holds anything and starts the next: what is closed can be
    /// deleted once a flush covers it (`forget`).
    pub fn rotate(&self) -> Result<(), JournalError> {
        let mut inner = self.inner.lock();
        if inner.bytes == 0 {
            return Ok(());
        }
        let number = inner.number + 1;
        let (file, path) = open_segment(&self.dir, number)?;
        let old_path = std::mem::replace(&mut inner.path, path);
        inner.file = file;
        inner.number = number;
        inner.bytes = 0;
        let closed = Closed {
            path: old_path,
            max_usage: std::mem::take(&mut inner.max_usage),
            max_ledger: std::mem::take(&mut inner.max_ledger),
        };
        inner.closed.push(closed);
        Ok(())
    }

    /// Deletes the closed segments whose usage records are all at or below `usage_through` and whose
    /// transactions are at or below `ledger_through`: the caller read both (what the store has been
    /// given) before a flush that has since completed. Returns how many were deleted.
    pub fn forget(&self, usage_through: u64, ledger_through: u64) -> Result<usize, JournalError> {
        let covered: Vec<Closed> = {
            let mut inner = self.inner.lock();
            let (done, kept) = std::mem::take(&mut inner.closed)
                .into_iter()
                .partition(|c| c.max_usage <= usage_through && c.max_ledger <= ledger_through);
            inner.closed = kept;
            done
        };
        for c in &covered {
            match std::fs::remove_file(&c.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io_error(&c.path)(e))
                }
                _ => {}
            }
        }
        Ok(covered.len())
    }

    /// How many segments the journal has now, the one being written included (for tests and metrics).
    pub fn segment_count(&self) -> usize {
        self.inner.lock().closed.len() + 1
    }
}

impl Inner {
    /// Writes `out` (emptied when written), which holds ledger lines up to `max_ledger`.
    fn write(&mut self, max_ledger: u64) -> Result<(), JournalError> {
        self.file
            .write_all(&self.out)
            .map_err(io_error(&self.path))?;
        self.bytes += self.out.len() as u64;
        self.out.clear();
        self.max_ledger = self.max_ledger.max(max_ledger);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn counter() -> impl Fn() -> Option<u64> + Send + Sync + 'static {
        counter_from(100)
    }

    fn counter_from(start: u64) -> impl Fn() -> Option<u64> + Send + Sync + 'static {
        let n = AtomicU64::new(start);
        move || Some(n.fetch_add(1, Ordering::Relaxed))
    }

    #[test]
    fn entries_come_back_in_order_with_staged_lines_ahead_of_their_record() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::create(dir.path(), counter()).unwrap();
        j.stage(7, br#"{"id":"tx_7"}"#);
        let handed = j.append(br#"{"r":1}"#.to_vec(), |seq, _| seq).unwrap();
        assert_eq!(handed, 100);
        j.append(br#"{"r":2}"#.to_vec(), |_, _| ()).unwrap();
        j.stage(9, br#"{"id":"tx_9"}"#);
        let (entries, skipped) = read(dir.path()).unwrap();
        assert_eq!(skipped, 0);
        let got: Vec<(Kind, u64)> = entries.iter().map(|e| (e.kind, e.seq)).collect();
        assert_eq!(
            got,
            vec![(Kind::Ledger, 7), (Kind::Usage, 100), (Kind::Usage, 101)],
            "staged but not committed: not on file"
        );
        assert_eq!(entries[1].body, br#"{"r":1}"#);
        j.commit().unwrap();
        let (entries, _) = read(dir.path()).unwrap();
        assert_eq!(
            entries.last().map(|e| (e.kind, e.seq)),
            Some((Kind::Ledger, 9))
        );
    }

    #[test]
    fn a_torn_or_foreign_line_is_skipped_and_the_rest_read() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::create(dir.path(), counter()).unwrap();
        j.append(br#"{"r":1}"#.to_vec(), |_, _| ()).unwrap();
        drop(j);
        let seg = segments(&dir.path().join(DIR)).unwrap()[0].1.clone();
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(b"garbage\nU 5 {\"r\":\nU 12").unwrap();
        let (entries, skipped) = read(dir.path()).unwrap();
        assert_eq!((entries.len(), skipped), (1, 3));
    }

    #[test]
    fn a_closed_segment_goes_only_once_both_kinds_are_covered() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::create(dir.path(), counter()).unwrap();
        j.rotate().unwrap();
        assert_eq!(j.segment_count(), 1, "an empty segment is not rotated");
        j.stage(50, b"{}");
        j.append(b"{}".to_vec(), |_, _| ()).unwrap(); // usage 100, ledger 50
        j.rotate().unwrap();
        j.append(b"{}".to_vec(), |_, _| ()).unwrap(); // usage 101, in the new segment
        assert_eq!(j.segment_count(), 2);
        assert_eq!(j.forget(99, 50).unwrap(), 0, "usage not covered");
        assert_eq!(j.forget(100, 49).unwrap(), 0, "ledger not covered");
        assert_eq!(j.forget(100, 50).unwrap(), 1);
        let (entries, _) = read(dir.path()).unwrap();
        assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![101]);
    }

    #[test]
    fn segments_left_by_a_crash_are_kept_until_forgotten_and_numbered_after() {
        let dir = tempfile::tempdir().unwrap();
        {
            let j = Journal::create(dir.path(), counter()).unwrap();
            j.append(b"{}".to_vec(), |_, _| ()).unwrap();
        }
        let j = Journal::create(dir.path(), counter_from(101)).unwrap();
        j.append(b"{}".to_vec(), |_, _| ()).unwrap();
        assert_eq!(read(dir.path()).unwrap().0.len(), 2);
        assert_eq!(
            j.forget(0, 0).unwrap(),
            1,
            "the old segment, already replayed"
        );
        assert_eq!(read(dir.path()).unwrap().0[0].seq, 101);
        remove_all(dir.path()).unwrap();
        assert_eq!(read(dir.path()).unwrap().0.len(), 0);
    }

    #[test]
    fn no_sequence_number_is_an_error_and_keeps_the_staged_lines() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::create(dir.path(), || None).unwrap();
        j.stage(3, b"{}");
        assert!(j.append(b"{}".to_vec(), |_, _| ()).is_err());
        j.commit().unwrap();
        let (entries, _) = read(dir.path()).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].kind, Kind::Ledger);
    }

    #[test]
    fn staging_does_not_wait_for_a_write_under_way() {
        let dir = tempfile::tempdir().unwrap();
        let j = std::sync::Arc::new(Journal::create(dir.path(), counter()).unwrap());
        // What an append holds across its write(2).
        let writing = j.inner.lock();
        let (done, staged) = std::sync::mpsc::channel();
        let stager = {
            let j = j.clone();
            std::thread::spawn(move || {
                j.stage(5, br#"{"id":"tx_5"}"#);
                done.send(()).unwrap();
            })
        };
        assert!(
            staged
                .recv_timeout(std::time::Duration::from_secs(10))
                .is_ok(),
            "a movement waited for the journal's write"
        );
        drop(writing);
        stager.join().unwrap();
        j.append(br#"{"r":1}"#.to_vec(), |_, _| ()).unwrap();
        let got: Vec<(Kind, u64)> = read(dir.path())
            .unwrap()
            .0
            .iter()
            .map(|e| (e.kind, e.seq))
            .collect();
        assert_eq!(got, [(Kind::Ledger, 5), (Kind::Usage, 100)]);
    }

    #[test]
    fn a_failed_write_keeps_its_staged_lines_ahead_of_later_ones() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::create(dir.path(), counter()).unwrap();
        j.stage(1, br#"{"id":"tx_1"}"#);
        j.stage(2, br#"{"id":"tx_2"}"#);
        // A segment that refuses writes (opened read-only): the append fails.
        let path = j.inner.lock().path.clone();
        let writable = std::mem::replace(&mut j.inner.lock().file, File::open(&path).unwrap());
        assert!(j.append(br#"{"r":1}"#.to_vec(), |_, _| ()).is_err());
        assert!(j.commit().is_err());
        j.stage(3, br#"{"id":"tx_3"}"#);
        j.inner.lock().file = writable;
        j.append(br#"{"r":2}"#.to_vec(), |_, _| ()).unwrap();
        let got: Vec<(Kind, u64)> = read(dir.path())
            .unwrap()
            .0
            .iter()
            .map(|e| (e.kind, e.seq))
            .collect();
        assert_eq!(
            got,
            [
                (Kind::Ledger, 1),
                (Kind::Ledger, 2),
                (Kind::Ledger, 3),
                (Kind::Usage, 101)
            ]
        );
        // The segment's highest transaction counts what was written (for `forget`).
        assert_eq!(j.inner.lock().max_ledger, 3);
    }
}
