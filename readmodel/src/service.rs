//! The gRPC face of the read model: converts and checks protobuf, nothing more.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use txn_proto::convert::invalid_argument;
use txn_proto::pb::v1 as pb;
use txn_readmodel_core::query::{self, MAX_BALANCES_PAGE, MAX_STATEMENT_PAGE};
use txn_types::types::{InvalidInput, MAX_KEY_LEN, ParticipantId};

use crate::node::ReadModel;

#[derive(Clone)]
pub struct ReadModelService {
    node: Arc<ReadModel>,
}

impl ReadModelService {
    pub fn new(node: Arc<ReadModel>) -> Self {
        Self { node }
    }
}

/// A checked account reference; errors name the field.
fn account(field: &str, a: &pb::AccountRef) -> Result<(String, Vec<u8>), InvalidInput> {
    let p = ParticipantId::parse(&format!("{field}.participant"), &a.participant)?;
    if a.key.is_empty() || a.key.len() > MAX_KEY_LEN {
        return Err(InvalidInput::new(
            format!("{field}.key"),
            format!("must be 1 to {MAX_KEY_LEN} bytes, got {}", a.key.len()),
        ));
    }
    Ok((p.to_string(), a.key.clone()))
}

fn storage(e: txn_types::store::StoreError) -> Status {
    crate::node::ReadModelError::Store(e).into()
}

#[tonic::async_trait]
impl pb::read_model_server::ReadModel for ReadModelService {
    async fn get_balances(
        &self,
        request: Request<pb::GetBalancesRequest>,
    ) -> Result<Response<pb::GetBalancesResponse>, Status> {
        let r = request.into_inner();
        if r.accounts.len() > MAX_BALANCES_PAGE {
            return Err(invalid_argument(InvalidInput::new(
                "accounts",
                format!(
                    "names {} accounts, the limit is {MAX_BALANCES_PAGE}",
                    r.accounts.len()
                ),
            )));
        }
        let accounts = r
            .accounts
            .iter()
            .enumerate()
            .map(|(i, a)| account(&format!("accounts[{i}]"), a))
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid_argument)?;
        let store = self.node.store_handle();
        let view = self.node.view();
        let balances = if accounts.is_empty() {
            let limit = match r.limit {
                0 => MAX_BALANCES_PAGE,
                n => n as usize,
            };
            query::all_balances(store.as_ref(), r.consistent, limit).map_err(storage)?
        } else {
            let values =
                query::balances(store.as_ref(), &accounts, r.consistent).map_err(storage)?;
            accounts
                .into_iter()
                .zip(values)
                .map(|((p, k), v)| (p, k, v))
                .collect()
        };
        let feeds = self.node.progress(&view, r.consistent)?;
        Ok(Response::new(pb::GetBalancesResponse {
            balances: balances
                .into_iter()
                .map(|(participant, key, value)| pb::Balance {
                    participant,
                    key,
                    value,
                })
                .collect(),
            feeds,
        }))
    }

    async fn get_statement(
        &self,
        request: Request<pb::GetStatementRequest>,
    ) -> Result<Response<pb::GetStatementResponse>, Status> {
        let r = request.into_inner();
        let a = r.account.ok_or_else(|| {
            invalid_argument(InvalidInput::new(
                "account",
                "is required (participant and key)",
            ))
        })?;
        let (p, k) = account("account", &a).map_err(invalid_argument)?;
        let limit = match r.limit {
            0 => MAX_STATEMENT_PAGE,
            n => n as usize,
        };
        let store = self.node.store_handle();
        let view = self.node.view();
        let entries = query::statement(&view, store.as_ref(), &p, &k, limit, r.consistent)
            .map_err(storage)?;
        let feeds = self.node.progress(&view, r.consistent)?;
        Ok(Response::new(pb::GetStatementResponse {
            entries: entries
                .into_iter()
                .map(|e| pb::StatementEntry {
                    txn_id: e.record.txn_id,
                    kind: e.record.kind,
                    offset: e.offset,
                    delta: e.record.delta,
                    value: e.record.value,
                    at_unix_ms: e.record.at_unix_ms,
                    participants: e.record.participants,
                    counterparts: e
                        .counterparts
                        .into_iter()
                        .map(|c| pb::AccountRef {
                            participant: c.participant,
                            key: c.key,
                        })
                        .collect(),
                })
                .collect(),
            feeds,
        }))
    }

    async fn status(
        &self,
        _request: Request<pb::ReadModelStatusRequest>,
    ) -> Result<Response<pb::ReadModelStatusResponse>, Status> {
        let store = self.node.store_handle();
        let view = self.node.view();
        let feeds = self.node.progress(&view, false)?;
        let accounts = query::all_balances(store.as_ref(), false, MAX_BALANCES_PAGE)
            .map_err(storage)?
            .len() as u64;
        Ok(Response::new(pb::ReadModelStatusResponse {
            feeds,
            accounts,
            rebuilds: view.meta().rebuilds,
        }))
    }
}

#[tonic::async_trait]
impl pb::read_model_admin_server::ReadModelAdmin for ReadModelService {
    async fn rebuild(
        &self,
        _request: Request<pb::RebuildRequest>,
    ) -> Result<Response<pb::RebuildResponse>, Status> {
        self.node.rebuild().await?;
        let view = self.node.view();
        let feeds = self.node.progress(&view, false)?;
        Ok(Response::new(pb::RebuildResponse { feeds }))
    }
}
