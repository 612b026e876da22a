//! The commit phase of two-phase commit at the coordinator: forcing the decision, answering
//! the client, sending Commits until every participant has acked, ending the decision and
//! telling the participants to forget the txn, and the best-effort Aborts. It carries out the
//! core's effects; the order they carry (decision durable before any Commit or reply; forget
//! only once the decision's deletion is durable) is the core's contract.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tracing::{Instrument, debug, info_span, warn};
use txn_coordinator_core::core::Effect;
use txn_metrics::{OutcomeLabel, ProtocolLabel, RetryKind};
use txn_proto::pb::v1 as pb;
use txn_server::failpoint;
use txn_types::store::WriteBatch;
use txn_types::types::{KeyValue, ParticipantId, TxnId};

use crate::dedup::{ClientKeys, ClientTag};
use crate::error::CoordError;
use crate::node::{Coordinator, FORGET_PATIENCE, failpoints};
use crate::outcome::{TxnOutcome, count_txn};

impl Coordinator {
    /// Carries out the decision effects of a txn and builds the client's answer.
    pub(crate) async fn finish(
        self: &Arc<Self>,
        txn: TxnId,
        effects: Vec<Effect>,
        reads: Vec<(ParticipantId, Vec<KeyValue>)>,
        tag: Option<&ClientTag>,
    ) -> Result<TxnOutcome, CoordError> {
        let mut effects = effects;
        if let [Effect::PersistDecision { key, record }] = effects.as_slice() {
            let mut batch = WriteBatch::default();
            batch.put(key.clone(), record.clone());
            if let Some(tag) = tag {
                // The key's answer is durable with the decision: a retry can never commit
                // the request a second time.
                let committed = TxnOutcome {
                    txn: txn.clone(),
                    committed: true,
                    accepted: false,
                    reason: String::new(),
                    failed_branch: None,
                    reads: reads.clone(),
                };
                ClientKeys::put_record(
                    &mut batch,
                    tag,
                    &txn,
                    pb::Protocol::TwoPhase,
                    Some(committed.to_pb()),
                );
            }
            failpoint::hit(failpoints::BEFORE_DECISION_DURABLE);
            // The commit point: once this returns, the txn commits, whatever crashes.
            self.check(self.gc.write_durable(batch).await)?;
            self.decided
                .lock()
                .expect("decided")
                .insert(txn.clone(), std::time::Instant::now());
            failpoint::hit(failpoints::AFTER_DECISION_DURABLE);
            effects = self.core().on_decision_durable(&txn);
        } else if effects.contains(&Effect::ReplyCommitted) {
            // At the votes: the last durable YES was the commit point, with nothing logged
            // here. The same crash point stands for "committed, nobody told yet".
            self.decided
                .lock()
                .expect("decided")
                .insert(txn.clone(), std::time::Instant::now());
            failpoint::hit(failpoints::AFTER_DECISION_DURABLE);
        }
        let mut outcome = TxnOutcome {
            txn: txn.clone(),
            committed: false,
            accepted: false,
            reason: String::new(),
            failed_branch: None,
            reads: Vec::new(),
        };
        let mut rest = Vec::new();
        for e in effects {
            match e {
                Effect::ReplyCommitted => outcome.committed = true,
                Effect::ReplyAborted {
                    reason,
                    failed_branch,
                } => {
                    outcome.reason = reason;
                    outcome.failed_branch = failed_branch;
                }
                other => rest.push(other),
            }
        }
        if outcome.committed {
            outcome.reads = reads;
            self.counters.committed.fetch_add(1, Ordering::Relaxed);
            count_txn(ProtocolLabel::TwoPhase, OutcomeLabel::Committed);
            debug!("committed");
        } else {
            self.counters.aborted.fetch_add(1, Ordering::Relaxed);
            count_txn(ProtocolLabel::TwoPhase, OutcomeLabel::Aborted);
            if let Some(tag) = tag {
                // Lazy: losing it in a crash only lets a retry run a request that had no
                // effect.
                let mut batch = WriteBatch::default();
                ClientKeys::put_record(
                    &mut batch,
                    tag,
                    &txn,
                    pb::Protocol::TwoPhase,
                    Some(outcome.to_pb()),
                );
                self.check(self.gc.write_lazy(batch))?;
            }
            debug!(reason = %outcome.reason, "aborted");
        }
        self.run_effects(&txn, rest);
        Ok(outcome)
    }

    /// Starts the sends and log writes of `effects` in the background.
    pub(crate) fn run_effects(self: &Arc<Self>, txn: &TxnId, effects: Vec<Effect>) {
        for e in effects {
            let node = self.clone();
            let txn = txn.clone();
            let span = info_span!("txn", txn = %txn);
            match e {
                Effect::SendCommit { to } => {
                    tokio::spawn(async move { node.drive_commit(txn, to).await }.instrument(span));
                }
                Effect::SendAbort { to } => {
                    tokio::spawn(async move { node.send_abort(txn, to).await }.instrument(span));
                }
                Effect::EndDecision { key, participants } => {
                    let mut batch = WriteBatch::default();
                    batch.delete(key);
                    // Lazy: a decision that reappears after a crash only re-sends Commits,
                    // which participants ack idempotently - as long as they still hold the
                    // outcome. So they are told to forget it only once the deletion is
                    // durable (riding on other writers' syncs, under load).
                    match self.gc.write_lazy(batch) {
                        Ok(ticket) => {
                            tokio::spawn(
                                async move {
                                    if node
                                        .gc
                                        .wait_patiently(ticket, FORGET_PATIENCE)
                                        .await
                                        .is_ok()
                                    {
                                        node.forget_everywhere(&txn, &participants);
                                    }
                                }
                                .instrument(span),
                            );
                        }
                        Err(e) => warn!(error = %e, "could not end the decision"),
                    }
                }
                Effect::Fence { to } => {
                    // Fences decide the outcome, so the vote collection runs them.
                    warn!(participant = %to, "a fence outside the vote collection; dropped");
                }
                Effect::PersistDecision { .. }
                | Effect::ReplyCommitted
                | Effect::ReplyAborted { .. } => {
                    unreachable!("handled by finish")
                }
            }
        }
    }

    /// Tells each participant of an ended txn that it may forget the outcome.
    fn forget_everywhere(&self, txn: &TxnId, participants: &[ParticipantId]) {
        for p in participants {
            if let Some(queue) = self.commit_queues.get(p)
                && !queue.forget(txn.clone())
            {
                debug!(participant = %p, "forget queue full; the outcome stays there");
            }
        }
    }

    /// Sends Commit to `to` until it acks, with capped exponential backoff and jitter.
    async fn drive_commit(self: Arc<Self>, txn: TxnId, to: ParticipantId) {
        let Some(queue) = self.commit_queues.get(&to).cloned() else {
            tracing::error!(participant = %to,
                "a commit decision names a participant that is not configured (--participant); \
                 the txn stays in doubt until it is configured again");
            return;
        };
        let mut backoff = self.commit_backoff();
        loop {
            match queue.commit(txn.clone()).await {
                Ok(_) => {
                    let effects = self.core().on_commit_ack(&txn, &to);
                    if effects.is_empty() {
                        failpoint::hit(failpoints::AFTER_PARTIAL_COMMIT);
                    } else {
                        self.commit_progress.lock().expect("progress").remove(&txn);
                        if let Some(at) = self.decided.lock().expect("decided").remove(&txn) {
                            txn_metrics::metrics()
                                .commit_seconds
                                .observe(at.elapsed().as_secs_f64());
                        }
                    }
                    self.run_effects(&txn, effects);
                    return;
                }
                Err(status) => {
                    txn_metrics::retried(RetryKind::Commit);
                    {
                        let mut progress = self.commit_progress.lock().expect("progress");
                        let e = progress
                            .entry(txn.clone())
                            .or_default()
                            .entry(to.clone())
                            .or_default();
                        e.0 += 1;
                        e.1 = crate::outcome::call_failure(
                            to.as_str(),
                            &status,
                            self.config.rpc_timeout,
                        );
                    }
                    let wait = backoff.failed(rand::random());
                    let attempt = backoff.attempts();
                    if matches!(
                        status.code(),
                        tonic::Code::NotFound | tonic::Code::FailedPrecondition
                    ) {
                        warn!(participant = %to, attempt, error = %status.message(),
                            "participant refuses Commit of a committed txn; retrying");
                    } else {
                        debug!(participant = %to, attempt, error = %status.message(),
                            "Commit not acked; retrying");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.retry_now.notified() => {}
                    }
                    if self.core().view(&txn).is_none() {
                        // Settled otherwise (a heuristic outcome by an operator).
                        self.decided.lock().expect("decided").remove(&txn);
                        return;
                    }
                }
            }
        }
    }

    async fn send_abort(self: Arc<Self>, txn: TxnId, to: ParticipantId) {
        let Some(mut client) = self.participants.get(&to).cloned() else {
            return;
        };
        let mut request = txn_server::trace::request(pb::AbortRequest {
            txn_id: txn.as_str().to_owned(),
            forced: false,
        });
        request.set_timeout(self.config.rpc_timeout);
        // Best effort: a participant that misses it asks with Resolve and gets ABORT.
        if let Err(status) = client.abort(request).await {
            debug!(participant = %to, error = %status.message(), "Abort not delivered");
        }
    }
}
