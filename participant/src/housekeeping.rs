//! The participant's housekeeping and inspection: the disk guard's verdict, the refusals at
//! its bounds, the sweeper of expired outcomes and saga barriers, metrics gauges, statistics
//! and the operators' views (a page at a time). None of it decides an outcome; what may be
//! dropped and when is the core's rule ([`due_outcomes`], [`due_barriers`]).
//!
//! [`due_outcomes`]: txn_participant_core::keys::due_outcomes
//! [`due_barriers`]: txn_participant_core::saga::due_barriers

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::{info, warn};
use txn_metrics::{RefusalLabels, RefusalReason};
use txn_participant_core::keys::{OUTCOME_SWEEP_PAGE, due_outcomes, expire_outcomes};
use txn_participant_core::limits::Overload;
use txn_participant_core::saga::{BARRIER_SWEEP_PAGE, drop_barriers, due_barriers};
use txn_server::serve::Swept;
use txn_types::types::{CommitPoint, TxnId};
use txn_types::unix_ms;

use crate::disk::DiskRefusal;
use crate::error::ParticipantError;
use crate::node::{MAX_OUTCOMES_PAGE, Participant};

/// Longest pause between two sweeps (shorter when the retention is short). Each sweep reads
/// the expiry indexes only as far as what is due, so it is cheap to run often, and a sweep
/// every second keeps what is kept close to exactly the retention.
pub const OUTCOME_SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Most prepared txns in one page of InDoubt.
pub const IN_DOUBT_PAGE: usize = 1_000;
/// Byte budget of one page of an operator's listing: a quarter of the message limit, so a
/// page stays well inside it whatever the entries hold.
pub const MAX_PAGE_BYTES: usize = txn_types::types::MAX_MESSAGE_BYTES / 4;

/// Most unsettled transfers the statistics count (exact below it).
const UNSETTLED_COUNTED: usize = 100_000;

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
    /// The feed's durable head, and this participant's transfers not settled yet.
    pub events_head: u64,
    pub unsettled_transfers: u64,
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
    /// The txn commits at its votes.
    pub commit_at_votes: bool,
}

impl Participant {
    /// Refuses new work that writes (a Prepare, a saga Execute) while the disk guard says so.
    pub(crate) fn refuse_if_disk_degraded(&self) -> Result<(), ParticipantError> {
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

    /// The error of a Prepare refused at one of the bounds, counted in the metrics.
    pub(crate) fn overloaded(&self, overload: Overload) -> ParticipantError {
        let (reason, flag) = match overload {
            Overload::PreparedTxns { .. } => (RefusalReason::MaxPrepared, "--max-prepared-txns"),
            Overload::LockedKeys { .. } => (RefusalReason::MaxLockedKeys, "--max-locked-keys"),
        };
        txn_metrics::metrics()
            .refused
            .get_or_create(&RefusalLabels { reason })
            .inc();
        ParticipantError::Overloaded(format!(
            "participant {} {overload} ({flag}); the txn is refused, retry later",
            self.config.name
        ))
    }

    /// One step of the sweep of what has outlived `retention` at `now_unix_ms`: expired
    /// outcomes, the barriers of ended sagas past their deadline by the retention, and the
    /// settled transfer records of the events protocol as old.
    /// What is due is read with no lock held; the outcomes are checked (one point read each)
    /// and dropped under the core's lock, a page of [`OUTCOME_SWEEP_PAGE`] at a time, so a
    /// step that rewrites one of them meanwhile is never undone. Barriers need no check: no
    /// call can write one for an ended saga past its deadline. Drops are lazy: one lost in a
    /// crash is made again by the next sweep.
    pub fn sweep_step(
        &self,
        retention: Duration,
        now_unix_ms: u64,
    ) -> Result<Swept, ParticipantError> {
        let cutoff = now_unix_ms.saturating_sub(retention.as_millis() as u64);
        let (outcomes, more_outcomes) =
            self.check(due_outcomes(self.store(), cutoff, OUTCOME_SWEEP_PAGE))?;
        let (barriers, more_barriers) =
            self.check(due_barriers(self.store(), cutoff, BARRIER_SWEEP_PAGE))?;
        // Settled transfers of the events protocol: nothing writes a settled record again,
        // but the page is read and dropped under the core's lock, like a step's own writes.
        let (transfers, more_transfers) = {
            let _core = self.core();
            let (batch, more) = self.check(txn_participant_core::transfer::sweep_settled(
                self.store(),
                cutoff,
                OUTCOME_SWEEP_PAGE,
            ))?;
            let n = batch.ops.len();
            if !batch.is_empty() {
                self.check(self.gc.write_lazy(batch))?;
            }
            (n, more)
        };
        let dropped = outcomes.len() + barriers.len() + transfers;
        if !outcomes.is_empty() {
            let _core = self.core();
            let batch = self.check(expire_outcomes(self.store(), outcomes))?;
            self.check(self.gc.write_lazy(batch))?;
        }
        if !barriers.is_empty() {
            self.check(self.gc.write_lazy(drop_barriers(barriers)))?;
        }
        Ok(Swept {
            dropped,
            more: more_outcomes || more_barriers || more_transfers,
        })
    }

    /// Sweeps everything due at `now_unix_ms`, step by step; returns how many outcome and
    /// barrier index entries it handled.
    pub fn sweep_outcomes(
        &self,
        retention: Duration,
        now_unix_ms: u64,
    ) -> Result<usize, ParticipantError> {
        let mut swept = 0;
        loop {
            let step = self.sweep_step(retention, now_unix_ms)?;
            swept += step.dropped;
            if !step.more {
                return Ok(swept);
            }
        }
    }

    /// Sweeps expired outcomes and barriers until the process stops, when they expire at all.
    pub async fn run_outcome_sweeper(self: Arc<Self>) {
        let Some(retention) = self.config.outcome_retention else {
            return;
        };
        let every = txn_server::serve::sweep_every(retention, OUTCOME_SWEEP_INTERVAL);
        txn_server::serve::run_sweeper("sweeping expired outcomes and barriers", every, || {
            std::future::ready(self.sweep_step(retention, unix_ms()))
        })
        .await
    }

    /// Sets the state gauges of the metrics.
    pub fn refresh_metrics(&self) {
        txn_metrics::metrics()
            .in_doubt
            .set(self.core().in_doubt() as i64);
    }

    /// One page of the prepared txns with ids after `after`, in id order, with their age,
    /// participants, locked keys, epoch and hold flag: at most `size` txns and about
    /// [`MAX_PAGE_BYTES`] (always at least one). Also the id to continue after, if any.
    pub fn in_doubt_page(
        &self,
        after: Option<&TxnId>,
        size: usize,
    ) -> (Vec<InDoubtTxn>, Option<TxnId>) {
        let size = size.clamp(1, IN_DOUBT_PAGE);
        let now = unix_ms();
        let core = self.core();
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut rest = core.prepared_after(after).peekable();
        while let Some(&(t, r)) = rest.peek() {
            let keys = r.exclusive_keys.iter().chain(&r.shared_keys);
            let size_of = t.as_str().len()
                + r.participants.iter().map(|p| p.len() + 2).sum::<usize>()
                + keys.map(|k| k.len() + 3).sum::<usize>()
                + 48;
            if out.len() == size || (!out.is_empty() && bytes + size_of > MAX_PAGE_BYTES) {
                break;
            }
            bytes += size_of;
            out.push(InDoubtTxn {
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
                commit_at_votes: r.commit_at_votes,
            });
            rest.next();
        }
        let next = rest.peek().and(out.last()).map(|t| t.txn.clone());
        (out, next)
    }

    /// One page of saga barrier records, from `start` (a barrier key) on.
    pub fn list_barriers(
        &self,
        start: &[u8],
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, txn_types::rec::BarrierRecord)>, ParticipantError> {
        let limit = limit.clamp(1, MAX_OUTCOMES_PAGE);
        self.check(txn_participant_core::saga::list_barriers(
            self.store(),
            start,
            limit,
        ))
    }

    /// One page of recorded outcomes, after `start_after`.
    pub fn list_outcomes(
        &self,
        start_after: &str,
        limit: usize,
    ) -> Result<Vec<txn_participant_core::keys::ListedOutcome>, ParticipantError> {
        let limit = limit.clamp(1, MAX_OUTCOMES_PAGE);
        self.check(txn_participant_core::keys::list_outcomes(
            self.store(),
            start_after,
            limit,
        ))
    }

    /// Records held, by key prefix of the storage layout (a scan: for operators and soaks).
    pub fn record_counts(&self) -> Result<Vec<(String, u64)>, String> {
        use txn_participant_core::keys::{
            DATA_PREFIX, EXPIRY_PREFIX, OUTCOME_PREFIX, PREPARED_PREFIX,
        };
        use txn_participant_core::outbox::{CONSUMER_PREFIX, EVENT_PREFIX};
        use txn_participant_core::saga::{BARRIER_EXPIRY_PREFIX, BARRIER_PREFIX};
        use txn_participant_core::transfer::{
            IN_FLIGHT_PREFIX, INBOX_PREFIX, TRANSFER_EXPIRY_PREFIX, TRANSFER_PREFIX,
        };
        txn_server::serve::count_records(
            self.store(),
            &[
                DATA_PREFIX,
                PREPARED_PREFIX,
                OUTCOME_PREFIX,
                EXPIRY_PREFIX,
                BARRIER_PREFIX,
                BARRIER_EXPIRY_PREFIX,
                EVENT_PREFIX,
                CONSUMER_PREFIX,
                TRANSFER_PREFIX,
                IN_FLIGHT_PREFIX,
                TRANSFER_EXPIRY_PREFIX,
                INBOX_PREFIX,
            ],
        )
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
            events_head: self.feed.durable_head(),
            unsettled_transfers: txn_participant_core::transfer::unsettled_transfers(
                self.store(),
                UNSETTLED_COUNTED,
            )
            .unwrap_or(0) as u64,
        }
    }

    /// Prepared txns, with the participants of each.
    pub fn in_doubt(&self) -> Vec<(TxnId, Vec<String>, CommitPoint)> {
        self.core()
            .prepared()
            .map(|(t, r)| {
                let point = if r.commit_at_votes {
                    CommitPoint::Votes
                } else {
                    CommitPoint::Decision
                };
                (t.clone(), r.participants.clone(), point)
            })
            .collect()
    }
}
