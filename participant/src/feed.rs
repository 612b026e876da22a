//! The change feed's driver: which events are durable, the Subscribe stream with its flow
//! control, acknowledgements, and pruning. What may be sent, who is registered and what may
//! be pruned are the core's rules ([`txn_participant_core::outbox`]); this module only knows
//! when a write became durable and how to stream.
//!
//! **Only durable events are sent.** The core hands out offsets under its lock, and the
//! driver applies each batch under the same lock, so batches reach the store in offset order
//! and get group-commit tickets in the same order. Each step that appended events notes
//! (ticket, head after it); when a wait on a ticket returns, every event noted at or below
//! that ticket is durable, and the durable head moves past them. A subscriber never reads
//! beyond that head, so it never sees an event a crash could still take back.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use txn_storage::Ticket;

/// Most events in one batch of the feed: bounds a message and the work one consumer step
/// does (a read model applies a batch in one write).
pub const MAX_FEED_BATCH: usize = 256;
/// Most encoded bytes of events in one batch (always at least one event): keeps a batch well
/// inside the 4 MiB gRPC message bound, since one event may be up to about 1 MiB.
pub const FEED_BATCH_BYTES: usize = 1024 * 1024;
/// Most events sent to one subscription that its consumer has not acknowledged yet; then the
/// stream waits for an Ack. Bounds what a slow consumer makes the server hold in flight.
pub const MAX_UNACKED_EVENTS: u64 = 4 * MAX_FEED_BATCH as u64;
/// Batches buffered between a subscription's reader and the network, per subscriber.
pub const FEED_CHANNEL_BATCHES: usize = 2;
/// An idle subscription gets an empty batch this often: it carries the head (the consumer's
/// lag) and finds a subscriber that went away.
pub const FEED_HEARTBEAT: Duration = Duration::from_secs(1);
/// A filtered subscription (only the events addressed to one participant) still reports its
/// progress through events left out at least every this many offsets, so its consumer can
/// acknowledge them and let them be pruned.
pub const FILTERED_PROGRESS_EVENTS: u64 = MAX_FEED_BATCH as u64;
/// Events one prune step deletes (bounds one write batch).
pub const EVENT_PRUNE_PAGE: usize = 10_000;
/// How often the pruner runs.
pub const EVENT_PRUNE_INTERVAL: Duration = Duration::from_secs(1);
/// Default age of acknowledged events before they are pruned: a read model can be rebuilt
/// from its feeds within this window. 0 prunes as soon as every consumer is past an event.
pub const DEFAULT_EVENT_RETENTION: Duration = Duration::from_secs(3600);
/// Default bound on events kept, whoever has not acknowledged them: about 200 MB of bank
/// events, the disk a participant may spend on consumers that stopped.
pub const DEFAULT_MAX_RETAINED_EVENTS: u64 = 1_000_000;

/// The feed's view of durability and its subscribers.
pub struct Feed {
    /// Events appended but not yet known durable: (ticket of the batch, head after it), in
    /// ticket order.
    pending: Mutex<Pending>,
    /// Every event below this offset is durable.
    durable: watch::Sender<u64>,
    /// Each registered consumer's acknowledged offset as this process last saw it, watched
    /// by its subscriptions (flow control).
    acks: Mutex<HashMap<String, watch::Sender<u64>>>,
    /// Subscriptions being served now, per consumer.
    connected: Mutex<HashMap<String, usize>>,
    /// The first event still kept.
    floor: AtomicU64,
}

struct Pending {
    queue: VecDeque<(Ticket, u64)>,
    /// The head after the last step noted (the outbox's head as the driver last saw it).
    applied_head: u64,
}

impl Feed {
    /// A feed whose events below `head` are durable (as at start, after the recovery sync),
    /// and those below `floor` pruned.
    pub fn new(head: u64, floor: u64) -> Self {
        Self {
            pending: Mutex::new(Pending {
                queue: VecDeque::new(),
                applied_head: head,
            }),
            durable: watch::channel(head).0,
            acks: Mutex::new(HashMap::new()),
            connected: Mutex::new(HashMap::new()),
            floor: AtomicU64::new(floor),
        }
    }

    /// A step's batch was applied with `ticket`, and the outbox's head is now `head`. The
    /// caller holds the core's lock, so notes come in ticket order.
    pub(crate) fn note_applied(&self, ticket: Ticket, head: u64) {
        let mut p = self.pending.lock().expect("feed lock");
        if head > p.applied_head {
            p.applied_head = head;
            p.queue.push_back((ticket, head));
        }
    }

    /// The head after the last step applied (the outbox's, as the driver last noted it).
    pub(crate) fn applied_head(&self) -> u64 {
        self.pending.lock().expect("feed lock").applied_head
    }

    /// Everything up to `ticket` is durable: the events it covers may be sent.
    pub(crate) fn note_durable(&self, ticket: Ticket) {
        let mut head = None;
        {
            let mut p = self.pending.lock().expect("feed lock");
            while p.queue.front().is_some_and(|(t, _)| *t <= ticket) {
                head = p.queue.pop_front().map(|(_, h)| h);
            }
        }
        if let Some(h) = head {
            self.durable.send_if_modified(|d| {
                let moved = h > *d;
                *d = (*d).max(h);
                moved
            });
        }
    }

    /// Every event below this offset is durable.
    pub fn durable_head(&self) -> u64 {
        *self.durable.borrow()
    }

    pub(crate) fn watch_durable(&self) -> watch::Receiver<u64> {
        self.durable.subscribe()
    }

    /// The acknowledged offset of `consumer` moved to `offset` (or it subscribed from there).
    pub(crate) fn set_acked(&self, consumer: &str, offset: u64, lower: bool) {
        let mut acks = self.acks.lock().expect("feed lock");
        match acks.get(consumer) {
            Some(tx) => {
                tx.send_if_modified(|a| {
                    let next = if lower { offset } else { (*a).max(offset) };
                    let moved = next != *a;
                    *a = next;
                    moved
                });
            }
            None => {
                acks.insert(consumer.to_owned(), watch::channel(offset).0);
            }
        }
    }

    pub(crate) fn watch_acked(&self, consumer: &str, from: u64) -> watch::Receiver<u64> {
        let mut acks = self.acks.lock().expect("feed lock");
        acks.entry(consumer.to_owned())
            .or_insert_with(|| watch::channel(from).0)
            .subscribe()
    }

    pub(crate) fn forget(&self, consumer: &str) {
        self.acks.lock().expect("feed lock").remove(consumer);
    }

    /// A subscription of `consumer` started (`up`) or ended.
    pub(crate) fn set_connected(&self, consumer: &str, up: bool) {
        let mut c = self.connected.lock().expect("feed lock");
        let n = c.entry(consumer.to_owned()).or_default();
        *n = if up { *n + 1 } else { n.saturating_sub(1) };
    }

    pub fn is_connected(&self, consumer: &str) -> bool {
        self.connected
            .lock()
            .expect("feed lock")
            .get(consumer)
            .is_some_and(|n| *n > 0)
    }

    /// The first event still kept, as the pruner last left it.
    pub fn floor(&self) -> u64 {
        self.floor.load(Ordering::SeqCst)
    }

    pub(crate) fn set_floor(&self, floor: u64) {
        self.floor.fetch_max(floor, Ordering::SeqCst);
    }
}
