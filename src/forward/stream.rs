//! A streamed answer: held until its first whole event (failover is still possible), then relayed event
//! by event; a stream that breaks after bytes reached the client ends with an error event.

use std::task::Poll;
use std::time::Duration;

use actix_web::HttpResponse;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use switchyard_actors::outcome::{AttemptOutcome, FailureClass};

use super::failure::{transport_failure, AttemptEnd, AttemptFailure};
use super::guard::{wait_ack, AttemptGuard};
use super::{Endpoint, Proxy, ProxyRequest};
use crate::error::ApiError;
use crate::metrics::InFlight;
use crate::upstream::classify::classify_stream_error;
use crate::upstream::client::{BodyStream, TransportError, UpstreamResponse};
use crate::upstream::{Redactor, UpstreamProfile};
use crate::wire::{Relayed, StreamCodec, StreamFault};

impl Proxy<'_> {
    pub(super) async fn relay_stream(
        &self,
        up: &UpstreamProfile,
        req: &ProxyRequest,
        resp: UpstreamResponse,
        mut guard: AttemptGuard,
    ) -> Result<HttpResponse, AttemptEnd> {
        let durable = self.config.usage.durable;
        let idle = up.timeouts.idle;
        let mut relay = if req.bridged(up) {
            StreamCodec::responses_bridge(up.dialect(), &req.fields.model)
        } else if req.passes_through(up) {
            StreamCodec::native_anthropic()
        } else if req.endpoint == Endpoint::Responses {
            StreamCodec::native_responses()
        } else {
            StreamCodec::new(
                up.dialect(),
                req.dialect,
                &req.fields.model,
                req.fields.client_wants_usage,
            )
        };
        let mut upstream = resp.into_stream();
        // Comments and keep-alives before the first content event: held, since they commit nothing.
        let mut held = BytesMut::new();
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
                    Err(fault) => {
                        return Err(guard.fail(AttemptFailure::new(
                            FailureClass::Server,
                            up.redact(&fault.to_string()),
                        )))
                    }
                    Ok(Relayed {
                        fault: Some(fault), ..
                    }) => return Err(guard.fail(first_event_failure(up, &fault))),
                    Ok(p) if p.done => {
                        // The whole stream is answered at once: the fleet learns the id first.
                        self.pin_response(req, relay.response_id(), &guard, true)
                            .await;
                        guard.relayed(relay.text_bytes());
                        let ack =
                            guard.finish(AttemptOutcome::Succeeded, "ok", relay.usage(), durable);
                        wait_ack(ack).await;
                        held.extend_from_slice(&p.forward);
                        held.extend_from_slice(&relay.done_bytes());
                        return Ok(self
                            .respond(200, "text/event-stream", &guard)
                            .body(held.freeze()));
                    }
                    Ok(p) => {
                        held.extend_from_slice(&p.forward);
                        if p.content {
                            break held.freeze();
                        }
                    }
                },
            }
        };
        self.pin_response(req, relay.response_id(), &guard, false)
            .await;
        self.metrics()
            .ttft
            .with_label_values(&[&req.fields.model, &**guard.entry.id()])
            .observe(req.started.elapsed().as_secs_f64());
        let builder = self.respond(200, "text/event-stream", &guard);
        // From here the answer belongs to the client: any ending is charged for the text it got.
        guard.relayed(relay.text_bytes());
        let state = StreamState {
            upstream,
            relay,
            first: Some(first),
            stashed: None,
            guard,
            idle,
            durable,
            finished: false,
            redactor: up.redactor(),
            _in_flight: InFlight::start(&self.metrics().in_flight),
        };
        let mut builder = builder;
        builder.insert_header(("cache-control", "no-cache"));
        Ok(builder.streaming(futures_util::stream::unfold(state, StreamState::step)))
    }
}

/// A streamed answer in flight: everything its next step needs.
struct StreamState {
    upstream: BodyStream,
    relay: StreamCodec,
    first: Option<Bytes>,
    /// The end of the upstream stream (or its error), seen while collecting chunks that were already
    /// there: handled on the next step, after what was collected has been sent.
    stashed: Option<Option<Result<Bytes, TransportError>>>,
    guard: AttemptGuard,
    idle: Duration,
    durable: bool,
    finished: bool,
    /// Masks the profile's credential in what an upstream error event says before it reaches the client.
    redactor: Redactor,
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
        // Asked for more: everything relayed before was handed to the connection.
        self.guard.relayed(self.relay.text_bytes());
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
                    Ok(Relayed {
                        forward,
                        fault: Some(fault),
                        ..
                    }) => {
                        out.extend_from_slice(&forward);
                        let class = match &fault {
                            StreamFault::Upstream(body) => classify_stream_error(body),
                            _ => FailureClass::Server,
                        };
                        return self.cut(out, class, &fault.to_string());
                    }
                    Err(fault) => return self.cut(out, FailureClass::Server, &fault.to_string()),
                    Ok(p) if p.done => {
                        let usage = self.relay.usage();
                        self.guard.relayed(self.relay.text_bytes());
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
    async fn already_here(&mut self) -> Option<Option<Result<Bytes, TransportError>>> {
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
    /// event naming the profile and the (redacted) detail, never a fake `[DONE]`.
    fn cut(mut self, mut out: BytesMut, class: FailureClass, detail: &str) -> Step {
        self.finished = true;
        let profile = self.guard.entry.id().clone();
        // Upstreams quote the key they were sent in their error messages.
        let detail = self.redactor.redact(detail);
        // `out` goes to the client with the error event: charged with the rest (see the guard).
        self.guard.relayed(self.relay.text_bytes());
        self.guard.fail_with_usage(
            AttemptFailure::new(class, detail.clone()),
            self.relay.usage(),
        );
        tracing::warn!(request_id = %self.guard.record.request_id, profile = %profile, class = class.as_str(), "stream cut after bytes reached the client");
        let message = format!("profile {profile}: {detail}; the response is incomplete");
        let err = ApiError::Upstream(message);
        out.extend_from_slice(&self.relay.error_event(&err.body(self.relay.client())));
        Some((Ok(out.freeze()), self))
    }
}

/// An error event or unreadable data where the first event should be: a failure of the profile, of the
/// class the error event names (like an HTTP error body), so the request fails over.
fn first_event_failure(up: &UpstreamProfile, fault: &StreamFault) -> AttemptFailure {
    let class = match fault {
        StreamFault::Upstream(body) => classify_stream_error(body),
        _ => FailureClass::Server,
    };
    AttemptFailure::new(
        class,
        up.redact(&format!("before the first event: {fault}")),
    )
}
