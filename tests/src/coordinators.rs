//! How the harness and the tests reach several coordinators (over one etcd log), as a client
//! should: each closed-loop client sticks to one coordinator, so the load spreads over all of
//! them, and a call refused before any coordinator ran it (connection refused, or the
//! coordinator's "not started") goes to the next one at once. A call that may have run is
//! never sent again: without a client key that could apply a transfer twice.

use std::sync::Arc;

use futures::future::BoxFuture;
use tonic::transport::Channel;
use txn_proto::pb::v1 as pb;
use txn_proto::pb::v1::coordinator_client::CoordinatorClient;

/// What runs a Transact for the bank workload: one coordinator's client, or several.
pub trait Transactor: Clone + Send + Sync + 'static {
    /// Runs `req`, for the client numbered `client` (which picks the coordinator it prefers).
    fn transact_for(
        &self,
        client: usize,
        req: pb::TransactRequest,
    ) -> BoxFuture<'static, Result<pb::TransactResponse, tonic::Status>>;
}

impl Transactor for CoordinatorClient<Channel> {
    fn transact_for(
        &self,
        _client: usize,
        req: pb::TransactRequest,
    ) -> BoxFuture<'static, Result<pb::TransactResponse, tonic::Status>> {
        let mut c = self.clone();
        Box::pin(async move { Ok(c.transact(req).await?.into_inner()) })
    }
}

/// Clients of every coordinator of a cluster.
#[derive(Clone)]
pub struct Coordinators {
    clients: Arc<Vec<CoordinatorClient<Channel>>>,
}

impl Coordinators {
    pub fn new(clients: Vec<CoordinatorClient<Channel>>) -> Self {
        assert!(!clients.is_empty(), "at least one coordinator");
        Self {
            clients: Arc::new(clients),
        }
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// The client of coordinator `i` (modulo their number).
    pub fn client(&self, i: usize) -> CoordinatorClient<Channel> {
        self.clients[i % self.clients.len()].clone()
    }
}

impl Transactor for Coordinators {
    fn transact_for(
        &self,
        client: usize,
        req: pb::TransactRequest,
    ) -> BoxFuture<'static, Result<pb::TransactResponse, tonic::Status>> {
        let this = self.clone();
        Box::pin(async move {
            let n = this.clients.len();
            let mut last = None;
            for k in 0..n {
                let mut c = this.client(client + k);
                match c.transact(req.clone()).await {
                    Ok(r) => return Ok(r.into_inner()),
                    Err(s) if crate::bank::never_started(&s) && k + 1 < n => last = Some(s),
                    Err(s) => return Err(s),
                }
            }
            Err(last.unwrap_or_else(|| tonic::Status::unavailable("no coordinator")))
        })
    }
}
