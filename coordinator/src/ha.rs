//! What a coordinator does over a log shared with other instances (etcd), carrying out the
//! core's rules ([`txn_coordinator_core::ha`]):
//! - it watches the member records, and when an instance's lease is gone, takes over that
//!   instance's commit decisions and sagas with guarded compare-and-swaps, then re-drives them
//!   (Commits re-sent until acked, sagas resumed where their log says);
//! - it answers Resolve about txns it does not hold from the log, or by asking their owner.
//!
//! Failover time is the lease TTL (the gone instance stops renewing; etcd expires the lease
//! when the TTL has passed since the last renewal), plus up to [`MEMBER_POLL`] until a live
//! instance notices, plus the takeover transactions.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use tracing::{debug, info, warn};
use txn_coordinator_core::core::{DECISION_PREFIX, decision_key};
use txn_coordinator_core::ha::{self, Adoption, Answer, Liveness, Owned};
use txn_coordinator_core::saga::{SAGA_PREFIX, Saga};
use txn_proto::convert::FromWire;
use txn_proto::pb::v1 as pb;
use txn_types::rec::DecisionRecord;
use txn_types::record;
use txn_types::store::{StoreError, WriteBatch};
use txn_types::types::{CommitPoint, ParticipantId, Resolution, TxnId};
use txn_types::unix_ms;

use crate::error::CoordError;
use crate::log::{Revisioned, SharedLog};
use crate::node::Coordinator;

/// How often the member records are read to notice an instance whose lease is gone.
pub const MEMBER_POLL: Duration = Duration::from_millis(100);
/// How often every record is checked for a gone owner even when no member left meanwhile (a
/// takeover that failed on an unreachable etcd is tried again here).
pub const ADOPTION_SWEEP_INTERVAL: Duration = Duration::from_secs(5);
/// Deadline of a Resolve forwarded to the txn's owner.
pub const FORWARD_TIMEOUT: Duration = Duration::from_millis(1000);

impl Coordinator {
    fn shared_log(&self) -> &dyn SharedLog {
        self.gc.shared().expect("called over a shared log only")
    }

    /// Resolve about `txn` over a shared log: what this instance holds, else the log read in
    /// one snapshot, else the owner's own answer (not asked again if `forwarded`).
    pub(crate) async fn resolve_elsewhere(
        &self,
        txn: &TxnId,
        commit_point: CommitPoint,
        forwarded: bool,
    ) -> Result<Resolution, CoordError> {
        if let Some(held) = self.core().resolve_held(txn) {
            return Ok(held);
        }
        let shared = self.shared_log();
        let me = shared.epoch();
        let key = decision_key(txn);
        let (logged, owner) = match txn.epoch() {
            Some(e) if e != me => {
                let view = self.check(shared.resolve_view(key, e).await)?;
                let liveness = if view.owner.is_some() {
                    Liveness::Live
                } else {
                    Liveness::Gone
                };
                (view.logged, (liveness, view.owner))
            }
            Some(_) => (
                self.check(self.gc.get(&key).await)?.is_some(),
                (Liveness::Mine, None),
            ),
            None => (
                self.check(self.gc.get(&key).await)?.is_some(),
                (Liveness::Gone, None),
            ),
        };
        match ha::resolve_elsewhere(logged, owner.0, commit_point) {
            Answer::Give(r) => Ok(r),
            Answer::AskOwner if forwarded => Ok(Resolution::Pending),
            Answer::AskOwner => {
                let url = owner.1.map(|m| m.url).unwrap_or_default();
                Ok(self.ask_owner(&url, txn, commit_point).await)
            }
        }
    }

    /// The owner's answer about one of its txns; PENDING if it cannot be reached (if it is
    /// gone, its lease expires and the next ask is answered from the log).
    async fn ask_owner(&self, url: &str, txn: &TxnId, commit_point: CommitPoint) -> Resolution {
        let channel = match self.peer_channel(url) {
            Ok(ch) => ch,
            Err(e) => {
                warn!(owner = url, error = %e, "cannot reach the txn's owner");
                return Resolution::Pending;
            }
        };
        let mut request = tonic::Request::new(pb::ResolveRequest {
            txn_id: txn.to_string(),
            commit_point: txn_proto::convert::commit_point_to_pb(commit_point) as i32,
            from_coordinator: true,
        });
        request.set_timeout(FORWARD_TIMEOUT);
        let answer = pb::coordinator_client::CoordinatorClient::new(channel)
            .resolve(request)
            .await;
        match answer.map(|r| Resolution::from_pb(r.into_inner().decision)) {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                warn!(owner = url, error = %e, "the owner's answer is not understood");
                Resolution::Pending
            }
            Err(s) => {
                debug!(owner = url, error = %s.message(), "the txn's owner did not answer");
                Resolution::Pending
            }
        }
    }

    /// A channel to another coordinator instance, made once per URL.
    fn peer_channel(&self, url: &str) -> anyhow::Result<Channel> {
        let mut peers = self.peers.lock().expect("peer channels");
        if let Some(ch) = peers.get(url) {
            return Ok(ch.clone());
        }
        let ch = self
            .peer_tls()
            .endpoint("coordinator", url, FORWARD_TIMEOUT)?
            .connect_lazy();
        peers.insert(url.to_owned(), ch.clone());
        Ok(ch)
    }

    /// Watches the member records and takes over the records of every instance that left.
    /// Runs until the process stops.
    pub(crate) async fn run_adoption(self: Arc<Self>) {
        let mut known: Option<BTreeSet<u64>> = None;
        let mut last_sweep = Instant::now();
        loop {
            match self.shared_log().members().await {
                Ok(members) => {
                    let live: BTreeSet<u64> = members.keys().copied().collect();
                    let someone_left = known
                        .as_ref()
                        .is_none_or(|k| k.iter().any(|e| !live.contains(e)));
                    if someone_left || last_sweep.elapsed() >= ADOPTION_SWEEP_INTERVAL {
                        if someone_left && known.is_some() {
                            // A gone instance's end notices (`sn/`) are read again from the
                            // log: participants take a notice sent twice idempotently.
                            self.sagas.notices.rescan_soon();
                        }
                        match self.adopt_orphans(&live).await {
                            Ok(()) => {
                                last_sweep = Instant::now();
                                known = Some(live);
                            }
                            Err(e) => {
                                warn!(error = %e, "taking over records failed; will try again")
                            }
                        }
                    } else {
                        known = Some(live);
                    }
                }
                Err(e) => debug!(error = %e, "cannot read the member records"),
            }
            tokio::time::sleep(MEMBER_POLL).await;
        }
    }

    /// Takes over every decision and saga whose owner is not in `live`.
    async fn adopt_orphans(self: &Arc<Self>, live: &BTreeSet<u64>) -> Result<(), CoordError> {
        let shared = self.shared_log();
        let me = shared.epoch();
        let decisions = self.check(shared.scan_revisions(DECISION_PREFIX).await)?;
        let mut records = HashMap::new();
        let mut owned = Vec::new();
        for r in decisions {
            let rec: DecisionRecord =
                self.check(record::decode(&r.key, &r.value).map_err(Into::into))?;
            let txn = TxnId::parse("txn_id", &rec.txn_id)?;
            owned.push(owned_of(&r, ha::owner_of(rec.owner_epoch, &txn)));
            records.insert(r.key.clone(), (txn, rec));
        }
        for a in ha::adoptions(me, live, &owned) {
            let (txn, mut rec) = records[&a.key].clone();
            rec.owner_epoch = me;
            let mut batch = WriteBatch::default();
            batch.put(a.key.clone(), record::encode(&rec));
            if !self.take_over(&a, batch, decision_owner).await? {
                continue;
            }
            let participants = rec
                .participants
                .iter()
                .map(|p| ParticipantId::parse("participants", p))
                .collect::<Result<Vec<_>, _>>()?;
            let effects = self
                .core()
                .adopt_commit(&txn, participants, rec.decided_at_unix_ms);
            self.counters.adopted.fetch_add(1, Ordering::Relaxed);
            info!(txn = %txn, from = ?a.from, "took over a commit decision; re-sending its Commits");
            self.run_effects(&txn, effects);
        }
        let sagas = self.check(shared.scan_revisions(SAGA_PREFIX).await)?;
        let mut records = HashMap::new();
        let mut owned = Vec::new();
        for r in sagas {
            let rec = self.check(record::decode(&r.key, &r.value).map_err(Into::into))?;
            let saga = self.check(Saga::from_record(&r.key, rec).map_err(Into::into))?;
            owned.push(owned_of(&r, saga.owner()));
            records.insert(r.key.clone(), saga);
        }
        for a in ha::adoptions(me, live, &owned) {
            let mut saga = records[&a.key].clone();
            saga.adopt(me, unix_ms());
            let mut batch = WriteBatch::default();
            batch.put(a.key.clone(), record::encode(saga.record()));
            if !self.take_over(&a, batch, saga_owner).await? {
                continue;
            }
            self.counters.adopted.fetch_add(1, Ordering::Relaxed);
            info!(saga = saga.id(), from = ?a.from, state = ?saga.state(), "took over a saga");
            self.sagas.adopted(saga).await?;
        }
        Ok(())
    }

    /// Carries out one takeover. A transaction whose answer was lost (or that etcd applied
    /// twice on a retry) is read back: the record names this instance if it took it.
    async fn take_over(
        &self,
        a: &Adoption,
        batch: WriteBatch,
        owner: fn(&Revisioned) -> Option<u64>,
    ) -> Result<bool, CoordError> {
        let shared = self.shared_log();
        match shared.write_guarded(a.guards.clone(), batch).await {
            Ok(true) => return Ok(true),
            Ok(false) => {}
            Err(StoreError::Unavailable(e)) => {
                debug!(error = %e, "takeover unanswered; reading back")
            }
            Err(e) => return Err(self.check::<()>(Err(e)).unwrap_err()),
        }
        let now = self.check(shared.get_revisioned(&a.key).await)?;
        Ok(now.as_ref().and_then(owner) == Some(shared.epoch()))
    }
}

fn owned_of(r: &Revisioned, owner: Option<u64>) -> Owned {
    Owned {
        key: r.key.clone(),
        owner,
        revision: r.revision,
    }
}

fn decision_owner(r: &Revisioned) -> Option<u64> {
    let rec: DecisionRecord = record::decode(&r.key, &r.value).ok()?;
    ha::owner_of(rec.owner_epoch, &TxnId::parse("txn_id", &rec.txn_id).ok()?)
}

fn saga_owner(r: &Revisioned) -> Option<u64> {
    let rec = record::decode(&r.key, &r.value).ok()?;
    Saga::from_record(&r.key, rec).ok()?.owner()
}
