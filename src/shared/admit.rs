//! A model call's request windows and its daily token hold in one script (`state.backend: redis`):
//! `rate`'s windows script and the daily budget's hold fused, so a call that the windows refuse
//! holds no tokens and a call that the budget refuses counts in no window, with no compensation in
//! between.
//!
//! Both resources key by the subject's hash tag (`rl:{<subject>}:…`, `tpd:{<subject>}:…`), so this
//! one script touches one Redis Cluster slot. The keys and their meaning are those of `rate` and
//! `budget`: a call admitted here is settled by `budget`'s SETTLE, and counted in the same
//! windows `rate`'s script counts for the other `/v1` calls.

use std::sync::LazyLock;

use super::{Resource, Shared, SharedError};

/// KEYS: one base key per request limit, then the budget's base key when there is a budget.
/// ARGV: the number of request limits n, window length (ms), whether to count (1/0), the n limits,
/// then for the budget: its limit, the estimate, the day's length (ms), the hold's lease (ms), the
/// hold's id. Returns {now ms, window start ms, first full limit (0 = none), budget code (0 none,
/// 1 held, 2 spent, 3 only looked), tokens used, tokens held before this call, tokens taken, day
/// start ms, counts...}. Counts everything or nothing: the windows only when none is full and the
/// budget is not spent; the estimate (capped at what remains, at least 1) only then too.
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n, len, count = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3] == '1'
local start = now - (now % len)
local full = 0
local counts = {}
for i = 1, n do
  local c = tonumber(redis.call('GET', KEYS[i] .. ':' .. start) or '0')
  counts[i] = c
  if full == 0 and c >= tonumber(ARGV[3 + i]) then full = i end
end
local code, used, held, take, dstart = 0, 0, 0, 0, 0
local k, hk, zk, dlen
if KEYS[n + 1] then
  local a = 3 + n
  dlen = tonumber(ARGV[a + 3])
  dstart = now - (now % dlen)
  k = KEYS[n + 1] .. ':' .. dstart
  hk, zk = k .. ':h', k .. ':z'
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', zk, '-inf', now)) do
    local amount = tonumber(redis.call('HGET', hk, id) or '0')
    local h = tonumber(redis.call('HGET', k, 'held') or '0')
    redis.call('HSET', k, 'held', math.max(0, h - amount))
    redis.call('HDEL', hk, id)
    redis.call('ZREM', zk, id)
  end
  used = tonumber(redis.call('HGET', k, 'used') or '0')
  held = tonumber(redis.call('HGET', k, 'held') or '0')
  local limit = tonumber(ARGV[a + 1])
  if used + held >= limit then
    code = 2
  elseif full ~= 0 or not count then
    code = 3
  else
    take = math.max(1, math.min(tonumber(ARGV[a + 2]), limit - used - held))
    redis.call('HINCRBY', k, 'held', take)
    redis.call('HSET', hk, ARGV[a + 5], take)
    redis.call('ZADD', zk, now + tonumber(ARGV[a + 4]), ARGV[a + 5])
    for _, key in ipairs({k, hk, zk}) do redis.call('PEXPIRE', key, dstart + 2 * dlen - now) end
    code = 1
  end
end
if full == 0 and code ~= 2 and count then
  for i = 1, n do
    local wk = KEYS[i] .. ':' .. start
    counts[i] = redis.call('INCR', wk)
    redis.call('PEXPIRE', wk, start + len - now + 1000)
  end
end
local out = {now, start, full, code, used, held, take, dstart}
for i = 1, n do out[8 + i] = counts[i] end
return out
";

/// Loaded at each worker's start with the other scripts (`load_scripts`).
pub(super) static ADMIT_SCRIPT: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(SCRIPT));

/// The daily budget's part of a call: what to hold, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetAsk {
    pub limit: u64,
    pub estimate: u64,
    pub day_ms: u64,
    pub lease_ms: u64,
    /// The hold's id (its settle names it).
    pub id: u64,
}

/// How the budget's part ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetOutcome {
    /// No budget was asked.
    None,
    /// `taken` tokens are held.
    Held,
    /// Today's tokens and those held reach the budget: refused.
    Spent,
    /// Looked at only: a window was full, or the call was not to be counted.
    Looked,
}

/// What the script found (and did).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallAnswer {
    /// Redis's clock, Unix ms.
    pub now_ms: u64,
    /// The request window's start, Unix ms.
    pub start_ms: u64,
    /// The first request limit that was full (nothing was counted nor held then).
    pub full: Option<usize>,
    pub budget: BudgetOutcome,
    /// Today's tokens, and those held by calls in flight before this one.
    pub used: u64,
    pub holding: u64,
    /// What this call holds.
    pub taken: u64,
    pub day_start_ms: u64,
    /// Each request limit's count, after this call's when it was counted.
    pub counts: Vec<u64>,
}

impl Shared {
    /// Looks at `limits` (name, limit) of `subject` in the current window of `window_ms` and at its
    /// daily budget, and when `count`, no limit is full and the budget is not spent, counts one
    /// against each limit and holds the estimate: one round trip.
    pub async fn admit_call(
        &self,
        subject: &str,
        (window_ms, limits): (u64, &[(&str, u64)]),
        budget: Option<BudgetAsk>,
        count: bool,
    ) -> Result<CallAnswer, SharedError> {
        let mut keys: Vec<String> = limits
            .iter()
            .map(|(name, _)| self.window_key(subject, name, window_ms))
            .collect();
        if budget.is_some() {
            keys.push(self.budget_key(subject));
        }
        // Timed and labelled as the request limits when there are any, else as the budget.
        let resource = match limits.is_empty() {
            true => Resource::TokensPerDay,
            false => Resource::RateLimits,
        };
        let raw: Vec<u64> = self
            .call(resource, |mut c| async move {
                let mut call = ADMIT_SCRIPT.prepare_invoke();
                for k in &keys {
                    call.key(k);
                }
                call.arg(limits.len()).arg(window_ms).arg(u8::from(count));
                for (_, limit) in limits {
                    call.arg(*limit);
                }
                if let Some(b) = budget {
                    call.arg(b.limit)
                        .arg(b.estimate)
                        .arg(b.day_ms)
                        .arg(b.lease_ms)
                        .arg(b.id);
                }
                call.invoke_async(&mut c).await
            })
            .await?;
        let bad = || SharedError::Answer("the call admission script's list");
        let [now_ms, start_ms, full, code, used, holding, taken, day_start_ms, counts @ ..] =
            raw.as_slice()
        else {
            return Err(bad());
        };
        if counts.len() != limits.len() {
            return Err(bad());
        }
        let budget = match code {
            0 => BudgetOutcome::None,
            1 => BudgetOutcome::Held,
            2 => BudgetOutcome::Spent,
            3 => BudgetOutcome::Looked,
            _ => return Err(bad()),
        };
        Ok(CallAnswer {
            now_ms: *now_ms,
            start_ms: *start_ms,
            full: usize::try_from(*full).ok().and_then(|i| i.checked_sub(1)),
            budget,
            used: *used,
            holding: *holding,
            taken: *taken,
            day_start_ms: *day_start_ms,
            counts: counts.to_vec(),
        })
    }
}
