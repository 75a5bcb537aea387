//! `switchyard login PROFILE`: the authorization-code flow with PKCE (S256) and a `state` check,
//! through a one-shot callback server on 127.0.0.1.

use std::io::Write;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::pkce::PkceSession;
use super::store::{StoredCredential, TokenStore, TokenStoreError};
use super::{token_call, token_client, TokenError};
use crate::config::{OAuthConfig, OAuthReturns};

/// How long the user has to finish in the browser.
pub const CALLBACK_TIMEOUT: Duration = Duration::from_secs(300);
const CALLBACK_PATH: &str = "/callback";
/// Longest callback request read (the URL carries only a code and the state).
const MAX_REQUEST: usize = 16 * 1024;

/// Why a login did not store a credential.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("cannot listen for the callback on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("invalid authorize_url: {0}")]
    AuthorizeUrl(String),
    #[error("no callback within {} (was the URL opened?)", humantime::format_duration(*.0))]
    Timeout(Duration),
    #[error("callback: {0}")]
    Callback(String),
    #[error("the callback's state does not match this login; refused (possible cross-site request forgery). Run the login again.")]
    StateMismatch,
    #[error("authorization denied: {0}")]
    Denied(String),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("the token endpoint answered without {0}")]
    MissingField(&'static str),
    #[error(transparent)]
    Store(#[from] TokenStoreError),
    #[error("output: {0}")]
    Output(std::io::Error),
}

/// Runs the flow for `profile`: prints the authorize URL to `out`, waits for the browser's callback,
/// exchanges the code and stores the sealed credential.
pub async fn login(
    profile: &str,
    config: &OAuthConfig,
    store: &TokenStore,
    out: &mut (dyn Write + Send),
    timeout: Duration,
) -> Result<(), LoginError> {
    let addr = format!("127.0.0.1:{}", config.redirect_port);
    let listener = TcpListener::bind(&addr)
        .await
        .map_err(|source| LoginError::Bind { addr, source })?;
    let port = listener.local_addr().map_err(LoginError::Output)?.port();
    let redirect_uri = format!("http://127.0.0.1:{port}{CALLBACK_PATH}");
    let session = PkceSession::new();
    let url = authorize_url(config, &session, &redirect_uri)?;
    writeln!(
        out,
        "Open this URL in a browser to authorize profile {profile}:\n\n{url}\n\nWaiting for the callback on {redirect_uri} ..."
    )
    .and_then(|()| out.flush())
    .map_err(LoginError::Output)?;

    let (mut conn, code) = tokio::time::timeout(timeout, callback(&listener, &session))
        .await
        .map_err(|_| LoginError::Timeout(timeout))??;
    let result = exchange(config, &session, &code, &redirect_uri).await;
    let page = match &result {
        Ok(_) => (
            200,
            "Switchyard: signed in. You can close this tab.".to_owned(),
        ),
        Err(e) => (502, format!("Switchyard: sign-in failed: {e}")),
    };
    respond(&mut conn, page.0, &page.1).await;
    let cred = result?;
    store.save(profile, &cred)?;
    writeln!(
        out,
        "Stored the credential of profile {profile} (encrypted). Start the server to use it."
    )
    .map_err(LoginError::Output)?;
    Ok(())
}

/// The URL the user opens: the standard authorization-code parameters plus the PKCE challenge. For
/// `returns: api_key` also OpenRouter's `callback_url`.
pub fn authorize_url(
    config: &OAuthConfig,
    session: &PkceSession,
    redirect_uri: &str,
) -> Result<String, LoginError> {
    let mut url = url::Url::parse(&config.authorize_url)
        .map_err(|e| LoginError::AuthorizeUrl(e.to_string()))?;
    {
        let mut q = url.query_pairs_mut();
        q.append_pair("response_type", "code");
        if let Some(id) = &config.client_id {
            q.append_pair("client_id", id);
        }
        q.append_pair("redirect_uri", redirect_uri);
        if config.returns == OAuthReturns::ApiKey {
            q.append_pair("callback_url", redirect_uri);
        }
        if !config.scopes.is_empty() {
            q.append_pair("scope", &config.scopes.join(" "));
        }
        q.append_pair("state", &session.state);
        q.append_pair("code_challenge", &session.code_challenge());
        q.append_pair("code_challenge_method", "S256");
    }
    Ok(url.into())
}

/// Accepts connections until the callback arrives; other paths (a browser's favicon request) get 404.
/// Returns the connection, still to be answered, and the authorization code.
async fn callback(
    listener: &TcpListener,
    session: &PkceSession,
) -> Result<(TcpStream, String), LoginError> {
    loop {
        let (mut conn, _) = listener
            .accept()
            .await
            .map_err(|e| LoginError::Callback(e.to_string()))?;
        let Some(target) = read_request_target(&mut conn).await else {
            continue;
        };
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        if path != CALLBACK_PATH {
            respond(&mut conn, 404, "not found").await;
            continue;
        }
        let mut code = None;
        let mut state = None;
        let mut error = None;
        let mut description = None;
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            match &*k {
                "code" => code = Some(v.into_owned()),
                "state" => state = Some(v.into_owned()),
                "error" => error = Some(v.into_owned()),
                "error_description" => description = Some(v.into_owned()),
                _ => {}
            }
        }
        // The state is checked first, so a forged callback cannot even report an error as ours.
        if !state.as_deref().is_some_and(|s| session.state_matches(s)) {
            respond(
                &mut conn,
                400,
                "Switchyard: state mismatch; sign-in refused.",
            )
            .await;
            return Err(LoginError::StateMismatch);
        }
        if let Some(error) = error {
            let message = match description {
                Some(d) => format!("{error} ({d})"),
                None => error,
            };
            respond(&mut conn, 400, &format!("Switchyard: {message}")).await;
            return Err(LoginError::Denied(message));
        }
        return match code {
            Some(code) if !code.is_empty() => Ok((conn, code)),
            _ => {
                respond(&mut conn, 400, "Switchyard: the callback carries no code.").await;
                Err(LoginError::Callback("the callback carries no code".into()))
            }
        };
    }
}

/// The request target of an HTTP/1 request line, once the headers are in.
async fn read_request_target(conn: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        if buf.len() > MAX_REQUEST {
            return None;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut chunk))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf);
    let mut parts = text.lines().next()?.split(' ');
    match (parts.next(), parts.next()) {
        (Some("GET"), Some(target)) => Some(target.to_owned()),
        _ => None,
    }
}

async fn respond(conn: &mut TcpStream, status: u16, text: &str) {
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        400 => "Bad Request",
        _ => "Bad Gateway",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
        text.len()
    );
    // The browser may have gone; the login's outcome does not depend on this page.
    let _ = conn.write_all(response.as_bytes()).await;
    let _ = conn.shutdown().await;
}

/// Trades the code (and the PKCE verifier) for a credential.
async fn exchange(
    config: &OAuthConfig,
    session: &PkceSession,
    code: &str,
    redirect_uri: &str,
) -> Result<StoredCredential, LoginError> {
    let client = token_client()?;
    match config.returns {
        OAuthReturns::Tokens => {
            let mut form = vec![
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", redirect_uri),
                ("code_verifier", session.code_verifier.as_str()),
            ];
            if let Some(id) = &config.client_id {
                form.push(("client_id", id));
            }
            let t = token_call(client.post(&config.token_url).form(&form)).await?;
            let access = t
                .access_token
                .ok_or(LoginError::MissingField("access_token"))?;
            Ok(StoredCredential::new(access, t.refresh_token, t.expires_in))
        }
        OAuthReturns::ApiKey => {
            let body = serde_json::json!({
                "code": code,
                "code_verifier": session.code_verifier,
                "code_challenge_method": "S256",
            });
            let req = client
                .post(&config.token_url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string());
            let t = token_call(req).await?;
            let key = t.key.ok_or(LoginError::MissingField("key"))?;
            Ok(StoredCredential::new(key, None, None))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_authorize_url_carries_the_pkce_challenge_and_state() {
        let config = OAuthConfig {
            authorize_url: "https://id.example/authorize?tenant=x".into(),
            token_url: "https://id.example/token".into(),
            client_id: Some("cli ent".into()),
            scopes: vec!["openid".into(), "models.read".into()],
            redirect_port: 0,
            returns: OAuthReturns::Tokens,
        };
        let s = PkceSession::new();
        let url =
            url::Url::parse(&authorize_url(&config, &s, "http://127.0.0.1:5000/callback").unwrap())
                .unwrap();
        let q: std::collections::HashMap<String, String> = url.query_pairs().into_owned().collect();
        assert_eq!(q["tenant"], "x");
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["client_id"], "cli ent");
        assert_eq!(q["redirect_uri"], "http://127.0.0.1:5000/callback");
        assert_eq!(q["scope"], "openid models.read");
        assert_eq!(q["state"], s.state);
        assert_eq!(q["code_challenge"], s.code_challenge());
        assert_eq!(q["code_challenge_method"], "S256");
        assert!(!q.contains_key("callback_url"));
        assert!(!url.as_str().contains(&s.code_verifier));
    }
}
