//! The gRPC face of the coordinator: converts protobuf to domain types and back, nothing more.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use txn_proto::pb::v1 as pb;
use txn_proto::types::{TxnId, TxnRequest};

use crate::node::Coordinator;

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
        let req = TxnRequest::from_pb(request.into_inner())?;
        let out = self.node.transact(req).await?;
        let outcome = if out.committed {
            pb::Outcome::Committed
        } else {
            pb::Outcome::Aborted
        };
        Ok(Response::new(pb::TransactResponse {
            txn_id: out.txn.to_string(),
            outcome: outcome as i32,
            reason: out.reason,
            failed_branch: out.failed_branch.map(|i| i as u32),
            results: out
                .reads
                .into_iter()
                .map(|(p, reads)| pb::BranchResult {
                    participant: p.to_string(),
                    reads: reads.into_iter().map(Into::into).collect(),
                })
                .collect(),
        }))
    }

    async fn resolve(
        &self,
        request: Request<pb::ResolveRequest>,
    ) -> Result<Response<pb::ResolveResponse>, Status> {
        let txn = TxnId::parse("txn_id", &request.into_inner().txn_id)?;
        let resolution = self.node.resolve(&txn)?;
        Ok(Response::new(pb::ResolveResponse {
            decision: resolution.to_pb() as i32,
        }))
    }
}

#[tonic::async_trait]
impl pb::stats_server::Stats for CoordinatorService {
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
            epoch: s.epoch,
            sagas_active: s.sagas_active,
            sagas_completed: s.sagas_completed,
            sagas_compensated: s.sagas_compensated,
            ..Default::default()
        }))
    }
}
