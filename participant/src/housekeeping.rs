//! The participant's housekeeping and inspection: the disk guard's verdict, the sweeper of
//! expired outcomes, metrics gauges, statistics and the operators' views. None of it decides
//! an outcome; what may be dropped and when is the core's rule ([`sweep_expired`]).
//!
//! [`sweep_expired`]: txn_participant_core::keys::sweep_expired

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::{info, warn};
use txn_metrics::RefusalLabels;
use txn_participant_core::keys::OUTCOME_SWEEP_PAGE;
use txn_types::types::{CommitPoint, TxnId};
use txn_types::unix_ms;

use crate::disk::DiskRefusal;
use crate::error::ParticipantError;
use crate::node::{MAX_OUTCOMES_PAGE, Participant};

/// Longest pause between two sweeps (shorter when the retention is short).
pub const OUTCOME_SWEEP_INTERVAL: Duration = Duration::from_secs(30);

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

    /// Drops the expiring outcomes recorded before `now - retention` (see
    /// [`txn_participant_core::keys::sweep_expired`]), and the settled transfer records of
    /// the events protocol as old (see [`txn_participant_core::transfer::sweep_settled`]).
    /// Each page is applied under the core lock, lazily: a drop lost in a crash is made again
    /// by the next sweep. Returns how many index entries it handled.
    pub fn sweep_outcomes(
        &self,
        retention: Duration,
        now_unix_ms: u64,
    ) -> Result<usize, ParticipantError> {
        let cutoff = now_unix_ms.saturating_sub(retention.as_millis() as u64);
        let mut swept = 0;
        for sweep in [
            txn_participant_core::keys::sweep_expired,
            txn_participant_core::transfer::sweep_settled,
        ] {
            swept += self.sweep_pages(|store| sweep(store, cutoff, OUTCOME_SWEEP_PAGE))?;
        }
        Ok(swept)
    }

    /// Applies `page` until it says nothing more is due; returns the writes it made.
    fn sweep_pages(
        &self,
        page: impl Fn(
            &dyn txn_types::store::Store,
        )
            -> Result<(txn_types::store::WriteBatch, bool), txn_types::store::StoreError>,
    ) -> Result<usize, ParticipantError> {
        let mut swept = 0;
        loop {
            let core = self.core();
            let (batch, more) = self.check(page(self.store()))?;
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
        let every = txn_server::serve::sweep_every(retention, OUTCOME_SWEEP_INTERVAL);
        txn_server::serve::run_sweeper("sweeping expired outcomes", every, || {
            self.sweep_outcomes(retention, unix_ms())
        })
        .await
    }

    /// Sets the state gauges of the metrics.
    pub fn refresh_metrics(&self) {
        txn_metrics::metrics()
            .in_doubt
            .set(self.core().in_doubt() as i64);
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
                commit_at_votes: r.commit_at_votes,
            })
            .collect();
        out.sort_by_key(|t| std::cmp::Reverse(t.age_ms));
        out
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
