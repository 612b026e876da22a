//! The gRPC face of the participant: converts protobuf to domain types and back, nothing more.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use txn_proto::pb::v1 as pb;
use txn_proto::types::{InvalidInput, TxnId};

use crate::core::{TxnStatus, prepare_from_pb};
use crate::node::{MAX_OUTCOMES_PAGE, MAX_READ_KEYS, Participant};

#[derive(Clone)]
pub struct ParticipantService {
    node: Arc<Participant>,
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
        let req = prepare_from_pb(request.into_inner())?;
        let vote = self.node.prepare(req).await?;
        Ok(Response::new(vote.to_pb()))
    }

    async fn commit(
        &self,
        request: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        let txn = TxnId::parse("txn_id", &request.into_inner().txn_id)?;
        self.node.commit(&txn).await?;
        Ok(Response::new(pb::CommitResponse {}))
    }

    async fn abort(
        &self,
        request: Request<pb::AbortRequest>,
    ) -> Result<Response<pb::AbortResponse>, Status> {
        let txn = TxnId::parse("txn_id", &request.into_inner().txn_id)?;
        self.node.abort(&txn).await?;
        Ok(Response::new(pb::AbortResponse {}))
    }

    async fn read(
        &self,
        request: Request<pb::ReadRequest>,
    ) -> Result<Response<pb::ReadResponse>, Status> {
        let keys = request.into_inner().keys;
        if keys.is_empty() {
            return Err(InvalidInput::new("keys", "must name at least one key").into());
        }
        if keys.len() > MAX_READ_KEYS {
            return Err(InvalidInput::new(
                "keys",
                format!("names {} keys, the limit is {MAX_READ_KEYS}", keys.len()),
            )
            .into());
        }
        for (i, k) in keys.iter().enumerate() {
            if k.is_empty() || k.len() > txn_proto::types::MAX_KEY_LEN {
                return Err(InvalidInput::new(
                    format!("keys[{i}]"),
                    format!(
                        "must be 1 to {} bytes, got {}",
                        txn_proto::types::MAX_KEY_LEN,
                        k.len()
                    ),
                )
                .into());
            }
        }
        let values = self.node.read(&keys)?;
        Ok(Response::new(pb::ReadResponse {
            values: values.into_iter().map(Into::into).collect(),
        }))
    }

    async fn get_txn_state(
        &self,
        request: Request<pb::TxnStateRequest>,
    ) -> Result<Response<pb::TxnStateResponse>, Status> {
        let txn = TxnId::parse("txn_id", &request.into_inner().txn_id)?;
        let state = state_to_pb(self.node.status(&txn)?);
        Ok(Response::new(pb::TxnStateResponse {
            state: state as i32,
        }))
    }

    async fn query_peer(
        &self,
        request: Request<pb::TxnStateRequest>,
    ) -> Result<Response<pb::TxnStateResponse>, Status> {
        let txn = TxnId::parse("txn_id", &request.into_inner().txn_id)?;
        let state = state_to_pb(self.node.query_peer(&txn).await?);
        Ok(Response::new(pb::TxnStateResponse {
            state: state as i32,
        }))
    }

    async fn list_outcomes(
        &self,
        request: Request<pb::ListOutcomesRequest>,
    ) -> Result<Response<pb::ListOutcomesResponse>, Status> {
        let r = request.into_inner();
        let limit = if r.limit == 0 {
            MAX_OUTCOMES_PAGE
        } else {
            r.limit as usize
        };
        let page = self.node.list_outcomes(&r.start_after, limit)?;
        let next = if page.len() >= limit.min(MAX_OUTCOMES_PAGE) {
            page.last().map(|(id, _, _)| id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListOutcomesResponse {
            outcomes: page
                .into_iter()
                .map(|(txn_id, state, participants)| pb::TxnOutcome {
                    txn_id,
                    state: state_to_pb(state) as i32,
                    participants,
                })
                .collect(),
            next,
        }))
    }
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

#[tonic::async_trait]
impl pb::stats_server::Stats for ParticipantService {
    async fn get_stats(
        &self,
        _request: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        let s = self.node.stats();
        Ok(Response::new(pb::StatsResponse {
            fsyncs: s.fsyncs,
            durable_writes: s.durable_writes,
            committed: s.committed,
            aborted: s.aborted,
            in_doubt: s.in_doubt,
            epoch: 0,
        }))
    }
}
