//! The events protocol's driver at a participant: the source's step of a transfer
//! (StartTransfer), and the consumer that follows every peer's feed and applies what the
//! peers' events ask of this participant. The rules (what a debit, a credit, a refusal and a
//! duplicate do) are the core's ([`txn_participant_core::transfer`]).
//!
//! A feed batch is applied one event per step, each step with the inbox's new position in its
//! own write batch, under the core's lock, and made durable once at the end of the batch
//! (group commit: one fsync for the whole batch, shared with every other writer). Only then is
//! the feed acknowledged: an acknowledgement never runs ahead of what a crash would keep.

use std::sync::Arc;

use futures::future::BoxFuture;
use tonic::transport::Channel;
use tracing::{Instrument, debug, error, info_span};
use txn_participant_core::transfer::{
    Consumed, StartAnswer, TransferRequest, check_batch_start, inbox_key, list_transfers,
    read_inbox, read_transfer,
};
use txn_proto::events::event_from_pb;
use txn_proto::pb::v1 as pb;
use txn_server::failpoint;
use txn_server::feed::{ApplyError, FeedSink, Follow, follow};
use txn_storage::Ticket;
use txn_types::rec::TransferRecord;
use txn_types::unix_ms;

use crate::error::ParticipantError;
use crate::exec::{CrashPoints, busy};
use crate::node::{Participant, failpoints};

/// How long the acknowledgement of a batch that changed nothing durable waits for another
/// writer's sync before it asks for one: progress through other participants' events needs
/// no fsync of its own.
const PROGRESS_PATIENCE: std::time::Duration = std::time::Duration::from_millis(100);

/// Most transfer records one ListTransfers page returns.
pub const MAX_TRANSFERS_PAGE: usize = 10_000;

impl Participant {
    /// The source's step of a transfer (see [`txn_participant_core::transfer`]): answered
    /// once its effect, record and event are durable. Waits for prepared 2PC txns holding its
    /// keys up to the lock wait, then fails with a retryable error.
    pub async fn start_transfer(
        &self,
        req: &TransferRequest,
    ) -> Result<StartAnswer, ParticipantError> {
        let span = info_span!("start_transfer", txn = %req.id);
        self.refuse_if_disk_degraded()?;
        let crash = CrashPoints {
            after_durable: Some(failpoints::AFTER_DEBIT_DURABLE),
            on: |a| matches!(a, StartAnswer::Accepted { .. }),
            ..CrashPoints::default()
        };
        self.run_unblocked(
            &req.id,
            crash,
            |core, store| core.start_transfer(req, store, unix_ms()),
            busy,
        )
        .instrument(span)
        .await
    }

    /// This participant's record of a transfer.
    pub fn transfer_record(&self, id: &str) -> Result<TransferRecord, ParticipantError> {
        self.check(read_transfer(self.store(), id))?
            .ok_or_else(|| ParticipantError::UnknownTransfer(id.to_owned()))
    }

    /// A page of transfer records, after `start_after`.
    pub fn transfer_records(
        &self,
        start_after: &str,
        limit: usize,
    ) -> Result<Vec<(String, TransferRecord)>, ParticipantError> {
        let limit = limit.clamp(1, MAX_TRANSFERS_PAGE);
        self.check(list_transfers(self.store(), start_after, limit))
    }

    /// Follows each peer's feed (`(name, channel)`), applying the events addressed here.
    /// Returns the tasks, which run until aborted.
    pub fn follow_peers(
        self: &Arc<Self>,
        peers: Vec<(String, Channel)>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        peers
            .into_iter()
            .map(|(source, channel)| {
                let f = Follow {
                    source,
                    channel,
                    consumer: self.config.name.clone(),
                    filter: Some(self.config.name.clone()),
                    links: self.links.clone(),
                };
                let sink: Arc<dyn FeedSink> = Arc::new(Inbox(self.clone()));
                tokio::spawn(follow(f, sink))
            })
            .collect()
    }

    /// Applies one batch of `source`'s feed; returns the durable inbox position.
    async fn apply_feed_batch(
        &self,
        source: &str,
        batch: pb::EventBatch,
    ) -> Result<u64, ApplyError> {
        let retry = |e: ParticipantError| ApplyError::Retry(e.to_string());
        check_order(source, &batch)?;
        {
            let _core = self.core();
            let inbox =
                read_inbox(self.store(), &inbox_key(source)).map_err(|e| retry(e.into()))?;
            if let Err(expected) = check_batch_start(&inbox, batch.from_offset) {
                return Err(ApplyError::Gap { expected });
            }
        }
        let me = self.config.name.clone();
        let mut forced: Option<Ticket> = None;
        let mut credited = false;
        for ev in &batch.events {
            let rec = event_from_pb(ev);
            let (applied, answer) = match self.consume_one(&me, source, &rec).await {
                Ok(done) => done,
                Err(e) => {
                    // What was applied stays applied; make it durable before giving up, so the
                    // retry finds the inbox where it is.
                    let _ = self.gc.wait(self.gc.current()).await;
                    return Err(e);
                }
            };
            if applied.is_some() {
                forced = applied;
            }
            match answer {
                Consumed::Credited => credited = true,
                Consumed::RecordHit => error!(
                    txn = %rec.txn_id, source, offset = rec.offset,
                    "an event the inbox took for new was already applied: the inbox rule is broken"
                ),
                Consumed::Duplicate => {
                    debug!(txn = %rec.txn_id, source, offset = rec.offset, "duplicate suppressed")
                }
                _ => {}
            }
        }
        let next = {
            let core = self.core();
            let step = self
                .check(core.consume_end(source, batch.next_offset, self.store()))
                .map_err(retry)?;
            self.apply(&core, step).map_err(retry)?;
            read_inbox(self.store(), &inbox_key(source))
                .map_err(|e| retry(e.into()))?
                .next_offset
        };
        let ticket = self.gc.current();
        let durable = match forced {
            Some(_) => self.gc.wait(ticket).await,
            None => self.gc.wait_patiently(ticket, PROGRESS_PATIENCE).await,
        };
        self.check(durable).map_err(retry)?;
        self.feed.note_durable(ticket);
        if credited {
            failpoint::hit(failpoints::AFTER_CREDIT_DURABLE);
        }
        Ok(next)
    }

    /// One event, applied (not yet durable); waits for prepared txns' locks up to the lock
    /// wait. Returns the step's ticket if it must be durable before the acknowledgement.
    async fn consume_one(
        &self,
        me: &str,
        source: &str,
        ev: &txn_types::rec::EventRecord,
    ) -> Result<(Option<Ticket>, Consumed), ApplyError> {
        let retry = |e: ParticipantError| ApplyError::Retry(e.to_string());
        let started = tokio::time::Instant::now();
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let attempt = {
                let mut core = self.core();
                let attempt = self
                    .check(core.consume(me, source, ev, self.store(), unix_ms()))
                    .map_err(retry)?;
                match attempt {
                    txn_participant_core::step::Attempt::Ready(step) => {
                        Ok(self.apply(&core, step).map_err(retry)?)
                    }
                    txn_participant_core::step::Attempt::Blocked { holder, .. } => Err(holder),
                }
            };
            match attempt {
                Ok(applied) => {
                    if applied.released {
                        self.released.notify_waiters();
                    }
                    return Ok((applied.wait_for, applied.answer));
                }
                Err(holder) => {
                    let deadline = started + self.config.lock_wait;
                    if tokio::time::timeout_at(deadline, released).await.is_err() {
                        return Err(retry(ParticipantError::Busy { holder }));
                    }
                }
            }
        }
    }
}

/// A batch's events must come from `source`, in offset order, inside the range it covers.
fn check_order(source: &str, batch: &pb::EventBatch) -> Result<(), ApplyError> {
    let bad = |why: String| Err(ApplyError::Retry(format!("a malformed batch: {why}")));
    if batch.participant != source {
        return bad(format!("it comes from {:?}", batch.participant));
    }
    if batch.next_offset < batch.from_offset {
        return bad("it ends before it starts".into());
    }
    let mut at = batch.from_offset;
    for ev in &batch.events {
        if ev.offset < at || ev.offset >= batch.next_offset {
            return bad(format!("event {} is out of order or range", ev.offset));
        }
        at = ev.offset + 1;
    }
    Ok(())
}

/// The participant as a consumer of its peers' feeds.
struct Inbox(Arc<Participant>);

impl FeedSink for Inbox {
    fn position(&self, source: &str) -> Result<u64, String> {
        read_inbox(self.0.store(), &inbox_key(source))
            .map(|i| i.next_offset)
            .map_err(|e| e.to_string())
    }

    fn apply<'a>(
        &'a self,
        source: &'a str,
        batch: pb::EventBatch,
    ) -> BoxFuture<'a, Result<u64, ApplyError>> {
        Box::pin(self.0.apply_feed_batch(source, batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(offset: u64) -> pb::Event {
        pb::Event {
            offset,
            ..Default::default()
        }
    }

    #[test]
    fn a_batch_out_of_order_or_from_elsewhere_is_refused() {
        let batch = |events: Vec<pb::Event>| pb::EventBatch {
            participant: "p1".into(),
            from_offset: 5,
            next_offset: 9,
            events,
            ..Default::default()
        };
        assert!(check_order("p1", &batch(vec![ev(5), ev(8)])).is_ok());
        assert!(check_order("p2", &batch(vec![ev(5)])).is_err());
        assert!(check_order("p1", &batch(vec![ev(6), ev(6)])).is_err());
        assert!(check_order("p1", &batch(vec![ev(4)])).is_err());
        assert!(check_order("p1", &batch(vec![ev(9)])).is_err());
    }
}
