//! The coordinator driver: runs [`CoordinatorCore`] against the decision log and the
//! participants. The core's mutex is held only for in-memory steps, never across an await.
//! Over a shared log (etcd), `ha.rs` adds what several coordinators need: adoption of a gone
//! instance's records, and Resolve for txns held elsewhere.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::Semaphore;
use tonic::transport::Channel;
use tracing::{Instrument, info, info_span, warn};
use txn_proto::convert::{FromWire, ToWire};
use txn_proto::pb::v1 as pb;
use txn_types::store::StoreError;
use txn_types::types::{
    CommitPoint, InvalidInput, KeyValue, ParticipantId, Protocol, Resolution, TxnId, TxnRequest,
    Vote,
};
use txn_types::unix_ms;

use crate::context::Context;
use crate::dedup::{Claim, ClientKeys, ClientTag};
use crate::error::CoordError;
use crate::events_driver::EventsDriver;
use crate::log::CoordLog;
use crate::outcome::{TxnOutcome, call_failure};
use crate::saga_driver::SagaDriver;
use futures::future::BoxFuture;
use txn_coordinator_core::core::{CoordinatorCore, Effect, VoteResult};

/// Crash points (see `txn_server::failpoint`).
pub mod failpoints {
    /// Every vote was YES; the commit decision is not yet written.
    pub const BEFORE_DECISION_DURABLE: &str = "coordinator::before_decision_durable";
    /// The commit decision is durable; the client has not been told, no Commit sent.
    pub const AFTER_DECISION_DURABLE: &str = "coordinator::after_decision_durable";
    /// Some participants acked the Commit, others have not been reached yet.
    pub const AFTER_PARTIAL_COMMIT: &str = "coordinator::after_partial_commit";
    pub const ALL: &[&str] = &[
        BEFORE_DECISION_DURABLE,
        AFTER_DECISION_DURABLE,
        AFTER_PARTIAL_COMMIT,
    ];
}

/// Most txns the coordinator runs at once; beyond it Transact answers RESOURCE_EXHAUSTED.
/// Bounds the memory of the txn table and the number of concurrent RPCs.
pub const MAX_IN_FLIGHT_TXNS: usize = 10_000;
/// Longest prepare deadline a client may ask for.
pub const MAX_PREPARE_TIMEOUT_MS: u32 = 60_000;
/// How long an ended decision's deletion waits for another writer's sync before it asks for
/// one (the participants forget the txn only after that).
pub const FORGET_PATIENCE: Duration = Duration::from_millis(500);

#[derive(Debug, Clone)]
pub struct CoordConfig {
    /// Default time to collect every vote before deciding ABORT.
    pub prepare_timeout: Duration,
    /// Deadline of one Commit or Abort RPC.
    pub rpc_timeout: Duration,
    /// First and largest pause between Commit retries (exponential backoff with jitter).
    pub commit_retry_base: Duration,
    pub commit_retry_max: Duration,
    /// Default deadline of a saga's forward phase; past it, the saga compensates.
    pub saga_timeout: Duration,
    /// First and largest pause between retries of one saga step's Execute or Compensate.
    pub saga_retry_base: Duration,
    pub saga_retry_max: Duration,
    /// Failed Compensate calls a saga may make before it is parked.
    pub compensation_budget: u32,
    /// Most txns run at once (at most [`MAX_IN_FLIGHT_TXNS`]); beyond it Transact answers
    /// RESOURCE_EXHAUSTED.
    pub max_in_flight: usize,
    /// A txn with one branch and no client key commits in one phase (one call, one forced
    /// write at the participant, nothing logged here).
    pub one_phase: bool,
    /// Where a 2PC txn commits unless its request says (see [`CommitPoint`]).
    pub commit_point: CommitPoint,
}

impl Default for CoordConfig {
    fn default() -> Self {
        Self {
            prepare_timeout: Duration::from_millis(1000),
            rpc_timeout: Duration::from_millis(2000),
            commit_retry_base: Duration::from_millis(20),
            commit_retry_max: Duration::from_millis(1000),
            saga_timeout: Duration::from_millis(5000),
            saga_retry_base: Duration::from_millis(20),
            saga_retry_max: Duration::from_millis(1000),
            compensation_budget: 20,
            max_in_flight: MAX_IN_FLIGHT_TXNS,
            one_phase: true,
            commit_point: CommitPoint::Decision,
        }
    }
}

/// Failed Commit attempts per participant of one txn, with the last error.
pub(crate) type CommitProgress = HashMap<ParticipantId, (u32, String)>;

#[derive(Debug, Clone, Copy)]
pub struct CoordStats {
    pub epoch: u64,
    pub fsyncs: u64,
    pub durable_writes: u64,
    pub committed: u64,
    pub aborted: u64,
    pub in_doubt: u64,
    pub in_flight: u64,
    pub sagas_active: u64,
    pub sagas_completed: u64,
    pub sagas_compensated: u64,
    /// Decisions and sagas taken over from coordinators whose lease expired (etcd log).
    pub adopted: u64,
}

/// The coordinator: the two-phase driver's own state, plus its components. Everything they
/// share (the core, the log, the links to the participants) is the [`Context`], which the
/// coordinator derefs to.
pub struct Coordinator {
    ctx: Arc<Context>,
    admission: Arc<Semaphore>,
    /// Commit attempts that failed, per txn and participant, with the last error.
    pub(crate) commit_progress: Mutex<HashMap<TxnId, CommitProgress>>,
    /// Wakes every commit retry loop at once (an operator's `txn retry`).
    pub(crate) retry_now: tokio::sync::Notify,
    /// When this process made each unfinished commit decision durable, for the commit-phase
    /// latency metric.
    pub(crate) decided: Mutex<HashMap<TxnId, std::time::Instant>>,
    /// Client idempotency keys.
    pub(crate) keys: Arc<ClientKeys>,
    /// The saga driver.
    pub(crate) sagas: Arc<SagaDriver>,
    /// The events protocol's first step, and transfers' status.
    pub(crate) events: Arc<EventsDriver>,
}

impl std::ops::Deref for Coordinator {
    type Target = Context;

    fn deref(&self) -> &Context {
        &self.ctx
    }
}

impl Coordinator {
    /// Starts the coordinator over `log`, whose epoch `core` has, re-sending the Commits of
    /// every unfinished decision (`resend`) and resuming unfinished sagas. Over a shared log
    /// (etcd) a new instance holds nothing yet: it takes over the records of gone instances
    /// as it finds them ([`Coordinator::run_adoption`]).
    pub async fn open(
        log: Arc<dyn CoordLog>,
        core: CoordinatorCore,
        resend: Vec<(TxnId, Vec<Effect>)>,
        participants: HashMap<ParticipantId, (String, Channel)>,
        config: CoordConfig,
    ) -> Result<Arc<Self>, CoordError> {
        info!(
            epoch = core.epoch(),
            unfinished = resend.len(),
            shared = log.shared().is_some(),
            "coordinator recovered"
        );
        let max_in_flight = config.max_in_flight.clamp(1, MAX_IN_FLIGHT_TXNS);
        let ctx = Arc::new(Context::new(core, log, participants, config));
        let node = Arc::new(Self {
            admission: Arc::new(Semaphore::new(max_in_flight)),
            commit_progress: Mutex::new(HashMap::new()),
            retry_now: tokio::sync::Notify::new(),
            decided: Mutex::new(HashMap::new()),
            keys: Arc::new(ClientKeys::new(ctx.clone())),
            sagas: Arc::new(SagaDriver::new(ctx.clone())),
            events: Arc::new(EventsDriver::new(ctx.clone())),
            ctx,
        });
        for (txn, effects) in resend {
            node.run_effects(&txn, effects);
        }
        if let Some(shared) = node.gc.shared() {
            let mut lost = shared.lost();
            let n = node.clone();
            tokio::spawn(async move {
                if let Ok(why) = lost.wait_for(Option::is_some).await {
                    let why = why.clone().unwrap_or_default();
                    n.stop(why);
                }
            });
            tokio::spawn(node.clone().run_adoption());
            // The end notices of sagas this log holds (an earlier instance's included).
            let n = node.clone();
            tokio::spawn(async move {
                if let Err(e) = n.sagas.notices.rescan().await {
                    warn!(error = %e, "reading saga end notices failed; a rescan retries");
                }
            });
        } else {
            node.sagas.resume().await?;
        }
        Ok(node)
    }

    /// Runs `req` once per idempotency key (see [`crate::dedup`]).
    pub async fn transact_once(
        self: &Arc<Self>,
        req: TxnRequest,
        tag: ClientTag,
    ) -> Result<pb::TransactResponse, CoordError> {
        if let Some(shared) = self.gc.shared() {
            shared.admits().map_err(CoordError::NotStarted)?;
        }
        let (sender, resume) = match self.keys.claim(&tag).await? {
            Claim::Answered(answer) => return Ok(answer),
            Claim::Run(tx) => (tx, None),
            Claim::Resume(tx, id) => (tx, Some(id)),
            Claim::Wait(mut done) => {
                // The same request is running: wait for its answer.
                let answer = done
                    .wait_for(Option::is_some)
                    .await
                    .map_err(|_| CoordError::Unavailable("the first attempt was lost".into()))?
                    .clone()
                    .expect("waited for Some");
                return answer.map_err(|(code, msg)| CoordError::Replayed(code, msg));
            }
        };
        // In its own task, so that the key is released and waiters are answered even if
        // this caller goes away (deadline, cancel) while the txn runs.
        let node = self.clone();
        let run = tokio::spawn(
            async move {
                let shared: crate::dedup::Shared =
                    match node.transact_tagged(req, Some(tag.clone()), resume).await {
                        Ok(o) => Ok(o.to_pb()),
                        Err(e) => {
                            let status = tonic::Status::from(e);
                            Err((status.code(), status.message().to_owned()))
                        }
                    };
                if shared.is_err() {
                    // No answer was recorded: a claim in a shared log must not hold the key.
                    node.keys.abandon(&tag).await;
                }
                node.keys.release(&tag);
                let _ = sender.send(Some(shared.clone()));
                shared
            }
            // The client's trace goes on in the task.
            .in_current_span(),
        );
        run.await
            .map_err(|e| CoordError::Unavailable(format!("txn task failed: {e}")))?
            .map_err(|(code, msg)| CoordError::Replayed(code, msg))
    }

    /// Runs one client transaction to its outcome.
    pub async fn transact(self: &Arc<Self>, req: TxnRequest) -> Result<TxnOutcome, CoordError> {
        self.transact_tagged(req, None, None).await
    }

    /// Runs one client transaction; with a client key, records the outcome under it.
    /// `resume`: an events transfer's id that the key recorded before its answer was.
    pub(crate) async fn transact_tagged(
        self: &Arc<Self>,
        req: TxnRequest,
        tag: Option<ClientTag>,
        resume: Option<TxnId>,
    ) -> Result<TxnOutcome, CoordError> {
        for (i, b) in req.branches.iter().enumerate() {
            if !self.participants.contains_key(&b.participant) {
                return Err(InvalidInput::new(
                    format!("branches[{i}].participant"),
                    format!(
                        "unknown participant {:?}; known: {}",
                        b.participant.as_str(),
                        self.participant_ids()
                            .iter()
                            .map(|p| p.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
                .into());
            }
        }
        let timeout_ms = req.prepare_timeout_ms.unwrap_or(0);
        if timeout_ms > MAX_PREPARE_TIMEOUT_MS {
            return Err(InvalidInput::new(
                "prepare_timeout_ms",
                format!("{timeout_ms} is above the limit {MAX_PREPARE_TIMEOUT_MS}"),
            )
            .into());
        }
        if let Some(shared) = self.gc.shared() {
            shared.admits().map_err(CoordError::NotStarted)?;
        }
        let permit =
            self.admission
                .clone()
                .try_acquire_owned()
                .map_err(|_| CoordError::Overloaded {
                    limit: self.config.max_in_flight,
                })?;
        // The protocol runs in its own task: if the client goes away (deadline, cancel,
        // disconnect), tonic drops this future, but the txn must still reach its decision and
        // release its participants.
        let node = self.clone();
        let run = tokio::spawn(
            async move {
                let _permit = permit;
                if req.protocol == Protocol::Saga {
                    return node.sagas.transact(req, tag).await;
                }
                // A one-branch events request is a local commit: it runs in one phase below, and
                // its participant's event is the whole story.
                if req.protocol == Protocol::Events && req.branches.len() == 2 {
                    let timeout = node.prepare_timeout(&req);
                    return node.events.transact(req, tag, resume, timeout).await;
                }
                let participants: Vec<ParticipantId> =
                    req.branches.iter().map(|b| b.participant.clone()).collect();
                let deadline_ms = node.clock_ms() + node.prepare_timeout(&req).as_millis() as u64;
                // A client key's record rides on the logged decision (see dedup.rs).
                let commit_point = match tag {
                    Some(_) => CommitPoint::Decision,
                    None => req.commit_point.unwrap_or(node.config.commit_point),
                };
                let txn = node
                    .core()
                    .begin_at(participants.clone(), deadline_ms, commit_point);
                let span = info_span!("txn", txn = %txn);
                // A client key must be recorded with the outcome, which only the coordinator's
                // decision write can do atomically: keyed txns always take two phases.
                if node.config.one_phase
                    && participants.len() == 1
                    && tag.is_none()
                    && let Some(outcome) = node
                        .run_one_phase(&txn, &req)
                        .instrument(span.clone())
                        .await?
                {
                    return Ok(outcome);
                }
                node.run_two_phase(txn, req, participants, tag)
                    .instrument(span)
                    .await
            }
            // The client's trace goes on in the task.
            .in_current_span(),
        );
        run.await
            .map_err(|e| CoordError::Store(StoreError::Failed(format!("txn task failed: {e}"))))?
    }

    async fn run_two_phase(
        self: &Arc<Self>,
        txn: TxnId,
        req: TxnRequest,
        participants: Vec<ParticipantId>,
        tag: Option<ClientTag>,
    ) -> Result<TxnOutcome, CoordError> {
        let timeout = self.prepare_timeout(&req);
        let started = tokio::time::Instant::now();
        let deadline = started + timeout;
        let (epoch, commit_point) = {
            let mut core = self.core();
            // The vote window starts now, also after a one-phase attempt that fell back.
            core.restart_deadline(&txn, self.clock_ms() + timeout.as_millis() as u64);
            (core.epoch(), core.commit_point(&txn).unwrap_or_default())
        };
        let names: Vec<String> = participants.iter().map(|p| p.as_str().to_owned()).collect();
        let writers: Vec<String> = req
            .branches
            .iter()
            .filter(|b| b.ops.iter().any(|op| op.writes()))
            .map(|b| b.participant.to_string())
            .collect();
        let read_only = req
            .branches
            .iter()
            .all(|b| b.ops.iter().all(|op| !op.writes()));
        let mut votes = FuturesUnordered::new();
        for (i, b) in req.branches.into_iter().enumerate() {
            let queue = self.prepare_queues[&b.participant].clone();
            let msg = pb::PrepareRequest {
                txn_id: txn.as_str().to_owned(),
                coordinator_epoch: epoch,
                participants: names.clone(),
                ops: b.ops.iter().map(|op| op.to_pb()).collect(),
                read_only,
                commit_point: txn_proto::convert::commit_point_to_pb(commit_point) as i32,
                writers: writers.clone(),
            };
            votes.push(async move { (i, queue.prepare(msg, timeout).await) });
        }
        let mut reads: Vec<(ParticipantId, Vec<KeyValue>)> = participants
            .iter()
            .map(|p| (p.clone(), Vec::new()))
            .collect();
        // Fences of missing votes (a txn that commits at its votes), each retried until it is
        // answered: the outcome waits for them.
        let mut fences = FuturesUnordered::new();
        let mut deadline_passed = false;
        loop {
            let next = tokio::select! {
                v = votes.next(), if !votes.is_empty() => Ok(v),
                Some((i, prepared)) = fences.next() => {
                    let effects = self.core().on_fence_reply(&txn, i, prepared);
                    let effects = self.start_fences(&txn, &participants, effects, &mut fences);
                    if effects.is_empty() {
                        continue;
                    }
                    return self.finish(txn, effects, reads, tag.as_ref()).await;
                }
                _ = tokio::time::sleep_until(deadline), if !deadline_passed => Err(()),
                // Every vote is in, no fence is out, the deadline has passed, and the core
                // has nothing left to decide on (an operator aborted the txn meanwhile).
                else => Ok(None),
            };
            let effects = match next {
                Ok(Some((i, result))) => {
                    let vote = match result.map(Vote::from_pb) {
                        Ok(Ok(Vote::Yes { reads: r })) => {
                            reads[i].1 = r;
                            VoteResult::Yes
                        }
                        Ok(Ok(Vote::No { reason })) => VoteResult::No { reason },
                        Ok(Err(bad)) => VoteResult::Failed {
                            error: format!("{} answered badly: {bad}", participants[i]),
                        },
                        Err(status) => VoteResult::Failed {
                            error: call_failure(participants[i].as_str(), &status, timeout),
                        },
                    };
                    // The core counts a vote that comes in after the deadline as late.
                    let now = self.clock_ms();
                    self.core().on_vote(&txn, i, vote, now, unix_ms())
                }
                // The deadline passed, or every vote is in and the core has nothing left to
                // decide on (an operator aborted the txn meanwhile).
                Ok(None) | Err(()) => {
                    deadline_passed = true;
                    let effects = self.core().on_prepare_timeout(&txn);
                    if effects.is_empty() && fences.is_empty() {
                        return Err(CoordError::Unavailable(format!(
                            "txn {txn}: left the coordinator's table while its votes were collected"
                        )));
                    }
                    effects
                }
            };
            let effects = self.start_fences(&txn, &participants, effects, &mut fences);
            if effects.is_empty() {
                continue;
            }
            txn_metrics::metrics()
                .prepare_seconds
                .observe(started.elapsed().as_secs_f64());
            return self.finish(txn, effects, reads, tag.as_ref()).await;
        }
    }

    /// Starts the fences among `effects` (each retried until answered, its result the
    /// participant's index and whether it was prepared) and returns the others.
    fn start_fences(
        self: &Arc<Self>,
        txn: &TxnId,
        participants: &[ParticipantId],
        effects: Vec<Effect>,
        fences: &mut FuturesUnordered<BoxFuture<'static, (usize, bool)>>,
    ) -> Vec<Effect> {
        let mut rest = Vec::with_capacity(effects.len());
        for e in effects {
            match e {
                Effect::Fence { to } => {
                    let Some(i) = participants.iter().position(|p| *p == to) else {
                        continue;
                    };
                    let node = self.clone();
                    let txn = txn.clone();
                    fences.push(Box::pin(async move { (i, node.fence(txn, to).await) }));
                }
                other => rest.push(other),
            }
        }
        rest
    }

    /// Asks `to` what it holds of `txn` (its QueryPeer: a participant that never prepared it
    /// writes a durable tombstone first, and can never vote YES after), until it answers:
    /// true if prepared or committed there, false if fenced off or aborted.
    async fn fence(self: Arc<Self>, txn: TxnId, to: ParticipantId) -> bool {
        let mut backoff = self.commit_backoff();
        loop {
            let mut client = self.participants[&to].clone();
            let mut request = txn_server::trace::request(pb::TxnStateRequest {
                txn_id: txn.as_str().to_owned(),
            });
            request.set_timeout(self.config.rpc_timeout);
            let status = client
                .query_peer(request)
                .await
                .map_err(|s| call_failure(to.as_str(), &s, self.config.rpc_timeout))
                .and_then(|r| {
                    let raw = r.into_inner().state;
                    pb::TxnState::try_from(raw).map_err(|_| format!("unknown state {raw}"))
                });
            match status {
                Ok(pb::TxnState::Prepared | pb::TxnState::Committed) => return true,
                Ok(pb::TxnState::Aborted) => return false,
                Ok(other) => {
                    warn!(participant = %to, state = ?other, "fence answered neither; asking again");
                }
                Err(e) => {
                    txn_metrics::retried(txn_metrics::RetryKind::Commit);
                    tracing::debug!(participant = %to, error = %e, "fence not answered; retrying");
                }
            }
            tokio::time::sleep(backoff.failed(rand::random())).await;
        }
    }

    /// The prepare deadline a request asks for, or the default.
    pub(crate) fn prepare_timeout(&self, req: &TxnRequest) -> Duration {
        req.prepare_timeout_ms
            .map(|ms| Duration::from_millis(ms.into()))
            .unwrap_or(self.config.prepare_timeout)
    }

    /// The answer to an in-doubt participant (see [`CoordinatorCore::resolve`]). Over a
    /// shared log, a txn this instance does not hold is answered from the log, or by its
    /// owner (see [`Coordinator::resolve_elsewhere`]); `forwarded` says another coordinator
    /// already sent it here.
    pub async fn resolve(
        &self,
        txn: &TxnId,
        commit_point: CommitPoint,
        forwarded: bool,
    ) -> Result<Resolution, CoordError> {
        if self.gc.shared().is_some() {
            return self.resolve_elsewhere(txn, commit_point, forwarded).await;
        }
        let key = txn_coordinator_core::core::decision_key(txn);
        let logged = self.check(self.gc.get(&key).await)?;
        if let Some(bytes) = &logged {
            self.check(
                txn_types::record::decode::<txn_types::rec::DecisionRecord>(&key, bytes)
                    .map_err(Into::into),
            )?;
        }
        Ok(self
            .core()
            .resolve_logged(txn, logged.is_some(), commit_point))
    }

    pub fn stats(&self) -> CoordStats {
        let f = self.gc.stats();
        let core = self.core();
        CoordStats {
            epoch: core.epoch(),
            fsyncs: f.fsyncs,
            durable_writes: f.durable_writes,
            committed: self.counters.committed.load(Ordering::Relaxed),
            aborted: self.counters.aborted.load(Ordering::Relaxed),
            in_doubt: core.committing() as u64,
            in_flight: core.in_flight() as u64,
            sagas_active: self.sagas.active() as u64,
            sagas_completed: self.counters.sagas_completed.load(Ordering::Relaxed),
            sagas_compensated: self.counters.sagas_compensated.load(Ordering::Relaxed),
            adopted: self.counters.adopted.load(Ordering::Relaxed),
        }
    }

    /// Sets the state gauges of the metrics from the txn table and the sagas' states (kept
    /// in memory, so a scrape reads nothing from the log).
    pub fn refresh_metrics(&self) {
        let m = txn_metrics::metrics();
        m.in_doubt.set(self.core().committing() as i64);
        m.sagas_active.set(self.sagas.active() as i64);
        m.sagas_parked.set(self.sagas.counts().parked as i64);
    }

    /// Records held, by key prefix of the storage layout (a scan: for operators and soaks).
    pub fn record_counts(&self) -> Result<Vec<(String, u64)>, String> {
        use txn_coordinator_core::saga::{
            ENDED_SAGA_PREFIX, SAGA_END_NOTICE_PREFIX, SAGA_EXPIRY_PREFIX, SAGA_PREFIX,
        };
        let store = self.gc.local_store().ok_or_else(|| {
            "record counts are kept for a coordinator's own log; count etcd's with etcdctl get \
             --prefix --count-only"
                .to_string()
        })?;
        txn_server::serve::count_records(
            store,
            &[
                txn_coordinator_core::core::DECISION_PREFIX,
                SAGA_PREFIX,
                ENDED_SAGA_PREFIX,
                SAGA_EXPIRY_PREFIX,
                SAGA_END_NOTICE_PREFIX,
                crate::admin::FORCED_PREFIX,
                crate::dedup::CLIENT_PREFIX,
            ],
        )
    }

    /// The context every component shares.
    pub fn context(&self) -> Arc<Context> {
        self.ctx.clone()
    }

    pub async fn sync(&self) -> Result<(), CoordError> {
        self.check(self.gc.sync_all().await)
    }
}
