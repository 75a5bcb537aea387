//! `AttemptGuard`: reports and records one attempt exactly once (success, failure, cut or abandonment),
//! and settles the request's credit hold before its usage record is written.

use std::sync::Arc;
use std::time::Instant;

use actix::Addr;
use switchyard_actors::outcome::AttemptOutcome;
use switchyard_actors::recorder::{Ack, RecordUsage, UsageQueue, UsageRecorder};
use switchyard_actors::router::{Pick, ProfileEntry};
use switchyard_actors::store::{now_ms, UsageRecord};
use tokio::sync::oneshot;

use super::failure::{AttemptEnd, AttemptFailure};
use super::{Proxy, ProxyRequest};
use crate::limits::journal::Journal;
use crate::limits::Hold;
use crate::metrics::Metrics;
use crate::shared::health::FleetProbe;
use crate::wire::openai::TokenUsage;

/// Reports and records one attempt exactly once; if dropped unfinished (the client left), it reports
/// `Abandoned` so a held probe is released and the attempt is still counted.
pub(super) struct AttemptGuard {
    pub(super) entry: Arc<ProfileEntry>,
    probe: bool,
    /// The fleet's lease on this probe (`state.backend: redis`), ended with the outcome.
    pub(super) fleet_probe: Option<FleetProbe>,
    recorder: Addr<UsageRecorder>,
    /// Where records nobody waits for go: gathered, one recorder wakeup for many.
    queue: Arc<UsageQueue>,
    pub(super) record: UsageRecord,
    pub(super) started: Instant,
    pub(super) status: Option<u16>,
    done: bool,
    metrics: Arc<Metrics>,
    accounting: Option<Arc<Hold>>,
    /// The request body's size: the input side of an estimate.
    input_bytes: u64,
    /// Bytes of answer text handed to the client so far; `None` until the answer started reaching it
    /// (before that the attempt can still fail over and costs the client nothing).
    text_bytes: Option<u64>,
    /// Where the record goes first when the request is durable (`usage.durable`, not fsync mode):
    /// every attempt's record, failed ones included, so a replay restores them all.
    journal: Option<Arc<Journal>>,
}

impl AttemptGuard {
    pub(super) fn new(
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
            usage_estimated: false,
            cached_tokens: 0,
            cache_write_tokens: 0,
            cache_write_1h_tokens: 0,
            reasoning_tokens: 0,
        };
        // Counted until the guard drops, which every ending of the attempt goes through.
        pick.entry.shared.attempt_started();
        AttemptGuard {
            entry: pick.entry,
            probe: pick.probe,
            fleet_probe: None,
            recorder: proxy.shared.recorder.clone(),
            queue: proxy.shared.usage_queue.clone(),
            record,
            started: Instant::now(),
            status: None,
            done: false,
            metrics: proxy.shared.metrics.clone(),
            accounting: req.accounting.clone(),
            input_bytes: u64::try_from(req.body.len()).unwrap_or(u64::MAX),
            text_bytes: None,
            journal: proxy
                .config
                .usage
                .durable
                .then(|| proxy.shared.journal.clone())
                .flatten(),
        }
    }

    /// The answer is reaching the client, `text_bytes` of its text so far: from here on, an ending
    /// without usage (a cut, a cancel, no usage block) is charged by estimate.
    pub(super) fn relayed(&mut self, text_bytes: u64) {
        self.text_bytes = Some(text_bytes);
    }

    /// The usage charged when the upstream reported none: a quarter of the request body's bytes for
    /// input, a quarter of the relayed text's bytes for output, each rounded up (about four bytes a
    /// token for English text and JSON; the body's size already bounds the reservation's input).
    fn estimate(&self) -> TokenUsage {
        TokenUsage::new(
            self.input_bytes.div_ceil(4),
            self.text_bytes.unwrap_or(0).div_ceil(4),
        )
    }

    pub(super) fn finish(
        &mut self,
        outcome: AttemptOutcome,
        label: &str,
        usage: Option<TokenUsage>,
        want_ack: bool,
    ) -> Option<oneshot::Receiver<Ack>> {
        if self.done {
            return None;
        }
        self.done = true;
        // Who pays: an answer (whole, or a stream's end), a client error as the upstream sent it, or a
        // stream cut or cancelled after its text started reaching the client.
        let answered = matches!(label, "ok" | "client_error") || self.text_bytes.is_some();
        let (usage, estimated) = match usage {
            Some(u) => (u, false),
            None if answered && label != "client_error" => (self.estimate(), true),
            None => (TokenUsage::default(), false),
        };
        if estimated && label == "ok" {
            self.metrics
                .usage_missing
                .with_label_values(&[self.record.model.as_str(), self.entry.id()])
                .inc();
            tracing::warn!(request_id = %self.record.request_id, profile = %self.entry.id(), prompt_tokens = usage.prompt_tokens, completion_tokens = usage.completion_tokens, "the upstream reported no usage: charging an estimate");
        }
        if let Some(p) = self.fleet_probe.take() {
            p.end(matches!(outcome, AttemptOutcome::Failed { .. }));
        }
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
            if n > 0 && !estimated {
                self.metrics
                    .tokens
                    .with_label_values(&[&self.record.model, profile, kind])
                    .inc_by(n);
            }
        }
        for (kind, n) in [
            ("cache_read", usage.cached_tokens),
            ("cache_write", usage.cache_write_tokens),
            ("cache_write_1h", usage.cache_write_1h_tokens),
            ("reasoning", usage.reasoning_tokens),
        ] {
            if n > 0 {
                self.metrics
                    .token_details
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
        record.usage_estimated = estimated;
        record.cached_tokens = usage.cached_tokens;
        record.cache_write_tokens = usage.cache_write_tokens;
        record.cache_write_1h_tokens = usage.cache_write_1h_tokens;
        record.reasoning_tokens = usage.reasoning_tokens;
        record.latency_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        if let Some(hold) = &self.accounting {
            hold.attempt_finished(&record, answered); // before the record, so its flush covers the ledger too
        }
        let record = match self.journal.as_deref() {
            Some(journal) => match self.journal_record(journal, record) {
                // In the kernel, with the movements staged before it: nothing to wait for.
                Ok(()) => return None,
                Err(record) => *record,
            },
            None => record,
        };
        let msg = |ack| RecordUsage {
            record,
            ack,
            seq: None,
            encoded: None,
        };
        if !want_ack {
            self.queue.push(&self.recorder, msg(None));
            return None;
        }
        let (tx, rx) = oneshot::channel();
        // A message of its own: a response waits for its flush, so it is not gathered. do_send: a
        // usage record is never dropped for a full mailbox.
        self.recorder.do_send(msg(Some(tx)));
        Some(rx)
    }

    /// Writes `record` (after the credit movements staged before it) to the journal, and hands it to
    /// the recorder in journal order. Gives it back when the journal cannot take it: the caller then
    /// waits for a flush instead.
    fn journal_record(
        &self,
        journal: &Journal,
        record: UsageRecord,
    ) -> Result<(), Box<UsageRecord>> {
        let Ok(body) = serde_json::to_vec(&record) else {
            return Err(Box::new(record));
        };
        let mut slot = Some(record);
        let written = journal.append(body, |seq, body| {
            if let Some(record) = slot.take() {
                // The journal's JSON is the store's too: serialised once. Queued under the
                // journal's lock, so in sequence order.
                self.queue.push(
                    &self.recorder,
                    RecordUsage {
                        record,
                        ack: None,
                        seq: Some(seq),
                        encoded: Some(body),
                    },
                );
            }
        });
        match (written, slot) {
            (Err(e), Some(record)) => {
                tracing::error!(error = %e, "cannot write the journal: waiting for a flush instead");
                Err(Box::new(record))
            }
            _ => Ok(()),
        }
    }

    pub(super) fn fail(&mut self, f: AttemptFailure) -> AttemptEnd {
        self.fail_with_usage(f, None)
    }

    /// A failure that may still be charged: a stream cut after its text reached the client, with the
    /// usage it reported before the cut, if any.
    pub(super) fn fail_with_usage(
        &mut self,
        f: AttemptFailure,
        usage: Option<TokenUsage>,
    ) -> AttemptEnd {
        if f.status.is_some() {
            self.status = f.status;
        }
        let outcome = AttemptOutcome::Failed {
            class: f.class,
            retry_after: f.retry_after,
            detail: f.detail.clone(),
        };
        self.finish(outcome, f.class.as_str(), usage, false);
        AttemptEnd::Failed(f)
    }
}

impl Drop for AttemptGuard {
    fn drop(&mut self) {
        if !self.done {
            self.finish(AttemptOutcome::Abandoned, "cancelled", None, false);
        }
        self.entry.shared.attempt_ended();
    }
}

pub(super) async fn wait_ack(ack: Option<oneshot::Receiver<Ack>>) {
    if let Some(rx) = ack {
        match rx.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "usage record not durable"),
            Err(_) => tracing::error!("usage recorder went away before acknowledging"),
        }
    }
}
