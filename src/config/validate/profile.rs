//! Checking one entry of `profiles:`: its id, provider preset and URL, credential, order, limits,
//! headers, OAuth block and the keys that only some presets take.

use std::collections::{HashMap, HashSet};

use indexmap::IndexMap;
use marked_yaml::Spanned;

use crate::config::raw::{RawProfile, RawProfileAuth, RawProfileLimits, Text};
use crate::config::report::{line_of, Report};
use crate::config::values::{count, env_name, pricing, timeouts, DEFAULT_PRIORITY, DEFAULT_WEIGHT};
use crate::config::{
    ApiKeySource, OAuthConfig, OAuthReturns, Preset, ProfileConfig, Provider, Timeouts,
    UpstreamLimits,
};

/// Named in the unknown-provider message, in the order of [`Preset::ALL`].
const SUPPORTED_PROVIDERS: &str =
    "openai, anthropic, openrouter, groq, together, mistral, deepseek, ollama, vllm, azure, echo";
/// Headers the proxy sets itself: a profile overriding them would break auth or framing.
const RESERVED_HEADERS: [&str; 3] = ["authorization", "host", "content-length"];

/// The key path of `key` in profile `index`, e.g. `profiles[1].weight`.
fn at(index: usize, key: &str) -> String {
    format!("profiles[{index}].{key}")
}

/// The key path of `key` in profile `index`'s `auth:` block, e.g. `profiles[1].auth.token_url`.
fn auth_at(index: usize, key: &str) -> String {
    format!("profiles[{index}].auth.{key}")
}

/// One entry of `profiles:`. `ids` maps each id seen so far to its line, for duplicates here and
/// for the models' references later; `defaults` are `routing.timeouts`.
pub(super) fn profile(
    report: &mut Report,
    index: usize,
    raw: &Spanned<RawProfile>,
    ids: &mut HashMap<String, usize>,
    defaults: Timeouts,
) -> ProfileConfig {
    let id = profile_id(report, index, raw, ids);
    let preset = preset(report, index, raw);
    let base_url = base_url(report, index, raw, preset);
    let api_key = api_key(report, index, raw);
    let priority = count(
        report,
        &at(index, "priority"),
        raw.priority.as_ref(),
        DEFAULT_PRIORITY,
        0,
        "must be >= 0",
    );
    let weight = count(
        report,
        &at(index, "weight"),
        raw.weight.as_ref(),
        DEFAULT_WEIGHT,
        1,
        "must be > 0",
    );
    let timeouts = timeouts(report, &at(index, "timeouts"), &raw.timeouts, defaults);
    let limits = upstream_limits(report, index, &raw.limits);
    let mut headers = headers(report, index, &raw.headers);
    let oauth = raw
        .auth
        .as_ref()
        .and_then(|a| profile_oauth(report, index, a, &raw.api_key, &raw.api_key_env));
    let api_version = preset_keys(report, index, raw, preset, &api_key, &mut headers);
    let pricing = pricing(report, &at(index, "pricing"), &raw.pricing);

    ProfileConfig {
        id,
        provider: preset.map_or(Provider::OpenAi, Preset::wire),
        preset: preset.unwrap_or(Preset::OpenAi),
        base_url,
        api_key,
        priority,
        weight,
        model_map: raw.model_map.clone(),
        pricing,
        timeouts,
        headers,
        api_version,
        oauth,
        limits,
    }
}

/// `id`: required, label-safe (it becomes a metrics label) and unique; recorded in `ids`.
fn profile_id(
    report: &mut Report,
    index: usize,
    raw: &Spanned<RawProfile>,
    ids: &mut HashMap<String, usize>,
) -> String {
    match &raw.id {
        None => {
            report.at(raw.span(), at(index, "id"), "required key is missing");
            String::new()
        }
        Some(id) if id.is_empty() => {
            report.at(id.span(), at(index, "id"), "must not be empty");
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
                report.at(id.span(), at(index, "id"), message);
            }
            let line = line_of(id.span());
            if let Some(first) = ids.get(id.as_str()) {
                let message = format!(
                    "duplicate profile id {:?} (first defined at line {first})",
                    id.as_str()
                );
                report.at(id.span(), at(index, "id"), message);
            } else {
                ids.insert(id.to_string(), line);
            }
            id.to_string()
        }
    }
}

/// `provider`: required, one of the presets. `None` when missing or unknown: then no default
/// base_url applies either.
fn preset(report: &mut Report, index: usize, raw: &Spanned<RawProfile>) -> Option<Preset> {
    match &raw.provider {
        None => {
            report.at(raw.span(), at(index, "provider"), "required key is missing");
            None
        }
        Some(p) => {
            let preset = Preset::parse(p.as_str());
            if preset.is_none() {
                let message = format!(
                    "unknown provider {:?} (supported: {SUPPORTED_PROVIDERS})",
                    p.as_str()
                );
                report.at(p.span(), at(index, "provider"), message);
            }
            preset
        }
    }
}

/// `base_url`: an http(s) URL with a host, without its trailing slash; the preset's default when
/// left out (Azure has none, so there it is required).
fn base_url(
    report: &mut Report,
    index: usize,
    raw: &Spanned<RawProfile>,
    preset: Option<Preset>,
) -> String {
    let path = at(index, "base_url");
    match &raw.base_url {
        Some(url) if preset == Some(Preset::Echo) => {
            let message = "provider echo answers in-process and takes no base_url: remove it";
            report.at(url.span(), path, message);
            String::new()
        }
        None if preset == Some(Preset::Azure) => {
            let message = "required key is missing: azure needs the deployment URL \
                (https://RESOURCE.openai.azure.com/openai/deployments/DEPLOYMENT)";
            report.at(raw.span(), path, message);
            String::new()
        }
        // Every other preset has a default. Without a known preset (`provider` missing or
        // unknown, and reported as such) there is no telling whether base_url is needed.
        None => preset
            .and_then(Preset::default_base_url)
            .unwrap_or_default()
            .to_owned(),
        Some(url) => {
            let rest = url
                .strip_prefix("https://")
                .or_else(|| url.strip_prefix("http://"));
            match rest {
                None => report.at(url.span(), path, "must start with http:// or https://"),
                Some(rest) if rest.trim_end_matches('/').is_empty() => {
                    report.at(url.span(), path, "must name a host")
                }
                Some(_) if url.chars().any(char::is_whitespace) => {
                    report.at(url.span(), path, "must not contain spaces")
                }
                Some(_) => {}
            }
            // The upstream client appends `/chat/completions` etc.
            url.trim_end_matches('/').to_owned()
        }
    }
}

/// `api_key_env` or `api_key` (at most one): where the upstream credential comes from.
fn api_key(report: &mut Report, index: usize, raw: &RawProfile) -> ApiKeySource {
    let key_env = raw
        .api_key_env
        .as_ref()
        .map(|name| env_name(report, &at(index, "api_key_env"), name));
    match (key_env, &raw.api_key) {
        (Some(_), Some(key)) => {
            let message = "api_key and api_key_env are mutually exclusive (set one)";
            report.at(key.span(), at(index, "api_key"), message);
            ApiKeySource::None
        }
        (Some(name), None) => {
            if let Some(written) = &raw.api_key_env {
                let consequence = "this profile will be skipped";
                report.needs_env(written.span(), at(index, "api_key_env"), &name, consequence);
            }
            ApiKeySource::Env(name)
        }
        (None, Some(key)) if key.is_empty() => {
            let message = "must not be empty (leave api_key out to send no key)";
            report.at(key.span(), at(index, "api_key"), message);
            ApiKeySource::None
        }
        (None, Some(key)) => ApiKeySource::Literal(key.to_string()),
        (None, None) => ApiKeySource::None,
    }
}

/// `limits:` the provider's per-minute limits, each >= 1 when given.
fn upstream_limits(report: &mut Report, index: usize, raw: &RawProfileLimits) -> UpstreamLimits {
    let mut per_minute = |key: &str, raw: Option<&Spanned<i64>>| {
        raw.map(|_| {
            count(
                report,
                &at(index, &format!("limits.{key}")),
                raw,
                1,
                1,
                "must be >= 1",
            )
        })
    };
    UpstreamLimits {
        rpm: per_minute("rpm", raw.rpm.as_ref()),
        tpm: per_minute("tpm", raw.tpm.as_ref()),
    }
}

/// `headers:` valid names, none the proxy sets itself, none twice (ignoring case), values without
/// control characters.
fn headers(
    report: &mut Report,
    index: usize,
    raw: &IndexMap<Text, Text>,
) -> IndexMap<String, String> {
    let mut headers = IndexMap::new();
    let mut seen = HashSet::new();
    for (name, value) in raw {
        let path = at(index, &format!("headers.{}", name.as_str()));
        let lower = name.to_ascii_lowercase();
        if name.is_empty() || !name.chars().all(is_token_char) {
            let message = format!("invalid header name {:?}", name.as_str());
            report.at(name.span(), &path, message);
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
            let message = "header value must not contain control characters";
            report.at(value.span(), &path, message);
        }
        headers.insert(name.to_string(), value.to_string());
    }
    headers
}

/// RFC 9110 token characters, which is what a header name may contain.
fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// A profile's `auth:` block. `None` when it is unusable (and reported).
fn profile_oauth(
    report: &mut Report,
    index: usize,
    raw: &Spanned<RawProfileAuth>,
    api_key: &Option<Text>,
    api_key_env: &Option<Text>,
) -> Option<OAuthConfig> {
    let errors_before = report.error_count();
    if let Some(key) = api_key.as_ref().or(api_key_env.as_ref()) {
        let message = "auth and api_key / api_key_env are mutually exclusive (set one)";
        report.at(key.span(), at(index, "auth"), message);
    }
    match &raw.kind {
        None => report.at(
            raw.span(),
            auth_at(index, "type"),
            "required key is missing (type: oauth2)",
        ),
        Some(kind) if kind.as_str() != "oauth2" => {
            let message = format!("unknown auth type {:?} (supported: oauth2)", kind.as_str());
            report.at(kind.span(), auth_at(index, "type"), message);
        }
        Some(_) => {}
    }
    // `None` when `returns` is unknown or unreadable (and reported): then whether client_id is
    // required is a guess.
    let returns = match &raw.returns {
        None => Some(OAuthReturns::Tokens),
        Some(r) if r.as_str() == "tokens" => Some(OAuthReturns::Tokens),
        Some(r) if r.as_str() == "api_key" => Some(OAuthReturns::ApiKey),
        Some(r) => {
            let message = format!(
                "unknown value {:?} (expected tokens or api_key)",
                r.as_str()
            );
            report.at(r.span(), auth_at(index, "returns"), message);
            None
        }
    };
    let returns = returns.filter(|_| !report.is_unreadable(&auth_at(index, "returns")));
    let authorize_url = oauth_url(report, index, raw, "authorize_url", &raw.authorize_url);
    let token_url = oauth_url(report, index, raw, "token_url", &raw.token_url);
    let client_id = match &raw.client_id {
        Some(c) if c.trim().is_empty() => {
            report.at(c.span(), auth_at(index, "client_id"), "must not be empty");
            None
        }
        Some(c) => Some(c.to_string()),
        None if returns == Some(OAuthReturns::Tokens) => {
            let message = "required key is missing (optional only with returns: api_key)";
            report.at(raw.span(), auth_at(index, "client_id"), message);
            None
        }
        None => None,
    };
    let scopes = oauth_scopes(report, index, &raw.scopes);
    if let Some(pkce) = &raw.pkce {
        if !**pkce {
            let message = "must be true: Switchyard always uses PKCE (S256)";
            report.at(pkce.span(), auth_at(index, "pkce"), message);
        }
    }
    let redirect_port = match &raw.redirect_port {
        None => 0,
        Some(p) => u16::try_from(**p).unwrap_or_else(|_| {
            report.at(
                p.span(),
                auth_at(index, "redirect_port"),
                "must be a port (0 to 65535)",
            );
            0
        }),
    };
    (report.error_count() == errors_before).then_some(OAuthConfig {
        authorize_url,
        token_url,
        client_id,
        scopes,
        redirect_port,
        returns: returns.unwrap_or(OAuthReturns::Tokens),
    })
}

/// One of the OAuth block's endpoints: required, an http(s) URL without spaces.
fn oauth_url(
    report: &mut Report,
    index: usize,
    raw: &Spanned<RawProfileAuth>,
    key: &str,
    value: &Option<Text>,
) -> String {
    match value {
        None => {
            report.at(raw.span(), auth_at(index, key), "required key is missing");
            String::new()
        }
        Some(u) => {
            if !(u.starts_with("https://") || u.starts_with("http://"))
                || u.chars().any(char::is_whitespace)
            {
                let message = "must be an http:// or https:// URL without spaces";
                report.at(u.span(), auth_at(index, key), message);
            }
            u.to_string()
        }
    }
}

/// The OAuth block's `scopes`: one non-empty scope per entry, without spaces.
fn oauth_scopes(report: &mut Report, index: usize, raw: &[Text]) -> Vec<String> {
    let mut scopes = Vec::new();
    for (i, scope) in raw.iter().enumerate() {
        if scope.is_empty() || scope.chars().any(|c| c.is_whitespace() || c.is_control()) {
            let message = format!("invalid scope {:?} (one scope per entry)", scope.as_str());
            report.at(
                scope.span(),
                auth_at(index, &format!("scopes[{i}]")),
                message,
            );
        }
        scopes.push(scope.to_string());
    }
    scopes
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
    let Some(preset) = preset else {
        return None; // already reported; every other message would be a guess
    };
    let name = preset.as_str();

    attribution(report, index, raw, preset, headers);
    let api_version = api_version(report, index, raw, preset);
    if preset == Preset::Echo {
        echo_keys(report, index, raw);
    }

    // A credential written with the wrong type was reported as such; do not call it missing.
    let unreadable = ["api_key_env", "api_key", "auth"]
        .iter()
        .any(|key| report.is_unreadable(&at(index, key)));
    if preset.needs_credential()
        && *api_key == ApiKeySource::None
        && raw.api_key.is_none()
        && raw.auth.is_none()
        && !unreadable
    {
        let message =
            format!("provider {name} needs a credential: set api_key_env, api_key or auth");
        report.at(raw.span(), at(index, "api_key_env"), message);
    }
    api_version
}

/// OpenRouter's `app_url` and `app_name`, folded into `headers` as `HTTP-Referer` and `X-Title`;
/// refused for every other preset.
fn attribution(
    report: &mut Report,
    index: usize,
    raw: &RawProfile,
    preset: Preset,
    headers: &mut IndexMap<String, String>,
) {
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
            report.at(value.span(), at(index, key), message);
        } else if value.trim().is_empty() {
            report.at(value.span(), at(index, key), "must not be empty");
        } else if key == "app_url"
            && !(value.starts_with("https://") || value.starts_with("http://"))
        {
            report.at(
                value.span(),
                at(index, key),
                "must start with http:// or https://",
            );
        } else if value.chars().any(char::is_control) {
            let message = "must not contain control characters";
            report.at(value.span(), at(index, key), message);
        } else if headers.keys().any(|h| h.eq_ignore_ascii_case(header)) {
            let message = format!("conflicts with headers.{header} (set one)");
            report.at(value.span(), at(index, key), message);
        } else {
            headers.insert(header.to_owned(), value.to_string());
        }
    }
}

/// Azure's `api_version`: required there, refused elsewhere.
fn api_version(
    report: &mut Report,
    index: usize,
    raw: &Spanned<RawProfile>,
    preset: Preset,
) -> Option<String> {
    let name = preset.as_str();
    match (&raw.api_version, preset) {
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
                report.at(v.span(), at(index, "api_version"), message);
            }
            Some(v.to_string())
        }
        (Some(v), _) => {
            let message = format!("only for provider azure, not {name}");
            report.at(v.span(), at(index, "api_version"), message);
            None
        }
        (None, Preset::Azure) => {
            let message = "required key is missing: azure needs the API version (e.g. 2024-10-21)";
            report.at(raw.span(), at(index, "api_version"), message);
            None
        }
        (None, _) => None,
    }
}

/// The built-in echo upstream needs no credential and sends nothing anywhere: a key given to it is a
/// mistake (most likely a profile meant for a real provider), so it is refused, not ignored.
fn echo_keys(report: &mut Report, index: usize, raw: &RawProfile) {
    let message = "provider echo is the built-in demo upstream and takes no credential: remove it";
    for (key, value) in [("api_key_env", &raw.api_key_env), ("api_key", &raw.api_key)] {
        if let Some(v) = value {
            report.at(v.span(), at(index, key), message);
        }
    }
    if let Some(auth) = &raw.auth {
        report.at(auth.span(), at(index, "auth"), message);
    }
}
