//! Response ids pinned to the profile that created them: the Responses API keeps a response upstream,
//! so `previous_response_id`, `GET`/`DELETE /v1/responses/{id}` and `.../input_items` must reach the
//! profile that made it. The id reaches the client unchanged; the proxy remembers where it came from,
//! in memory (a restart forgets: such a request is then routed like any other). With
//! `state.backend: redis` every pin is also written to Redis (in the background: the answer does not
//! wait), and a replica that does not know an id asks Redis before it says "not found", so a
//! conversation continues whichever replica the load balancer picks.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::shared::Shared;

/// How long a pin lasts: OpenAI keeps a stored response for 30 days.
pub const PIN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// The most pins held, so client traffic cannot grow the map without bound (about 100 bytes each).
pub const MAX_PINS: usize = 200_000;

/// Two generations of pins: new pins go to `young`; when it holds half the bound it becomes `old` and
/// the previous `old` is dropped. So the bound holds with O(1) work per pin, and the ids dropped are
/// the oldest ones, never the ones a conversation just made.
#[derive(Default)]
struct Generations {
    young: HashMap<String, Pin>,
    old: HashMap<String, Pin>,
}

#[derive(Clone)]
struct Pin {
    profile: Arc<str>,
    /// The account (else the key) that created it: another caller is told the id does not exist,
    /// as the upstream, which sees one key for every caller, could not tell them apart.
    owner: Option<String>,
    expires: Instant,
}

/// The pins. A parking_lot mutex: every critical section is one hash-map operation (never held
/// across an await), and the generation swap must move both maps together.
pub struct ResponsePins {
    map: Mutex<Generations>,
    ttl: Duration,
    max: usize,
    /// `state.backend: redis`: the fleet's copy.
    shared: Option<Arc<Shared>>,
}

impl Default for ResponsePins {
    fn default() -> Self {
        ResponsePins::new(PIN_TTL, MAX_PINS)
    }
}

impl ResponsePins {
    /// Pins that last `ttl`, at most `max` of them.
    pub fn new(ttl: Duration, max: usize) -> ResponsePins {
        ResponsePins {
            map: Mutex::new(Generations::default()),
            ttl,
            max: max.max(2),
            shared: None,
        }
    }

    /// Shares the pins with every replica through Redis.
    pub fn share_through(mut self, shared: Option<Arc<Shared>>) -> ResponsePins {
        self.shared = shared;
        self
    }

    /// Remembers that `profile` created the response `id` for `owner`; with Redis, tells the fleet
    /// in the background (on the worker's own runtime, as every Redis call). For a stream, whose
    /// client cannot continue the conversation before the stream ends.
    pub fn pin(&self, id: &str, profile: &Arc<str>, owner: Option<&str>) {
        if let Some(shared) = &self.shared {
            let (shared, ttl) = (shared.clone(), self.ttl);
            let (id, profile, owner) = (id.to_owned(), profile.clone(), owner.map(str::to_owned));
            tokio::task::spawn_local(async move {
                share_pin(&shared, &id, &profile, owner.as_deref(), ttl).await;
            });
        }
        self.pin_here(id, profile, owner);
    }

    /// `pin`, with the fleet told before it returns: for a whole answer, whose client may continue
    /// on another replica the moment it has it.
    pub async fn pin_now(&self, id: &str, profile: &Arc<str>, owner: Option<&str>) {
        self.pin_here(id, profile, owner);
        if let Some(shared) = &self.shared {
            share_pin(shared, id, profile, owner, self.ttl).await;
        }
    }

    /// `pin`, on this replica only.
    fn pin_here(&self, id: &str, profile: &Arc<str>, owner: Option<&str>) {
        let pin = Pin {
            profile: profile.clone(),
            owner: owner.map(str::to_owned),
            expires: Instant::now() + self.ttl,
        };
        let mut g = self.map.lock();
        if g.young.len() >= self.max / 2 && !g.young.contains_key(id) {
            g.old = std::mem::take(&mut g.young);
        }
        g.old.remove(id);
        g.young.insert(id.to_owned(), pin);
    }

    /// The profile that created `id` for `owner`, while its pin lasts.
    pub fn profile(&self, id: &str, owner: Option<&str>) -> Option<Arc<str>> {
        let g = self.map.lock();
        let pin = g.young.get(id).or_else(|| g.old.get(id))?;
        let live = pin.expires > Instant::now() && pin.owner.as_deref() == owner;
        live.then(|| pin.profile.clone())
    }

    /// `profile`, or with Redis, on a miss here, the fleet's pin (then kept here too). Redis
    /// unreachable counts as a miss.
    pub async fn profile_anywhere(&self, id: &str, owner: Option<&str>) -> Option<Arc<str>> {
        if let Some(p) = self.profile(id, owner) {
            return Some(p);
        }
        let shared = self.shared.as_ref()?;
        let (profile, pinned_for) = match shared.response_pin(id).await {
            Ok(found) => found?,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the fleet's response pins");
                return None;
            }
        };
        let profile: Arc<str> = Arc::from(profile);
        self.pin_here(id, &profile, pinned_for.as_deref());
        (pinned_for.as_deref() == owner).then_some(profile)
    }

    /// Forgets `id` (the response was deleted), here and, with Redis, for the fleet.
    pub async fn forget(&self, id: &str) {
        {
            let mut g = self.map.lock();
            g.young.remove(id);
            g.old.remove(id);
        }
        if let Some(shared) = &self.shared {
            if let Err(e) = shared.forget_response_pin(id).await {
                tracing::warn!(error = %e, "cannot forget a response pin in redis");
            }
        }
    }

    /// Pins held, live or expired.
    pub fn len(&self) -> usize {
        let g = self.map.lock();
        g.young.len() + g.old.len()
    }

    /// No pins held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Writes a pin to Redis; a failure only costs other replicas the id (logged).
async fn share_pin(shared: &Shared, id: &str, profile: &str, owner: Option<&str>, ttl: Duration) {
    if let Err(e) = shared.put_response_pin(id, profile, owner, ttl).await {
        tracing::warn!(error = %e, "cannot share a response pin: other replicas will not know its id");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_pin_names_its_profile_until_it_expires_or_is_forgotten() {
        let pins = ResponsePins::new(Duration::from_millis(50), 10);
        let a: Arc<str> = Arc::from("a");
        pins.pin("resp_1", &a, Some("acct"));
        assert_eq!(pins.profile("resp_1", Some("acct")).as_deref(), Some("a"));
        assert_eq!(pins.profile("resp_1", Some("other")), None, "not the owner");
        assert_eq!(pins.profile("resp_1", None), None, "not the owner");
        assert_eq!(pins.profile("resp_2", Some("acct")), None);
        pins.forget("resp_1").await;
        assert_eq!(pins.profile("resp_1", Some("acct")), None);
        pins.pin("resp_3", &a, None);
        assert!(pins.profile("resp_3", None).is_some());
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(pins.profile("resp_3", None), None, "expired");
    }

    #[test]
    fn the_bound_drops_the_oldest_pins_first() {
        let pins = ResponsePins::new(PIN_TTL, 10);
        let a: Arc<str> = Arc::from("a");
        for i in 0..100 {
            pins.pin(&format!("resp_{i}"), &a, None);
            assert!(pins.len() <= 10, "{}", pins.len());
        }
        assert!(pins.profile("resp_99", None).is_some() && pins.profile("resp_95", None).is_some());
        assert_eq!(pins.profile("resp_0", None), None);
    }
}
