//! Request-rate windows in Redis, exact across replicas: one script call per request looks at every
//! limit of the call and counts all of them or none, on Redis's own clock.
//!
//! The window's start is part of each key and the script sets the key's expiry in the same step as
//! its increment, so no counter outlives its window, even when a caller goes away mid-call (two
//! separate commands could leave one behind). Fixed windows aligned to the Unix epoch, like the
//! local ones (`limits`), so `Retry-After` is exact.

use std::sync::LazyLock;

use super::{Resource, Shared, SharedError};

/// KEYS: one base key per limit. ARGV: window length (ms), whether to count (1/0), then each
/// limit. Returns {now ms, window start ms, index of the first full limit (0 = none), counts...}:
/// the counts after counting when admitted, as found when refused or not counting.
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local len = tonumber(ARGV[1])
local start = now - (now % len)
local full = 0
local counts = {}
for i, base in ipairs(KEYS) do
  local c = tonumber(redis.call('GET', base .. ':' .. start) or '0')
  counts[i] = c
  if full == 0 and c >= tonumber(ARGV[2 + i]) then full = i end
end
if full == 0 and ARGV[2] == '1' then
  for i, base in ipairs(KEYS) do
    local k = base .. ':' .. start
    counts[i] = redis.call('INCR', k)
    redis.call('PEXPIRE', k, start + len - now + 1000)
  end
end
local out = {now, start, full}
for i = 1, #counts do out[3 + i] = counts[i] end
return out
";

/// Loaded once per Redis by its hash (`EVALSHA`, falling back to `SCRIPT LOAD` after a restart).
static WINDOWS: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(SCRIPT));

/// What the script found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowAnswer {
    /// Redis's clock, Unix ms.
    pub now_ms: u64,
    /// The window's start, Unix ms.
    pub start_ms: u64,
    /// The first limit that was full (nothing was counted then).
    pub full: Option<usize>,
    /// Each limit's count, after this call's when it was counted.
    pub counts: Vec<u64>,
}

impl Shared {
    /// Loads the window scripts (one round trip each), so that no request pays for `SCRIPT LOAD`.
    pub(super) async fn load_scripts(&self) -> Result<(), SharedError> {
        self.call(Resource::RateLimits, |mut c| async move {
            WINDOWS.prepare_invoke().load_async(&mut c).await?;
            super::admit::ADMIT_SCRIPT
                .prepare_invoke()
                .load_async(&mut c)
                .await
                .map(drop)
        })
        .await
    }

    /// The base key of `subject`'s window `name` of `window_ms`. The hash tag keeps one subject's
    /// windows (and its daily budget, `budget`) in one cluster slot, so a script may touch them all
    /// on a cluster too; the window length is in the key, so a changed `rate_window` starts fresh
    /// counters instead of reading the old ones.
    pub(super) fn window_key(&self, subject: &str, name: &str, window_ms: u64) -> String {
        self.key(&format!("rl:{{{subject}}}:{name}:{window_ms}"))
    }

    /// Looks at `limits` (name, limit) of `subject` in the current window of `window_ms`, and when
    /// `count` and none is full, counts one against each: one round trip.
    pub async fn take_windows(
        &self,
        subject: &str,
        window_ms: u64,
        limits: &[(&str, u64)],
        count: bool,
    ) -> Result<WindowAnswer, SharedError> {
        let keys: Vec<String> = limits
            .iter()
            .map(|(name, _)| self.window_key(subject, name, window_ms))
            .collect();
        let raw: Vec<u64> = self
            .call(Resource::RateLimits, |mut c| async move {
                let mut call = WINDOWS.prepare_invoke();
                for k in &keys {
                    call.key(k);
                }
                call.arg(window_ms).arg(u8::from(count));
                for (_, limit) in limits {
                    call.arg(*limit);
                }
                call.invoke_async(&mut c).await
            })
            .await?;
        match raw.as_slice() {
            [now_ms, start_ms, full, counts @ ..] if counts.len() == limits.len() => {
                Ok(WindowAnswer {
                    now_ms: *now_ms,
                    start_ms: *start_ms,
                    full: usize::try_from(*full).ok().and_then(|i| i.checked_sub(1)),
                    counts: counts.to_vec(),
                })
            }
            _ => Err(SharedError::Answer("the rate-window script's list")),
        }
    }

    /// Forgets `subject`'s window `name` that started at `start_ms` (a sign-in succeeded: its
    /// failure budget starts again).
    pub async fn reset_window(
        &self,
        subject: &str,
        name: &str,
        window_ms: u64,
        start_ms: u64,
    ) -> Result<(), SharedError> {
        let key = self.key(&format!("rl:{{{subject}}}:{name}:{window_ms}:{start_ms}"));
        self.call(Resource::RateLimits, |mut c| async move {
            redis::cmd("DEL").arg(&key).query_async::<i64>(&mut c).await
        })
        .await
        .map(drop)
    }
}
