//! From a handler's result to the response: the `X-RateLimit-*` headers of the call's admission on
//! answers and refusals alike, and errors rendered in the client's dialect.

use std::future::Future;

use actix_web::HttpResponse;

use super::extract::Caller;
use crate::auth::Principal;
use crate::error::ApiError;
use crate::limits::{Admission, CallKind, RateStatus};
use crate::state::AppState;
use crate::wire::Dialect;

/// Counts a `/v1` call that is not a model request against the caller's tier (429 when over it).
pub async fn admit_other(
    state: &AppState,
    principal: Option<&Principal>,
) -> Result<Admission, ApiError> {
    Ok(state
        .limits
        .admit_principal(&state.config(), principal, CallKind::Other)
        .await?)
}

/// Runs the work of one of the caller's own account routes (`/v1/me`, `/v1/keys`): not counted against
/// its tier (README, "Limits and credits"), but answered with the tier's current `X-RateLimit-*`.
pub async fn uncounted<F>(state: &AppState, caller: &Caller, work: F) -> HttpResponse
where
    F: Future<Output = Result<HttpResponse, ApiError>>,
{
    let rate = state
        .limits
        .admit_principal(&state.config(), Some(&caller.0), CallKind::Uncounted)
        .await
        .map(|a| a.rate)
        .unwrap_or_default();
    reply(&rate, Dialect::OpenAi, work.await)
}

/// The response for `result`, errors in `dialect`, with the admission's `X-RateLimit-*` headers.
pub fn reply(
    rate: &RateStatus,
    dialect: Dialect,
    result: Result<HttpResponse, ApiError>,
) -> HttpResponse {
    let mut res = result.unwrap_or_else(|e| e.render(dialect));
    rate.apply(res.headers_mut());
    res
}

/// Runs a `/v1` handler's work for `caller` after counting the call against its tier, with the
/// `X-RateLimit-*` headers on the answer. `work` does not start when the call is refused.
pub async fn metered<F>(state: &AppState, caller: &Caller, work: F) -> HttpResponse
where
    F: Future<Output = Result<HttpResponse, ApiError>>,
{
    let mut rate = RateStatus::default();
    let result = async {
        rate = admit_other(state, Some(&caller.0)).await?.rate;
        work.await
    }
    .await;
    reply(&rate, Dialect::OpenAi, result)
}
