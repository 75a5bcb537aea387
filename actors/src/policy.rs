//! Plain policy types shared by the config layer and the actors: strategies, backoff schedules, breaker settings.

use std::time::Duration;

/// How the router chooses among the usable profiles of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Rotate through the profiles in order.
    RoundRobin,
    /// Lowest `priority` first; ties broken by configuration order.
    Priority,
    /// Uniformly at random.
    Random,
    /// At random, in proportion to each profile's `weight`.
    Weighted,
}

impl Strategy {
    /// The name used in profiles.yaml.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::RoundRobin => "round_robin",
            Strategy::Priority => "priority",
            Strategy::Random => "random",
            Strategy::Weighted => "weighted",
        }
    }

    /// Parses the profiles.yaml name.
    pub fn parse(name: &str) -> Option<Strategy> {
        match name {
            "round_robin" => Some(Strategy::RoundRobin),
            "priority" => Some(Strategy::Priority),
            "random" => Some(Strategy::Random),
            "weighted" => Some(Strategy::Weighted),
            _ => None,
        }
    }
}

/// An exponential schedule: `initial`, doubling on each consecutive occurrence, capped at `max`.
///
/// We keep this small function instead of the `backoff` crate, which is unmaintained (RUSTSEC-2025-0012).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CooldownPolicy {
    /// Length of the first cooldown.
    pub initial: Duration,
    /// Cap on any cooldown.
    pub max: Duration,
}

impl CooldownPolicy {
    /// The cooldown for the `strike`-th consecutive occurrence (1-based): initial * 2^(strike-1), capped.
    pub fn delay(&self, strike: u32) -> Duration {
        let exp = strike.saturating_sub(1).min(30);
        self.initial
            .checked_mul(1u32 << exp)
            .unwrap_or(self.max)
            .min(self.max)
    }
}

/// When the circuit breaker opens and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Consecutive failures that open the breaker.
    pub failure_threshold: u32,
    /// How long the breaker stays open before admitting one probe.
    pub open_for: Duration,
}

/// A provider's own limits on one credential, so the router can skip a profile before it earns a 429.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpstreamLimits {
    /// Requests per minute.
    pub rpm: Option<u32>,
    /// Tokens (prompt + completion) per minute.
    pub tpm: Option<u32>,
}

/// The health policies of one profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Rate limits, 5xx, timeouts.
    pub cooldown: CooldownPolicy,
    /// 402, insufficient_quota, credits exhausted.
    pub billing: CooldownPolicy,
    /// Consecutive-failure breaker.
    pub breaker: BreakerSettings,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cooldown_doubles_and_caps() {
        let p = CooldownPolicy {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(5),
        };
        assert_eq!(p.delay(1), Duration::from_secs(1));
        assert_eq!(p.delay(2), Duration::from_secs(2));
        assert_eq!(p.delay(3), Duration::from_secs(4));
        assert_eq!(p.delay(4), Duration::from_secs(5));
        assert_eq!(p.delay(200), Duration::from_secs(5));
        assert_eq!(p.delay(0), Duration::from_secs(1));
    }

    #[test]
    fn strategy_names_round_trip() {
        for s in [
            Strategy::RoundRobin,
            Strategy::Priority,
            Strategy::Random,
            Strategy::Weighted,
        ] {
            assert_eq!(Strategy::parse(s.as_str()), Some(s));
        }
        assert_eq!(Strategy::parse("fastest"), None);
    }
}
