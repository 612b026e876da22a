//! The gRPC face of the participant: converts protobuf to domain types and back, nothing more.

use std::sync::Arc;
use tracing::Instrument;

use tonic::{Request, Response, Status};
use txn_proto::convert::{OrInvalidArgument, ToWire, invalid_argument};
use txn_proto::pb::v1 as pb;
use txn_types::types::{InvalidInput, TxnId};

use crate::housekeeping::NodeStats;
use crate::node::{MAX_READ_KEYS, Participant};
use crate::prepare::BatchedPrepare;
use txn_participant_core::core::{PrepareRequest, TxnStatus};
use txn_participant_core::saga::{Compensation, StepResult};
use txn_participant_core::transfer::StartAnswer;
use txn_types::types::{MAX_PREPARE_BATCH, Vote};

#[derive(Clone)]
pub struct ParticipantService {
    pub(crate) node: Arc<Participant>,
}

impl ParticipantService {
    pub fn new(node: Arc<Participant>) -> Self {
        Self { node }
    }
}

#[tonic::async_trait]
impl pb::participant_server::Participant for ParticipantService {
    async fn prepare(
        &self,
        request: Request<pb::PrepareRequest>,
    ) -> Result<Response<pb::PrepareResponse>, Status> {
        let req = prepare_from_pb(request.into_inner()).or_invalid()?;
        let vote = self.node.prepare(req).await?;
        Ok(Response::new(vote.to_pb()))
    }

    type PrepareBatchStream = futures::stream::BoxStream<'static, Result<pb::BatchedVote, Status>>;

    async fn prepare_batch(
        &self,
        request: Request<pb::PrepareBatchRequest>,
    ) -> Result<Response<Self::PrepareBatchStream>, Status> {
        let batch = prepare_batch_from_pb(request.into_inner()).or_invalid()?;
        let n = batch.len();
        // Room for every vote: the producers never wait for a slow reader.
        let (tx, rx) = tokio::sync::mpsc::channel(n.max(1));
        let node = self.node.clone();
        // In its own task, as a unary Prepare is: the batch's records and votes do not depend
        // on the caller staying. A failure of the whole batch ends the stream with its status.
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        // Its spans go on in the call's span, so each Prepare's joins the caller's trace.
        tokio::spawn(
            async move {
                let _ = done_tx.send(node.prepare_batch(batch, tx).await);
            }
            .in_current_span(),
        );
        let votes = futures::stream::unfold((rx, Some(done_rx)), |(mut rx, done)| async move {
            if let Some((txn, vote)) = rx.recv().await {
                return Some((Ok(batched_vote(txn, vote)), (rx, done)));
            }
            // Every sender is gone: the batch is over, or failed before every vote.
            match done?.await {
                Ok(Err(e)) => Some((Err(Status::from(e)), (rx, None))),
                _ => None,
            }
        });
        Ok(Response::new(Box::pin(votes)))
    }

    async fn commit_one_phase(
        &self,
        request: Request<pb::CommitOnePhaseRequest>,
    ) -> Result<Response<pb::CommitOnePhaseResponse>, Status> {
        let req = request.into_inner();
        let txn = TxnId::parse("txn_id", &req.txn_id).or_invalid()?;
        let ops = txn_proto::convert::ops_from_pb("ops", req.ops).or_invalid()?;
        Ok(Response::new(
            match self.node.commit_one_phase(&txn, &ops).await? {
                Ok(reads) => pb::CommitOnePhaseResponse {
                    committed: true,
                    reads: reads.into_iter().map(Into::into).collect(),
                    reason: String::new(),
                },
                Err(reason) => pb::CommitOnePhaseResponse {
                    committed: false,
                    reads: Vec::new(),
                    reason,
                },
            },
        ))
    }

    async fn commit(
        &self,
        request: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        let txn = TxnId::parse("txn_id", &request.into_inner().txn_id).or_invalid()?;
        self.node.commit(&txn).await?;
        Ok(Response::new(pb::CommitResponse {}))
    }

    async fn commit_batch(
        &self,
        request: Request<pb::CommitBatchRequest>,
    ) -> Result<Response<pb::CommitBatchResponse>, Status> {
        let req = request.into_inner();
        let txns = txn_ids("txn_ids", &req.txn_ids).or_invalid()?;
        let forget = txn_ids("forget", &req.forget).or_invalid()?;
        let failed = self.node.commit_batch(&txns, &forget).await?;
        Ok(Response::new(pb::CommitBatchResponse {
            failed: failed
                .into_iter()
                .map(|(txn, e)| {
                    let status = Status::from(e);
                    pb::TxnFailure {
                        txn_id: txn.to_string(),
                        code: status.code() as i32,
                        message: status.message().to_owned(),
                    }
                })
                .collect(),
        }))
    }

    async fn abort(
        &self,
        request: Request<pb::AbortRequest>,
    ) -> Result<Response<pb::AbortResponse>, Status> {
        let r = request.into_inner();
        let txn = TxnId::parse("txn_id", &r.txn_id).or_invalid()?;
        self.node.abort(&txn, r.forced).await?;
        Ok(Response::new(pb::AbortResponse {}))
    }

    async fn read(
        &self,
        request: Request<pb::ReadRequest>,
    ) -> Result<Response<pb::ReadResponse>, Status> {
        let keys = request.into_inner().keys;
        if keys.is_empty() {
            return Err(invalid_argument(InvalidInput::new(
                "keys",
                "must name at least one key",
            )));
        }
        if keys.len() > MAX_READ_KEYS {
            return Err(invalid_argument(InvalidInput::new(
                "keys",
                format!("names {} keys, the limit is {MAX_READ_KEYS}", keys.len()),
            )));
        }
        for (i, k) in keys.iter().enumerate() {
            if k.is_empty() || k.len() > txn_types::types::MAX_KEY_LEN {
                return Err(invalid_argument(InvalidInput::new(
                    format!("keys[{i}]"),
                    format!(
                        "must be 1 to {} bytes, got {}",
                        txn_types::types::MAX_KEY_LEN,
                        k.len()
                    ),
                )));
            }
        }
        let values = self.node.read(&keys).await?;
        Ok(Response::new(pb::ReadResponse {
            values: values.into_iter().map(Into::into).collect(),
        }))
    }

    async fn get_txn_state(
        &self,
        request: Request<pb::TxnStateRequest>,
    ) -> Result<Response<pb::TxnStateResponse>, Status> {
        let txn = TxnId::parse("txn_id", &request.into_inner().txn_id).or_invalid()?;
        let state = state_to_pb(self.node.status(&txn)?);
        Ok(Response::new(pb::TxnStateResponse {
            state: state as i32,
        }))
    }

    async fn query_peer(
        &self,
        request: Request<pb::TxnStateRequest>,
    ) -> Result<Response<pb::TxnStateResponse>, Status> {
        let txn = TxnId::parse("txn_id", &request.into_inner().txn_id).or_invalid()?;
        let state = state_to_pb(self.node.query_peer(&txn).await?);
        Ok(Response::new(pb::TxnStateResponse {
            state: state as i32,
        }))
    }

    async fn execute(
        &self,
        request: Request<pb::ExecuteRequest>,
    ) -> Result<Response<pb::ExecuteResponse>, Status> {
        let r = request.into_inner();
        let saga = saga_step(&r.saga_id, r.step).or_invalid()?;
        let ops = txn_proto::convert::ops_from_pb("ops", r.ops).or_invalid()?;
        let members = participant_names("participants", &r.participants).or_invalid()?;
        let executed = self
            .node
            .execute_step(&saga, r.step, r.deadline_unix_ms, &ops, &members)
            .await?;
        let (result, reason, reads) = match executed {
            StepResult::Succeeded { reads } => (pb::StepResult::Succeeded, String::new(), reads),
            StepResult::Failed { reason } => (pb::StepResult::Failed, reason, Vec::new()),
            StepResult::Refused { reason } => (pb::StepResult::Refused, reason, Vec::new()),
        };
        Ok(Response::new(pb::ExecuteResponse {
            result: result as i32,
            reason,
            reads: reads.into_iter().map(Into::into).collect(),
        }))
    }

    async fn compensate(
        &self,
        request: Request<pb::CompensateRequest>,
    ) -> Result<Response<pb::CompensateResponse>, Status> {
        let r = request.into_inner();
        let saga = saga_step(&r.saga_id, r.step).or_invalid()?;
        let members = participant_names("participants", &r.participants).or_invalid()?;
        let kind = match self
            .node
            .compensate_step(&saga, r.step, r.deadline_unix_ms, &members)
            .await?
        {
            Compensation::Applied => pb::CompensationKind::Applied,
            Compensation::Null => pb::CompensationKind::Null,
        };
        Ok(Response::new(pb::CompensateResponse { kind: kind as i32 }))
    }

    async fn list_barriers(
        &self,
        request: Request<pb::ListBarriersRequest>,
    ) -> Result<Response<pb::ListBarriersResponse>, Status> {
        Ok(Response::new(crate::service_lists::barriers_page(
            &self.node,
            request.into_inner(),
        )?))
    }

    async fn list_outcomes(
        &self,
        request: Request<pb::ListOutcomesRequest>,
    ) -> Result<Response<pb::ListOutcomesResponse>, Status> {
        Ok(Response::new(crate::service_lists::outcomes_page(
            &self.node,
            request.into_inner(),
        )?))
    }

    async fn end_sagas(
        &self,
        request: Request<pb::EndSagasRequest>,
    ) -> Result<Response<pb::EndSagasResponse>, Status> {
        let sagas = request.into_inner().sagas;
        if sagas.len() > txn_types::types::MAX_COMMIT_BATCH {
            return Err(invalid_argument(InvalidInput::new(
                "sagas",
                format!(
                    "has {} sagas, the limit is {}",
                    sagas.len(),
                    txn_types::types::MAX_COMMIT_BATCH
                ),
            )));
        }
        let sagas = sagas
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                TxnId::parse(&format!("sagas[{i}].saga_id"), &s.saga_id)
                    .map(|id| (id, s.deadline_unix_ms))
            })
            .collect::<Result<Vec<_>, _>>()
            .or_invalid()?;
        self.node.end_sagas(&sagas).await?;
        Ok(Response::new(pb::EndSagasResponse {}))
    }

    async fn start_transfer(
        &self,
        request: Request<pb::StartTransferRequest>,
    ) -> Result<Response<pb::StartTransferResponse>, Status> {
        let req =
            crate::feed_service::transfer_from_pb(&self.node, request.into_inner()).or_invalid()?;
        Ok(Response::new(
            match self.node.start_transfer(&req).await? {
                StartAnswer::Accepted { reads } => pb::StartTransferResponse {
                    accepted: true,
                    reads: reads.into_iter().map(Into::into).collect(),
                    reason: String::new(),
                },
                StartAnswer::AlreadyAccepted => pb::StartTransferResponse {
                    accepted: true,
                    ..Default::default()
                },
                StartAnswer::Rejected { reason } => pb::StartTransferResponse {
                    accepted: false,
                    reads: Vec::new(),
                    reason,
                },
            },
        ))
    }

    async fn get_transfer(
        &self,
        request: Request<pb::TxnIdRequest>,
    ) -> Result<Response<pb::TransferInfo>, Status> {
        let id = TxnId::parse("txn_id", &request.into_inner().txn_id).or_invalid()?;
        let rec = self.node.transfer_record(id.as_str())?;
        Ok(Response::new(txn_proto::events::transfer_to_pb(
            id.as_str(),
            &self.node.config.name,
            &rec,
        )))
    }

    async fn list_transfers(
        &self,
        request: Request<pb::ListTransfersRequest>,
    ) -> Result<Response<pb::ListTransfersResponse>, Status> {
        let r = request.into_inner();
        let limit = match r.limit {
            0 => crate::choreo::MAX_TRANSFERS_PAGE,
            n => n as usize,
        };
        let page = self.node.transfer_records(&r.start_after, limit)?;
        let next = if page.len() >= limit.min(crate::choreo::MAX_TRANSFERS_PAGE) {
            page.last().map(|(id, _)| id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        let name = &self.node.config.name;
        Ok(Response::new(pb::ListTransfersResponse {
            transfers: page
                .iter()
                .map(|(id, rec)| txn_proto::events::transfer_to_pb(id, name, rec))
                .collect(),
            next,
        }))
    }
}

fn saga_step(saga_id: &str, step: u32) -> Result<TxnId, InvalidInput> {
    if step as usize >= txn_types::types::MAX_BRANCHES {
        return Err(InvalidInput::new(
            "step",
            format!(
                "{step} is beyond the most steps a saga may have ({})",
                txn_types::types::MAX_BRANCHES
            ),
        ));
    }
    TxnId::parse("saga_id", saga_id)
}

pub fn state_to_pb(s: TxnStatus) -> pb::TxnState {
    match s {
        TxnStatus::Prepared => pb::TxnState::Prepared,
        TxnStatus::Committed => pb::TxnState::Committed,
        TxnStatus::Aborted => pb::TxnState::Aborted,
        TxnStatus::Unknown => pb::TxnState::Unknown,
    }
}

pub fn state_from_pb(raw: i32) -> Result<TxnStatus, InvalidInput> {
    match pb::TxnState::try_from(raw) {
        Ok(pb::TxnState::Prepared) => Ok(TxnStatus::Prepared),
        Ok(pb::TxnState::Committed) => Ok(TxnStatus::Committed),
        Ok(pb::TxnState::Aborted) => Ok(TxnStatus::Aborted),
        Ok(pb::TxnState::Unknown) => Ok(TxnStatus::Unknown),
        _ => Err(InvalidInput::new(
            "state",
            format!("{raw} is not a known txn state"),
        )),
    }
}

/// The participant's statistics on the wire.
pub fn stats_to_pb(s: &NodeStats) -> pb::StatsResponse {
    pb::StatsResponse {
        fsyncs: s.fsyncs,
        durable_writes: s.durable_writes,
        committed: s.committed,
        aborted: s.aborted,
        in_doubt: s.in_doubt,
        max_in_doubt_ms: s.max_in_doubt_ms,
        oldest_in_doubt_ms: s.oldest_in_doubt_ms,
        events_head: s.events_head,
        unsettled_transfers: s.unsettled_transfers,
        ..Default::default()
    }
}

/// A checked list of txn ids (at most [`txn_types::types::MAX_COMMIT_BATCH`]), each error
/// naming the field and index.
fn txn_ids(field: &str, ids: &[String]) -> Result<Vec<TxnId>, InvalidInput> {
    if ids.len() > txn_types::types::MAX_COMMIT_BATCH {
        return Err(InvalidInput::new(
            field,
            format!(
                "has {} txns, the limit is {}",
                ids.len(),
                txn_types::types::MAX_COMMIT_BATCH
            ),
        ));
    }
    ids.iter()
        .enumerate()
        .map(|(i, id)| TxnId::parse(&format!("{field}[{i}]"), id))
        .collect()
}

/// A checked list of participant names (at most [`txn_types::types::MAX_BRANCHES`]).
pub fn participant_names(field: &str, names: &[String]) -> Result<Vec<String>, InvalidInput> {
    use txn_types::types::{MAX_BRANCHES, ParticipantId};
    if names.len() > MAX_BRANCHES {
        return Err(InvalidInput::new(
            field,
            format!("has {} entries, the limit is {MAX_BRANCHES}", names.len()),
        ));
    }
    names
        .iter()
        .enumerate()
        .map(|(i, p)| Ok(ParticipantId::parse(&format!("{field}[{i}]"), p)?.to_string()))
        .collect()
}

/// Converts a wire Prepare; errors name the field.
/// The wire answer to one Prepare of a batch.
fn batched_vote(txn: TxnId, vote: Result<Vote, crate::error::ParticipantError>) -> pb::BatchedVote {
    match vote {
        Ok(v) => pb::BatchedVote {
            txn_id: txn.to_string(),
            vote: Some(v.to_pb()),
            code: 0,
            message: String::new(),
        },
        Err(e) => {
            let status = Status::from(e);
            pb::BatchedVote {
                txn_id: txn.to_string(),
                vote: None,
                code: status.code() as i32,
                message: status.message().to_owned(),
            }
        }
    }
}

/// Checks a PrepareBatch: within [`MAX_PREPARE_BATCH`], every Prepare well-formed (its field
/// named with its place in the batch), no txn twice.
pub fn prepare_batch_from_pb(
    req: pb::PrepareBatchRequest,
) -> Result<Vec<BatchedPrepare>, InvalidInput> {
    if req.prepares.len() > MAX_PREPARE_BATCH {
        return Err(InvalidInput::new(
            "prepares",
            format!(
                "has {} entries, the limit is {MAX_PREPARE_BATCH}",
                req.prepares.len()
            ),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    req.prepares
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            let at = |e: InvalidInput| {
                InvalidInput::new(format!("prepares[{i}].prepare.{}", e.field), e.problem)
            };
            let prepare = p
                .prepare
                .ok_or_else(|| InvalidInput::new(format!("prepares[{i}].prepare"), "is missing"))?;
            let req = prepare_from_pb(prepare).map_err(at)?;
            if !seen.insert(req.txn.clone()) {
                return Err(InvalidInput::new(
                    format!("prepares[{i}].prepare.txn_id"),
                    format!("txn {} appears twice in the batch", req.txn),
                ));
            }
            Ok(BatchedPrepare {
                req,
                timeout: (p.timeout_ms > 0)
                    .then(|| std::time::Duration::from_millis(p.timeout_ms.into())),
            })
        })
        .collect()
}

pub fn prepare_from_pb(
    req: pb::PrepareRequest,
) -> Result<PrepareRequest, txn_types::types::InvalidInput> {
    use txn_proto::convert::ops_from_pb;
    use txn_types::types::{MAX_BRANCHES, ParticipantId};
    let txn = TxnId::parse("txn_id", &req.txn_id)?;
    if req.participants.len() > MAX_BRANCHES {
        return Err(InvalidInput::new(
            "participants",
            format!(
                "has {} entries, the limit is {MAX_BRANCHES}",
                req.participants.len()
            ),
        ));
    }
    let participants = req
        .participants
        .iter()
        .enumerate()
        .map(|(i, p)| ParticipantId::parse(&format!("participants[{i}]"), p))
        .collect::<Result<Vec<_>, _>>()?;
    let writers = participant_names("writers", &req.writers)?
        .iter()
        .map(|p| ParticipantId::parse("writers", p))
        .collect::<Result<Vec<_>, _>>()?;
    let ops = ops_from_pb("ops", req.ops)?;
    Ok(PrepareRequest {
        txn,
        coordinator_epoch: req.coordinator_epoch,
        participants,
        writers,
        ops,
        read_only: req.read_only,
        commit_point: txn_proto::convert::commit_point_from_pb(req.commit_point)?
            .unwrap_or_default(),
    })
}

#[cfg(test)]
mod batch_tests {
    use super::*;

    fn prepare(txn: &str) -> pb::BatchedPrepare {
        pb::BatchedPrepare {
            prepare: Some(pb::PrepareRequest {
                txn_id: txn.into(),
                coordinator_epoch: 1,
                participants: vec!["p1".into()],
                ops: vec![pb::Op {
                    kind: Some(pb::op::Kind::Read(pb::ReadOp { key: b"k".to_vec() })),
                }],
                writers: Vec::new(),
                read_only: true,
                commit_point: 0,
            }),
            timeout_ms: 100,
        }
    }

    #[test]
    fn a_batch_names_the_bad_field_with_its_place() {
        let ok = prepare_batch_from_pb(pb::PrepareBatchRequest {
            prepares: vec![prepare("1.1"), prepare("1.2")],
        })
        .unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(ok[0].timeout, Some(std::time::Duration::from_millis(100)));

        let twice = prepare_batch_from_pb(pb::PrepareBatchRequest {
            prepares: vec![prepare("1.1"), prepare("1.1")],
        })
        .unwrap_err();
        assert_eq!(twice.field, "prepares[1].prepare.txn_id");

        let bad = prepare_batch_from_pb(pb::PrepareBatchRequest {
            prepares: vec![prepare("1.1"), prepare("")],
        })
        .unwrap_err();
        assert_eq!(bad.field, "prepares[1].prepare.txn_id");

        let missing = prepare_batch_from_pb(pb::PrepareBatchRequest {
            prepares: vec![pb::BatchedPrepare {
                prepare: None,
                timeout_ms: 0,
            }],
        })
        .unwrap_err();
        assert_eq!(missing.field, "prepares[0].prepare");

        let too_many = prepare_batch_from_pb(pb::PrepareBatchRequest {
            prepares: (0..=MAX_PREPARE_BATCH)
                .map(|i| prepare(&format!("1.{i}")))
                .collect(),
        })
        .unwrap_err();
        assert_eq!(too_many.field, "prepares");
    }
}
