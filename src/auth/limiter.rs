//! Sign-in rate limits: fixed windows counting failures per account and attempts per client address.
//!
//! A fixed window is coarse (a burst can straddle two windows) but needs one small entry per key and
//! no timer; for slowing down password guessing that is enough.

use std::time::{Duration, Instant};

use dashmap::DashMap;

/// Entries beyond this trigger a sweep of expired windows, so random emails cannot grow the map forever.
const SWEEP_ABOVE: usize = 10_000;

/// One counter per key. DashMap: sign-ins on different workers touch different shards.
#[derive(Default)]
pub struct FixedWindow {
    windows: DashMap<String, (Instant, u32)>,
}

impl FixedWindow {
    /// How long until `key` may try again, if it has used up `limit` in the current `window`.
    pub fn blocked(&self, key: &str, limit: u32, window: Duration) -> Option<Duration> {
        let entry = self.windows.get(key)?;
        let (start, count) = *entry;
        let left = window.checked_sub(start.elapsed())?;
        (count >= limit).then_some(left)
    }

    /// Counts one event for `key`.
    pub fn hit(&self, key: &str, window: Duration) {
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
        *count = count.saturating_add(1);
    }

    /// Counts one event and says whether `key` is now over `limit` (and for how long).
    pub fn hit_and_check(&self, key: &str, limit: u32, window: Duration) -> Option<Duration> {
        self.hit(key, window);
        let entry = self.windows.get(key)?;
        let (start, count) = *entry;
        (count > limit).then(|| window.saturating_sub(start.elapsed()))
    }

    pub fn reset(&self, key: &str) {
        self.windows.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_at_the_limit_until_the_window_ends() {
        let w = FixedWindow::default();
        let window = Duration::from_millis(200);
        assert_eq!(w.blocked("a", 2, window), None);
        w.hit("a", window);
        assert_eq!(w.blocked("a", 2, window), None);
        w.hit("a", window);
        assert!(w.blocked("a", 2, window).is_some());
        assert_eq!(w.blocked("b", 2, window), None);
        std::thread::sleep(window);
        assert_eq!(w.blocked("a", 2, window), None);
        w.reset("a");
        assert_eq!(w.hit_and_check("a", 1, window), None);
        assert!(w.hit_and_check("a", 1, window).is_some());
    }
}
