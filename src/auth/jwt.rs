//! JWTs: Switchyard's own HS256 access tokens, and external issuers' tokens verified with keys from their
//! JWKS (RS256/ES256) or a configured shared secret (HS256).
//!
//! Every token goes through the same gate first: at most 8 KiB, a parseable header with a known
//! algorithm (so `alg: none` fails here), and none of the headers that would let a token name its own
//! verification key (`jku`, `jwk`, `x5u`, `x5c`) or demand unsupported processing (`crit`). The
//! algorithm a token may use is then fixed by who issued it, never by the token: HS256 for our own
//! tokens and shared-secret issuers, the JWKS key's algorithm otherwise. That closes algorithm
//! confusion (an HS256 token "signed" with an RSA public key). `exp`, `nbf`, `iss` and `aud` are always
//! checked, with 30 s of leeway for clock skew.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::AuthError;
use super::secret::random_base62;
use crate::config::{ClaimMapping, IssuerConfig, OWN_ISSUER};

/// Larger tokens are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 30;
/// A JWKS document larger than this is refused.
const MAX_JWKS_BYTES: usize = 256 * 1024;
const JWKS_TIMEOUT: Duration = Duration::from_secs(5);

fn unauth(message: &str) -> AuthError {
    AuthError::Unauthenticated(message.to_owned())
}

/// The checks every token passes before its issuer is even looked at.
pub fn checked_header(token: &str) -> Result<Header, AuthError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(unauth("Token too large."));
    }
    let header = jsonwebtoken::decode_header(token)
        .map_err(|_| unauth("Malformed token or unsupported algorithm."))?;
    if header.jku.is_some()
        || header.jwk.is_some()
        || header.x5u.is_some()
        || header.x5c.is_some()
        || header.crit.is_some()
    {
        return Err(unauth(
            "Token headers jku, jwk, x5u, x5c and crit are not accepted.",
        ));
    }
    Ok(header)
}

/// The token's `iss`, unverified: it only chooses which verifier runs, and that verifier checks it.
pub fn peek_issuer(token: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Peek {
        iss: Option<String>,
    }
    jsonwebtoken::dangerous::insecure_decode_claims::<Peek>(token)
        .ok()?
        .iss
}

/// A client-facing reason for a failed verification; says what is wrong, never echoes the token.
fn reason(e: &jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind;
    let message = match e.kind() {
        ErrorKind::ExpiredSignature => "Token expired.".to_owned(),
        ErrorKind::ImmatureSignature => "Token not yet valid (nbf).".to_owned(),
        ErrorKind::InvalidAudience => "Token audience not accepted.".to_owned(),
        ErrorKind::InvalidIssuer => "Token issuer not accepted.".to_owned(),
        ErrorKind::InvalidSignature => "Invalid token signature.".to_owned(),
        ErrorKind::InvalidAlgorithm => "Token algorithm not accepted.".to_owned(),
        ErrorKind::MissingRequiredClaim(c) => format!("Token lacks the `{c}` claim."),
        ErrorKind::InvalidClaimFormat(c) => format!("Token claim `{c}` is malformed."),
        _ => "Invalid token.".to_owned(),
    };
    AuthError::Unauthenticated(message)
}

fn validation(alg: Algorithm, issuer: &str, audience: &str) -> Validation {
    let mut v = Validation::new(alg);
    v.set_issuer(&[issuer]);
    v.set_audience(&[audience]);
    v.set_required_spec_claims(&["exp", "iss", "aud"]);
    v.leeway = LEEWAY_SECS;
    v.validate_exp = true;
    v.validate_nbf = true;
    v.validate_aud = true;
    v
}

// ---------------------------------------------------------------------------------------------
// Our own access tokens.

/// The claims of a Switchyard access token.
#[derive(Debug, Serialize, Deserialize)]
pub struct SessionClaims {
    pub iss: String,
    pub aud: String,
    /// The account id.
    pub sub: String,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    pub jti: String,
    /// The sign-in family: logging out or reusing a refresh token revokes it, and with it this token.
    pub fam: String,
}

/// The HS256 key of our own access tokens.
pub struct SessionKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl SessionKeys {
    pub fn new(secret: &[u8]) -> SessionKeys {
        SessionKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation: validation(Algorithm::HS256, OWN_ISSUER, OWN_ISSUER),
        }
    }

    /// A signed access token for `account` in `family`, valid for `ttl`.
    pub fn issue(&self, account: &str, family: &str, ttl: Duration) -> Result<String, AuthError> {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = SessionClaims {
            iss: OWN_ISSUER.to_owned(),
            aud: OWN_ISSUER.to_owned(),
            sub: account.to_owned(),
            iat: now,
            nbf: now,
            exp: now + ttl.as_secs(),
            jti: random_base62(16),
            fam: family.to_owned(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| AuthError::Internal(format!("signing an access token: {e}")))
    }

    /// Verifies one of our tokens (signature, exp, nbf, iss, aud).
    pub fn verify(&self, token: &str) -> Result<SessionClaims, AuthError> {
        jsonwebtoken::decode::<SessionClaims>(token, &self.decoding, &self.validation)
            .map(|d| d.claims)
            .map_err(|e| reason(&e))
    }
}

/// The secret of our access tokens: the variable `env` when set (at least 32 bytes), else
/// `data_dir/jwt_secret`, created with mode 0600 on first use so that tokens survive restarts.
pub fn load_session_secret(env: &str, data_dir: &Path) -> Result<Vec<u8>, String> {
    if let Some(v) = std::env::var(env).ok().filter(|v| !v.trim().is_empty()) {
        if v.len() < 32 {
            return Err(format!("{env} must hold at least 32 bytes"));
        }
        return Ok(v.into_bytes());
    }
    let path = data_dir.join("jwt_secret");
    match std::fs::read_to_string(&path) {
        Ok(s) if s.trim().len() >= 32 => {
            warn_if_readable_by_others(&path);
            Ok(s.trim().as_bytes().to_vec())
        }
        Ok(_) => Err(format!("{} is shorter than 32 bytes", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let secret = random_base62(64);
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
            file.write_all(secret.as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            tracing::info!(path = %path.display(), "created the access-token secret");
            Ok(secret.into_bytes())
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "the access-token secret is readable by others; chmod 600 it");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// External issuers.

/// What an external token says about its bearer, after the claims mapping.
#[derive(Debug, Clone)]
pub struct ExternalIdentity {
    pub subject: String,
    pub role: Option<String>,
    pub tier: Option<String>,
    pub project: Option<String>,
}

/// One verification key from a JWKS.
struct VerifyKey {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

/// The keys of one fetch.
#[derive(Default)]
struct Snapshot {
    keys: Vec<Arc<VerifyKey>>,
    fetched: Option<Instant>,
}

impl Snapshot {
    /// The key for `kid`; a token without `kid` is accepted only when exactly one key fits.
    fn find(&self, kid: Option<&str>) -> Option<Arc<VerifyKey>> {
        match kid {
            Some(kid) => self
                .keys
                .iter()
                .find(|k| k.kid.as_deref() == Some(kid))
                .cloned(),
            None => match self.keys.as_slice() {
                [only] => Some(only.clone()),
                _ => None,
            },
        }
    }
}

/// The cached JWKS of one issuer. Requests read the snapshot through an `ArcSwap` without locking; the
/// async mutex makes fetches single-flight and remembers the last attempt, which rate-limits refetches.
pub struct IssuerKeyCache {
    snapshot: ArcSwap<Snapshot>,
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
}

impl Default for IssuerKeyCache {
    fn default() -> Self {
        IssuerKeyCache {
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            last_fetch: tokio::sync::Mutex::new(None),
        }
    }
}

/// How an issuer's key for one token was found.
pub enum KeyLookup {
    Found(VerifyKeyHandle),
    /// Not in the cache; only a fetch could tell.
    Unknown,
}

/// A verification key, opaque outside this module.
pub struct VerifyKeyHandle(Arc<VerifyKey>);

impl IssuerKeyCache {
    /// The cached key for `kid`, without any network.
    pub fn cached(&self, kid: Option<&str>, max_age: Duration) -> KeyLookup {
        let snap = self.snapshot.load();
        let fresh = snap.fetched.is_some_and(|t| t.elapsed() <= max_age);
        match snap.find(kid) {
            Some(k) if fresh => KeyLookup::Found(VerifyKeyHandle(k)),
            _ => KeyLookup::Unknown,
        }
    }

    /// The key for `kid`, fetching the JWKS when the kid is unknown or the keys are older than
    /// `max_age` — at most once per `refetch_interval`, one fetch at a time. A failed fetch keeps the
    /// keys we had.
    pub async fn key(
        &self,
        url: &str,
        kid: Option<&str>,
        refetch_interval: Duration,
        max_age: Duration,
    ) -> Option<VerifyKeyHandle> {
        if let KeyLookup::Found(k) = self.cached(kid, max_age) {
            return Some(k);
        }
        let mut last = self.last_fetch.lock().await;
        // Another request may have fetched while we waited for the lock.
        if let KeyLookup::Found(k) = self.cached(kid, max_age) {
            return Some(k);
        }
        if last.is_none_or(|t| t.elapsed() >= refetch_interval) {
            *last = Some(Instant::now());
            match fetch_jwks(url).await {
                Ok(keys) => {
                    tracing::info!(url, keys = keys.len(), "fetched JWKS");
                    self.snapshot.store(Arc::new(Snapshot {
                        keys,
                        fetched: Some(Instant::now()),
                    }));
                }
                Err(e) => {
                    tracing::warn!(url, error = %e, "JWKS fetch failed; keeping the cached keys")
                }
            }
        }
        drop(last);
        // Stale keys are still better than none when the issuer is unreachable.
        self.snapshot.load().find(kid).map(VerifyKeyHandle)
    }
}

/// Fetches and parses a JWKS. Redirects are not followed; the body is capped.
async fn fetch_jwks(url: &str) -> Result<Vec<Arc<VerifyKey>>, String> {
    // A client per fetch: fetches are rare, and a client shared across actix workers' runtimes has
    // hung before (see DEPENDENCIES.md).
    let client = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(JWKS_TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    let mut resp = client.get(url).send().await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("HTTP {}", resp.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(format!("JWKS larger than {MAX_JWKS_BYTES} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    parse_jwks(&body)
}

/// The usable signature keys of a JWKS document: RSA keys for RS256 and P-256 keys for ES256. Keys of
/// other types or uses (encryption, `oct` secrets) are skipped, as are keys that do not parse, so one
/// odd entry does not take the others down.
fn parse_jwks(body: &[u8]) -> Result<Vec<Arc<VerifyKey>>, String> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| format!("JWKS is not JSON: {e}"))?;
    let entries = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("JWKS has no `keys` list")?;
    let mut keys = Vec::new();
    for entry in entries {
        let Ok(jwk) = serde_json::from_value::<Jwk>(entry.clone()) else {
            continue;
        };
        if matches!(
            jwk.common.public_key_use,
            Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
        ) {
            continue;
        }
        let declared = jwk.common.key_algorithm;
        let alg = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) if matches!(declared, None | Some(KeyAlgorithm::RS256)) => {
                Algorithm::RS256
            }
            AlgorithmParameters::EllipticCurve(p)
                if p.curve == EllipticCurve::P256
                    && matches!(declared, None | Some(KeyAlgorithm::ES256)) =>
            {
                Algorithm::ES256
            }
            _ => continue,
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        keys.push(Arc::new(VerifyKey {
            kid: jwk.common.key_id.clone(),
            alg,
            key,
        }));
    }
    Ok(keys)
}

/// Verifies an external token with a key found for it; `alg` is the token header's algorithm, which
/// must be the key's.
pub fn verify_with_key(
    token: &str,
    alg: Algorithm,
    key: &VerifyKeyHandle,
    issuer: &IssuerConfig,
) -> Result<ExternalIdentity, AuthError> {
    if alg != key.0.alg {
        return Err(unauth("Token algorithm not accepted."));
    }
    let v = validation(key.0.alg, &issuer.issuer, &issuer.audience);
    let claims = jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &key.0.key, &v)
        .map_err(|e| reason(&e))?
        .claims;
    map_claims(&claims, &issuer.claims)
}

/// Verifies an HS256 token of an issuer configured with a shared secret.
pub fn verify_with_secret(
    token: &str,
    alg: Algorithm,
    secret: &[u8],
    issuer: &IssuerConfig,
) -> Result<ExternalIdentity, AuthError> {
    if alg != Algorithm::HS256 {
        return Err(unauth("Token algorithm not accepted."));
    }
    let v = validation(Algorithm::HS256, &issuer.issuer, &issuer.audience);
    let claims = jsonwebtoken::decode::<serde_json::Map<String, Value>>(
        token,
        &DecodingKey::from_secret(secret),
        &v,
    )
    .map_err(|e| reason(&e))?
    .claims;
    map_claims(&claims, &issuer.claims)
}

/// A claim by name, or by a dotted path into nested objects (`realm_access.role`).
fn claim<'a>(claims: &'a serde_json::Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(name) {
        return Some(v);
    }
    let mut parts = name.split('.');
    let mut v = claims.get(parts.next()?)?;
    for part in parts {
        v = v.get(part)?;
    }
    Some(v)
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn map_claims(
    claims: &serde_json::Map<String, Value>,
    mapping: &ClaimMapping,
) -> Result<ExternalIdentity, AuthError> {
    let subject = claim(claims, &mapping.subject)
        .and_then(text)
        .ok_or_else(|| {
            AuthError::Unauthenticated(format!("Token lacks the `{}` claim.", mapping.subject))
        })?;
    let role = mapping.role.as_deref().and_then(|name| {
        // A list of roles (as many providers send) grants the highest one we know.
        match claim(claims, name)? {
            Value::Array(items) => items
                .iter()
                .filter_map(|v| v.as_str().and_then(super::Role::parse))
                .max()
                .map(|r| r.as_str().to_owned()),
            v => text(v),
        }
    });
    let field = |name: &Option<String>| {
        name.as_deref()
            .and_then(|n| claim(claims, n))
            .and_then(text)
    };
    Ok(ExternalIdentity {
        subject,
        role,
        tier: field(&mapping.tier),
        project: field(&mapping.project),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_tokens_round_trip_and_reject_tampering() {
        let keys = SessionKeys::new(&[7u8; 32]);
        let token = keys.issue("acc", "fam", Duration::from_secs(60)).unwrap();
        let claims = keys.verify(&token).unwrap();
        assert_eq!((claims.sub.as_str(), claims.fam.as_str()), ("acc", "fam"));
        assert_eq!(peek_issuer(&token).as_deref(), Some(OWN_ISSUER));
        let other = SessionKeys::new(&[8u8; 32]);
        assert!(other.verify(&token).is_err());
        let expired = keys.issue("acc", "fam", Duration::ZERO).unwrap();
        // exp = now: still inside the leeway.
        assert!(keys.verify(&expired).is_ok());
    }

    #[test]
    fn headers_that_name_keys_are_refused() {
        let mut header = Header::new(Algorithm::HS256);
        header.jku = Some("https://evil.example/jwks".into());
        let token = jsonwebtoken::encode(
            &header,
            &serde_json::json!({"exp": 1}),
            &EncodingKey::from_secret(b"x"),
        )
        .unwrap();
        assert!(checked_header(&token).is_err());
        assert!(checked_header(&"a".repeat(MAX_TOKEN_BYTES + 1)).is_err());
        assert!(checked_header("eyJhbGciOiJub25lIn0.e30.").is_err());
    }

    #[test]
    fn jwks_keeps_only_signature_keys() {
        let body = serde_json::json!({"keys": [
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "kid": "p384", "crv": "P-384", "x": "AA", "y": "AA"},
            {"kty": "RSA", "kid": "ok", "n": "sXch", "e": "AQAB"},
            {"kty": "RSA", "kid": "rs384", "alg": "RS384", "n": "sXch", "e": "AQAB"},
            {"nonsense": true}
        ]});
        let keys = parse_jwks(body.to_string().as_bytes()).unwrap();
        let kids: Vec<_> = keys.iter().map(|k| k.kid.as_deref()).collect();
        assert_eq!(kids, [Some("ok")]);
        assert!(parse_jwks(b"[]").is_err());
    }

    #[test]
    fn claims_map_with_paths_and_role_lists() {
        let claims: serde_json::Map<String, Value> = serde_json::from_value(serde_json::json!({
            "sub": "u1", "org": {"roles": ["user", "developer", "other"]}, "plan": 3
        }))
        .unwrap();
        let mapping = ClaimMapping {
            subject: "sub".into(),
            role: Some("org.roles".into()),
            tier: Some("plan".into()),
            project: Some("missing".into()),
        };
        let id = map_claims(&claims, &mapping).unwrap();
        assert_eq!(id.subject, "u1");
        assert_eq!(id.role.as_deref(), Some("developer"));
        assert_eq!(id.tier.as_deref(), Some("3"));
        assert_eq!(id.project, None);
        let mapping = ClaimMapping {
            subject: "email".into(),
            ..mapping
        };
        assert!(map_claims(&claims, &mapping).is_err());
    }
}
