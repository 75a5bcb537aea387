//! OAuth2 credentials for upstream profiles (`auth: {type: oauth2, ...}`): the PKCE login flow behind
//! `switchyard login`, tokens sealed at rest in sled, and the per-profile token source that the
//! upstream client asks for a credential before each request (refreshing it, single-flight, when it is
//! about to expire).

pub mod login;
pub mod pkce;
pub mod source;
pub mod store;
pub mod vault;

pub use login::{login, LoginError};
pub use source::{CredentialError, TokenSource, TokenSources};
pub use store::{StoredCredential, TokenStore};

use std::time::Duration;

use serde::Deserialize;

use crate::config::OAuthConfig;

/// How long a token request may take, connect included.
const TOKEN_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a token endpoint did not hand out a credential.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// The endpoint answered with an OAuth error (`invalid_grant`, `invalid_client` ...): asking again
    /// will not help until someone logs in again.
    #[error("the token endpoint refused: {error}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Rejected {
        error: String,
        description: Option<String>,
    },
    /// Network trouble, a 5xx or an unreadable answer: worth retrying later.
    #[error("the token endpoint is unavailable: {0}")]
    Unavailable(String),
}

/// The JSON a token endpoint answers with: RFC 6749 tokens or OpenRouter's `key`.
#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<String>,
    refresh_token: Option<String>,
    expires_in: Option<u64>,
    key: Option<String>,
}

/// An OAuth error body (RFC 6749 section 5.2).
#[derive(Deserialize)]
struct ErrorResponse {
    error: String,
    error_description: Option<String>,
}

/// A client for one token request. Built per request: refreshes are rare, and a client kept across
/// the workers' runtimes would tie its connections to whichever runtime opened them.
fn token_client() -> Result<reqwest::Client, TokenError> {
    reqwest::Client::builder()
        .timeout(TOKEN_REQUEST_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .build()
        .map_err(|e| TokenError::Unavailable(e.to_string()))
}

/// Sends a prepared token request and reads its answer. Error texts never carry the token itself.
async fn token_call(req: reqwest::RequestBuilder) -> Result<TokenResponse, TokenError> {
    let resp = req
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|e| TokenError::Unavailable(e.without_url().to_string()))?;
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .map_err(|e| TokenError::Unavailable(e.without_url().to_string()))?;
    if status.is_success() {
        return serde_json::from_slice(&body).map_err(|_| {
            TokenError::Unavailable(format!("HTTP {status}: the answer is not a token response"))
        });
    }
    match serde_json::from_slice::<ErrorResponse>(&body) {
        Ok(e) if status.is_client_error() => Err(TokenError::Rejected {
            error: e.error,
            description: e.error_description,
        }),
        _ if status.is_client_error() => Err(TokenError::Rejected {
            error: format!("HTTP {}", status.as_u16()),
            description: None,
        }),
        _ => Err(TokenError::Unavailable(format!("HTTP {}", status.as_u16()))),
    }
}

/// `grant_type=refresh_token` at the profile's token endpoint.
async fn refresh(config: &OAuthConfig, refresh_token: &str) -> Result<TokenResponse, TokenError> {
    let mut form = vec![
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh_token),
    ];
    if let Some(id) = &config.client_id {
        form.push(("client_id", id));
    }
    token_call(token_client()?.post(&config.token_url).form(&form)).await
}
