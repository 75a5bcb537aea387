//! The unit tests of loading and validation: defaults, every key read, each rule's message and
//! position, and the golden fixtures under `tests/fixtures/config/`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::load::check_str;
use super::values::{DEFAULT_COOLDOWN, DEFAULT_LOGIN};
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
    assert!(!c.usage.fsync);
    assert_eq!(c.state, StateBackend::Local);
    assert!(c.models.is_empty() && c.profiles.is_empty());
}

#[test]
fn state_redis_is_read_with_defaults() {
    let c = load("state:\n  backend: redis\n  redis:\n    url: redis://127.0.0.1:6379/0\n");
    assert_eq!(
        c.state,
        StateBackend::Redis(RedisConfig {
            url: "redis://127.0.0.1:6379/0".into(),
            key_prefix: "switchyard:".into(),
            command_timeout: Duration::from_millis(50),
            replicas: 1,
            margin: 0.1,
            health_resync: Duration::from_secs(1),
            credit_allowance_micros: 0,
        })
    );
    let c = load(
        "state:\n  backend: redis\n  redis:\n    url: redis://r:1/2\n    key_prefix: \"sy-a:\"\n    \
         command_timeout: 20ms\n    replicas: 3\n    margin: 0.25\n    health_resync: 5s\n",
    );
    let StateBackend::Redis(r) = c.state else {
        panic!("not redis: {:?}", c.state)
    };
    assert_eq!(
        (
            r.key_prefix.as_str(),
            r.command_timeout,
            r.replicas,
            r.margin,
            r.health_resync
        ),
        (
            "sy-a:",
            Duration::from_millis(20),
            3,
            0.25,
            Duration::from_secs(5)
        )
    );
    let c = load(
        "state:\n  backend: redis\n  redis:\n    url: redis://r:1/2\n    credit_allowance_usd: 0.25\n",
    );
    let StateBackend::Redis(r) = c.state else {
        panic!("not redis: {:?}", c.state)
    };
    assert_eq!(r.credit_allowance_micros, 250_000);
    // A redis section is allowed (and unused) while the backend stays local.
    assert_eq!(
        load("state:\n  redis:\n    replicas: 2\n").state,
        StateBackend::Local
    );
}

#[test]
fn state_backend_and_redis_keys_are_checked() {
    check(
        "state:\n  backend: etcd\n",
        &[r#"t.yaml:2:12: state.backend: unknown backend "etcd": expected local or redis"#],
    );
    check(
        "state:\n  backend: redis\n",
        &["t.yaml:2:12: state.redis.url: is required when `state.backend` is `redis`"],
    );
    check(
        "state:\n  backend: redis\n  redis:\n    replicas: 2\n",
        &["t.yaml:4:5: state.redis.url: is required when `state.backend` is `redis`"],
    );
    check(
        "state:\n  backend: redis\n  redis:\n    url: http://r:1\n    key_prefix: \"\"\n    \
         command_timeout: 0s\n    replicas: 0\n    margin: 1.0\n",
        &[
            "t.yaml:4:10: state.redis.url: must be a redis://host:port/db URL",
            "t.yaml:5:17: state.redis.key_prefix: must not be empty",
            "t.yaml:6:22: state.redis.command_timeout: must be > 0",
            "t.yaml:7:15: state.redis.replicas: must be >= 1",
            "t.yaml:8:13: state.redis.margin: must be >= 0 and < 1",
        ],
    );
    check(
        "state:\n  backend: redis\n  redis:\n    url: redis://r:1\n    credit_allowance_usd: -1\n",
        &["t.yaml:5:27: state.redis.credit_allowance_usd: must be between 0 and 1000000"],
    );
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
    let f = load("usage: {fsync: true}\n");
    assert!(f.usage.fsync && f.usage.durable);
    assert_eq!(
        c.usage.retention,
        Some(Duration::from_secs(90 * 86_400)),
        "bounded by default"
    );
    for (text, kept) in [
        ("30d", Some(Duration::from_secs(30 * 86_400))),
        ("\"0\"", None),
        ("0", None),
        ("forever", None),
        ("10s", Some(Duration::from_secs(10))),
    ] {
        let r = load(&format!("usage: {{retention: {text}}}\n"));
        assert_eq!(r.usage.retention, kept, "{text}");
    }
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
            r#"t.yaml:9:5: profiles[0].colour: unknown key "colour" (expected one of: id, provider, base_url, api_key_env, api_key, priority, weight, model_map, timeouts, headers, app_url, app_name, api_version, auth, limits, pricing)"#,
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
            r#"t.yaml:3:15: profiles[0].provider: unknown provider "x" (supported: openai, anthropic, openrouter, groq, together, mistral, deepseek, ollama, vllm, azure, echo)"#,
        ],
    );
}

#[test]
fn presets_fill_base_url_wire_format_and_attribution_headers() {
    let mut yaml = String::from("profiles:\n");
    for preset in Preset::ALL {
        let extra = match preset {
            // Takes no key; checked on its own below.
            Preset::Echo => continue,
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
    // The two-rate form: the cache at the input rate, reasoning at the output rate.
    assert_eq!(c.pricing["m"], crate::config::ModelPrice::flat(0.15, 2.0));
    assert_eq!(c.pricing_default, None);
}

#[test]
fn a_price_table_with_cache_reasoning_defaults_and_profile_overrides() {
    let c = load(
        "models:\n  - name: m\n    profiles: [a, b]\nprofiles:\n  - id: a\n    provider: ollama\n  - id: b\n    provider: ollama\n    pricing:\n      m: {input_per_million: 5, output_per_million: 1}\npricing:\n  m:\n    input_per_million: 1\n    cached_input_per_million: 0.1\n    cache_write_per_million: 1.25\n    output_per_million: 4\n    reasoning_per_million: 8\npricing_default:\n  input_per_million: 9\n  output_per_million: 9\n",
    );
    let m = c.pricing["m"];
    assert_eq!(
        (
            m.cached_input_per_million,
            m.cache_write_per_million,
            m.cache_write_1h_per_million
        ),
        (0.1, 1.25, 1.25),
        "the 1-hour write defaults to the 5-minute one"
    );
    assert_eq!(m.reasoning_per_million, 8.0);
    assert_eq!(c.price("m", Some("a")), Some(m));
    assert_eq!(
        c.price("m", Some("b")).map(|p| p.input_per_million),
        Some(5.0)
    );
    assert_eq!(c.price("zzz", None).map(|p| p.input_per_million), Some(9.0));
    let max = c.max_price("m").unwrap();
    assert_eq!((max.input_per_million, max.output_per_million), (5.0, 4.0));
    assert!(c.lists_price("m") && !c.lists_price("zzz"));
    let e = load_str(
        Path::new("t.yaml"),
        "pricing:\n  m:\n    input_per_million: 1\n    output_per_million: 1\n    reasoning_per_million: -1\n",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("pricing.m.reasoning_per_million: must be >= 0"),
        "{e}"
    );
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
        "usage:\n  fsync: always\n",
        &[r#"t.yaml:2:10: usage.fsync: expected true or false, found "always""#],
    );
    check(
        "usage:\n  retention: 500ms\n",
        &["t.yaml:2:14: usage.retention: must be at least 1s (or 0 / forever to keep every record)"],
    );
    check(
        "usage:\n  durable: false\n  fsync: true\n",
        &["t.yaml:3:10: usage.fsync: needs `usage.durable: true` (fsync says how a durable response waits)"],
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
        &[r#"t.yaml:3:15: models[0].profiles: invalid type: string "main", expected a sequence"#],
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
            r#"t.yaml:3:3: server.threads: unknown key "threads" (expected one of: listen, data_dir, max_body_size, store_cache_size, body_idle_timeout, body_timeout)"#,
            "t.yaml:5:17: routing.max_attempts: must be >= 1",
            r#"t.yaml:8:19: models[0].profiles[1]: unknown profile "ghost""#,
            "t.yaml:13:13: profiles[0].weight: must be > 0",
            r#"t.yaml:14:9: profiles[1].id: duplicate profile id "a" (first defined at line 10)"#,
            r#"t.yaml:15:15: profiles[1].provider: unknown provider "cohere" (supported: openai, anthropic, openrouter, groq, together, mistral, deepseek, ollama, vllm, azure, echo)"#,
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
    goldens("tests/fixtures/config", |name, yaml| {
        match load_str(Path::new(name), yaml) {
            Ok(_) => "(no errors: a fixture must fail)".to_owned(),
            Err(e) => format!("{e}\n"),
        }
    });
}

/// The same for `tests/fixtures/config/warnings/`: valid files, checked in an environment where
/// no variable is set, compared with their warnings.
#[test]
fn warning_fixtures_match_their_golden_output() {
    goldens(
        "tests/fixtures/config/warnings",
        |name, yaml| match check_str(Path::new(name), yaml, |_| None) {
            Ok(c) if c.warnings.is_empty() => "(no warnings: a fixture must warn)".to_owned(),
            Ok(c) => c.warnings.iter().map(|w| format!("{w}\n")).collect(),
            Err(e) => format!("(errors: a warning fixture must be valid)\n{e}\n"),
        },
    );
}

/// Compares `render(NAME.yaml, its text)` with `NAME.expected` for each fixture in `dir` (relative
/// to the crate), or writes the latter with `SWITCHYARD_BLESS=1`.
fn goldens(dir: &str, render: impl Fn(&std::ffi::OsStr, &str) -> String) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
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
        let actual = render(name, &yaml);
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

#[test]
fn only_check_looks_up_key_variables_and_a_blank_one_is_unusable_too() {
    let yaml = format!("{PROFILE}    api_key_env: KEY\n");
    let env = |value: Option<&'static str>| move |_: &str| value.map(str::to_owned);
    let warnings = |value| {
        check_str(Path::new("t.yaml"), &yaml, env(value))
            .unwrap()
            .warnings
    };
    let lines =
        |value| -> Vec<String> { warnings(value).iter().map(ToString::to_string).collect() };
    assert_eq!(
        lines(None),
        ["t.yaml:5:18: profiles[0].api_key_env: KEY is not set; this profile will be skipped until it is"]
    );
    assert_eq!(
        lines(Some(" ")),
        ["t.yaml:5:18: profiles[0].api_key_env: KEY is empty; this profile will be skipped until it is set"]
    );
    assert!(warnings(Some("sk-x")).is_empty());
    // Loading alone (what `serve` does) has no warnings to give: it returns only the config.
    assert_eq!(
        load(&yaml).profiles[0].api_key,
        ApiKeySource::Env("KEY".into())
    );
}

#[test]
fn a_model_name_resolves_by_name_then_alias_then_longest_pattern() {
    let c = load(
        "models:\n  - {name: m, profiles: [a], aliases: [m2]}\n  - {name: \"or/*\", profiles: [a]}\n  - {name: \"or/x/*\", profiles: [a]}\n  - {name: or/x/y, profiles: [a]}\nprofiles:\n  - {id: a, provider: openai, api_key: k}\n",
    );
    let r = |n: &str| c.resolve(n).map(|r| (r.model.name.clone(), r.upstream));
    assert_eq!(r("m"), Some(("m".into(), None)));
    assert_eq!(r("m2"), Some(("m".into(), Some("m".into()))));
    assert_eq!(r("or/a/b"), Some(("or/*".into(), Some("a/b".into()))));
    assert_eq!(r("or/x/z"), Some(("or/x/*".into(), Some("z".into()))));
    assert_eq!(r("or/x/y"), Some(("or/x/y".into(), None)));
    assert_eq!(r("or/"), None);
    assert_eq!(r("or/*"), None, "a pattern is not a name clients send");
    assert_eq!(r("nope"), None);
}

#[test]
fn sticky_sources_default_to_the_agents_headers_then_the_body() {
    let c = load("");
    assert_eq!(
        c.routing.sticky.sources,
        vec![
            StickySource::Header("x-session-id".into()),
            StickySource::Header("x-claude-code-session-id".into()),
            StickySource::Header("session-id".into()),
            StickySource::Header("thread-id".into()),
            StickySource::Body(BodyKey::PromptCacheKey),
            StickySource::Body(BodyKey::User),
        ]
    );
    let c = load("routing:\n  sticky:\n    sources: [\"body:user\", \"header:X-Conversation\"]\n");
    assert_eq!(
        c.routing.sticky.sources,
        vec![
            StickySource::Body(BodyKey::User),
            StickySource::Header("x-conversation".into()),
        ]
    );
}

#[test]
fn sticky_sources_name_what_is_wrong_and_where() {
    check(
        "routing:\n  sticky:\n    sources:\n      - \"header:X-Session-Id\"\n      - \"cookie:sid\"\n      - \"body:messages\"\n      - \"header:bad name\"\n      - \"header:x-session-id\"\n",
        &[
            r#"t.yaml:5:9: routing.sticky.sources[1]: "cookie:sid": expected `header:NAME` or `body:prompt_cache_key` / `body:user`"#,
            r#"t.yaml:6:9: routing.sticky.sources[2]: "body:messages": body field "messages" cannot be a session key (prompt_cache_key or user)"#,
            r#"t.yaml:7:9: routing.sticky.sources[3]: "header:bad name": not a valid header name"#,
            "t.yaml:8:9: routing.sticky.sources[4]: listed twice",
        ],
    );
    check(
        "routing:\n  sticky:\n    sources: []\n",
        &["t.yaml:3:14: routing.sticky.sources: must list at least one source (set routing.sticky.enabled: false to turn stickiness off)"],
    );
}
