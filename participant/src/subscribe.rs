//! The participant's side of its change feed: registering consumers, serving a subscription
//! as a stream of batches with flow control, acknowledgements, reads for checkers, the feed's
//! status, and the pruner. The rules (what may be sent, kept and pruned) are the core's
//! ([`txn_participant_core::outbox`]); see [`crate::feed`] for how durability is tracked.

use std::sync::Arc;
use std::time::Instant;

use futures::Stream;
use tokio::sync::mpsc;
use tracing::{debug, warn};
use txn_participant_core::outbox::{self, FeedRefusal};
use txn_participant_core::transfer::{addressed_to, inboxes, unsettled_transfers};
use txn_proto::events::event_to_pb;
use txn_proto::pb::v1 as pb;
use txn_types::rec::EventRecord;
use txn_types::store::StoreError;
use txn_types::unix_ms;

use crate::error::ParticipantError;
use crate::exec::CrashPoints;
use crate::feed::{
    EVENT_PRUNE_INTERVAL, EVENT_PRUNE_PAGE, FEED_BATCH_BYTES, FEED_CHANNEL_BATCHES, FEED_HEARTBEAT,
    FILTERED_PROGRESS_EVENTS, MAX_FEED_BATCH, MAX_UNACKED_EVENTS,
};
use crate::node::Participant;

/// Most transfers counted as unsettled in a status (the count is exact below it).
const MAX_UNSETTLED_COUNTED: usize = 100_000;

/// A subscription, checked.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub consumer: String,
    pub from: u64,
    /// Only the events addressed to this participant.
    pub filter: Option<String>,
    pub max_batch: usize,
}

/// The feed's state, for operators.
#[derive(Debug, Clone)]
pub struct FeedStatus {
    pub head: u64,
    pub floor: u64,
    pub consumers: Vec<pb::ConsumerInfo>,
    pub inboxes: Vec<pb::InboxInfo>,
    pub unsettled_transfers: u64,
}

fn refused<T>(r: Result<T, FeedRefusal>) -> Result<T, ParticipantError> {
    r.map_err(ParticipantError::Feed)
}

impl Participant {
    /// Registers `sub.consumer` from `sub.from`, durably (events are kept for it from there).
    pub async fn register_consumer(&self, sub: &Subscription) -> Result<(), ParticipantError> {
        let answer = self
            .run(CrashPoints::default(), |core, store| {
                let durable = self.feed.durable_head();
                Ok(
                    match outbox::subscribe(
                        core.outbox(),
                        store,
                        &sub.consumer,
                        sub.from,
                        durable,
                        unix_ms(),
                    )? {
                        Ok(step) => step.map(Ok),
                        Err(r) => txn_participant_core::step::Step::reply(Err(r)),
                    },
                )
            })
            .await?;
        refused(answer)?;
        self.feed.set_acked(&sub.consumer, sub.from, true);
        Ok(())
    }

    /// Serves `sub` as a stream of batches until the subscriber goes away. Registers first.
    pub async fn subscribe(
        self: &Arc<Self>,
        sub: Subscription,
    ) -> Result<impl Stream<Item = Result<pb::EventBatch, tonic::Status>> + use<>, ParticipantError>
    {
        self.register_consumer(&sub).await?;
        let (tx, mut rx) = mpsc::channel(FEED_CHANNEL_BATCHES);
        let node = self.clone();
        tokio::spawn(async move {
            node.feed.set_connected(&sub.consumer, true);
            let consumer = sub.consumer.clone();
            if let Err(status) = node.serve(sub, &tx).await {
                let _ = tx.send(Err(status)).await;
            }
            node.feed.set_connected(&consumer, false);
        });
        Ok(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }

    /// The body of a subscription: reads durable events from the position on, within the
    /// window its consumer's acknowledgements allow, and sends them. Ends with Ok when the
    /// subscriber went away, with the status to send when it must stop.
    async fn serve(
        &self,
        sub: Subscription,
        tx: &mpsc::Sender<Result<pb::EventBatch, tonic::Status>>,
    ) -> Result<(), tonic::Status> {
        let mut stopping = txn_server::process::stopping();
        let mut durable = self.feed.watch_durable();
        let mut acked = self.feed.watch_acked(&sub.consumer, sub.from);
        let mut pos = sub.from;
        let mut sent = sub.from;
        let mut last_send = Instant::now();
        loop {
            let stop = *stopping.borrow();
            if stop {
                return Ok(());
            }
            let head = *durable.borrow_and_update();
            let ack = *acked.borrow_and_update();
            // Flow control: nothing at or beyond `ack + MAX_UNACKED_EVENTS` until it acks.
            let upto = head.min(ack + MAX_UNACKED_EVENTS);
            if upto > pos {
                let events = self.read_window(pos, upto, sub.max_batch)?;
                let next = pos + events.len() as u64;
                let events: Vec<EventRecord> = match &sub.filter {
                    Some(me) => events.into_iter().filter(|e| addressed_to(e, me)).collect(),
                    None => events,
                };
                let due = sub.filter.is_none()
                    || !events.is_empty()
                    || next - sent >= FILTERED_PROGRESS_EVENTS
                    || last_send.elapsed() >= FEED_HEARTBEAT;
                pos = next;
                if due {
                    if tx.send(Ok(self.batch(sent, next, &events))).await.is_err() {
                        return Ok(());
                    }
                    sent = next;
                    last_send = Instant::now();
                }
                continue;
            }
            let idle = FEED_HEARTBEAT.saturating_sub(last_send.elapsed());
            tokio::select! {
                _ = durable.changed() => {}
                _ = acked.changed() => {}
                _ = tx.closed() => return Ok(()),
                _ = stopping.changed() => return Ok(()),
                _ = tokio::time::sleep(idle) => {
                    // A heartbeat: the head, and any progress through events filtered out.
                    if tx.send(Ok(self.batch(sent, pos, &[]))).await.is_err() {
                        return Ok(());
                    }
                    sent = pos;
                    last_send = Instant::now();
                }
            }
        }
    }

    /// Durable events in `[pos, upto)`, a batch's worth, or the status that ends the stream
    /// (the position was pruned meanwhile, or the feed is corrupt).
    fn read_window(
        &self,
        pos: u64,
        upto: u64,
        max_batch: usize,
    ) -> Result<Vec<EventRecord>, tonic::Status> {
        if pos < self.feed.floor() {
            return Err(self.out_of_range(pos));
        }
        match outbox::read_events(self.store(), pos, upto, max_batch, FEED_BATCH_BYTES) {
            Ok(events) => Ok(events),
            // Pruned between the check and the read (the bound overtook this consumer).
            Err(StoreError::Corrupt(_)) if pos < self.feed.floor() => Err(self.out_of_range(pos)),
            Err(e) => Err(match self.check::<()>(Err(e)) {
                Err(e) => e.into(),
                Ok(()) => tonic::Status::internal("unreachable"),
            }),
        }
    }

    fn out_of_range(&self, pos: u64) -> tonic::Status {
        ParticipantError::Feed(FeedRefusal::OutOfRange {
            asked: pos,
            floor: self.feed.floor(),
            head: self.feed.durable_head(),
        })
        .into()
    }

    fn batch(&self, from: u64, next: u64, events: &[EventRecord]) -> pb::EventBatch {
        pb::EventBatch {
            participant: self.config.name.clone(),
            from_offset: from,
            next_offset: next,
            events: events
                .iter()
                .map(|e| event_to_pb(&self.config.name, e))
                .collect(),
            head: self.feed.durable_head(),
            floor: self.feed.floor(),
        }
    }

    /// Where `consumer` resumes (its acknowledged offset), if it is registered.
    pub fn resume_point(&self, consumer: &str) -> Result<Option<u64>, ParticipantError> {
        self.check(outbox::resume_point(self.store(), consumer))
    }

    /// `consumer` has processed every event below `offset`; returns its acknowledged offset.
    pub async fn ack_events(&self, consumer: &str, offset: u64) -> Result<u64, ParticipantError> {
        let acked = self
            .run(CrashPoints::default(), |_, store| {
                let durable = self.feed.durable_head();
                Ok(
                    match outbox::ack(store, consumer, offset, durable, unix_ms())? {
                        Ok(step) => step.map(Ok),
                        Err(r) => txn_participant_core::step::Step::reply(Err(r)),
                    },
                )
            })
            .await?;
        let acked = refused(acked)?;
        self.feed.set_acked(consumer, acked, false);
        Ok(acked)
    }

    /// Durable events from `from`, at most `limit`, without registering anyone.
    pub fn read_feed(&self, from: u64, limit: usize) -> Result<pb::EventBatch, ParticipantError> {
        let durable = self.feed.durable_head();
        refused(outbox::check_range(self.core().outbox(), from, durable))?;
        let limit = limit.clamp(1, MAX_FEED_BATCH);
        let events = self
            .read_window(from, durable, limit)
            .map_err(|s| match s.code() {
                tonic::Code::OutOfRange => ParticipantError::Feed(FeedRefusal::OutOfRange {
                    asked: from,
                    floor: self.feed.floor(),
                    head: durable,
                }),
                _ => ParticipantError::Store(StoreError::Failed(s.message().to_owned())),
            })?;
        let next = from + events.len() as u64;
        Ok(self.batch(from, next, &events))
    }

    /// Forgets a consumer for good (it holds no events back any more).
    pub async fn forget_consumer(&self, consumer: &str) -> Result<bool, ParticipantError> {
        let forgotten = self
            .run(CrashPoints::default(), |_, store| {
                outbox::forget_consumer(store, consumer)
            })
            .await?;
        self.feed.forget(consumer);
        Ok(forgotten)
    }

    /// The feed's head, floor, consumers, and this participant's own inboxes.
    pub fn feed_status(&self) -> Result<FeedStatus, ParticipantError> {
        let head = self.feed.durable_head();
        let store = self.store();
        let consumers = self
            .check(outbox::consumers(store))?
            .into_iter()
            .map(|(name, c)| pb::ConsumerInfo {
                connected: self.feed.is_connected(&name),
                lag: head.saturating_sub(c.acked),
                name,
                acked: c.acked,
                registered_at_unix_ms: c.registered_at_unix_ms,
                acked_at_unix_ms: c.acked_at_unix_ms,
            })
            .collect();
        let links = self.links.lock().expect("links lock").clone();
        let mut sources: Vec<String> = links.keys().cloned().collect();
        let recorded = self.check(inboxes(store))?;
        for (s, _) in &recorded {
            if !sources.contains(s) {
                sources.push(s.clone());
            }
        }
        sources.sort();
        let inboxes = sources
            .into_iter()
            .map(|source| {
                let rec = recorded
                    .iter()
                    .find(|(s, _)| *s == source)
                    .map(|(_, r)| *r)
                    .unwrap_or_default();
                let link = links.get(&source).cloned().unwrap_or_default();
                pb::InboxInfo {
                    source,
                    next_offset: rec.next_offset,
                    applied: rec.applied,
                    duplicates: rec.duplicates,
                    connected: link.connected,
                    last_error: link.last_error,
                    source_head: link.head,
                }
            })
            .collect();
        Ok(FeedStatus {
            head,
            floor: self.feed.floor(),
            consumers,
            inboxes,
            unsettled_transfers: self.check(unsettled_transfers(store, MAX_UNSETTLED_COUNTED))?
                as u64,
        })
    }

    /// Prunes what the retention allows (see [`outbox::prune`]), a page per core lock, lazily.
    /// Returns how many events went.
    pub fn prune_events(&self, now_unix_ms: u64) -> Result<usize, ParticipantError> {
        let mut pruned = 0;
        loop {
            let mut core = self.core();
            let durable = self.feed.durable_head();
            let before = core.outbox().floor();
            let (batch, more) = self.check(outbox::prune(
                core.outbox_mut(),
                self.store(),
                durable,
                self.config.event_retention,
                now_unix_ms,
                EVENT_PRUNE_PAGE,
            ))?;
            let floor = core.outbox().floor();
            if !batch.is_empty() {
                self.check(self.gc.write_lazy(batch))?;
            }
            drop(core);
            self.feed.set_floor(floor);
            pruned += (floor - before) as usize;
            if !more {
                return Ok(pruned);
            }
        }
    }

    /// Runs [`Participant::prune_events`] until the process stops.
    pub async fn run_event_pruner(self: Arc<Self>) {
        loop {
            tokio::time::sleep(EVENT_PRUNE_INTERVAL).await;
            match self.prune_events(unix_ms()) {
                Ok(0) => {}
                Ok(n) => debug!(events = n, floor = self.feed.floor(), "pruned the feed"),
                Err(e) => warn!(error = %e, "pruning the feed failed; will retry"),
            }
        }
    }

    /// The feed's durable head.
    pub fn events_head(&self) -> u64 {
        self.feed.durable_head()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Condvar, Mutex};

    use txn_types::store::{MemStore, Pairs, Store, StoreError, WriteBatch};
    use txn_types::types::{Op, TxnId};

    use crate::node::{NodeConfig, Participant};

    /// A store whose syncs wait while the gate is closed: a write can be applied and held
    /// back from durability for as long as a test needs.
    #[derive(Default)]
    struct Gated {
        inner: MemStore,
        closed: Mutex<bool>,
        opened: Condvar,
    }

    impl Gated {
        fn set(&self, closed: bool) {
            *self.closed.lock().unwrap() = closed;
            self.opened.notify_all();
        }
    }

    impl Store for Gated {
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.get(key)
        }
        fn scan_prefix(&self, prefix: &[u8]) -> Result<Pairs, StoreError> {
            self.inner.scan_prefix(prefix)
        }
        fn scan_page(&self, p: &[u8], s: &[u8], l: usize) -> Result<Pairs, StoreError> {
            self.inner.scan_page(p, s, l)
        }
        fn apply(&self, batch: WriteBatch) -> Result<(), StoreError> {
            self.inner.apply(batch)
        }
        fn sync(&self) -> Result<(), StoreError> {
            let mut closed = self.closed.lock().unwrap();
            while *closed {
                closed = self.opened.wait(closed).unwrap();
            }
            self.inner.sync()
        }
    }

    /// A committed change is in the store before it is durable; its event is sent only once
    /// the sync that covers it has returned.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_event_is_sent_only_once_durable() {
        let store = Arc::new(Gated::default());
        let node = Participant::open(store.clone(), NodeConfig::default()).unwrap();
        store.set(true);
        let txn = TxnId::parse("t", "1.1").unwrap();
        let ops = vec![Op::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
        }];
        let commit = {
            let (node, txn) = (node.clone(), txn.clone());
            tokio::spawn(async move { node.commit_one_phase(&txn, &ops).await })
        };
        // Applied: in the store, though not durable (a Read would wait for the sync).
        let key = txn_participant_core::keys::data_key(b"k");
        while store.get(&key).unwrap().is_none() {
            tokio::task::yield_now().await;
        }
        assert_eq!(node.events_head(), 0, "applied, not durable: not sent");
        assert!(node.read_feed(0, 10).unwrap().events.is_empty());
        store.set(false);
        commit.await.unwrap().unwrap().unwrap();
        assert_eq!(node.events_head(), 1);
        let batch = node.read_feed(0, 10).unwrap();
        assert_eq!(batch.events[0].txn_id, "1.1");
    }
}
