//! Sticky-session pins shared by every replica: the first replica to pin a session writes it with
//! `SET NX` and a TTL, and every replica reads it (refreshing the TTL) before it picks, so a session
//! stays on one profile whichever replica it lands on. While Redis cannot be asked, a session
//! without a local pin is pinned by rendezvous hashing over the model's profiles: every replica
//! computes the same profile without talking to the others.

use std::time::Duration;

use sha2::{Digest, Sha256};
use switchyard_actors::router::Router;

use super::{Resource, Shared};

/// What the replica knew of a session's shared pin before it picked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SharedPin {
    /// Redis had none: the answering profile claims it, unless another replica is first.
    Unclaimed,
    /// Redis had this profile (adopted into the router before the pick).
    Held(String),
    /// Redis could not be asked: the hash fallback decided, nothing is written.
    Degraded,
}

impl Shared {
    /// The Redis key of a session's pin: hashed, because session ids are the client's and may be long.
    fn pin_key(&self, model: &str, sid: &str) -> String {
        let digest = Sha256::new()
            .chain_update(model.as_bytes())
            .chain_update([0])
            .chain_update(sid.as_bytes())
            .finalize();
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        self.key(&format!("pin:{hex}"))
    }

    /// Before a pick: reads the session's shared pin (and gives it another `ttl`) and pins the
    /// router to it; without Redis, pins by the hash every replica computes the same.
    pub async fn before_pick(
        &self,
        router: &Router,
        model: &str,
        sid: &str,
        ttl: Duration,
    ) -> SharedPin {
        let key = self.pin_key(model, sid);
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let found = self
            .call(Resource::Pins, |mut c| async move {
                redis::cmd("GETEX")
                    .arg(&key)
                    .arg("PX")
                    .arg(ttl_ms)
                    .query_async::<Option<String>>(&mut c)
                    .await
            })
            .await;
        match found {
            Ok(Some(profile)) => {
                self.set_degraded(Resource::Pins, false);
                router.adopt_pin(model, sid, &profile);
                SharedPin::Held(profile)
            }
            Ok(None) => {
                self.set_degraded(Resource::Pins, false);
                SharedPin::Unclaimed
            }
            Err(_) => {
                self.set_degraded(Resource::Pins, true);
                if router.session_profile(model, sid).is_none() {
                    if let Some(p) = rendezvous(sid, &router.model_profiles(model)) {
                        router.adopt_pin(model, sid, &p);
                    }
                }
                SharedPin::Degraded
            }
        }
    }

    /// After an answer from `profile`: claims an unclaimed pin (first writer wins: a replica that
    /// lost adopts the winner for the session's next request), or moves a held pin whose profile
    /// could not answer, as the router moves a local one.
    pub async fn after_answer(
        &self,
        router: &Router,
        model: &str,
        sid: &str,
        ttl: Duration,
        (before, profile): (SharedPin, &str),
    ) {
        let key = self.pin_key(model, sid);
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        match before {
            SharedPin::Unclaimed => {
                let winner = self
                    .call(Resource::Pins, |mut c| async move {
                        redis::cmd("SET")
                            .arg(&key)
                            .arg(profile)
                            .arg("NX")
                            .arg("GET")
                            .arg("PX")
                            .arg(ttl_ms)
                            .query_async::<Option<String>>(&mut c)
                            .await
                    })
                    .await;
                if let Ok(Some(first)) = winner {
                    router.adopt_pin(model, sid, &first);
                }
            }
            SharedPin::Held(held) if held != profile => {
                let moved = self
                    .call(Resource::Pins, |mut c| async move {
                        redis::cmd("SET")
                            .arg(&key)
                            .arg(profile)
                            .arg("PX")
                            .arg(ttl_ms)
                            .query_async::<()>(&mut c)
                            .await
                    })
                    .await;
                if moved.is_err() {
                    self.set_degraded(Resource::Pins, true);
                }
            }
            SharedPin::Held(_) | SharedPin::Degraded => {}
        }
    }
}

/// The profile with the highest hash of (session, profile): the same on every replica, and a
/// profile removed from the list moves only its own sessions.
fn rendezvous(sid: &str, profiles: &[std::sync::Arc<str>]) -> Option<String> {
    profiles
        .iter()
        .max_by_key(|p| {
            let d = Sha256::new()
                .chain_update(sid.as_bytes())
                .chain_update([0])
                .chain_update(p.as_bytes())
                .finalize();
            u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
        })
        .map(|p| p.to_string())
}

/// Response ids (`pins::ResponsePins`): `resp:<id>` -> `{"profile", "owner"}` with the pin's TTL.
impl Shared {
    fn response_pin_key(&self, id: &str) -> String {
        self.key(&format!("resp:{id}"))
    }

    /// Writes that `profile` created response `id` for `owner`, for `ttl`.
    pub async fn put_response_pin(
        &self,
        id: &str,
        profile: &str,
        owner: Option<&str>,
        ttl: Duration,
    ) -> Result<(), super::SharedError> {
        let key = self.response_pin_key(id);
        let value = serde_json::json!({"profile": profile, "owner": owner}).to_string();
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        self.call(Resource::Pins, |mut c| async move {
            redis::cmd("SET")
                .arg(&key)
                .arg(&value)
                .arg("PX")
                .arg(ms)
                .query_async::<()>(&mut c)
                .await
        })
        .await
    }

    /// (profile, owner) of response `id`, if some replica pinned it.
    pub async fn response_pin(
        &self,
        id: &str,
    ) -> Result<Option<(String, Option<String>)>, super::SharedError> {
        let key = self.response_pin_key(id);
        let raw: Option<String> = self
            .call(Resource::Pins, |mut c| async move {
                redis::cmd("GET").arg(&key).query_async(&mut c).await
            })
            .await?;
        let Some(raw) = raw else { return Ok(None) };
        let v: serde_json::Value = serde_json::from_str(&raw)
            .map_err(|_| super::SharedError::Answer("a response pin's JSON"))?;
        let profile = v["profile"]
            .as_str()
            .ok_or(super::SharedError::Answer("a response pin's profile"))?;
        Ok(Some((
            profile.to_owned(),
            v["owner"].as_str().map(str::to_owned),
        )))
    }

    /// Forgets response `id` (it was deleted).
    pub async fn forget_response_pin(&self, id: &str) -> Result<(), super::SharedError> {
        let key = self.response_pin_key(id);
        self.call(Resource::Pins, |mut c| async move {
            redis::cmd("DEL").arg(&key).query_async::<i64>(&mut c).await
        })
        .await
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_is_stable_and_spreads_sessions() {
        let ids: Vec<std::sync::Arc<str>> = vec!["a".into(), "b".into(), "c".into()];
        assert_eq!(rendezvous("s1", &ids), rendezvous("s1", &ids));
        let picked: std::collections::HashSet<String> = (0..50)
            .filter_map(|i| rendezvous(&format!("s{i}"), &ids))
            .collect();
        assert_eq!(picked.len(), 3, "50 sessions use every profile");
        assert_eq!(rendezvous("s1", &[]), None);
    }
}
