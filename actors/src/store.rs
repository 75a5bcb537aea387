//! The sled store behind typed methods: usage records, per-profile health and counters.
//!
//! Keys carry a version prefix (`v1/...`) so the layout can change without ambiguity.
//!
//! Usage records are written in batches, one sled value per batch (`v2/usage/`, JSON Lines): a sled
//! insert costs far more than serialising a record, and the recorder sees records in bursts. Records of
//! one batch lie within `USAGE_BATCH_SPAN_MS` of the batch's key, so a time range is read from that much
//! before its start. Stores written before batching keep their one-record values under `v1/usage/`.
//!
//! A batch's JSON Lines of 2 kB or more are stored lz4-compressed behind a small header
//! (`encode_batch`): sled keeps thousands of recently written values resident whatever its cache
//! size, so under load their size is the proxy's memory. Shorter batches, and all those of stores from
//! before 2026-12-03, are plain: JSON starts with `{`, the header with `BATCH_LZ4`.
//!
//! Every store carries the live side of its high-water mark (`highwater.rs`): writers of records that
//! only grow count them there, and the usage recorder writes the mark after its flushes.
//!
//! Retention (`expire_usage`) removes whole batches whose records are all older than a cutoff, and
//! counts what it removed in the same sled batch (`EXPIRED_KEY`): the mark counts usage records ever
//! written, held or expired, so a store swept by retention is not taken for one that lost data.
// Raw sled is allowed here: this is the store (see clippy.toml).
#![allow(clippy::disallowed_types)]

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::health::HealthView;
use crate::highwater::{self, Counts, HighWater};

/// A store failure; the message never contains record contents.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt record under {key}: {source}")]
    Corrupt {
        key: String,
        source: serde_json::Error,
    },
    #[error("corrupt usage batch under {key}: {reason}")]
    CorruptBatch { key: String, reason: &'static str },
    #[error("encode: {0}")]
    Encode(#[from] serde_json::Error),
    #[error(transparent)]
    HighWater(#[from] highwater::HighWaterError),
}

/// One attempt at one upstream, as recorded for usage reporting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageRecord {
    /// Milliseconds since the Unix epoch when the attempt finished.
    pub ts_ms: u64,
    pub request_id: String,
    pub profile: String,
    /// The model the client asked for.
    pub model: String,
    pub account: Option<String>,
    pub key_id: Option<String>,
    /// `ok`, `client_error`, `cancelled`, or a failure class (`rate_limited`, `server`, ...).
    pub outcome: String,
    /// The upstream HTTP status, when there was one.
    pub status: Option<u16>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub latency_ms: u64,
    /// 1 for the first profile tried.
    pub attempt: u32,
    pub stream: bool,
    /// The token counts are Switchyard's estimate (the upstream reported no usage, or the stream was
    /// cut or cancelled before it did): see the README's "Credits". Absent in older records.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub usage_estimated: bool,
    /// Of `prompt_tokens`: read from the provider's cache. The four detail counts are absent (0) in
    /// older records and in records of upstreams that do not report them.
    #[serde(default)]
    pub cached_tokens: u64,
    /// Of `prompt_tokens`: written to the cache (5-minute lifetime).
    #[serde(default)]
    pub cache_write_tokens: u64,
    /// Of `prompt_tokens`: written to the cache (1-hour lifetime).
    #[serde(default)]
    pub cache_write_1h_tokens: u64,
    /// Of `completion_tokens`: reasoning.
    #[serde(default)]
    pub reasoning_tokens: u64,
}

impl UsageRecord {
    /// Whether this attempt counts as a failure of its profile.
    pub fn is_failure(&self) -> bool {
        !matches!(self.outcome.as_str(), "ok" | "client_error" | "cancelled")
    }
}

/// Attempts sent to a profile and how many failed; survives restarts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileCounters {
    pub requests: u64,
    pub failures: u64,
}

/// The embedded store. Cloning is cheap (sled handles are shared).
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    usage: sled::Tree,
    profiles: sled::Tree,
    /// Shared by every clone, like the sled handles: one set of counts per open store.
    high_water: Arc<HighWater>,
    /// `usage_through`, read once at open and advanced by each batch once applied: every counters
    /// value written carries it, so the highest stored mark never goes back.
    journal_through: Arc<AtomicU64>,
    /// How many usage records retention removed (`EXPIRED_KEY`), read once at open. A mutex, not an
    /// atomic: a sweep reads, adds and writes it back with its deletions, and sweeps must not
    /// interleave (one thread sweeps; the lock makes a second caller safe too).
    expired: Arc<Mutex<u64>>,
}

/// One record per value (the layout before batching; still read).
const USAGE_PREFIX_V1: &str = "v1/usage/";
/// One batch of records per value, keyed by the batch's earliest `ts_ms`.
const USAGE_PREFIX: &str = "v2/usage/";
/// Per-profile counters, in the usage tree so that they are written atomically with the records.
const COUNTERS_PREFIX: &str = "v1/counters/";
fn counters_key(profile: &str) -> String {
    format!("{COUNTERS_PREFIX}{profile}")
}
/// The highest journal sequence whose record the usage tree holds, for a batch that carries no
/// counters (and as stores before 2026-12-02 kept it for every batch). A batch with counters carries
/// it in their values instead (`StoredCounters`): one sled insert fewer per batch.
const JOURNAL_THROUGH_KEY: &[u8] = b"v1/journal/usage_through";
/// How far usage shipping (`state.backend: redis`) has come: the key time of the newest batch shipped
/// and the sequence after the highest batch sequence shipped, 16 bytes big-endian.
const SHIPPED_KEY: &[u8] = b"v1/shipped/usage";
/// This store's name among the replicas that ship usage: a UUID, made once.
const SHIPPER_KEY: &[u8] = b"v1/shipped/replica";
/// How many usage records retention removed so far, 8 bytes big-endian; written in the batch that
/// removes them, so the records held plus this count never go down.
const EXPIRED_KEY: &[u8] = b"v1/retention/expired_records";

/// What start-up reads of a stored counters value: `journal_through` is the store's mark when the
/// value was written (absent: 0), counting the records of the batch it came with. The store's
/// `usage_through` is the highest of these and of `JOURNAL_THROUGH_KEY`. Readers of
/// `ProfileCounters` ignore the extra field.
#[derive(Deserialize)]
struct StoredCounters {
    #[serde(default)]
    journal_through: u64,
}

/// The stored value of `c` (the JSON of `ProfileCounters`, plus the mark when there is one); written
/// by hand, as it is once per batch.
fn encode_counters(c: &ProfileCounters, journal_through: u64) -> Vec<u8> {
    let mut s = format!(r#"{{"requests":{},"failures":{}"#, c.requests, c.failures);
    if journal_through > 0 {
        s.push_str(&format!(r#","journal_through":{journal_through}"#));
    }
    s.push('}');
    s.into_bytes()
}

/// The widest span of `ts_ms` within one stored batch.
pub const USAGE_BATCH_SPAN_MS: u64 = 60_000;

/// At most this many records in one stored value. With the recorder gathering 5 ms of records (over a
/// hundred at 25,000 requests/s) into one value, sled's resident memory grew with every request, and
/// `server.store_cache_size` did not bound it (`load-tests/memory.sh bare`: 104 MB after 200,000
/// requests, 181 MB after 400,000; with this cap 57 MB after either, as before the gathering).
pub const MAX_RECORDS_PER_VALUE: usize = 16;

/// The first byte of a compressed usage batch; a plain one (JSON Lines) starts with `{`.
const BATCH_LZ4: u8 = 0x01;
/// A compressed batch's header: `BATCH_LZ4`, the record count (u16) and the newest `ts_ms` (u64), little
/// endian, so that start-up counting and retention read no record. Then the JSON Lines' length (u32)
/// and their lz4 block.
const BATCH_HEADER: usize = 1 + 2 + 8 + 4;
/// Batches shorter than this are stored plain: they come when the proxy is not busy (the recorder
/// gathers a few records, not dozens), when the memory they hold is small, and compressing a few
/// hundred bytes costs more per record (lz4's table is set up per call) and saves less.
const COMPRESS_FROM: usize = 2048;
/// The longest JSON Lines a compressed batch may claim, so that a corrupt length cannot make a read
/// allocate gigabytes (16 records are a few kB).
const MAX_BATCH_LINES: usize = 16 * 1024 * 1024;

/// sled's page cache when the config sets none. sled's own default (1 GiB) lets a busy proxy's resident
/// memory grow with every record written; usage is written far more than it is read.
pub const DEFAULT_CACHE_BYTES: u64 = 8 * 1024 * 1024;

impl Store {
    /// Opens (or creates) the store in `dir` with the default cache. sled locks the directory: a second
    /// process gets an error.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        Store::open_with_cache(dir, DEFAULT_CACHE_BYTES)
    }

    /// Opens (or creates) the store in `dir`, with at most about `cache_bytes` of pages cached in memory.
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .open()?;
        Store::from_db(db)
    }

    /// A throwaway store for tests.
    pub fn temporary() -> Result<Store, StoreError> {
        let db = sled::Config::new().temporary(true).open()?;
        Store::from_db(db)
    }

    fn from_db(db: sled::Db) -> Result<Store, StoreError> {
        let usage = db.open_tree("usage")?;
        let profiles = db.open_tree("profiles")?;
        let journal_through = Arc::new(AtomicU64::new(stored_usage_through(&usage)?));
        let expired = Arc::new(Mutex::new(read_u64(&usage, EXPIRED_KEY)?));
        Ok(Store {
            db,
            usage,
            profiles,
            high_water: Arc::new(HighWater::default()),
            journal_through,
            expired,
        })
    }

    /// Another named tree of the same database, for components that keep their own records
    /// (keys, accounts, audit). Their keys should carry a version prefix too.
    pub fn open_tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        Ok(self.db.open_tree(name)?)
    }

    /// The underlying database, for multi-tree transactions.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Appends one usage record (not yet durable: see `flush`).
    pub fn append_usage(&self, record: &UsageRecord) -> Result<(), StoreError> {
        self.append_usage_batch(std::slice::from_ref(record))
    }

    /// Appends usage records (not yet durable: see `flush`), as few sled values as their times allow.
    pub fn append_usage_batch(&self, records: &[UsageRecord]) -> Result<(), StoreError> {
        self.write_usage_batch(records, &[], None)
    }

    /// Appends usage records with the counters that now count them and, when the records came through
    /// the journal, the highest journal sequence among them (`usage_through`), in one atomic sled
    /// batch: after a crash the store holds all of it or none, so the counters never disagree with
    /// the records and replay knows exactly which journal entries the store lacks.
    pub fn write_usage_batch(
        &self,
        records: &[UsageRecord],
        counters: &[(&str, ProfileCounters)],
        through: Option<u64>,
    ) -> Result<(), StoreError> {
        self.write_encoded_usage_batch(records, &[], counters, through)
    }

    /// `write_usage_batch`, where `encoded[i]`, when present, is `records[i]`'s JSON already made
    /// (the journal's line: compact, so one line), written as is instead of serialising it again.
    pub fn write_encoded_usage_batch(
        &self,
        records: &[UsageRecord],
        encoded: &[Option<Vec<u8>>],
        counters: &[(&str, ProfileCounters)],
        through: Option<u64>,
    ) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        let mut start = 0;
        while start < records.len() {
            let (min, n) = span_prefix(&records[start..]);
            let mut lines = Vec::with_capacity(n * 320);
            let mut newest = 0;
            for (i, r) in records[start..start + n].iter().enumerate() {
                match encoded.get(start + i).and_then(Option::as_deref) {
                    Some(line) => lines.extend_from_slice(line),
                    None => serde_json::to_writer(&mut lines, r)?,
                }
                lines.push(b'\n');
                newest = newest.max(r.ts_ms);
            }
            let seq = self.db.generate_id()?;
            let value = batch_value(lines, n, newest);
            batch.insert(batch_key(min, seq), value);
            start += n;
        }
        // The mark rides in the counters' values when there are any (every batch the recorder
        // writes counts its records), else in its own key: atomic with the records either way.
        let mark = self
            .journal_through
            .load(Ordering::Acquire)
            .max(through.unwrap_or(0));
        for (profile, c) in counters {
            batch.insert(counters_key(profile).into_bytes(), encode_counters(c, mark));
        }
        if let (Some(seq), true) = (through, counters.is_empty()) {
            batch.insert(JOURNAL_THROUGH_KEY, &seq.to_be_bytes()[..]);
        }
        self.usage.apply_batch(batch)?;
        self.journal_through.fetch_max(mark, Ordering::AcqRel);
        self.high_water.add_usage_records(records.len() as u64);
        Ok(())
    }

    /// The highest journal sequence whose usage record the store holds (0 when none came that way).
    pub fn usage_through(&self) -> Result<u64, StoreError> {
        Ok(self.journal_through.load(Ordering::Acquire))
    }

    /// Writes the journal's usage records that the store lacks (sequence above `usage_through`), with
    /// the counters they add to, as one batch. Returns how many were written.
    pub fn replay_usage(&self, entries: &[(u64, UsageRecord)]) -> Result<usize, StoreError> {
        let through = self.usage_through()?;
        let mut seen = std::collections::HashSet::new();
        let missing: Vec<&(u64, UsageRecord)> = entries
            .iter()
            .filter(|(seq, _)| *seq > through && seen.insert(*seq))
            .collect();
        let Some(max) = missing.iter().map(|(seq, _)| *seq).max() else {
            return Ok(0);
        };
        let mut counters: Vec<(&str, ProfileCounters)> = Vec::new();
        for (_, r) in &missing {
            let i = match counters.iter().position(|(p, _)| *p == r.profile) {
                Some(i) => i,
                None => {
                    counters.push((r.profile.as_str(), self.load_counters(&r.profile)?));
                    counters.len() - 1
                }
            };
            counters[i].1.requests += 1;
            if r.is_failure() {
                counters[i].1.failures += 1;
            }
        }
        let records: Vec<UsageRecord> = missing.iter().map(|(_, r)| r.clone()).collect();
        self.write_usage_batch(&records, &counters, Some(max))?;
        Ok(records.len())
    }

    /// How many usage records were written to the store: those it holds (every value is read, none
    /// decoded: for start-up) and those retention removed. This is what the high-water mark compares,
    /// so it must never go down.
    pub fn count_usage_records(&self) -> Result<u64, StoreError> {
        let mut n = *self.expired.lock();
        for item in self.usage.iter() {
            let (k, v) = item?;
            n += if k.starts_with(USAGE_PREFIX.as_bytes()) {
                batch_count(&k, &v)?
            } else if k.starts_with(USAGE_PREFIX_V1.as_bytes()) {
                1
            } else {
                0
            };
        }
        Ok(n)
    }

    /// How many usage records retention removed from this store, ever.
    pub fn expired_usage_records(&self) -> u64 {
        *self.expired.lock()
    }

    /// One bounded step of retention: looks at up to `limit` usage values keyed before `cutoff_ms`
    /// (both layouts), from `resume` on (`None`: the start), and removes those whose records are all
    /// older than `cutoff_ms`. A v2 batch whose sequence is `keep_from_seq` or later is kept (not yet
    /// shipped to the fleet); so is a batch with a record at or after the cutoff (it goes in a later
    /// sweep). The removals and the expired count go in one sled batch.
    pub fn expire_usage(
        &self,
        cutoff_ms: u64,
        keep_from_seq: Option<u64>,
        resume: Option<&[u8]>,
        limit: usize,
    ) -> Result<Expired, StoreError> {
        let mut out = Expired::default();
        let mut batch = sled::Batch::default();
        let mut looked = 0;
        let ranges = [
            (
                USAGE_PREFIX_V1,
                format!("{USAGE_PREFIX_V1}{cutoff_ms:016x}/"),
            ),
            (USAGE_PREFIX, format!("{USAGE_PREFIX}{cutoff_ms:016x}/")),
        ];
        'ranges: for (prefix, end) in &ranges {
            let start = match resume {
                Some(r) if r > prefix.as_bytes() => r,
                _ => prefix.as_bytes(),
            };
            if start >= end.as_bytes() {
                continue;
            }
            for item in self.usage.range(start..end.as_bytes()) {
                let (k, v) = item?;
                if looked == limit {
                    out.resume = Some(k.to_vec());
                    break 'ranges;
                }
                looked += 1;
                let records = if *prefix == USAGE_PREFIX_V1 {
                    1
                } else {
                    let unshipped = keep_from_seq
                        .is_some_and(|keep| batch_seq(&k).is_none_or(|seq| seq >= keep));
                    if unshipped || batch_newest_ts(&k, &v)? >= cutoff_ms {
                        continue;
                    }
                    batch_count(&k, &v)?
                };
                batch.remove(k);
                out.batches += 1;
                out.records += records;
            }
        }
        if out.batches == 0 {
            return Ok(out);
        }
        let mut expired = self.expired.lock();
        let total = *expired + out.records;
        batch.insert(EXPIRED_KEY, &total.to_be_bytes()[..]);
        self.usage.apply_batch(batch)?;
        *expired = total;
        Ok(out)
    }

    /// The counts of the high-water mark: written records are added by their writers.
    pub fn high_water(&self) -> &HighWater {
        &self.high_water
    }

    /// A fresh value of sled's monotonic id counter.
    pub fn next_id(&self) -> Result<u64, StoreError> {
        Ok(self.db.generate_id()?)
    }

    /// Refuses the store when it holds less than the high-water mark in `dir` says was written;
    /// otherwise starts the counts from `held` and writes the mark there from now on. Returns whether
    /// there was a mark (none in a fresh data directory, or one from before marks existed).
    pub fn arm_high_water(&self, dir: &Path, held: Counts) -> Result<bool, StoreError> {
        let had_mark = highwater::check(dir, &held)?;
        self.high_water.arm(dir, held)?;
        Ok(had_mark)
    }

    /// Writes the mark with what completed flushes cover (blocking: a small file and two fsyncs); a
    /// no-op when that adds nothing or the mark is not armed. Returns whether it wrote.
    pub fn mark_high_water(&self) -> Result<bool, StoreError> {
        let covered = self.high_water.covered();
        if !self.high_water.is_ahead(&covered) {
            return Ok(false);
        }
        let id = self.db.generate_id()?;
        Ok(self.high_water.mark(covered, id)?)
    }

    /// Usage records with `from_ms <= ts_ms < to_ms`, oldest first.
    pub fn usage_between(&self, from_ms: u64, to_ms: u64) -> Result<Vec<UsageRecord>, StoreError> {
        if from_ms >= to_ms {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        let wanted = |r: &UsageRecord| (from_ms..to_ms).contains(&r.ts_ms);
        let start = format!("{USAGE_PREFIX_V1}{from_ms:016x}/");
        let end = format!("{USAGE_PREFIX_V1}{to_ms:016x}/");
        for item in self.usage.range(start.as_bytes()..end.as_bytes()) {
            let (k, v) = item?;
            out.push(decode(&k, &v)?);
        }
        let batch_from = from_ms.saturating_sub(USAGE_BATCH_SPAN_MS);
        let start = format!("{USAGE_PREFIX}{batch_from:016x}/");
        let end = format!("{USAGE_PREFIX}{to_ms:016x}/");
        for item in self.usage.range(start.as_bytes()..end.as_bytes()) {
            let (k, v) = item?;
            for line in batch_lines(&k, &v)?
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
            {
                let r = decode(&k, line)?;
                if wanted(&r) {
                    out.push(r);
                }
            }
        }
        // Stable: records of one batch keep the order they were written in.
        out.sort_by_key(|r| r.ts_ms);
        Ok(out)
    }

    /// The usage batches (`v2/usage/`) whose key time (their earliest `ts_ms`) is at least
    /// `from_ms`, in key order, as (key time, batch sequence, records). Batches whose sequence is
    /// below `from_seq` are listed without their records (not decoded): shipping skips them.
    pub fn usage_batches_since(
        &self,
        from_ms: u64,
        from_seq: u64,
    ) -> Result<Vec<(u64, u64, Vec<UsageRecord>)>, StoreError> {
        let start = format!("{USAGE_PREFIX}{from_ms:016x}/");
        let mut out = Vec::new();
        for item in self.usage.range(start.as_bytes()..) {
            let (k, v) = item?;
            let Some(rest) = k.strip_prefix(USAGE_PREFIX.as_bytes()) else {
                break;
            };
            let parsed = std::str::from_utf8(rest).ok().and_then(|r| {
                let (ts, seq) = r.split_once('/')?;
                Some((
                    u64::from_str_radix(ts, 16).ok()?,
                    u64::from_str_radix(seq, 16).ok()?,
                ))
            });
            let Some((ts, seq)) = parsed else { continue };
            let mut records = Vec::new();
            if seq >= from_seq {
                for line in batch_lines(&k, &v)?
                    .split(|b| *b == b'\n')
                    .filter(|l| !l.is_empty())
                {
                    records.push(decode(&k, line)?);
                }
            }
            out.push((ts, seq, records));
        }
        Ok(out)
    }

    /// How far usage shipping has come: (key time of the newest batch shipped, the sequence after
    /// the highest one shipped); `None` before the first shipment.
    pub fn usage_shipped(&self) -> Result<Option<(u64, u64)>, StoreError> {
        Ok(self.usage.get(SHIPPED_KEY)?.and_then(|v| {
            let b = <[u8; 16]>::try_from(v.as_ref()).ok()?;
            let (ts, seq) = b.split_at(8);
            Some((
                u64::from_be_bytes(ts.try_into().ok()?),
                u64::from_be_bytes(seq.try_into().ok()?),
            ))
        }))
    }

    /// Records how far usage shipping has come (durable with the store's next flush).
    pub fn set_usage_shipped(&self, ts: u64, seq: u64) -> Result<(), StoreError> {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&ts.to_be_bytes());
        b[8..].copy_from_slice(&seq.to_be_bytes());
        self.usage.insert(SHIPPED_KEY, &b[..])?;
        Ok(())
    }

    /// This store's shipper name, `fresh` the first time (kept from then on).
    pub fn shipper_name(&self, fresh: &str) -> Result<String, StoreError> {
        let _ = self
            .usage
            .compare_and_swap(SHIPPER_KEY, None::<&[u8]>, Some(fresh.as_bytes()))?;
        Ok(self
            .usage
            .get(SHIPPER_KEY)?
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .unwrap_or_else(|| fresh.to_owned()))
    }

    /// Every usage record, oldest first.
    pub fn all_usage(&self) -> Result<Vec<UsageRecord>, StoreError> {
        self.usage_between(0, u64::MAX)
    }

    /// The saved health of a profile.
    pub fn load_health(&self, profile: &str) -> Result<Option<HealthView>, StoreError> {
        self.load_json(&format!("v1/profile/{profile}/health"))
    }

    /// Saves the health of a profile (not yet durable: see `flush`).
    pub fn save_health(&self, profile: &str, view: &HealthView) -> Result<(), StoreError> {
        self.save_json(&format!("v1/profile/{profile}/health"), view)
    }

    /// The saved counters of a profile (zero when none): beside the records they count, else where
    /// stores before 2026-12 kept them.
    pub fn load_counters(&self, profile: &str) -> Result<ProfileCounters, StoreError> {
        let key = counters_key(profile);
        if let Some(v) = self.usage.get(&key)? {
            return serde_json::from_slice(&v)
                .map_err(|source| StoreError::Corrupt { key, source });
        }
        Ok(self
            .load_json(&format!("v1/profile/{profile}/counters"))?
            .unwrap_or_default())
    }

    /// Saves the counters of a profile (not yet durable: see `flush`).
    /// Carries the journal mark like every counters value, so the stored mark never goes back.
    pub fn save_counters(&self, profile: &str, c: &ProfileCounters) -> Result<(), StoreError> {
        let mark = self.journal_through.load(Ordering::Acquire);
        self.usage
            .insert(counters_key(profile), encode_counters(c, mark))?;
        Ok(())
    }

    fn load_json<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        match self.profiles.get(key)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|source| StoreError::Corrupt {
                    key: key.to_owned(),
                    source,
                }),
        }
    }

    fn save_json<T: Serialize>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        self.profiles.insert(key, serde_json::to_vec(value)?)?;
        Ok(())
    }

    /// Makes everything written so far durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let written = self.high_water.written();
        self.db.flush_async().await?;
        self.high_water.flushed(written);
        Ok(())
    }

    /// Blocking flush, for shutdown.
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        let written = self.high_water.written();
        self.db.flush()?;
        self.high_water.flushed(written);
        Ok(())
    }

    /// Whether a write succeeds now (readiness probe).
    pub fn is_writable(&self) -> bool {
        self.profiles.insert("v1/probe", &b"1"[..]).is_ok()
    }
}

/// `v2/usage/{min:016x}/{seq:016x}`, written by hand: `format!`'s padded hex cost a tenth of a
/// one-record batch.
fn batch_key(min: u64, seq: u64) -> Vec<u8> {
    fn hex16(out: &mut Vec<u8>, n: u64) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        out.extend(
            (0..16)
                .rev()
                .map(|i| DIGITS[((n >> (i * 4)) & 0xf) as usize]),
        );
    }
    let mut key = Vec::with_capacity(USAGE_PREFIX.len() + 33);
    key.extend_from_slice(USAGE_PREFIX.as_bytes());
    hex16(&mut key, min);
    key.push(b'/');
    hex16(&mut key, seq);
    key
}

/// What one step of retention removed (`Store::expire_usage`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Expired {
    /// Stored values removed (batches, or records of the one-record layout).
    pub batches: u64,
    /// Usage records among them.
    pub records: u64,
    /// Where the next step starts, when this one stopped at its limit.
    pub resume: Option<Vec<u8>>,
}

/// A big-endian u64 stored under `key` (0 when absent).
fn read_u64(tree: &sled::Tree, key: &[u8]) -> Result<u64, StoreError> {
    Ok(tree
        .get(key)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0))
}

/// The sequence of a v2 batch key (`None` when it is not one).
fn batch_seq(key: &[u8]) -> Option<u64> {
    let rest = key.strip_prefix(USAGE_PREFIX.as_bytes())?;
    let (_, seq) = std::str::from_utf8(rest).ok()?.split_once('/')?;
    u64::from_str_radix(seq, 16).ok()
}

/// The newest `ts_ms` among a batch's records; only that field is decoded.
fn newest_ts(key: &[u8], value: &[u8]) -> Result<u64, StoreError> {
    #[derive(Deserialize)]
    struct Ts {
        ts_ms: u64,
    }
    let mut newest = 0;
    for line in value.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let t: Ts = serde_json::from_slice(line).map_err(|source| StoreError::Corrupt {
            key: String::from_utf8_lossy(key).into_owned(),
            source,
        })?;
        newest = newest.max(t.ts_ms);
    }
    Ok(newest)
}

/// The value that stores a batch of `count` JSON Lines (usage records, or the credit ledger's
/// transactions), the newest at `newest_ts`: compressed from `COMPRESS_FROM` bytes, else plain.
pub fn batch_value(lines: Vec<u8>, count: usize, newest_ts: u64) -> Vec<u8> {
    if lines.len() >= COMPRESS_FROM {
        encode_batch(&lines, count, newest_ts).unwrap_or(lines)
    } else {
        lines
    }
}

/// The stored value of a usage batch: `lines` (its `count` records as JSON Lines, the newest at
/// `newest_ts`) compressed behind `BATCH_HEADER`; `None` when they cannot be (the caller stores them
/// plain, which is always readable).
fn encode_batch(lines: &[u8], count: usize, newest_ts: u64) -> Option<Vec<u8>> {
    let count = u16::try_from(count).ok()?;
    if lines.len() > MAX_BATCH_LINES {
        return None;
    }
    let len = u32::try_from(lines.len()).ok()?;
    let bound = lz4_flex::block::get_maximum_output_size(lines.len());
    let mut value = Vec::with_capacity(BATCH_HEADER + bound);
    value.push(BATCH_LZ4);
    value.extend_from_slice(&count.to_le_bytes());
    value.extend_from_slice(&newest_ts.to_le_bytes());
    value.extend_from_slice(&len.to_le_bytes());
    value.resize(BATCH_HEADER + bound, 0);
    let written = lz4_flex::block::compress_into(lines, &mut value[BATCH_HEADER..]).ok()?;
    value.truncate(BATCH_HEADER + written);
    Some(value)
}

/// A compressed batch's header fields: (record count, newest `ts_ms`, length of its JSON Lines).
fn batch_header(key: &[u8], value: &[u8]) -> Result<(u64, u64, usize), StoreError> {
    let corrupt = |reason| StoreError::CorruptBatch {
        key: String::from_utf8_lossy(key).into_owned(),
        reason,
    };
    let Some(&[_, c0, c1, t0, t1, t2, t3, t4, t5, t6, t7, l0, l1, l2, l3]) =
        value.get(..BATCH_HEADER)
    else {
        return Err(corrupt("shorter than its header"));
    };
    let count = u16::from_le_bytes([c0, c1]);
    let newest = u64::from_le_bytes([t0, t1, t2, t3, t4, t5, t6, t7]);
    let len = u32::from_le_bytes([l0, l1, l2, l3]) as usize;
    if len > MAX_BATCH_LINES {
        return Err(corrupt("claims more lines than a batch can hold"));
    }
    Ok((u64::from(count), newest, len))
}

/// A batch's JSON Lines (see `batch_value`), decompressed when it is stored compressed.
pub fn batch_lines<'v>(
    key: &[u8],
    value: &'v [u8],
) -> Result<std::borrow::Cow<'v, [u8]>, StoreError> {
    if value.first() != Some(&BATCH_LZ4) {
        return Ok(std::borrow::Cow::Borrowed(value));
    }
    let (_, _, len) = batch_header(key, value)?;
    let mut lines = vec![0; len];
    match lz4_flex::block::decompress_into(&value[BATCH_HEADER..], &mut lines) {
        Ok(n) if n == len => Ok(std::borrow::Cow::Owned(lines)),
        _ => Err(StoreError::CorruptBatch {
            key: String::from_utf8_lossy(key).into_owned(),
            reason: "its lines do not decompress to their stored length",
        }),
    }
}

/// How many records a batch holds (a compressed one says so in its header).
pub fn batch_count(key: &[u8], value: &[u8]) -> Result<u64, StoreError> {
    if value.first() == Some(&BATCH_LZ4) {
        return Ok(batch_header(key, value)?.0);
    }
    Ok(count_lines(value))
}

/// The newest `ts_ms` of a usage batch's records (a compressed one says so in its header).
fn batch_newest_ts(key: &[u8], value: &[u8]) -> Result<u64, StoreError> {
    if value.first() == Some(&BATCH_LZ4) {
        return Ok(batch_header(key, value)?.1);
    }
    newest_ts(key, value)
}

/// The highest journal mark in `usage`: its own key (stores before 2026-12-02, and batches without
/// counters) or any profile's counters (one value per profile: read once, at open).
fn stored_usage_through(usage: &sled::Tree) -> Result<u64, StoreError> {
    let mut through = usage
        .get(JOURNAL_THROUGH_KEY)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0);
    for item in usage.scan_prefix(COUNTERS_PREFIX) {
        let (k, v) = item?;
        let stored: StoredCounters =
            serde_json::from_slice(&v).map_err(|source| StoreError::Corrupt {
                key: String::from_utf8_lossy(&k).into_owned(),
                source,
            })?;
        through = through.max(stored.journal_through);
    }
    Ok(through)
}

/// The earliest `ts_ms` of the longest prefix of `records` whose times lie within one batch span, and
/// that prefix's length (at least 1).
fn span_prefix(records: &[UsageRecord]) -> (u64, usize) {
    let (mut min, mut max) = (u64::MAX, 0);
    for (i, r) in records.iter().enumerate() {
        let (lo, hi) = (min.min(r.ts_ms), max.max(r.ts_ms));
        if i == MAX_RECORDS_PER_VALUE || (i > 0 && hi - lo > USAGE_BATCH_SPAN_MS) {
            return (min, i);
        }
        (min, max) = (lo, hi);
    }
    (min, records.len())
}

/// The non-empty lines of a JSON Lines value.
pub fn count_lines(value: &[u8]) -> u64 {
    value
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .count() as u64
}

fn decode(key: &[u8], value: &[u8]) -> Result<UsageRecord, StoreError> {
    serde_json::from_slice(value).map_err(|source| StoreError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    })
}

/// Milliseconds since the Unix epoch (kept here too: every caller has long named it `store::now_ms`).
pub use crate::clock::now_ms;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A usage record at `ts` with `outcome`, for this crate's tests.
    pub(crate) fn rec(ts: u64, outcome: &str) -> UsageRecord {
        UsageRecord {
            ts_ms: ts,
            request_id: "r".into(),
            profile: "p".into(),
            model: "m".into(),
            account: None,
            key_id: None,
            outcome: outcome.into(),
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

    #[test]
    fn usage_batches_are_listed_by_key_time_and_decoded_after_the_shipped_sequence() {
        let s = Store::temporary().unwrap();
        s.append_usage(&rec(5_000, "ok")).unwrap();
        s.append_usage(&rec(1_000, "ok")).unwrap();
        let all = s.usage_batches_since(0, 0).unwrap();
        let times: Vec<u64> = all.iter().map(|(t, _, _)| *t).collect();
        assert_eq!(times, [1_000, 5_000]);
        assert!(all.iter().all(|(_, _, r)| r.len() == 1));
        let first_seq = all[1].1;
        let after = s.usage_batches_since(0, first_seq + 1).unwrap();
        assert_eq!(after[0].2.len(), 1, "the later-written batch is decoded");
        assert!(after[1].2.is_empty(), "the shipped one is not");
        assert_eq!(s.usage_batches_since(2_000, 0).unwrap().len(), 1);
        assert_eq!(s.usage_shipped().unwrap(), None);
        s.set_usage_shipped(7, 9).unwrap();
        assert_eq!(s.usage_shipped().unwrap(), Some((7, 9)));
        assert_eq!(s.shipper_name("a").unwrap(), "a");
        assert_eq!(s.shipper_name("b").unwrap(), "a", "kept");
        // The shipping keys are no usage records.
        assert_eq!(s.count_usage_records().unwrap(), 2);
        assert_eq!(s.all_usage().unwrap().len(), 2);
    }

    #[test]
    fn usage_range_is_time_ordered_and_half_open() {
        let s = Store::temporary().unwrap();
        for ts in [30, 10, 20, 20] {
            s.append_usage(&rec(ts, "ok")).unwrap();
        }
        let got: Vec<u64> = s
            .usage_between(10, 30)
            .unwrap()
            .iter()
            .map(|r| r.ts_ms)
            .collect();
        assert_eq!(got, vec![10, 20, 20]);
        assert_eq!(s.all_usage().unwrap().len(), 4);
    }

    #[test]
    fn batches_are_read_by_record_time_across_batch_keys() {
        let s = Store::temporary().unwrap();
        let span = USAGE_BATCH_SPAN_MS;
        // One call: 1_000 and 1_000 + span share a batch; 1_000 + span + 1 starts the next one.
        let batch: Vec<_> = [1_000, 1_000 + span, 1_000 + span + 1, 500]
            .iter()
            .map(|&ts| rec(ts, "ok"))
            .collect();
        s.append_usage_batch(&batch).unwrap();
        assert_eq!(s.usage.len(), 3, "span-bounded batches");
        let times = |from, to| -> Vec<u64> {
            s.usage_between(from, to)
                .unwrap()
                .iter()
                .map(|r| r.ts_ms)
                .collect()
        };
        assert_eq!(
            times(0, u64::MAX),
            vec![500, 1_000, 1_000 + span, 1_000 + span + 1]
        );
        // A range starting inside a batch's span finds the batch keyed before it.
        assert_eq!(times(1_001, 1_000 + span + 1), vec![1_000 + span]);
        assert_eq!(times(600, 1_001), vec![1_000]);
        assert_eq!(times(5, 5), Vec::<u64>::new());
    }

    #[test]
    fn a_large_batch_is_stored_as_values_of_at_most_the_cap_and_read_back_whole() {
        let s = Store::temporary().unwrap();
        let n = 2 * MAX_RECORDS_PER_VALUE + 3;
        let batch: Vec<_> = (0..n as u64).map(|i| rec(1_000 + i, "ok")).collect();
        s.append_usage_batch(&batch).unwrap();
        assert_eq!(s.usage.len(), 3, "values of 16, 16 and 3 records");
        for item in s.usage.iter() {
            let (k, v) = item.unwrap();
            assert!(batch_count(&k, &v).unwrap() <= MAX_RECORDS_PER_VALUE as u64);
        }
        assert_eq!(s.usage_between(0, u64::MAX).unwrap(), batch);
        assert_eq!(s.count_usage_records().unwrap(), n as u64);
    }

    /// `records` as the JSON Lines a plain batch holds.
    fn json_lines(records: &[UsageRecord]) -> Vec<u8> {
        records
            .iter()
            .flat_map(|r| [serde_json::to_vec(r).unwrap(), b"\n".to_vec()].concat())
            .collect()
    }

    /// A batch of as many records as a value holds, a millisecond apart from 1,000: compressed.
    fn full_batch() -> Vec<UsageRecord> {
        (0..MAX_RECORDS_PER_VALUE as u64)
            .map(|i| rec(1_000 + i, "ok"))
            .collect()
    }

    #[test]
    fn a_batch_is_stored_compressed_with_its_count_and_newest_time_in_the_header() {
        let s = Store::temporary().unwrap();
        let mut batch = full_batch();
        batch.swap(1, 15);
        s.append_usage_batch(&batch).unwrap();
        let (k, v) = s.usage.scan_prefix(USAGE_PREFIX).next().unwrap().unwrap();
        let plain = json_lines(&batch);
        assert!(plain.len() >= COMPRESS_FROM);
        assert_eq!(v[0], BATCH_LZ4);
        assert!(
            v.len() < plain.len() / 2,
            "{} bytes for {} of JSON",
            v.len(),
            plain.len()
        );
        let sixteen = MAX_RECORDS_PER_VALUE as u64;
        assert_eq!(batch_header(&k, &v).unwrap(), (sixteen, 1_015, plain.len()));
        assert_eq!(&*batch_lines(&k, &v).unwrap(), &plain[..]);
        batch.sort_by_key(|r| r.ts_ms);
        assert_eq!(s.all_usage().unwrap(), batch);
    }

    #[test]
    fn compressed_and_plain_batches_are_read_and_counted_after_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let full = full_batch();
        let short = vec![rec(2_000, "server")];
        {
            let s = Store::open(dir.path()).unwrap();
            s.append_usage_batch(&full).unwrap();
            s.append_usage_batch(&short).unwrap();
            let firsts: Vec<u8> = s
                .usage
                .scan_prefix(USAGE_PREFIX)
                .map(|kv| kv.unwrap().1[0])
                .collect();
            assert_eq!(firsts, vec![BATCH_LZ4, b'{']);
            s.flush_blocking().unwrap();
        }
        let s = reopen(dir.path());
        assert_eq!(s.all_usage().unwrap(), [full, short].concat());
        assert_eq!(
            s.count_usage_records().unwrap(),
            MAX_RECORDS_PER_VALUE as u64 + 1
        );
    }

    #[test]
    fn a_short_batch_is_stored_plain() {
        let s = Store::temporary().unwrap();
        let batch = vec![rec(1_000, "ok"), rec(1_001, "ok")];
        s.append_usage_batch(&batch).unwrap();
        let (_, v) = s.usage.scan_prefix(USAGE_PREFIX).next().unwrap().unwrap();
        assert!(v.len() < COMPRESS_FROM);
        assert_eq!(v[0], b'{');
        assert_eq!(s.all_usage().unwrap(), batch);
    }

    #[test]
    fn plain_json_lines_batches_of_earlier_versions_are_read_counted_and_expired() {
        let s = Store::temporary().unwrap();
        let old: Vec<_> = [1_000, 1_002].map(|ts| rec(ts, "ok")).to_vec();
        let lines = json_lines(&old);
        s.usage.insert(batch_key(1_000, 3), lines).unwrap();
        s.append_usage(&rec(90_000, "ok")).unwrap();
        assert_eq!(s.usage_between(0, 2_000).unwrap(), old);
        assert_eq!(s.usage_batches_since(0, 0).unwrap()[0].2, old);
        assert_eq!(s.count_usage_records().unwrap(), 3);
        let expired = s.expire_usage(80_000, None, None, 10).unwrap();
        assert_eq!((expired.batches, expired.records), (1, 2));
        assert_eq!(s.all_usage().unwrap().len(), 1);
    }

    #[test]
    fn a_corrupt_compressed_batch_is_an_error_naming_its_key_not_a_panic() {
        let s = Store::temporary().unwrap();
        let batch = full_batch();
        s.append_usage_batch(&batch).unwrap();
        let (k, good) = s.usage.scan_prefix(USAGE_PREFIX).next().unwrap().unwrap();
        assert_eq!(good[0], BATCH_LZ4);
        let mut huge = good.to_vec();
        huge[11..15].copy_from_slice(&u32::MAX.to_le_bytes());
        let cases: [(&str, Vec<u8>); 4] = [
            ("truncated header", good[..6].to_vec()),
            ("truncated block", good[..good.len() - 3].to_vec()),
            ("a length no batch has", huge),
            ("a wrong length", {
                let mut v = good.to_vec();
                v[11] ^= 1;
                v
            }),
        ];
        for (what, value) in cases {
            s.usage.insert(&k, value).unwrap();
            let err = s.all_usage().expect_err(what);
            assert!(
                matches!(&err, StoreError::CorruptBatch { key, .. } if key.starts_with(USAGE_PREFIX)),
                "{what}: {err}"
            );
        }
    }

    #[test]
    fn records_of_the_one_record_layout_are_still_read() {
        let s = Store::temporary().unwrap();
        let old = rec(2_000, "ok");
        s.usage
            .insert(
                format!("{USAGE_PREFIX_V1}{:016x}/{:016x}", 2_000, 7),
                serde_json::to_vec(&old).unwrap(),
            )
            .unwrap();
        s.append_usage(&rec(1_000, "server")).unwrap();
        s.append_usage(&rec(3_000, "ok")).unwrap();
        let got: Vec<u64> = s.all_usage().unwrap().iter().map(|r| r.ts_ms).collect();
        assert_eq!(got, vec![1_000, 2_000, 3_000]);
        assert_eq!(s.usage_between(1_500, 2_500).unwrap(), vec![old]);
    }

    #[test]
    fn usage_records_are_counted_in_both_layouts_and_as_written() {
        let s = Store::temporary().unwrap();
        s.usage
            .insert(
                format!("{USAGE_PREFIX_V1}{:016x}/{:016x}", 2_000, 7),
                serde_json::to_vec(&rec(2_000, "ok")).unwrap(),
            )
            .unwrap();
        let batch: Vec<_> = [1_000, 1_000 + USAGE_BATCH_SPAN_MS + 1, 3_000]
            .iter()
            .map(|&ts| rec(ts, "ok"))
            .collect();
        s.append_usage_batch(&batch).unwrap();
        assert_eq!(s.count_usage_records().unwrap(), 4);
        assert_eq!(s.high_water().written().usage_records, 3);
    }

    #[test]
    fn health_and_counters_round_trip() {
        let s = Store::temporary().unwrap();
        assert_eq!(s.load_health("a").unwrap(), None);
        let mut v = HealthView::healthy(3);
        v.auth_failed = Some("bad".into());
        s.save_health("a", &v).unwrap();
        assert_eq!(s.load_health("a").unwrap(), Some(v));
        let c = ProfileCounters {
            requests: 5,
            failures: 2,
        };
        s.save_counters("a", &c).unwrap();
        assert_eq!(s.load_counters("a").unwrap(), c);
        assert_eq!(s.load_counters("b").unwrap(), ProfileCounters::default());
    }

    #[test]
    fn batch_keys_are_the_padded_hex_of_their_time_and_sequence() {
        assert_eq!(
            batch_key(0x1a2b, u64::MAX),
            format!("{USAGE_PREFIX}{:016x}/{:016x}", 0x1a2b, u64::MAX).into_bytes()
        );
        assert_eq!(
            batch_key(0, 7),
            format!("{USAGE_PREFIX}{:016x}/{:016x}", 0, 7).into_bytes()
        );
    }

    #[test]
    fn an_encoded_record_is_stored_as_given_and_the_others_serialised() {
        let s = Store::temporary().unwrap();
        let (a, b) = (rec(1_000, "ok"), rec(1_001, "server"));
        let line = serde_json::to_vec(&a).unwrap();
        s.write_encoded_usage_batch(&[a.clone(), b.clone()], &[Some(line), None], &[], None)
            .unwrap();
        assert_eq!(s.all_usage().unwrap(), vec![a, b]);
    }

    /// Opens the store in `dir` once the previous handle's sled threads have let go of its lock
    /// (dropping a `Store` does not wait for them).
    fn reopen(dir: &Path) -> Store {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match Store::open(dir) {
                Ok(s) => return s,
                Err(e) if std::time::Instant::now() > deadline => panic!("cannot reopen: {e}"),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
    }

    #[test]
    fn the_journal_mark_rides_in_the_counters_and_never_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        let c = ProfileCounters {
            requests: 1,
            failures: 0,
        };
        {
            let s = Store::open(dir.path()).unwrap();
            s.write_usage_batch(&[rec(1_000, "ok")], &[("p", c)], Some(7))
                .unwrap();
            assert_eq!(s.usage.len(), 2, "the batch and the counters, no mark key");
            assert_eq!(s.usage.get(JOURNAL_THROUGH_KEY).unwrap(), None);
            assert_eq!(s.usage_through().unwrap(), 7);
            assert_eq!(s.load_counters("p").unwrap(), c);
            // Not journaled, and counters saved on their own: both keep the mark.
            s.write_usage_batch(&[rec(1_001, "ok")], &[("q", c)], None)
                .unwrap();
            s.save_counters("p", &c).unwrap();
            assert_eq!(s.usage_through().unwrap(), 7);
            s.flush_blocking().unwrap();
        }
        {
            let s = reopen(dir.path());
            assert_eq!(s.usage_through().unwrap(), 7, "read back at open");
            // A journaled batch without counters keeps the mark in its own key.
            s.write_usage_batch(&[rec(1_002, "ok")], &[], Some(9))
                .unwrap();
            assert!(s.usage.get(JOURNAL_THROUGH_KEY).unwrap().is_some());
            s.flush_blocking().unwrap();
        }
        let s = reopen(dir.path());
        assert_eq!(s.usage_through().unwrap(), 9);
        assert_eq!(s.count_usage_records().unwrap(), 3);
        assert_eq!(s.load_counters("q").unwrap(), c);
    }

    #[test]
    fn retention_removes_only_batches_whose_records_all_expired() {
        let s = Store::temporary().unwrap();
        // The one-record layout, before and after the cutoff.
        for (ts, seq) in [(1_000u64, 1u64), (9_000, 2)] {
            s.usage
                .insert(
                    format!("{USAGE_PREFIX_V1}{ts:016x}/{seq:016x}"),
                    serde_json::to_vec(&rec(ts, "ok")).unwrap(),
                )
                .unwrap();
        }
        s.append_usage_batch(&[rec(2_000, "ok"), rec(2_500, "server")])
            .unwrap();
        // Keyed before the cutoff, with a record after it: kept whole.
        s.append_usage_batch(&[rec(4_000, "ok"), rec(6_000, "ok")])
            .unwrap();
        s.append_usage(&rec(7_000, "ok")).unwrap();
        let c = ProfileCounters {
            requests: 6,
            failures: 1,
        };
        s.save_counters("p", &c).unwrap();
        let before = s.count_usage_records().unwrap();
        assert_eq!(before, 7);

        let step = s.expire_usage(5_000, None, None, 100).unwrap();
        assert_eq!((step.batches, step.records, step.resume), (2, 3, None));
        let left: Vec<u64> = s.all_usage().unwrap().iter().map(|r| r.ts_ms).collect();
        assert_eq!(left, vec![4_000, 6_000, 7_000, 9_000]);
        assert_eq!(s.expired_usage_records(), 3);
        assert_eq!(s.count_usage_records().unwrap(), before, "held + expired");
        assert_eq!(s.load_counters("p").unwrap(), c, "counters are totals");
        // Nothing more to do at the same cutoff; the spanning batch goes once it all expired.
        assert_eq!(s.expire_usage(5_000, None, None, 100).unwrap().records, 0);
        assert_eq!(s.expire_usage(6_001, None, None, 100).unwrap().records, 2);
        assert_eq!(s.count_usage_records().unwrap(), before);
    }

    #[test]
    fn retention_keeps_unshipped_batches_and_works_in_bounded_steps() {
        let s = Store::temporary().unwrap();
        for ts in [1_000, 2_000, 3_000, 4_000] {
            s.append_usage(&rec(ts, "ok")).unwrap();
        }
        let seqs: Vec<u64> = s
            .usage_batches_since(0, 0)
            .unwrap()
            .iter()
            .map(|(_, seq, _)| *seq)
            .collect();
        // Nothing shipped yet: everything stays.
        assert_eq!(
            s.expire_usage(10_000, Some(0), None, 100).unwrap().records,
            0
        );
        // The first two shipped: only they may go, one value a step.
        let mut resume = None;
        let mut steps = 0;
        loop {
            let step = s
                .expire_usage(10_000, Some(seqs[2]), resume.as_deref(), 1)
                .unwrap();
            steps += 1;
            assert!(step.batches <= 1);
            match step.resume {
                Some(r) => resume = Some(r),
                None => break,
            }
        }
        assert_eq!(steps, 4, "one value looked at per step");
        let left: Vec<u64> = s.all_usage().unwrap().iter().map(|r| r.ts_ms).collect();
        assert_eq!(left, vec![3_000, 4_000]);
        assert_eq!(s.expired_usage_records(), 2);
    }

    #[test]
    fn the_high_water_check_passes_after_a_sweep_and_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let held = |s: &Store| Counts {
            usage_records: s.count_usage_records().unwrap(),
            id_counter: s.next_id().unwrap(),
            ..Counts::default()
        };
        {
            let s = Store::open(dir.path()).unwrap();
            s.arm_high_water(dir.path(), held(&s)).unwrap();
            let batch: Vec<_> = (0..5).map(|i| rec(1_000 + i, "ok")).collect();
            s.append_usage_batch(&batch).unwrap();
            s.append_usage(&rec(90_000, "ok")).unwrap();
            s.flush_blocking().unwrap();
            assert!(s.mark_high_water().unwrap());
            assert_eq!(s.expire_usage(50_000, None, None, 100).unwrap().records, 5);
            s.flush_blocking().unwrap();
        }
        let s = reopen(dir.path());
        assert_eq!(
            s.all_usage().unwrap().len(),
            1,
            "only the young record is held"
        );
        assert_eq!(
            s.expired_usage_records(),
            5,
            "the expired count is read back"
        );
        assert_eq!(
            highwater::read(dir.path()).unwrap().unwrap().usage_records,
            6
        );
        assert!(
            s.arm_high_water(dir.path(), held(&s)).unwrap(),
            "not behind its mark"
        );
        // Without the expired count the store would look rolled back.
        let only_held = Counts {
            usage_records: 1,
            ..held(&s)
        };
        let err = highwater::check(dir.path(), &only_held).unwrap_err();
        assert!(err.to_string().contains("usage records 1 < 6"), "{err}");
    }

    #[test]
    fn failure_outcomes() {
        assert!(!rec(0, "ok").is_failure());
        assert!(!rec(0, "client_error").is_failure());
        assert!(rec(0, "server").is_failure());
    }
}
