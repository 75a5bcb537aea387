//! Sign-in rate limits: fixed windows budgeting password checks per account and counting attempts per
//! client address. With `state.backend: redis` the windows are Redis's (`shared::rate`), so the
//! fleet together allows what one replica would; while Redis cannot be asked each replica counts
//! its own, as in local mode (an abuse control: failing open costs a few more guesses, failing
//! closed would lock everyone out).
//!
//! A fixed window is coarse (a burst can straddle two windows) but needs one small entry per key and
//! no timer; for slowing down password guessing that is enough.

use std::time::{Duration, Instant};

use dashmap::DashMap;

use super::secret::sha256_hex;
use crate::shared::{Shared, SharedError};

/// Entries beyond this trigger a sweep of expired windows, so random emails cannot grow the map forever.
const SWEEP_ABOVE: usize = 10_000;

/// One counter per key. DashMap: sign-ins on different workers touch different shards.
#[derive(Default)]
pub struct FixedWindow {
    windows: DashMap<String, (Instant, u32)>,
}

impl FixedWindow {
    /// Takes one of `limit` events for `key` in the current `window`, or says how long until the window
    /// ends when none is left (and counts nothing then). Check and count happen under the entry's lock,
    /// so of any number of concurrent callers at most `limit` get `Ok` per window: a budget taken before
    /// the work it limits, not a tally added after it.
    pub fn try_take(&self, key: &str, limit: u32, window: Duration) -> Result<(), Duration> {
        let mut entry = self.current(key, window);
        let (start, count) = &mut *entry;
        if *count >= limit {
            return Err(window.saturating_sub(start.elapsed()));
        }
        *count = count.saturating_add(1);
        Ok(())
    }

    /// Counts one event and says whether `key` is now over `limit` (and for how long), under one lock.
    pub fn hit_and_check(&self, key: &str, limit: u32, window: Duration) -> Option<Duration> {
        let mut entry = self.current(key, window);
        let (start, count) = &mut *entry;
        *count = count.saturating_add(1);
        (*count > limit).then(|| window.saturating_sub(start.elapsed()))
    }

    pub fn reset(&self, key: &str) {
        self.windows.remove(key);
    }

    /// `key`'s entry, locked, restarted when its window has ended.
    fn current(
        &self,
        key: &str,
        window: Duration,
    ) -> dashmap::mapref::one::RefMut<'_, String, (Instant, u32)> {
        if self.windows.len() > SWEEP_ABOVE {
            self.windows
                .retain(|_, (start, _)| start.elapsed() < window);
        }
        let mut entry = self
            .windows
            .entry(key.to_owned())
            .or_insert((Instant::now(), 0));
        let (start, count) = &mut *entry;
        if start.elapsed() >= window {
            *start = Instant::now();
            *count = 0;
        }
        entry
    }
}

/// One sign-in window in Redis for the whole fleet: `kind` (`address`, `account`) and the key,
/// hashed (an email may hold any character, and the key names no one in Redis).
pub struct SharedWindow<'a> {
    pub shared: &'a Shared,
    pub kind: &'static str,
    pub key: &'a str,
}

impl SharedWindow<'_> {
    fn subject(&self) -> String {
        format!("login:{}:{}", self.kind, &sha256_hex(self.key)[..32])
    }

    /// `try_take` for the fleet: `Ok(Ok(window start))` when taken, `Ok(Err(time left))` when the
    /// limit is reached (nothing counted); `Err` when Redis cannot decide.
    pub async fn try_take(
        &self,
        limit: u32,
        window: Duration,
    ) -> Result<Result<u64, Duration>, SharedError> {
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1);
        let answer = self
            .shared
            .take_windows(&self.subject(), window_ms, &[("n", u64::from(limit))], true)
            .await?;
        Ok(match answer.full {
            None => Ok(answer.start_ms),
            Some(_) => {
                let ends = answer.start_ms.saturating_add(window_ms);
                Err(Duration::from_millis(ends.saturating_sub(answer.now_ms)))
            }
        })
    }

    /// Forgets the window that started at `start_ms` (a sign-in succeeded).
    pub async fn reset(&self, window: Duration, start_ms: u64) -> Result<(), SharedError> {
        let window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1);
        self.shared
            .reset_window(&self.subject(), "n", window_ms, start_ms)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_up_to_the_limit_until_the_window_ends() {
        let w = FixedWindow::default();
        let window = Duration::from_millis(200);
        assert_eq!(w.try_take("a", 2, window), Ok(()));
        assert_eq!(w.try_take("a", 2, window), Ok(()));
        assert!(w.try_take("a", 2, window).is_err());
        assert_eq!(w.try_take("b", 2, window), Ok(()));
        std::thread::sleep(window);
        assert_eq!(w.try_take("a", 2, window), Ok(()));
        w.reset("a");
        assert_eq!(w.hit_and_check("a", 1, window), None);
        assert!(w.hit_and_check("a", 1, window).is_some());
    }

    #[test]
    fn concurrent_takers_never_get_more_than_the_limit() {
        let w = FixedWindow::default();
        let window = Duration::from_secs(60);
        let granted = std::sync::atomic::AtomicU32::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..50 {
                        if w.try_take("a", 5, window).is_ok() {
                            granted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(granted.into_inner(), 5);
    }
}
