//! The daily token budget (`tokens_per_day`) in Redis, one counter per caller and UTC day for the
//! whole fleet: `used` (tokens answered) and `held` (estimates of calls in flight), checked and held
//! in one script with the call's request windows (`admit`), so the budget is all-or-nothing across
//! replicas like the local one; settled here.
//!
//! The day's start is part of the key and every script sets its expiry (the day's end plus a day, so
//! a hold made before midnight can still be given back after it), so no counter outlives its day.
//! Each hold is also kept by id with a lease (`:h` amount, `:z` expiry): a hold that a killed replica
//! never settles is given back, once, by the first hold after its lease (`admit`); a settle of a
//! hold already given back (or settled) gives nothing back twice.

use std::sync::LazyLock;

use super::{Resource, Shared, SharedError};

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

pub(super) static SETTLE_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(SETTLE));

impl Shared {
    /// The base key of `subject`'s daily budget: the same hash tag as its request windows.
    pub(super) fn budget_key(&self, subject: &str) -> String {
        self.key(&format!("tpd:{{{subject}}}"))
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
