//! `state:` where the state replicas share lives: `local` (each process alone) or `redis`.

use std::time::Duration;

use crate::config::raw::{RawRedis, RawState};
use crate::config::report::Report;
use crate::config::values::{count, duration};
use crate::config::{RedisConfig, StateBackend};

/// `state.redis.key_prefix`.
const DEFAULT_KEY_PREFIX: &str = "switchyard:";
/// `state.redis.command_timeout`: well above a local round trip (~0.1 ms), well below a request.
const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_millis(50);
/// `state.redis.margin`.
const DEFAULT_MARGIN: f64 = 0.1;
/// `state.redis.health_resync`: pushes carry changes at once; this only bounds how long a push
/// lost while a replica was cut off can stay unseen.
const DEFAULT_HEALTH_RESYNC: Duration = Duration::from_secs(1);

/// `state:` the backend, and with `redis` its connection settings.
pub(super) fn state(report: &mut Report, raw: &RawState) -> StateBackend {
    let wanted = raw.backend.as_ref().is_some_and(|b| b.as_str() == "redis");
    let redis = raw.redis.as_ref().map(|r| redis(report, r, wanted));
    match raw.backend.as_ref() {
        None => StateBackend::Local,
        Some(b) if b.as_str() == "local" => StateBackend::Local,
        Some(b) if b.as_str() == "redis" => match redis {
            Some(Some(r)) => StateBackend::Redis(r),
            // A missing or unusable url was reported where it is.
            Some(None) => StateBackend::Local,
            None => {
                report.at(
                    b.span(),
                    "state.redis.url",
                    "is required when `state.backend` is `redis`",
                );
                StateBackend::Local
            }
        },
        Some(b) => {
            report.at(
                b.span(),
                "state.backend",
                format!("unknown backend {:?}: expected local or redis", b.as_str()),
            );
            StateBackend::Local
        }
    }
}

/// `state.redis:` every key checked; `None` when the URL is missing or unusable (a missing one is an
/// error only when the backend is `redis`).
fn redis(
    report: &mut Report,
    raw: &marked_yaml::Spanned<RawRedis>,
    wanted: bool,
) -> Option<RedisConfig> {
    let key_prefix = match &raw.key_prefix {
        Some(p) if p.is_empty() => {
            report.at(p.span(), "state.redis.key_prefix", "must not be empty");
            DEFAULT_KEY_PREFIX.to_owned()
        }
        Some(p) => p.to_string(),
        None => DEFAULT_KEY_PREFIX.to_owned(),
    };
    let command_timeout = duration(
        report,
        "state.redis.command_timeout",
        raw.command_timeout.as_ref(),
        DEFAULT_COMMAND_TIMEOUT,
    );
    let replicas = count(
        report,
        "state.redis.replicas",
        raw.replicas.as_ref(),
        1,
        1,
        "must be >= 1",
    );
    let margin = match &raw.margin {
        Some(m) if !(m.is_finite() && **m >= 0.0 && **m < 1.0) => {
            report.at(m.span(), "state.redis.margin", "must be >= 0 and < 1");
            DEFAULT_MARGIN
        }
        Some(m) => **m,
        None => DEFAULT_MARGIN,
    };
    let health_resync = duration(
        report,
        "state.redis.health_resync",
        raw.health_resync.as_ref(),
        DEFAULT_HEALTH_RESYNC,
    );
    let credit_allowance_micros = match &raw.credit_allowance_usd {
        Some(a) if !(a.is_finite() && **a >= 0.0 && **a <= 1e6) => {
            report.at(
                a.span(),
                "state.redis.credit_allowance_usd",
                "must be between 0 and 1000000",
            );
            0
        }
        // Bounded above: the cast cannot wrap.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Some(a) => (**a * 1e6).round() as u64,
        None => 0,
    };
    let url = match &raw.url {
        None => {
            if wanted {
                report.at(
                    raw.span(),
                    "state.redis.url",
                    "is required when `state.backend` is `redis`",
                );
            }
            return None;
        }
        Some(u) => u,
    };
    let parsed = url::Url::parse(url).ok();
    if !parsed.is_some_and(|p| p.scheme() == "redis" && p.host_str().is_some_and(|h| !h.is_empty()))
    {
        report.at(
            url.span(),
            "state.redis.url",
            "must be a redis://host:port/db URL",
        );
        return None;
    }
    Some(RedisConfig {
        url: url.to_string(),
        key_prefix,
        command_timeout,
        replicas,
        margin,
        health_resync,
        credit_allowance_micros,
    })
}
