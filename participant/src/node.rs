//! The participant driver: runs [`ParticipantCore`] against a real store. It holds the core's
//! mutex only for in-memory work and `Store::apply` (microseconds), never across an await;
//! durability waits happen outside it through the group-commit flusher.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};
use tracing::{Instrument, debug, info, info_span, warn};
use txn_proto::durable::GroupCommit;
use txn_proto::store::{Store, StoreError};
use txn_proto::types::{Decision, KeyValue, Resolution, TxnId, Vote};
use txn_proto::unix_ms;

use crate::core::{
    AbortStep, CommitStep, ParticipantCore, PrepareRequest, PrepareStep, Refusal, TxnStatus,
    data_key,
};
use crate::error::ParticipantError;

/// Most keys one Read request may name.
pub const MAX_READ_KEYS: usize = 1024;

#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// How long a Prepare waits for a conflicting lock before it votes NO. Bounded so that
    /// a distributed deadlock costs at most this long, never a hang.
    pub lock_wait: Duration,
    /// How long a prepared txn may wait for its decision before this participant asks the
    /// coordinator (Resolve).
    pub resolve_after: Duration,
    /// How often the resolver looks for txns to ask about.
    pub resolve_interval: Duration,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            lock_wait: Duration::from_millis(50),
            resolve_after: Duration::from_millis(2000),
            resolve_interval: Duration::from_millis(500),
        }
    }
}

#[derive(Default)]
struct Counters {
    committed: AtomicU64,
    aborted: AtomicU64,
}

/// A snapshot of the node's counters.
#[derive(Debug, Clone, Copy)]
pub struct NodeStats {
    pub fsyncs: u64,
    pub durable_writes: u64,
    pub committed: u64,
    pub aborted: u64,
    pub in_doubt: u64,
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
        let (fatal, _) = watch::channel(None);
        Ok(Arc::new(Self {
            core: Mutex::new(core),
            gc: GroupCommit::start(store),
            released: Notify::new(),
            config,
            counters: Counters::default(),
            fatal,
            recovered: Mutex::new(recovered),
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
        self.prepare_inner(req).instrument(span).await
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
                    self.check(self.gc.wait(ticket).await)?;
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

    pub async fn commit(&self, txn: &TxnId) -> Result<(), ParticipantError> {
        let span = info_span!("commit", txn = %txn);
        async {
            let ticket = {
                let mut core = self.core();
                match self.check(core.commit(txn, self.store(), unix_ms()))? {
                    CommitStep::Apply { batch } => {
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
            debug!("committed");
            Ok(())
        }
        .instrument(span)
        .await
    }

    pub async fn abort(&self, txn: &TxnId) -> Result<(), ParticipantError> {
        let _span = info_span!("abort", txn = %txn).entered();
        {
            let mut core = self.core();
            match self.check(core.abort(txn, self.store(), unix_ms()))? {
                // Presumed abort: the abort record is not forced.
                AbortStep::Apply { batch } => {
                    self.check(self.gc.write_lazy(batch))?;
                    self.counters.aborted.fetch_add(1, Ordering::Relaxed);
                }
                AbortStep::AlreadyAborted => {}
                AbortStep::Refused(r) => return Err(refusal(txn, r)),
            }
        }
        self.released.notify_waiters();
        debug!("aborted");
        Ok(())
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

    pub fn stats(&self) -> NodeStats {
        let f = self.gc.stats();
        NodeStats {
            fsyncs: f.fsyncs,
            durable_writes: f.durable_writes,
            committed: self.counters.committed.load(Ordering::Relaxed),
            aborted: self.counters.aborted.load(Ordering::Relaxed),
            in_doubt: self.core().in_doubt() as u64,
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

    /// Asks the coordinator about txns that have waited too long for their decision, and
    /// applies the answer. Runs until the returned future is dropped. `resolve` performs one
    /// Resolve call.
    pub async fn run_resolver<F, Fut>(self: Arc<Self>, resolve: F)
    where
        F: Fn(TxnId) -> Fut,
        Fut: std::future::Future<Output = Result<Resolution, String>>,
    {
        let mut first_seen: HashMap<TxnId, Instant> = HashMap::new();
        let start = Instant::now();
        let recovered = std::mem::take(&mut *self.recovered.lock().expect("recovered lock"));
        for t in recovered {
            // Recovered txns lost their decision messages with the crash: ask at once.
            first_seen.insert(
                t,
                start
                    .checked_sub(self.config.resolve_after)
                    .unwrap_or(start),
            );
        }
        let mut tick = tokio::time::interval(self.config.resolve_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = Instant::now();
            let current: Vec<TxnId> = self.core().prepared().map(|(t, _)| t.clone()).collect();
            first_seen.retain(|t, _| current.contains(t));
            for t in current {
                let seen = *first_seen.entry(t.clone()).or_insert(now);
                if now.duration_since(seen) < self.config.resolve_after {
                    continue;
                }
                let result = match resolve(t.clone()).await {
                    Ok(Resolution::Decided(Decision::Commit)) => self.commit(&t).await,
                    Ok(Resolution::Decided(Decision::Abort)) => self.abort(&t).await,
                    Ok(Resolution::Pending) => Ok(()),
                    Err(e) => {
                        warn!(txn = %t, error = %e, "resolve failed; will ask again");
                        Ok(())
                    }
                };
                if let Err(e) = result {
                    warn!(txn = %t, error = %e, "applying the resolved decision failed");
                }
            }
        }
    }
}

fn refusal(txn: &TxnId, r: Refusal) -> ParticipantError {
    match r {
        Refusal::Unknown => ParticipantError::UnknownTxn(txn.clone()),
        Refusal::Conflict(msg) => ParticipantError::OutcomeConflict(msg),
    }
}
