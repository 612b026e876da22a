//! The events protocol at the coordinator: it runs only the first step. A transfer of two
//! branches goes to its source as one `StartTransfer`; the source commits its branch with an
//! outbox event that carries the destination's branch, and the client is answered ACCEPTED
//! once that is durable. From then on no coordinator is in the path: the destination applies
//! its branch when it consumes the source's feed, and a refusal there is refunded by the
//! source when it consumes the destination's (see `txn_participant_core::transfer`).
//!
//! Why through the coordinator at all: one client API for the three protocols, ids that are
//! unique across restarts (the epoch), client keys, and admission control. The coordinator
//! keeps nothing about a transfer but a client key's record; [`EventsDriver::status`] asks the
//! participants, whose records are the truth.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tracing::{Instrument, debug, info_span};
use txn_metrics::{OutcomeLabel, ProtocolLabel};
use txn_proto::convert::ToWire;
use txn_proto::events::transfer_phase;
use txn_proto::pb::v1 as pb;
use txn_types::store::WriteBatch;
use txn_types::types::{ParticipantId, TxnId, TxnRequest};

use crate::context::Context;
use crate::dedup::{ClientKeys, ClientTag};
use crate::error::CoordError;
use crate::outcome::{TxnOutcome, count_txn};

/// The events component: stateless beyond the shared context.
pub struct EventsDriver {
    ctx: Arc<Context>,
}

impl std::ops::Deref for EventsDriver {
    type Target = Context;

    fn deref(&self) -> &Context {
        &self.ctx
    }
}

/// Whether a failed call may have reached the participant and run there.
fn may_have_run(s: &tonic::Status) -> bool {
    match s.code() {
        // Refused before anything ran: a lock held (busy), the disk full, bad input.
        tonic::Code::Aborted
        | tonic::Code::ResourceExhausted
        | tonic::Code::InvalidArgument
        | tonic::Code::FailedPrecondition
        | tonic::Code::Unimplemented => false,
        tonic::Code::Unavailable => {
            let text = format!("{} {:?}", s.message(), std::error::Error::source(s));
            !(text.contains("tcp connect error") || text.contains("Connection refused"))
        }
        _ => true,
    }
}

/// Whether a failed StartTransfer is worth sending again before the deadline.
fn transient(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Unavailable | DeadlineExceeded | Aborted | ResourceExhausted | Unknown | Cancelled
    )
}

impl EventsDriver {
    pub(crate) fn new(ctx: Arc<Context>) -> Self {
        Self { ctx }
    }

    /// Runs the first step of a two-branch request. `resume`: the id a client key recorded
    /// for an earlier attempt whose answer was never recorded; the source answers it as it
    /// did then (its step is idempotent per id), or runs it now if it never arrived.
    pub(crate) async fn transact(
        &self,
        req: TxnRequest,
        tag: Option<ClientTag>,
        resume: Option<TxnId>,
        timeout: Duration,
    ) -> Result<TxnOutcome, CoordError> {
        let id = match &resume {
            Some(id) => id.clone(),
            None => self.core().next_id(),
        };
        let span = info_span!("transfer", txn = %id);
        async {
            if let (Some(tag), None) = (&tag, &resume) {
                // Durable before the source is asked: a retry under the key then finds this
                // id, and asks the source again instead of starting a second transfer.
                let mut batch = WriteBatch::default();
                ClientKeys::put_record(&mut batch, tag, &id, pb::Protocol::Events, None);
                self.check(self.gc.write_durable(batch).await)?;
            }
            let outcome = self.start(&id, &req, timeout).await?;
            count_txn(
                ProtocolLabel::Events,
                if outcome.accepted {
                    OutcomeLabel::Accepted
                } else {
                    OutcomeLabel::Aborted
                },
            );
            if let Some(tag) = &tag {
                let mut batch = WriteBatch::default();
                let answer = Some(outcome.to_pb());
                ClientKeys::put_record(&mut batch, tag, &id, pb::Protocol::Events, answer);
                self.check(self.gc.write_lazy(batch))?;
            }
            Ok(outcome)
        }
        .instrument(span)
        .await
    }

    /// Sends StartTransfer to the source until it answers or `timeout` passes.
    async fn start(
        &self,
        id: &TxnId,
        req: &TxnRequest,
        timeout: Duration,
    ) -> Result<TxnOutcome, CoordError> {
        let (source, destination) = (&req.branches[0], &req.branches[1]);
        let msg = pb::StartTransferRequest {
            transfer_id: id.to_string(),
            ops: source.ops.iter().map(|op| op.to_pb()).collect(),
            destination: destination.participant.to_string(),
            destination_ops: destination.ops.iter().map(|op| op.to_pb()).collect(),
        };
        let client = self.participants[&source.participant].clone();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut backoff = self.commit_backoff();
        let mut ran_maybe = false;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let mut request = tonic::Request::new(msg.clone());
            request.set_timeout(
                self.config
                    .rpc_timeout
                    .min(left.max(Duration::from_millis(1))),
            );
            let status = match client.clone().start_transfer(request).await {
                Ok(r) => {
                    let r = r.into_inner();
                    return Ok(TxnOutcome {
                        txn: id.clone(),
                        committed: r.accepted,
                        accepted: r.accepted,
                        failed_branch: (!r.accepted).then_some(0),
                        reason: r.reason,
                        reads: vec![(
                            source.participant.clone(),
                            r.reads.into_iter().map(Into::into).collect(),
                        )],
                    });
                }
                Err(s) => s,
            };
            ran_maybe |= may_have_run(&status);
            let error = format!("{:?}: {}", status.code(), status.message());
            debug!(%error, "StartTransfer failed");
            let pause = backoff.failed(rand::random());
            if !transient(status.code()) || tokio::time::Instant::now() + pause >= deadline {
                if ran_maybe {
                    // The last error is logged, not passed on: a transport error in the text
                    // would read to a client as "never reached anyone", and this call may have
                    // run.
                    tracing::warn!(%error, "the source did not answer; outcome unknown");
                    return Err(CoordError::Unavailable(format!(
                        "transfer {id}: the source {} did not answer; whether it accepted the \
                         transfer is unknown: Coordinator.TransferStatus (txnctl txn show {id}) \
                         tells",
                        source.participant
                    )));
                }
                return Ok(TxnOutcome {
                    txn: id.clone(),
                    committed: false,
                    accepted: false,
                    failed_branch: Some(0),
                    reason: format!("the source refused the transfer: {error}"),
                    reads: Vec::new(),
                });
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// Where transfer `id` stands, from every participant's record.
    pub async fn status(&self, id: &TxnId) -> Result<pb::TransferStatusResponse, CoordError> {
        let mut asks: FuturesUnordered<_> = self
            .participants
            .iter()
            .map(|(name, client)| {
                let mut client = client.clone();
                let mut request = tonic::Request::new(pb::TxnIdRequest {
                    txn_id: id.to_string(),
                });
                request.set_timeout(self.config.rpc_timeout);
                async move { (name.clone(), client.get_transfer(request).await) }
            })
            .collect();
        let mut records = Vec::new();
        let mut unreachable: Vec<ParticipantId> = Vec::new();
        while let Some((name, answer)) = asks.next().await {
            match answer {
                Ok(r) => records.push(r.into_inner()),
                Err(s) if s.code() == tonic::Code::NotFound => {}
                Err(_) => unreachable.push(name),
            }
        }
        records.sort_by_key(|a| a.role);
        unreachable.sort();
        let phase = transfer_phase(&records);
        Ok(pb::TransferStatusResponse {
            transfer_id: id.to_string(),
            phase: phase as i32,
            settled: matches!(
                phase,
                pb::TransferPhase::Credited
                    | pb::TransferPhase::Refunded
                    | pb::TransferPhase::Rejected
            ),
            records,
            unreachable: unreachable.iter().map(|p| p.to_string()).collect(),
        })
    }
}
