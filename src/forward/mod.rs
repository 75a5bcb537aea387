//! The forward path: pick a profile, send, classify, fail over while nothing reached the client, relay the
//! answer (streams event by event), and record one usage entry per attempt.
//!
//! * `mod.rs` — [`ProxyRequest`] and the failover loop ([`Proxy::forward`]).
//! * `attempt.rs` — one attempt at one profile: the upstream body, the send, the classification.
//! * `stream.rs` — a streamed answer: held until its first event, then relayed.
//! * `guard.rs` — [`AttemptGuard`](guard::AttemptGuard): every ending of an attempt recorded once.
//! * `failure.rs` — how attempts fail and the error a client gets when none answered.

mod attempt;
mod failure;
mod guard;
mod stored;
mod stream;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use bytes::Bytes;
use switchyard_actors::outcome::AttemptOutcome;
use switchyard_actors::router::{Pick, PickError, Router};
use tracing::Instrument;

use self::failure::{AttemptEnd, Failover, Unsuitable};
use self::guard::AttemptGuard;
pub use self::stored::StoredCall;
use crate::config::{Config, Provider};
use crate::error::ApiError;
use crate::limits::Hold;
use crate::metrics::{status_class, InFlight, Metrics};
use crate::shared::health::FleetProbe;
use crate::state::AppState;
use crate::upstream::{UpstreamProfile, Upstreams};
use crate::wire::openai::RoutingFields;
use crate::wire::Dialect;

/// The OpenAI endpoints that are proxied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    /// Anthropic's `/v1/messages/count_tokens`: only Anthropic profiles answer it.
    CountTokens,
    /// OpenAI's Responses API: passed through to profiles that have it, bridged to the chat API of
    /// the others (`wire::responses_bridge`).
    Responses,
}

impl Endpoint {
    /// The path under an OpenAI-compatible profile's base URL.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
            Endpoint::CountTokens => "/messages/count_tokens",
            Endpoint::Responses => "/responses",
        }
    }

    /// The path under an Anthropic profile's base URL, when the Messages API has the endpoint.
    pub fn anthropic_path(self) -> Option<&'static str> {
        match self {
            // The Responses API reaches Anthropic through the bridge, as a chat request translated.
            Endpoint::ChatCompletions | Endpoint::Responses => Some("/messages"),
            Endpoint::CountTokens => Some("/messages/count_tokens"),
            Endpoint::Completions | Endpoint::Embeddings => None,
        }
    }

    /// Whether the chat-completions rewrites apply (`stream_options.include_usage` on streams).
    pub(crate) fn is_chat_shaped(self) -> bool {
        matches!(self, Endpoint::ChatCompletions | Endpoint::Completions)
    }

    /// Whether `provider`'s API has this endpoint.
    fn served_by(self, provider: Provider) -> bool {
        match provider {
            Provider::Anthropic => self.anthropic_path().is_some(),
            Provider::OpenAi => self != Endpoint::CountTokens,
        }
    }

    pub(crate) fn streams(self) -> bool {
        !matches!(self, Endpoint::Embeddings | Endpoint::CountTokens)
    }
}

/// One client request on its way upstream.
pub struct ProxyRequest {
    pub endpoint: Endpoint,
    pub fields: RoutingFields,
    /// The model name to send upstream when the profile's `model_map` does not rename it (an alias's
    /// model, a pattern's rest of the name); `None`: the client's own.
    pub upstream_model: Option<String>,
    pub body: Bytes,
    pub request_id: String,
    /// The sticky-session key (the first of `routing.sticky.sources` the request has).
    pub session: Option<String>,
    pub account: Option<String>,
    pub key_id: Option<String>,
    /// When the request arrived (for time to first token).
    pub started: Instant,
    /// The wire format the client speaks (and is answered in).
    pub dialect: Dialect,
    /// Credits and token budget: settled by the first answered attempt, released when dropped unsettled.
    pub accounting: Option<Arc<Hold>>,
    /// The client's own request, when it speaks a dialect some profiles speak natively (Anthropic
    /// Messages): those profiles get it untouched but for `model`; others get `body` (translated).
    pub native: Option<NativeRequest>,
    /// The profile that created the response `previous_response_id` names: only it is asked.
    pub pinned: Option<Arc<str>>,
}

/// A client's request as it came, for a profile that speaks its dialect.
#[derive(Debug, Clone)]
pub struct NativeRequest {
    pub body: Bytes,
    /// The query string as sent (`beta=true`), without the `?`.
    pub query: String,
    /// The dialect's own headers, forwarded as sent (`anthropic-beta`, `anthropic-version`).
    pub headers: Vec<(&'static str, String)>,
    /// Whether `ProxyRequest::body` is the chat translation; when not (every profile of the model
    /// speaks the dialect), an attempt at a profile that does not translates it then.
    pub translated: bool,
}

impl ProxyRequest {
    /// Whether `up` gets the client's request untouched (same dialect on both sides).
    fn passes_through(&self, up: &UpstreamProfile) -> bool {
        self.native.is_some() && up.dialect() == self.dialect
    }

    /// Whether `up` gets this Responses API request through the stateless bridge (it has no
    /// Responses API of its own).
    fn bridged(&self, up: &UpstreamProfile) -> bool {
        self.endpoint == Endpoint::Responses && !up.speaks_responses()
    }

    /// Whose responses this request's ids are: the account, else the key.
    pub fn owner(&self) -> Option<&str> {
        self.account.as_deref().or(self.key_id.as_deref())
    }
}

/// `max_tokens` sent to Anthropic when the client gave none (the Messages API requires it).
pub const ANTHROPIC_DEFAULT_MAX_TOKENS: u32 = 4096;

/// Largest non-streamed answer we hold (embeddings of big batches are the large case).
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;
/// Most of an error body we read to classify it.
const MAX_ERROR_BYTES: usize = 64 * 1024;

/// Everything the forward path needs; cheap to build per request.
pub struct Proxy<'a> {
    pub shared: &'a AppState,
    /// The configuration as of the request's arrival: loaded once, read by every attempt.
    pub config: &'a Config,
    /// This worker's upstream clients for that configuration.
    pub upstreams: &'a Upstreams,
}

impl Proxy<'_> {
    fn router(&self) -> &Router {
        &self.shared.router
    }

    fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// Forwards `req`, failing over across the model's profiles; the answer or an OpenAI-shaped error.
    pub async fn forward(&self, req: ProxyRequest) -> Result<HttpResponse, ApiError> {
        let _in_flight = InFlight::start(&self.metrics().in_flight);
        let started = req.started;
        let model = req.fields.model.clone();
        // Only the debug access line below needs it after `req` is gone.
        let request_id = tracing::enabled!(tracing::Level::DEBUG).then(|| req.request_id.clone());
        let result = self.forward_inner(req).await;
        if !matches!(result, Err(ApiError::UnknownModel(_))) {
            let (status, profile) = match &result {
                Ok(resp) => (
                    resp.status().as_u16(),
                    resp.headers()
                        .get("x-switchyard-profile")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("none")
                        .to_owned(),
                ),
                Err(e) => (
                    actix_web::ResponseError::status_code(e).as_u16(),
                    "none".to_owned(),
                ),
            };
            let m = self.metrics();
            m.requests
                .with_label_values(&[&model, &profile, status_class(status)])
                .inc();
            m.request_duration
                .with_label_values(&[&model])
                .observe(started.elapsed().as_secs_f64());
            // Debug, not info: an access line per request costs a formatted write on the hot path;
            // metrics carry the traffic. `RUST_LOG=info,switchyard::forward=debug` turns it on.
            tracing::debug!(
                request_id = request_id.as_deref().unwrap_or_default(),
                status,
                profile = %profile,
                latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                "request answered"
            );
        }
        result
    }

    async fn forward_inner(&self, req: ProxyRequest) -> Result<HttpResponse, ApiError> {
        let model = req.fields.model.as_str();
        let max_attempts = self.config.routing.max_attempts as usize;
        let mut failover = Failover::default();
        self.keep_to_pinned(&req, &mut failover);
        while failover.attempts < max_attempts {
            let pick = match self
                .router()
                .pick(model, req.session.as_deref(), &failover.tried)
            {
                Ok(p) => p,
                Err(PickError::UnknownModel) => {
                    return Err(ApiError::UnknownModel(model.to_owned()))
                }
                Err(PickError::Exhausted(s)) => {
                    failover.skipped = s;
                    break;
                }
            };
            let id = pick.entry.id().clone();
            if let Some(prev) = failover.last_class() {
                self.metrics()
                    .failovers
                    .with_label_values(&[model, prev.as_str()])
                    .inc();
            }
            let Some(up) = self.upstreams.get(&id) else {
                // Release a probe this pick may hold before giving up.
                pick.entry.report(AttemptOutcome::Abandoned, pick.probe);
                return Err(ApiError::Internal(format!("profile {id} has no upstream")));
            };
            if !req.endpoint.served_by(up.provider) {
                pick.entry.release(pick.probe);
                failover.unsuitable(id, Unsuitable::NoEndpoint(req.endpoint));
                continue;
            }
            let fleet_probe = match self.claim_fleet_probe(&pick, up).await {
                Ok(p) => p,
                Err(()) => {
                    pick.entry.release(true);
                    failover.probed_elsewhere(id);
                    continue;
                }
            };
            let attempt = failover.begin(id.clone());
            let span = tracing::debug_span!("attempt", profile = %id, attempt, probe = pick.probe);
            match self
                .attempt(up, &req, pick, attempt, fleet_probe)
                .instrument(span)
                .await
            {
                Ok(resp) => return Ok(resp),
                Err(AttemptEnd::Failed(f)) => {
                    tracing::warn!(request_id = %req.request_id, profile = %id, attempt, class = f.class.as_str(), detail = %f.detail, "attempt failed");
                    failover.failed(id, f);
                }
                Err(AttemptEnd::Skipped(why)) => failover.not_attempted(id, why),
            }
        }
        if failover.attempts >= max_attempts {
            if let Some(m) = self.config.model(model) {
                failover.ran_out(&m.profiles);
            }
        }
        Err(failover.into_error(model))
    }

    /// With shared state, a half-open probe is sent by one replica for the fleet: this pick's probe
    /// lease, `Err` when another replica holds it (skip the profile). Redis unreachable: this
    /// replica probes for itself, as a lone replica does.
    async fn claim_fleet_probe(
        &self,
        pick: &Pick,
        up: &UpstreamProfile,
    ) -> Result<Option<FleetProbe>, ()> {
        let (true, Some(redis)) = (pick.probe, &self.shared.redis) else {
            return Ok(None);
        };
        // Long enough for the probe's answer to start; a stream's end may outlive it.
        let lease = (up.timeouts.connect + up.timeouts.first_byte).max(Duration::from_secs(1));
        let open_for = self.config.routing.health.breaker.open_for;
        match redis.claim_probe(pick.entry.id(), lease, open_for).await {
            Ok(Some(probe)) => Ok(Some(probe)),
            Ok(None) => Err(()),
            Err(e) => {
                tracing::debug!(profile = %pick.entry.id(), error = %e, "probing without the fleet lease");
                Ok(None)
            }
        }
    }

    /// A request continuing a stored response goes only to the profile that made it (the others do
    /// not know the id): every other profile of the model is set aside before the first pick. A pin
    /// to a profile the model no longer has is ignored.
    fn keep_to_pinned(&self, req: &ProxyRequest, failover: &mut Failover) {
        let (Some(pinned), Some(model)) = (&req.pinned, self.config.model(&req.fields.model))
        else {
            return;
        };
        if !model.profiles.iter().any(|p| **p == **pinned) {
            return;
        }
        for other in model.profiles.iter().filter(|p| **p != **pinned) {
            failover.unsuitable(
                Arc::from(other.as_str()),
                Unsuitable::PinnedElsewhere(pinned.clone()),
            );
        }
    }

    /// Remembers which profile created a Responses API answer, so its id can be continued there.
    /// `whole`: the client gets the answer next, so the fleet is told first; else (a stream that
    /// goes on) the fleet is told in the background, see `ResponsePins::pin`.
    async fn pin_response(
        &self,
        req: &ProxyRequest,
        id: Option<&str>,
        guard: &AttemptGuard,
        whole: bool,
    ) {
        // A bridged answer is kept nowhere: its id is not pinned, so asking for it is a 404.
        if let (Endpoint::Responses, Some(id)) = (req.endpoint, id) {
            let pins = &self.shared.response_pins;
            match whole {
                true => pins.pin_now(id, guard.entry.id(), req.owner()).await,
                false => pins.pin(id, guard.entry.id(), req.owner()),
            }
        }
    }

    fn respond(
        &self,
        status: u16,
        content_type: &str,
        guard: &AttemptGuard,
    ) -> actix_web::HttpResponseBuilder {
        let mut b =
            HttpResponse::build(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY));
        b.content_type(content_type.to_owned());
        b.insert_header(("x-switchyard-profile", guard.entry.id().to_string()));
        b.insert_header(("x-switchyard-attempts", guard.record.attempt.to_string()));
        b
    }
}
