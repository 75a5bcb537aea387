//! Stage 2 of loading: the raw types checked and turned into the validated [`Config`]. Every check
//! reports into the [`Report`] and goes on with a stand-in value, so one pass finds every problem.
//! Profiles, the largest section, are checked in [`profile`].

mod profile;
mod state;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;
use marked_yaml::Spanned;

use super::raw::{
    RawAuth, RawConfig, RawIssuer, RawModel, RawNotify, RawRouting, RawServer, RawTier, Text,
};
use super::report::{line_of, Report};
use super::values::{
    cooldown, count, duration, env_name, parse_size, price, pricing, retention, socket_addr,
    strategy, timeouts, usd_micros, DEFAULT_ACCESS_TOKEN_TTL, DEFAULT_ADMIN_TOKEN_ENV,
    DEFAULT_BILLING_COOLDOWN, DEFAULT_BREAKER, DEFAULT_COOLDOWN, DEFAULT_DATA_DIR,
    DEFAULT_JWKS_MAX_AGE, DEFAULT_JWKS_REFETCH, DEFAULT_JWT_SECRET_ENV, DEFAULT_LOGIN,
    DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_KEYS_PER_ACCOUNT,
    DEFAULT_REFRESH_TOKEN_TTL, DEFAULT_STICKY_TTL, DEFAULT_TIMEOUTS,
};
use super::{
    AuthConfig, BreakerSettings, ClaimMapping, Config, HealthPolicy, IssuerConfig, IssuerKeys,
    LoginLimits, ModelConfig, NotifyConfig, ProfileConfig, RoutingConfig, ServerConfig,
    StickyConfig, StickySource, Strategy, TierConfig, UsageConfig,
};

/// The `iss` of Switchyard's own access tokens; an external issuer cannot take it.
pub const OWN_ISSUER: &str = "switchyard";

/// Checks everything and builds the config. The returned value is meaningful only when `report`
/// stayed empty; on errors it is filled with defaults and thrown away by the caller.
pub(super) fn validate(report: &mut Report, source: &Path, raw: RawConfig) -> Config {
    let server = server(report, &raw.server);
    let auth = auth(report, &raw.auth);
    let routing = routing(report, &raw.routing);
    let durable = raw.usage.durable.unwrap_or(true);
    let fsync = match &raw.usage.fsync {
        Some(f) if **f && !durable => {
            let message = "needs `usage.durable: true` (fsync says how a durable response waits)";
            report.at(f.span(), "usage.fsync", message);
            false
        }
        Some(f) => **f,
        None => false,
    };
    let usage = UsageConfig {
        durable,
        fsync,
        retention: retention(report, "usage.retention", raw.usage.retention.as_ref()),
        reservation_lease: duration(
            report,
            "credits.reservation_lease",
            raw.credits.reservation_lease.as_ref(),
            Duration::from_secs(600),
        ),
        notify: raw.credits.notify.as_ref().map(|n| notify(report, n)),
    };

    let mut ids: HashMap<String, usize> = HashMap::new();
    let profiles: Vec<ProfileConfig> = raw
        .profiles
        .iter()
        .enumerate()
        .map(|(i, p)| profile::profile(report, i, p, &mut ids, routing.timeouts))
        .collect();

    // A profile whose id could not be read may be the one a model names: then "unknown profile"
    // would be a guess, so the references are not checked.
    let ids_known = !report.is_unreadable("profiles")
        && (0..raw.profiles.len()).all(|i| !report.is_unreadable(&format!("profiles[{i}].id")));
    let profile_ids = ids_known.then_some(&ids);
    let mut names: HashMap<String, usize> = HashMap::new();
    let models = raw
        .models
        .iter()
        .enumerate()
        .map(|(i, m)| model(report, i, m, &mut names, profile_ids))
        .collect();

    let config = Config {
        source: source.to_path_buf(),
        server,
        auth,
        routing,
        usage,
        state: state::state(report, &raw.state),
        models,
        profiles,
        tiers: tiers(report, &raw.tiers),
        pricing: pricing(report, "pricing", &raw.pricing),
        pricing_default: raw
            .pricing_default
            .as_ref()
            .map(|p| price(report, "pricing_default", p)),
    };
    warn_unpriced(report, &raw, &config);
    config
}

/// `credits.notify:` an http(s) URL and thresholds in (0, 1].
fn notify(report: &mut Report, raw: &Spanned<RawNotify>) -> NotifyConfig {
    let url = match &raw.url {
        None => {
            report.at(raw.span(), "credits.notify.url", "is required");
            String::new()
        }
        Some(u) if !(u.starts_with("http://") || u.starts_with("https://")) => {
            report.at(
                u.span(),
                "credits.notify.url",
                "must be an http:// or https:// URL",
            );
            String::new()
        }
        Some(u) => u.to_string(),
    };
    let mut thresholds = Vec::new();
    match &raw.thresholds {
        None => thresholds.extend([0.8, 0.95, 1.0]),
        Some(list) => {
            for (i, t) in list.iter().enumerate() {
                if !(t.is_finite() && **t > 0.0 && **t <= 1.0) {
                    report.at(
                        t.span(),
                        format!("credits.notify.thresholds[{i}]"),
                        "must be > 0 and <= 1",
                    );
                } else {
                    thresholds.push(**t);
                }
            }
        }
    }
    thresholds.sort_by(f64::total_cmp);
    thresholds.dedup();
    NotifyConfig {
        url,
        thresholds,
        secret_env: raw
            .secret_env
            .as_ref()
            // The billing webhook's variable (`limits::webhook::SECRET_ENV`): one secret signs both.
            .map_or_else(
                || "SWITCHYARD_BILLING_WEBHOOK_SECRET".to_owned(),
                |s| s.to_string(),
            ),
    }
}

/// A model without a price is refused to metered tiers (unless `pricing_default` covers it): `check`
/// says so for each one.
fn warn_unpriced(report: &mut Report, raw: &RawConfig, config: &Config) {
    let metered: Vec<&str> = config
        .tiers
        .iter()
        .filter(|(_, t)| t.monthly_credits_micros.is_some())
        .map(|(name, _)| name.as_str())
        .collect();
    if metered.is_empty() || config.pricing_default.is_some() {
        return;
    }
    for (i, m) in raw.models.iter().enumerate() {
        let Some(spanned) = m.name.as_ref() else {
            continue;
        };
        let name = spanned.as_str();
        if !config.lists_price(name) {
            let tiers = metered.iter().map(|t| format!("`{t}`")).collect::<Vec<_>>();
            report.warn(
                spanned.span(),
                format!("models[{i}].name"),
                format!(
                    "`{name}` has no price, so the metered tiers ({}) are refused it; price it under \
                     `pricing:` or set `pricing_default`",
                    tiers.join(", ")
                ),
            );
        }
    }
}

/// `server:`
fn server(report: &mut Report, raw: &RawServer) -> ServerConfig {
    ServerConfig {
        listen: socket_addr(report, "server.listen", raw.listen.as_ref()),
        data_dir: match &raw.data_dir {
            Some(dir) if dir.trim().is_empty() => {
                report.at(dir.span(), "server.data_dir", "must not be empty");
                PathBuf::from(DEFAULT_DATA_DIR)
            }
            Some(dir) => PathBuf::from(dir.as_str()),
            None => PathBuf::from(DEFAULT_DATA_DIR),
        },
        max_body_bytes: match &raw.max_body_size {
            Some(size) => match parse_size(size) {
                Ok(bytes) => bytes,
                Err(message) => {
                    report.at(size.span(), "server.max_body_size", message);
                    DEFAULT_MAX_BODY_BYTES
                }
            },
            None => DEFAULT_MAX_BODY_BYTES,
        },
        store_cache_bytes: match &raw.store_cache_size {
            Some(size) => match parse_size(size) {
                Ok(bytes) => u64::try_from(bytes).unwrap_or(u64::MAX),
                Err(message) => {
                    report.at(size.span(), "server.store_cache_size", message);
                    switchyard_actors::store::DEFAULT_CACHE_BYTES
                }
            },
            None => switchyard_actors::store::DEFAULT_CACHE_BYTES,
        },
        body_idle_timeout: duration(
            report,
            "server.body_idle_timeout",
            raw.body_idle_timeout.as_ref(),
            DEFAULT_BODY_IDLE_TIMEOUT,
        ),
        body_timeout: duration(
            report,
            "server.body_timeout",
            raw.body_timeout.as_ref(),
            DEFAULT_BODY_TIMEOUT,
        ),
    }
}

/// `server.body_idle_timeout`: a client that sends nothing for this long is not sending a body.
const DEFAULT_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// `server.body_timeout`: 10 MiB (the default body limit) at well under 1 Mbit/s still fits.
const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// `routing:`
fn routing(report: &mut Report, r: &RawRouting) -> RoutingConfig {
    RoutingConfig {
        strategy: strategy(report, "routing.strategy", r.strategy.as_ref())
            .unwrap_or(Strategy::RoundRobin),
        max_attempts: count(
            report,
            "routing.max_attempts",
            r.max_attempts.as_ref(),
            DEFAULT_MAX_ATTEMPTS,
            1,
            "must be >= 1",
        ),
        sticky: StickyConfig {
            enabled: r.sticky.enabled.unwrap_or(true),
            ttl: duration(
                report,
                "routing.sticky.ttl",
                r.sticky.ttl.as_ref(),
                DEFAULT_STICKY_TTL,
            ),
            sources: sticky_sources(report, r.sticky.sources.as_ref()),
        },
        health: HealthPolicy {
            cooldown: cooldown(report, "routing.cooldown", &r.cooldown, DEFAULT_COOLDOWN),
            billing: cooldown(
                report,
                "routing.billing_cooldown",
                &r.billing_cooldown,
                DEFAULT_BILLING_COOLDOWN,
            ),
            breaker: BreakerSettings {
                failure_threshold: count(
                    report,
                    "routing.breaker.failure_threshold",
                    r.breaker.failure_threshold.as_ref(),
                    DEFAULT_BREAKER.failure_threshold,
                    1,
                    "must be >= 1",
                ),
                open_for: duration(
                    report,
                    "routing.breaker.open_for",
                    r.breaker.open_for.as_ref(),
                    DEFAULT_BREAKER.open_for,
                ),
            },
        },
        timeouts: timeouts(report, "routing.timeouts", &r.timeouts, DEFAULT_TIMEOUTS),
    }
}

/// `routing.sticky.sources`: each a `header:NAME` or `body:FIELD`, none twice, at least one.
fn sticky_sources(report: &mut Report, raw: Option<&Spanned<Vec<Text>>>) -> Vec<StickySource> {
    let Some(list) = raw else {
        return StickySource::defaults();
    };
    if list.is_empty() {
        let why = "must list at least one source (set routing.sticky.enabled: false to turn stickiness off)";
        report.at(list.span(), "routing.sticky.sources", why);
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, text) in list.iter().enumerate() {
        let path = format!("routing.sticky.sources[{i}]");
        match StickySource::parse(text) {
            Ok(s) if out.contains(&s) => report.at(text.span(), path, "listed twice"),
            Ok(s) => out.push(s),
            Err(why) => report.at(text.span(), path, why),
        }
    }
    out
}

/// `tiers:` each limit a positive count, credits a non-negative amount.
fn tiers(report: &mut Report, raw: &IndexMap<String, RawTier>) -> IndexMap<String, TierConfig> {
    let mut out = IndexMap::new();
    for (name, t) in raw {
        let path = format!("tiers.{name}");
        let limit = |report: &mut Report, key: &str, v: Option<&Spanned<i64>>| match v {
            Some(v) if **v < 0 => {
                report.at(v.span(), format!("{path}.{key}"), "must be >= 0");
                None
            }
            Some(v) => u64::try_from(**v).ok(),
            None => None,
        };
        let requests_per_hour = limit(report, "requests_per_hour", t.requests_per_hour.as_ref());
        let llm_requests_per_hour = limit(
            report,
            "llm_requests_per_hour",
            t.llm_requests_per_hour.as_ref(),
        );
        let tokens_per_day = limit(report, "tokens_per_day", t.tokens_per_day.as_ref());
        let max_tokens_per_request = limit(
            report,
            "max_tokens_per_request",
            t.max_tokens_per_request.as_ref(),
        );
        let max_keys =
            limit(report, "max_keys", t.max_keys.as_ref()).and_then(|n| u32::try_from(n).ok());
        let monthly_credits_micros = t
            .monthly_credits
            .as_ref()
            .and_then(|v| usd_micros(report, &format!("{path}.monthly_credits"), v));
        let rate_window = duration(
            report,
            &format!("{path}.rate_window"),
            t.rate_window.as_ref(),
            Duration::from_secs(60 * 60),
        );
        out.insert(
            name.clone(),
            TierConfig {
                requests_per_hour,
                llm_requests_per_hour,
                tokens_per_day,
                max_tokens_per_request,
                max_keys,
                monthly_credits_micros,
                rate_window,
            },
        );
    }
    out
}

/// `auth:`
fn auth(report: &mut Report, raw: &RawAuth) -> AuthConfig {
    let env_or = |report: &mut Report, path: &str, raw: Option<&Text>, default: &str| match raw {
        Some(name) => env_name(report, path, name),
        None => default.to_owned(),
    };
    let login = &raw.login;
    let mut seen: HashMap<String, usize> = HashMap::new();
    AuthConfig {
        required: raw.required.unwrap_or(true),
        admin_token_env: env_or(
            report,
            "auth.admin_token_env",
            raw.admin_token_env.as_ref(),
            DEFAULT_ADMIN_TOKEN_ENV,
        ),
        jwt_secret_env: env_or(
            report,
            "auth.jwt_secret_env",
            raw.jwt_secret_env.as_ref(),
            DEFAULT_JWT_SECRET_ENV,
        ),
        access_token_ttl: duration(
            report,
            "auth.access_token_ttl",
            raw.access_token_ttl.as_ref(),
            DEFAULT_ACCESS_TOKEN_TTL,
        ),
        refresh_token_ttl: duration(
            report,
            "auth.refresh_token_ttl",
            raw.refresh_token_ttl.as_ref(),
            DEFAULT_REFRESH_TOKEN_TTL,
        ),
        max_keys_per_account: count(
            report,
            "auth.max_keys_per_account",
            raw.max_keys_per_account.as_ref(),
            DEFAULT_MAX_KEYS_PER_ACCOUNT,
            1,
            "must be >= 1",
        ),
        login: LoginLimits {
            max_failures_per_account: count(
                report,
                "auth.login.max_failures_per_account",
                login.max_failures_per_account.as_ref(),
                DEFAULT_LOGIN.max_failures_per_account,
                1,
                "must be >= 1",
            ),
            max_attempts_per_address: count(
                report,
                "auth.login.max_attempts_per_address",
                login.max_attempts_per_address.as_ref(),
                DEFAULT_LOGIN.max_attempts_per_address,
                1,
                "must be >= 1",
            ),
            window: duration(
                report,
                "auth.login.window",
                login.window.as_ref(),
                DEFAULT_LOGIN.window,
            ),
        },
        issuers: raw
            .issuers
            .iter()
            .enumerate()
            .map(|(i, r)| issuer(report, i, r, &mut seen))
            .collect(),
    }
}

/// One entry of `auth.issuers`.
fn issuer(
    report: &mut Report,
    index: usize,
    raw: &Spanned<RawIssuer>,
    seen: &mut HashMap<String, usize>,
) -> IssuerConfig {
    let at = |key: &str| format!("auth.issuers[{index}].{key}");
    let issuer = issuer_name(report, index, raw, seen);
    let audience = match &raw.audience {
        None => {
            report.at(raw.span(), at("audience"), "required key is missing");
            String::new()
        }
        Some(aud) if aud.trim().is_empty() => {
            report.at(aud.span(), at("audience"), "must not be empty");
            String::new()
        }
        Some(aud) => aud.to_string(),
    };
    let keys = issuer_keys(report, index, raw);
    let mut claim = |key: &str, value: &Option<Text>| -> Option<String> {
        let value = value.as_ref()?;
        if value.trim().is_empty() {
            report.at(
                value.span(),
                at(&format!("claims.{key}")),
                "must not be empty",
            );
        }
        Some(value.to_string())
    };
    let c = &raw.claims;
    IssuerConfig {
        issuer,
        audience,
        keys,
        claims: ClaimMapping {
            subject: claim("subject", &c.subject).unwrap_or_else(|| "sub".to_owned()),
            role: claim("role", &c.role),
            tier: claim("tier", &c.tier),
            project: claim("project", &c.project),
        },
    }
}

/// An issuer's `issuer`: required, not Switchyard's own, unique (`seen` maps each to its line).
fn issuer_name(
    report: &mut Report,
    index: usize,
    raw: &Spanned<RawIssuer>,
    seen: &mut HashMap<String, usize>,
) -> String {
    let at = |key: &str| format!("auth.issuers[{index}].{key}");
    match &raw.issuer {
        None => {
            report.at(raw.span(), at("issuer"), "required key is missing");
            String::new()
        }
        Some(iss) if iss.trim().is_empty() => {
            report.at(iss.span(), at("issuer"), "must not be empty");
            String::new()
        }
        Some(iss) if iss.as_str() == OWN_ISSUER => {
            let message = format!("{OWN_ISSUER:?} is reserved for Switchyard's own tokens");
            report.at(iss.span(), at("issuer"), message);
            String::new()
        }
        Some(iss) => {
            if let Some(first) = seen.get(iss.as_str()) {
                let message = format!(
                    "duplicate issuer {:?} (first defined at line {first})",
                    iss.as_str()
                );
                report.at(iss.span(), at("issuer"), message);
            } else {
                seen.insert(iss.to_string(), line_of(iss.span()));
            }
            iss.to_string()
        }
    }
}

/// Where an issuer's keys come from: exactly one of `jwks_url` (with its fetch intervals) and
/// `shared_secret_env`.
fn issuer_keys(report: &mut Report, index: usize, raw: &Spanned<RawIssuer>) -> IssuerKeys {
    let at = |key: &str| format!("auth.issuers[{index}].{key}");
    match (&raw.jwks_url, &raw.shared_secret_env) {
        (Some(url), None) => {
            if !(url.starts_with("https://") || url.starts_with("http://"))
                || url.chars().any(char::is_whitespace)
            {
                let message = "must be an http:// or https:// URL";
                report.at(url.span(), at("jwks_url"), message);
            }
            IssuerKeys::Jwks {
                url: url.to_string(),
                refetch_interval: duration(
                    report,
                    &at("jwks_refetch_interval"),
                    raw.jwks_refetch_interval.as_ref(),
                    DEFAULT_JWKS_REFETCH,
                ),
                max_age: duration(
                    report,
                    &at("jwks_max_age"),
                    raw.jwks_max_age.as_ref(),
                    DEFAULT_JWKS_MAX_AGE,
                ),
            }
        }
        (None, Some(env)) => {
            for (key, value) in [
                ("jwks_refetch_interval", &raw.jwks_refetch_interval),
                ("jwks_max_age", &raw.jwks_max_age),
            ] {
                match value {
                    // jwks_url was written, with the wrong type (and reported as such).
                    Some(_) if report.is_unreadable(&at("jwks_url")) => {}
                    Some(value) => report.at(value.span(), at(key), "only applies with jwks_url"),
                    None => {}
                }
            }
            IssuerKeys::SharedSecret {
                env: env_name(report, &at("shared_secret_env"), env),
            }
        }
        (Some(_), Some(env)) => {
            let message = "jwks_url and shared_secret_env are mutually exclusive (set one)";
            report.at(env.span(), at("shared_secret_env"), message);
            IssuerKeys::SharedSecret { env: String::new() }
        }
        (None, None) => {
            // Unless one of the two was written with the wrong type (and reported as such).
            if !report.is_unreadable(&at("shared_secret_env")) {
                let message = "required key is missing (set jwks_url or shared_secret_env)";
                report.at(raw.span(), at("jwks_url"), message);
            }
            IssuerKeys::SharedSecret { env: String::new() }
        }
    }
}

/// One entry of `models:`: a unique name and defined profiles, each listed once. `profile_ids` is
/// `None` when some profile's id could not be read: then any name may be defined.
fn model(
    report: &mut Report,
    index: usize,
    raw: &Spanned<RawModel>,
    names: &mut HashMap<String, usize>,
    profile_ids: Option<&HashMap<String, usize>>,
) -> ModelConfig {
    let at = |key: &str| format!("models[{index}].{key}");

    let name = match &raw.name {
        None => {
            report.at(raw.span(), at("name"), "required key is missing");
            String::new()
        }
        Some(name) if name.trim().is_empty() => {
            report.at(name.span(), at("name"), "must not be empty");
            String::new()
        }
        Some(name) => {
            wildcard_shape(report, &at("name"), name);
            if let Some(first) = names.get(name.as_str()) {
                let message = format!(
                    "duplicate model name {:?} (first defined at line {first})",
                    name.as_str()
                );
                report.at(name.span(), at("name"), message);
            } else {
                names.insert(name.to_string(), line_of(name.span()));
            }
            name.to_string()
        }
    };

    let mut profiles = Vec::new();
    match &raw.profiles {
        None => report.at(raw.span(), at("profiles"), "required key is missing"),
        Some(list) if list.is_empty() => report.at(
            list.span(),
            at("profiles"),
            "must list at least one profile",
        ),
        Some(list) => {
            for (j, id) in list.iter().enumerate() {
                let path = at(&format!("profiles[{j}]"));
                if !profile_ids.is_none_or(|ids| ids.contains_key(id.as_str())) {
                    report.at(
                        id.span(),
                        path,
                        format!("unknown profile {:?}", id.as_str()),
                    );
                } else if profiles.iter().any(|p| p == id.as_str()) {
                    report.at(
                        id.span(),
                        path,
                        format!("profile {:?} listed twice", id.as_str()),
                    );
                } else {
                    profiles.push(id.to_string());
                }
            }
        }
    }

    let mut aliases = Vec::new();
    for (j, alias) in raw.aliases.iter().enumerate() {
        let path = at(&format!("aliases[{j}]"));
        if alias.trim().is_empty() {
            report.at(alias.span(), path, "must not be empty");
        } else if alias.contains('*') {
            let message = "an alias is one name, without `*` (make a wildcard model instead)";
            report.at(alias.span(), path, message);
        } else if let Some(first) = names.get(alias.as_str()) {
            let message = format!(
                "alias {:?} collides with a model name or alias at line {first}",
                alias.as_str()
            );
            report.at(alias.span(), path, message);
        } else {
            names.insert(alias.to_string(), line_of(alias.span()));
            aliases.push(alias.to_string());
        }
    }

    if name.ends_with('*') {
        if let Some(first) = raw.aliases.first() {
            let message =
                "a pattern takes no aliases (an alias names one model; add a model for it)";
            report.at(first.span(), at("aliases"), message);
            aliases.clear();
        }
    }

    ModelConfig {
        name,
        aliases,
        profiles,
        strategy: strategy(report, &at("strategy"), raw.strategy.as_ref()),
    }
}

/// A model name holds at most one `*`, and only as its last character (`openrouter/*`): a prefix
/// pattern, never a glob in the middle, so that which pattern a name matches is obvious.
fn wildcard_shape(report: &mut Report, path: &str, name: &Text) {
    let stars = name.matches('*').count();
    if stars > 1 || (stars == 1 && !name.ends_with('*')) {
        let message = format!(
            "invalid model name {:?}: one `*` only, at the end (e.g. \"openrouter/*\")",
            name.as_str()
        );
        report.at(name.span(), path, message);
    }
}
