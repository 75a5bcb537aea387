//! Readiness: which configured models have a usable profile now, and why the others do not (for
//! `/health/ready`).

use std::time::SystemTime;

use switchyard_actors::health::StateName;
use switchyard_actors::profile::Availability;
use switchyard_actors::router::{ProfileEntry, Router};

use crate::config::Config;

/// What `/health/ready` reports of the routing side.
pub struct Readiness {
    pub models_ready: usize,
    pub models_total: usize,
    pub any_profile_usable: bool,
    /// model name -> `{ready, usable: [ids], reason}`, in file order.
    pub models: serde_json::Map<String, serde_json::Value>,
    /// profile id -> `{usable, state, reason}`, in file order.
    pub profiles: serde_json::Map<String, serde_json::Value>,
}

/// A profile is usable when the router would pick it now: healthy (also at its per-minute limit,
/// which passes within the minute) or half-open with the probe free. A profile whose key variable is
/// unset is `auth_failed` from the start, so it is not; one that needs no key (a local server) is
/// usable until a request to it fails.
fn profile_readiness(p: &ProfileEntry, now: SystemTime) -> (bool, Option<String>) {
    let v = p.shared.view();
    match p.shared.availability(now) {
        Availability::Usable | Availability::Probe => (true, None),
        Availability::Throttled(until) => (
            true,
            Some(format!(
                "at its provider's per-minute limit until {}",
                humantime::format_rfc3339_seconds(until)
            )),
        ),
        Availability::Unusable(state) => {
            let mut why = state.as_str().to_owned();
            if let Some(until) = v.state_until(now) {
                why.push_str(&format!(
                    " until {}",
                    humantime::format_rfc3339_seconds(until)
                ));
            }
            match (state, &v.auth_failed, &v.last_error) {
                (StateName::AuthFailed, Some(reason), _) => why.push_str(&format!(" ({reason})")),
                (StateName::HalfOpen, _, _) => why.push_str(" (a probe is in flight)"),
                (_, _, Some(last)) => why.push_str(&format!(" (last failure: {last})")),
                _ => {}
            }
            (false, Some(why))
        }
    }
}

impl Readiness {
    /// The readiness of every profile and model of `config`, as of `now`.
    pub fn of(config: &Config, router: &Router, now: SystemTime) -> Readiness {
        let mut profiles = serde_json::Map::new();
        let mut usable_ids = Vec::new();
        for p in router.profiles() {
            let (usable, reason) = profile_readiness(&p, now);
            let state = p.shared.view().state_at(now).as_str();
            if usable {
                usable_ids.push(p.id().to_string());
            }
            profiles.insert(
                p.id().to_string(),
                serde_json::json!({"usable": usable, "state": state, "reason": reason}),
            );
        }
        let mut models = serde_json::Map::new();
        let mut models_ready = 0;
        for m in &config.models {
            let (ready, v) = model_readiness(&m.profiles, &profiles, &usable_ids);
            models_ready += usize::from(ready);
            models.insert(m.name.clone(), v);
        }
        Readiness {
            models_ready,
            models_total: config.models.len(),
            any_profile_usable: !usable_ids.is_empty(),
            models,
            profiles,
        }
    }
}

/// A model is ready when one of its profiles is usable; else the reason names each profile's.
fn model_readiness(
    ids: &[String],
    profiles: &serde_json::Map<String, serde_json::Value>,
    usable_ids: &[String],
) -> (bool, serde_json::Value) {
    let usable: Vec<&String> = ids.iter().filter(|p| usable_ids.contains(p)).collect();
    let ready = !usable.is_empty();
    let reason = (!ready).then(|| {
        let each: Vec<String> = ids
            .iter()
            .map(
                |id| match profiles.get(id).and_then(|p| p["reason"].as_str()) {
                    Some(why) => format!("{id}: {why}"),
                    None => format!("{id}: unknown"),
                },
            )
            .collect();
        format!("no usable profile: {}", each.join("; "))
    });
    let v = serde_json::json!({"ready": ready, "usable": usable, "reason": reason});
    (ready, v)
}
