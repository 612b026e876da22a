//! The participant driver: runs [`ParticipantCore`] against a real store. It decides nothing
//! about the protocol. For each message it asks the core for a [`Step`], applies the step's
//! write under the core's lock (so the next message sees it), waits through group commit if
//! the step's durability says so, wakes requests blocked on locks if locks came free, and
//! sends the answer. The core's lock is held only for in-memory work and `Store::apply`
//! (microseconds), never across an await.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};
use tracing::{Instrument, debug, info, info_span, warn};
use txn_participant_core::core::{
    AbortAnswer, AbortSource, CommitAnswer, ParticipantCore, Refusal, TxnStatus,
};
use txn_participant_core::limits::{DEFAULT_MAX_LOCKED_KEYS, DEFAULT_MAX_PREPARED_TXNS, Limits};
use txn_participant_core::one_phase::OnePhaseAnswer;
use txn_participant_core::resolve::Resolved;
use txn_participant_core::saga::{self, Compensation, StepRef, StepResult};
use txn_storage::{FailStop, GroupCommit, Ticket};
use txn_types::store::{Store, StoreError};
use txn_types::types::{KeyValue, Op, TxnId};
use txn_types::unix_ms;

use crate::disk::DiskRefusal;
use crate::error::ParticipantError;
use crate::exec::{CrashPoints, busy};
use crate::feed::Feed;
use txn_participant_core::outbox::Retention;
use txn_server::feed::Links;

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
    /// Events protocol: the source's step (the debit) and its event are durable; the
    /// "accepted" answer is not sent yet.
    pub const AFTER_DEBIT_DURABLE: &str = "participant::events_after_debit_durable";
    /// Events protocol: the destination's step (the credit) consumed from a feed is durable
    /// with the inbox; the feed has not been acknowledged yet, so it will come again.
    pub const AFTER_CREDIT_DURABLE: &str = "participant::events_after_credit_durable";
    pub const ALL: &[&str] = &[
        BEFORE_PREPARE_DURABLE,
        AFTER_PREPARE_DURABLE,
        AFTER_COMMIT_APPLY,
        BEFORE_ONE_PHASE_DURABLE,
        AFTER_ONE_PHASE_DURABLE,
        AFTER_STEP_EXECUTED,
        AFTER_DEBIT_DURABLE,
        AFTER_CREDIT_DURABLE,
    ];
}

/// Largest page of ListOutcomes.
pub const MAX_OUTCOMES_PAGE: usize = 10_000;

/// Most keys one Read request may name.
pub const MAX_READ_KEYS: usize = 1024;

/// Default age at which aborts, tombstones and one-phase commits are dropped. It must outlast
/// every message that can still ask about them: a Prepare within the coordinator's deadline
/// (at most `MAX_PREPARE_TIMEOUT_MS`, 60 s) and the settling of a one-phase commit (about a
/// minute at worst).
pub const DEFAULT_OUTCOME_RETENTION: Duration = Duration::from_secs(600);

#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This participant's name, as the coordinator and its peers know it.
    pub name: String,
    /// How long a request waits for a conflicting lock before the core says what it gets
    /// instead. Bounded so that a distributed deadlock costs at most this long, never a hang.
    pub lock_wait: Duration,
    /// How long a write queued behind a reader waits before it gives way (votes NO). Such a
    /// wait can close a distributed deadlock: the reader holds its shared locks here while it
    /// waits elsewhere for this very writer. Shorter than `lock_wait`, so the reader, which
    /// needs every key at once, finishes and writers lose little.
    pub reader_yield: Duration,
    /// How long a read-only request waits for writers. Its wait cannot close a deadlock (the
    /// writers it waits on give way to it), so it may outlast one among writers.
    pub reader_wait: Duration,
    /// How long a prepared txn may wait for its decision before this participant asks the
    /// coordinator (Resolve).
    pub resolve_after: Duration,
    /// How often the resolver looks for txns to ask about, and its first retry pause.
    pub resolve_interval: Duration,
    /// Largest pause between two attempts to resolve the same txn.
    pub resolve_backoff_max: Duration,
    /// How long outcomes that expire (aborts, tombstones, one-phase commits) are kept, and
    /// whether the coordinator's "forget" of ended commits is obeyed. None keeps every outcome
    /// forever (for checkers that audit them after a run). Also how long an ended saga's
    /// barriers outlive its deadline (None: they are kept forever too).
    pub outcome_retention: Option<Duration>,
    /// Most txns prepared here at once; a Prepare beyond it is refused (RESOURCE_EXHAUSTED).
    pub max_prepared: usize,
    /// Most keys locked here at once; a Prepare that would lock more is refused likewise.
    pub max_locked_keys: usize,
    /// How long acknowledged events are kept, and how many events at most (see
    /// [`txn_participant_core::outbox::prune`]).
    pub event_retention: Retention,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            name: "p1".into(),
            lock_wait: Duration::from_millis(50),
            reader_yield: Duration::from_millis(30),
            reader_wait: Duration::from_millis(150),
            resolve_after: Duration::from_millis(2000),
            resolve_interval: Duration::from_millis(200),
            resolve_backoff_max: Duration::from_millis(2000),
            outcome_retention: Some(DEFAULT_OUTCOME_RETENTION),
            max_prepared: DEFAULT_MAX_PREPARED_TXNS,
            max_locked_keys: DEFAULT_MAX_LOCKED_KEYS,
            event_retention: Retention {
                min_age_ms: crate::feed::DEFAULT_EVENT_RETENTION.as_millis() as u64,
                max_events: crate::feed::DEFAULT_MAX_RETAINED_EVENTS,
            },
        }
    }
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) committed: AtomicU64,
    pub(crate) aborted: AtomicU64,
    pub(crate) max_in_doubt_ms: AtomicU64,
}

pub struct Participant {
    pub(crate) core: Mutex<ParticipantCore>,
    pub(crate) gc: GroupCommit,
    /// Woken whenever locks are released, so blocked requests try again.
    pub(crate) released: Notify,
    pub(crate) config: NodeConfig,
    pub(crate) counters: Counters,
    pub(crate) fail_stop: FailStop,
    /// Txns recovered at start, to be resolved first.
    pub(crate) recovered: Mutex<Vec<TxnId>>,
    /// Set by the disk guard while new Prepares must be refused (see [`crate::disk`]).
    pub(crate) disk: Mutex<Option<DiskRefusal>>,
    pub(crate) disk_degraded: AtomicBool,
    /// The ticket of the last applied write that changed data (`d/` keys): a Read answers
    /// only once it is durable, so no reader sees a value a crash could take back.
    pub(crate) last_data_write: Mutex<Option<Ticket>>,
    /// The change feed: what is durable, and who subscribes (see [`crate::feed`]).
    pub(crate) feed: Feed,
    /// This participant's links to the feeds of its peers (the events protocol).
    pub(crate) links: Links,
}

impl Participant {
    /// Opens the node on `store`, reloading prepared records and re-taking their locks before
    /// anything else can touch the store.
    pub fn open(store: Arc<dyn Store>, config: NodeConfig) -> Result<Arc<Self>, StoreError> {
        let mut core = ParticipantCore::with_limits(Limits {
            max_prepared: config.max_prepared,
            max_locked_keys: config.max_locked_keys,
            barrier_margin_ms: config.outcome_retention.map(|r| r.as_millis() as u64),
        });
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
        let feed = Feed::new(core.outbox().head(), core.outbox().floor());
        Ok(Arc::new(Self {
            feed,
            links: Links::default(),
            core: Mutex::new(core),
            gc: GroupCommit::start(store),
            released: Notify::new(),
            config,
            counters: Counters::default(),
            fail_stop: FailStop::new(),
            recovered: Mutex::new(recovered),
            disk: Mutex::new(None),
            disk_degraded: AtomicBool::new(false),
            last_data_write: Mutex::new(None),
        }))
    }

    pub(crate) fn core(&self) -> MutexGuard<'_, ParticipantCore> {
        self.core.lock().expect("participant core lock poisoned")
    }

    pub(crate) fn store(&self) -> &dyn Store {
        self.gc.store().as_ref()
    }

    /// Subscribes to fatal errors.
    pub fn fatal(&self) -> watch::Receiver<Option<String>> {
        self.fail_stop.subscribe()
    }

    /// Passes a storage result through the fail-stop policy.
    pub(crate) fn check<T>(&self, r: Result<T, StoreError>) -> Result<T, ParticipantError> {
        Ok(self.fail_stop.check(r)?)
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
        let crash = CrashPoints {
            before_durable: Some(failpoints::BEFORE_ONE_PHASE_DURABLE),
            after_durable: Some(failpoints::AFTER_ONE_PHASE_DURABLE),
            on: |a| matches!(a, OnePhaseAnswer::Committed { .. }),
        };
        let answer = self
            .run_unblocked(
                txn,
                crash,
                |core, store| core.commit_one_phase(txn, ops, store, unix_ms()),
                |core, store, holder, waited_ms| {
                    self.check(core.one_phase_lock_wait_over(
                        txn,
                        holder,
                        waited_ms,
                        store,
                        unix_ms(),
                    ))
                },
            )
            .instrument(span.clone())
            .await?;
        let _entered = span.enter();
        let answer = match answer {
            OnePhaseAnswer::Committed { reads } => {
                self.counters.committed.fetch_add(1, Ordering::Relaxed);
                debug!("committed in one phase");
                Ok(reads)
            }
            OnePhaseAnswer::AlreadyCommitted => Ok(Vec::new()),
            OnePhaseAnswer::Refused { reason } => {
                self.counters.aborted.fetch_add(1, Ordering::Relaxed);
                debug!(%reason, "refused a one-phase commit");
                Err(reason)
            }
        };
        txn_metrics::metrics()
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(answer)
    }

    pub async fn commit(&self, txn: &TxnId) -> Result<(), ParticipantError> {
        let span = info_span!("commit", txn = %txn);
        let started = Instant::now();
        let crash = CrashPoints {
            after_durable: Some(failpoints::AFTER_COMMIT_APPLY),
            on: |a| !matches!(a, CommitAnswer::Refused(_)),
            ..CrashPoints::default()
        };
        let answer = self
            .run(crash, |core, store| {
                let prepared_at = core.prepared_at_unix_ms(txn);
                let step = core.commit(txn, store, unix_ms())?;
                if step.answer == CommitAnswer::Committed {
                    self.counted_commit(prepared_at);
                }
                Ok(step)
            })
            .instrument(span.clone())
            .await?;
        match answer {
            CommitAnswer::Committed | CommitAnswer::AlreadyCommitted => {
                txn_metrics::metrics()
                    .commit_seconds
                    .observe(started.elapsed().as_secs_f64());
                span.in_scope(|| debug!("committed"));
                Ok(())
            }
            CommitAnswer::Refused(r) => Err(refusal(txn, r)),
        }
    }

    fn counted_commit(&self, prepared_at_unix_ms: Option<u64>) {
        self.note_in_doubt(prepared_at_unix_ms);
        self.counters.committed.fetch_add(1, Ordering::Relaxed);
    }

    /// Commits many txns with one core lock, one write batch and one durable wait (the
    /// coordinator's CommitBatch). Returns the txns that did not commit, with why.
    pub async fn commit_batch(
        &self,
        txns: &[TxnId],
        forget: &[TxnId],
    ) -> Result<Vec<(TxnId, ParticipantError)>, ParticipantError> {
        let started = Instant::now();
        let crash = CrashPoints {
            after_durable: Some(failpoints::AFTER_COMMIT_APPLY),
            on: |_| true,
            ..CrashPoints::default()
        };
        let obey_forget = self.config.outcome_retention.is_some();
        let answer = self
            .run(crash, |core, store| {
                core.commit_batch(txns, forget, obey_forget, store, unix_ms())
            })
            .await?;
        for (_, prepared_at) in &answer.committed {
            self.counted_commit(Some(*prepared_at));
        }
        let m = txn_metrics::metrics();
        for _ in 0..txns.len().saturating_sub(answer.refused.len()) {
            m.commit_seconds.observe(started.elapsed().as_secs_f64());
        }
        debug!(
            txns = txns.len(),
            failed = answer.refused.len(),
            "committed a batch"
        );
        Ok(answer
            .refused
            .into_iter()
            .map(|(txn, r)| {
                let e = refusal(&txn, r);
                (txn, e)
            })
            .collect())
    }

    /// An Abort from the coordinator (or from an operator when `forced`).
    pub async fn abort(&self, txn: &TxnId, forced: bool) -> Result<(), ParticipantError> {
        let source = if forced {
            AbortSource::Operator
        } else {
            AbortSource::Coordinator
        };
        match self.abort_from(txn, source).await? {
            AbortAnswer::Aborted | AbortAnswer::AlreadyAborted | AbortAnswer::LeftHeld => Ok(()),
            AbortAnswer::Refused(r) => Err(refusal(txn, r)),
        }
    }

    pub(crate) async fn abort_from(
        &self,
        txn: &TxnId,
        source: AbortSource,
    ) -> Result<AbortAnswer, ParticipantError> {
        let span = info_span!("abort", txn = %txn);
        let answer = self
            .run(CrashPoints::default(), |core, store| {
                let prepared_at = core.prepared_at_unix_ms(txn);
                let step = core.abort(txn, source, store, unix_ms())?;
                if step.answer == AbortAnswer::Aborted {
                    self.note_in_doubt(prepared_at);
                    self.counters.aborted.fetch_add(1, Ordering::Relaxed);
                }
                Ok(step)
            })
            .instrument(span.clone())
            .await?;
        span.in_scope(|| debug!(?answer, "abort"));
        Ok(answer)
    }

    /// Applies a decision the resolver learned (see [`ParticipantCore::resolve`]).
    pub(crate) async fn run_resolution(
        &self,
        txn: &TxnId,
        decision: txn_types::types::Decision,
    ) -> Result<Resolved, ParticipantError> {
        let crash = CrashPoints {
            after_durable: Some(failpoints::AFTER_COMMIT_APPLY),
            on: if decision == txn_types::types::Decision::Commit {
                |a: &Resolved| *a == Resolved::Applied
            } else {
                |_: &Resolved| false
            },
            ..CrashPoints::default()
        };
        self.run(crash, |core, store| {
            let prepared_at = core.prepared_at_unix_ms(txn);
            let step = core.resolve(txn, decision, store, unix_ms())?;
            if step.answer == Resolved::Applied && prepared_at.is_some() {
                self.note_in_doubt(prepared_at);
                match decision {
                    txn_types::types::Decision::Commit => &self.counters.committed,
                    txn_types::types::Decision::Abort => &self.counters.aborted,
                }
                .fetch_add(1, Ordering::Relaxed);
            }
            Ok(step)
        })
        .await
    }

    /// Pins a prepared txn for an operator (see [`ParticipantCore::hold`]).
    pub async fn hold(&self, txn: &TxnId) -> Result<TxnStatus, ParticipantError> {
        let status = self
            .run(CrashPoints::default(), |core, store| core.hold(txn, store))
            .await?;
        if status == TxnStatus::Prepared {
            warn!(txn = %txn, "held by an operator: waiting for an explicit Commit or Abort");
        }
        Ok(status)
    }

    /// Undoes a hold; returns the txn's status.
    pub fn release(&self, txn: &TxnId) -> Result<TxnStatus, ParticipantError> {
        let mut core = self.core();
        self.check(core.release(txn, self.store()))
    }

    /// Cooperative termination, asked by another participant of `txn` (see
    /// [`ParticipantCore::query_peer`]).
    pub async fn query_peer(&self, txn: &TxnId) -> Result<TxnStatus, ParticipantError> {
        let status = self
            .run(CrashPoints::default(), |core, store| {
                core.query_peer(txn, store, unix_ms())
            })
            .await?;
        if status == TxnStatus::Aborted {
            debug!(txn = %txn, "peer asked; answered aborted");
        }
        Ok(status)
    }

    /// Runs one saga step. Waits up to the lock wait for prepared 2PC txns holding its keys,
    /// then fails with a retryable error. `deadline_unix_ms` is the saga's (0: none).
    pub async fn execute_step(
        &self,
        saga: &TxnId,
        step: u32,
        deadline_unix_ms: u64,
        ops: &[Op],
        participants: &[String],
    ) -> Result<StepResult, ParticipantError> {
        let at = StepRef {
            saga,
            step,
            deadline_unix_ms,
        };
        let span = info_span!("execute", saga = %saga, step);
        self.refuse_if_disk_degraded()?;
        let crash = CrashPoints {
            after_durable: Some(failpoints::AFTER_STEP_EXECUTED),
            on: |_| true,
            ..CrashPoints::default()
        };
        self.run_unblocked(
            saga,
            crash,
            |core, store| saga::execute(core, at, ops, participants, store, unix_ms()),
            busy,
        )
        .instrument(span)
        .await
    }

    /// Undoes one saga step (or records a null compensation).
    pub async fn compensate_step(
        &self,
        saga: &TxnId,
        step: u32,
        deadline_unix_ms: u64,
        participants: &[String],
    ) -> Result<Compensation, ParticipantError> {
        let at = StepRef {
            saga,
            step,
            deadline_unix_ms,
        };
        let span = info_span!("compensate", saga = %saga, step);
        self.run_unblocked(
            saga,
            CrashPoints::default(),
            |core, store| saga::compensate(core, at, participants, store, unix_ms()),
            busy,
        )
        .instrument(span)
        .await
    }

    fn note_in_doubt(&self, prepared_at_unix_ms: Option<u64>) {
        if let Some(at) = prepared_at_unix_ms {
            let ms = unix_ms().saturating_sub(at);
            self.counters
                .max_in_doubt_ms
                .fetch_max(ms, Ordering::Relaxed);
        }
    }

    /// The coordinator says these sagas have ended: their barriers here may go once each
    /// one's deadline has passed by the retention (see [`saga::end_saga`]). Answered once
    /// that is durable. A participant that keeps every outcome keeps barriers too.
    pub async fn end_sagas(&self, sagas: &[(TxnId, u64)]) -> Result<(), ParticipantError> {
        if self.config.outcome_retention.is_none() {
            return Ok(());
        }
        let now = unix_ms();
        self.run(CrashPoints::default(), |_, _| {
            let mut batch = txn_types::store::WriteBatch::default();
            for (saga, deadline) in sagas {
                batch.append(saga::end_saga(saga, *deadline, now).write);
            }
            Ok(txn_participant_core::step::Step::forced(batch, ()))
        })
        .await
    }

    /// Committed values of `keys`. A key locked for writing by a prepared txn is refused:
    /// its value is undecided, and returning either one could show a reader half a txn.
    /// Answered only once every value read is durable: a one-phase commit or a saga step is
    /// visible as soon as it is applied, and a crash before its sync would take back a value
    /// someone has read. So the read waits for the last data write applied before it.
    pub async fn read(&self, keys: &[Vec<u8>]) -> Result<Vec<KeyValue>, ParticipantError> {
        let (values, written) = {
            let core = self.core();
            if let Err((key, holder)) = core.check_readable(keys) {
                return Err(ParticipantError::Locked {
                    key: String::from_utf8_lossy(&key).into_owned(),
                    holder,
                });
            }
            let values = keys
                .iter()
                .map(|k| {
                    let value =
                        self.check(self.store().get(&txn_participant_core::keys::data_key(k)))?;
                    Ok(KeyValue {
                        key: k.clone(),
                        value,
                    })
                })
                .collect::<Result<Vec<_>, ParticipantError>>()?;
            (
                values,
                *self.last_data_write.lock().expect("last data write"),
            )
        };
        if let Some(ticket) = written {
            self.check(self.gc.wait(ticket).await)?;
        }
        Ok(values)
    }

    /// What this participant knows of `txn`.
    pub fn status(&self, txn: &TxnId) -> Result<TxnStatus, ParticipantError> {
        let core = self.core();
        self.check(core.status(txn, self.store()))
    }

    /// Makes everything written so far durable (used at shutdown).
    pub async fn sync(&self) -> Result<(), ParticipantError> {
        self.check(self.gc.sync_all().await)
    }
}

pub(crate) fn refusal(txn: &TxnId, r: Refusal) -> ParticipantError {
    match r {
        Refusal::Unknown => ParticipantError::UnknownTxn(txn.clone()),
        Refusal::Conflict(msg) => ParticipantError::OutcomeConflict(msg),
    }
}
