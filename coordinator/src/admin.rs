//! The operator's view of the coordinator: status, stuck txns and why, forced outcomes that
//! refuse to break atomicity unless told to, retries on demand, and sagas. Served as the
//! `Admin` gRPC service; `txnctl` is its client.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::Channel;
use tonic::{Request, Response, Status};
use txn_proto::convert::OrInvalidArgument;
use txn_proto::pb::v1 as pb;
use txn_types::rec::{DecisionRecord, SagaRecord, SagaState};
use txn_types::record;
use txn_types::types::{ParticipantId, TxnId};
use txn_types::unix_ms;

use crate::admin_filter::{SagaFilter, TxnFilter, TxnKind, saga_phase};
use crate::error::CoordError;
use crate::node::Coordinator;
use txn_coordinator_core::core::{TxnView, decision_key};
use txn_coordinator_core::saga::SAGA_PREFIX;

/// Deadline of each call the admin API makes to a participant.
const ADMIN_RPC_TIMEOUT: Duration = Duration::from_millis(1000);
/// Most txns or sagas one list returns.
pub const MAX_LIST: usize = 10_000;
/// Default length of a list.
const DEFAULT_LIST: usize = 100;
/// Longest reason an operator may record with a forced outcome.
pub const MAX_REASON_LEN: usize = 1024;

pub const FORCED_PREFIX: &[u8] = b"f/";

pub(crate) fn forced_key(txn: &TxnId) -> Vec<u8> {
    [FORCED_PREFIX, txn.as_str().as_bytes()].concat()
}

pub(crate) fn timed<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.set_timeout(ADMIN_RPC_TIMEOUT);
    r
}

pub(crate) fn view_name(v: &TxnView) -> &'static str {
    TxnKind::of(v).name()
}

fn saga_state(r: &SagaRecord) -> SagaState {
    SagaState::try_from(r.state).unwrap_or(SagaState::Unspecified)
}

fn saga_summary(r: &SagaRecord) -> pb::SagaSummary {
    pb::SagaSummary {
        saga_id: r.saga_id.clone(),
        state: saga_phase(saga_state(r)) as i32,
        steps: r.branches.len() as u32,
        next_step: r.next_step,
        failed_step: r.failed_step,
        reason: r.reason.clone(),
        compensation_attempts: r.compensation_attempts,
        last_error: r.last_error.clone(),
        created_at_unix_ms: r.created_at_unix_ms,
        updated_at_unix_ms: r.updated_at_unix_ms,
        participants: r.branches.iter().map(|b| b.participant.clone()).collect(),
    }
}

/// The operator's component: the Admin gRPC service and the operator actions behind it.
/// Its only state of its own is the operator pin, which lives in the core (Resolve must see
/// it); everything else it reads from the coordinator it serves.
#[derive(Clone)]
pub struct AdminService {
    pub(crate) node: Arc<Coordinator>,
}

impl AdminService {
    pub fn new(node: Arc<Coordinator>) -> Self {
        Self { node }
    }
}

impl std::ops::Deref for AdminService {
    type Target = Coordinator;

    fn deref(&self) -> &Coordinator {
        &self.node
    }
}

impl AdminService {
    pub(crate) fn channel(&self, p: &ParticipantId) -> Option<Channel> {
        self.channels.get(p).cloned()
    }

    pub(crate) fn ids(&self) -> Vec<ParticipantId> {
        self.participant_ids()
    }

    async fn participant_info(&self, p: &ParticipantId) -> pb::ParticipantInfo {
        let mut info = pb::ParticipantInfo {
            name: p.to_string(),
            url: self.participant_urls.get(p).cloned().unwrap_or_default(),
            healthy: false,
            in_doubt: 0,
        };
        if let Some(ch) = self.channel(p) {
            let mut health = tonic_health::pb::health_client::HealthClient::new(ch.clone());
            info.healthy = matches!(
                health.check(timed(tonic_health::pb::HealthCheckRequest { service: String::new() })).await,
                Ok(r) if r.get_ref().status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
            );
            if let Ok(s) = pb::stats_client::StatsClient::new(ch)
                .get_stats(timed(pb::StatsRequest {}))
                .await
            {
                info.in_doubt = s.into_inner().in_doubt;
            }
        }
        info
    }

    async fn sagas(&self) -> Result<Vec<SagaRecord>, CoordError> {
        let mut out = Vec::new();
        for (key, bytes) in self.check(self.gc.scan_prefix(SAGA_PREFIX).await)? {
            out.push(self.check(record::decode::<SagaRecord>(&key, &bytes).map_err(Into::into))?);
        }
        Ok(out)
    }

    pub async fn admin_status(&self) -> Result<pb::AdminStatusResponse, CoordError> {
        let stats = self.stats();
        let mut participants = Vec::new();
        for p in self.ids() {
            participants.push(self.participant_info(&p).await);
        }
        let mut resp = pb::AdminStatusResponse {
            epoch: stats.epoch,
            uptime_ms: self.started.elapsed().as_millis() as u64,
            txns_in_flight: stats.in_flight,
            txns_committed: stats.committed,
            txns_aborted: stats.aborted,
            txns_committing: stats.in_doubt,
            txns_in_doubt: participants.iter().map(|p| p.in_doubt).sum(),
            participants,
            ..Default::default()
        };
        if let Some(shared) = self.gc.shared() {
            resp.coordinators = self
                .check(shared.members().await)?
                .iter()
                .map(|(epoch, m)| format!("{epoch} {}", m.url))
                .collect();
        }
        for s in self.sagas().await? {
            match SagaState::try_from(s.state).unwrap_or(SagaState::Unspecified) {
                SagaState::Running => resp.sagas_running += 1,
                SagaState::Compensating => resp.sagas_compensating += 1,
                SagaState::Parked => resp.sagas_parked += 1,
                SagaState::Completed => resp.sagas_completed += 1,
                SagaState::Compensated => resp.sagas_compensated += 1,
                SagaState::Unspecified => {}
            }
        }
        Ok(resp)
    }

    /// Prepared txns at every reachable participant: txn -> (participants, oldest age, where).
    pub(crate) async fn in_doubt_everywhere(
        &self,
    ) -> BTreeMap<String, (Vec<String>, u64, Vec<pb::InDoubtTxn>)> {
        let mut out: BTreeMap<String, (Vec<String>, u64, Vec<pb::InDoubtTxn>)> = BTreeMap::new();
        for p in self.ids() {
            let Some(ch) = self.channel(&p) else { continue };
            let mut c = self.participant_admin(ch);
            let Ok(r) = c.in_doubt(timed(pb::InDoubtRequest {})).await else {
                continue;
            };
            for t in r.into_inner().txns {
                let e = out.entry(t.txn_id.clone()).or_default();
                if e.0.is_empty() {
                    e.0 = t.participants.clone();
                }
                e.1 = e.1.max(t.age_ms);
                e.2.push(pb::InDoubtTxn {
                    participants: vec![p.to_string()],
                    ..t
                });
            }
        }
        out
    }

    pub async fn admin_list_txns(
        &self,
        filter: TxnFilter,
        limit: usize,
    ) -> Result<Vec<pb::TxnSummary>, CoordError> {
        let limit = if limit == 0 {
            DEFAULT_LIST
        } else {
            limit.min(MAX_LIST)
        };
        let mut out = Vec::new();
        let known = self.core().list();
        let known_ids: HashSet<String> = known.iter().map(|(t, ..)| t.to_string()).collect();
        for (txn, view, participants, age) in known {
            if filter.admits(TxnKind::of(&view)) {
                out.push(pb::TxnSummary {
                    txn_id: txn.to_string(),
                    state: TxnKind::of(&view).to_wire() as i32,
                    participants: participants.iter().map(|p| p.to_string()).collect(),
                    age_ms: age.as_millis() as u64,
                });
            }
        }
        if filter.wants_in_doubt() {
            for (txn, (participants, age, _)) in self.in_doubt_everywhere().await {
                if !known_ids.contains(&txn) {
                    out.push(pb::TxnSummary {
                        txn_id: txn,
                        state: TxnKind::InDoubt.to_wire() as i32,
                        participants,
                        age_ms: age,
                    });
                }
            }
        }
        out.sort_by_key(|t| std::cmp::Reverse(t.age_ms));
        out.truncate(limit);
        Ok(out)
    }

    async fn forced(&self, txn: &TxnId) -> Result<Option<pb::ForcedOutcome>, CoordError> {
        let key = forced_key(txn);
        match self.check(self.gc.get(&key).await)? {
            Some(b) => Ok(Some(
                self.check(record::decode(&key, &b).map_err(Into::into))?,
            )),
            None => Ok(None),
        }
    }

    pub(crate) async fn logged_decision(
        &self,
        txn: &TxnId,
    ) -> Result<Option<DecisionRecord>, CoordError> {
        let key = decision_key(txn);
        match self.check(self.gc.get(&key).await)? {
            Some(b) => Ok(Some(
                self.check(record::decode(&key, &b).map_err(Into::into))?,
            )),
            None => Ok(None),
        }
    }

    async fn participant_state(&self, p: &ParticipantId, txn: &TxnId) -> Option<pb::TxnState> {
        let ch = self.channel(p)?;
        let mut c = pb::participant_client::ParticipantClient::new(ch);
        let r = c
            .get_txn_state(timed(pb::TxnStateRequest {
                txn_id: txn.to_string(),
            }))
            .await
            .ok()?;
        Some(pb::TxnState::try_from(r.into_inner().state).unwrap_or(pb::TxnState::Unspecified))
    }

    pub async fn admin_show_txn(&self, txn: &TxnId) -> Result<pb::TxnDetail, CoordError> {
        let view = self.core().view(txn);
        let logged = self.logged_decision(txn).await?;
        let forced = self.forced(txn).await?;
        let in_doubt = self.in_doubt_everywhere().await;
        let mut members: Vec<ParticipantId> = self.core().participants_of(txn).unwrap_or_default();
        if members.is_empty() {
            if let Some(d) = &logged {
                members = d
                    .participants
                    .iter()
                    .filter_map(|p| ParticipantId::parse("p", p).ok())
                    .collect();
            } else if let Some((ps, _, _)) = in_doubt.get(txn.as_str()) {
                members = ps
                    .iter()
                    .filter_map(|p| ParticipantId::parse("p", p).ok())
                    .collect();
            }
        }
        let mut branches = Vec::new();
        let unacked = match &view {
            Some(TxnView::Committing { unacked }) => unacked.clone(),
            _ => members.clone(),
        };
        let progress = self
            .commit_progress
            .lock()
            .expect("progress")
            .get(txn)
            .cloned()
            .unwrap_or_default();
        let candidates: Vec<ParticipantId> = if members.is_empty() {
            self.ids()
        } else {
            members.clone()
        };
        for p in candidates {
            let state = self.participant_state(&p, txn).await;
            if members.is_empty() && !matches!(state, Some(s) if s != pb::TxnState::Unknown) {
                continue;
            }
            let (attempts, last_error) = progress.get(&p).cloned().unwrap_or_default();
            let prepared_at = in_doubt
                .get(txn.as_str())
                .and_then(|(_, _, at)| {
                    at.iter()
                        .find(|t| t.participants.first() == Some(&p.to_string()))
                })
                .map(|t| unix_ms().saturating_sub(t.age_ms))
                .unwrap_or(0);
            branches.push(pb::BranchDetail {
                participant: p.to_string(),
                state: state.unwrap_or(pb::TxnState::Unknown) as i32,
                reachable: state.is_some(),
                acked: (matches!(view, Some(TxnView::Committing { .. })) && !unacked.contains(&p))
                    || (view.is_none()
                        && logged.is_none()
                        && state == Some(pb::TxnState::Committed)),
                commit_attempts: attempts,
                last_error,
                prepared_at_unix_ms: prepared_at,
            });
        }
        if view.is_none() && logged.is_none() && forced.is_none() && branches.is_empty() {
            return Err(CoordError::NotFound(format!(
                "txn_id {txn}: no record at the coordinator or any participant"
            )));
        }
        let (coordinator_state, decision) = match (&view, &logged) {
            (Some(TxnView::Preparing | TxnView::Fencing), _) => {
                (pb::TxnPhase::Preparing, pb::Decision::Pending)
            }
            (Some(TxnView::Deciding), _) => (pb::TxnPhase::Deciding, pb::Decision::Pending),
            (Some(TxnView::Committing { .. }), _) | (None, Some(_)) => {
                (pb::TxnPhase::Committing, pb::Decision::Commit)
            }
            (None, None) => match forced.as_ref().map(|f| f.decision) {
                Some(d) if d == pb::Decision::Commit as i32 => {
                    (pb::TxnPhase::Forced, pb::Decision::Commit)
                }
                Some(_) => (pb::TxnPhase::Forced, pb::Decision::Abort),
                None if branches
                    .iter()
                    .all(|b| b.state == pb::TxnState::Committed as i32) =>
                {
                    (pb::TxnPhase::Committed, pb::Decision::Commit)
                }
                None => (pb::TxnPhase::Unknown, pb::Decision::Abort),
            },
        };
        Ok(pb::TxnDetail {
            txn_id: txn.to_string(),
            coordinator_state: coordinator_state as i32,
            decision: decision as i32,
            decided_at_unix_ms: self
                .core()
                .decided_at_unix_ms(txn)
                .or(logged.as_ref().map(|d| d.decided_at_unix_ms))
                .unwrap_or(0),
            branches,
            forced,
        })
    }

    pub async fn admin_list_sagas(
        &self,
        filter: SagaFilter,
        limit: usize,
    ) -> Result<Vec<pb::SagaSummary>, CoordError> {
        let limit = if limit == 0 {
            DEFAULT_LIST
        } else {
            limit.min(MAX_LIST)
        };
        let mut out: Vec<pb::SagaSummary> = self
            .sagas()
            .await?
            .iter()
            .filter(|r| filter.admits(saga_state(r)))
            .map(saga_summary)
            .collect();
        out.sort_by_key(|s| std::cmp::Reverse(s.updated_at_unix_ms));
        out.truncate(limit);
        Ok(out)
    }

    pub async fn admin_show_saga(&self, id: &TxnId) -> Result<pb::SagaSummary, CoordError> {
        self.saga(id)
            .await?
            .map(|r| saga_summary(&r))
            .ok_or_else(|| CoordError::NotFound(format!("saga_id {id}: no such saga")))
    }

    pub async fn admin_list_participants(&self) -> Vec<pb::ParticipantInfo> {
        let mut out = Vec::new();
        for p in self.ids() {
            out.push(self.participant_info(&p).await);
        }
        out
    }
}

fn id(field: &str, raw: &str) -> Result<TxnId, Status> {
    TxnId::parse(field, raw).or_invalid()
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn status(
        &self,
        _: Request<pb::AdminStatusRequest>,
    ) -> Result<Response<pb::AdminStatusResponse>, Status> {
        Ok(Response::new(self.admin_status().await?))
    }

    async fn list_txns(
        &self,
        r: Request<pb::ListTxnsRequest>,
    ) -> Result<Response<pb::ListTxnsResponse>, Status> {
        let r = r.into_inner();
        let filter = TxnFilter::from_wire(r.state).or_invalid()?;
        let txns = self.admin_list_txns(filter, r.limit as usize).await?;
        Ok(Response::new(pb::ListTxnsResponse { txns }))
    }

    async fn show_txn(
        &self,
        r: Request<pb::TxnIdRequest>,
    ) -> Result<Response<pb::TxnDetail>, Status> {
        let txn = id("txn_id", &r.into_inner().txn_id)?;
        Ok(Response::new(self.admin_show_txn(&txn).await?))
    }

    async fn retry_txn(
        &self,
        r: Request<pb::TxnIdRequest>,
    ) -> Result<Response<pb::RetryResponse>, Status> {
        let txn = id("txn_id", &r.into_inner().txn_id)?;
        let action = self.admin_retry_txn(&txn).await?;
        Ok(Response::new(pb::RetryResponse { action }))
    }

    async fn force_txn(
        &self,
        r: Request<pb::ForceTxnRequest>,
    ) -> Result<Response<pb::TxnDetail>, Status> {
        let r = r.into_inner();
        let txn = id("txn_id", &r.txn_id)?;
        let decision = pb::Decision::try_from(r.decision).unwrap_or(pb::Decision::Unspecified);
        Ok(Response::new(
            self.admin_force(&txn, decision, &r.reason, r.heuristic)
                .await?,
        ))
    }

    async fn list_sagas(
        &self,
        r: Request<pb::ListSagasRequest>,
    ) -> Result<Response<pb::ListSagasResponse>, Status> {
        let r = r.into_inner();
        let filter = SagaFilter::from_wire(r.state).or_invalid()?;
        let sagas = self.admin_list_sagas(filter, r.limit as usize).await?;
        Ok(Response::new(pb::ListSagasResponse { sagas }))
    }

    async fn show_saga(
        &self,
        r: Request<pb::TxnIdRequest>,
    ) -> Result<Response<pb::SagaSummary>, Status> {
        let saga = id("saga_id", &r.into_inner().txn_id)?;
        Ok(Response::new(self.admin_show_saga(&saga).await?))
    }

    async fn retry_saga(
        &self,
        r: Request<pb::TxnIdRequest>,
    ) -> Result<Response<pb::SagaSummary>, Status> {
        let saga = id("saga_id", &r.into_inner().txn_id)?;
        self.sagas.retry(&saga).await?;
        Ok(Response::new(self.admin_show_saga(&saga).await?))
    }

    async fn list_participants(
        &self,
        _: Request<pb::ListParticipantsRequest>,
    ) -> Result<Response<pb::ListParticipantsResponse>, Status> {
        Ok(Response::new(pb::ListParticipantsResponse {
            participants: self.admin_list_participants().await,
        }))
    }
}
