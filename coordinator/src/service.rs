//! The gRPC face of the coordinator: converts protobuf to domain types and back, nothing more.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use txn_proto::convert::{FromWire, OrInvalidArgument, ToWire};
use txn_proto::pb::v1 as pb;
use txn_types::types::{TxnId, TxnRequest};

use crate::dedup::tag_request;
use crate::node::{CoordStats, Coordinator};

#[derive(Clone)]
pub struct CoordinatorService {
    node: Arc<Coordinator>,
}

impl CoordinatorService {
    pub fn new(node: Arc<Coordinator>) -> Self {
        Self { node }
    }
}

#[tonic::async_trait]
impl pb::coordinator_server::Coordinator for CoordinatorService {
    async fn transact(
        &self,
        request: Request<pb::TransactRequest>,
    ) -> Result<Response<pb::TransactResponse>, Status> {
        let mut msg = request.into_inner();
        let tag = tag_request(&mut msg)?;
        let req = TxnRequest::from_pb(msg).or_invalid()?;
        let resp = match tag {
            Some(tag) => self.node.transact_once(req, tag).await?,
            None => self.node.transact(req).await?.to_pb(),
        };
        Ok(Response::new(resp))
    }

    async fn transfer_status(
        &self,
        request: Request<pb::TxnIdRequest>,
    ) -> Result<Response<pb::TransferStatusResponse>, Status> {
        let id = TxnId::parse("txn_id", &request.into_inner().txn_id).or_invalid()?;
        Ok(Response::new(self.node.events.status(&id).await?))
    }

    async fn resolve(
        &self,
        request: Request<pb::ResolveRequest>,
    ) -> Result<Response<pb::ResolveResponse>, Status> {
        let request = request.into_inner();
        let txn = TxnId::parse("txn_id", &request.txn_id).or_invalid()?;
        let commit_point = txn_proto::convert::commit_point_from_pb(request.commit_point)
            .or_invalid()?
            .unwrap_or_default();
        let resolution = self
            .node
            .resolve(&txn, commit_point, request.from_coordinator)
            .await?;
        Ok(Response::new(pb::ResolveResponse {
            decision: resolution.to_pb() as i32,
        }))
    }
}

/// The coordinator's statistics on the wire.
pub fn stats_to_pb(s: &CoordStats) -> pb::StatsResponse {
    pb::StatsResponse {
        fsyncs: s.fsyncs,
        durable_writes: s.durable_writes,
        committed: s.committed,
        aborted: s.aborted,
        in_doubt: s.in_doubt,
        epoch: s.epoch,
        sagas_active: s.sagas_active,
        sagas_completed: s.sagas_completed,
        sagas_compensated: s.sagas_compensated,
        in_flight: s.in_flight,
        adopted: s.adopted,
        ..Default::default()
    }
}
