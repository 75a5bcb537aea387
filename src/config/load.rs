//! Loading profiles.yaml: YAML with positions -> raw types -> the validated [`Config`].
//!
//! Every problem is reported at once, each as `FILE:LINE:COLUMN: key.path: message`. Only a YAML
//! syntax error or a value of the wrong YAML type stops the load early (there is no tree or no raw
//! value to check further); unknown keys are collected one by one and the rest is still checked.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;
use marked_yaml::{LoadError, LoaderOptions, Marker, Node, Span, Spanned};

use super::raw::RawProfileAuth;
use super::raw::{
    RawAuth, RawConfig, RawCooldown, RawIssuer, RawModel, RawPrice, RawProfile, RawTier,
    RawTimeouts, Text,
};
use super::{
    ApiKeySource, AuthConfig, BreakerSettings, ClaimMapping, Config, CooldownPolicy, HealthPolicy,
    IssuerConfig, IssuerKeys, LoginLimits, ModelConfig, ModelPrice, Preset, ProfileConfig,
    Provider, RoutingConfig, ServerConfig, StickyConfig, Strategy, TierConfig, Timeouts,
    UsageConfig,
};
use super::{OAuthConfig, OAuthReturns};

// Defaults; mod.rs documents each next to its field.
const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 1), 8080));
const DEFAULT_DATA_DIR: &str = "./data";
const DEFAULT_MAX_BODY_BYTES: usize = 10 * 1024 * 1024;
const DEFAULT_ADMIN_TOKEN_ENV: &str = "SWITCHYARD_ADMIN_TOKEN";
const DEFAULT_JWT_SECRET_ENV: &str = "SWITCHYARD_JWT_SECRET";
const DEFAULT_ACCESS_TOKEN_TTL: Duration = Duration::from_secs(30 * 60);
const DEFAULT_REFRESH_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 60 * 60);
const DEFAULT_MAX_KEYS_PER_ACCOUNT: u32 = 10;
const DEFAULT_LOGIN: LoginLimits = LoginLimits {
    max_failures_per_account: 5,
    max_attempts_per_address: 20,
    window: Duration::from_secs(5 * 60),
};
const DEFAULT_JWKS_REFETCH: Duration = Duration::from_secs(30);
const DEFAULT_JWKS_MAX_AGE: Duration = Duration::from_secs(60 * 60);
/// The `iss` of Switchyard's own access tokens; an external issuer cannot take it.
pub const OWN_ISSUER: &str = "switchyard";
const DEFAULT_MAX_ATTEMPTS: u32 = 3;
const DEFAULT_STICKY_TTL: Duration = Duration::from_secs(30 * 60);
const DEFAULT_COOLDOWN: CooldownPolicy = CooldownPolicy {
    initial: Duration::from_secs(1),
    max: Duration::from_secs(5 * 60),
};
const DEFAULT_BILLING_COOLDOWN: CooldownPolicy = CooldownPolicy {
    initial: Duration::from_secs(5 * 60 * 60),
    max: Duration::from_secs(24 * 60 * 60),
};
const DEFAULT_BREAKER: BreakerSettings = BreakerSettings {
    failure_threshold: 5,
    open_for: Duration::from_secs(30),
};
const DEFAULT_TIMEOUTS: Timeouts = Timeouts {
    connect: Duration::from_secs(5),
    first_byte: Duration::from_secs(60),
    idle: Duration::from_secs(60),
};
const DEFAULT_PRIORITY: u32 = 1;
const DEFAULT_WEIGHT: u32 = 1;

const SUPPORTED_PROVIDERS: &str =
    "openai, anthropic, openrouter, groq, together, mistral, deepseek, ollama, vllm, azure";
/// Headers the proxy sets itself: a profile overriding them would break auth or framing.
const RESERVED_HEADERS: [&str; 3] = ["authorization", "host", "content-length"];

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; 0 when the problem is not inside the file (it could not be read).
    pub line: usize,
    /// 1-based; 0 when `line` is 0.
    pub column: usize,
    /// Key path of the offending node, e.g. `profiles[1].weight`; empty for YAML syntax errors.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in a configuration file, in file order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    /// One error per line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

/// Reads and validates the configuration file at `path`.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    match std::fs::read_to_string(path) {
        Ok(yaml) => load_str(path, &yaml),
        Err(e) => Err(ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            path: String::new(),
            message: format!("cannot read: {e}"),
        }])),
    }
}

/// Validates `yaml`; `source_name` is the file name used in messages and kept as [`Config::source`].
pub fn load_str(source_name: &Path, yaml: &str) -> Result<Config, ConfigErrors> {
    let mut report = Report {
        file: source_name.to_path_buf(),
        errors: Vec::new(),
    };
    let config = parse(&mut report, yaml).map(|raw| validate(&mut report, source_name, raw));
    match config {
        Some(config) if report.errors.is_empty() => Ok(config),
        _ => {
            // File order reads best; the checks themselves run section by section.
            report.errors.sort_by_key(|e| (e.line, e.column));
            Err(ConfigErrors(report.errors))
        }
    }
}

/// Collects errors for one file.
struct Report {
    file: PathBuf,
    errors: Vec<ConfigError>,
}

impl Report {
    fn at(&mut self, span: &Span, path: impl Into<String>, message: impl Into<String>) {
        let (line, column) = span.start().map_or((0, 0), |m| (m.line(), m.column()));
        self.errors.push(ConfigError {
            file: self.file.clone(),
            line,
            column,
            path: path.into(),
            message: message.into(),
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Stage 1: YAML -> raw types.

/// Parses the YAML and deserializes it, recording unknown keys (all of them: each one found is
/// removed from the tree and deserialization retried). `None` when nothing more can be checked.
fn parse(report: &mut Report, yaml: &str) -> Option<RawConfig> {
    // Some Windows editors start files with a byte-order mark; it is not part of the first key.
    let yaml = yaml.strip_prefix('\u{feff}').unwrap_or(yaml);
    if let Some(line) = second_document(yaml) {
        let message = "only one YAML document is allowed (remove this `---`)";
        report.at(&Span::new_start(Marker::new(0, 0, line, 1)), "", message);
        return None;
    }
    let options = LoaderOptions::default().error_on_duplicate_keys(true);
    let mut root = match marked_yaml::parse_yaml_with_options(0, yaml, options) {
        Ok(root) => root,
        Err(e) => {
            load_error(report, e);
            return None;
        }
    };
    anchor_mappings_at_first_key(&mut root);
    loop {
        let err = match marked_yaml::from_node::<RawConfig>(&root) {
            Ok(raw) => return Some(raw),
            Err(err) => err,
        };
        let path = err.path().unwrap_or_default().to_owned();
        let found = locate(&root, &path);
        match &*err {
            marked_yaml::Error::UnknownFieldError(field, expected, _) => {
                let key = found.key.filter(|_| found.complete);
                let Some(key) = key else {
                    // Cannot find the key in the tree: report where serde says and stop.
                    report.at(&error_span(&err), path, unknown_key(field, expected));
                    return None;
                };
                report.at(&key, path, unknown_key(field, expected));
                if !remove_key(&mut root, &key) {
                    return None;
                }
            }
            marked_yaml::Error::NotBoolean(span) => {
                let found = scalar_text(&found);
                report.at(span, path, format!("expected true or false, found {found}"));
                return None;
            }
            marked_yaml::Error::IntegerParseFailure(e, span) => {
                let message = match e.kind() {
                    std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow => {
                        "number out of range".to_owned()
                    }
                    _ => format!("expected an integer, found {}", scalar_text(&found)),
                };
                report.at(span, path, message);
                return None;
            }
            marked_yaml::Error::FloatParseFailure(e, span) => {
                report.at(span, path, format!("expected a number ({e})"));
                return None;
            }
            marked_yaml::Error::Other(message, _) => {
                // serde names Rust types; say what the file should contain instead.
                let message = message.replace("expected i64", "expected an integer");
                report.at(found.node.span(), path, message);
                return None;
            }
        }
    }
}

/// The line of a `---` that starts a second document: the YAML loader would silently ignore
/// everything after it. A `---` in column 1 is always a document marker (block scalars are indented).
fn second_document(yaml: &str) -> Option<usize> {
    let mut content = false;
    for (i, line) in yaml.lines().enumerate() {
        let marker = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        if marker && content {
            return Some(i + 1);
        }
        let trimmed = line.trim_start();
        if !marker && !trimmed.is_empty() && !trimmed.starts_with('#') && !line.starts_with('%') {
            content = true;
        }
    }
    None
}

fn error_span(err: &marked_yaml::FromNodeError) -> Span {
    err.start_mark()
        .map_or_else(Span::new_blank, Span::new_start)
}

fn load_error(report: &mut Report, e: LoadError) {
    let (marker, message) = match e {
        LoadError::TopLevelMustBeMapping(m) | LoadError::TopLevelMustBeSequence(m) => (
            m,
            "the top level must be a mapping (server:, routing:, models:, profiles: ...)"
                .to_owned(),
        ),
        LoadError::UnexpectedAnchor(m) => (m, "YAML anchors and aliases are not supported".into()),
        LoadError::MappingKeyMustBeScalar(m) => (m, "mapping keys must be plain scalars".into()),
        LoadError::UnexpectedTag(m) => (m, "YAML tags are not supported".into()),
        LoadError::ScanError(m, e) => (m, format!("invalid YAML: {}", e.info())),
        LoadError::DuplicateKey(dup) => {
            let first = dup.prev_key.span().start().map_or(0, |m| m.line());
            let message = format!(
                "duplicate key {:?} (first at line {first})",
                dup.key.as_str()
            );
            report.at(dup.key.span(), "", message);
            return;
        }
    };
    report.at(&Span::new_start(marker), "", message);
}

/// Where a rendered serde path (`profiles[1].headers.X-Title`) leads in the YAML tree.
struct Found<'a> {
    /// The deepest node reached.
    node: &'a Node,
    /// The key of that node, when the last step went through a mapping.
    key: Option<Span>,
    /// Whether the whole path was followed.
    complete: bool,
}

/// Follows `path` from `root`. marked-yaml's own lookup stops at a `Spanned` struct, so we walk
/// the rendered path ourselves.
fn locate<'a>(root: &'a Node, path: &str) -> Found<'a> {
    let mut node = root;
    let mut key = None;
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('[') {
            let child = after.split_once(']').and_then(|(index, tail)| {
                let index: usize = index.parse().ok()?;
                Some((node.as_sequence()?.get(index)?, tail))
            });
            let Some((child, tail)) = child else { break };
            node = child;
            key = None;
            rest = tail;
        } else {
            // A key may itself contain '.' or '[': take the longest key ending where a segment ends.
            let Some(map) = node.as_mapping() else { break };
            let child = map
                .iter()
                .filter(|(k, _)| {
                    rest.strip_prefix(k.as_str())
                        .is_some_and(|tail| tail.is_empty() || tail.starts_with(['.', '[']))
                })
                .max_by_key(|(k, _)| k.as_str().len());
            let Some((k, child)) = child else { break };
            node = child;
            key = Some(*k.span());
            rest = &rest[k.as_str().len()..];
        }
        rest = rest.strip_prefix('.').unwrap_or(rest);
    }
    Found {
        node,
        key,
        complete: rest.is_empty(),
    }
}

/// The scalar a path leads to, quoted, for messages.
fn scalar_text(found: &Found<'_>) -> String {
    match found.node.as_scalar() {
        Some(s) => format!("{:?}", s.as_str()),
        None => "a mapping or list".to_owned(),
    }
}

/// The YAML parser marks a block mapping where the `:` after its first key is; a "missing key"
/// error reads better pointing at the first key itself, where the entry visibly starts.
fn anchor_mappings_at_first_key(node: &mut Node) {
    match node {
        Node::Mapping(map) => {
            if let Some(first) = map.keys().next().and_then(|k| k.span().start().copied()) {
                map.span_mut().set_start(Some(first));
            }
            map.values_mut().for_each(anchor_mappings_at_first_key);
        }
        Node::Sequence(seq) => seq.iter_mut().for_each(anchor_mappings_at_first_key),
        Node::Scalar(_) => {}
    }
}

/// Removes the mapping key that starts at `key`'s position; false if there is none.
fn remove_key(node: &mut Node, key: &Span) -> bool {
    match node {
        Node::Mapping(map) => {
            let hit = map
                .keys()
                .find(|k| k.span().start() == key.start())
                .cloned();
            if let Some(hit) = hit {
                map.remove(&hit);
                return true;
            }
            map.values_mut().any(|v| remove_key(v, key))
        }
        Node::Sequence(seq) => seq.iter_mut().any(|v| remove_key(v, key)),
        Node::Scalar(_) => false,
    }
}

fn unknown_key(field: &str, expected: &[&str]) -> String {
    if let Some(close) = expected
        .iter()
        .filter(|known| edit_distance(field, known) <= 2)
        .min_by_key(|known| edit_distance(field, known))
    {
        return format!("unknown key {field:?} (did you mean {close:?}?)");
    }
    if expected.is_empty() {
        return format!("unknown key {field:?}");
    }
    format!(
        "unknown key {field:?} (expected one of: {})",
        expected.join(", ")
    )
}

/// Levenshtein distance, for "did you mean" suggestions on short key names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

// ---------------------------------------------------------------------------------------------
// Stage 2: raw types -> validated types.

/// Checks everything and builds the config. The returned value is meaningful only when `report`
/// stayed empty; on errors it is filled with defaults and thrown away by the caller.
fn validate(report: &mut Report, source: &Path, raw: RawConfig) -> Config {
    let server = ServerConfig {
        listen: socket_addr(report, "server.listen", raw.server.listen.as_ref()),
        data_dir: match &raw.server.data_dir {
            Some(dir) if dir.trim().is_empty() => {
                report.at(dir.span(), "server.data_dir", "must not be empty");
                PathBuf::from(DEFAULT_DATA_DIR)
            }
            Some(dir) => PathBuf::from(dir.as_str()),
            None => PathBuf::from(DEFAULT_DATA_DIR),
        },
        max_body_bytes: match &raw.server.max_body_size {
            Some(size) => match parse_size(size) {
                Ok(bytes) => bytes,
                Err(message) => {
                    report.at(size.span(), "server.max_body_size", message);
                    DEFAULT_MAX_BODY_BYTES
                }
            },
            None => DEFAULT_MAX_BODY_BYTES,
        },
        store_cache_bytes: match &raw.server.store_cache_size {
            Some(size) => match parse_size(size) {
                Ok(bytes) => u64::try_from(bytes).unwrap_or(u64::MAX),
                Err(message) => {
                    report.at(size.span(), "server.store_cache_size", message);
                    switchyard_actors::store::DEFAULT_CACHE_BYTES
                }
            },
            None => switchyard_actors::store::DEFAULT_CACHE_BYTES,
        },
    };

    let auth = auth(report, &raw.auth);

    let r = &raw.routing;
    let routing = RoutingConfig {
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
    };

    let usage = UsageConfig {
        durable: raw.usage.durable.unwrap_or(true),
    };

    let mut ids: HashMap<String, usize> = HashMap::new();
    let profiles: Vec<ProfileConfig> = raw
        .profiles
        .iter()
        .enumerate()
        .map(|(i, p)| profile(report, i, p, &mut ids, routing.timeouts))
        .collect();

    let mut names: HashMap<String, usize> = HashMap::new();
    let models = raw
        .models
        .iter()
        .enumerate()
        .map(|(i, m)| model(report, i, m, &mut names, &ids))
        .collect();

    Config {
        source: source.to_path_buf(),
        server,
        auth,
        routing,
        usage,
        models,
        profiles,
        tiers: tiers(report, &raw.tiers),
        pricing: pricing(report, &raw.pricing),
    }
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

/// A USD amount as whole micro-USD; negative, NaN or absurd amounts are errors.
fn usd_micros(report: &mut Report, path: &str, v: &Spanned<f64>) -> Option<u64> {
    if !v.is_finite() || **v < 0.0 || **v > 1e12 {
        report.at(v.span(), path, "must be a number of USD between 0 and 1e12");
        return None;
    }
    // Bounded above, so the cast cannot wrap.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Some((**v * 1e6).round() as u64)
}

/// `pricing:` both prices required, non-negative.
fn pricing(
    report: &mut Report,
    raw: &IndexMap<String, Spanned<RawPrice>>,
) -> IndexMap<String, ModelPrice> {
    let mut out = IndexMap::new();
    for (model, p) in raw {
        let path = format!("pricing.{model}");
        let mut price = |key: &str, v: Option<&Spanned<f64>>| match v {
            None => {
                report.at(p.span(), format!("{path}.{key}"), "is required");
                0.0
            }
            Some(v) if !v.is_finite() || **v < 0.0 => {
                report.at(v.span(), format!("{path}.{key}"), "must be >= 0");
                0.0
            }
            Some(v) => **v,
        };
        let input_per_million = price("input_per_million", p.input_per_million.as_ref());
        let output_per_million = price("output_per_million", p.output_per_million.as_ref());
        out.insert(
            model.clone(),
            ModelPrice {
                input_per_million,
                output_per_million,
            },
        );
    }
    out
}

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
    let issuer = match &raw.issuer {
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
    };
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
    let keys = match (&raw.jwks_url, &raw.shared_secret_env) {
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
                if let Some(value) = value {
                    report.at(value.span(), at(key), "only applies with jwks_url");
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
            let message = "required key is missing (set jwks_url or shared_secret_env)";
            report.at(raw.span(), at("jwks_url"), message);
            IssuerKeys::SharedSecret { env: String::new() }
        }
    };
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

fn profile(
    report: &mut Report,
    index: usize,
    raw: &Spanned<RawProfile>,
    ids: &mut HashMap<String, usize>,
    defaults: Timeouts,
) -> ProfileConfig {
    let at = |key: &str| format!("profiles[{index}].{key}");

    let id = match &raw.id {
        None => {
            report.at(raw.span(), at("id"), "required key is missing");
            String::new()
        }
        Some(id) if id.is_empty() => {
            report.at(id.span(), at("id"), "must not be empty");
            String::new()
        }
        Some(id) => {
            if !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
            {
                let message = format!(
                    "invalid profile id {:?}: use only A-Z a-z 0-9 _ . -",
                    id.as_str()
                );
                report.at(id.span(), at("id"), message);
            }
            let line = line_of(id.span());
            if let Some(first) = ids.get(id.as_str()) {
                let message = format!(
                    "duplicate profile id {:?} (first defined at line {first})",
                    id.as_str()
                );
                report.at(id.span(), at("id"), message);
            } else {
                ids.insert(id.to_string(), line);
            }
            id.to_string()
        }
    };

    // `None` when missing or unknown: then no default base_url applies either.
    let preset = match &raw.provider {
        None => {
            report.at(raw.span(), at("provider"), "required key is missing");
            None
        }
        Some(p) => {
            let preset = Preset::parse(p.as_str());
            if preset.is_none() {
                let message = format!(
                    "unknown provider {:?} (supported: {SUPPORTED_PROVIDERS})",
                    p.as_str()
                );
                report.at(p.span(), at("provider"), message);
            }
            preset
        }
    };
    let provider = preset.map_or(Provider::OpenAi, Preset::wire);

    let base_url = match &raw.base_url {
        None if preset == Some(Preset::Azure) => {
            let message = "required key is missing: azure needs the deployment URL \
                (https://RESOURCE.openai.azure.com/openai/deployments/DEPLOYMENT)";
            report.at(raw.span(), at("base_url"), message);
            String::new()
        }
        None => match preset.and_then(Preset::default_base_url) {
            Some(url) => url.to_owned(),
            None => {
                report.at(raw.span(), at("base_url"), "required key is missing");
                String::new()
            }
        },
        Some(url) => {
            let rest = url
                .strip_prefix("https://")
                .or_else(|| url.strip_prefix("http://"));
            match rest {
                None => report.at(
                    url.span(),
                    at("base_url"),
                    "must start with http:// or https://",
                ),
                Some(rest) if rest.trim_end_matches('/').is_empty() => {
                    report.at(url.span(), at("base_url"), "must name a host")
                }
                Some(_) if url.chars().any(char::is_whitespace) => {
                    report.at(url.span(), at("base_url"), "must not contain spaces")
                }
                Some(_) => {}
            }
            // The upstream client appends `/chat/completions` etc.
            url.trim_end_matches('/').to_owned()
        }
    };

    let key_env = raw
        .api_key_env
        .as_ref()
        .map(|name| env_name(report, &at("api_key_env"), name));
    let api_key = match (key_env, &raw.api_key) {
        (Some(_), Some(key)) => {
            let message = "api_key and api_key_env are mutually exclusive (set one)";
            report.at(key.span(), at("api_key"), message);
            ApiKeySource::None
        }
        (Some(name), None) => ApiKeySource::Env(name),
        (None, Some(key)) if key.is_empty() => {
            let message = "must not be empty (leave api_key out to send no key)";
            report.at(key.span(), at("api_key"), message);
            ApiKeySource::None
        }
        (None, Some(key)) => ApiKeySource::Literal(key.to_string()),
        (None, None) => ApiKeySource::None,
    };

    let priority = count(
        report,
        &at("priority"),
        raw.priority.as_ref(),
        DEFAULT_PRIORITY,
        0,
        "must be >= 0",
    );
    let weight = count(
        report,
        &at("weight"),
        raw.weight.as_ref(),
        DEFAULT_WEIGHT,
        1,
        "must be > 0",
    );
    let timeouts = timeouts(report, &at("timeouts"), &raw.timeouts, defaults);
    let mut per_minute = |key: &str, raw: Option<&Spanned<i64>>| {
        raw.map(|_| {
            count(
                report,
                &at(&format!("limits.{key}")),
                raw,
                1,
                1,
                "must be >= 1",
            )
        })
    };
    let limits = super::UpstreamLimits {
        rpm: per_minute("rpm", raw.limits.rpm.as_ref()),
        tpm: per_minute("tpm", raw.limits.tpm.as_ref()),
    };

    let mut headers = IndexMap::new();
    let mut seen = HashSet::new();
    for (name, value) in &raw.headers {
        let path = at(&format!("headers.{}", name.as_str()));
        let lower = name.to_ascii_lowercase();
        if name.is_empty() || !name.chars().all(is_token_char) {
            report.at(
                name.span(),
                &path,
                format!("invalid header name {:?}", name.as_str()),
            );
        } else if lower == "authorization" {
            let message = "cannot set authorization here (use api_key_env or api_key)";
            report.at(name.span(), &path, message);
        } else if RESERVED_HEADERS.contains(&lower.as_str()) {
            let message = format!("cannot set {lower}: the proxy sets it");
            report.at(name.span(), &path, message);
        } else if !seen.insert(lower.clone()) {
            let message = format!("duplicate header {lower:?} (header names ignore case)");
            report.at(name.span(), &path, message);
        }
        if !value
            .chars()
            .all(|c| c == '\t' || (c >= ' ' && c != '\x7f'))
        {
            report.at(
                value.span(),
                &path,
                "header value must not contain control characters",
            );
        }
        headers.insert(name.to_string(), value.to_string());
    }
    let oauth = raw
        .auth
        .as_ref()
        .and_then(|a| profile_oauth(report, index, a, &raw.api_key, &raw.api_key_env));
    let api_version = preset_keys(report, index, raw, preset, &api_key, &mut headers);

    ProfileConfig {
        id,
        provider,
        preset: preset.unwrap_or(Preset::OpenAi),
        base_url,
        api_key,
        priority,
        weight,
        model_map: raw.model_map.clone(),
        timeouts,
        headers,
        api_version,
        oauth,
        limits,
    }
}

/// A profile's `auth:` block. `None` when it is unusable (and reported).
fn profile_oauth(
    report: &mut Report,
    index: usize,
    raw: &Spanned<RawProfileAuth>,
    api_key: &Option<Text>,
    api_key_env: &Option<Text>,
) -> Option<OAuthConfig> {
    let at = |key: &str| format!("profiles[{index}].auth.{key}");
    let errors_before = report.errors.len();
    if let Some(key) = api_key.as_ref().or(api_key_env.as_ref()) {
        let message = "auth and api_key / api_key_env are mutually exclusive (set one)";
        report.at(key.span(), format!("profiles[{index}].auth"), message);
    }
    match &raw.kind {
        None => report.at(
            raw.span(),
            at("type"),
            "required key is missing (type: oauth2)",
        ),
        Some(kind) if kind.as_str() != "oauth2" => {
            let message = format!("unknown auth type {:?} (supported: oauth2)", kind.as_str());
            report.at(kind.span(), at("type"), message);
        }
        Some(_) => {}
    }
    let returns = match &raw.returns {
        None => OAuthReturns::Tokens,
        Some(r) if r.as_str() == "tokens" => OAuthReturns::Tokens,
        Some(r) if r.as_str() == "api_key" => OAuthReturns::ApiKey,
        Some(r) => {
            let message = format!(
                "unknown value {:?} (expected tokens or api_key)",
                r.as_str()
            );
            report.at(r.span(), at("returns"), message);
            OAuthReturns::Tokens
        }
    };
    let url = |report: &mut Report, key: &str, value: &Option<Text>| match value {
        None => {
            report.at(raw.span(), at(key), "required key is missing");
            String::new()
        }
        Some(u) => {
            if !(u.starts_with("https://") || u.starts_with("http://"))
                || u.chars().any(char::is_whitespace)
            {
                let message = "must be an http:// or https:// URL without spaces";
                report.at(u.span(), at(key), message);
            }
            u.to_string()
        }
    };
    let authorize_url = url(report, "authorize_url", &raw.authorize_url);
    let token_url = url(report, "token_url", &raw.token_url);
    let client_id = match &raw.client_id {
        Some(c) if c.trim().is_empty() => {
            report.at(c.span(), at("client_id"), "must not be empty");
            None
        }
        Some(c) => Some(c.to_string()),
        None if returns == OAuthReturns::Tokens => {
            let message = "required key is missing (optional only with returns: api_key)";
            report.at(raw.span(), at("client_id"), message);
            None
        }
        None => None,
    };
    let mut scopes = Vec::new();
    for (i, scope) in raw.scopes.iter().enumerate() {
        if scope.is_empty() || scope.chars().any(|c| c.is_whitespace() || c.is_control()) {
            let message = format!("invalid scope {:?} (one scope per entry)", scope.as_str());
            report.at(scope.span(), at(&format!("scopes[{i}]")), message);
        }
        scopes.push(scope.to_string());
    }
    if let Some(pkce) = &raw.pkce {
        if !**pkce {
            let message = "must be true: Switchyard always uses PKCE (S256)";
            report.at(pkce.span(), at("pkce"), message);
        }
    }
    let redirect_port = match &raw.redirect_port {
        None => 0,
        Some(p) => u16::try_from(**p).unwrap_or_else(|_| {
            report.at(p.span(), at("redirect_port"), "must be a port (0 to 65535)");
            0
        }),
    };
    (report.errors.len() == errors_before).then_some(OAuthConfig {
        authorize_url,
        token_url,
        client_id,
        scopes,
        redirect_port,
        returns,
    })
}

/// The keys that belong to one preset: OpenRouter's attribution (folded into `headers`), Azure's
/// `api_version` (returned), and the credential the hosted services cannot work without.
fn preset_keys(
    report: &mut Report,
    index: usize,
    raw: &Spanned<RawProfile>,
    preset: Option<Preset>,
    api_key: &ApiKeySource,
    headers: &mut IndexMap<String, String>,
) -> Option<String> {
    let at = |key: &str| format!("profiles[{index}].{key}");
    let Some(preset) = preset else {
        return None; // already reported; every other message would be a guess
    };
    let name = preset.as_str();

    for (key, value, header) in [
        ("app_url", &raw.app_url, "HTTP-Referer"),
        ("app_name", &raw.app_name, "X-Title"),
    ] {
        let Some(value) = value else { continue };
        if preset != Preset::OpenRouter {
            let message = format!(
                "only for provider openrouter, not {name} (use headers: for other providers)"
            );
            report.at(value.span(), at(key), message);
        } else if value.trim().is_empty() {
            report.at(value.span(), at(key), "must not be empty");
        } else if key == "app_url"
            && !(value.starts_with("https://") || value.starts_with("http://"))
        {
            report.at(value.span(), at(key), "must start with http:// or https://");
        } else if value.chars().any(char::is_control) {
            let message = "must not contain control characters";
            report.at(value.span(), at(key), message);
        } else if headers.keys().any(|h| h.eq_ignore_ascii_case(header)) {
            let message = format!("conflicts with headers.{header} (set one)");
            report.at(value.span(), at(key), message);
        } else {
            headers.insert(header.to_owned(), value.to_string());
        }
    }

    let api_version = match (&raw.api_version, preset) {
        (Some(v), Preset::Azure) => {
            if v.is_empty()
                || !v
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
            {
                let message = format!(
                    "invalid api_version {:?} (e.g. 2024-10-21 or 2025-01-01-preview)",
                    v.as_str()
                );
                report.at(v.span(), at("api_version"), message);
            }
            Some(v.to_string())
        }
        (Some(v), _) => {
            let message = format!("only for provider azure, not {name}");
            report.at(v.span(), at("api_version"), message);
            None
        }
        (None, Preset::Azure) => {
            let message = "required key is missing: azure needs the API version (e.g. 2024-10-21)";
            report.at(raw.span(), at("api_version"), message);
            None
        }
        (None, _) => None,
    };

    if preset.needs_credential()
        && *api_key == ApiKeySource::None
        && raw.api_key.is_none()
        && raw.auth.is_none()
    {
        let message =
            format!("provider {name} needs a credential: set api_key_env, api_key or auth");
        report.at(raw.span(), at("api_key_env"), message);
    }
    api_version
}

fn model(
    report: &mut Report,
    index: usize,
    raw: &Spanned<RawModel>,
    names: &mut HashMap<String, usize>,
    profile_ids: &HashMap<String, usize>,
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
                if !profile_ids.contains_key(id.as_str()) {
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

    ModelConfig {
        name,
        profiles,
        strategy: strategy(report, &at("strategy"), raw.strategy.as_ref()),
    }
}

fn line_of(span: &Span) -> usize {
    span.start().map_or(0, |m| m.line())
}

fn strategy(report: &mut Report, path: &str, raw: Option<&Text>) -> Option<Strategy> {
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
fn count(
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

fn duration(report: &mut Report, path: &str, raw: Option<&Text>, default: Duration) -> Duration {
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

fn cooldown(
    report: &mut Report,
    path: &str,
    raw: &RawCooldown,
    default: CooldownPolicy,
) -> CooldownPolicy {
    let errors_before = report.errors.len();
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
    if report.errors.len() == errors_before && initial > max {
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

fn timeouts(report: &mut Report, path: &str, raw: &RawTimeouts, defaults: Timeouts) -> Timeouts {
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

fn socket_addr(report: &mut Report, path: &str, raw: Option<&Text>) -> SocketAddr {
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
fn env_name(report: &mut Report, path: &str, raw: &Text) -> String {
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

/// RFC 9110 token characters, which is what a header name may contain.
fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// `1048576`, `512KiB`, `10MiB`, `1MB`, `2 GB`: decimal (kB, MB, GB) and binary (KiB, MiB, GiB) units.
fn parse_size(raw: &str) -> Result<usize, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads `yaml` as `t.yaml` and returns its errors, one string per error.
    fn errors(yaml: &str) -> Vec<String> {
        match load_str(Path::new("t.yaml"), yaml) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    fn check(yaml: &str, expected: &[&str]) {
        assert_eq!(errors(yaml), expected, "for:\n{yaml}");
    }

    fn load(yaml: &str) -> Config {
        match load_str(Path::new("t.yaml"), yaml) {
            Ok(config) => config,
            Err(e) => panic!("unexpected errors:\n{e}"),
        }
    }

    /// One valid profile, appended to snippets that test other sections.
    const PROFILE: &str = "profiles:\n  - id: main\n    provider: openai\n    base_url: http://x\n";

    #[test]
    fn empty_file_gets_every_default() {
        let c = load("");
        assert_eq!(c.source, Path::new("t.yaml"));
        assert_eq!(c.server.listen, SocketAddr::from(([127, 0, 0, 1], 8080)));
        assert_eq!(c.server.data_dir, Path::new("./data"));
        assert_eq!(c.server.max_body_bytes, 10 * 1024 * 1024);
        assert_eq!(c.server.store_cache_bytes, 8 * 1024 * 1024);
        assert!(c.auth.required);
        assert_eq!(c.auth.admin_token_env, "SWITCHYARD_ADMIN_TOKEN");
        assert_eq!(c.routing.strategy, Strategy::RoundRobin);
        assert_eq!(c.routing.max_attempts, 3);
        assert!(c.routing.sticky.enabled);
        assert_eq!(c.routing.sticky.ttl, Duration::from_secs(1800));
        assert_eq!(c.routing.health.cooldown, DEFAULT_COOLDOWN);
        assert_eq!(
            c.routing.health.billing.initial,
            Duration::from_secs(5 * 3600)
        );
        assert_eq!(c.routing.health.billing.max, Duration::from_secs(24 * 3600));
        assert_eq!(c.routing.health.breaker.failure_threshold, 5);
        assert_eq!(c.routing.health.breaker.open_for, Duration::from_secs(30));
        assert_eq!(c.routing.timeouts.connect, Duration::from_secs(5));
        assert_eq!(c.routing.timeouts.first_byte, Duration::from_secs(60));
        assert_eq!(c.routing.timeouts.idle, Duration::from_secs(60));
        assert!(c.usage.durable);
        assert!(c.models.is_empty() && c.profiles.is_empty());
    }

    #[test]
    fn profile_and_model_defaults() {
        let c = load(&format!(
            "models:\n  - name: m\n    profiles: [main]\n{PROFILE}"
        ));
        let p = c.profile("main").unwrap();
        assert_eq!(p.provider, Provider::OpenAi);
        assert_eq!(p.base_url, "http://x");
        assert_eq!(p.api_key, ApiKeySource::None);
        assert_eq!((p.priority, p.weight), (1, 1));
        assert!(p.model_map.is_empty() && p.headers.is_empty());
        assert_eq!(p.timeouts, c.routing.timeouts);
        let m = c.model("m").unwrap();
        assert_eq!(m.profiles, ["main"]);
        assert_eq!(m.strategy, None);
    }

    #[test]
    fn every_key_is_read() {
        let c = load(
            r#"
server: {listen: "0.0.0.0:9000", data_dir: /var/lib/sy, max_body_size: 512KiB}
auth: {required: false, admin_token_env: MY_ADMIN}
routing:
  strategy: weighted
  max_attempts: 5
  sticky: {enabled: false, ttl: 10m}
  cooldown: {initial: 2s, max: 1m}
  billing_cooldown: {initial: 1h, max: 2h}
  breaker: {failure_threshold: 7, open_for: 1m}
  timeouts: {connect: 1s, first_byte: 2s, idle: 3s}
usage: {durable: false}
models:
  - {name: m, profiles: [a, b], strategy: priority}
profiles:
  - id: a
    provider: openai
    base_url: https://a.example/v1/
    api_key_env: A_KEY
    priority: 0
    weight: 3
    model_map: {m: upstream-m}
    headers: {X-Title: Switchyard}
  - {id: b, provider: openai, base_url: "http://b:1", api_key: sk-b}
"#,
        );
        assert_eq!(c.server.listen, SocketAddr::from(([0, 0, 0, 0], 9000)));
        assert_eq!(c.server.data_dir, Path::new("/var/lib/sy"));
        assert_eq!(c.server.max_body_bytes, 512 * 1024);
        assert!(!c.auth.required);
        assert_eq!(c.auth.admin_token_env, "MY_ADMIN");
        assert_eq!(c.routing.strategy, Strategy::Weighted);
        assert_eq!(c.routing.max_attempts, 5);
        assert!(!c.routing.sticky.enabled);
        assert_eq!(c.routing.sticky.ttl, Duration::from_secs(600));
        assert_eq!(c.routing.health.cooldown.initial, Duration::from_secs(2));
        assert_eq!(c.routing.health.cooldown.max, Duration::from_secs(60));
        assert_eq!(c.routing.health.billing.max, Duration::from_secs(7200));
        assert_eq!(c.routing.health.breaker.failure_threshold, 7);
        assert_eq!(c.routing.timeouts.idle, Duration::from_secs(3));
        assert!(!c.usage.durable);
        assert_eq!(c.models[0].strategy, Some(Strategy::Priority));
        let a = &c.profiles[0];
        assert_eq!(a.base_url, "https://a.example/v1");
        assert_eq!(a.api_key, ApiKeySource::Env("A_KEY".into()));
        assert_eq!((a.priority, a.weight), (0, 3));
        assert_eq!(a.model_map["m"], "upstream-m");
        assert_eq!(a.headers["X-Title"], "Switchyard");
        assert_eq!(c.profiles[1].api_key, ApiKeySource::Literal("sk-b".into()));
    }

    #[test]
    fn auth_keys_are_read_with_defaults() {
        let c = load("");
        assert_eq!(c.auth.jwt_secret_env, "SWITCHYARD_JWT_SECRET");
        assert_eq!(c.auth.access_token_ttl, Duration::from_secs(1800));
        assert_eq!(c.auth.refresh_token_ttl, Duration::from_secs(7 * 86400));
        assert_eq!(c.auth.max_keys_per_account, 10);
        assert_eq!(c.auth.login, DEFAULT_LOGIN);
        assert!(c.auth.issuers.is_empty());
        let c = load(
            r#"
auth:
  jwt_secret_env: MY_JWT
  access_token_ttl: 5m
  refresh_token_ttl: 1d
  max_keys_per_account: 3
  login: {max_failures_per_account: 2, max_attempts_per_address: 9, window: 1m}
  issuers:
    - issuer: https://idp.example
      audience: switchyard
      jwks_url: https://idp.example/jwks.json
      jwks_refetch_interval: 1s
      jwks_max_age: 10m
      claims: {subject: email, role: groups, tier: plan, project: org.project}
    - {issuer: https://ci.example, audience: sy, shared_secret_env: CI_SECRET}
"#,
        );
        let a = &c.auth;
        assert_eq!(a.jwt_secret_env, "MY_JWT");
        assert_eq!(a.access_token_ttl, Duration::from_secs(300));
        assert_eq!(a.refresh_token_ttl, Duration::from_secs(86400));
        assert_eq!(a.max_keys_per_account, 3);
        assert_eq!(a.login.max_failures_per_account, 2);
        assert_eq!(a.login.max_attempts_per_address, 9);
        assert_eq!(a.login.window, Duration::from_secs(60));
        assert_eq!(
            a.issuers[0].keys,
            IssuerKeys::Jwks {
                url: "https://idp.example/jwks.json".into(),
                refetch_interval: Duration::from_secs(1),
                max_age: Duration::from_secs(600),
            }
        );
        assert_eq!(a.issuers[0].claims.subject, "email");
        assert_eq!(a.issuers[0].claims.project.as_deref(), Some("org.project"));
        assert_eq!(
            a.issuers[1].keys,
            IssuerKeys::SharedSecret {
                env: "CI_SECRET".into()
            }
        );
        assert_eq!(a.issuers[1].claims.subject, "sub");
        assert_eq!(a.issuers[1].claims.role, None);
    }

    #[test]
    fn profile_timeouts_override_routing_key_by_key() {
        let c = load(&format!(
            "routing:\n  timeouts: {{connect: 2s, idle: 30s}}\n{PROFILE}    timeouts:\n      first_byte: 90s\n"
        ));
        let t = c.profiles[0].timeouts;
        assert_eq!(t.connect, Duration::from_secs(2));
        assert_eq!(t.first_byte, Duration::from_secs(90));
        assert_eq!(t.idle, Duration::from_secs(30));
    }

    #[test]
    fn max_body_size_units() {
        for (written, bytes) in [
            ("1048576", 1_048_576),
            ("\"100\"", 100),
            ("512KiB", 512 * 1024),
            ("10MiB", 10 * 1024 * 1024),
            ("1MB", 1_000_000),
            ("2 GiB", 2 << 30),
            ("1kB", 1000),
        ] {
            let c = load(&format!("server:\n  max_body_size: {written}\n"));
            let cache = load(&format!("server:\n  store_cache_size: {written}\n"));
            assert_eq!(cache.server.store_cache_bytes, bytes as u64, "{written}");
            assert_eq!(c.server.max_body_bytes, bytes, "{written}");
        }
        check(
            "server:\n  max_body_size: 0\n",
            &["t.yaml:2:18: server.max_body_size: must be > 0"],
        );
        check(
            "server:\n  max_body_size: 10 megabytes\n",
            &[
                r#"t.yaml:2:18: server.max_body_size: invalid size "10 megabytes" (e.g. 1048576, 512KiB, 10MiB, 1MB)"#,
            ],
        );
    }

    #[test]
    fn unknown_keys_point_at_the_key_and_all_are_reported() {
        check(
            "serve:\n  listen: x\n",
            &[r#"t.yaml:1:1: serve: unknown key "serve" (did you mean "server"?)"#],
        );
        check(
            &format!("routing:\n  sticky:\n    ttl: 1m\n    enable: true\n{PROFILE}    colour: red\n    timeouts: {{idel: 1s}}\n"),
            &[
                r#"t.yaml:4:5: routing.sticky.enable: unknown key "enable" (did you mean "enabled"?)"#,
                r#"t.yaml:9:5: profiles[0].colour: unknown key "colour" (expected one of: id, provider, base_url, api_key_env, api_key, priority, weight, model_map, timeouts, headers, app_url, app_name, api_version, auth, limits)"#,
                r#"t.yaml:10:16: profiles[0].timeouts.idel: unknown key "idel" (did you mean "idle"?)"#,
            ],
        );
    }

    #[test]
    fn durations_parse_and_are_positive() {
        check(
            "routing:\n  sticky:\n    ttl: 30\n",
            &[
                r#"t.yaml:3:10: routing.sticky.ttl: invalid duration "30": time unit needed, for example 30sec or 30ms (e.g. 250ms, 1s, 5m, 5h)"#,
            ],
        );
        check(
            "routing:\n  breaker:\n    open_for: 0s\n",
            &["t.yaml:3:15: routing.breaker.open_for: must be > 0"],
        );
        check(
            &format!("{PROFILE}    timeouts:\n      idle: 0ms\n"),
            &["t.yaml:6:13: profiles[0].timeouts.idle: must be > 0"],
        );
    }

    #[test]
    fn cooldown_initial_must_not_exceed_max() {
        check(
            "routing:\n  cooldown:\n    initial: 10m\n    max: 5m\n",
            &["t.yaml:3:14: routing.cooldown.initial: must be <= max (5m)"],
        );
        // Only max written: it is compared with the default initial (5h) and blamed.
        check(
            "routing:\n  billing_cooldown:\n    max: 1h\n",
            &["t.yaml:3:10: routing.billing_cooldown.max: must be >= initial (5h)"],
        );
        load("routing:\n  cooldown: {initial: 5m, max: 5m}\n");
    }

    #[test]
    fn strategies_are_known() {
        check(
            &format!("routing:\n  strategy: fastest\nmodels:\n  - {{name: m, profiles: [main], strategy: Priority}}\n{PROFILE}"),
            &[
                r#"t.yaml:2:13: routing.strategy: unknown strategy "fastest" (expected one of: round_robin, priority, random, weighted)"#,
                r#"t.yaml:4:43: models[0].strategy: unknown strategy "Priority" (expected one of: round_robin, priority, random, weighted)"#,
            ],
        );
    }

    #[test]
    fn provider_must_be_openai_or_anthropic() {
        check(
            "profiles:\n  - id: a\n    provider: x\n    base_url: http://x\n",
            &[
                r#"t.yaml:3:15: profiles[0].provider: unknown provider "x" (supported: openai, anthropic, openrouter, groq, together, mistral, deepseek, ollama, vllm, azure)"#,
            ],
        );
    }

    #[test]
    fn presets_fill_base_url_wire_format_and_attribution_headers() {
        let mut yaml = String::from("profiles:\n");
        for preset in Preset::ALL {
            let extra = match preset {
                Preset::Azure => ", base_url: \"https://r.openai.azure.com/openai/deployments/d\", api_version: 2024-10-21",
                Preset::OpenRouter => ", app_url: \"https://example.org\", app_name: Ex",
                _ => "",
            };
            let name = preset.as_str();
            yaml.push_str(&format!(
                "  - {{id: {name}, provider: {name}, api_key: k{extra}}}\n"
            ));
        }
        let c = load(&yaml);
        let url = |id: &str| c.profile(id).unwrap().base_url.as_str();
        assert_eq!(url("openai"), "https://api.openai.com/v1");
        assert_eq!(url("anthropic"), "https://api.anthropic.com/v1");
        assert_eq!(url("openrouter"), "https://openrouter.ai/api/v1");
        assert_eq!(url("groq"), "https://api.groq.com/openai/v1");
        assert_eq!(url("together"), "https://api.together.xyz/v1");
        assert_eq!(url("mistral"), "https://api.mistral.ai/v1");
        assert_eq!(url("deepseek"), "https://api.deepseek.com/v1");
        assert_eq!(url("ollama"), "http://127.0.0.1:11434/v1");
        assert_eq!(url("vllm"), "http://127.0.0.1:8000/v1");
        assert_eq!(
            url("azure"),
            "https://r.openai.azure.com/openai/deployments/d"
        );
        for p in &c.profiles {
            assert_eq!(p.preset.as_str(), p.id);
            assert_eq!(p.provider, p.preset.wire());
            assert_eq!(p.api_version.is_some(), p.preset == Preset::Azure);
        }
        assert_eq!(
            c.profile("anthropic").unwrap().provider,
            Provider::Anthropic
        );
        assert_eq!(c.profile("groq").unwrap().provider, Provider::OpenAi);
        let router = c.profile("openrouter").unwrap();
        assert_eq!(router.headers["HTTP-Referer"], "https://example.org");
        assert_eq!(router.headers["X-Title"], "Ex");
        // Local servers need no key.
        load("profiles:\n  - {id: a, provider: ollama}\n  - {id: b, provider: vllm}\n");
    }

    #[test]
    fn base_url_needs_a_scheme_and_loses_its_trailing_slash() {
        check(
            "profiles:\n  - id: a\n    provider: openai\n    base_url: api.openai.com\n",
            &["t.yaml:4:15: profiles[0].base_url: must start with http:// or https://"],
        );
        check(
            "profiles:\n  - id: a\n    provider: openai\n    base_url: https://\n",
            &["t.yaml:4:15: profiles[0].base_url: must name a host"],
        );
        let c = load("profiles:\n  - {id: a, provider: openai, base_url: \"https://h/v1//\"}\n");
        assert_eq!(c.profiles[0].base_url, "https://h/v1");
    }

    #[test]
    fn profile_ids_are_unique_nonempty_and_label_safe() {
        check(
            "profiles:\n  - {id: a, provider: openai, base_url: http://x}\n  - {id: a, provider: openai, base_url: http://y}\n  - {id: '', provider: openai, base_url: http://z}\n  - {id: a/b, provider: openai, base_url: http://w}\n",
            &[
                r#"t.yaml:3:10: profiles[1].id: duplicate profile id "a" (first defined at line 2)"#,
                "t.yaml:4:10: profiles[2].id: must not be empty",
                r#"t.yaml:5:10: profiles[3].id: invalid profile id "a/b": use only A-Z a-z 0-9 _ . -"#,
            ],
        );
        load("profiles:\n  - {id: A-z_0.9, provider: openai, base_url: http://x}\n");
    }

    #[test]
    fn model_names_are_unique_and_nonempty() {
        check(
            &format!("models:\n  - {{name: m, profiles: [main]}}\n  - {{name: m, profiles: [main]}}\n  - {{name: '', profiles: [main]}}\n{PROFILE}"),
            &[
                r#"t.yaml:3:12: models[1].name: duplicate model name "m" (first defined at line 2)"#,
                "t.yaml:4:12: models[2].name: must not be empty",
            ],
        );
    }

    #[test]
    fn model_profile_lists_name_defined_profiles_once() {
        check(
            &format!("models:\n  - name: m\n    profiles: [main, nope, main]\n  - name: n\n    profiles: []\n{PROFILE}"),
            &[
                r#"t.yaml:3:22: models[0].profiles[1]: unknown profile "nope""#,
                r#"t.yaml:3:28: models[0].profiles[2]: profile "main" listed twice"#,
                "t.yaml:5:15: models[1].profiles: must list at least one profile",
            ],
        );
    }

    #[test]
    fn required_keys_point_at_their_entry() {
        check(
            "models:\n  - name: m\nprofiles:\n  - api_key: k\n",
            &[
                "t.yaml:2:5: models[0].profiles: required key is missing",
                "t.yaml:4:5: profiles[0].id: required key is missing",
                "t.yaml:4:5: profiles[0].provider: required key is missing",
                "t.yaml:4:5: profiles[0].base_url: required key is missing",
            ],
        );
    }

    #[test]
    fn tiers_and_pricing_are_read() {
        let c = load(
            "tiers:\n  free:\n    requests_per_hour: 10\n    monthly_credits: 1.5\n    rate_window: 5s\n  open: {}\npricing:\n  m:\n    input_per_million: 0.15\n    output_per_million: 2\n",
        );
        let free = &c.tiers["free"];
        assert_eq!(free.requests_per_hour, Some(10));
        assert_eq!(free.llm_requests_per_hour, None);
        assert_eq!(free.monthly_credits_micros, Some(1_500_000));
        assert_eq!(free.rate_window, Duration::from_secs(5));
        assert_eq!(c.tiers["open"].rate_window, Duration::from_secs(3600));
        assert_eq!(c.pricing["m"].output_per_million, 2.0);
    }

    #[test]
    fn counts_have_lower_bounds() {
        check(
            &format!("routing:\n  max_attempts: 0\n  breaker:\n    failure_threshold: -2\n{PROFILE}    weight: 0\n    priority: -1\n"),
            &[
                "t.yaml:2:17: routing.max_attempts: must be >= 1",
                "t.yaml:4:24: routing.breaker.failure_threshold: must be >= 1",
                "t.yaml:9:13: profiles[0].weight: must be > 0",
                "t.yaml:10:15: profiles[0].priority: must be >= 0",
            ],
        );
        check(
            &format!("{PROFILE}    weight: 4294967296\n"),
            &["t.yaml:5:13: profiles[0].weight: must be <= 4294967295"],
        );
    }

    #[test]
    fn api_key_sources_are_exclusive_and_env_names_valid() {
        check(
            &format!("{PROFILE}    api_key_env: KEY\n    api_key: sk\n"),
            &["t.yaml:6:14: profiles[0].api_key: api_key and api_key_env are mutually exclusive (set one)"],
        );
        check(
            &format!("auth:\n  admin_token_env: ADMIN-TOKEN\n{PROFILE}    api_key_env: 9KEY\n"),
            &[
                r#"t.yaml:2:20: auth.admin_token_env: invalid environment variable name "ADMIN-TOKEN" (letters, digits and _, not starting with a digit)"#,
                r#"t.yaml:7:18: profiles[0].api_key_env: invalid environment variable name "9KEY" (letters, digits and _, not starting with a digit)"#,
            ],
        );
    }

    #[test]
    fn listen_is_a_socket_address() {
        check(
            "server:\n  listen: localhost:8080\n",
            &[
                r#"t.yaml:2:11: server.listen: invalid address "localhost:8080": invalid socket address syntax (e.g. 127.0.0.1:8080)"#,
            ],
        );
        assert_eq!(
            load("server:\n  listen: \"[::1]:0\"\n").server.listen,
            "[::1]:0".parse().unwrap()
        );
    }

    #[test]
    fn header_names_are_valid_and_not_reserved() {
        check(
            &format!("{PROFILE}    headers:\n      Authorization: x\n      HOST: h\n      Content-Length: '1'\n      bad name: v\n      X-A: '1'\n      x-a: '2'\n"),
            &[
                "t.yaml:6:7: profiles[0].headers.Authorization: cannot set authorization here (use api_key_env or api_key)",
                "t.yaml:7:7: profiles[0].headers.HOST: cannot set host: the proxy sets it",
                "t.yaml:8:7: profiles[0].headers.Content-Length: cannot set content-length: the proxy sets it",
                r#"t.yaml:9:7: profiles[0].headers.bad name: invalid header name "bad name""#,
                r#"t.yaml:11:7: profiles[0].headers.x-a: duplicate header "x-a" (header names ignore case)"#,
            ],
        );
        check(
            &format!("{PROFILE}    headers:\n      X-A: \"a\\nb\"\n"),
            &["t.yaml:6:12: profiles[0].headers.X-A: header value must not contain control characters"],
        );
    }

    #[test]
    fn syntax_and_type_errors_are_reported_with_their_position() {
        check(
            "models: [\n",
            &["t.yaml:2:1: invalid YAML: while parsing a node, did not find expected node content"],
        );
        check(
            "- a\n",
            &["t.yaml:1:1: the top level must be a mapping (server:, routing:, models:, profiles: ...)"],
        );
        check(
            "server: {listen: a}\nserver: {listen: b}\n",
            &[r#"t.yaml:2:1: duplicate key "server" (first at line 1)"#],
        );
        check(
            "usage:\n  durable: yes\n",
            &[r#"t.yaml:2:12: usage.durable: expected true or false, found "yes""#],
        );
        check(
            &format!("{PROFILE}    weight: heavy\n"),
            &[r#"t.yaml:5:13: profiles[0].weight: expected an integer, found "heavy""#],
        );
        check(
            "routing: fast\n",
            &[r#"t.yaml:1:10: routing: invalid type: string "fast", expected a mapping"#],
        );
        check(
            "models:\n  - name: m\n    profiles: main\n",
            &[
                r#"t.yaml:3:15: models[0].profiles: invalid type: string "main", expected a sequence"#,
            ],
        );
        check(
            "server:\n  listen: a\n---\nserver: {}\n",
            &["t.yaml:3:1: only one YAML document is allowed (remove this `---`)"],
        );
        load("---\nserver: {}\n...\n");
    }

    #[test]
    fn many_problems_are_reported_together_in_file_order() {
        let yaml = r#"server:
  listen: nowhere
  threads: 4
routing:
  max_attempts: 0
models:
  - name: m
    profiles: [a, ghost]
profiles:
  - id: a
    provider: openai
    base_url: http://a
    weight: 0
  - id: a
    provider: cohere
    base_url: https://b
"#;
        check(
            yaml,
            &[
                r#"t.yaml:2:11: server.listen: invalid address "nowhere": invalid socket address syntax (e.g. 127.0.0.1:8080)"#,
                r#"t.yaml:3:3: server.threads: unknown key "threads" (expected one of: listen, data_dir, max_body_size, store_cache_size)"#,
                "t.yaml:5:17: routing.max_attempts: must be >= 1",
                r#"t.yaml:8:19: models[0].profiles[1]: unknown profile "ghost""#,
                "t.yaml:13:13: profiles[0].weight: must be > 0",
                r#"t.yaml:14:9: profiles[1].id: duplicate profile id "a" (first defined at line 10)"#,
                r#"t.yaml:15:15: profiles[1].provider: unknown provider "cohere" (supported: openai, anthropic, openrouter, groq, together, mistral, deepseek, ollama, vllm, azure)"#,
            ],
        );
    }

    #[test]
    fn missing_file_is_one_error_without_position() {
        let e = load_file(Path::new("/nonexistent/profiles.yaml")).unwrap_err();
        assert_eq!(e.0.len(), 1);
        let line = e.to_string();
        assert!(
            line.starts_with("/nonexistent/profiles.yaml:0:0: cannot read: "),
            "{line}"
        );
    }

    #[test]
    fn display_is_one_error_per_line() {
        fn is_error<E: std::error::Error>(_: &E) {}
        let e = load_str(Path::new("p.yaml"), "a: 1\nb: 2\n").unwrap_err();
        is_error(&e);
        is_error(&e.0[0]);
        assert_eq!(e.to_string().lines().count(), 2);
        let first = &e.0[0];
        assert_eq!((first.line, first.column, first.path.as_str()), (1, 1, "a"));
    }

    #[test]
    fn the_example_profiles_yaml_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles.yaml");
        let c = match load_file(&path) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(c.server.listen, SocketAddr::from(([127, 0, 0, 1], 8080)));
        assert!(!c.auth.required);
        assert!(c
            .profile("ollama")
            .is_some_and(|p| p.api_key == ApiKeySource::None));
        assert!(c
            .models
            .iter()
            .any(|m| m.strategy == Some(Strategy::Priority)));
    }

    /// Each `tests/fixtures/config/NAME.yaml` is loaded as `NAME.yaml` and its errors compared with
    /// `NAME.expected`. Adding a case is adding those two files; `SWITCHYARD_BLESS=1` (re)writes the
    /// `.expected` files from the current output, to be reviewed before committing.
    #[test]
    fn fixtures_match_their_golden_output() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config");
        let bless = std::env::var_os("SWITCHYARD_BLESS").is_some();
        let mut yaml_files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .collect();
        yaml_files.sort();
        assert!(!yaml_files.is_empty(), "no fixtures in {}", dir.display());
        let mut failures = Vec::new();
        for yaml_path in &yaml_files {
            let name = yaml_path.file_name().unwrap();
            let yaml = std::fs::read_to_string(yaml_path).unwrap();
            let actual = match load_str(Path::new(name), &yaml) {
                Ok(_) => "(no errors: a fixture must fail)".to_owned(),
                Err(e) => format!("{e}\n"),
            };
            let expected_path = yaml_path.with_extension("expected");
            if bless {
                std::fs::write(&expected_path, &actual).unwrap();
                continue;
            }
            let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
            if actual != expected {
                failures.push(format!(
                    "{}:\n--- expected\n{expected}--- actual\n{actual}",
                    yaml_path.display()
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        // A golden file without its fixture is a forgotten rename.
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "expected") {
                assert!(
                    path.with_extension("yaml").exists(),
                    "{} has no .yaml",
                    path.display()
                );
            }
        }
    }
}
