//! Profile health lanes shared by every replica: a cooldown or billing bench, or an auth failure,
//! seen on one replica is taken by all, and a half-open probe is sent by one replica for the fleet.
//!
//! A lane change is pushed: the replica that saw it exchanges its lanes with Redis at once (one
//! script call: Redis keeps the later end of each, a merge with max, so two writers racing never
//! shorten a bench), and the script PUBLISHes on the health channel when it changed anything. Every
//! replica holds one subscriber connection (per process, not per worker: a push is one event for the
//! whole process) and, on a message, runs the same exchange at once and merges the answer into its
//! own profile actors. Behind the pushes, a full exchange every `state.redis.health_resync` (1 s by
//! default) is the safety net, and a (re)connected subscriber starts with one, so a replica that was
//! cut off is in step again one round after Redis answers.
//!
//! An auth failure has no end: the first one stored stays until a reset, and a replica takes it only
//! if it uses the same credential (by fingerprint; a profile without a credential, such as one whose
//! key variable is unset, never shares its failure). The breaker stays per replica.
//!
//! An admin reset bumps the profile's reset generation in Redis: a replica that sees a newer one
//! resets its own copy, and Redis refuses lanes sent by a replica that has not seen it yet, so an
//! old bench cannot come back from a slower replica.
//!
//! The half-open probe is a fleet lease (`locks`): the replica whose request claims it sends the
//! probe; the others treat the profile as still open while the lease is held. A failed probe keeps
//! the lease for the breaker's `open_for`, so the fleet waits as one replica would; a success or an
//! unused probe releases it. With Redis unreachable each replica probes for itself, as alone.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use switchyard_actors::router::Router;
use tokio::sync::Notify;

use super::locks::Lease;
use super::{Resource, Shared, SharedError};

/// Values sent per profile in an exchange (and answered per profile).
const PER_PROFILE: usize = 5;

/// How long the subscriber waits before connecting again after losing Redis.
const RESUBSCRIBE_AFTER: Duration = Duration::from_millis(500);

/// How soon a failed exchange is tried again (the Redis client's breaker stays open 500 ms).
const RETRY_AFTER: Duration = Duration::from_millis(250);

/// KEYS: one hash per profile. ARGV: (known generation, cooldown end ms, billing end ms, credential
/// fingerprint of an auth failure or 0, its reason) per profile (0 = none), then the channel.
/// Returns the same five per profile, as the fleet has them; publishes when it changed anything.
/// Values travel as the strings they were stored as, so no end time passes through a Lua number
/// on its way out.
const LANES: &str = r"
local out = {}
local changed = false
for i, k in ipairs(KEYS) do
  local a = (i - 1) * 5
  local gen = redis.call('HGET', k, 'gen') or '0'
  local c = redis.call('HGET', k, 'cooldown') or '0'
  local b = redis.call('HGET', k, 'billing') or '0'
  local fp = redis.call('HGET', k, 'auth_fp') or '0'
  local why = redis.call('HGET', k, 'auth') or ''
  if tonumber(ARGV[a + 1]) >= tonumber(gen) then
    if tonumber(ARGV[a + 2]) > tonumber(c) then
      c = ARGV[a + 2]; redis.call('HSET', k, 'cooldown', c); changed = true
    end
    if tonumber(ARGV[a + 3]) > tonumber(b) then
      b = ARGV[a + 3]; redis.call('HSET', k, 'billing', b); changed = true
    end
    if fp == '0' and ARGV[a + 4] ~= '0' then
      fp = ARGV[a + 4]; why = ARGV[a + 5]
      redis.call('HSET', k, 'auth_fp', fp, 'auth', why); changed = true
    end
  end
  out[#out + 1] = gen
  out[#out + 1] = c
  out[#out + 1] = b
  out[#out + 1] = fp
  out[#out + 1] = why
end
if changed then redis.call('PUBLISH', ARGV[#ARGV], 'lanes') end
return out
";

/// KEYS: the profile's hash. ARGV: the channel. Clears its lanes, bumps its generation and tells
/// the fleet.
const RESET: &str = r"
redis.call('HDEL', KEYS[1], 'cooldown', 'billing', 'auth_fp', 'auth')
local gen = redis.call('HINCRBY', KEYS[1], 'gen', 1)
redis.call('PUBLISH', ARGV[1], 'reset')
return gen
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

/// Why an exchange runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Round {
    /// The periodic full exchange.
    Resync,
    /// A lane changed here: push it.
    Changed,
    /// Another replica published a change (or the subscriber just connected).
    Pushed,
}

/// A half-open probe this replica sends for the fleet: ended with the attempt's outcome.
pub struct FleetProbe {
    shared: Arc<Shared>,
    lease: Lease,
    /// The breaker's `open_for`: how long the fleet waits after a failed probe.
    open_for: Duration,
}

impl FleetProbe {
    /// The probe ended: a success (or a probe never sent) frees the profile for the fleet at once; a
    /// failure keeps the others off it for `open_for`, as this replica's breaker is.
    pub fn end(self, failed: bool) {
        // A guard dropped while the runtime shuts down has nowhere to run this: the lease expires.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let result = if failed {
                self.shared.keep_lease(&self.lease, self.open_for).await
            } else {
                self.shared.release_lease(&self.lease).await
            };
            if let Err(e) = result {
                // The lease expires on its own; until then the others keep waiting.
                tracing::debug!(error = %e, "cannot end the fleet probe lease");
            }
        });
    }
}

impl Shared {
    fn health_key(&self, profile: &str) -> String {
        self.key(&format!("health:{{{profile}}}"))
    }

    fn health_channel(&self) -> String {
        self.key("health:events")
    }

    /// Claims `profile`'s half-open probe for the fleet, for at most `lease` (the probe's longest
    /// wait for an answer). `Ok(None)`: another replica is probing, treat the profile as open.
    /// `Err`: Redis cannot say; the caller probes for itself, as a lone replica does.
    pub async fn claim_probe(
        self: &Arc<Self>,
        profile: &str,
        lease: Duration,
        open_for: Duration,
    ) -> Result<Option<FleetProbe>, SharedError> {
        let name = format!("probe:{{{profile}}}");
        let taken = self.try_lease(Resource::Probes, &name, lease).await?;
        Ok(taken.map(|lease| FleetProbe {
            shared: self.clone(),
            lease,
            open_for,
        }))
    }

    /// Resets `profile` on every replica (an admin reset on this one).
    pub async fn reset_lanes(&self, profile: &str) -> Result<(), SharedError> {
        let (key, channel) = (self.health_key(profile), self.health_channel());
        self.call(Resource::Health, |mut c| async move {
            RESET_SCRIPT
                .key(&key)
                .arg(&channel)
                .invoke_async::<i64>(&mut c)
                .await
                .map(drop)
        })
        .await
    }

    /// Exchanges the lanes with the fleet for as long as the process runs: at once when one changes
    /// here or another replica publishes a change, and in full every `health_resync`.
    pub async fn run_health_exchange(self: Arc<Self>, router: Arc<Router>) {
        let pushed = Arc::new(Notify::new());
        tokio::spawn(self.clone().run_health_subscriber(pushed.clone()));
        // Profile -> the reset generation this replica has applied.
        let mut known: HashMap<Arc<str>, u64> = HashMap::new();
        let mut tick = tokio::time::interval(self.health_resync);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // After a failed round (Redis down, or its breaker still open just after Redis came back),
        // another one soon: a change made meanwhile, or the resync a reconnected subscriber asked
        // for, must not wait for the next periodic round.
        let retry = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(retry);
        let mut failing = false;
        loop {
            let round = tokio::select! {
                _ = tick.tick() => Round::Resync,
                () = router.lanes_changed() => Round::Changed,
                () = pushed.notified() => Round::Pushed,
                () = &mut retry, if failing => Round::Resync,
            };
            let result = self.exchange_lanes(&router, &mut known).await;
            if round == Round::Pushed && result.is_ok() {
                self.metrics
                    .pushes
                    .with_label_values(&[Resource::Health.as_str()])
                    .inc();
            }
            failing = result.is_err();
            if failing {
                retry
                    .as_mut()
                    .reset(tokio::time::Instant::now() + RETRY_AFTER);
            }
            self.set_degraded(Resource::Health, failing);
        }
    }

    /// Holds the process's one subscriber connection to the health channel, and wakes the exchange
    /// on each message; after connecting (again), once more, for the full resync.
    async fn run_health_subscriber(self: Arc<Self>, pushed: Arc<Notify>) {
        let channel = self.health_channel();
        loop {
            let connected = tokio::time::timeout(
                self.timeout.max(Duration::from_millis(250)),
                self.client.get_async_pubsub(),
            )
            .await;
            match connected {
                Ok(Ok(mut pubsub)) => match pubsub.subscribe(&channel).await {
                    Ok(()) => {
                        tracing::debug!("subscribed to the fleet's health changes");
                        pushed.notify_one();
                        let mut messages = pubsub.into_on_message();
                        while messages.next().await.is_some() {
                            pushed.notify_one();
                        }
                        tracing::warn!("lost the fleet's health channel: resubscribing");
                    }
                    Err(e) => tracing::debug!(error = %e, "cannot subscribe to health changes"),
                },
                Ok(Err(e)) => tracing::debug!(error = %e, "cannot subscribe to health changes"),
                Err(_) => tracing::debug!("subscribing to health changes timed out"),
            }
            tokio::time::sleep(RESUBSCRIBE_AFTER).await;
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
        let mut args: Vec<String> = Vec::with_capacity(profiles.len() * PER_PROFILE + 1);
        for p in &profiles {
            let view = p.shared.view();
            keys.push(self.health_key(p.id()));
            args.push(known.get(p.id()).copied().unwrap_or(0).to_string());
            args.push(ms(view.cooldown_until.filter(|t| *t > now)).to_string());
            args.push(ms(view.billing_until.filter(|t| *t > now)).to_string());
            let fingerprint = p.credential_fingerprint();
            match &view.auth_failed {
                Some(reason) if fingerprint != 0 => {
                    args.push(fingerprint.to_string());
                    args.push(reason.clone());
                }
                _ => args.extend(["0".to_owned(), String::new()]),
            }
        }
        args.push(self.health_channel());
        let answer: Vec<String> = self
            .call(Resource::Health, |mut c| async move {
                let mut call = LANES_SCRIPT.prepare_invoke();
                for k in &keys {
                    call.key(k);
                }
                for a in &args {
                    call.arg(a);
                }
                call.invoke_async(&mut c).await
            })
            .await?;
        if answer.len() != profiles.len() * PER_PROFILE {
            return Err(SharedError::Answer("the health lanes' list"));
        }
        let number = |s: &str| {
            s.parse::<u64>()
                .map_err(|_| SharedError::Answer("a health lane that is not a number"))
        };
        for (p, fleet) in profiles.iter().zip(answer.chunks(PER_PROFILE)) {
            let (gen, cooldown, billing) =
                (number(&fleet[0])?, number(&fleet[1])?, number(&fleet[2])?);
            let (auth_fp, auth) = (number(&fleet[3])?, &fleet[4]);
            let seen = known.entry(p.id().clone()).or_insert(gen);
            let view = p.shared.view();
            if gen > *seen {
                tracing::info!(profile = %p.id(), "profile reset on another replica");
                p.reset();
                // The actor resets in its own time: until its view shows no lane, keep sending the
                // old generation, so Redis refuses the lanes from before the reset.
                if view.cooldown_until.is_none()
                    && view.billing_until.is_none()
                    && view.auth_failed.is_none()
                {
                    *seen = gen;
                }
                continue;
            }
            // Equal, or lower after Redis lost its data: follow Redis from here.
            *seen = gen;
            let later = |ours: Option<SystemTime>, theirs: u64| theirs > ms(ours);
            // Only a failure of the credential this replica sends too.
            let refused = (auth_fp != 0
                && auth_fp == p.credential_fingerprint()
                && view.auth_failed.is_none())
            .then(|| auth.clone());
            if later(view.cooldown_until, cooldown)
                || later(view.billing_until, billing)
                || refused.is_some()
            {
                p.merge_lanes(time(cooldown), time(billing), refused);
            }
        }
        Ok(())
    }
}
