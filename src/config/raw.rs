//! The raw shape of profiles.yaml: exactly what the file says, nothing checked beyond YAML types.
//!
//! Every struct denies unknown keys. Every key is optional here, even the required ones, so that a
//! missing key becomes one collected error among the others instead of stopping serde. Values that a
//! later check may reject are `Spanned`, so that the error can point at their line and column; the
//! list entries of `models:` and `profiles:` are spanned too, so that a missing key can point at
//! the entry it is missing from.

use indexmap::IndexMap;
use marked_yaml::Spanned;
use serde::Deserialize;

/// A scalar written as text in the file, with its position.
pub(crate) type Text = Spanned<String>;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a mapping")]
pub(crate) struct RawConfig {
    pub server: RawServer,
    pub auth: RawAuth,
    pub routing: RawRouting,
    pub usage: RawUsage,
    pub credits: RawCredits,
    pub state: RawState,
    pub models: Vec<Spanned<RawModel>>,
    pub profiles: Vec<Spanned<RawProfile>>,
    /// `tiers:` tier name -> limits.
    pub tiers: IndexMap<String, RawTier>,
    /// `pricing:` model name -> prices.
    pub pricing: IndexMap<String, Spanned<RawPrice>>,
    /// `pricing_default:` the price of a model `pricing:` does not list, on metered tiers.
    pub pricing_default: Option<Spanned<RawPrice>>,
}

/// One entry of `tiers:`; every limit is optional (absent = unlimited).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a mapping")]
pub(crate) struct RawTier {
    pub requests_per_hour: Option<Spanned<i64>>,
    pub llm_requests_per_hour: Option<Spanned<i64>>,
    pub tokens_per_day: Option<Spanned<i64>>,
    pub max_tokens_per_request: Option<Spanned<i64>>,
    pub max_keys: Option<Spanned<i64>>,
    /// USD.
    pub monthly_credits: Option<Spanned<f64>>,
    /// The request windows' length (default 1h); for short bursts and tests.
    pub rate_window: Option<Text>,
}

/// One entry of `pricing:`, in USD per million tokens.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a mapping")]
pub(crate) struct RawPrice {
    pub input_per_million: Option<Spanned<f64>>,
    pub output_per_million: Option<Spanned<f64>>,
    /// Prompt tokens read from the provider's cache (default: `input_per_million`).
    pub cached_input_per_million: Option<Spanned<f64>>,
    /// Prompt tokens written to the cache, 5-minute lifetime (default: `input_per_million`).
    pub cache_write_per_million: Option<Spanned<f64>>,
    /// Prompt tokens written to the cache, 1-hour lifetime (default: `cache_write_per_million`).
    pub cache_write_1h_per_million: Option<Spanned<f64>>,
    /// Reasoning tokens, a part of the completion (default: `output_per_million`).
    pub reasoning_per_million: Option<Spanned<f64>>,
}

/// `server:`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a mapping")]
pub(crate) struct RawServer {
    pub listen: Option<Text>,
    pub data_dir: Option<Text>,
    /// An integer (bytes) or a size such as "512KiB"; read as text and parsed by the validator.
    pub max_body_size: Option<Text>,
    /// sled's page cache: a size like `max_body_size`.
    pub store_cache_size: Option<Text>,
    /// Longest pause between two pieces of a request body.
    pub body_idle_timeout: Option<Text>,
    /// Longest a whole request body may take to arrive.
    pub body_timeout: Option<Text>,
}

/// `auth:`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a mapping")]
pub(crate) struct RawAuth {
    pub required: Option<bool>,
    pub admin_token_env: Option<Text>,
    pub jwt_secret_env: Option<Text>,
    pub access_token_ttl: Option<Text>,
    pub refresh_token_ttl: Option<Text>,
    pub max_keys_per_account: Option<Spanned<i64>>,
    pub login: RawLogin,
    pub issuers: Vec<Spanned<RawIssuer>>,
}

/// `auth.login:`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a mapping")]
pub(crate) struct RawLogin {
    pub max_failures_per_account: Option<Spanned<i64>>,
    pub max_attempts_per_address: Option<Spanned<i64>>,
    pub window: Option<Text>,
}

/// One entry of `auth.issuers:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a mapping")]
pub(crate) struct RawIssuer {
    /// Required.
    pub issuer: Option<Text>,
    /// Required.
    pub audience: Option<Text>,
    /// Exactly one of `jwks_url` and `shared_secret_env`.
    pub jwks_url: Option<Text>,
    pub shared_secret_env: Option<Text>,
    pub jwks_refetch_interval: Option<Text>,
    pub jwks_max_age: Option<Text>,
    pub claims: RawClaims,
}

/// `auth.issuers[].claims:` which claim carries what.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a mapping")]
pub(crate) struct RawClaims {
    pub subject: Option<Text>,
    pub role: Option<Text>,
    pub tier: Option<Text>,
    pub project: Option<Text>,
}

/// `routing:`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a mapping")]
pub(crate) struct RawRouting {
    pub strategy: Option<Text>,
    /// Signed, so that `0` and `-1` reach the validator and get a "must be >= 1" message.
    pub max_attempts: Option<Spanned<i64>>,
    pub sticky: RawSticky,
    pub cooldown: RawCooldown,
    pub billing_cooldown: RawCooldown,
    pub breaker: RawBreaker,
    pub timeouts: RawTimeouts,
}

/// `routing.sticky:`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a mapping")]
pub(crate) struct RawSticky {
    pub enabled: Option<bool>,
    pub ttl: Option<Text>,
    /// Where a request's session key is read, first found wins (`header:NAME`, `body:FIELD`).
    pub sources: Option<Spanned<Vec<Text>>>,
}

/// `routing.cooldown:` and `routing.billing_cooldown:`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a mapping")]
pub(crate) struct RawCooldown {
    pub initial: Option<Text>,
    pub max: Option<Text>,
}

/// `routing.breaker:`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a mapping")]
pub(crate) struct RawBreaker {
    pub failure_threshold: Option<Spanned<i64>>,
    pub open_for: Option<Text>,
}

/// `routing.timeouts:` and a profile's `timeouts:`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a mapping")]
pub(crate) struct RawTimeouts {
    pub connect: Option<Text>,
    pub first_byte: Option<Text>,
    pub idle: Option<Text>,
}

/// `usage:`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a mapping")]
pub(crate) struct RawUsage {
    pub durable: Option<bool>,
    /// Wait for an fsync (power-loss safety) instead of the journal's write (kill -9 safety).
    pub fsync: Option<Spanned<bool>>,
    /// How long usage records are kept: a duration, or `0` / `forever`.
    pub retention: Option<Text>,
}

/// `credits:`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a mapping")]
pub(crate) struct RawCredits {
    /// How long a reservation left open by a process that is gone stays spent (default 10m).
    pub reservation_lease: Option<Text>,
    /// Threshold notices: a signed webhook when an account has used these fractions of its month.
    pub notify: Option<Spanned<RawNotify>>,
}

/// `credits.notify:`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a mapping")]
pub(crate) struct RawNotify {
    /// Required: where notices are POSTed.
    pub url: Option<Text>,
    /// Fractions of the monthly credits, each in (0, 1] (default 0.8, 0.95, 1.0).
    pub thresholds: Option<Vec<Spanned<f64>>>,
    /// The variable holding the signing secret (default `SWITCHYARD_BILLING_WEBHOOK_SECRET`).
    pub secret_env: Option<Text>,
}

/// `state:` where the state replicas share lives.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a mapping")]
pub(crate) struct RawState {
    /// `local` (default) or `redis`.
    pub backend: Option<Text>,
    pub redis: Option<Spanned<RawRedis>>,
}

/// `state.redis:`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a mapping")]
pub(crate) struct RawRedis {
    /// Required with `backend: redis`.
    pub url: Option<Text>,
    pub key_prefix: Option<Text>,
    pub command_timeout: Option<Text>,
    /// How many replicas share the limits: the local share of a limit while Redis is unreachable.
    pub replicas: Option<Spanned<i64>>,
    /// The part of a limit the local shares leave unused, in [0, 1).
    pub margin: Option<Spanned<f64>>,
    /// The period of the full health exchange behind the pushes.
    pub health_resync: Option<Text>,
    /// What one replica may spend alone per account while Redis is away, in USD (default 0).
    pub credit_allowance_usd: Option<Spanned<f64>>,
}

/// One entry of `models:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a mapping")]
pub(crate) struct RawModel {
    /// Required.
    pub name: Option<Text>,
    /// Required; the list itself is spanned so that "must not be empty" can point at it.
    pub profiles: Option<Spanned<Vec<Text>>>,
    pub strategy: Option<Text>,
    /// Other names clients may send for the same model.
    pub aliases: Vec<Text>,
}

/// One entry of `profiles:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a mapping")]
pub(crate) struct RawProfile {
    /// Required.
    pub id: Option<Text>,
    /// Required.
    pub provider: Option<Text>,
    /// Required.
    pub base_url: Option<Text>,
    pub api_key_env: Option<Text>,
    pub api_key: Option<Text>,
    pub priority: Option<Spanned<i64>>,
    pub weight: Option<Spanned<i64>>,
    pub model_map: IndexMap<String, String>,
    pub timeouts: RawTimeouts,
    /// Spanned so that a bad header name or value points at itself.
    pub headers: IndexMap<Text, Text>,
    /// OpenRouter attribution, sent as `HTTP-Referer` and `X-Title`.
    pub app_url: Option<Text>,
    pub app_name: Option<Text>,
    /// Azure's `api-version` query parameter.
    pub api_version: Option<Text>,
    /// OAuth2 credentials (`switchyard login`) instead of a static key.
    pub auth: Option<Spanned<RawProfileAuth>>,
    /// The provider's own per-minute limits on this credential.
    pub limits: RawProfileLimits,
    /// Client model name -> the price of this profile's answer to it (its upstream model), over
    /// the top-level `pricing:`.
    pub pricing: IndexMap<String, Spanned<RawPrice>>,
}

/// A profile's `limits:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a mapping")]
pub(crate) struct RawProfileLimits {
    pub rpm: Option<Spanned<i64>>,
    pub tpm: Option<Spanned<i64>>,
}

/// A profile's `auth:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default, expecting = "a mapping")]
pub(crate) struct RawProfileAuth {
    /// Required; only `oauth2`.
    #[serde(rename = "type")]
    pub kind: Option<Text>,
    pub authorize_url: Option<Text>,
    pub token_url: Option<Text>,
    pub client_id: Option<Text>,
    pub scopes: Vec<Text>,
    pub pkce: Option<Spanned<bool>>,
    pub redirect_port: Option<Spanned<i64>>,
    /// `tokens` (default) or `api_key`.
    pub returns: Option<Text>,
}
