//! What happens to a saga after it ended, and how a saga taken over from a gone coordinator
//! (etcd log) is picked up.
//!
//! The client's answer. If the request had a client key, the key's record takes the answer:
//! the driver that ran the request has it, with the reads, and writes it lazily (the saga log
//! already holds the outcome). A driver that took the saga over has no reads: it records the
//! outcome from the log.
//!
//! End notices. The write that ends a saga records `sn/ID` (see
//! [`txn_coordinator_core::saga::Saga::log_write`]); [`EndNotices`] then sends the saga's id
//! and deadline to each of its participants, batched per participant, retried until acked,
//! and deletes the notice once every participant has acked. A participant acks only once its
//! barriers are indexed durably for expiry. Notices survive a restart in the log, and are sent
//! again from it at start; a queue that is full (a participant down for long) leaves the rest
//! in the log, and a rescan picks them up once there is room.
//!
//! Retention. An ended saga's record is kept `--saga-retention-secs` (so `txnctl saga show`
//! finds recently ended ones, and a client key can be answered from it), then dropped by a
//! sweeper that reads the `sx/` index only as far as what is due. If the saga ran under a
//! client key whose record still lacks the answer (its lazy write was lost in a crash), the
//! answer is written into the key's record in the same batch.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use tokio::sync::mpsc;
use tonic::transport::Channel;
use tracing::{debug, info, warn};
use txn_coordinator_core::saga::{
    SAGA_END_NOTICE_PREFIX, SAGA_EXPIRY_PREFIX, Saga, decode_end_notice, due_in_page,
    end_notice_key, id_after,
};
use txn_proto::pb::v1 as pb;
use txn_proto::pb::v1::participant_client::ParticipantClient;
use txn_server::serve::Swept;
use txn_types::backoff::Backoff;
use txn_types::rec::{ClientTxnRecord, SagaEndNotice, SagaState};
use txn_types::record;
use txn_types::store::WriteBatch;
use txn_types::types::{MAX_COMMIT_BATCH, ParticipantId, TxnId};
use txn_types::unix_ms;

use crate::context::Context;
use crate::dedup::{ClientKeys, ClientTag, client_key, saga_answer};
use crate::error::CoordError;
use crate::log::{CoordLog, MAX_LOG_BATCH_OPS};
use crate::saga_driver::SagaDriver;

/// Notices waiting for one participant's EndSagas task; beyond it they wait in the log.
pub const MAX_END_NOTICE_QUEUE: usize = 8 * MAX_COMMIT_BATCH;
/// Most sagas in one EndSagas call.
pub const MAX_END_NOTICE_BATCH: usize = MAX_COMMIT_BATCH;
/// How often the log is read again for notices that did not fit in a queue.
pub const END_NOTICE_RESCAN: Duration = Duration::from_secs(10);
/// Notices read from the log at once (at start, and by a rescan).
const END_NOTICE_SCAN_PAGE: usize = 1_000;
/// Default time an ended saga's log record is kept.
pub const DEFAULT_SAGA_RETENTION: Duration = Duration::from_secs(600);
/// Longest pause between two sweeps of the saga log.
pub const SAGA_SWEEP_INTERVAL: Duration = Duration::from_secs(1);
/// Ended sagas one sweep step drops (bounds one batch and its reads).
pub const SAGA_SWEEP_PAGE: usize = 256;

/// One saga's end, as a participant is told it.
type Ended = (TxnId, u64);

/// The end notices on their way to the participants.
pub struct EndNotices {
    gc: Arc<dyn CoordLog>,
    queues: HashMap<ParticipantId, mpsc::Sender<Ended>>,
    /// Sagas whose notice is queued at every participant, with how many have not acked.
    remaining: Mutex<HashMap<TxnId, usize>>,
    /// Some notice did not fit in a queue: the log must be read again.
    overflowed: AtomicBool,
}

impl EndNotices {
    /// Starts one sending task per participant.
    pub(crate) fn start(
        gc: Arc<dyn CoordLog>,
        participants: &HashMap<ParticipantId, ParticipantClient<Channel>>,
        rpc_timeout: Duration,
        retry: Backoff,
    ) -> Arc<Self> {
        let mut queues = HashMap::new();
        let mut receivers = Vec::new();
        for (id, client) in participants {
            let (tx, rx) = mpsc::channel(MAX_END_NOTICE_QUEUE);
            queues.insert(id.clone(), tx);
            receivers.push((id.clone(), client.clone(), rx));
        }
        let notices = Arc::new(Self {
            gc,
            queues,
            remaining: Mutex::new(HashMap::new()),
            overflowed: AtomicBool::new(false),
        });
        for (id, client, rx) in receivers {
            let n = notices.clone();
            tokio::spawn(n.send_loop(id, client, rx, rpc_timeout, retry.clone()));
        }
        notices
    }

    /// Queues the end of `saga` for each of its participants. A participant this coordinator
    /// no longer knows can never be told: it counts as told.
    pub(crate) fn notify(&self, saga: &TxnId, notice: &SagaEndNotice) {
        let mut remaining = self.remaining.lock().expect("end notices");
        if remaining.contains_key(saga) {
            return;
        }
        let mut queued = 0;
        for p in &notice.participants {
            let queue = ParticipantId::parse("participant", p)
                .ok()
                .and_then(|id| self.queues.get(&id));
            let Some(queue) = queue else {
                warn!(saga = %saga, participant = %p, "saga names an unknown participant; its barriers there stay");
                continue;
            };
            if queue
                .try_send((saga.clone(), notice.deadline_unix_ms))
                .is_err()
            {
                // Left in the log for a rescan: the acks of those queued are not counted,
                // so the notice stays until every participant has had it.
                self.overflowed.store(true, Ordering::Relaxed);
                return;
            }
            queued += 1;
        }
        if queued == 0 {
            drop(remaining);
            self.forget(saga);
        } else {
            remaining.insert(saga.clone(), queued);
        }
    }

    /// One participant acked `saga`'s notice.
    fn acked(&self, saga: &TxnId) {
        let done = {
            let mut remaining = self.remaining.lock().expect("end notices");
            match remaining.get_mut(saga) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                Some(_) => {
                    remaining.remove(saga);
                    true
                }
                None => false,
            }
        };
        if done {
            self.forget(saga);
        }
    }

    /// Deletes the notice, lazily: if the deletion is lost in a crash, the notice is sent
    /// again, which participants take idempotently.
    fn forget(&self, saga: &TxnId) {
        let mut batch = WriteBatch::default();
        batch.delete(end_notice_key(saga));
        if let Err(e) = self.gc.write_lazy(batch) {
            warn!(saga = %saga, error = %e, "could not delete a saga's end notice");
        }
    }

    /// Queues every notice in the log that is not queued yet, a page at a time; stops early
    /// if a queue fills up again.
    pub(crate) async fn rescan(&self) -> Result<usize, txn_types::store::StoreError> {
        self.overflowed.store(false, Ordering::Relaxed);
        let mut start = SAGA_END_NOTICE_PREFIX.to_vec();
        let mut queued = 0;
        loop {
            let page = self
                .gc
                .scan_page(SAGA_END_NOTICE_PREFIX, &start, END_NOTICE_SCAN_PAGE)
                .await?;
            // A page may come back short before the end (a log that merges its own pending
            // deletes into etcd's answer): only an empty page ends the scan.
            for (key, bytes) in &page {
                let saga = id_after(SAGA_END_NOTICE_PREFIX, key)?;
                let notice = decode_end_notice(key, bytes)?;
                self.notify(&saga, &notice);
                if self.overflowed.load(Ordering::Relaxed) {
                    return Ok(queued);
                }
                queued += 1;
            }
            match page.last() {
                Some((last, _)) => start = [last.as_slice(), b"\0"].concat(),
                None => return Ok(queued),
            }
        }
    }

    /// Asks for a read of the log at the next rescan, as after an overflow: for the notices
    /// of a coordinator that is gone.
    pub(crate) fn rescan_soon(&self) {
        self.overflowed.store(true, Ordering::Relaxed);
    }

    /// Reads the log again every [`END_NOTICE_RESCAN`] while some notice did not fit.
    pub(crate) async fn run_rescans(self: Arc<Self>) {
        loop {
            tokio::time::sleep(END_NOTICE_RESCAN).await;
            if self.overflowed.load(Ordering::Relaxed)
                && let Err(e) = self.rescan().await
            {
                warn!(error = %e, "reading saga end notices failed; will retry");
                self.overflowed.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Notices waiting to be acked (for tests and operators).
    pub fn pending(&self) -> usize {
        self.remaining.lock().expect("end notices").len()
    }

    async fn send_loop(
        self: Arc<Self>,
        name: ParticipantId,
        mut client: ParticipantClient<Channel>,
        mut rx: mpsc::Receiver<Ended>,
        rpc_timeout: Duration,
        retry: Backoff,
    ) {
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < MAX_END_NOTICE_BATCH {
                match rx.try_recv() {
                    Ok(e) => batch.push(e),
                    Err(_) => break,
                }
            }
            let mut backoff = retry.clone();
            loop {
                let mut request = txn_server::trace::request(pb::EndSagasRequest {
                    sagas: batch
                        .iter()
                        .map(|(id, deadline)| pb::EndedSaga {
                            saga_id: id.to_string(),
                            deadline_unix_ms: *deadline,
                        })
                        .collect(),
                });
                request.set_timeout(rpc_timeout);
                match client.end_sagas(request).await {
                    Ok(_) => break,
                    Err(s) if s.code() == tonic::Code::Unimplemented => {
                        info!(participant = %name, "participant has no EndSagas; it keeps saga barriers");
                        break;
                    }
                    Err(s) => {
                        debug!(participant = %name, code = ?s.code(), error = %s.message(), "EndSagas failed; retrying");
                        txn_metrics::retried(txn_metrics::RetryKind::SagaEnd);
                        tokio::time::sleep(backoff.failed(rand::random())).await;
                    }
                }
            }
            for (saga, _) in &batch {
                self.acked(saga);
            }
        }
    }
}

impl Context {
    /// One step of the saga log's sweep: drops ended sagas past `retention` at `now_unix_ms`,
    /// a page at a time, answering their client keys from the log first where needed.
    pub(crate) async fn sweep_sagas_step(
        &self,
        retention: Duration,
        now_unix_ms: u64,
    ) -> Result<Swept, CoordError> {
        let cutoff = now_unix_ms.saturating_sub(retention.as_millis() as u64);
        let page = self.check(
            self.gc
                .scan_page(SAGA_EXPIRY_PREFIX, SAGA_EXPIRY_PREFIX, SAGA_SWEEP_PAGE)
                .await,
        )?;
        let (due, more) = self.check(due_in_page(page, cutoff, SAGA_SWEEP_PAGE))?;
        // One saga's key answer and its drops go in one batch; batches stay within what the
        // log takes at once (etcd refuses a transaction of more operations).
        let mut batch = WriteBatch::default();
        for d in &due {
            let mut one = WriteBatch::default();
            if let Some(rec) = self.saga(&d.id).await? {
                crate::dedup::answer_key_from_log(self, &mut one, &d.id, &rec).await?;
            }
            d.drop(&mut one);
            if batch.ops.len() + one.ops.len() > MAX_LOG_BATCH_OPS {
                self.check(self.gc.write_lazy(std::mem::take(&mut batch)))?;
            }
            batch.append(one);
        }
        if !batch.is_empty() {
            self.check(self.gc.write_lazy(batch))?;
        }
        Ok(Swept {
            dropped: due.len(),
            more,
        })
    }

    /// Sweeps the saga log until the process stops (when ended sagas expire at all).
    pub async fn run_saga_sweeper(self: Arc<Self>, retention: Duration) {
        let every = txn_server::serve::sweep_every(retention, SAGA_SWEEP_INTERVAL);
        txn_server::serve::run_sweeper("sweeping ended sagas", every, || {
            self.sweep_sagas_step(retention, txn_types::unix_ms())
        })
        .await
    }
}

impl SagaDriver {
    /// What follows the end of `saga`'s driving (see the module docs); `answer` is the
    /// running request's key and its answer, when this driver ran it.
    pub(crate) async fn finish(
        &self,
        saga: &Saga,
        answer: Option<(&ClientTag, pb::TransactResponse)>,
    ) -> Result<(), CoordError> {
        let id = TxnId::parse("saga_id", saga.id())?;
        let shared = self.gc.shared().is_some();
        let mut batch = WriteBatch::default();
        match answer {
            Some((tag, response)) => {
                ClientKeys::put_record(&mut batch, tag, &id, pb::Protocol::Saga, Some(response))
            }
            None if shared && saga.ended() && !saga.record().client_txn_id.is_empty() => {
                self.answer_from_log(&mut batch, &id, saga).await?;
            }
            None => {}
        }
        // The write that ended the saga moved its record out of the unfinished log already;
        // the retention sweep answers the key from the log if this write is lost.
        if batch.is_empty() {
            Ok(())
        } else {
            self.check(self.gc.write_lazy(batch)).map(|_| ())
        }
    }

    /// Adds the answer of an ended saga under its client key, from its log record (the key
    /// record holds the request's fingerprint; it is left alone if it already has an answer).
    async fn answer_from_log(
        &self,
        batch: &mut WriteBatch,
        id: &TxnId,
        saga: &Saga,
    ) -> Result<(), CoordError> {
        let key_id = TxnId::parse("client_txn_id", &saga.record().client_txn_id)?;
        let key = client_key(&key_id);
        let Some(bytes) = self.check(self.gc.get(&key).await)? else {
            return Ok(());
        };
        let mut rec: ClientTxnRecord =
            self.check(record::decode(&key, &bytes).map_err(Into::into))?;
        if rec.response.is_some() || rec.txn_id != id.as_str() {
            return Ok(());
        }
        rec.response = saga_answer(id, saga.record()).map(|r| r.encode_to_vec());
        rec.at_unix_ms = unix_ms();
        batch.put(key, record::encode(&rec));
        Ok(())
    }

    /// Picks up a saga this coordinator just took over from a gone one: drives it on if it
    /// was running or compensating, keeps it parked, or finishes what its end left undone.
    pub(crate) async fn adopted(self: &Arc<Self>, saga: Saga) -> Result<(), CoordError> {
        let id = TxnId::parse("saga_id", saga.id())?;
        match saga.state() {
            SagaState::Running | SagaState::Compensating => {
                self.track(&id, saga.state());
                self.spawn_saga(saga)
            }
            SagaState::Parked => {
                self.track(&id, SagaState::Parked);
                Ok(())
            }
            _ => {
                // Ended but still in the unfinished log (written by an older version): the
                // write that ends it moves it out, indexes it for expiry and sends its notice.
                self.persist_saga(&saga, true).await?;
                self.finish(&saga, None).await
            }
        }
    }

    /// Refuses an operator's action on a saga another live coordinator drives (etcd log).
    pub(crate) fn owned_here(&self, saga: &Saga) -> Result<(), CoordError> {
        let Some(shared) = self.gc.shared() else {
            return Ok(());
        };
        match saga.owner() {
            Some(owner) if owner == shared.epoch() => Ok(()),
            owner => Err(CoordError::Precondition(format!(
                "saga_id {}: driven by the coordinator of epoch {}; ask that one (txnctl lists \
                 every coordinator's address), or wait until another takes it over",
                saga.id(),
                owner.map_or("?".into(), |o| o.to_string())
            ))),
        }
    }
}
