//! The fleet's usage records in Redis (`state.backend: redis`): each replica ships the records its
//! sled store holds (the recorder's batches, journal replays included) and the usage API reads them
//! back for the whole fleet.
//!
//! Layout: one sorted set per UTC day, `{usage}:day:<yyyy-mm-dd>`, scored by the record's `ts_ms`, whose
//! members are `<record id>\n<record JSON>`. A record's id is `<replica>/<batch sequence>/<line>`:
//! stable, because a stored batch never changes, so a record shipped twice is the same member and
//! counts once (`ZADD` of an existing member changes nothing). A report reads the days of its span,
//! one pipelined round trip, and groups the raw records like a local one (prices applied per
//! record, exact). Each day expires `KEEP_DAYS` after it ends.
//!
//! Shipping: every `SHIP_EVERY`, the batches written since the last shipment (sequence from the
//! one after the last shipped: the recorder is the only writer of usage batches, so sequences appear in order),
//! looked for from `LOOK_BACK` before the newest batch shipped (a batch's key is its earliest
//! record's time, written a moment after it). How far shipping came is kept in the replica's own
//! store, so a replica killed with -9 ships the rest when it is back; a cursor lost with the last
//! unflushed writes only ships some records again, which counts them once. Each shipment also sets
//! the replica's mark in `{usage}:shipped` (replica -> its cursor), in the same MULTI: a Redis whose
//! mark is behind the replica's cursor (restarted empty, restored from an old snapshot) gets the
//! replica's whole store again.

use std::sync::Arc;
use std::time::Duration;

use switchyard_actors::store::{Store, UsageRecord};

use super::{Resource, Shared, SharedError};

/// How often a replica ships what its store holds.
const SHIP_EVERY: Duration = Duration::from_millis(200);
/// How far before the newest batch shipped a batch written later may start.
const LOOK_BACK_MS: u64 = 30_000;
/// Records per round trip.
const SHIP_BATCH: usize = 500;
/// Days of records Redis keeps after each day ends (reports reach back this far).
const KEEP_DAYS: u64 = 400;
const DAY_MS: u64 = 24 * 60 * 60 * 1000;
/// A report's read from Redis: a span's records can be many.
const READ_DEADLINE: Duration = Duration::from_secs(10);

/// `ms`'s UTC day, `yyyy-mm-dd`.
fn day(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()[..10].to_owned()
}

/// A record's sorted-set member: its id, a newline, its JSON.
fn member(id: &str, record: &UsageRecord) -> Result<String, SharedError> {
    let json =
        serde_json::to_string(record).map_err(|_| SharedError::Answer("a usage record as JSON"))?;
    Ok(format!("{id}\n{json}"))
}

/// Where records come from in a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Every replica's shipped records.
    Fleet,
    /// This replica's store only (local mode, or Redis unavailable).
    Local,
}

impl Source {
    /// The value of a report's `source` field.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Fleet => "fleet",
            Source::Local => "local",
        }
    }
}

impl Shared {
    /// Under one hash tag, so a shipment's MULTI may touch its days and the mark on a cluster too.
    fn usage_day_key(&self, day: &str) -> String {
        self.key(&format!("{{usage}}:day:{day}"))
    }

    fn usage_shipped_key(&self) -> String {
        self.key("{usage}:shipped")
    }

    /// How far replica `name` has shipped as Redis knows it (its `next`), `None` when Redis has no
    /// mark of it.
    async fn shipped_mark(&self, name: &str) -> Result<Option<u64>, SharedError> {
        let key = self.usage_shipped_key();
        self.call(Resource::Usage, |mut c| async move {
            redis::cmd("HGET")
                .arg(&key)
                .arg(name)
                .query_async(&mut c)
                .await
        })
        .await
    }

    /// Adds records (id, record) to their days, and replica `name`'s mark `next`, in one MULTI:
    /// one round trip, and the mark never ahead of the records.
    async fn ship(
        &self,
        records: &[(String, &UsageRecord)],
        name: &str,
        next: u64,
    ) -> Result<(), SharedError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        let mut days = std::collections::BTreeMap::new();
        for (id, r) in records {
            let d = day(r.ts_ms);
            let key = self.usage_day_key(&d);
            pipe.zadd(&key, member(id, r)?, r.ts_ms).ignore();
            days.entry(key)
                .or_insert(r.ts_ms - r.ts_ms % DAY_MS + DAY_MS);
        }
        for (key, day_end) in days {
            let until = (day_end + KEEP_DAYS * DAY_MS) / 1000;
            pipe.cmd("EXPIREAT").arg(key).arg(until).ignore();
        }
        pipe.hset(self.usage_shipped_key(), name, next).ignore();
        self.call(Resource::Usage, |mut c| async move {
            pipe.query_async::<()>(&mut c).await
        })
        .await
    }

    /// Every replica's shipped records with `from_ms <= ts_ms < to_ms`, oldest first.
    pub async fn fleet_usage_between(
        &self,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<UsageRecord>, SharedError> {
        if from_ms >= to_ms {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        let mut d = from_ms - from_ms % DAY_MS;
        while d < to_ms {
            pipe.cmd("ZRANGEBYSCORE")
                .arg(self.usage_day_key(&day(d)))
                .arg(from_ms)
                .arg(format!("({to_ms}"));
            d += DAY_MS;
        }
        let days: Vec<Vec<String>> = self.read_large(pipe).await?;
        let mut out = Vec::new();
        for m in days.iter().flatten() {
            let Some((_, json)) = m.split_once('\n') else {
                return Err(SharedError::Answer("a usage member"));
            };
            out.push(
                serde_json::from_str(json).map_err(|_| SharedError::Answer("a usage record"))?,
            );
        }
        out.sort_by_key(|r: &UsageRecord| r.ts_ms);
        Ok(out)
    }

    /// A read whose answer may be large (a report's records), on a connection of its own and with
    /// `READ_DEADLINE`: on the worker's shared connection it would hold up that worker's limit
    /// checks behind it, and a slow large answer would open the breaker every resource shares.
    /// With the breaker open (Redis known down) it fails at once.
    async fn read_large<T: redis::FromRedisValue>(
        &self,
        pipe: redis::Pipeline,
    ) -> Result<T, SharedError> {
        if self.breaker.is_open() {
            return Err(SharedError::Open);
        }
        let started = std::time::Instant::now();
        let read = async {
            let mut c = self.client.get_multiplexed_async_connection().await?;
            pipe.query_async::<T>(&mut c).await
        };
        let result = match tokio::time::timeout(READ_DEADLINE, read).await {
            Ok(r) => r.map_err(SharedError::Redis),
            Err(_) => Err(SharedError::Timeout(READ_DEADLINE)),
        };
        self.metrics
            .round_trip
            .with_label_values(&[Resource::Usage.as_str()])
            .observe(started.elapsed().as_secs_f64());
        result
    }

    /// Ships this replica's usage records for as long as the process runs.
    pub async fn run_usage_shipping(self: Arc<Self>, store: Store) {
        let name = match store.shipper_name(&uuid::Uuid::new_v4().to_string()) {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "cannot name this replica's usage: not shipping it");
                return;
            }
        };
        let mut tick = tokio::time::interval(SHIP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match self.ship_round(&store, &name).await {
                Ok(()) => self.set_degraded(Resource::Usage, false),
                Err(ShipError::Redis(e)) => {
                    tracing::debug!(error = %e, "usage not shipped yet");
                    self.set_degraded(Resource::Usage, true);
                }
                Err(ShipError::Store(e)) => {
                    tracing::error!(error = %e, "cannot read usage to ship it");
                }
            }
        }
    }

    /// Ships what was written since the last round and moves the cursor past it.
    async fn ship_round(&self, store: &Store, name: &str) -> Result<(), ShipError> {
        // `next`: the lowest batch sequence not shipped yet (a fresh store's first batch is 0).
        let (mut newest, mut next) = store.usage_shipped()?.unwrap_or((0, 0));
        // Redis restarted empty or restored from an old snapshot lacks some of what we shipped:
        // everything again (the records it has count once).
        if next > 0
            && self
                .shipped_mark(name)
                .await?
                .is_none_or(|mark| mark < next)
        {
            tracing::warn!("redis lacks usage this replica shipped (restarted or restored): shipping it all again");
            (newest, next) = (0, 0);
        }
        let batches = store.usage_batches_since(newest.saturating_sub(LOOK_BACK_MS), next)?;
        let mut pending: Vec<(String, &UsageRecord)> = Vec::new();
        let (mut pending_newest, mut pending_next) = (newest, next);
        for (ts, seq, records) in &batches {
            if *seq < next {
                continue;
            }
            for (line, r) in records.iter().enumerate() {
                pending.push((format!("{name}/{seq:x}/{line}"), r));
            }
            pending_newest = pending_newest.max(*ts);
            pending_next = pending_next.max(seq + 1);
            // Whole batches per round trip, so the cursor never points inside one.
            if pending.len() >= SHIP_BATCH {
                self.ship(&pending, name, pending_next).await?;
                pending.clear();
                (newest, next) = (pending_newest, pending_next);
                store.set_usage_shipped(newest, next)?;
            }
        }
        if !pending.is_empty() {
            self.ship(&pending, name, pending_next).await?;
        }
        if (pending_newest, pending_next) != (newest, next) {
            store.set_usage_shipped(pending_newest, pending_next)?;
        }
        Ok(())
    }
}

/// Why a shipping round stopped.
#[derive(Debug, thiserror::Error)]
enum ShipError {
    #[error(transparent)]
    Redis(#[from] SharedError),
    #[error(transparent)]
    Store(#[from] switchyard_actors::store::StoreError),
}

/// The records of a span for the usage API: the fleet's with Redis (this replica's alone when Redis
/// cannot answer), this replica's without.
pub async fn usage_between(
    shared: Option<&Shared>,
    store: &Store,
    from_ms: u64,
    to_ms: u64,
) -> Result<(Vec<UsageRecord>, Option<Source>), switchyard_actors::store::StoreError> {
    let Some(shared) = shared else {
        return Ok((store.usage_between(from_ms, to_ms)?, None));
    };
    match shared.fleet_usage_between(from_ms, to_ms).await {
        Ok(records) => Ok((records, Some(Source::Fleet))),
        Err(e) => {
            tracing::warn!(error = %e, "usage report from this replica only: redis unavailable");
            Ok((store.usage_between(from_ms, to_ms)?, Some(Source::Local)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ts: u64) -> UsageRecord {
        serde_json::from_value(serde_json::json!({
            "ts_ms": ts, "request_id": "r", "profile": "p", "model": "m", "account": null,
            "key_id": null, "outcome": "ok", "status": 200, "prompt_tokens": 1,
            "completion_tokens": 2, "latency_ms": 3, "attempt": 1, "stream": false,
        }))
        .unwrap()
    }

    #[test]
    fn a_record_is_the_same_member_each_time_it_is_shipped() {
        let r = rec(1_764_633_600_000);
        let a = member("rep/1f/0", &r).unwrap();
        assert_eq!(a, member("rep/1f/0", &r.clone()).unwrap());
        assert_ne!(
            a,
            member("rep/1f/1", &r).unwrap(),
            "another line is another record"
        );
        let (id, json) = a.split_once('\n').unwrap();
        assert_eq!(id, "rep/1f/0");
        assert_eq!(serde_json::from_str::<UsageRecord>(json).unwrap(), r);
    }

    #[test]
    fn days_are_utc() {
        assert_eq!(day(1_764_633_600_000), "2025-12-02");
        assert_eq!(day(1_764_633_599_999), "2025-12-01");
    }
}
