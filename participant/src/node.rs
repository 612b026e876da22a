//! The participant driver: runs [`ParticipantCore`] against a real store. It holds the core's
//! mutex only for in-memory work and `Store::apply` (microseconds), never across an await;
//! durability waits happen outside it through the group-commit flusher.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use tokio::sync::{Notify, watch};
use tracing::{Instrument, debug, info, info_span, warn};
use txn_metrics::{RefusalLabels, RetryKind};
use txn_server::failpoint;
use txn_storage::durable::GroupCommit;
use txn_types::store::{Store, StoreError, WriteBatch};
use txn_types::types::{Decision, KeyValue, Op, Resolution, TxnId, Vote};
use txn_types::unix_ms;

use crate::disk::DiskRefusal;
use crate::error::ParticipantError;
use txn_participant_core::core::{
    AbortStep, CommitStep, OUTCOME_SWEEP_PAGE, OnePhaseStep, ParticipantCore, PrepareRequest,
    PrepareStep, Refusal, TxnStatus, data_key,
};
use txn_participant_core::saga::{self, CompensateStep, Compensation, ExecuteStep, StepResult};

/// Crash points (see `txn_server::failpoint`).
pub mod failpoints {
    /// The prepared record is written but not yet durable; no vote sent.
    pub const BEFORE_PREPARE_DURABLE: &str = "participant::before_prepare_durable";
    /// The prepared record is durable; the YES vote is not sent yet.
    pub const AFTER_PREPARE_DURABLE: &str = "participant::after_prepare_durable";
    /// The commit is applied and durable; the ack is not sent yet.
    pub const AFTER_COMMIT_APPLY: &str = "participant::after_commit_apply";
    /// A one-phase commit is applied but not yet durable; no answer sent.
    pub const BEFORE_ONE_PHASE_DURABLE: &str = "participant::before_one_phase_durable";
    /// A one-phase commit is applied and durable; the answer is not sent yet.
    pub const AFTER_ONE_PHASE_DURABLE: &str = "participant::after_one_phase_durable";
    /// A saga step is applied and durable; the answer is not sent yet.
    pub const AFTER_STEP_EXECUTED: &str = "participant::saga_after_step_executed";
    pub const ALL: &[&str] = &[
        BEFORE_PREPARE_DURABLE,
        AFTER_PREPARE_DURABLE,
        AFTER_COMMIT_APPLY,
        BEFORE_ONE_PHASE_DURABLE,
        AFTER_ONE_PHASE_DURABLE,
        AFTER_STEP_EXECUTED,
    ];
}

/// Largest page of ListOutcomes.
pub const MAX_OUTCOMES_PAGE: usize = 10_000;

/// Most keys one Read request may name.
pub const MAX_READ_KEYS: usize = 1024;

#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This participant's name, as the coordinator and its peers know it.
    pub name: String,
    /// How long a Prepare waits for a conflicting lock before it votes NO. Bounded so that
    /// a distributed deadlock costs at most this long, never a hang.
    pub lock_wait: Duration,
    /// How long a prepared txn may wait for its decision before this participant asks the
    /// coordinator (Resolve).
    pub resolve_after: Duration,
    /// How often the resolver looks for txns to ask about.
    pub resolve_interval: Duration,
    /// Largest pause between two attempts to resolve the same txn (the pause doubles from
    /// `resolve_interval` up to this, with jitter).
    pub resolve_backoff_max: Duration,
    /// How long outcomes that expire (aborts, tombstones, one-phase commits) are kept, and
    /// whether the coordinator's "forget" of ended commits is obeyed. None keeps every outcome
    /// forever (for checkers that audit them after a run).
    pub outcome_retention: Option<Duration>,
}

/// Default age at which aborts, tombstones and one-phase commits are dropped. It must outlast
/// every message that can still ask about them: a Prepare within the coordinator's deadline
/// (at most `MAX_PREPARE_TIMEOUT_MS`, 60 s) and the settling of a one-phase commit (about a
/// minute at worst).
pub const DEFAULT_OUTCOME_RETENTION: Duration = Duration::from_secs(600);
/// Longest pause between two sweeps (shorter when the retention is short).
pub const OUTCOME_SWEEP_INTERVAL: Duration = Duration::from_secs(30);

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            name: "p1".into(),
            lock_wait: Duration::from_millis(50),
            resolve_after: Duration::from_millis(2000),
            resolve_interval: Duration::from_millis(200),
            resolve_backoff_max: Duration::from_millis(2000),
            outcome_retention: Some(DEFAULT_OUTCOME_RETENTION),
        }
    }
}

#[derive(Default)]
struct Counters {
    committed: AtomicU64,
    aborted: AtomicU64,
    max_in_doubt_ms: AtomicU64,
}

/// A snapshot of the node's counters.
#[derive(Debug, Clone, Copy)]
pub struct NodeStats {
    pub fsyncs: u64,
    pub durable_writes: u64,
    pub committed: u64,
    pub aborted: u64,
    pub in_doubt: u64,
    pub max_in_doubt_ms: u64,
    pub oldest_in_doubt_ms: u64,
}

pub struct Participant {
    core: Mutex<ParticipantCore>,
    gc: GroupCommit,
    /// Woken whenever locks are released, so blocked Prepares try again.
    released: Notify,
    config: NodeConfig,
    counters: Counters,
    /// Set when the node hits an error it must not continue after (a corrupt record, a failed
    /// fsync); the binary watches it and exits.
    fatal: watch::Sender<Option<String>>,
    /// Txns recovered at start, to be resolved first.
    recovered: Mutex<Vec<TxnId>>,
    /// Set by the disk guard while new Prepares must be refused (see [`crate::disk`]).
    disk: Mutex<Option<DiskRefusal>>,
    disk_degraded: AtomicBool,
}

impl Participant {
    /// Opens the node on `store`, reloading prepared records and re-taking their locks before
    /// anything else can touch the store.
    pub fn open(store: Arc<dyn Store>, config: NodeConfig) -> Result<Arc<Self>, StoreError> {
        let mut core = ParticipantCore::new();
        let recovered = core.recover(store.as_ref())?;
        if !recovered.is_empty() {
            info!(
                count = recovered.len(),
                "recovered prepared txns; their locks are held again"
            );
        }
        // sled may have recovered writes that reached the file but were never fsynced (a
        // crash between its flush and our fdatasync). Make them durable before answering
        // anyone on their strength.
        store.sync()?;
        let (fatal, _) = watch::channel(None);
        Ok(Arc::new(Self {
            core: Mutex::new(core),
            gc: GroupCommit::start(store),
            released: Notify::new(),
            config,
            counters: Counters::default(),
            fatal,
            recovered: Mutex::new(recovered),
            disk: Mutex::new(None),
            disk_degraded: AtomicBool::new(false),
        }))
    }

    fn core(&self) -> MutexGuard<'_, ParticipantCore> {
        self.core.lock().expect("participant core lock poisoned")
    }

    fn store(&self) -> &dyn Store {
        self.gc.store().as_ref()
    }

    /// Subscribes to fatal errors.
    pub fn fatal(&self) -> watch::Receiver<Option<String>> {
        self.fatal.subscribe()
    }

    fn check<T>(&self, r: Result<T, StoreError>) -> Result<T, ParticipantError> {
        r.map_err(|e| {
            if matches!(e, StoreError::Corrupt(_) | StoreError::Failed(_)) {
                let msg = e.to_string();
                self.fatal.send_if_modified(|f| {
                    if f.is_none() {
                        *f = Some(msg);
                        true
                    } else {
                        false
                    }
                });
            }
            ParticipantError::Store(e)
        })
    }

    pub async fn prepare(&self, req: PrepareRequest) -> Result<Vote, ParticipantError> {
        let span = info_span!("prepare", txn = %req.txn);
        self.refuse_if_disk_degraded()?;
        let started = Instant::now();
        let vote = self.prepare_inner(req).instrument(span).await;
        txn_metrics::metrics()
            .prepare_seconds
            .observe(started.elapsed().as_secs_f64());
        vote
    }

    /// Refuses new work that writes (a Prepare, a saga Execute) while the disk guard says so.
    fn refuse_if_disk_degraded(&self) -> Result<(), ParticipantError> {
        if !self.disk_degraded.load(Ordering::Relaxed) {
            return Ok(());
        }
        match self.disk.lock().expect("disk state").clone() {
            Some(refusal) => {
                txn_metrics::metrics()
                    .refused
                    .get_or_create(&RefusalLabels {
                        reason: refusal.reason,
                    })
                    .inc();
                Err(ParticipantError::Disk(refusal))
            }
            None => Ok(()),
        }
    }

    /// Records the disk guard's verdict, logging each change.
    pub fn set_disk_state(&self, refusal: Option<DiskRefusal>) {
        let mut cur = self.disk.lock().expect("disk state");
        match (&*cur, &refusal) {
            (None, Some(r)) => warn!(reason = %r.message, "refusing new prepares"),
            (Some(_), None) => info!("disk usable again; accepting prepares"),
            _ => {}
        }
        self.disk_degraded
            .store(refusal.is_some(), Ordering::Relaxed);
        txn_metrics::metrics()
            .disk_degraded
            .set(i64::from(refusal.is_some()));
        *cur = refusal;
    }

    /// Watches the file system of `dir` and refuses new Prepares while it is full (below
    /// `reserve_bytes` free) or read-only. Runs until the process exits.
    pub async fn run_disk_guard(self: Arc<Self>, dir: std::path::PathBuf, reserve_bytes: u64) {
        loop {
            match crate::disk::read(&dir) {
                Ok(reading) => {
                    self.set_disk_state(crate::disk::verdict(&dir, reading, reserve_bytes))
                }
                Err(e) => warn!(dir = %dir.display(), error = %e, "cannot read disk usage"),
            }
            tokio::time::sleep(crate::disk::DISK_CHECK_INTERVAL).await;
        }
    }

    /// Drops the expiring outcomes recorded before `now - retention` (see
    /// [`txn_participant_core::core::sweep_expired`]). Each page is applied under the core lock, lazily: a
    /// drop lost in a crash is made again by the next sweep. Returns how many index entries
    /// it handled.
    pub fn sweep_outcomes(
        &self,
        retention: Duration,
        now_unix_ms: u64,
    ) -> Result<usize, ParticipantError> {
        let cutoff = now_unix_ms.saturating_sub(retention.as_millis() as u64);
        let mut swept = 0;
        loop {
            let core = self.core();
            let (batch, more) = self.check(txn_participant_core::core::sweep_expired(
                self.store(),
                cutoff,
                OUTCOME_SWEEP_PAGE,
            ))?;
            swept += batch.ops.len();
            if !batch.is_empty() {
                self.check(self.gc.write_lazy(batch))?;
            }
            drop(core);
            if !more {
                return Ok(swept);
            }
        }
    }

    /// Runs [`Participant::sweep_outcomes`] until the process stops, when outcomes expire at all.
    pub async fn run_outcome_sweeper(self: Arc<Self>) {
        let Some(retention) = self.config.outcome_retention else {
            return;
        };
        let every = (retention / 2).clamp(Duration::from_millis(100), OUTCOME_SWEEP_INTERVAL);
        loop {
            tokio::time::sleep(every).await;
            match self.sweep_outcomes(retention, unix_ms()) {
                Ok(0) => {}
                Ok(n) => debug!(writes = n, "expired outcomes dropped"),
                Err(e) => warn!(error = %e, "sweeping expired outcomes failed; will retry"),
            }
        }
    }

    /// Sets the state gauges of the metrics.
    pub fn refresh_metrics(&self) {
        txn_metrics::metrics()
            .in_doubt
            .set(self.core().in_doubt() as i64);
    }

    async fn prepare_inner(&self, req: PrepareRequest) -> Result<Vote, ParticipantError> {
        let deadline = tokio::time::Instant::now() + self.config.lock_wait;
        loop {
            // Register for the wake-up before looking, so a release between the look and the
            // wait is not missed.
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let (step, ticket) = {
                let mut core = self.core();
                let step = self.check(core.prepare(&req, self.store(), unix_ms()))?;
                let ticket = match &step {
                    PrepareStep::Persist { batch, .. } => {
                        Some(self.check(self.gc.write_lazy(batch.clone()))?)
                    }
                    PrepareStep::VoteNo { batch, .. } if !batch.is_empty() => {
                        self.check(self.gc.write_lazy(batch.clone()))?;
                        None
                    }
                    _ => None,
                };
                (step, ticket)
            };
            match step {
                PrepareStep::Persist { reads, .. } => {
                    let ticket = ticket.expect("Persist writes a batch");
                    failpoint::hit(failpoints::BEFORE_PREPARE_DURABLE);
                    self.check(self.gc.wait(ticket).await)?;
                    failpoint::hit(failpoints::AFTER_PREPARE_DURABLE);
                    if !self.core().is_prepared(&req.txn) {
                        // Aborted while the record was being made durable (an Abort that
                        // overtook this vote, or cooperative termination): never say YES for
                        // a txn this participant has already given up.
                        return Ok(Vote::No {
                            reason: "txn was aborted here while it prepared".into(),
                        });
                    }
                    debug!("voted YES");
                    return Ok(Vote::Yes { reads });
                }
                PrepareStep::Revote { reads } => {
                    self.check(self.gc.sync_all().await)?;
                    return Ok(Vote::Yes { reads });
                }
                PrepareStep::VoteNo { reason, .. } => {
                    self.counters.aborted.fetch_add(1, Ordering::Relaxed);
                    debug!(%reason, "voted NO");
                    return Ok(Vote::No { reason });
                }
                PrepareStep::Blocked { holder } => {
                    if tokio::time::timeout_at(deadline, released).await.is_err() {
                        self.counters.aborted.fetch_add(1, Ordering::Relaxed);
                        return Ok(Vote::No {
                            reason: format!(
                                "lock conflict with txn {holder} (waited {} ms)",
                                self.config.lock_wait.as_millis()
                            ),
                        });
                    }
                }
            }
        }
    }

    /// Commits a single-branch txn in one phase. `Ok(Err(reason))` means it did not commit
    /// and nothing changed; `Ok(Ok(reads))` means the branch and its outcome are durable.
    pub async fn commit_one_phase(
        &self,
        txn: &TxnId,
        ops: &[Op],
    ) -> Result<Result<Vec<KeyValue>, String>, ParticipantError> {
        let span = info_span!("one_phase", txn = %txn);
        self.refuse_if_disk_degraded()?;
        let started = Instant::now();
        let answer = self.one_phase_inner(txn, ops).instrument(span).await?;
        txn_metrics::metrics()
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(answer)
    }

    async fn one_phase_inner(
        &self,
        txn: &TxnId,
        ops: &[Op],
    ) -> Result<Result<Vec<KeyValue>, String>, ParticipantError> {
        let deadline = tokio::time::Instant::now() + self.config.lock_wait;
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            // The batch is applied under the core lock, so a Prepare, Abort or duplicate that
            // comes next sees its outcome record.
            let (step, ticket) = {
                let core = self.core();
                let step = self.check(core.commit_one_phase(txn, ops, self.store(), unix_ms()))?;
                let ticket = match &step {
                    OnePhaseStep::Apply { batch, .. } => {
                        Some(self.check(self.gc.write_lazy(batch.clone()))?)
                    }
                    OnePhaseStep::AlreadyCommitted => Some(self.gc.current()),
                    // A refusal is answered once its tombstone (or the earlier one it found) is
                    // durable: the client will be told ABORTED, so a crash must not let a
                    // redelivered copy of this call commit afterwards. (A NO vote's tombstone
                    // can stay lazy: there the coordinator's abort is final whatever the
                    // participant says later.)
                    OnePhaseStep::Refuse { batch, .. } if !batch.is_empty() => {
                        Some(self.check(self.gc.write_lazy(batch.clone()))?)
                    }
                    OnePhaseStep::Refuse { .. } => Some(self.gc.current()),
                    OnePhaseStep::Blocked { .. } => None,
                };
                (step, ticket)
            };
            match step {
                OnePhaseStep::Apply { reads, .. } => {
                    failpoint::hit(failpoints::BEFORE_ONE_PHASE_DURABLE);
                    self.check(self.gc.wait(ticket.expect("Apply writes a batch")).await)?;
                    failpoint::hit(failpoints::AFTER_ONE_PHASE_DURABLE);
                    self.counters.committed.fetch_add(1, Ordering::Relaxed);
                    debug!("committed in one phase");
                    return Ok(Ok(reads));
                }
                OnePhaseStep::AlreadyCommitted => {
                    self.check(self.gc.wait(ticket.expect("a sync ticket")).await)?;
                    return Ok(Ok(Vec::new()));
                }
                OnePhaseStep::Refuse { reason, .. } => {
                    self.check(self.gc.wait(ticket.expect("a refusal's ticket")).await)?;
                    self.counters.aborted.fetch_add(1, Ordering::Relaxed);
                    debug!(%reason, "refused a one-phase commit");
                    return Ok(Err(reason));
                }
                OnePhaseStep::Blocked { holder } => {
                    if tokio::time::timeout_at(deadline, released).await.is_err() {
                        // Record the refusal durably before answering, so the call cannot
                        // still commit if it is delivered again (see Refuse above).
                        let ticket = {
                            let mut core = self.core();
                            match self.check(core.abort(txn, self.store(), unix_ms()))? {
                                AbortStep::Apply { batch } => {
                                    Some(self.check(self.gc.write_lazy(batch))?)
                                }
                                AbortStep::AlreadyAborted => Some(self.gc.current()),
                                // A duplicate of this call committed meanwhile: look again,
                                // and answer as it did.
                                AbortStep::Refused(_) => None,
                            }
                        };
                        let Some(ticket) = ticket else { continue };
                        self.check(self.gc.wait(ticket).await)?;
                        self.counters.aborted.fetch_add(1, Ordering::Relaxed);
                        return Ok(Err(format!(
                            "lock conflict with txn {holder} (waited {} ms)",
                            self.config.lock_wait.as_millis()
                        )));
                    }
                }
            }
        }
    }

    pub async fn commit(&self, txn: &TxnId) -> Result<(), ParticipantError> {
        let span = info_span!("commit", txn = %txn);
        let started = Instant::now();
        async {
            let ticket = {
                let mut core = self.core();
                let prepared_at = core.prepared_at_unix_ms(txn);
                match self.check(core.commit(txn, self.store(), unix_ms()))? {
                    CommitStep::Apply { batch } => {
                        self.note_in_doubt(prepared_at);
                        // Applied under the core lock, so nobody sees the released locks
                        // before the new values. The locks go before the fsync (early lock
                        // release): the decision is already durable at the coordinator, and a
                        // txn that reads these values makes them durable with its own record.
                        let t = self.check(self.gc.write_lazy(batch))?;
                        self.counters.committed.fetch_add(1, Ordering::Relaxed);
                        t
                    }
                    CommitStep::AlreadyCommitted => self.gc.current(),
                    CommitStep::Refused(r) => return Err(refusal(txn, r)),
                }
            };
            self.released.notify_waiters();
            self.check(self.gc.wait(ticket).await)?;
            failpoint::hit(failpoints::AFTER_COMMIT_APPLY);
            txn_metrics::metrics()
                .commit_seconds
                .observe(started.elapsed().as_secs_f64());
            debug!("committed");
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// Commits many txns with one core lock, one write batch and one durable wait (the
    /// coordinator's CommitBatch). Returns the txns that did not commit, with why.
    pub async fn commit_batch(
        &self,
        txns: &[TxnId],
        forget: &[TxnId],
    ) -> Result<Vec<(TxnId, ParticipantError)>, ParticipantError> {
        let started = Instant::now();
        let mut failed = Vec::new();
        let ticket = {
            let mut core = self.core();
            let mut merged = WriteBatch::default();
            let mut seen = std::collections::HashSet::new();
            for txn in txns {
                // A txn twice in one batch: the second would look for an outcome record that
                // is not written yet.
                if !seen.insert(txn) {
                    continue;
                }
                let prepared_at = core.prepared_at_unix_ms(txn);
                match self.check(core.commit(txn, self.store(), unix_ms()))? {
                    CommitStep::Apply { batch } => {
                        self.note_in_doubt(prepared_at);
                        merged.append(batch);
                        self.counters.committed.fetch_add(1, Ordering::Relaxed);
                    }
                    CommitStep::AlreadyCommitted => {}
                    CommitStep::Refused(r) => failed.push((txn.clone(), refusal(txn, r))),
                }
            }
            // Outcomes of ended txns, dropped lazily: a drop lost in a crash leaves a record
            // behind, nothing worse. Kept when this participant keeps every outcome.
            if self.config.outcome_retention.is_some() {
                for txn in forget {
                    if let Some(batch) = self.check(core.forget(txn, self.store(), unix_ms()))? {
                        merged.append(batch);
                    }
                }
            }
            // Applied under the core lock, as in `commit` (early lock release).
            if merged.is_empty() {
                self.gc.current()
            } else {
                self.check(self.gc.write_lazy(merged))?
            }
        };
        self.released.notify_waiters();
        self.check(self.gc.wait(ticket).await)?;
        failpoint::hit(failpoints::AFTER_COMMIT_APPLY);
        let m = txn_metrics::metrics();
        for _ in 0..txns.len().saturating_sub(failed.len()) {
            m.commit_seconds.observe(started.elapsed().as_secs_f64());
        }
        debug!(
            txns = txns.len(),
            failed = failed.len(),
            "committed a batch"
        );
        Ok(failed)
    }

    /// An Abort from the coordinator (or from an operator when `forced`). A txn an operator
    /// holds is only aborted by a forced Abort.
    pub async fn abort(&self, txn: &TxnId, forced: bool) -> Result<(), ParticipantError> {
        let source = if forced {
            AbortSource::Operator
        } else {
            AbortSource::Coordinator
        };
        let was_prepared = self.core().is_prepared(txn);
        match self.abort_from(txn, source) {
            // "It committed here" is an answer the coordinator may act on (it settles a lost
            // one-phase commit with an Abort): say it only once the commit is durable.
            Err(e @ ParticipantError::OutcomeConflict(_)) => {
                self.check(self.gc.sync_all().await)?;
                Err(e)
            }
            // A tombstone for a txn never prepared here is a promise that it will never
            // commit here, and the coordinator may tell its client ABORTED on the strength of
            // it (a settled one-phase commit): keep the promise across a crash. Rare in two
            // phases (an Abort that overtakes its Prepare), so the fsync costs little.
            Ok(_) if !was_prepared => self.check(self.gc.sync_all().await),
            r => r.map(|_| ()),
        }
    }

    /// Aborts `txn`. Returns false when the resolver left a held txn alone.
    fn abort_from(&self, txn: &TxnId, source: AbortSource) -> Result<bool, ParticipantError> {
        let _span = info_span!("abort", txn = %txn).entered();
        {
            let mut core = self.core();
            if core.is_held(txn) {
                match source {
                    AbortSource::Resolver => return Ok(false),
                    AbortSource::Coordinator => {
                        return Err(ParticipantError::OutcomeConflict(format!(
                            "txn {txn} is held by an operator; only a forced outcome moves it"
                        )));
                    }
                    AbortSource::Operator => {}
                }
            }
            let prepared_at = core.prepared_at_unix_ms(txn);
            match self.check(core.abort(txn, self.store(), unix_ms()))? {
                // Presumed abort: the abort record is not forced.
                AbortStep::Apply { batch } => {
                    self.note_in_doubt(prepared_at);
                    self.check(self.gc.write_lazy(batch))?;
                    self.counters.aborted.fetch_add(1, Ordering::Relaxed);
                }
                AbortStep::AlreadyAborted => {}
                AbortStep::Refused(r) => return Err(refusal(txn, r)),
            }
        }
        self.released.notify_waiters();
        debug!("aborted");
        Ok(true)
    }

    /// Pins a prepared txn for an operator (see `ParticipantCore::hold`). Answers only once
    /// everything written so far is durable: a prepared record still being flushed must not
    /// be reported as a YES vote.
    pub async fn hold(&self, txn: &TxnId) -> Result<TxnStatus, ParticipantError> {
        let (status, ticket) = {
            let mut core = self.core();
            (self.check(core.hold(txn, self.store()))?, self.gc.current())
        };
        self.check(self.gc.wait(ticket).await)?;
        if status == TxnStatus::Prepared {
            warn!(txn = %txn, "held by an operator: waiting for an explicit Commit or Abort");
        }
        Ok(status)
    }

    /// Undoes a hold; returns the txn's status.
    pub fn release(&self, txn: &TxnId) -> Result<TxnStatus, ParticipantError> {
        let mut core = self.core();
        core.release(txn);
        self.check(core.status(txn, self.store()))
    }

    /// Prepared txns with their age, participants, locked keys, epoch and hold flag.
    pub fn in_doubt_detail(&self) -> Vec<InDoubtTxn> {
        let now = unix_ms();
        let core = self.core();
        let mut out: Vec<InDoubtTxn> = core
            .prepared()
            .map(|(t, r)| InDoubtTxn {
                txn: t.clone(),
                age_ms: now.saturating_sub(r.prepared_at_unix_ms),
                participants: r.participants.clone(),
                locked_keys: r
                    .exclusive_keys
                    .iter()
                    .chain(&r.shared_keys)
                    .cloned()
                    .collect(),
                coordinator_epoch: r.coordinator_epoch,
                held: core.is_held(t),
            })
            .collect();
        out.sort_by_key(|t| std::cmp::Reverse(t.age_ms));
        out
    }

    /// Runs one saga step. Waits up to the lock wait for prepared 2PC txns holding its keys,
    /// then fails with a retryable error.
    pub async fn execute_step(
        &self,
        saga: &TxnId,
        step: u32,
        ops: &[Op],
    ) -> Result<StepResult, ParticipantError> {
        let span = info_span!("execute", saga = %saga, step);
        self.refuse_if_disk_degraded()?;
        let result = self
            .apply_when_unblocked(|core| {
                Ok(
                    match self.check(saga::execute(
                        core,
                        saga,
                        step,
                        ops,
                        self.store(),
                        unix_ms(),
                    ))? {
                        ExecuteStep::Done { batch, result } => Ok((batch, result)),
                        ExecuteStep::Blocked { holder } => Err(holder),
                    },
                )
            })
            .instrument(span)
            .await?;
        failpoint::hit(failpoints::AFTER_STEP_EXECUTED);
        Ok(result)
    }

    /// Undoes one saga step (or records a null compensation).
    pub async fn compensate_step(
        &self,
        saga: &TxnId,
        step: u32,
    ) -> Result<Compensation, ParticipantError> {
        let span = info_span!("compensate", saga = %saga, step);
        self.apply_when_unblocked(|core| {
            Ok(
                match self.check(saga::compensate(core, saga, step, self.store(), unix_ms()))? {
                    CompensateStep::Done {
                        batch,
                        compensation,
                    } => Ok((batch, compensation)),
                    CompensateStep::Blocked { holder } => Err(holder),
                },
            )
        })
        .instrument(span)
        .await
    }

    /// Runs `attempt` under the core lock until no prepared txn blocks it (waiting for lock
    /// releases up to the lock wait), applies the batch it returns and answers once that batch
    /// is durable. `attempt` returns `Err(holder)` while blocked.
    async fn apply_when_unblocked<T: std::fmt::Debug>(
        &self,
        attempt: impl Fn(
            &ParticipantCore,
        ) -> Result<Result<(Option<WriteBatch>, T), TxnId>, ParticipantError>,
    ) -> Result<T, ParticipantError> {
        let deadline = tokio::time::Instant::now() + self.config.lock_wait;
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let outcome = {
                let core = self.core();
                match attempt(&core)? {
                    Ok((batch, answer)) => {
                        let ticket = match batch {
                            Some(b) => self.check(self.gc.write_lazy(b))?,
                            None => self.gc.current(),
                        };
                        Ok((ticket, answer))
                    }
                    Err(holder) => Err(holder),
                }
            };
            match outcome {
                Ok((ticket, answer)) => {
                    self.check(self.gc.wait(ticket).await)?;
                    debug!(?answer, "saga action applied");
                    return Ok(answer);
                }
                Err(holder) => {
                    if tokio::time::timeout_at(deadline, released).await.is_err() {
                        return Err(ParticipantError::Busy { holder });
                    }
                }
            }
        }
    }

    /// One page of saga barrier records, from `start` (a barrier key) on.
    pub fn list_barriers(
        &self,
        start: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, txn_types::rec::BarrierRecord)>, ParticipantError> {
        let limit = limit.clamp(1, MAX_OUTCOMES_PAGE);
        self.check(saga::list_barriers(self.store(), start, limit))
    }

    fn note_in_doubt(&self, prepared_at_unix_ms: Option<u64>) {
        if let Some(at) = prepared_at_unix_ms {
            let ms = unix_ms().saturating_sub(at);
            self.counters
                .max_in_doubt_ms
                .fetch_max(ms, Ordering::Relaxed);
        }
    }

    /// Committed values of `keys`. A key locked for writing by a prepared txn is refused:
    /// its value is undecided, and returning either one could show a reader half a txn.
    pub fn read(&self, keys: &[Vec<u8>]) -> Result<Vec<KeyValue>, ParticipantError> {
        let core = self.core();
        if let Err((key, holder)) = core.check_readable(keys) {
            return Err(ParticipantError::Locked {
                key: String::from_utf8_lossy(&key).into_owned(),
                holder,
            });
        }
        keys.iter()
            .map(|k| {
                let value = self.check(self.store().get(&data_key(k)))?;
                Ok(KeyValue {
                    key: k.clone(),
                    value,
                })
            })
            .collect()
    }

    /// What this participant knows of `txn`.
    pub fn status(&self, txn: &TxnId) -> Result<TxnStatus, ParticipantError> {
        let core = self.core();
        self.check(core.status(txn, self.store()))
    }

    /// One page of recorded outcomes, after `start_after`.
    pub fn list_outcomes(
        &self,
        start_after: &str,
        limit: usize,
    ) -> Result<Vec<(String, TxnStatus, Vec<String>)>, ParticipantError> {
        let limit = limit.clamp(1, MAX_OUTCOMES_PAGE);
        self.check(txn_participant_core::core::list_outcomes(
            self.store(),
            start_after,
            limit,
        ))
    }

    pub fn stats(&self) -> NodeStats {
        let f = self.gc.stats();
        let now = unix_ms();
        // One lock for both figures: a second `self.core()` in the same expression would
        // deadlock on the first one's guard.
        let (in_doubt, oldest_in_doubt_ms) = {
            let core = self.core();
            let oldest = core
                .prepared()
                .map(|(_, r)| now.saturating_sub(r.prepared_at_unix_ms))
                .max()
                .unwrap_or(0);
            (core.in_doubt() as u64, oldest)
        };
        NodeStats {
            fsyncs: f.fsyncs,
            durable_writes: f.durable_writes,
            committed: self.counters.committed.load(Ordering::Relaxed),
            aborted: self.counters.aborted.load(Ordering::Relaxed),
            in_doubt,
            max_in_doubt_ms: self.counters.max_in_doubt_ms.load(Ordering::Relaxed),
            oldest_in_doubt_ms,
        }
    }

    /// Prepared txns, with the participants of each.
    pub fn in_doubt(&self) -> Vec<(TxnId, Vec<String>)> {
        self.core()
            .prepared()
            .map(|(t, r)| (t.clone(), r.participants.clone()))
            .collect()
    }

    /// Makes everything written so far durable (used at shutdown).
    pub async fn sync(&self) -> Result<(), ParticipantError> {
        self.check(self.gc.sync_all().await)
    }

    /// Cooperative termination, asked by another participant of `txn`. A txn never prepared
    /// here gets a durable abort tombstone first: once this answers ABORTED, a late Prepare
    /// must vote NO, or the asker's abort and a commit could both happen.
    pub async fn query_peer(&self, txn: &TxnId) -> Result<TxnStatus, ParticipantError> {
        let (status, ticket) = {
            let mut core = self.core();
            match self.check(core.status(txn, self.store()))? {
                TxnStatus::Unknown => match self.check(core.abort(txn, self.store(), unix_ms()))? {
                    AbortStep::Apply { batch } => {
                        info!(txn = %txn, "peer asked about a txn never prepared here: recording its abort");
                        (TxnStatus::Aborted, self.check(self.gc.write_lazy(batch))?)
                    }
                    AbortStep::AlreadyAborted => (TxnStatus::Aborted, self.gc.current()),
                    AbortStep::Refused(r) => return Err(refusal(txn, r)),
                },
                // Outcomes may still sit unsynced in the group-commit queue: answer only once
                // everything written so far is durable.
                status => (status, self.gc.current()),
            }
        };
        self.check(self.gc.wait(ticket).await)?;
        Ok(status)
    }

    /// Resolves txns that have waited too long for their decision: asks the coordinator, and
    /// while it is unreachable asks the txn's other participants (cooperative termination).
    /// Runs until the returned future is dropped.
    pub async fn run_resolver(self: Arc<Self>, transport: Arc<dyn ResolveTransport>) {
        let mut pending: HashMap<TxnId, Backoff> = HashMap::new();
        let start = Instant::now();
        let recovered = std::mem::take(&mut *self.recovered.lock().expect("recovered lock"));
        for t in recovered {
            // Recovered txns lost their decision messages with the crash: ask at once.
            pending.insert(t, Backoff::new(start, self.config.resolve_interval));
        }
        let mut tick = tokio::time::interval(self.config.resolve_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = Instant::now();
            let current: Vec<(TxnId, Vec<String>)> = self.in_doubt();
            pending.retain(|t, _| current.iter().any(|(c, _)| c == t));
            for (txn, participants) in current {
                let b = pending.entry(txn.clone()).or_insert_with(|| {
                    Backoff::new(
                        now + self.config.resolve_after,
                        self.config.resolve_interval,
                    )
                });
                if now < b.next_try {
                    continue;
                }
                let span = info_span!("resolve", txn = %txn, attempt = b.attempts + 1);
                let decided = self
                    .resolve_once(transport.as_ref(), &txn, &participants)
                    .instrument(span)
                    .await;
                if !decided {
                    b.failed(now, self.config.resolve_backoff_max);
                }
            }
        }
    }

    /// One attempt to learn and apply the decision of `txn`; true once it is applied.
    async fn resolve_once(
        &self,
        transport: &dyn ResolveTransport,
        txn: &TxnId,
        participants: &[String],
    ) -> bool {
        let decision = match transport.resolve(txn.clone()).await {
            Ok(Resolution::Decided(d)) => Some(d),
            Ok(Resolution::Pending) => {
                debug!("coordinator has not decided yet");
                None
            }
            Err(TransportError::Unreachable(e)) => {
                debug!(error = %e, "coordinator unreachable; asking the other participants");
                self.ask_peers(transport, txn, participants).await
            }
            Err(TransportError::Other(e)) => {
                warn!(error = %e, "resolve failed; will ask again");
                None
            }
        };
        let Some(decision) = decision else {
            return false;
        };
        let result = match decision {
            Decision::Commit => self.commit(txn).await,
            Decision::Abort => match self.abort_from(txn, AbortSource::Resolver) {
                Ok(true) => Ok(()),
                Ok(false) => {
                    debug!("held by an operator; leaving it for an explicit decision");
                    return false;
                }
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(()) => {
                info!(?decision, "in-doubt txn resolved");
                true
            }
            Err(e) => {
                warn!(error = %e, "applying the resolved decision failed");
                false
            }
        }
    }

    /// Cooperative termination: a peer that committed means COMMIT; one that voted NO,
    /// aborted or never prepared means ABORT; if every peer is prepared (or unreachable) the
    /// txn stays blocked until the coordinator answers.
    async fn ask_peers(
        &self,
        transport: &dyn ResolveTransport,
        txn: &TxnId,
        participants: &[String],
    ) -> Option<Decision> {
        for peer in participants.iter().filter(|p| **p != self.config.name) {
            match transport.query_peer(peer.clone(), txn.clone()).await {
                Ok(TxnStatus::Committed) => return Some(Decision::Commit),
                Ok(TxnStatus::Aborted | TxnStatus::Unknown) => {
                    info!(%peer, "peer did not prepare or aborted: the txn can only abort");
                    return Some(Decision::Abort);
                }
                Ok(TxnStatus::Prepared) => {}
                Err(e) => debug!(%peer, error = %e, "peer unreachable"),
            }
        }
        debug!("every reachable peer is prepared: blocked until the coordinator answers");
        None
    }
}

/// Who asks for an abort: a held txn yields only to an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AbortSource {
    Resolver,
    Coordinator,
    Operator,
}

/// A prepared txn as operators see it.
#[derive(Debug, Clone)]
pub struct InDoubtTxn {
    pub txn: TxnId,
    pub age_ms: u64,
    pub participants: Vec<String>,
    pub locked_keys: Vec<Vec<u8>>,
    pub coordinator_epoch: u64,
    pub held: bool,
}

/// Retry schedule of one in-doubt txn: capped exponential backoff with jitter.
struct Backoff {
    next_try: Instant,
    pause: Duration,
    attempts: u32,
}

impl Backoff {
    fn new(first_try: Instant, pause: Duration) -> Self {
        Self {
            next_try: first_try,
            pause,
            attempts: 0,
        }
    }

    fn failed(&mut self, now: Instant, max: Duration) {
        self.attempts += 1;
        txn_metrics::retried(RetryKind::Resolve);
        let jitter = rand::random_range(0..=self.pause.as_millis() as u64 / 2);
        self.next_try = now + self.pause + Duration::from_millis(jitter);
        self.pause = (self.pause * 2).min(max);
    }
}

/// Why a Resolve call failed.
#[derive(Debug, Clone)]
pub enum TransportError {
    /// The coordinator could not be reached (down, partitioned, timed out).
    Unreachable(String),
    Other(String),
}

/// How the resolver reaches the coordinator and the other participants.
pub trait ResolveTransport: Send + Sync + 'static {
    fn resolve(&self, txn: TxnId) -> BoxFuture<'static, Result<Resolution, TransportError>>;
    fn query_peer(&self, peer: String, txn: TxnId)
    -> BoxFuture<'static, Result<TxnStatus, String>>;
}

fn refusal(txn: &TxnId, r: Refusal) -> ParticipantError {
    match r {
        Refusal::Unknown => ParticipantError::UnknownTxn(txn.clone()),
        Refusal::Conflict(msg) => ParticipantError::OutcomeConflict(msg),
    }
}
