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

pub use load::{load_file, load_str, ConfigError, ConfigErrors};

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
}

impl Provider {
    /// The profiles.yaml spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::OpenAi => "openai",
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
