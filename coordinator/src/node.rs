//! The coordinator driver: runs [`CoordinatorCore`] against the decision log and the
//! participants. The core's mutex is held only for in-memory steps, never across an await.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::{Semaphore, watch};
use tonic::transport::Channel;
use tracing::{Instrument, debug, info, info_span, warn};
use txn_metrics::{OutcomeLabel, ProtocolLabel, RetryKind, TxnLabels};
use txn_proto::convert::{FromWire, ToWire};
use txn_proto::pb::v1 as pb;
use txn_proto::pb::v1::participant_client::ParticipantClient;
use txn_server::failpoint;
use txn_server::net::{AuthChannel, BearerToken};
use txn_storage::{FailStop, GroupCommit};
use txn_types::backoff::Backoff;
use txn_types::rec::{SagaRecord, SagaState};
use txn_types::record;
use txn_types::store::{Store, StoreError, WriteBatch};
use txn_types::types::{
    InvalidInput, KeyValue, ParticipantId, Protocol, Resolution, TxnId, TxnRequest, Vote,
};
use txn_types::unix_ms;

use crate::commit_batch::CommitQueue;
use crate::dedup::ClientTag;
use crate::error::CoordError;
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
        }
    }
}

/// Failed Commit attempts per participant of one txn, with the last error.
pub(crate) type CommitProgress = HashMap<ParticipantId, (u32, String)>;

/// What the client is told.
#[derive(Debug, Clone)]
pub struct TxnOutcome {
    pub txn: TxnId,
    pub committed: bool,
    pub reason: String,
    pub failed_branch: Option<usize>,
    pub reads: Vec<(ParticipantId, Vec<KeyValue>)>,
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) committed: AtomicU64,
    pub(crate) aborted: AtomicU64,
    pub(crate) sagas_completed: AtomicU64,
    pub(crate) sagas_compensated: AtomicU64,
}

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
}

pub struct Coordinator {
    core: Mutex<CoordinatorCore>,
    pub(crate) gc: GroupCommit,
    pub(crate) participants: HashMap<ParticipantId, ParticipantClient<Channel>>,
    pub(crate) config: CoordConfig,
    admission: Arc<Semaphore>,
    pub(crate) counters: Counters,
    fail_stop: FailStop,
    /// Sagas a task is driving right now, so a retry never drives one twice.
    pub(crate) active_sagas: Mutex<HashSet<TxnId>>,
    /// Each participant's URL, for operators, and a channel for admin calls.
    pub(crate) participant_urls: HashMap<ParticipantId, String>,
    pub(crate) channels: HashMap<ParticipantId, Channel>,
    pub(crate) started: std::time::Instant,
    /// Commit attempts that failed, per txn and participant, with the last error.
    pub(crate) commit_progress: Mutex<HashMap<TxnId, CommitProgress>>,
    /// Wakes every commit retry loop at once (an operator's `txn retry`).
    pub(crate) retry_now: tokio::sync::Notify,
    /// When this process made each unfinished commit decision durable, for the commit-phase
    /// latency metric.
    decided: Mutex<HashMap<TxnId, std::time::Instant>>,
    /// Requests running under a client key right now (bounded by the admission limit).
    pub(crate) client_txns: Mutex<HashMap<String, crate::dedup::Running>>,
    /// One Commit batching queue per participant.
    commit_queues: HashMap<ParticipantId, CommitQueue>,
    /// Sent with the coordinator's calls to the participants' admin service.
    admin_token: std::sync::OnceLock<BearerToken>,
}

/// Counts a finished txn in the metrics.
pub(crate) fn count_txn(protocol: ProtocolLabel, outcome: OutcomeLabel) {
    txn_metrics::metrics()
        .txns
        .get_or_create(&TxnLabels { protocol, outcome })
        .inc();
}

impl Coordinator {
    /// Opens the decision log, bumps the epoch durably, reloads unfinished commit decisions
    /// and starts re-sending their Commits.
    pub async fn open(
        store: Arc<dyn Store>,
        participants: HashMap<ParticipantId, (String, Channel)>,
        config: CoordConfig,
    ) -> Result<Arc<Self>, CoordError> {
        let participant_urls = participants
            .iter()
            .map(|(id, (url, _))| (id.clone(), url.clone()))
            .collect();
        let channels = participants
            .iter()
            .map(|(id, (_, ch))| (id.clone(), ch.clone()))
            .collect();
        let gc = GroupCommit::start(store.clone());
        let opened = CoordinatorCore::open(store.as_ref())?;
        // The epoch is durable before any id of it is handed out.
        gc.write_durable(opened.epoch_write).await?;
        let (core, resend) = (opened.core, opened.resend);
        info!(epoch = core.epoch(), unfinished = resend.len(), "coordinator recovered");
        let commit_queues = participants
            .iter()
            .map(|(id, (_, ch))| {
                let client = ParticipantClient::new(ch.clone())
                    .max_decoding_message_size(txn_types::types::MAX_MESSAGE_BYTES);
                let queue = CommitQueue::start(id.to_string(), client, config.rpc_timeout);
                (id.clone(), queue)
            })
            .collect();
        let node = Arc::new(Self {
            core: Mutex::new(core),
            gc,
            participants: participants
                .into_iter()
                .map(|(id, (_, ch))| {
                    let client = ParticipantClient::new(ch)
                        .max_decoding_message_size(txn_types::types::MAX_MESSAGE_BYTES);
                    (id, client)
                })
                .collect(),
            admission: Arc::new(Semaphore::new(
                config.max_in_flight.clamp(1, MAX_IN_FLIGHT_TXNS),
            )),
            config,
            counters: Counters::default(),
            fail_stop: FailStop::new(),
            active_sagas: Mutex::new(HashSet::new()),
            participant_urls,
            channels,
            started: std::time::Instant::now(),
            commit_progress: Mutex::new(HashMap::new()),
            retry_now: tokio::sync::Notify::new(),
            decided: Mutex::new(HashMap::new()),
            client_txns: Mutex::new(HashMap::new()),
            admin_token: std::sync::OnceLock::new(),
            commit_queues,
        });
        for (txn, effects) in resend {
            node.run_effects(&txn, effects);
        }
        node.resume_sagas()?;
        Ok(node)
    }

    pub(crate) fn core(&self) -> MutexGuard<'_, CoordinatorCore> {
        self.core.lock().expect("coordinator core lock poisoned")
    }

    pub fn fatal(&self) -> watch::Receiver<Option<String>> {
        self.fail_stop.subscribe()
    }

    /// Passes a storage result through the fail-stop policy (see [`FailStop`]).
    pub(crate) fn check<T>(&self, r: Result<T, StoreError>) -> Result<T, CoordError> {
        Ok(self.fail_stop.check(r)?)
    }

    /// Milliseconds on the monotonic clock since this coordinator started: the clock of the
    /// core's prepare deadlines.
    pub(crate) fn clock_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The retry schedule of Commits and settling calls.
    pub(crate) fn commit_backoff(&self) -> Backoff {
        Backoff::new(self.config.commit_retry_base, self.config.commit_retry_max)
    }

    pub fn participant_ids(&self) -> Vec<ParticipantId> {
        let mut ids: Vec<_> = self.participants.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Runs one client transaction to its outcome.
    pub async fn transact(self: &Arc<Self>, req: TxnRequest) -> Result<TxnOutcome, CoordError> {
        self.transact_tagged(req, None).await
    }

    /// Runs one client transaction; with a client key, records the outcome under it.
    pub(crate) async fn transact_tagged(
        self: &Arc<Self>,
        req: TxnRequest,
        tag: Option<ClientTag>,
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
        let run = tokio::spawn(async move {
            let _permit = permit;
            if req.protocol == Protocol::Saga {
                return node.transact_saga(req, tag).await;
            }
            let participants: Vec<ParticipantId> =
                req.branches.iter().map(|b| b.participant.clone()).collect();
            let deadline_ms = node.clock_ms() + node.prepare_timeout(&req).as_millis() as u64;
            let txn = node.core().begin(participants.clone(), deadline_ms);
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
        });
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
        let epoch = self.core().epoch();
        let names: Vec<String> = participants.iter().map(|p| p.as_str().to_owned()).collect();
        let mut votes = FuturesUnordered::new();
        for (i, b) in req.branches.into_iter().enumerate() {
            let mut client = self.participants[&b.participant].clone();
            let msg = pb::PrepareRequest {
                txn_id: txn.as_str().to_owned(),
                coordinator_epoch: epoch,
                participants: names.clone(),
                ops: b.ops.iter().map(|op| op.to_pb()).collect(),
            };
            votes.push(async move {
                let mut request = tonic::Request::new(msg);
                request.set_timeout(timeout);
                (i, client.prepare(request).await)
            });
        }
        let mut reads: Vec<(ParticipantId, Vec<KeyValue>)> = participants
            .iter()
            .map(|p| (p.clone(), Vec::new()))
            .collect();
        loop {
            let next = tokio::time::timeout_at(deadline, votes.next()).await;
            let effects = match next {
                Ok(Some((i, result))) => {
                    let vote = match result.map(|r| Vote::from_pb(r.into_inner())) {
                        Ok(Ok(Vote::Yes { reads: r })) => {
                            reads[i].1 = r;
                            VoteResult::Yes
                        }
                        Ok(Ok(Vote::No { reason })) => VoteResult::No { reason },
                        Ok(Err(bad)) => VoteResult::Failed {
                            error: format!("bad response: {bad}"),
                        },
                        Err(status) => VoteResult::Failed {
                            error: format!("{:?}: {}", status.code(), status.message()),
                        },
                    };
                    // The core counts a vote that comes in after the deadline as late.
                    let now = self.clock_ms();
                    self.core().on_vote(&txn, i, vote, now, unix_ms())
                }
                // The deadline passed, or every vote is in and the core has nothing left to
                // decide on (an operator aborted the txn meanwhile).
                Ok(None) | Err(_) => {
                    let effects = self.core().on_prepare_timeout(&txn);
                    if effects.is_empty() {
                        return Err(CoordError::Unavailable(format!(
                            "txn {txn}: left the coordinator's table while its votes were collected"
                        )));
                    }
                    effects
                }
            };
            if effects.is_empty() {
                continue;
            }
            txn_metrics::metrics()
                .prepare_seconds
                .observe(started.elapsed().as_secs_f64());
            return self.finish(txn, effects, reads, tag.as_ref()).await;
        }
    }

    /// The prepare deadline a request asks for, or the default.
    pub(crate) fn prepare_timeout(&self, req: &TxnRequest) -> Duration {
        req.prepare_timeout_ms
            .map(|ms| Duration::from_millis(ms.into()))
            .unwrap_or(self.config.prepare_timeout)
    }

    /// Carries out the decision effects of a txn and builds the client's answer.
    async fn finish(
        self: &Arc<Self>,
        txn: TxnId,
        effects: Vec<Effect>,
        reads: Vec<(ParticipantId, Vec<KeyValue>)>,
        tag: Option<&ClientTag>,
    ) -> Result<TxnOutcome, CoordError> {
        let mut effects = effects;
        if let [Effect::PersistDecision { key, record }] = effects.as_slice() {
            let mut batch = WriteBatch::default();
            batch.put(key.clone(), record.clone());
            if let Some(tag) = tag {
                // The key's answer is durable with the decision: a retry can never commit
                // the request a second time.
                let committed = TxnOutcome {
                    txn: txn.clone(),
                    committed: true,
                    reason: String::new(),
                    failed_branch: None,
                    reads: reads.clone(),
                };
                Self::put_client_record(
                    &mut batch,
                    tag,
                    &txn,
                    pb::Protocol::TwoPhase,
                    Some(committed.to_pb()),
                );
            }
            failpoint::hit(failpoints::BEFORE_DECISION_DURABLE);
            // The commit point: once this returns, the txn commits, whatever crashes.
            self.check(self.gc.write_durable(batch).await)?;
            self.decided
                .lock()
                .expect("decided")
                .insert(txn.clone(), std::time::Instant::now());
            failpoint::hit(failpoints::AFTER_DECISION_DURABLE);
            effects = self.core().on_decision_durable(&txn);
        }
        let mut outcome = TxnOutcome {
            txn: txn.clone(),
            committed: false,
            reason: String::new(),
            failed_branch: None,
            reads: Vec::new(),
        };
        let mut rest = Vec::new();
        for e in effects {
            match e {
                Effect::ReplyCommitted => outcome.committed = true,
                Effect::ReplyAborted {
                    reason,
                    failed_branch,
                } => {
                    outcome.reason = reason;
                    outcome.failed_branch = failed_branch;
                }
                other => rest.push(other),
            }
        }
        if outcome.committed {
            outcome.reads = reads;
            self.counters.committed.fetch_add(1, Ordering::Relaxed);
            count_txn(ProtocolLabel::TwoPhase, OutcomeLabel::Committed);
            debug!("committed");
        } else {
            self.counters.aborted.fetch_add(1, Ordering::Relaxed);
            count_txn(ProtocolLabel::TwoPhase, OutcomeLabel::Aborted);
            if let Some(tag) = tag {
                // Lazy: losing it in a crash only lets a retry run a request that had no
                // effect.
                let mut batch = WriteBatch::default();
                Self::put_client_record(
                    &mut batch,
                    tag,
                    &txn,
                    pb::Protocol::TwoPhase,
                    Some(outcome.to_pb()),
                );
                self.check(self.gc.write_lazy(batch))?;
            }
            debug!(reason = %outcome.reason, "aborted");
        }
        self.run_effects(&txn, rest);
        Ok(outcome)
    }

    /// Starts the sends and log writes of `effects` in the background.
    pub(crate) fn run_effects(self: &Arc<Self>, txn: &TxnId, effects: Vec<Effect>) {
        for e in effects {
            let node = self.clone();
            let txn = txn.clone();
            let span = info_span!("txn", txn = %txn);
            match e {
                Effect::SendCommit { to } => {
                    tokio::spawn(async move { node.drive_commit(txn, to).await }.instrument(span));
                }
                Effect::SendAbort { to } => {
                    tokio::spawn(async move { node.send_abort(txn, to).await }.instrument(span));
                }
                Effect::EndDecision { key, participants } => {
                    let mut batch = WriteBatch::default();
                    batch.delete(key);
                    // Lazy: a decision that reappears after a crash only re-sends Commits,
                    // which participants ack idempotently - as long as they still hold the
                    // outcome. So they are told to forget it only once the deletion is
                    // durable (riding on other writers' syncs, under load).
                    match self.gc.write_lazy(batch) {
                        Ok(ticket) => {
                            tokio::spawn(
                                async move {
                                    if node
                                        .gc
                                        .wait_patiently(ticket, FORGET_PATIENCE)
                                        .await
                                        .is_ok()
                                    {
                                        node.forget_everywhere(&txn, &participants);
                                    }
                                }
                                .instrument(span),
                            );
                        }
                        Err(e) => warn!(error = %e, "could not end the decision"),
                    }
                }
                Effect::PersistDecision { .. }
                | Effect::ReplyCommitted
                | Effect::ReplyAborted { .. } => {
                    unreachable!("handled by finish")
                }
            }
        }
    }

    /// Tells each participant of an ended txn that it may forget the outcome.
    fn forget_everywhere(&self, txn: &TxnId, participants: &[ParticipantId]) {
        for p in participants {
            if let Some(queue) = self.commit_queues.get(p)
                && !queue.forget(txn.clone())
            {
                debug!(participant = %p, "forget queue full; the outcome stays there");
            }
        }
    }

    /// Sends Commit to `to` until it acks, with capped exponential backoff and jitter.
    async fn drive_commit(self: Arc<Self>, txn: TxnId, to: ParticipantId) {
        let Some(queue) = self.commit_queues.get(&to).cloned() else {
            tracing::error!(participant = %to,
                "a commit decision names a participant that is not configured (--participant); \
                 the txn stays in doubt until it is configured again");
            return;
        };
        let mut backoff = self.commit_backoff();
        loop {
            match queue.commit(txn.clone()).await {
                Ok(_) => {
                    let effects = self.core().on_commit_ack(&txn, &to);
                    if effects.is_empty() {
                        failpoint::hit(failpoints::AFTER_PARTIAL_COMMIT);
                    } else {
                        self.commit_progress.lock().expect("progress").remove(&txn);
                        if let Some(at) = self.decided.lock().expect("decided").remove(&txn) {
                            txn_metrics::metrics()
                                .commit_seconds
                                .observe(at.elapsed().as_secs_f64());
                        }
                    }
                    self.run_effects(&txn, effects);
                    return;
                }
                Err(status) => {
                    txn_metrics::retried(RetryKind::Commit);
                    {
                        let mut progress = self.commit_progress.lock().expect("progress");
                        let e = progress
                            .entry(txn.clone())
                            .or_default()
                            .entry(to.clone())
                            .or_default();
                        e.0 += 1;
                        e.1 = format!("{:?}: {}", status.code(), status.message());
                    }
                    let wait = backoff.failed(rand::random());
                    let attempt = backoff.attempts();
                    if matches!(
                        status.code(),
                        tonic::Code::NotFound | tonic::Code::FailedPrecondition
                    ) {
                        warn!(participant = %to, attempt, error = %status.message(),
                            "participant refuses Commit of a committed txn; retrying");
                    } else {
                        debug!(participant = %to, attempt, error = %status.message(),
                            "Commit not acked; retrying");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = self.retry_now.notified() => {}
                    }
                    if self.core().view(&txn).is_none() {
                        // Settled otherwise (a heuristic outcome by an operator).
                        self.decided.lock().expect("decided").remove(&txn);
                        return;
                    }
                }
            }
        }
    }

    async fn send_abort(self: Arc<Self>, txn: TxnId, to: ParticipantId) {
        let Some(mut client) = self.participants.get(&to).cloned() else {
            return;
        };
        let mut request = tonic::Request::new(pb::AbortRequest {
            txn_id: txn.as_str().to_owned(),
            forced: false,
        });
        request.set_timeout(self.config.rpc_timeout);
        // Best effort: a participant that misses it asks with Resolve and gets ABORT.
        if let Err(status) = client.abort(request).await {
            debug!(participant = %to, error = %status.message(), "Abort not delivered");
        }
    }

    /// Presumed-abort answer to an in-doubt participant (see [`CoordinatorCore::resolve`]).
    pub fn resolve(&self, txn: &TxnId) -> Result<Resolution, CoordError> {
        let core = self.core();
        self.check(core.resolve(txn, self.gc.store().as_ref()))
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
            sagas_active: self.active_sagas.lock().expect("active sagas").len() as u64,
            sagas_completed: self.counters.sagas_completed.load(Ordering::Relaxed),
            sagas_compensated: self.counters.sagas_compensated.load(Ordering::Relaxed),
        }
    }

    /// Sets the bearer token sent to the participants' admin service (once, at startup).
    pub fn set_admin_token(&self, token: BearerToken) {
        let _ = self.admin_token.set(token);
    }

    /// A client of a participant's admin service, carrying the admin token.
    pub(crate) fn participant_admin(
        &self,
        ch: Channel,
    ) -> pb::participant_admin_client::ParticipantAdminClient<AuthChannel> {
        pb::participant_admin_client::ParticipantAdminClient::with_interceptor(
            ch,
            self.admin_token.get().cloned().unwrap_or_default(),
        )
    }

    /// Sets the state gauges of the metrics from the txn table and the saga log.
    pub fn refresh_metrics(&self) {
        let m = txn_metrics::metrics();
        m.in_doubt.set(self.core().committing() as i64);
        m.sagas_active
            .set(self.active_sagas.lock().expect("active sagas").len() as i64);
        match self
            .gc
            .store()
            .scan_prefix(txn_coordinator_core::saga::SAGA_PREFIX)
        {
            Ok(sagas) => {
                let parked = sagas
                    .iter()
                    .filter_map(|(k, v)| record::decode::<SagaRecord>(k, v).ok())
                    .filter(|r| r.state == SagaState::Parked as i32)
                    .count();
                m.sagas_parked.set(parked as i64);
            }
            Err(e) => warn!(error = %e, "metrics: cannot read the saga log"),
        }
    }

    pub async fn sync(&self) -> Result<(), CoordError> {
        self.check(self.gc.sync_all().await)
    }
}
