//! The forward path: pick a profile, send, classify, fail over while nothing reached the client, relay the
//! answer (streams chunk by chunk), and record one usage entry per attempt.

use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use actix::Addr;
use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use switchyard_actors::health::StateName;
use switchyard_actors::outcome::{AttemptOutcome, FailureClass};
use switchyard_actors::recorder::{Ack, RecordUsage, UsageRecorder};
use switchyard_actors::router::{Pick, PickError, ProfileEntry, Router, SkipReason};
use switchyard_actors::store::{now_ms, UsageRecord};
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::config::{Config, Provider};
use crate::error::ApiError;
use crate::metrics::{status_class, InFlight, Metrics};
use crate::state::AppState;
use crate::upstream::classify::{classify, error_detail, Verdict};
use crate::upstream::{UpstreamProfile, WorkerUpstreams};
use crate::wire::anthropic::chat_request_to_messages;
use crate::wire::openai::{response_usage, upstream_body, RoutingFields, TokenUsage};
use crate::wire::{client_error_body, response_body, Dialect, StreamCodec, StreamFault};

/// The OpenAI endpoints that are proxied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
}

impl Endpoint {
    /// The path under the profile's base URL.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
        }
    }

    fn streams(self) -> bool {
        !matches!(self, Endpoint::Embeddings)
    }
}

/// One client request on its way upstream.
pub struct ProxyRequest {
    pub endpoint: Endpoint,
    pub fields: RoutingFields,
    pub body: Bytes,
    pub request_id: String,
    /// `X-Session-Id`, else the body's `user`.
    pub session: Option<String>,
    pub account: Option<String>,
    pub key_id: Option<String>,
    /// When the request arrived (for time to first token).
    pub started: Instant,
    /// The wire format the client speaks (and is answered in).
    pub dialect: Dialect,
    /// Credits and token budget: settled by the first answered attempt, released when dropped unsettled.
    pub accounting: Option<Arc<crate::limits::Hold>>,
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
    /// The configuration as of the request's arrival.
    pub config: &'a Config,
    /// This worker's upstream clients.
    pub upstreams: &'a WorkerUpstreams,
}

/// How an attempt ended without the client's answer.
enum AttemptEnd {
    /// The upstream failed: counted against the profile.
    Failed(AttemptFailure),
    /// The profile cannot serve this request (a field it has no equivalent for): nothing was sent,
    /// nothing is held against it.
    Skipped(String),
}

/// How one attempt failed.
struct AttemptFailure {
    class: FailureClass,
    retry_after: Option<Duration>,
    detail: String,
    status: Option<u16>,
}

impl AttemptFailure {
    fn new(class: FailureClass, detail: impl Into<String>) -> AttemptFailure {
        AttemptFailure {
            class,
            retry_after: None,
            detail: detail.into(),
            status: None,
        }
    }
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
        let model = req.fields.model.clone();
        let max_attempts = self.config.routing.max_attempts as usize;
        let mut tried: Vec<Arc<str>> = Vec::new();
        let mut attempts = 0usize;
        let mut failures: Vec<(Arc<str>, AttemptFailure)> = Vec::new();
        let mut unsuitable: Vec<(Arc<str>, String)> = Vec::new();
        let mut skipped: Vec<(Arc<str>, SkipReason)> = Vec::new();
        while attempts < max_attempts {
            let pick = match self.router().pick(&model, req.session.as_deref(), &tried) {
                Ok(p) => p,
                Err(PickError::UnknownModel) => return Err(ApiError::UnknownModel(model)),
                Err(PickError::Exhausted(s)) => {
                    skipped = s;
                    break;
                }
            };
            let id = pick.entry.id().clone();
            if let Some((_, prev)) = failures.last() {
                self.metrics()
                    .failovers
                    .with_label_values(&[&model, prev.class.as_str()])
                    .inc();
            }
            tried.push(id.clone());
            attempts += 1;
            let attempt = u32::try_from(attempts).unwrap_or(u32::MAX);
            let span = tracing::debug_span!("attempt", profile = %id, attempt, probe = pick.probe);
            let upstreams = self
                .upstreams
                .current(&self.shared.config(), self.shared.generation());
            let Some(up) = upstreams.get(&id) else {
                // Release a probe this pick may hold before giving up.
                pick.entry.report(AttemptOutcome::Abandoned, pick.probe);
                return Err(ApiError::Internal(format!("profile {id} has no upstream")));
            };
            if up.provider == Provider::Anthropic && req.endpoint != Endpoint::ChatCompletions {
                pick.entry.release(pick.probe);
                attempts -= 1;
                unsuitable.push((
                    id,
                    format!("the Anthropic API has no {}", req.endpoint.path()),
                ));
                continue;
            }
            match self.attempt(up, &req, pick, attempt).instrument(span).await {
                Ok(resp) => return Ok(resp),
                Err(AttemptEnd::Failed(f)) => {
                    tracing::warn!(request_id = %req.request_id, profile = %id, attempt, class = f.class.as_str(), detail = %f.detail, "attempt failed");
                    failures.push((id, f));
                }
                Err(AttemptEnd::Skipped(why)) => {
                    attempts -= 1;
                    unsuitable.push((id, why));
                }
            }
        }
        Err(exhausted_error(&model, &failures, &unsuitable, &skipped))
    }

    async fn attempt(
        &self,
        up: &UpstreamProfile,
        req: &ProxyRequest,
        pick: Pick,
        attempt: u32,
    ) -> Result<HttpResponse, AttemptEnd> {
        let stream = req.fields.stream && req.endpoint.streams();
        let ask_usage = stream && !req.fields.client_wants_usage;
        let model = &req.fields.model;
        let body = match up.provider {
            Provider::OpenAi => upstream_body(&req.body, up.upstream_model(model), ask_usage)
                .map_err(|e| e.to_string()),
            Provider::Anthropic => {
                let upstream_model = up.upstream_model(model).unwrap_or(model);
                chat_request_to_messages(&req.body, upstream_model, ANTHROPIC_DEFAULT_MAX_TOKENS)
                    .map(Bytes::from)
                    .map_err(|e| e.to_string())
            }
        };
        let body = match body {
            Ok(b) => b,
            Err(why) => {
                pick.entry.release(pick.probe);
                return Err(AttemptEnd::Skipped(why));
            }
        };
        let mut guard = AttemptGuard::new(self, req, pick, attempt, stream);
        let durable = self.config.usage.durable;
        let path = match up.provider {
            Provider::OpenAi => req.endpoint.path(),
            Provider::Anthropic => "/messages",
        };
        let sent = up.post(path, &req.request_id).body(body).send();
        let resp = match tokio::time::timeout(up.timeouts.first_byte, sent).await {
            Err(_) => {
                return Err(guard.fail(AttemptFailure::new(
                    FailureClass::Timeout,
                    format!(
                        "no response headers within {}",
                        humantime::format_duration(up.timeouts.first_byte)
                    ),
                )))
            }
            Ok(Err(e)) => return Err(guard.fail(transport_failure(&e))),
            Ok(Ok(r)) => r,
        };
        let status = resp.status();
        guard.status = Some(status.as_u16());
        self.metrics()
            .upstream_duration
            .with_label_values(&[&**guard.entry.id()])
            .observe(guard.started.elapsed().as_secs_f64());
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .to_owned();
        if !status.is_success() {
            let headers = resp.headers().clone();
            let body = read_body(resp, MAX_ERROR_BYTES, up.timeouts.idle)
                .await
                .unwrap_or_default();
            return match classify(status.as_u16(), &headers, &body) {
                Verdict::ClientError => {
                    // Not the profile's fault: the client gets the upstream's answer as it is.
                    guard.finish(
                        AttemptOutcome::Succeeded,
                        "client_error",
                        TokenUsage::default(),
                        false,
                    );
                    let body = client_error_body(up.provider, req.dialect, body);
                    Ok(self
                        .respond(status.as_u16(), "application/json", &guard)
                        .body(body))
                }
                Verdict::Failure { class, retry_after } => Err(guard.fail(AttemptFailure {
                    class,
                    retry_after,
                    detail: up.redact(&error_detail(status.as_u16(), &body)),
                    status: Some(status.as_u16()),
                })),
            };
        }
        if stream && content_type.starts_with("text/event-stream") {
            return self.relay_stream(up, req, resp, guard).await;
        }
        let body = match read_body(resp, MAX_RESPONSE_BYTES, up.timeouts.idle).await {
            Ok(b) => b,
            Err(f) => return Err(guard.fail(f)),
        };
        let garbage = |why: String| AttemptFailure {
            status: Some(status.as_u16()),
            ..AttemptFailure::new(
                FailureClass::Server,
                format!("HTTP {}: {why}", status.as_u16()),
            )
        };
        // Usage is read from the OpenAI form: the upstream's own, or the translation of it.
        let openai = match response_body(up.provider, Dialect::OpenAi, body, model) {
            Ok(b) => b,
            Err(why) => return Err(guard.fail(garbage(why))),
        };
        let usage = match response_usage(&openai) {
            Ok(u) => u,
            Err(_) => return Err(guard.fail(garbage("body is not JSON".into()))),
        };
        let body = match response_body(Provider::OpenAi, req.dialect, openai, model) {
            Ok(b) => b,
            Err(why) => return Err(guard.fail(garbage(why))),
        };
        let content_type = if up.provider == Provider::OpenAi && req.dialect == Dialect::OpenAi {
            content_type
        } else {
            "application/json".to_owned()
        };
        let ack = guard.finish(AttemptOutcome::Succeeded, "ok", usage, durable);
        wait_ack(ack).await;
        Ok(self
            .respond(status.as_u16(), &content_type, &guard)
            .body(body))
    }

    /// Reads until the first whole event; only then is the client's response committed.
    async fn relay_stream(
        &self,
        up: &UpstreamProfile,
        req: &ProxyRequest,
        resp: reqwest::Response,
        mut guard: AttemptGuard,
    ) -> Result<HttpResponse, AttemptEnd> {
        let durable = self.config.usage.durable;
        let idle = up.timeouts.idle;
        let mut relay = StreamCodec::new(
            up.provider,
            req.dialect,
            &req.fields.model,
            req.fields.client_wants_usage,
        );
        let mut upstream = resp.bytes_stream().boxed_local();
        let first = loop {
            match tokio::time::timeout(idle, upstream.next()).await {
                Err(_) => {
                    return Err(guard.fail(AttemptFailure::new(
                        FailureClass::Timeout,
                        "no stream chunk within the idle timeout",
                    )))
                }
                Ok(None) => {
                    return Err(guard.fail(AttemptFailure::new(
                        FailureClass::StreamCut,
                        "stream ended before any event",
                    )))
                }
                Ok(Some(Err(e))) => return Err(guard.fail(transport_failure(&e))),
                Ok(Some(Ok(chunk))) => match relay.push(&chunk) {
                    // Nothing reached the client yet: fail over.
                    Err(StreamFault::Upstream { detail, .. }) => {
                        return Err(guard.fail(AttemptFailure::new(
                            FailureClass::Server,
                            up.redact(&detail),
                        )))
                    }
                    Err(StreamFault::Garbage(e)) => {
                        return Err(guard.fail(AttemptFailure::new(FailureClass::Server, e)))
                    }
                    Ok(p) if p.done => {
                        let ack = guard.finish(
                            AttemptOutcome::Succeeded,
                            "ok",
                            relay.usage().unwrap_or_default(),
                            durable,
                        );
                        wait_ack(ack).await;
                        let mut all = BytesMut::from(&p.forward[..]);
                        all.extend_from_slice(&relay.done_bytes());
                        return Ok(self
                            .respond(200, "text/event-stream", &guard)
                            .body(all.freeze()));
                    }
                    Ok(p) if !p.forward.is_empty() => break p.forward,
                    Ok(_) => continue,
                },
            }
        };
        self.metrics()
            .ttft
            .with_label_values(&[&req.fields.model, &**guard.entry.id()])
            .observe(req.started.elapsed().as_secs_f64());
        let builder = self.respond(200, "text/event-stream", &guard);
        let state = StreamState {
            upstream,
            relay,
            first: Some(first),
            stashed: None,
            guard,
            idle,
            durable,
            finished: false,
            _in_flight: InFlight::start(&self.metrics().in_flight),
        };
        let mut builder = builder;
        builder.insert_header(("cache-control", "no-cache"));
        Ok(builder.streaming(futures_util::stream::unfold(state, StreamState::step)))
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

/// A streamed answer in flight: everything its next step needs.
struct StreamState {
    upstream: futures_util::stream::LocalBoxStream<'static, reqwest::Result<Bytes>>,
    relay: StreamCodec,
    first: Option<Bytes>,
    /// The end of the upstream stream (or its error), seen while collecting chunks that were already
    /// there: handled on the next step, after what was collected has been sent.
    stashed: Option<Option<reqwest::Result<Bytes>>>,
    guard: AttemptGuard,
    idle: Duration,
    durable: bool,
    finished: bool,
    _in_flight: InFlight,
}

type Step = Option<(Result<Bytes, actix_web::Error>, StreamState)>;

impl StreamState {
    /// The next piece for the client. After a chunk with events, the chunks that have already arrived
    /// are taken too (without waiting), so events that came together leave in one write rather than one
    /// write per event.
    async fn step(mut self) -> Step {
        if self.finished {
            return None;
        }
        if let Some(first) = self.first.take() {
            return Some((Ok(first), self));
        }
        let mut out = BytesMut::new();
        loop {
            let next = if out.is_empty() {
                match self.stashed.take() {
                    Some(item) => Ok(item),
                    None => tokio::time::timeout(self.idle, self.upstream.next()).await,
                }
            } else {
                match self.already_here().await {
                    None => return Some((Ok(out.freeze()), self)),
                    Some(Some(Ok(chunk))) => Ok(Some(Ok(chunk))),
                    Some(end) => {
                        self.stashed = Some(end);
                        return Some((Ok(out.freeze()), self));
                    }
                }
            };
            match next {
                Err(_) => {
                    return self.cut(
                        out,
                        FailureClass::Timeout,
                        "the upstream stream stalled past the idle timeout",
                    )
                }
                Ok(None) => {
                    return self.cut(
                        out,
                        FailureClass::StreamCut,
                        "the upstream stream ended without [DONE]",
                    )
                }
                Ok(Some(Err(_))) => {
                    return self.cut(
                        out,
                        FailureClass::StreamCut,
                        "the upstream connection broke mid-stream",
                    )
                }
                Ok(Some(Ok(chunk))) => match self.relay.push(&chunk) {
                    Err(StreamFault::Upstream { detail, event }) => {
                        return self.cut_with(out, FailureClass::Server, &detail, Some(event))
                    }
                    Err(StreamFault::Garbage(e)) => return self.cut(out, FailureClass::Server, &e),
                    Ok(p) if p.done => {
                        let usage = self.relay.usage().unwrap_or_default();
                        let ack =
                            self.guard
                                .finish(AttemptOutcome::Succeeded, "ok", usage, self.durable);
                        wait_ack(ack).await;
                        self.finished = true;
                        out.extend_from_slice(&p.forward);
                        out.extend_from_slice(&self.relay.done_bytes());
                        return Some((Ok(out.freeze()), self));
                    }
                    Ok(p) => out.extend_from_slice(&p.forward),
                },
            }
        }
    }

    /// The next upstream item if it is already here, without waiting for the network. hyper's connection
    /// task decodes one chunk per turn, so it gets one turn (a yield) before the answer is "not yet".
    async fn already_here(&mut self) -> Option<Option<reqwest::Result<Bytes>>> {
        for turn in 0..2 {
            let polled =
                std::future::poll_fn(|cx| Poll::Ready(self.upstream.poll_next_unpin(cx))).await;
            if let Poll::Ready(item) = polled {
                return Some(item);
            }
            if turn == 0 {
                tokio::task::yield_now().await;
            }
        }
        None
    }

    /// Ends a stream that broke after the client got bytes: what was collected (`out`), then an error
    /// event, never a fake `[DONE]`.
    fn cut(self, out: BytesMut, class: FailureClass, detail: &str) -> Step {
        self.cut_with(out, class, detail, None)
    }

    /// Like `cut`, with the error event already written in the client's dialect.
    fn cut_with(
        mut self,
        mut out: BytesMut,
        class: FailureClass,
        detail: &str,
        event: Option<Bytes>,
    ) -> Step {
        self.finished = true;
        let profile = self.guard.entry.id().clone();
        self.guard.fail(AttemptFailure::new(class, detail));
        tracing::warn!(request_id = %self.guard.record.request_id, profile = %profile, class = class.as_str(), "stream cut after bytes reached the client");
        let event = event.unwrap_or_else(|| {
            let err = ApiError::Upstream(format!(
                "profile {profile}: {detail}; the response is incomplete"
            ));
            self.relay.error_event(&err)
        });
        out.extend_from_slice(&event);
        Some((Ok(out.freeze()), self))
    }
}

/// Reports and records one attempt exactly once; if dropped unfinished (the client left), it reports
/// `Abandoned` so a held probe is released and the attempt is still counted.
struct AttemptGuard {
    entry: Arc<ProfileEntry>,
    probe: bool,
    recorder: Addr<UsageRecorder>,
    record: UsageRecord,
    started: Instant,
    status: Option<u16>,
    done: bool,
    metrics: Arc<Metrics>,
    accounting: Option<Arc<crate::limits::Hold>>,
}

impl AttemptGuard {
    fn new(
        proxy: &Proxy<'_>,
        req: &ProxyRequest,
        pick: Pick,
        attempt: u32,
        stream: bool,
    ) -> AttemptGuard {
        let record = UsageRecord {
            ts_ms: 0,
            request_id: req.request_id.clone(),
            profile: pick.entry.id().to_string(),
            model: req.fields.model.clone(),
            account: req.account.clone(),
            key_id: req.key_id.clone(),
            outcome: String::new(),
            status: None,
            prompt_tokens: 0,
            completion_tokens: 0,
            latency_ms: 0,
            attempt,
            stream,
        };
        AttemptGuard {
            entry: pick.entry,
            probe: pick.probe,
            recorder: proxy.shared.recorder.clone(),
            record,
            started: Instant::now(),
            status: None,
            done: false,
            metrics: proxy.shared.metrics.clone(),
            accounting: req.accounting.clone(),
        }
    }

    fn finish(
        &mut self,
        outcome: AttemptOutcome,
        label: &str,
        usage: TokenUsage,
        want_ack: bool,
    ) -> Option<oneshot::Receiver<Ack>> {
        if self.done {
            return None;
        }
        self.done = true;
        self.entry.report(outcome, self.probe);
        self.entry
            .note_tokens(usage.prompt_tokens + usage.completion_tokens);
        let profile: &str = self.entry.id();
        self.metrics
            .attempts
            .with_label_values(&[profile, label])
            .inc();
        for (kind, n) in [
            ("prompt", usage.prompt_tokens),
            ("completion", usage.completion_tokens),
        ] {
            if n > 0 {
                self.metrics
                    .tokens
                    .with_label_values(&[&self.record.model, profile, kind])
                    .inc_by(n);
            }
        }
        let mut record = self.record.clone();
        record.ts_ms = now_ms();
        record.outcome = label.to_owned();
        record.status = self.status;
        record.prompt_tokens = usage.prompt_tokens;
        record.completion_tokens = usage.completion_tokens;
        record.latency_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        if let Some(hold) = &self.accounting {
            hold.attempt_finished(&record); // before the record, so its flush covers the ledger too
        }
        let (ack, rx) = if want_ack {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        // do_send: a usage record is never dropped for a full mailbox.
        self.recorder.do_send(RecordUsage { record, ack });
        rx
    }

    fn fail(&mut self, f: AttemptFailure) -> AttemptEnd {
        if f.status.is_some() {
            self.status = f.status;
        }
        let outcome = AttemptOutcome::Failed {
            class: f.class,
            retry_after: f.retry_after,
            detail: f.detail.clone(),
        };
        self.finish(outcome, f.class.as_str(), TokenUsage::default(), false);
        AttemptEnd::Failed(f)
    }
}

impl Drop for AttemptGuard {
    fn drop(&mut self) {
        if !self.done {
            self.finish(
                AttemptOutcome::Abandoned,
                "cancelled",
                TokenUsage::default(),
                false,
            );
        }
    }
}

async fn wait_ack(ack: Option<oneshot::Receiver<Ack>>) {
    if let Some(rx) = ack {
        match rx.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "usage record not durable"),
            Err(_) => tracing::error!("usage recorder went away before acknowledging"),
        }
    }
}

fn transport_failure(e: &reqwest::Error) -> AttemptFailure {
    if e.is_timeout() {
        AttemptFailure::new(FailureClass::Timeout, "timed out")
    } else if e.is_connect() {
        AttemptFailure::new(FailureClass::Connect, "cannot connect")
    } else {
        AttemptFailure::new(FailureClass::Connect, "connection failed before a response")
    }
}

/// Reads a whole body, at most `limit` bytes, with `idle` as the longest pause between chunks.
async fn read_body(
    resp: reqwest::Response,
    limit: usize,
    idle: Duration,
) -> Result<Bytes, AttemptFailure> {
    let mut stream = resp.bytes_stream();
    let mut buf = BytesMut::new();
    loop {
        match tokio::time::timeout(idle, stream.next()).await {
            Err(_) => {
                return Err(AttemptFailure::new(
                    FailureClass::Timeout,
                    "the body stalled past the idle timeout",
                ))
            }
            Ok(None) => return Ok(buf.freeze()),
            Ok(Some(Err(_))) => {
                return Err(AttemptFailure::new(
                    FailureClass::StreamCut,
                    "the connection broke while reading the body",
                ))
            }
            Ok(Some(Ok(chunk))) => {
                if buf.len() + chunk.len() > limit {
                    return Err(AttemptFailure::new(
                        FailureClass::Server,
                        format!("the body exceeds {limit} bytes"),
                    ));
                }
                buf.extend_from_slice(&chunk);
            }
        }
    }
}

fn describe_skip(reason: &SkipReason) -> String {
    match reason {
        SkipReason::AlreadyTried => "already tried".to_owned(),
        SkipReason::ProbeInFlight => "half_open (a probe is in flight)".to_owned(),
        SkipReason::UpstreamLimit(until) => format!(
            "at its provider's per-minute limit until {}",
            humantime::format_rfc3339_seconds(*until)
        ),
        SkipReason::State(state, until) => match until {
            Some(t) if *state != StateName::AuthFailed => {
                format!(
                    "{} until {}",
                    state.as_str(),
                    humantime::format_rfc3339_seconds(*t)
                )
            }
            _ => state.as_str().to_owned(),
        },
    }
}

/// The error when no profile answered: 503 if none could be tried, else 504 when the last failure was a
/// timeout, else 502. The message names each profile and why.
fn exhausted_error(
    model: &str,
    failures: &[(Arc<str>, AttemptFailure)],
    unsuitable: &[(Arc<str>, String)],
    skipped: &[(Arc<str>, SkipReason)],
) -> ApiError {
    let mut parts: Vec<String> = failures
        .iter()
        .map(|(id, f)| format!("{id}: {} ({})", f.class.as_str(), f.detail))
        .collect();
    parts.extend(
        unsuitable
            .iter()
            .map(|(id, why)| format!("{id}: cannot serve this request, {why}")),
    );
    parts.extend(
        skipped
            .iter()
            .filter(|(_, r)| *r != SkipReason::AlreadyTried)
            .map(|(id, r)| format!("{id}: skipped, {}", describe_skip(r))),
    );
    let list = parts.join("; ");
    match failures.last() {
        // Every profile that could be asked refused the request's shape: that is the client's to fix.
        None if !unsuitable.is_empty()
            && skipped.iter().all(|(_, r)| *r == SkipReason::AlreadyTried) =>
        {
            ApiError::invalid(format!(
                "No profile of model `{model}` can serve this request: {list}."
            ))
        }
        None => ApiError::NoAvailableProfile(format!(
            "No profile is available for model `{model}`: {list}."
        )),
        Some((_, f)) if matches!(f.class, FailureClass::Timeout) => ApiError::Timeout(format!(
            "Every profile tried for model `{model}` failed, the last by timing out: {list}."
        )),
        Some(_) => ApiError::Upstream(format!(
            "Every profile tried for model `{model}` failed: {list}."
        )),
    }
}
