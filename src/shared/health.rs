//! Profile health lanes shared by every replica: a cooldown or billing bench seen on one replica is
//! taken by all. Every 200 ms each replica sends its lanes' end times and gets the fleet's back in
//! one script call: Redis keeps the later end of each (a merge with max, so two writers racing never
//! shorten a bench), and the replica merges the answer into its own profile actors the same way.
//! Every round is a full exchange, so a replica that was cut off is in step again one round after
//! Redis answers. The breaker stays per replica.
//!
//! An admin reset bumps the profile's reset generation in Redis: a replica that sees a newer one
//! resets its own copy, and Redis refuses lanes sent by a replica that has not seen it yet, so an
//! old bench cannot come back from a slower replica.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use switchyard_actors::router::Router;

use super::{Resource, Shared, SharedError};

/// How often a replica exchanges its lanes.
const EXCHANGE_EVERY: Duration = Duration::from_millis(200);

/// KEYS: one hash per profile. ARGV: (known generation, cooldown end ms, billing end ms) per
/// profile (0 = none). Returns (generation, cooldown end, billing end) per profile.
const LANES: &str = r"
local out = {}
for i, k in ipairs(KEYS) do
  local gen = tonumber(redis.call('HGET', k, 'gen') or '0')
  local c = tonumber(redis.call('HGET', k, 'cooldown') or '0')
  local b = tonumber(redis.call('HGET', k, 'billing') or '0')
  if tonumber(ARGV[3 * i - 2]) >= gen then
    local lc, lb = tonumber(ARGV[3 * i - 1]), tonumber(ARGV[3 * i])
    if lc > c then c = lc; redis.call('HSET', k, 'cooldown', c) end
    if lb > b then b = lb; redis.call('HSET', k, 'billing', b) end
  end
  out[#out + 1] = gen
  out[#out + 1] = c
  out[#out + 1] = b
end
return out
";

/// KEYS: the profile's hash. Clears its lanes and bumps its generation.
const RESET: &str = r"
redis.call('HDEL', KEYS[1], 'cooldown', 'billing')
return redis.call('HINCRBY', KEYS[1], 'gen', 1)
";

static LANES_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(LANES));
static RESET_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RESET));

fn ms(t: Option<SystemTime>) -> u64 {
    t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn time(ms: u64) -> Option<SystemTime> {
    (ms > 0).then(|| UNIX_EPOCH + Duration::from_millis(ms))
}

impl Shared {
    fn health_key(&self, profile: &str) -> String {
        self.key(&format!("health:{{{profile}}}"))
    }

    /// Resets `profile` on every replica (an admin reset on this one).
    pub async fn reset_lanes(&self, profile: &str) -> Result<(), SharedError> {
        let key = self.health_key(profile);
        self.call(Resource::Health, |mut c| async move {
            RESET_SCRIPT
                .key(&key)
                .invoke_async::<i64>(&mut c)
                .await
                .map(drop)
        })
        .await
    }

    /// Exchanges the lanes with the fleet for as long as the process runs.
    pub async fn run_health_exchange(self: Arc<Self>, router: Arc<Router>) {
        // Profile -> the reset generation this replica has applied.
        let mut known: HashMap<Arc<str>, u64> = HashMap::new();
        let mut tick = tokio::time::interval(EXCHANGE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let result = self.exchange_lanes(&router, &mut known).await;
            self.set_degraded(Resource::Health, result.is_err());
        }
    }

    async fn exchange_lanes(
        &self,
        router: &Router,
        known: &mut HashMap<Arc<str>, u64>,
    ) -> Result<(), SharedError> {
        let profiles = router.profiles();
        if profiles.is_empty() {
            return Ok(());
        }
        let now = SystemTime::now();
        let mut keys = Vec::with_capacity(profiles.len());
        let mut args = Vec::with_capacity(profiles.len() * 3);
        for p in &profiles {
            let view = p.shared.view();
            keys.push(self.health_key(p.id()));
            args.push(known.get(p.id()).copied().unwrap_or(0));
            args.push(ms(view.cooldown_until.filter(|t| *t > now)));
            args.push(ms(view.billing_until.filter(|t| *t > now)));
        }
        let answer: Vec<u64> = self
            .call(Resource::Health, |mut c| async move {
                let mut call = LANES_SCRIPT.prepare_invoke();
                for k in &keys {
                    call.key(k);
                }
                for a in &args {
                    call.arg(*a);
                }
                call.invoke_async(&mut c).await
            })
            .await?;
        if answer.len() != profiles.len() * 3 {
            return Err(SharedError::Answer("the health lanes' list"));
        }
        for (p, fleet) in profiles.iter().zip(answer.chunks(3)) {
            let [gen, cooldown, billing] = [fleet[0], fleet[1], fleet[2]];
            let seen = known.entry(p.id().clone()).or_insert(gen);
            if gen > *seen {
                tracing::info!(profile = %p.id(), "profile reset on another replica");
                p.reset();
            }
            *seen = gen;
            let view = p.shared.view();
            let later = |ours: Option<SystemTime>, theirs: u64| theirs > ms(ours);
            if later(view.cooldown_until, cooldown) || later(view.billing_until, billing) {
                p.merge_lanes(time(cooldown), time(billing));
            }
        }
        Ok(())
    }
}
