//! The daily token budget (`tokens_per_day`) in Redis, one counter per caller and UTC day for the
//! whole fleet: `used` (tokens answered) and `held` (estimates of calls in flight), checked and held
//! in one script, so the budget is all-or-nothing across replicas like the local one.
//!
//! The day's start is part of the key and every script sets its expiry (the day's end plus a day, so
//! a hold made before midnight can still be given back after it), so no counter outlives its day.
//! Each hold is also kept by id with a lease (`:h` amount, `:z` expiry): a hold that a killed replica
//! never settles is given back, once, by the first hold after its lease; a settle of a hold already
//! given back (or settled) gives nothing back twice.

use std::sync::LazyLock;

use super::{Resource, Shared, SharedError};

/// KEYS: the caller's base key. ARGV: limit, estimate, day length (ms), lease (ms), hold id.
/// Returns {code (0 held, 1 spent), used, held, taken, day start ms, now ms}. Holds the estimate
/// capped at what remains (at least 1), like `Limits::hold_tokens`.
const HOLD: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local len = tonumber(ARGV[3])
local start = now - (now % len)
local k = KEYS[1] .. ':' .. start
local hk, zk = k .. ':h', k .. ':z'
for _, id in ipairs(redis.call('ZRANGEBYSCORE', zk, '-inf', now)) do
  local a = tonumber(redis.call('HGET', hk, id) or '0')
  local h = tonumber(redis.call('HGET', k, 'held') or '0')
  redis.call('HSET', k, 'held', math.max(0, h - a))
  redis.call('HDEL', hk, id)
  redis.call('ZREM', zk, id)
end
local used = tonumber(redis.call('HGET', k, 'used') or '0')
local held = tonumber(redis.call('HGET', k, 'held') or '0')
local limit = tonumber(ARGV[1])
if used + held >= limit then return {1, used, held, 0, start, now} end
local take = math.max(1, math.min(tonumber(ARGV[2]), limit - used - held))
held = redis.call('HINCRBY', k, 'held', take)
redis.call('HSET', hk, ARGV[5], take)
redis.call('ZADD', zk, now + tonumber(ARGV[4]), ARGV[5])
for _, key in ipairs({k, hk, zk}) do redis.call('PEXPIRE', key, start + 2 * len - now) end
return {0, used, held, take, start, now}
";

/// KEYS: the base key. ARGV: the hold's day start, tokens used (0 to only give back), hold id.
/// Gives the hold back only if it is still open (not given back after its lease, nor settled).
const SETTLE: &str = r"
local k = KEYS[1] .. ':' .. ARGV[1]
if redis.call('EXISTS', k) == 0 then return 0 end
local hk, zk = k .. ':h', k .. ':z'
local a = tonumber(redis.call('HGET', hk, ARGV[3]) or '0')
if a > 0 then
  local held = tonumber(redis.call('HGET', k, 'held') or '0')
  redis.call('HSET', k, 'held', math.max(0, held - a))
  redis.call('HDEL', hk, ARGV[3])
  redis.call('ZREM', zk, ARGV[3])
end
redis.call('HINCRBY', k, 'used', tonumber(ARGV[2]))
return 1
";

pub(super) static HOLD_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(HOLD));
pub(super) static SETTLE_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(SETTLE));

/// What the hold script found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetAnswer {
    /// Whether the estimate was held (else the budget is spent or held by calls in flight).
    pub held: bool,
    pub used: u64,
    /// Every call's holds, this one's included when held.
    pub holding: u64,
    /// What this call holds.
    pub taken: u64,
    pub day_start_ms: u64,
    pub now_ms: u64,
}

impl Shared {
    fn budget_key(&self, subject: &str) -> String {
        self.key(&format!("tpd:{{{subject}}}"))
    }

    /// Holds up to `estimate` tokens of `subject`'s budget of `limit` for today, as hold `id` with
    /// a lease of `lease_ms`: one round trip.
    pub async fn hold_budget(
        &self,
        subject: &str,
        (limit, estimate): (u64, u64),
        (day_ms, lease_ms): (u64, u64),
        id: u64,
    ) -> Result<BudgetAnswer, SharedError> {
        let key = self.budget_key(subject);
        let raw: Vec<u64> = self
            .call(Resource::TokensPerDay, |mut c| async move {
                HOLD_SCRIPT
                    .key(&key)
                    .arg(limit)
                    .arg(estimate)
                    .arg(day_ms)
                    .arg(lease_ms)
                    .arg(id)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        match raw.as_slice() {
            [code, used, holding, taken, day_start_ms, now_ms] => Ok(BudgetAnswer {
                held: *code == 0,
                used: *used,
                holding: *holding,
                taken: *taken,
                day_start_ms: *day_start_ms,
                now_ms: *now_ms,
            }),
            _ => Err(SharedError::Answer("the token budget script's list")),
        }
    }

    /// Counts `used` tokens on the day hold `id` was made, and gives the hold back if still open.
    pub async fn settle_budget(
        &self,
        subject: &str,
        day_start_ms: u64,
        used: u64,
        id: u64,
    ) -> Result<(), SharedError> {
        let key = self.budget_key(subject);
        self.call(Resource::TokensPerDay, |mut c| async move {
            SETTLE_SCRIPT
                .key(&key)
                .arg(day_start_ms)
                .arg(used)
                .arg(id)
                .invoke_async::<u8>(&mut c)
                .await
                .map(drop)
        })
        .await
    }
}
