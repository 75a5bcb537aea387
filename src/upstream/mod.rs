//! Upstream profiles as the forwarder uses them: base URL, credential header, model map, timeouts and an
//! HTTP client (`client`). Built once per actix-web worker, because a pooled client shared across the
//! workers' runtimes routes every connection's I/O through the runtime that opened it.

pub mod classify;
pub mod client;
pub mod echo;
pub mod oauth;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use switchyard_actors::outcome::FailureClass;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Uri};
use http_body_util::Full;
use indexmap::IndexMap;

use self::client::{ClientBuildError, HttpClient, TransportError, UpstreamResponse};
use self::oauth::{CredentialError, TokenSource, TokenSources};
use crate::config::{
    ApiKeySource, Config, OAuthReturns, Preset, ProfileConfig, Provider, Timeouts,
};
use crate::wire::Dialect;

/// The Messages API version we speak to Anthropic.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// One profile's upstream side.
pub struct UpstreamProfile {
    pub id: Arc<str>,
    /// The wire format this upstream speaks.
    pub provider: Provider,
    base_url: String,
    /// `?api-version=...` (Azure), appended to every URL.
    query: String,
    /// The URLs of the API paths the proxy calls, parsed once (a `Uri` clone shares its bytes).
    parsed: Vec<(&'static str, Uri)>,
    /// The credential header in this service's convention (`Authorization: Bearer ...`, Anthropic's
    /// `x-api-key`, Azure's `api-key`), its value marked sensitive so it is never printed.
    auth: Option<(HeaderName, HeaderValue)>,
    headers: HeaderMap,
    model_map: IndexMap<String, String>,
    pub timeouts: Timeouts,
    pub client: HttpClient,
    /// The raw credential, kept only to redact it from upstream error text.
    key: Option<String>,
    /// An OAuth profile's credential, asked for (and refreshed) before each request instead of `auth`.
    oauth: Option<Arc<TokenSource>>,
    /// What this was built from, to reuse it across reloads when unchanged.
    source: ProfileConfig,
    fingerprint: u64,
    /// `provider: echo`: `send` answers in-process (`echo::answer`) instead of over the network.
    in_process: bool,
}

impl UpstreamProfile {
    /// The wire format this upstream speaks.
    pub fn dialect(&self) -> Dialect {
        match self.provider {
            Provider::OpenAi => Dialect::OpenAi,
            Provider::Anthropic => Dialect::Anthropic,
        }
    }

    /// Whether `/v1/responses` passes through to it (see `Preset::speaks_responses`).
    pub fn speaks_responses(&self) -> bool {
        self.source.preset.speaks_responses()
    }

    /// The full URL of an API path such as `/chat/completions`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}{}", self.base_url, path, self.query)
    }

    /// Removes this profile's credential, and anything that looks like a key, from upstream text
    /// before it reaches logs, the admin API or a client (upstreams quote keys back in 401 messages).
    pub fn redact(&self, text: &str) -> String {
        self.redactor().redact(text)
    }

    /// What `redact` needs, owned: for a stream that outlives the borrow of this profile.
    pub fn redactor(&self) -> Redactor {
        Redactor {
            key: self.key.clone(),
            oauth: self.oauth.clone(),
        }
    }

    /// The upstream name of a client model, when this profile renames it.
    pub fn upstream_model(&self, client_model: &str) -> Option<&str> {
        self.model_map
            .get(client_model)
            .map(String::as_str)
            .filter(|m| *m != client_model)
    }

    /// A POST to `path` carrying this profile's credential and headers (and none of the client's). An
    /// OAuth profile's token is added by `UpstreamRequest::send`, which may have to refresh it first.
    pub fn post(&self, path: &str, request_id: &str) -> UpstreamRequest<'_> {
        self.request(Method::POST, path, "", request_id, &[])
    }

    /// A bodiless request (`GET`/`DELETE /responses/{id}`) with this profile's credential and headers
    /// and the client's query string.
    pub fn fetch(
        &self,
        method: Method,
        path: &str,
        query: &str,
        request_id: &str,
    ) -> UpstreamRequest<'_> {
        self.request(method, path, query, request_id, &[])
    }
}

impl UpstreamProfile {
    /// A POST of a client's own request to a profile of its dialect: `path` with the client's query
    /// string, and the dialect headers the client sent (its `anthropic-version` replaces ours), beside
    /// this profile's credential and headers.
    pub fn post_native(
        &self,
        path: &str,
        query: &str,
        request_id: &str,
        headers: &[(&'static str, String)],
    ) -> UpstreamRequest<'_> {
        self.request(Method::POST, path, query, request_id, headers)
    }

    /// The one builder behind `post`, `post_native` and `fetch`. Without a query string the URL parsed
    /// once per profile is reused. Headers are appended in the order reqwest's builder appended them,
    /// so a profile header of the same name is sent beside ours, as before.
    fn request(
        &self,
        method: Method,
        path: &str,
        query: &str,
        request_id: &str,
        headers: &[(&'static str, String)],
    ) -> UpstreamRequest<'_> {
        let parsed = query
            .is_empty()
            .then(|| self.parsed.iter().find(|(p, _)| *p == path))
            .flatten();
        let uri = match parsed {
            Some((_, uri)) => Ok(uri.clone()),
            None => {
                let mut url = self.url(path);
                if !query.is_empty() {
                    url.push(if url.contains('?') { '&' } else { '?' });
                    url.push_str(query);
                }
                parse_uri(&url)
            }
        };
        let mut map = self.headers.clone();
        map.append(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        match HeaderValue::from_str(request_id) {
            Ok(v) => map.append(HeaderName::from_static("x-request-id"), v),
            Err(_) => false,
        };
        let sent_version = headers.iter().any(|(n, _)| *n == "anthropic-version");
        if self.provider == Provider::Anthropic && !sent_version {
            map.append(
                HeaderName::from_static("anthropic-version"),
                HeaderValue::from_static(ANTHROPIC_VERSION),
            );
        }
        for (name, value) in headers {
            // The names are the dialect's own constants (`anthropic-beta`...), lowercase and valid.
            if let Ok(v) = HeaderValue::from_str(value) {
                map.append(HeaderName::from_static(name), v);
            }
        }
        if let Some((name, value)) = &self.auth {
            map.append(name.clone(), value.clone());
        }
        UpstreamRequest {
            method,
            uri,
            headers: map,
            body: Bytes::new(),
            up: self,
            local: self.in_process.then(|| path.to_owned()),
        }
    }
}

/// `url` as a request target, through `url`'s parser as reqwest took it (it percent-encodes what a
/// client's query string may carry and `http::Uri` refuses). Only for URLs not parsed up front.
fn parse_uri(url: &str) -> Result<Uri, http::Error> {
    let normalised = url::Url::parse(url).map(String::from);
    let text = normalised.as_deref().unwrap_or(url);
    Ok(Uri::try_from(text)?)
}

/// A request to one upstream, sent with `send`.
pub struct UpstreamRequest<'a> {
    method: Method,
    /// The target, or why the URL is not one (reported by `send`, which sends nothing then).
    uri: Result<Uri, http::Error>,
    headers: HeaderMap,
    body: Bytes,
    up: &'a UpstreamProfile,
    /// The API path, for an in-process upstream: then `send` answers locally and nothing is sent.
    local: Option<String>,
}

impl UpstreamRequest<'_> {
    /// Sets the body (sent with its `content-length`).
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// Sends it. For an OAuth profile the token is fetched first (refreshed, single-flight, when due).
    /// When there is none to send, nothing is sent without a credential: the attempt fails with
    /// `auth` when only a new login helps (the profile is marked `auth_failed` with the reason), or
    /// with `server` when the token endpoint is only down (the profile cools down).
    pub async fn send(self) -> Result<UpstreamResponse, SendError> {
        let UpstreamRequest {
            method,
            uri,
            mut headers,
            body,
            up,
            local,
        } = self;
        if let Some(path) = local {
            // A genuine answer of the echo provider, built here instead of read off a socket; from
            // here on it goes through the same classification, relay and accounting as any other.
            return Ok(echo::answer(&path, &body));
        }
        if let Some(source) = &up.oauth {
            let secret = source.credential().await.map_err(|e| match e {
                CredentialError::Auth(reason) => SendError::Credential {
                    class: FailureClass::Auth,
                    reason,
                },
                CredentialError::Unavailable(reason) => SendError::Credential {
                    class: FailureClass::Server,
                    reason,
                },
            })?;
            let header = match source.returns() {
                OAuthReturns::Tokens => bearer(&up.source, &secret),
                OAuthReturns::ApiKey => credential_header(&up.source, &secret),
            };
            let (name, value) = header.map_err(|_| SendError::Credential {
                class: FailureClass::Auth,
                reason: "the stored credential is not a valid header value".to_owned(),
            })?;
            headers.append(name, value);
        }
        let uri = uri.map_err(|e| SendError::Transport(TransportError::invalid_url(e)))?;
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        up.client.send(req).await.map_err(SendError::Transport)
    }
}

/// Why a request never got an upstream response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The network or the upstream failed before response headers.
    #[error("{0}")]
    Transport(TransportError),
    /// No credential could be had for an OAuth profile; nothing was sent.
    #[error("{reason}")]
    Credential { class: FailureClass, reason: String },
}

/// The paths the proxy POSTs to, whose URLs each profile parses once.
const API_PATHS: &[&str] = &[
    "/chat/completions",
    "/completions",
    "/embeddings",
    "/messages",
    "/messages/count_tokens",
    // Without it every /v1/responses request parsed its URL again (about 19,000 instructions).
    "/responses",
];

/// Every profile's upstream side, by id.
pub struct Upstreams {
    by_id: HashMap<Arc<str>, Arc<UpstreamProfile>>,
}

/// One worker's upstreams, rebuilt lazily when the configuration generation moves on (reload).
pub struct WorkerUpstreams {
    built_for: AtomicU64,
    current: ArcSwap<Upstreams>,
    /// AppState by every worker, so a token refresh is single-flight process-wide.
    tokens: Arc<TokenSources>,
}

impl WorkerUpstreams {
    /// Builds the clients for `config` at `generation`.
    pub fn new(
        config: &Config,
        generation: u64,
        tokens: Arc<TokenSources>,
    ) -> Result<WorkerUpstreams, UpstreamBuildError> {
        Ok(WorkerUpstreams {
            built_for: AtomicU64::new(generation),
            current: ArcSwap::from_pointee(Upstreams::build(config, None, &tokens)?),
            tokens,
        })
    }

    /// The upstreams for `config` (at `generation`), rebuilding first if they are older.
    pub fn current(&self, config: &Config, generation: u64) -> Arc<Upstreams> {
        if self.built_for.load(Ordering::Acquire) != generation {
            let prev = self.current.load_full();
            match Upstreams::build(config, Some(&prev), &self.tokens) {
                Ok(next) => {
                    self.current.store(Arc::new(next));
                    self.built_for.store(generation, Ordering::Release);
                }
                // The config was validated before it was swapped in; keep serving with what we have.
                Err(e) => {
                    tracing::error!(error = %e, "cannot rebuild upstream clients after reload")
                }
            }
        }
        self.current.load_full()
    }
}

/// Why an upstream client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamBuildError {
    #[error("profile {profile}: cannot build HTTP client: {source}")]
    Client {
        profile: String,
        source: ClientBuildError,
    },
    #[error("profile {profile}: header {header}: invalid value")]
    Header { profile: String, header: String },
}

impl Upstreams {
    /// Builds clients and credential headers for every profile of `config`. With `prev`, an unchanged
    /// profile keeps its client (and its pooled connections), and profiles `config` no longer has are
    /// carried over, so a request that picked one before the reload can still finish.
    pub fn build(
        config: &Config,
        prev: Option<&Upstreams>,
        tokens: &TokenSources,
    ) -> Result<Upstreams, UpstreamBuildError> {
        let mut by_id = HashMap::new();
        for p in &config.profiles {
            let fingerprint = credential_fingerprint(&p.api_key);
            let kept = prev
                .and_then(|u| u.by_id.get(p.id.as_str()))
                .filter(|u| u.source == *p && u.fingerprint == fingerprint);
            let up = match kept {
                Some(u) => u.clone(),
                None => Arc::new(build_profile(p, tokens)?),
            };
            by_id.insert(up.id.clone(), up);
        }
        if let Some(prev) = prev {
            for (id, up) in &prev.by_id {
                by_id.entry(id.clone()).or_insert_with(|| up.clone());
            }
        }
        Ok(Upstreams { by_id })
    }

    /// The profile with this id.
    pub fn get(&self, id: &str) -> Option<&Arc<UpstreamProfile>> {
        self.by_id.get(id)
    }
}

fn build_profile(
    p: &ProfileConfig,
    tokens: &TokenSources,
) -> Result<UpstreamProfile, UpstreamBuildError> {
    let client =
        HttpClient::new(p.timeouts.connect).map_err(|source| UpstreamBuildError::Client {
            profile: p.id.clone(),
            source,
        })?;
    let key = resolve_key(&p.api_key).ok().flatten();
    let auth = match resolve_key(&p.api_key) {
        Ok(Some(key)) => Some(credential_header(p, &key)?),
        Ok(None) | Err(_) => None,
    };
    let mut headers = HeaderMap::new();
    for (name, value) in &p.headers {
        let bad = || UpstreamBuildError::Header {
            profile: p.id.clone(),
            header: name.clone(),
        };
        let n = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?;
        let v = HeaderValue::from_str(value).map_err(|_| bad())?;
        headers.insert(n, v);
    }
    // reqwest's client sent this by default; upstreams may log or route on it. Only the profile's
    // headers can name it (the dialect's and the credential's never do), so it is decided here once.
    if !headers.contains_key(http::header::ACCEPT) {
        headers.insert(http::header::ACCEPT, HeaderValue::from_static("*/*"));
    }
    let query = match &p.api_version {
        Some(v) => format!("?api-version={v}"),
        None => String::new(),
    };
    Ok(UpstreamProfile {
        id: Arc::from(p.id.as_str()),
        provider: p.provider,
        base_url: p.base_url.clone(),
        parsed: API_PATHS
            .iter()
            .filter_map(|path| {
                let url = format!("{}{}{}", p.base_url, path, query);
                parse_uri(&url).ok().map(|u| (*path, u))
            })
            .collect(),
        query,
        auth,
        headers,
        model_map: p.model_map.clone(),
        timeouts: p.timeouts,
        client,
        key,
        oauth: p.oauth.as_ref().map(|o| tokens.for_profile(&p.id, o)),
        source: p.clone(),
        fingerprint: credential_fingerprint(&p.api_key),
        in_process: p.preset == Preset::Echo,
    })
}

/// `key` as the header this profile's service expects, marked sensitive.
fn credential_header(
    p: &ProfileConfig,
    key: &str,
) -> Result<(HeaderName, HeaderValue), UpstreamBuildError> {
    let (name, value) = match (p.preset, p.provider) {
        (Preset::Azure, _) => (HeaderName::from_static("api-key"), key.to_owned()),
        (_, Provider::Anthropic) => (HeaderName::from_static("x-api-key"), key.to_owned()),
        (_, Provider::OpenAi) => (http::header::AUTHORIZATION, format!("Bearer {key}")),
    };
    let mut value = HeaderValue::from_str(&value).map_err(|_| UpstreamBuildError::Header {
        profile: p.id.clone(),
        header: name.as_str().to_owned(),
    })?;
    value.set_sensitive(true);
    Ok((name, value))
}

/// An OAuth access token, always a bearer token (also for Anthropic and Azure, whose OAuth/Entra
/// tokens go in `Authorization`).
fn bearer(p: &ProfileConfig, token: &str) -> Result<(HeaderName, HeaderValue), UpstreamBuildError> {
    let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
        UpstreamBuildError::Header {
            profile: p.id.clone(),
            header: "authorization".into(),
        }
    })?;
    value.set_sensitive(true);
    Ok((http::header::AUTHORIZATION, value))
}

/// The credential of a profile: `Ok(None)` when it has none by design, `Err(reason)` when it should have
/// one and cannot (the reason names the variable, never a value).
pub fn resolve_key(source: &ApiKeySource) -> Result<Option<String>, String> {
    match source {
        ApiKeySource::None => Ok(None),
        ApiKeySource::Literal(k) => Ok(Some(k.clone())),
        ApiKeySource::Env(var) => match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => Ok(Some(v.trim().to_owned())),
            Ok(_) => Err(format!("environment variable {var} is empty")),
            Err(_) => Err(format!("environment variable {var} is not set")),
        },
    }
}

/// Removes one profile's credential (its key, or its OAuth token as of now) and anything key-like from
/// upstream text: what `UpstreamProfile::redact` does, for bytes that reach a client too.
#[derive(Clone)]
pub struct Redactor {
    key: Option<String>,
    oauth: Option<Arc<TokenSource>>,
}

impl Redactor {
    /// `text` with the credential replaced by `[redacted]` and key-like words masked.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        let token = self.oauth.as_ref().and_then(|t| t.current_secret());
        for key in self.key.iter().chain(token.iter()) {
            if !key.is_empty() {
                out = out.replace(key.as_str(), "[redacted]");
            }
        }
        redact_key_like(&out)
    }

    /// Like `redact`, for a body about to be relayed: untouched (the same buffer) when nothing in it
    /// needed masking; bytes that are not UTF-8 are relayed as their lossy text.
    pub fn redact_bytes(&self, body: bytes::Bytes) -> bytes::Bytes {
        let text = String::from_utf8_lossy(&body);
        let out = self.redact(&text);
        if out == text {
            body
        } else {
            bytes::Bytes::from(out)
        }
    }
}

/// A stable, non-reversible fingerprint of a profile's credential (0 when it has none).
pub fn credential_fingerprint(source: &ApiKeySource) -> u64 {
    match resolve_key(source) {
        Ok(Some(k)) => {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            k.hash(&mut h);
            h.finish()
        }
        _ => 0,
    }
}

/// Prefixes of credentials providers issue; a word starting with one is shown as its prefix only.
const KEY_PREFIXES: &[&str] = &["sk-", "sk_", "rk-", "gsk_", "xai-", "pk-", "key-", "AIza"];

/// Masks words that look like credentials: a known prefix followed by at least 8 more characters.
pub fn redact_key_like(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        let start = rest
            .find(|c: char| c.is_ascii_alphanumeric())
            .unwrap_or(rest.len());
        out.push_str(&rest[..start]);
        rest = &rest[start..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .unwrap_or(rest.len());
        let word = &rest[..end];
        match KEY_PREFIXES.iter().find(|p| word.starts_with(*p)) {
            Some(prefix) if word.len() >= prefix.len() + 8 => {
                out.push_str(prefix);
                out.push_str("[redacted]");
            }
            _ => out.push_str(word),
        }
        rest = &rest[end..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_like_words_are_masked_and_others_kept() {
        assert_eq!(
            redact_key_like("Incorrect API key provided: sk-proj-abcdef123456. See docs."),
            "Incorrect API key provided: sk-[redacted]. See docs."
        );
        assert_eq!(
            redact_key_like("sk-short is fine, task-force too"),
            "sk-short is fine, task-force too"
        );
        assert_eq!(redact_key_like("gsk_0123456789abcdef!"), "gsk_[redacted]!");
        assert_eq!(redact_key_like("naïve – ünïcode"), "naïve – ünïcode");
    }

    #[test]
    fn relayed_bytes_lose_the_profile_key_and_stay_json() {
        let r = Redactor {
            key: Some("plainsecret123".into()),
            oauth: None,
        };
        let body = bytes::Bytes::from_static(
            br#"{"error":{"message":"key plainsecret123 (or sk-proj-abcdef123456) is not allowed"}}"#,
        );
        let out = r.redact_bytes(body);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let msg = v["error"]["message"].as_str().unwrap();
        assert_eq!(msg, "key [redacted] (or sk-[redacted]) is not allowed");
        let clean = bytes::Bytes::from_static(b"{\"error\":{}}");
        assert_eq!(r.redact_bytes(clean.clone()).as_ptr(), clean.as_ptr());
    }
}
