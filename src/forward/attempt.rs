//! One attempt at one profile: build the upstream body, send, classify the answer, and either answer the
//! client (a whole body) or hand a stream to `stream`.

use std::time::Duration;

use actix_web::HttpResponse;
use bytes::Bytes;
use switchyard_actors::outcome::{AttemptOutcome, FailureClass};
use switchyard_actors::router::Pick;

use super::failure::{AttemptEnd, AttemptFailure, Unsuitable};
use super::guard::{wait_ack, AttemptGuard};
use super::{
    Endpoint, Proxy, ProxyRequest, ANTHROPIC_DEFAULT_MAX_TOKENS, MAX_ERROR_BYTES,
    MAX_RESPONSE_BYTES,
};
use crate::config::Provider;
use crate::shared::health::FleetProbe;
use crate::upstream::classify::{classify, error_detail, redirect_detail, Verdict};
use crate::upstream::client::{ReadError, UpstreamResponse};
use crate::upstream::UpstreamProfile;
use crate::wire::anthropic::native::messages_usage;
use crate::wire::anthropic::{chat_request_to_messages, messages_request_to_chat};
use crate::wire::openai::{response_usage, upstream_body};
use crate::wire::responses::response_id;
use crate::wire::responses_bridge::responses_request_to_chat;
use crate::wire::{bridged_response_body, client_error_body, response_body, Dialect};

impl Proxy<'_> {
    /// One attempt at `up`: the client's answer, or how the attempt ended without one.
    pub(super) async fn attempt(
        &self,
        up: &UpstreamProfile,
        req: &ProxyRequest,
        pick: Pick,
        attempt: u32,
        fleet_probe: Option<FleetProbe>,
    ) -> Result<HttpResponse, AttemptEnd> {
        let stream = req.fields.stream && req.endpoint.streams();
        let native = req.native.as_ref().filter(|_| req.passes_through(up));
        let body = match native {
            // Same dialect: the client's bytes, `model` renamed where the profile maps it (or where
            // an alias or a pattern named the model).
            Some(n) => {
                let renamed = up
                    .upstream_model(&req.fields.model)
                    .or(req.upstream_model.as_deref());
                upstream_body(&n.body, renamed, false).map_err(Unsuitable::from)
            }
            None => upstream_request_body(up, req, stream),
        };
        let body = match body {
            Ok(b) => b,
            Err(why) => {
                pick.entry.release(pick.probe);
                if let Some(p) = fleet_probe {
                    p.end(false);
                }
                return Err(AttemptEnd::Skipped(why));
            }
        };
        let mut guard = AttemptGuard::new(self, req, pick, attempt, stream);
        guard.fleet_probe = fleet_probe;
        let path = match up.provider {
            Provider::OpenAi if req.bridged(up) => Endpoint::ChatCompletions.path(),
            Provider::OpenAi => req.endpoint.path(),
            Provider::Anthropic => req.endpoint.anthropic_path().unwrap_or("/messages"),
        };
        let sent = match native {
            Some(n) => up.post_native(path, &n.query, &req.request_id, &n.headers),
            None => up.post(path, &req.request_id),
        };
        let sent = sent.body(body).send();
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
            Ok(Err(e)) => return Err(guard.fail(AttemptFailure::from(e))),
            Ok(Ok(r)) => r,
        };
        guard.status = Some(resp.status().as_u16());
        self.metrics()
            .upstream_duration
            .with_label_values(&[&**guard.entry.id()])
            .observe(guard.started.elapsed().as_secs_f64());
        if !resp.status().is_success() {
            return self.answer_refusal(up, req, resp, guard).await;
        }
        let is_sse = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("text/event-stream"));
        if stream && is_sse {
            return self.relay_stream(up, req, resp, guard).await;
        }
        self.answer_whole(up, req, resp, guard).await
    }

    /// A non-2xx answer: the client's own fault is relayed as it is (in the client's dialect); anything
    /// else is a failure of the profile, with its class.
    async fn answer_refusal(
        &self,
        up: &UpstreamProfile,
        req: &ProxyRequest,
        resp: UpstreamResponse,
        mut guard: AttemptGuard,
    ) -> Result<HttpResponse, AttemptEnd> {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = read_body(resp, MAX_ERROR_BYTES, up.timeouts.idle)
            .await
            .unwrap_or_default();
        match classify(status, &headers, &body) {
            Verdict::ClientError => {
                // Not the profile's fault: the client gets the upstream's answer as it is.
                guard.finish(AttemptOutcome::Succeeded, "client_error", None, false);
                // Upstreams quote the key they were sent back in their messages.
                let body =
                    up.redactor()
                        .redact_bytes(client_error_body(up.dialect(), req.dialect, body));
                Ok(self.respond(status, "application/json", &guard).body(body))
            }
            Verdict::Failure { class, retry_after } => {
                let detail = if (300..400).contains(&status) {
                    redirect_detail(status, &headers)
                } else {
                    error_detail(status, &body)
                };
                Err(guard.fail(AttemptFailure {
                    class,
                    retry_after,
                    detail: up.redact(&detail),
                    status: Some(status),
                }))
            }
        }
    }

    /// A whole (non-streamed) 2xx answer: read, usage taken from it, translated for the client.
    async fn answer_whole(
        &self,
        up: &UpstreamProfile,
        req: &ProxyRequest,
        resp: UpstreamResponse,
        mut guard: AttemptGuard,
    ) -> Result<HttpResponse, AttemptEnd> {
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .to_owned();
        let body = match read_body(resp, MAX_RESPONSE_BYTES, up.timeouts.idle).await {
            Ok(b) => b,
            Err(f) => return Err(guard.fail(f)),
        };
        let garbage = |why: String| AttemptFailure {
            status: Some(status),
            ..AttemptFailure::new(FailureClass::Server, format!("HTTP {status}: {why}"))
        };
        let model = &req.fields.model;
        if req.passes_through(up) {
            // Relayed as it came; only its usage is read.
            let usage = match messages_usage(&body) {
                Ok(u) => u,
                Err(why) => return Err(guard.fail(garbage(why.to_string()))),
            };
            let ack = guard.finish(
                AttemptOutcome::Succeeded,
                "ok",
                Some(usage),
                self.config.usage.durable,
            );
            wait_ack(ack).await;
            return Ok(self.respond(status, &content_type, &guard).body(body));
        }
        // Usage is read from the OpenAI form: the upstream's own, or the translation of it.
        let openai = match response_body(up.dialect(), Dialect::OpenAi, body, model) {
            Ok(b) => b,
            Err(why) => return Err(guard.fail(garbage(why.to_string()))),
        };
        let usage = match response_usage(&openai) {
            Ok(u) => u,
            Err(_) => return Err(guard.fail(garbage("body is not JSON".into()))),
        };
        let body = match req.bridged(up) {
            true => bridged_response_body(&openai, model),
            false => response_body(Dialect::OpenAi, req.dialect, openai, model),
        };
        let body = match body {
            Ok(b) => b,
            Err(why) => return Err(guard.fail(garbage(why.to_string()))),
        };
        guard.relayed(usage.text_bytes);
        if !req.bridged(up) {
            self.pin_response(req, response_id(&body).as_deref(), &guard, true)
                .await;
        }
        let same_dialect = up.dialect() == req.dialect && req.dialect == Dialect::OpenAi;
        let content_type = if same_dialect && !req.bridged(up) {
            content_type
        } else {
            "application/json".to_owned()
        };
        let ack = guard.finish(
            AttemptOutcome::Succeeded,
            "ok",
            usage.reported,
            self.config.usage.durable,
        );
        wait_ack(ack).await;
        Ok(self.respond(status, &content_type, &guard).body(body))
    }
}

/// The body for `up`: the client's, renamed and asked for stream usage where needed, or translated to
/// the upstream's dialect.
fn upstream_request_body(
    up: &UpstreamProfile,
    req: &ProxyRequest,
    stream: bool,
) -> Result<Bytes, Unsuitable> {
    let model = &req.fields.model;
    let renamed = up.upstream_model(model).or(req.upstream_model.as_deref());
    // A Messages request not translated up front (its model had only Messages profiles then).
    let late = match req.native.as_ref().filter(|n| !n.translated) {
        Some(n) => Some(Bytes::from(messages_request_to_chat(&n.body)?.0)),
        None => None,
    };
    let client_body = late.as_ref().unwrap_or(&req.body);
    // A Responses request for a profile without that API: first a chat request (asking for stream
    // usage itself), then whatever the profile's dialect needs.
    let bridged = req
        .bridged(up)
        .then(|| responses_request_to_chat(client_body).map(Bytes::from))
        .transpose()?;
    let chat = bridged.as_ref().unwrap_or(client_body);
    match up.provider {
        Provider::OpenAi => {
            // Chat streams report usage only when asked; a Responses stream always does.
            let ask_usage =
                stream && !req.fields.client_wants_usage && req.endpoint.is_chat_shaped();
            Ok(upstream_body(chat, renamed, ask_usage)?)
        }
        Provider::Anthropic => {
            let upstream_model = renamed.unwrap_or(model);
            let body =
                chat_request_to_messages(chat, upstream_model, ANTHROPIC_DEFAULT_MAX_TOKENS)?;
            Ok(Bytes::from(body))
        }
    }
}

/// Reads a whole body, at most `limit` bytes, with `idle` as the longest pause between chunks.
async fn read_body(
    resp: UpstreamResponse,
    limit: usize,
    idle: Duration,
) -> Result<Bytes, AttemptFailure> {
    resp.read_whole(limit, idle).await.map_err(|e| {
        let class = match e {
            ReadError::Stalled => FailureClass::Timeout,
            ReadError::Broken(_) => FailureClass::StreamCut,
            ReadError::TooLarge(_) => FailureClass::Server,
        };
        AttemptFailure::new(class, e.to_string())
    })
}
