//! The sled store behind typed methods: usage records, per-profile health and counters.
//!
//! Keys carry a version prefix (`v1/...`) so the layout can change without ambiguity.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::health::HealthView;

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
    #[error("encode: {0}")]
    Encode(#[from] serde_json::Error),
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
}

const USAGE_PREFIX: &str = "v1/usage/";

impl Store {
    /// Opens (or creates) the store in `dir`. sled locks the directory: a second process gets an error.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let db = sled::Config::new().path(dir).open()?;
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
        Ok(Store {
            db,
            usage,
            profiles,
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

    /// Appends a usage record (not yet durable: see `flush`). Keys sort by time.
    pub fn append_usage(&self, record: &UsageRecord) -> Result<(), StoreError> {
        let seq = self.db.generate_id()?;
        let key = format!("{USAGE_PREFIX}{:016x}/{seq:016x}", record.ts_ms);
        self.usage.insert(key, serde_json::to_vec(record)?)?;
        Ok(())
    }

    /// Usage records with `from_ms <= ts_ms < to_ms`, oldest first.
    pub fn usage_between(&self, from_ms: u64, to_ms: u64) -> Result<Vec<UsageRecord>, StoreError> {
        let start = format!("{USAGE_PREFIX}{from_ms:016x}/");
        let end = format!("{USAGE_PREFIX}{to_ms:016x}/");
        let mut out = Vec::new();
        for item in self.usage.range(start.as_bytes()..end.as_bytes()) {
            let (k, v) = item?;
            out.push(
                serde_json::from_slice(&v).map_err(|source| StoreError::Corrupt {
                    key: String::from_utf8_lossy(&k).into_owned(),
                    source,
                })?,
            );
        }
        Ok(out)
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

    /// The saved counters of a profile (zero when none).
    pub fn load_counters(&self, profile: &str) -> Result<ProfileCounters, StoreError> {
        Ok(self
            .load_json(&format!("v1/profile/{profile}/counters"))?
            .unwrap_or_default())
    }

    /// Saves the counters of a profile (not yet durable: see `flush`).
    pub fn save_counters(&self, profile: &str, c: &ProfileCounters) -> Result<(), StoreError> {
        self.save_json(&format!("v1/profile/{profile}/counters"), c)
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
        self.db.flush_async().await?;
        Ok(())
    }

    /// Blocking flush, for shutdown.
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// Whether a write succeeds now (readiness probe).
    pub fn is_writable(&self) -> bool {
        self.profiles.insert("v1/probe", &b"1"[..]).is_ok()
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ts: u64, outcome: &str) -> UsageRecord {
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
        }
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
    fn failure_outcomes() {
        assert!(!rec(0, "ok").is_failure());
        assert!(!rec(0, "client_error").is_failure());
        assert!(rec(0, "server").is_failure());
    }
}
