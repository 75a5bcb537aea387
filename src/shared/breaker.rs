//! The Redis client's breaker: after a failed command, calls skip Redis for a short while and take
//! their fallback at once; then one probe at a time finds out whether Redis is back.
//!
//! Three phases, each a function: closed (every call goes), open (none goes until `open_until`),
//! probing (one call goes; its outcome closes or re-opens). Without it, every request would wait
//! out the command deadline against a stalled Redis.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use switchyard_actors::store::now_ms;

/// How long the breaker stays open after a failure before one probe may try Redis again.
pub const OPEN_FOR: Duration = Duration::from_millis(500);

/// Whether a call may go to Redis, and as what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// The breaker is closed.
    Call,
    /// The breaker was open and this call is the one probe.
    Probe,
}

/// Atomics only: every request reads the breaker, and none should wait on a lock for it.
#[derive(Debug, Default)]
pub struct Breaker {
    /// Unix ms until which calls skip Redis; 0 while closed.
    open_until: AtomicU64,
    /// Set while the one probe is in flight.
    probing: AtomicBool,
}

impl Breaker {
    /// A permit to call Redis now, or `None` to take the fallback without trying.
    pub fn permit(&self) -> Option<Permit> {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return Some(Permit::Call);
        }
        if now_ms() < until {
            return None;
        }
        self.probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| Permit::Probe)
    }

    /// Redis answered: closed again.
    pub fn succeeded(&self, permit: Permit) {
        self.open_until.store(0, Ordering::Release);
        if permit == Permit::Probe {
            self.probing.store(false, Ordering::Release);
        }
    }

    /// Redis failed or was too slow: open for `OPEN_FOR` from now.
    pub fn failed(&self, permit: Permit) {
        let until = now_ms().saturating_add(u64::try_from(OPEN_FOR.as_millis()).unwrap_or(500));
        self.open_until.store(until, Ordering::Release);
        if permit == Permit::Probe {
            self.probing.store(false, Ordering::Release);
        }
    }

    /// Whether calls are currently skipping Redis.
    pub fn is_open(&self) -> bool {
        self.open_until.load(Ordering::Acquire) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_opens_then_one_probe_at_a_time_closes_it() {
        let b = Breaker::default();
        assert_eq!(b.permit(), Some(Permit::Call));
        b.failed(Permit::Call);
        assert!(b.is_open());
        assert_eq!(b.permit(), None, "open: no call goes");
        std::thread::sleep(OPEN_FOR + Duration::from_millis(20));
        assert_eq!(b.permit(), Some(Permit::Probe));
        assert_eq!(b.permit(), None, "a second probe waits for the first");
        b.failed(Permit::Probe);
        assert_eq!(b.permit(), None, "a failed probe opens it again");
        std::thread::sleep(OPEN_FOR + Duration::from_millis(20));
        let probe = b.permit().unwrap();
        b.succeeded(probe);
        assert!(!b.is_open());
        assert_eq!(b.permit(), Some(Permit::Call));
    }
}
