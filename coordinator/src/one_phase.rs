//! Runs the core's one-phase commit ([`OnePhase`]) over gRPC: the CommitOnePhase call, the
//! settling Aborts and state queries it asks for, and the pauses between them. Nothing here
//! decides what an answer means.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tracing::{debug, info, warn};
use txn_coordinator_core::one_phase::{
    ONE_PHASE_SETTLE_ATTEMPTS, OnePhase, OnePhaseAction, OnePhaseEvent, OnePhaseOutcome,
};
use txn_metrics::{OutcomeLabel, ProtocolLabel, RetryKind};
use txn_proto::convert::ToWire;
use txn_proto::pb::v1 as pb;
use txn_types::types::{ParticipantId, TxnId, TxnRequest};

use crate::error::CoordError;
use crate::node::Coordinator;
use crate::outcome::call_failure;
use crate::outcome::{TxnOutcome, count_txn};

impl Coordinator {
    /// Commits a single-branch txn in one call: the participant checks, applies and records
    /// the outcome in one forced write; nothing is logged here (there is nothing to recover:
    /// the participant never holds a prepared state). Returns None when the participant does
    /// not offer one-phase commit, so the caller runs two phases instead.
    pub(crate) async fn run_one_phase(
        self: &Arc<Self>,
        txn: &TxnId,
        req: &TxnRequest,
    ) -> Result<Option<TxnOutcome>, CoordError> {
        let to = req.branches[0].participant.clone();
        let started = tokio::time::Instant::now();
        let mut call = OnePhase::new(
            txn.clone(),
            to.clone(),
            self.commit_backoff(),
            ONE_PHASE_SETTLE_ATTEMPTS,
        );
        let first = self.call_one_phase(txn, req).await;
        let mut action = call.on(first, rand::random());
        let outcome = loop {
            let event = match action {
                Some(OnePhaseAction::SendAbort { attempt }) => {
                    if attempt == 1 {
                        warn!(participant = %to, "one-phase commit got no answer; settling it with an Abort");
                    }
                    self.settling_abort(txn, &to).await
                }
                Some(OnePhaseAction::QueryState) => self.settling_state(txn, &to).await,
                Some(OnePhaseAction::RetryAfter(pause)) => {
                    txn_metrics::retried(RetryKind::OnePhaseSettle);
                    tokio::time::sleep(pause).await;
                    OnePhaseEvent::RetryDue
                }
                Some(OnePhaseAction::FallBack) => {
                    debug!(participant = %to, "no one-phase commit there; running two phases");
                    return Ok(None);
                }
                Some(OnePhaseAction::Reply(outcome)) => break outcome,
                None => unreachable!("every event of a live one-phase call leads somewhere"),
            };
            action = call.on(event, rand::random());
        };
        // Nothing to keep: no decision record, no participant left to tell.
        self.core().forget(txn);
        // The whole call is the prepare phase here; there is no commit phase to time.
        txn_metrics::metrics()
            .prepare_seconds
            .observe(started.elapsed().as_secs_f64());
        let outcome = match outcome {
            OnePhaseOutcome::Committed { reads, settled } => {
                self.counters.committed.fetch_add(1, Ordering::Relaxed);
                count_txn(ProtocolLabel::OnePhase, OutcomeLabel::Committed);
                if settled {
                    info!(participant = %to, "the lost one-phase commit had committed");
                }
                debug!("committed in one phase");
                TxnOutcome {
                    txn: txn.clone(),
                    committed: true,
                    accepted: false,
                    reason: String::new(),
                    failed_branch: None,
                    reads: vec![(to, reads)],
                }
            }
            OnePhaseOutcome::Aborted { reason, .. } => {
                self.counters.aborted.fetch_add(1, Ordering::Relaxed);
                count_txn(ProtocolLabel::OnePhase, OutcomeLabel::Aborted);
                debug!(%reason, "aborted in one phase");
                TxnOutcome {
                    txn: txn.clone(),
                    committed: false,
                    accepted: false,
                    reason,
                    failed_branch: Some(0),
                    reads: Vec::new(),
                }
            }
            OnePhaseOutcome::Unknown { message } => return Err(CoordError::Unavailable(message)),
        };
        Ok(Some(outcome))
    }

    async fn call_one_phase(&self, txn: &TxnId, req: &TxnRequest) -> OnePhaseEvent {
        let branch = &req.branches[0];
        let mut request = txn_server::trace::request(pb::CommitOnePhaseRequest {
            txn_id: txn.as_str().to_owned(),
            coordinator_epoch: self.core().epoch(),
            ops: branch.ops.iter().map(|op| op.to_pb()).collect(),
        });
        let timeout = self.prepare_timeout(req);
        request.set_timeout(timeout);
        let mut client = self.participants[&branch.participant].clone();
        match client.commit_one_phase(request).await {
            Ok(r) => {
                let r = r.into_inner();
                OnePhaseEvent::Answered {
                    committed: r.committed,
                    reason: r.reason,
                    reads: r.reads.into_iter().map(Into::into).collect(),
                }
            }
            Err(s) if s.code() == tonic::Code::Unimplemented => OnePhaseEvent::Unimplemented,
            Err(s) => OnePhaseEvent::Failed {
                error: call_failure(branch.participant.as_str(), &s, timeout),
            },
        }
    }

    async fn settling_abort(&self, txn: &TxnId, to: &ParticipantId) -> OnePhaseEvent {
        let mut client = self.participants[to].clone();
        let mut request = txn_server::trace::request(pb::AbortRequest {
            txn_id: txn.as_str().to_owned(),
            forced: false,
        });
        request.set_timeout(self.config.rpc_timeout);
        match client.abort(request).await {
            Ok(_) => OnePhaseEvent::SettleAborted,
            Err(s) if s.code() == tonic::Code::FailedPrecondition => OnePhaseEvent::SettleRefused {
                message: s.message().to_owned(),
            },
            Err(s) => {
                debug!(participant = %to, error = %s.message(), "settling Abort not answered; retrying");
                OnePhaseEvent::SettleFailed {
                    error: call_failure(to.as_str(), &s, self.config.rpc_timeout),
                }
            }
        }
    }

    async fn settling_state(&self, txn: &TxnId, to: &ParticipantId) -> OnePhaseEvent {
        let mut client = self.participants[to].clone();
        let mut request = txn_server::trace::request(pb::TxnStateRequest {
            txn_id: txn.as_str().to_owned(),
        });
        request.set_timeout(self.config.rpc_timeout);
        match client
            .get_txn_state(request)
            .await
            .map(|r| r.into_inner().state())
        {
            Ok(state) => {
                if state != pb::TxnState::Committed {
                    warn!(participant = %to, ?state,
                        "settling Abort refused, but the txn is not committed there");
                }
                OnePhaseEvent::StateIs {
                    committed: state == pb::TxnState::Committed,
                }
            }
            Err(s) => OnePhaseEvent::SettleFailed {
                error: call_failure(to.as_str(), &s, self.config.rpc_timeout),
            },
        }
    }
}
