//! Configuration: profiles.yaml parsed into raw types (with spans), then validated into the types below.
//!
//! Later code only sees these validated types: no half-initialised `Option`s, durations already parsed,
//! every profile reference already checked.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use indexmap::IndexMap;
pub use switchyard_actors::policy::{
    BreakerSettings, CooldownPolicy, HealthPolicy, Strategy, UpstreamLimits,
};

// Stage 1 (`load`: YAML -> `raw`) feeds stage 2 (`validate`), which parses values with `values`;
// every stage records its problems in a `report::Report`.
mod load;
mod raw;
mod report;
#[cfg(test)]
mod tests;
mod validate;
mod values;

pub use load::{check_file, load_file, load_str, Checked};
pub use report::{ConfigError, ConfigErrors};
pub use validate::OWN_ISSUER;

/// A fully validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this configuration was read from (for messages and reload).
    pub source: PathBuf,
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub routing: RoutingConfig,
    pub usage: UsageConfig,
    /// `state:` where replicas share their state (see `shared`).
    pub state: StateBackend,
    /// Client-visible model names, in file order.
    pub models: Vec<ModelConfig>,
    /// Upstream profiles, in file order.
    pub profiles: Vec<ProfileConfig>,
    /// `tiers:` what each tier may do (see `limits`); empty = no limits.
    pub tiers: IndexMap<String, TierConfig>,
    /// `pricing:` model name (as clients ask for it) -> price.
    pub pricing: IndexMap<String, ModelPrice>,
    /// `pricing_default:` for a model without a price, on a metered tier (without it such a model
    /// is refused there).
    pub pricing_default: Option<ModelPrice>,
}

impl Config {
    /// The price of `model` answered by `profile`: the profile's own, else `pricing:`'s, else
    /// `pricing_default`.
    pub fn price(&self, model: &str, profile: Option<&str>) -> Option<ModelPrice> {
        profile
            .and_then(|id| self.profiles.iter().find(|p| p.id == id))
            .and_then(|p| p.pricing.get(model).copied())
            .or_else(|| self.pricing.get(model).copied())
            .or(self.pricing_default)
    }

    /// The highest price any profile may charge for `model`, rate by rate (what a reservation
    /// covers before the answering profile is known); `None` when nothing prices it.
    pub fn max_price(&self, model: &str) -> Option<ModelPrice> {
        self.profiles
            .iter()
            .filter_map(|p| p.pricing.get(model).copied())
            .chain(self.price(model, None))
            .reduce(ModelPrice::max)
    }

    /// Whether `pricing:` or a profile lists `model` (as opposed to `pricing_default` covering it).
    pub fn lists_price(&self, model: &str) -> bool {
        self.pricing.contains_key(model)
            || self.profiles.iter().any(|p| p.pricing.contains_key(model))
    }
}

/// One entry of `tiers:`. `None` = unlimited.
#[derive(Debug, Clone, PartialEq)]
pub struct TierConfig {
    /// Every `/v1` request, per account (or per key without an account) per `rate_window`.
    pub requests_per_hour: Option<u64>,
    /// Proxied requests only (chat, completions, embeddings, messages) per `rate_window`.
    pub llm_requests_per_hour: Option<u64>,
    /// Prompt plus completion tokens per UTC day.
    pub tokens_per_day: Option<u64>,
    /// A larger `max_tokens` is refused with 400.
    pub max_tokens_per_request: Option<u64>,
    /// Live keys an account of this tier may create for itself (overrides `auth.max_keys_per_account`).
    pub max_keys: Option<u32>,
    /// Credits granted each UTC month, in micro-USD. `None` = the tier is not metered.
    pub monthly_credits_micros: Option<u64>,
    /// The fixed window of the request limits (default 1h).
    pub rate_window: Duration,
}

/// One entry of `pricing:`, USD per million tokens. The optional rates of the file default as
/// documented on `RawPrice`, so a two-rate entry charges what it always did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelPrice {
    pub input_per_million: f64,
    pub output_per_million: f64,
    pub cached_input_per_million: f64,
    pub cache_write_per_million: f64,
    pub cache_write_1h_per_million: f64,
    pub reasoning_per_million: f64,
}

impl ModelPrice {
    /// Two rates, the others following them (input for the cache, output for reasoning).
    pub fn flat(input_per_million: f64, output_per_million: f64) -> ModelPrice {
        ModelPrice {
            input_per_million,
            output_per_million,
            cached_input_per_million: input_per_million,
            cache_write_per_million: input_per_million,
            cache_write_1h_per_million: input_per_million,
            reasoning_per_million: output_per_million,
        }
    }

    /// Rate by rate, the higher of two prices.
    pub fn max(self, o: ModelPrice) -> ModelPrice {
        ModelPrice {
            input_per_million: self.input_per_million.max(o.input_per_million),
            output_per_million: self.output_per_million.max(o.output_per_million),
            cached_input_per_million: self
                .cached_input_per_million
                .max(o.cached_input_per_million),
            cache_write_per_million: self.cache_write_per_million.max(o.cache_write_per_million),
            cache_write_1h_per_million: self
                .cache_write_1h_per_million
                .max(o.cache_write_1h_per_million),
            reasoning_per_million: self.reasoning_per_million.max(o.reasoning_per_million),
        }
    }

    /// The highest rate a prompt token can cost (what a reservation charges per input token).
    pub fn max_input(&self) -> f64 {
        self.input_per_million
            .max(self.cached_input_per_million)
            .max(self.cache_write_per_million)
            .max(self.cache_write_1h_per_million)
    }

    /// The highest rate a completion token can cost.
    pub fn max_output(&self) -> f64 {
        self.output_per_million.max(self.reasoning_per_million)
    }
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
    /// `server.store_cache_size` (default 8 MiB): memory for sled's page cache. Read at start only.
    pub store_cache_bytes: u64,
    /// `server.body_idle_timeout` (default 10s): the longest pause between two pieces of a request
    /// body; a body that stalls longer gets 408.
    pub body_idle_timeout: Duration,
    /// `server.body_timeout` (default 60s): the longest a whole request body may take; 408 after it.
    pub body_timeout: Duration,
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
#[derive(Debug, Clone)]
pub struct StickyConfig {
    /// default true
    pub enabled: bool,
    /// default 30m
    pub ttl: Duration,
    /// Where the session key is read, first found wins (default [`StickySource::DEFAULTS`]).
    pub sources: Vec<StickySource>,
}

/// One place a request's sticky-session key may be read from (`routing.sticky.sources`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StickySource {
    /// A request header, its name lowercased (`header:X-Session-Id`).
    Header(String),
    /// A top-level body field the router reads anyway (`body:prompt_cache_key`, `body:user`).
    Body(BodyKey),
}

/// The body fields a session key may come from: the ones the routing peek already reads, so a
/// configured source costs no extra parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKey {
    PromptCacheKey,
    User,
}

impl StickySource {
    /// The default precedence: ours, then the coding agents' own headers (Claude Code's, Codex's
    /// session and thread ids), then Codex's body `prompt_cache_key`, then the body's `user`.
    pub const DEFAULTS: [&'static str; 6] = [
        "header:X-Session-Id",
        "header:x-claude-code-session-id",
        "header:session-id",
        "header:thread-id",
        "body:prompt_cache_key",
        "body:user",
    ];

    /// Reads `header:NAME` or `body:FIELD`; the error says what is accepted.
    pub fn parse(text: &str) -> Result<StickySource, String> {
        let expected = "expected `header:NAME` or `body:prompt_cache_key` / `body:user`";
        match text.split_once(':') {
            Some(("header", name)) => {
                let name = name.trim();
                let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
                if name.is_empty() || !name.bytes().all(token) {
                    return Err(format!("{text:?}: not a valid header name"));
                }
                Ok(StickySource::Header(name.to_ascii_lowercase()))
            }
            Some(("body", "prompt_cache_key")) => Ok(StickySource::Body(BodyKey::PromptCacheKey)),
            Some(("body", "user")) => Ok(StickySource::Body(BodyKey::User)),
            Some(("body", field)) => Err(format!(
                "{text:?}: body field {field:?} cannot be a session key (prompt_cache_key or user)"
            )),
            _ => Err(format!("{text:?}: {expected}")),
        }
    }

    /// [`StickySource::DEFAULTS`], parsed.
    pub fn defaults() -> Vec<StickySource> {
        Self::DEFAULTS
            .iter()
            .filter_map(|s| StickySource::parse(s).ok())
            .collect()
    }
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

/// `state.backend:` where the state several replicas must agree on lives.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum StateBackend {
    /// Each process alone, in its sled directory (the default).
    #[default]
    Local,
    /// Shared through Redis (`state.redis`).
    Redis(RedisConfig),
}

/// `state.redis:`
#[derive(Debug, Clone, PartialEq)]
pub struct RedisConfig {
    /// `redis://host:port/db`.
    pub url: String,
    /// Put before every key, so several deployments can share one Redis (default `switchyard:`).
    pub key_prefix: String,
    /// The longest one Redis command may take before the call falls back (default 50ms).
    pub command_timeout: Duration,
    /// How many replicas share the limits (default 1): while Redis is unreachable each enforces
    /// `limit × (1 − margin) / replicas` on its own.
    pub replicas: u32,
    /// The part of each limit the local shares leave unused (default 0.1).
    pub margin: f64,
    /// How often each replica exchanges all profile health lanes in full (default 1s): the safety net
    /// behind the pub/sub pushes, for a push lost while a replica was cut off.
    pub health_resync: Duration,
    /// `state.redis.credit_allowance_usd` (default 0), in micro-USD: what this replica may spend alone
    /// per account while Redis cannot decide credits; settled into Redis once it is back. 0: credits
    /// fail closed (503) while Redis is away.
    pub credit_allowance_micros: u64,
}

/// `usage:`
#[derive(Debug, Clone)]
pub struct UsageConfig {
    /// `usage.durable` (default true): a response is sent only once its usage record (and the credit
    /// movements before it) would survive a kill -9: written to the journal, or with `fsync` flushed.
    pub durable: bool,
    /// `usage.fsync` (default false): durable responses wait for a sled flush (fsync) instead of the
    /// journal's write, so they also survive a power loss. Read at start.
    pub fsync: bool,
    /// `usage.retention` (default 90 days): usage records older than this are removed; `None`
    /// (`0` or `forever`) keeps every record. Read at start.
    pub retention: Option<Duration>,
    /// `credits.reservation_lease` (default 10m): a reservation a crashed process left open is released
    /// once this long has passed since it was made.
    pub reservation_lease: Duration,
    /// `credits.notify`: threshold notices, when configured.
    pub notify: Option<NotifyConfig>,
}

/// `credits.notify:` a webhook POSTed once per account, UTC month and threshold when the account's
/// used share of its monthly credits reaches the threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct NotifyConfig {
    pub url: String,
    /// Ascending, each in (0, 1].
    pub thresholds: Vec<f64>,
    pub secret_env: String,
}

/// One entry of `models:`.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// The model name clients send; ending in `*`, a pattern: every name with the prefix before it.
    pub name: String,
    /// Other names clients may send for this model (never patterns).
    pub aliases: Vec<String>,
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

/// Which service a profile points at (`provider:`): it picks the wire format, fills the default
/// `base_url` and sets the header conventions. Kept apart from [`Provider`], which is all the proxy and
/// the codec need to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    OpenAi,
    Anthropic,
    OpenRouter,
    Groq,
    Together,
    Mistral,
    DeepSeek,
    Ollama,
    Vllm,
    Azure,
    /// The built-in demo upstream: answers in-process, with no network and no key (see
    /// `upstream::echo`). For trying the proxy and for tests; never a fallback for a real model.
    Echo,
}

impl Preset {
    /// Every preset, in the order the README and error messages list them.
    pub const ALL: [Preset; 11] = [
        Preset::OpenAi,
        Preset::Anthropic,
        Preset::OpenRouter,
        Preset::Groq,
        Preset::Together,
        Preset::Mistral,
        Preset::DeepSeek,
        Preset::Ollama,
        Preset::Vllm,
        Preset::Azure,
        Preset::Echo,
    ];

    /// The profiles.yaml spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Preset::OpenAi => "openai",
            Preset::Anthropic => "anthropic",
            Preset::OpenRouter => "openrouter",
            Preset::Groq => "groq",
            Preset::Together => "together",
            Preset::Mistral => "mistral",
            Preset::DeepSeek => "deepseek",
            Preset::Ollama => "ollama",
            Preset::Vllm => "vllm",
            Preset::Azure => "azure",
            Preset::Echo => "echo",
        }
    }

    /// The preset spelled `name` in profiles.yaml.
    pub fn parse(name: &str) -> Option<Preset> {
        Preset::ALL.into_iter().find(|p| p.as_str() == name)
    }

    /// The wire format this service speaks.
    pub fn wire(self) -> Provider {
        match self {
            Preset::Anthropic => Provider::Anthropic,
            _ => Provider::OpenAi,
        }
    }

    /// Whether this service has OpenAI's Responses API (`/responses`): then `/v1/responses` passes
    /// through; otherwise it is bridged to the service's chat API, statelessly.
    pub fn speaks_responses(self) -> bool {
        matches!(
            self,
            Preset::OpenAi
                | Preset::Azure
                | Preset::OpenRouter
                | Preset::Groq
                | Preset::Vllm
                | Preset::Echo
        )
    }

    /// The `base_url` used when the profile gives none; `None` for Azure, whose URL names the
    /// operator's own resource and deployment.
    pub fn default_base_url(self) -> Option<&'static str> {
        Some(match self {
            Preset::OpenAi => "https://api.openai.com/v1",
            Preset::Anthropic => "https://api.anthropic.com/v1",
            Preset::OpenRouter => "https://openrouter.ai/api/v1",
            Preset::Groq => "https://api.groq.com/openai/v1",
            Preset::Together => "https://api.together.xyz/v1",
            Preset::Mistral => "https://api.mistral.ai/v1",
            Preset::DeepSeek => "https://api.deepseek.com/v1",
            Preset::Ollama => "http://127.0.0.1:11434/v1",
            Preset::Vllm => "http://127.0.0.1:8000/v1",
            Preset::Echo => ECHO_BASE_URL,
            Preset::Azure => return None,
        })
    }

    /// Whether a profile of this service is useless without a credential, so that leaving it out is a
    /// config error. `openai` and `anthropic` stay lenient because they also name any compatible
    /// server; Ollama and vLLM usually run without a key.
    pub fn needs_credential(self) -> bool {
        !matches!(
            self,
            Preset::OpenAi | Preset::Anthropic | Preset::Ollama | Preset::Vllm | Preset::Echo
        )
    }
}

/// What an echo profile shows as its `base_url`: it has none, it answers in-process.
pub const ECHO_BASE_URL: &str = "builtin:echo";

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
    /// The wire format, from `preset`.
    pub provider: Provider,
    /// `provider:` as written: the service, with its URL and header conventions.
    pub preset: Preset,
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
    /// `headers:` extra headers sent upstream with every request, OpenRouter's `app_url` / `app_name`
    /// already folded in as `HTTP-Referer` / `X-Title`.
    pub headers: IndexMap<String, String>,
    /// `api_version:` (Azure only, where it is required): sent as `?api-version=...` on every URL.
    pub api_version: Option<String>,
    /// `auth: {type: oauth2, ...}`: the credential comes from `switchyard login`, not `api_key`.
    pub oauth: Option<OAuthConfig>,
    /// `limits:` the provider's per-minute limits on this credential (the router skips a profile at them).
    pub limits: UpstreamLimits,
    /// `pricing:` client model name -> the price of this profile's answer (over the top-level one).
    pub pricing: IndexMap<String, ModelPrice>,
}

/// A profile's `auth: {type: oauth2, ...}`: the authorization-code flow with PKCE (S256).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OAuthConfig {
    pub authorize_url: String,
    pub token_url: String,
    /// Required for `returns: tokens`; OpenRouter-style endpoints take none.
    pub client_id: Option<String>,
    pub scopes: Vec<String>,
    /// The local callback's port on 127.0.0.1; 0 (default) picks a free one.
    pub redirect_port: u16,
    pub returns: OAuthReturns,
}

/// What a provider's token endpoint hands back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OAuthReturns {
    /// RFC 6749 tokens: an access token, usually with `expires_in` and a refresh token.
    Tokens,
    /// An API key that does not expire (OpenRouter's PKCE flow).
    ApiKey,
}

impl Config {
    /// The profile with this id.
    pub fn profile(&self, id: &str) -> Option<&ProfileConfig> {
        self.profiles.iter().find(|p| p.id == id)
    }

    /// The model entry with this configured name (a pattern's own name, such as `openrouter/*`).
    pub fn model(&self, name: &str) -> Option<&ModelConfig> {
        self.models.iter().find(|m| m.name == name)
    }

    /// The model a client's `requested` name means: a model's name, else one of its aliases, else
    /// the wildcard model with the longest matching prefix. Names and aliases win over patterns.
    pub fn resolve(&self, requested: &str) -> Option<ResolvedModel<'_>> {
        let exact = self
            .models
            .iter()
            .find(|m| !m.is_pattern() && m.name == requested);
        if let Some(model) = exact {
            return Some(ResolvedModel {
                model,
                upstream: None,
            });
        }
        if let Some(model) = self
            .models
            .iter()
            .find(|m| m.aliases.iter().any(|a| a == requested))
        {
            return Some(ResolvedModel {
                model,
                upstream: Some(model.name.clone()),
            });
        }
        self.models
            .iter()
            .filter_map(|m| {
                let prefix = m.name.strip_suffix('*')?;
                let rest = requested.strip_prefix(prefix)?;
                // A name with a `*` of its own is a pattern's spelling, not a model.
                (!rest.is_empty() && !rest.contains('*')).then_some((prefix.len(), m, rest))
            })
            .max_by_key(|(len, _, _)| *len)
            .map(|(_, model, rest)| ResolvedModel {
                model,
                upstream: Some(rest.to_owned()),
            })
    }
}

/// What a client's model name resolved to.
#[derive(Debug, Clone)]
pub struct ResolvedModel<'a> {
    /// The configured model: routing, metrics, prices and scopes use its `name`.
    pub model: &'a ModelConfig,
    /// The model name to send upstream when a profile's `model_map` does not rename it: the model's
    /// name for an alias, the rest of the name after the prefix for a pattern; `None` for the name
    /// itself (sent as the client wrote it).
    pub upstream: Option<String>,
}

impl ModelConfig {
    /// A pattern (`openrouter/*`) rather than one name.
    pub fn is_pattern(&self) -> bool {
        self.name.ends_with('*')
    }
}
