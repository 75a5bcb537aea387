//! Configuration: profiles.yaml parsed into raw types (with spans), then validated into the types below.
//!
//! Later code only sees these validated types: no half-initialised `Option`s, durations already parsed,
//! every profile reference already checked.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use indexmap::IndexMap;
pub use switchyard_actors::policy::{BreakerSettings, CooldownPolicy, HealthPolicy, Strategy};

mod load;
mod raw;

pub use load::{load_file, load_str, ConfigError, ConfigErrors, OWN_ISSUER};

/// A fully validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this configuration was read from (for messages and reload).
    pub source: PathBuf,
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub routing: RoutingConfig,
    pub usage: UsageConfig,
    /// Client-visible model names, in file order.
    pub models: Vec<ModelConfig>,
    /// Upstream profiles, in file order.
    pub profiles: Vec<ProfileConfig>,
}

/// `server:`
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// `server.listen` (default 127.0.0.1:8080).
    pub listen: SocketAddr,
    /// `server.data_dir` (default ./data), relative to the working directory.
    pub data_dir: PathBuf,
    /// `server.max_body_size` (default 10 MiB; written as bytes or "512KiB", "10MiB"): larger bodies get 413.
    pub max_body_bytes: usize,
}

/// `auth:`
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// `auth.required` (default true).
    pub required: bool,
    /// `auth.admin_token_env` (default SWITCHYARD_ADMIN_TOKEN).
    pub admin_token_env: String,
    /// `auth.jwt_secret_env` (default SWITCHYARD_JWT_SECRET): the HS256 secret of Switchyard's own access
    /// tokens; when the variable is unset, a random secret kept in `data_dir/jwt_secret` (mode 0600).
    pub jwt_secret_env: String,
    /// `auth.access_token_ttl` (default 30m).
    pub access_token_ttl: Duration,
    /// `auth.refresh_token_ttl` (default 7d).
    pub refresh_token_ttl: Duration,
    /// `auth.max_keys_per_account` (default 10): live keys an account may create for itself.
    pub max_keys_per_account: u32,
    pub login: LoginLimits,
    /// `auth.issuers`: external identity providers whose JWTs are accepted.
    pub issuers: Vec<IssuerConfig>,
}

/// `auth.login:` how many sign-in attempts are allowed per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginLimits {
    /// Failed attempts per account (default 5); a success resets the count.
    pub max_failures_per_account: u32,
    /// Attempts of any outcome per client address (default 20).
    pub max_attempts_per_address: u32,
    /// default 5m
    pub window: Duration,
}

/// One entry of `auth.issuers:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerConfig {
    /// Must equal the token's `iss`.
    pub issuer: String,
    /// Must be in the token's `aud`.
    pub audience: String,
    pub keys: IssuerKeys,
    pub claims: ClaimMapping,
}

/// Where an issuer's verification keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssuerKeys {
    /// RS256/ES256 keys from a JWKS document.
    Jwks {
        url: String,
        /// `jwks_refetch_interval` (default 30s): the shortest time between two fetches.
        refetch_interval: Duration,
        /// `jwks_max_age` (default 1h): keys older than this are refetched.
        max_age: Duration,
    },
    /// HS256 with a secret read from this variable (`shared_secret_env`).
    SharedSecret { env: String },
}

/// `auth.issuers[].claims:` names of the claims that carry each field; `None` = not read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimMapping {
    /// default `sub`
    pub subject: String,
    pub role: Option<String>,
    pub tier: Option<String>,
    pub project: Option<String>,
}

/// `routing:`
#[derive(Debug, Clone)]
pub struct RoutingConfig {
    /// `routing.strategy` (default round_robin).
    pub strategy: Strategy,
    /// `routing.max_attempts` (default 3, must be >= 1).
    pub max_attempts: u32,
    pub sticky: StickyConfig,
    /// `routing.cooldown` / `routing.billing_cooldown` / `routing.breaker`.
    pub health: HealthPolicy,
    /// `routing.timeouts`: the defaults every profile starts from.
    pub timeouts: Timeouts,
}

/// `routing.sticky:`
#[derive(Debug, Clone, Copy)]
pub struct StickyConfig {
    /// default true
    pub enabled: bool,
    /// default 30m
    pub ttl: Duration,
}

/// `routing.timeouts:` or a profile's `timeouts:` (each key optional there, falling back to routing's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP/TLS connect (default 5s).
    pub connect: Duration,
    /// Until the upstream's response headers arrive (default 60s).
    pub first_byte: Duration,
    /// Between two chunks of a streamed body (default 60s).
    pub idle: Duration,
}

/// `usage:`
#[derive(Debug, Clone, Copy)]
pub struct UsageConfig {
    /// `usage.durable` (default true): a response is sent only after its usage record is flushed to disk.
    pub durable: bool,
}

/// One entry of `models:`.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// The model name clients send.
    pub name: String,
    /// Profile ids, all defined under `profiles:`.
    pub profiles: Vec<String>,
    /// Overrides `routing.strategy` for this model.
    pub strategy: Option<Strategy>,
}

/// Which wire format a profile speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// Any OpenAI-compatible API.
    OpenAi,
    /// Anthropic's Messages API: chat requests and answers are translated both ways.
    Anthropic,
}

impl Provider {
    /// The profiles.yaml spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::OpenAi => "openai",
            Provider::Anthropic => "anthropic",
        }
    }
}

/// Where a profile's upstream credential comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiKeySource {
    /// `api_key_env: NAME`: read from the environment at start-up.
    Env(String),
    /// `api_key: "..."`: a literal (tests and local servers).
    Literal(String),
    /// Neither given: no Authorization header is sent (local servers such as Ollama or vLLM).
    None,
}

/// One entry of `profiles:`.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileConfig {
    pub id: String,
    pub provider: Provider,
    /// `base_url` without a trailing slash, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    pub api_key: ApiKeySource,
    /// default 1; lower is tried first under `priority`.
    pub priority: u32,
    /// default 1; must be > 0.
    pub weight: u32,
    /// client model name -> upstream model name.
    pub model_map: IndexMap<String, String>,
    /// routing.timeouts overridden by the profile's own `timeouts:`.
    pub timeouts: Timeouts,
    /// `headers:` extra headers sent upstream with every request (e.g. OpenRouter attribution).
    pub headers: IndexMap<String, String>,
}

impl Config {
    /// The profile with this id.
    pub fn profile(&self, id: &str) -> Option<&ProfileConfig> {
        self.profiles.iter().find(|p| p.id == id)
    }

    /// The model entry with this client-visible name.
    pub fn model(&self, name: &str) -> Option<&ModelConfig> {
        self.models.iter().find(|m| m.name == name)
    }
}
