//! The transactional outbox and the rules of the change feed.
//!
//! Every committed change at a participant (a two-phase commit, a one-phase commit, a saga
//! step or its compensation, a step of the events protocol) appends an [`EventRecord`] to the
//! outbox **in the same write batch as the change**. So the event is durable exactly when the
//! change is: a crash never leaves a change without its event, or an event without its change.
//! That rule lives here and in the callers in this crate, never in a driver: the model checker
//! runs these same functions.
//!
//! Offsets are dense and increasing per participant: the core hands them out under its lock,
//! and the driver applies each step's batch under the same lock, so batches reach the store in
//! offset order. A crash can only lose a suffix of them (the store keeps a prefix of its
//! batches), and [`Outbox::recover`] resumes after the last one that survived.
//!
//! The feed serves these events to consumers. The rules about who may read what:
//! - only durable events are ever sent ([`read_events`] takes the durable head from the
//!   driver, which knows what its syncs covered);
//! - a consumer registers by subscribing, durably, from an offset ([`subscribe`]); events stay
//!   until every registered consumer has acknowledged them ([`ack`]), and are then pruned
//!   ([`prune`]), unless the retention bound says they must go anyway;
//! - a consumer asking for an offset that is gone, or that never existed, is refused
//!   ([`FeedRefusal::OutOfRange`]), never served from somewhere else.
//!
//! Keys: `e/<offset, 8 bytes big-endian>` events, `f/next` and `f/floor` the feed's next
//! offset and first kept offset, `c/<consumer>` registered consumers.

use txn_types::rec::{ConsumerRecord, EventKind, EventRecord, FeedPosition};
use txn_types::record;
use txn_types::store::{Store, StoreError, WriteBatch};

use crate::step::Step;

pub const EVENT_PREFIX: &[u8] = b"e/";
pub const CONSUMER_PREFIX: &[u8] = b"c/";
const NEXT_KEY: &[u8] = b"f/next";
const FLOOR_KEY: &[u8] = b"f/floor";

/// Most consumers one feed keeps registered. Each one holds back pruning until it acks, and
/// each costs a scan entry at every prune; a few per peer service and read model is the use.
pub const MAX_CONSUMERS: usize = 64;

/// Longest consumer name: the same bound as a participant's name (consumers are named after
/// the participant or read model that consumes).
pub const MAX_CONSUMER_NAME_LEN: usize = txn_types::types::MAX_PARTICIPANT_ID_LEN;

pub fn event_key(offset: u64) -> Vec<u8> {
    [EVENT_PREFIX, &offset.to_be_bytes()].concat()
}

fn consumer_key(consumer: &str) -> Vec<u8> {
    [CONSUMER_PREFIX, consumer.as_bytes()].concat()
}

fn corrupt(key: &[u8], problem: impl Into<String>) -> StoreError {
    StoreError::Corrupt(record::CorruptRecord {
        key: String::from_utf8_lossy(key).into_owned(),
        problem: problem.into(),
    })
}

/// The outbox's in-memory state: where the next event goes and the first one still kept.
#[derive(Default, Debug, Clone, PartialEq, Eq, Hash)]
pub struct Outbox {
    next: u64,
    floor: u64,
}

impl Outbox {
    /// Reads the feed's positions back from the store.
    pub fn recover(store: &dyn Store) -> Result<Self, StoreError> {
        let read = |key: &[u8]| -> Result<u64, StoreError> {
            Ok(match store.get(key)? {
                Some(bytes) => record::decode::<FeedPosition>(key, &bytes)?.offset,
                None => 0,
            })
        };
        let next = read(NEXT_KEY)?;
        let floor = read(FLOOR_KEY)?;
        if floor > next {
            return Err(corrupt(
                FLOOR_KEY,
                format!("the feed's floor {floor} is past its next offset {next}"),
            ));
        }
        Ok(Self { next, floor })
    }

    /// The offset the next event gets: every event below it has been appended (and, once
    /// the batches that carry them are durable, is durable).
    pub fn head(&self) -> u64 {
        self.next
    }

    /// The first event still kept; those below were pruned.
    pub fn floor(&self) -> u64 {
        self.floor
    }

    /// Appends `event` to `batch`, the batch of the change it describes, and returns its
    /// offset. The caller must hand `batch` to the driver as one step, forced: the event is
    /// part of the change.
    pub(crate) fn append(&mut self, batch: &mut WriteBatch, mut event: EventRecord) -> u64 {
        let offset = self.next;
        event.offset = offset;
        batch.put(event_key(offset), record::encode(&event));
        self.next += 1;
        batch.put(
            NEXT_KEY.to_vec(),
            record::encode(&FeedPosition { offset: self.next }),
        );
        offset
    }
}

/// An event describing a change made here by `txn`.
pub(crate) fn event(
    kind: EventKind,
    txn: &str,
    participants: Vec<String>,
    changes: Vec<txn_types::rec::Write>,
    now_unix_ms: u64,
) -> EventRecord {
    EventRecord {
        offset: 0,
        kind: kind as i32,
        txn_id: txn.to_owned(),
        participants,
        changes,
        at_unix_ms: now_unix_ms,
        ..Default::default()
    }
}

/// Why a feed request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedRefusal {
    /// The offset asked for is no longer kept (below `floor`) or was never written (above
    /// `head`, the durable head): serving anything else would skip or invent events.
    OutOfRange { asked: u64, floor: u64, head: u64 },
    /// The feed already has [`MAX_CONSUMERS`] registered consumers.
    TooManyConsumers,
    /// Acknowledged before subscribing, or after being forgotten.
    UnknownConsumer,
    /// An acknowledgement of events that were never sent (beyond the durable head).
    AckBeyondHead { offset: u64, head: u64 },
}

impl std::fmt::Display for FeedRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FeedRefusal::OutOfRange { asked, floor, head } if asked < floor => write!(
                f,
                "offset {asked} is no longer kept: events below {floor} were pruned (the feed \
                 holds {floor}..{head}); the consumer fell behind the retention bound and must \
                 be rebuilt"
            ),
            FeedRefusal::OutOfRange { asked, floor, head } => write!(
                f,
                "offset {asked} is beyond the feed's durable head {head} (it holds \
                 {floor}..{head}): this consumer's position comes from some other history"
            ),
            FeedRefusal::TooManyConsumers => write!(
                f,
                "the feed already has {MAX_CONSUMERS} registered consumers; forget one first"
            ),
            FeedRefusal::UnknownConsumer => {
                write!(f, "no such consumer registered; subscribe first")
            }
            FeedRefusal::AckBeyondHead { offset, head } => write!(
                f,
                "acknowledges offset {offset}, beyond the durable head {head}"
            ),
        }
    }
}

/// A feed request's answer, or why it is refused.
pub type FeedResult<T> = Result<Result<T, FeedRefusal>, StoreError>;

/// Up to `max_events` durable events from `from` on (and below `durable_head`), stopping
/// once `max_bytes` of encoded events are taken (always at least one). A gap is corruption:
/// offsets are dense, and a missing event would be an event lost.
pub fn read_events(
    store: &dyn Store,
    from: u64,
    durable_head: u64,
    max_events: usize,
    max_bytes: usize,
) -> Result<Vec<EventRecord>, StoreError> {
    let wanted = (durable_head.saturating_sub(from)).min(max_events as u64) as usize;
    if wanted == 0 {
        return Ok(Vec::new());
    }
    let mut out = Vec::with_capacity(wanted);
    let mut bytes = 0usize;
    for (key, value) in store.scan_page(EVENT_PREFIX, &event_key(from), wanted)? {
        let ev: EventRecord = record::decode(&key, &value)?;
        let expected = from + out.len() as u64;
        if ev.offset != expected || key != event_key(expected) {
            return Err(corrupt(
                &key,
                format!(
                    "the feed has a gap: expected event {expected}, found {}",
                    ev.offset
                ),
            ));
        }
        bytes += value.len();
        out.push(ev);
        if bytes >= max_bytes {
            break;
        }
    }
    if out.is_empty() {
        return Err(corrupt(
            &event_key(from),
            format!("event {from} is missing below the durable head {durable_head}"),
        ));
    }
    Ok(out)
}

/// Checks that `from` is servable: kept and not beyond the durable head.
pub fn check_range(outbox: &Outbox, from: u64, durable_head: u64) -> Result<(), FeedRefusal> {
    if from < outbox.floor || from > durable_head {
        return Err(FeedRefusal::OutOfRange {
            asked: from,
            floor: outbox.floor,
            head: durable_head,
        });
    }
    Ok(())
}

/// A consumer subscribing from `from`: it needs every event from `from` on, so it is
/// registered (or re-registered) there, durably before any event is sent, since pruning
/// reads these records. A consumer that subscribes again from an earlier offset (a rebuild)
/// holds the events back from there.
pub fn subscribe(
    outbox: &Outbox,
    store: &dyn Store,
    consumer: &str,
    from: u64,
    durable_head: u64,
    now_unix_ms: u64,
) -> FeedResult<Step<()>> {
    if let Err(r) = check_range(outbox, from, durable_head) {
        return Ok(Err(r));
    }
    let key = consumer_key(consumer);
    let rec = match store.get(&key)? {
        Some(bytes) => {
            let mut rec: ConsumerRecord = record::decode(&key, &bytes)?;
            if rec.acked == from {
                return Ok(Ok(Step::reply(())));
            }
            rec.acked = from;
            rec
        }
        None => {
            if store
                .scan_page(CONSUMER_PREFIX, CONSUMER_PREFIX, MAX_CONSUMERS)?
                .len()
                >= MAX_CONSUMERS
            {
                return Ok(Err(FeedRefusal::TooManyConsumers));
            }
            ConsumerRecord {
                acked: from,
                registered_at_unix_ms: now_unix_ms,
                acked_at_unix_ms: now_unix_ms,
            }
        }
    };
    let mut batch = WriteBatch::default();
    batch.put(key, record::encode(&rec));
    Ok(Ok(Step::forced(batch, ())))
}

/// A consumer acknowledges every event below `offset`. Lazy: losing an acknowledgement in a
/// crash only keeps events a little longer. An acknowledgement below the recorded one
/// changes nothing (acknowledgements may arrive out of order).
pub fn ack(
    store: &dyn Store,
    consumer: &str,
    offset: u64,
    durable_head: u64,
    now_unix_ms: u64,
) -> FeedResult<Step<u64>> {
    if offset > durable_head {
        return Ok(Err(FeedRefusal::AckBeyondHead {
            offset,
            head: durable_head,
        }));
    }
    let key = consumer_key(consumer);
    let Some(bytes) = store.get(&key)? else {
        return Ok(Err(FeedRefusal::UnknownConsumer));
    };
    let mut rec: ConsumerRecord = record::decode(&key, &bytes)?;
    if offset <= rec.acked {
        return Ok(Ok(Step::reply(rec.acked)));
    }
    rec.acked = offset;
    rec.acked_at_unix_ms = now_unix_ms;
    let mut batch = WriteBatch::default();
    batch.put(key, record::encode(&rec));
    Ok(Ok(Step::lazy(batch, offset)))
}

/// Where a registered consumer resumes: its acknowledged offset (None if not registered).
pub fn resume_point(store: &dyn Store, consumer: &str) -> Result<Option<u64>, StoreError> {
    let key = consumer_key(consumer);
    match store.get(&key)? {
        Some(bytes) => Ok(Some(record::decode::<ConsumerRecord>(&key, &bytes)?.acked)),
        None => Ok(None),
    }
}

/// Forgets a consumer (an operator's call for a consumer gone for good): it no longer holds
/// events back. Returns false if it was not registered.
pub fn forget_consumer(store: &dyn Store, consumer: &str) -> Result<Step<bool>, StoreError> {
    let key = consumer_key(consumer);
    if store.get(&key)?.is_none() {
        return Ok(Step::reply(false));
    }
    let mut batch = WriteBatch::default();
    batch.delete(key);
    Ok(Step::forced(batch, true))
}

/// Every registered consumer with its record, in name order.
pub fn consumers(store: &dyn Store) -> Result<Vec<(String, ConsumerRecord)>, StoreError> {
    store
        .scan_page(CONSUMER_PREFIX, CONSUMER_PREFIX, MAX_CONSUMERS)?
        .into_iter()
        .map(|(k, v)| {
            let name = String::from_utf8_lossy(&k[CONSUMER_PREFIX.len()..]).into_owned();
            Ok((name, record::decode(&k, &v)?))
        })
        .collect()
}

/// How long pruned events are kept, and how many at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Events every consumer has acknowledged are still kept this long (so a read model can
    /// be rebuilt from them); 0 prunes them at once.
    pub min_age_ms: u64,
    /// The bound: more events than this are pruned even if some consumer has not
    /// acknowledged them (it is then refused with OUT_OF_RANGE, never skipped silently).
    pub max_events: u64,
}

/// One step of pruning: drops, oldest first and at most `page` of them, the events every
/// registered consumer has acknowledged and that are older than the retention, and any
/// beyond the bound. Lazy (a prune lost in a crash is made again). Returns the batch and
/// whether more may be due.
pub fn prune(
    outbox: &mut Outbox,
    store: &dyn Store,
    durable_head: u64,
    retention: Retention,
    now_unix_ms: u64,
    page: usize,
) -> Result<(WriteBatch, bool), StoreError> {
    let acked = consumers(store)?
        .iter()
        .map(|(_, c)| c.acked)
        .min()
        .unwrap_or(durable_head)
        .min(durable_head);
    let over_bound = durable_head.saturating_sub(retention.max_events);
    let old_enough = now_unix_ms.saturating_sub(retention.min_age_ms);
    let mut batch = WriteBatch::default();
    let mut floor = outbox.floor;
    let due_below = acked.max(over_bound);
    let limit = due_below.saturating_sub(floor).min(page as u64) as usize;
    if limit == 0 {
        return Ok((batch, false));
    }
    for (key, value) in store.scan_page(EVENT_PREFIX, &event_key(floor), limit)? {
        let ev: EventRecord = record::decode(&key, &value)?;
        let due = ev.offset < over_bound || (ev.offset < acked && ev.at_unix_ms <= old_enough);
        if ev.offset != floor || !due {
            break;
        }
        batch.delete(key);
        floor += 1;
    }
    // A full page taken, with more before the target: the next step goes on.
    let more = floor - outbox.floor == limit as u64 && floor < due_below;
    if floor > outbox.floor {
        outbox.floor = floor;
        batch.put(
            FLOOR_KEY.to_vec(),
            record::encode(&FeedPosition { offset: floor }),
        );
    }
    Ok((batch, more))
}

#[cfg(test)]
mod tests {
    use super::*;
    use txn_types::store::MemStore;

    fn append(outbox: &mut Outbox, store: &MemStore, at: u64) -> u64 {
        let mut batch = WriteBatch::default();
        let ev = event(EventKind::OnePhaseCommit, "1.1", vec![], vec![], at);
        let offset = outbox.append(&mut batch, ev);
        store.apply(batch).unwrap();
        offset
    }

    fn apply<A>(store: &MemStore, step: Step<A>) -> A {
        store.apply(step.write).unwrap();
        step.answer
    }

    #[test]
    fn offsets_are_dense_and_survive_a_restart() {
        let store = MemStore::new();
        let mut outbox = Outbox::recover(&store).unwrap();
        assert_eq!(append(&mut outbox, &store, 1), 0);
        assert_eq!(append(&mut outbox, &store, 1), 1);
        store.sync().unwrap();
        assert_eq!(append(&mut outbox, &store, 1), 2);
        // A crash keeps what was synced: the next event takes the lost one's offset.
        store.crash();
        let mut outbox = Outbox::recover(&store).unwrap();
        assert_eq!(outbox.head(), 2);
        assert_eq!(append(&mut outbox, &store, 1), 2);
        let events = read_events(&store, 0, 3, 10, usize::MAX).unwrap();
        let offsets: Vec<u64> = events.iter().map(|e| e.offset).collect();
        assert_eq!(offsets, vec![0, 1, 2]);
        // Only below the durable head, and at most the batch's size.
        assert_eq!(read_events(&store, 0, 2, 10, usize::MAX).unwrap().len(), 2);
        assert_eq!(read_events(&store, 1, 3, 1, usize::MAX).unwrap().len(), 1);
        assert_eq!(read_events(&store, 0, 3, 10, 1).unwrap().len(), 1);
        assert!(
            read_events(&store, 3, 3, 10, usize::MAX)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_gap_in_the_feed_is_corruption() {
        let store = MemStore::new();
        let mut outbox = Outbox::default();
        for _ in 0..3 {
            append(&mut outbox, &store, 1);
        }
        let mut batch = WriteBatch::default();
        batch.delete(event_key(1));
        store.apply(batch).unwrap();
        assert!(matches!(
            read_events(&store, 0, 3, 10, usize::MAX),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn events_are_kept_until_every_consumer_acked_them() {
        let store = MemStore::new();
        let mut outbox = Outbox::default();
        for _ in 0..5 {
            append(&mut outbox, &store, 1);
        }
        let keep = Retention {
            min_age_ms: 0,
            max_events: 1_000,
        };
        apply(
            &store,
            subscribe(&outbox, &store, "a", 0, 5, 1).unwrap().unwrap(),
        );
        apply(
            &store,
            subscribe(&outbox, &store, "b", 2, 5, 1).unwrap().unwrap(),
        );
        let (batch, _) = prune(&mut outbox, &store, 5, keep, 10, 100).unwrap();
        assert!(batch.is_empty(), "consumer a needs everything from 0");
        apply(&store, ack(&store, "a", 3, 5, 2).unwrap().unwrap());
        let (batch, more) = prune(&mut outbox, &store, 5, keep, 10, 100).unwrap();
        store.apply(batch).unwrap();
        assert!(!more);
        assert_eq!(outbox.floor(), 2, "b has not acked beyond 2");
        assert_eq!(
            Outbox::recover(&store).unwrap(),
            outbox,
            "the floor is recorded"
        );
        // Asking for a pruned offset, or one beyond the head, is refused.
        assert!(matches!(
            subscribe(&outbox, &store, "a", 1, 5, 3).unwrap(),
            Err(FeedRefusal::OutOfRange { asked: 1, .. })
        ));
        assert!(matches!(
            subscribe(&outbox, &store, "a", 6, 5, 3).unwrap(),
            Err(FeedRefusal::OutOfRange { asked: 6, .. })
        ));
        assert_eq!(
            ack(&store, "a", 6, 5, 3).unwrap(),
            Err(FeedRefusal::AckBeyondHead { offset: 6, head: 5 })
        );
        assert_eq!(
            ack(&store, "nobody", 1, 5, 3).unwrap(),
            Err(FeedRefusal::UnknownConsumer)
        );
        // Forgetting b lets its share go.
        assert!(apply(&store, forget_consumer(&store, "b").unwrap()));
        let (batch, _) = prune(&mut outbox, &store, 5, keep, 10, 100).unwrap();
        store.apply(batch).unwrap();
        assert_eq!(outbox.floor(), 3);
    }

    #[test]
    fn retention_keeps_young_events_and_the_bound_drops_old_ones() {
        let store = MemStore::new();
        let mut outbox = Outbox::default();
        for at in [10, 20, 30, 40] {
            append(&mut outbox, &store, at);
        }
        apply(
            &store,
            subscribe(&outbox, &store, "slow", 0, 4, 1)
                .unwrap()
                .unwrap(),
        );
        apply(&store, ack(&store, "slow", 4, 4, 2).unwrap().unwrap());
        // Acked by everyone, but only those older than 15 ms at time 40 go.
        let young = Retention {
            min_age_ms: 15,
            max_events: 1_000,
        };
        let (batch, _) = prune(&mut outbox, &store, 4, young, 40, 100).unwrap();
        store.apply(batch).unwrap();
        assert_eq!(outbox.floor(), 2);
        // A consumer that never acks holds events only up to the bound.
        apply(
            &store,
            subscribe(&outbox, &store, "stuck", 2, 4, 1)
                .unwrap()
                .unwrap(),
        );
        let bounded = Retention {
            min_age_ms: 0,
            max_events: 1,
        };
        let (batch, _) = prune(&mut outbox, &store, 4, bounded, 40, 100).unwrap();
        store.apply(batch).unwrap();
        assert_eq!(outbox.floor(), 3);
        // Pages: one event per step.
        let mut outbox2 = Outbox::default();
        let store2 = MemStore::new();
        for _ in 0..3 {
            append(&mut outbox2, &store2, 1);
        }
        let all = Retention {
            min_age_ms: 0,
            max_events: 1_000,
        };
        let (batch, more) = prune(&mut outbox2, &store2, 3, all, 5, 1).unwrap();
        store2.apply(batch).unwrap();
        assert!(more);
        assert_eq!(outbox2.floor(), 1);
    }

    #[test]
    fn too_many_consumers_are_refused() {
        let store = MemStore::new();
        let outbox = Outbox::default();
        for i in 0..MAX_CONSUMERS {
            apply(
                &store,
                subscribe(&outbox, &store, &format!("c{i}"), 0, 0, 1)
                    .unwrap()
                    .unwrap(),
            );
        }
        assert_eq!(
            subscribe(&outbox, &store, "one-more", 0, 0, 1).unwrap(),
            Err(FeedRefusal::TooManyConsumers)
        );
        // A registered one may subscribe again.
        assert!(subscribe(&outbox, &store, "c0", 0, 0, 1).unwrap().is_ok());
    }
}
