//! A stored Responses API object (`GET`/`DELETE /v1/responses/{id}`, `.../input_items`) fetched from
//! the profile that created it, the answer relayed as it came (a `GET ...?stream=true` streams).

use actix_web::HttpResponse;
use futures_util::StreamExt;
use http::Method;

use super::{Proxy, MAX_ERROR_BYTES};
use crate::error::ApiError;

/// Which stored object a client asks for.
pub struct StoredCall<'a> {
    pub method: Method,
    /// The response id, as the client sent it.
    pub id: &'a str,
    /// `/input_items`, or empty for the response itself.
    pub tail: &'static str,
    /// The client's query string (`stream=true`, `after=`, `limit=`), without the `?`.
    pub query: &'a str,
    pub request_id: &'a str,
    /// The caller's account, else key: only the caller that created the response may reach it.
    pub owner: Option<&'a str>,
}

/// Response ids are `resp_` and URL-safe characters; anything else cannot have been one we pinned,
/// and must not be pasted into an upstream path.
fn plausible_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 256
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Proxy<'_> {
    /// Asks the profile that created `call.id`; an id no profile is known to have made is a 404.
    pub async fn stored_response(&self, call: StoredCall<'_>) -> Result<HttpResponse, ApiError> {
        let pinned = match plausible_id(call.id) {
            true => {
                self.shared
                    .response_pins
                    .profile_anywhere(call.id, call.owner)
                    .await
            }
            false => None,
        };
        let not_found = || {
            ApiError::NotFound(format!(
                "No response with id '{}' was created through this proxy.",
                call.id
            ))
        };
        let profile = pinned.ok_or_else(not_found)?;
        let Some(up) = self.upstreams.get(&profile) else {
            // The profile left the configuration: nobody can answer for the id any more.
            return Err(not_found());
        };
        let path = format!("/responses/{}{}", call.id, call.tail);
        let sent = up
            .fetch(call.method.clone(), &path, call.query, call.request_id)
            .send();
        let failed = |why: String| ApiError::Upstream(format!("profile {profile}: {why}"));
        let resp = match tokio::time::timeout(up.timeouts.first_byte, sent).await {
            Err(_) => {
                return Err(ApiError::Timeout(format!(
                    "profile {profile}: no response headers in time"
                )))
            }
            Ok(Err(e)) => return Err(failed(up.redact(&e.to_string()))),
            Ok(Ok(r)) => r,
        };
        let status = resp.status();
        if call.method == Method::DELETE && status.is_success() {
            self.shared.response_pins.forget(call.id).await;
        }
        let mut b = HttpResponse::build(
            actix_web::http::StatusCode::from_u16(status.as_u16())
                .unwrap_or(actix_web::http::StatusCode::BAD_GATEWAY),
        );
        if let Some(ct) = resp.headers().get(http::header::CONTENT_TYPE) {
            b.insert_header((actix_web::http::header::CONTENT_TYPE, ct.as_bytes()));
        }
        b.insert_header(("x-switchyard-profile", profile.to_string()));
        b.insert_header(("x-switchyard-attempts", "1"));
        if !status.is_success() {
            // Upstreams quote the key they were sent in their error messages.
            let mut body = Vec::new();
            let mut chunks = resp.into_stream();
            while let Some(Ok(c)) = chunks.next().await {
                body.extend_from_slice(&c);
                if body.len() > MAX_ERROR_BYTES {
                    break;
                }
            }
            return Ok(b.body(up.redactor().redact_bytes(body.into())));
        }
        let redactor = up.redactor();
        let stream = resp.into_stream().map(move |c| match c {
            Ok(bytes) => Ok(bytes),
            Err(e) => Err(actix_web::error::ErrorBadGateway(
                redactor.redact(&e.to_string()),
            )),
        });
        Ok(b.streaming(stream))
    }
}
