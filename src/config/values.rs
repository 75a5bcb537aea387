//! Parsers for the values of profiles.yaml (durations, counts, sizes, addresses, names, amounts) and
//! the defaults used when a key is left out. Each parser reports what it rejects and returns a usable
//! value anyway, so that the other checks can go on.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use indexmap::IndexMap;
use marked_yaml::Spanned;

use super::raw::{RawCooldown, RawPrice, RawTimeouts, Text};
use super::report::Report;
use super::{BreakerSettings, CooldownPolicy, LoginLimits, ModelPrice, Strategy, Timeouts};

// Defaults; mod.rs documents each next to its field.

/// `server.listen`.
pub(super) const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 8080));
/// `server.data_dir`.
pub(super) const DEFAULT_DATA_DIR: &str = "./data";
/// `server.max_body_size`.
pub(super) const DEFAULT_MAX_BODY_BYTES: usize = 10 * 1024 * 1024;
/// `auth.admin_token_env`.
pub(super) const DEFAULT_ADMIN_TOKEN_ENV: &str = "SWITCHYARD_ADMIN_TOKEN";
/// `auth.jwt_secret_env`.
pub(super) const DEFAULT_JWT_SECRET_ENV: &str = "SWITCHYARD_JWT_SECRET";
/// `auth.access_token_ttl`.
pub(super) const DEFAULT_ACCESS_TOKEN_TTL: Duration = Duration::from_secs(30 * 60);
/// `auth.refresh_token_ttl`.
pub(super) const DEFAULT_REFRESH_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// `auth.max_keys_per_account`.
pub(super) const DEFAULT_MAX_KEYS_PER_ACCOUNT: u32 = 10;
/// `auth.login`.
pub(super) const DEFAULT_LOGIN: LoginLimits = LoginLimits {
    max_failures_per_account: 5,
    max_attempts_per_address: 20,
    window: Duration::from_secs(5 * 60),
};
/// `auth.issuers[].jwks_refetch_interval`.
pub(super) const DEFAULT_JWKS_REFETCH: Duration = Duration::from_secs(30);
/// `auth.issuers[].jwks_max_age`.
pub(super) const DEFAULT_JWKS_MAX_AGE: Duration = Duration::from_secs(60 * 60);
/// `routing.max_attempts`.
pub(super) const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// `routing.sticky.ttl`.
pub(super) const DEFAULT_STICKY_TTL: Duration = Duration::from_secs(30 * 60);
/// `routing.cooldown`.
pub(super) const DEFAULT_COOLDOWN: CooldownPolicy = CooldownPolicy {
    initial: Duration::from_secs(1),
    max: Duration::from_secs(5 * 60),
};
/// `routing.billing_cooldown`.
pub(super) const DEFAULT_BILLING_COOLDOWN: CooldownPolicy = CooldownPolicy {
    initial: Duration::from_secs(5 * 60 * 60),
    max: Duration::from_secs(24 * 60 * 60),
};
/// `routing.breaker`.
pub(super) const DEFAULT_BREAKER: BreakerSettings = BreakerSettings {
    failure_threshold: 5,
    open_for: Duration::from_secs(30),
};
/// `routing.timeouts`, which a profile's `timeouts:` overrides key by key.
pub(super) const DEFAULT_TIMEOUTS: Timeouts = Timeouts {
    connect: Duration::from_secs(5),
    first_byte: Duration::from_secs(60),
    idle: Duration::from_secs(60),
};
/// `profiles[].priority`.
pub(super) const DEFAULT_PRIORITY: u32 = 1;
/// `profiles[].weight`.
pub(super) const DEFAULT_WEIGHT: u32 = 1;

/// A USD amount as whole micro-USD; negative, NaN or absurd amounts are errors.
pub(super) fn usd_micros(report: &mut Report, path: &str, v: &Spanned<f64>) -> Option<u64> {
    if !v.is_finite() || **v < 0.0 || **v > 1e12 {
        report.at(v.span(), path, "must be a number of USD between 0 and 1e12");
        return None;
    }
    // Bounded above, so the cast cannot wrap.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Some((**v * 1e6).round() as u64)
}

/// `round_robin`, `priority`, `random` or `weighted`; `None` when absent or unknown (reported).
pub(super) fn strategy(report: &mut Report, path: &str, raw: Option<&Text>) -> Option<Strategy> {
    let raw = raw?;
    let parsed = Strategy::parse(raw);
    if parsed.is_none() {
        let message = format!(
            "unknown strategy {:?} (expected one of: round_robin, priority, random, weighted)",
            raw.as_str()
        );
        report.at(raw.span(), path, message);
    }
    parsed
}

/// A non-negative count that fits a u32 and is at least `min`.
pub(super) fn count(
    report: &mut Report,
    path: &str,
    raw: Option<&Spanned<i64>>,
    default: u32,
    min: i64,
    below_min: &str,
) -> u32 {
    let Some(raw) = raw else { return default };
    if **raw < min {
        report.at(raw.span(), path, below_min);
        return default;
    }
    match u32::try_from(**raw) {
        Ok(n) => n,
        Err(_) => {
            report.at(raw.span(), path, format!("must be <= {}", u32::MAX));
            default
        }
    }
}

/// A positive humantime duration (`250ms`, `5m`, `1d`); `default` when absent or invalid.
pub(super) fn duration(
    report: &mut Report,
    path: &str,
    raw: Option<&Text>,
    default: Duration,
) -> Duration {
    let Some(raw) = raw else { return default };
    match humantime::parse_duration(raw) {
        Ok(d) if d.is_zero() => {
            report.at(raw.span(), path, "must be > 0");
            default
        }
        Ok(d) => d,
        Err(e) => {
            let message = format!(
                "invalid duration {:?}: {e} (e.g. 250ms, 1s, 5m, 5h)",
                raw.as_str()
            );
            report.at(raw.span(), path, message);
            default
        }
    }
}

/// What `usage.retention` keeps when the config says nothing: three months, so the last full
/// calendar month's reports are always there, while the store stays bounded.
pub(super) const DEFAULT_RETENTION: Duration = Duration::from_secs(90 * 24 * 60 * 60);

/// A retention: a humantime duration of at least 1s, or `0` / `forever` to keep everything (`None`).
pub(super) fn retention(report: &mut Report, path: &str, raw: Option<&Text>) -> Option<Duration> {
    let Some(raw) = raw else {
        return Some(DEFAULT_RETENTION);
    };
    if matches!(raw.as_str().trim(), "0" | "forever") {
        return None;
    }
    match humantime::parse_duration(raw) {
        Ok(d) if d.is_zero() => None,
        Ok(d) if d < Duration::from_secs(1) => {
            report.at(
                raw.span(),
                path,
                "must be at least 1s (or 0 / forever to keep every record)",
            );
            Some(DEFAULT_RETENTION)
        }
        Ok(d) => Some(d),
        Err(e) => {
            let message = format!(
                "invalid duration {:?}: {e} (e.g. 30d, 12h; 0 or forever keeps every record)",
                raw.as_str()
            );
            report.at(raw.span(), path, message);
            Some(DEFAULT_RETENTION)
        }
    }
}

/// A cooldown's `initial` and `max`, with `initial <= max`.
pub(super) fn cooldown(
    report: &mut Report,
    path: &str,
    raw: &RawCooldown,
    default: CooldownPolicy,
) -> CooldownPolicy {
    let errors_before = report.error_count();
    let initial = duration(
        report,
        &format!("{path}.initial"),
        raw.initial.as_ref(),
        default.initial,
    );
    let max = duration(
        report,
        &format!("{path}.max"),
        raw.max.as_ref(),
        default.max,
    );
    // A value that could not be read stands in as its default: comparing with that would guess.
    let guessed = ["initial", "max"]
        .iter()
        .any(|key| report.is_unreadable(&format!("{path}.{key}")));
    if report.error_count() == errors_before && !guessed && initial > max {
        let shown = |d: Duration| humantime::format_duration(d).to_string();
        // Point at whichever of the two the file wrote, initial first.
        if let Some(written) = &raw.initial {
            let message = format!("must be <= max ({})", shown(max));
            report.at(written.span(), format!("{path}.initial"), message);
        } else if let Some(written) = &raw.max {
            let message = format!("must be >= initial ({})", shown(initial));
            report.at(written.span(), format!("{path}.max"), message);
        }
    }
    CooldownPolicy { initial, max }
}

/// Each timeout of `raw`, falling back key by key to `defaults`.
pub(super) fn timeouts(
    report: &mut Report,
    path: &str,
    raw: &RawTimeouts,
    defaults: Timeouts,
) -> Timeouts {
    Timeouts {
        connect: duration(
            report,
            &format!("{path}.connect"),
            raw.connect.as_ref(),
            defaults.connect,
        ),
        first_byte: duration(
            report,
            &format!("{path}.first_byte"),
            raw.first_byte.as_ref(),
            defaults.first_byte,
        ),
        idle: duration(
            report,
            &format!("{path}.idle"),
            raw.idle.as_ref(),
            defaults.idle,
        ),
    }
}

/// An `IP:PORT` listen address; the default listen address when absent or invalid.
pub(super) fn socket_addr(report: &mut Report, path: &str, raw: Option<&Text>) -> SocketAddr {
    let Some(raw) = raw else {
        return DEFAULT_LISTEN;
    };
    match raw.parse() {
        Ok(addr) => addr,
        Err(e) => {
            let message = format!(
                "invalid address {:?}: {e} (e.g. 127.0.0.1:8080)",
                raw.as_str()
            );
            report.at(raw.span(), path, message);
            DEFAULT_LISTEN
        }
    }
}

/// `[A-Za-z_][A-Za-z0-9_]*`: names a shell can export.
pub(super) fn env_name(report: &mut Report, path: &str, raw: &Text) -> String {
    let mut chars = raw.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        let message = format!(
            "invalid environment variable name {:?} (letters, digits and _, not starting with a digit)",
            raw.as_str()
        );
        report.at(raw.span(), path, message);
    }
    raw.to_string()
}

/// `1048576`, `512KiB`, `10MiB`, `1MB`, `2 GB`: decimal (kB, MB, GB) and binary (KiB, MiB, GiB) units.
pub(super) fn parse_size(raw: &str) -> Result<usize, String> {
    let text = raw.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let invalid = || format!("invalid size {raw:?} (e.g. 1048576, 512KiB, 10MiB, 1MB)");
    let number: u64 = digits.parse().map_err(|_| invalid())?;
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" | "KB" | "K" => 1_000,
        "KiB" => 1 << 10,
        "MB" | "M" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" | "G" => 1_000_000_000,
        "GiB" => 1 << 30,
        _ => return Err(invalid()),
    };
    let bytes = number
        .checked_mul(multiplier)
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(|| format!("size {raw:?} is too large"))?;
    if bytes == 0 {
        return Err("must be > 0".to_owned());
    }
    Ok(bytes)
}

/// `pricing:` (and a profile's): every entry through `price`.
pub(crate) fn pricing(
    report: &mut Report,
    prefix: &str,
    raw: &IndexMap<String, Spanned<RawPrice>>,
) -> IndexMap<String, ModelPrice> {
    raw.iter()
        .map(|(model, p)| {
            (
                model.clone(),
                price(report, &format!("{prefix}.{model}"), p),
            )
        })
        .collect()
}

/// One price: `input_per_million` and `output_per_million` required, every rate non-negative.
pub(crate) fn price(report: &mut Report, path: &str, p: &Spanned<RawPrice>) -> ModelPrice {
    let mut rate = |key: &str, v: Option<&Spanned<f64>>, default: Option<f64>| match (v, default) {
        (None, Some(d)) => d,
        (None, None) => {
            report.at(p.span(), format!("{path}.{key}"), "is required");
            0.0
        }
        (Some(v), _) if !v.is_finite() || **v < 0.0 => {
            report.at(v.span(), format!("{path}.{key}"), "must be >= 0");
            0.0
        }
        (Some(v), _) => **v,
    };
    let input = rate("input_per_million", p.input_per_million.as_ref(), None);
    let output = rate("output_per_million", p.output_per_million.as_ref(), None);
    let cached = rate(
        "cached_input_per_million",
        p.cached_input_per_million.as_ref(),
        Some(input),
    );
    let write = rate(
        "cache_write_per_million",
        p.cache_write_per_million.as_ref(),
        Some(input),
    );
    let write_1h = rate(
        "cache_write_1h_per_million",
        p.cache_write_1h_per_million.as_ref(),
        Some(write),
    );
    let reasoning = rate(
        "reasoning_per_million",
        p.reasoning_per_million.as_ref(),
        Some(output),
    );
    ModelPrice {
        input_per_million: input,
        output_per_million: output,
        cached_input_per_million: cached,
        cache_write_per_million: write,
        cache_write_1h_per_million: write_1h,
        reasoning_per_million: reasoning,
    }
}
