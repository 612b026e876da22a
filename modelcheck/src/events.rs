//! The events protocol and the outbox/inbox rules as stateright actors, over the real
//! participant core ([`ParticipantCore::start_transfer`], [`ParticipantCore::consume`],
//! [`read_events`]) and the real [`MemStore`].
//!
//! Actors: a client that asks the source (p1) to start one transfer of 1 from `alice` (1) to
//! `bob` (0) at the destination (p2); the two participants. The feed is modelled as each
//! participant sending every event it has made durable to the other, once, on an unordered,
//! duplicating network: any event can come again any number of times, in any order, which is
//! at least once and more. A consumer drops an event that starts past its inbox (a real one
//! subscribes again from its inbox). Each participant may crash once and restarts with what it
//! synced; events it had sent stay in the network.
//!
//! Checked, always: the credit and the refund each apply at most once; a duplicate is always
//! an inbox hit (the transfer record's tripwire never fires); at each participant the change,
//! its transfer record and its event are durable together or not at all; no credit without a
//! durable debit; "accepted" only once the debit is durable. Eventually: the transfer settles
//! (credited, or refunded after a refusal).
//!
//! Planted bugs ([`Bugs`], switches in the model's drivers only): the inbox stored apart from
//! the effect, the event written outside the change's batch, the feed sending an event
//! before it is durable. Each must be found.

use std::borrow::Cow;
use std::sync::Arc;

use stateright::actor::{Actor, ActorModel, ActorModelState, Id, Network, Out};
use stateright::{Expectation, Model, Property};
use txn_participant_core::core::ParticipantCore;
use txn_participant_core::keys::data_key;
use txn_participant_core::outbox::{event_key, read_events};
use txn_participant_core::step::{Attempt, Durability, Step};
use txn_participant_core::transfer::{
    Consumed, StartAnswer, TransferRequest, check_batch_start, inbox_key, read_inbox, read_transfer,
};
use txn_types::rec::{EventKind, EventRecord, TransferState};
use txn_types::store::{MemStore, Store, WriteBatch, WriteOp};
use txn_types::types::{Op, ParticipantId, TxnId, decode_counter, encode_counter};

use crate::checked::Checked;

const CLIENT: usize = 0;
const SOURCE: usize = 1;
const DESTINATION: usize = 2;

fn name(i: usize) -> &'static str {
    if i == SOURCE { "p1" } else { "p2" }
}

pub fn transfer_id() -> TxnId {
    TxnId::generated(1, 1)
}

/// Driver bugs the checker must catch. Never in a service: switches of this model's actors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Bugs {
    /// The consumer writes its inbox in a batch of its own, after the effect is durable.
    pub inbox_apart: bool,
    /// The source writes the transfer's event in a batch of its own, after the change.
    pub event_apart: bool,
    /// The feed sends events as soon as they are applied, before they are durable.
    pub send_before_durable: bool,
}

/// One check's setup.
#[derive(Debug, Clone, Default)]
pub struct Setup {
    /// The destination's check fails: the transfer is refused and refunded.
    pub refuse: bool,
    pub bugs: Bugs,
}

impl Setup {
    fn request(&self) -> TransferRequest {
        let dest_max = if self.refuse { Some(0) } else { None };
        TransferRequest {
            id: transfer_id(),
            source: ParticipantId::parse("p", "p1").expect("valid"),
            destination: ParticipantId::parse("p", "p2").expect("valid"),
            source_ops: vec![Op::Add {
                key: b"alice".to_vec(),
                delta: -1,
                min: Some(0),
                max: None,
            }],
            destination_ops: vec![Op::Add {
                key: b"bob".to_vec(),
                delta: 1,
                min: None,
                max: dest_max,
            }],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Msg {
    Start,
    Answer {
        accepted: bool,
    },
    /// One event of the sender's feed, encoded.
    Event(Vec<u8>),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer {
    /// A bugged driver's deferred write (and, for a deferred answer, the answer).
    Deferred,
}

/// What a participant did, across crashes (ghost state for the properties).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Ghost {
    /// The transfer record's tripwire fired: an event the inbox took for new was applied.
    pub record_hits: u8,
    /// Duplicates the inbox suppressed.
    pub duplicates: u8,
    pub restarts: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Part {
    pub core: ParticipantCore,
    pub store: MemStore,
    /// Events below this offset have been sent (they stay in the network).
    pub sent: u64,
    /// A bugged driver's writes not applied yet (key, value or deletion), and whether the
    /// client waits for them.
    pub deferred: Option<(Deferred, bool)>,
    pub ghost: Ghost,
}

/// Writes a bugged driver has not applied yet: (key, value or deletion).
pub type Deferred = Vec<(Vec<u8>, Option<Vec<u8>>)>;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum State {
    Client { accepted: bool },
    Part(Box<Part>),
}

/// What a crash keeps: the store (its synced part is what comes back) and the ghost.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Disk {
    store: MemStore,
    ghost: Ghost,
}

#[derive(Debug, Clone)]
pub struct Node {
    index: usize,
    setup: Arc<Setup>,
}

fn split(batch: WriteBatch, apart: impl Fn(&[u8]) -> bool) -> (WriteBatch, WriteBatch) {
    let (mut keep, mut later) = (WriteBatch::default(), WriteBatch::default());
    for op in batch.ops {
        let key = match &op {
            WriteOp::Put(k, _) | WriteOp::Delete(k) => k.clone(),
        };
        if apart(&key) {
            later.ops.push(op);
        } else {
            keep.ops.push(op);
        }
    }
    (keep, later)
}

fn ops(batch: WriteBatch) -> Deferred {
    batch
        .ops
        .into_iter()
        .map(|op| match op {
            WriteOp::Put(k, v) => (k, Some(v)),
            WriteOp::Delete(k) => (k, None),
        })
        .collect()
}

impl Node {
    /// Carries a step out as the driver does (apply; sync if forced), or as a bugged driver
    /// does with the part it defers. Returns whether the answer may go out now.
    fn carry_out<A>(
        &self,
        p: &mut Part,
        step: Step<A>,
        apart: impl Fn(&[u8]) -> bool,
        client: bool,
    ) -> bool {
        let forced = step.durability == Durability::Forced;
        let (now, later) = split(step.write, apart);
        p.store.apply(now).expect("mem store");
        if self.setup.bugs.send_before_durable && forced {
            p.deferred = Some((ops(later), client));
            return false;
        }
        if forced {
            p.store.sync().expect("mem store");
        }
        if !later.is_empty() {
            p.deferred = Some((ops(later), false));
        }
        true
    }

    /// Sends the events not sent yet: the durable ones, or (bug) every applied one.
    fn publish(&self, p: &mut Part, o: &mut Out<Self>) {
        let view = if self.setup.bugs.send_before_durable {
            p.store.clone()
        } else {
            p.store.durable_view()
        };
        let head = txn_participant_core::outbox::Outbox::recover(&view)
            .expect("recover")
            .head();
        if head <= p.sent {
            return;
        }
        let peer = Id::from(if self.index == SOURCE {
            DESTINATION
        } else {
            SOURCE
        });
        for ev in read_events(&view, p.sent, head, usize::MAX, usize::MAX).expect("events") {
            o.send(peer, Msg::Event(txn_types::record::encode(&ev)));
        }
        p.sent = head;
    }

    fn on_start_part(&self) -> Part {
        let store = MemStore::new();
        if self.index == SOURCE {
            let mut seed = WriteBatch::default();
            seed.put(data_key(b"alice"), encode_counter(1));
            store.apply(seed).expect("mem store");
            store.sync().expect("mem store");
        }
        Part {
            core: ParticipantCore::new(),
            store,
            sent: 0,
            deferred: None,
            ghost: Ghost::default(),
        }
    }

    fn restart(&self, disk: &Disk) -> Part {
        let store = disk.store.clone();
        store.crash();
        let mut core = ParticipantCore::new();
        core.recover(&store).expect("recover");
        let sent = core.outbox().head();
        let mut ghost = disk.ghost.clone();
        ghost.restarts += 1;
        Part {
            core,
            store,
            sent,
            deferred: None,
            ghost,
        }
    }

    fn start(&self, p: &mut Part, src: Id, o: &mut Out<Self>) {
        let req = self.setup.request();
        let Attempt::Ready(step) = p.core.start_transfer(&req, &p.store, 0).expect("start") else {
            unreachable!("no 2PC locks in this model")
        };
        let accepted = !matches!(step.answer, StartAnswer::Rejected { .. });
        let event_apart = self.setup.bugs.event_apart;
        let apart = |k: &[u8]| event_apart && (k.starts_with(b"e/") || k.starts_with(b"f/"));
        if self.carry_out(p, step, apart, true) {
            o.send(src, Msg::Answer { accepted });
        }
        self.publish(p, o);
    }

    fn consume(&self, p: &mut Part, src: Id, bytes: &[u8], o: &mut Out<Self>) {
        let ev: EventRecord = txn_types::record::decode(b"event", bytes).expect("an event");
        let source = name(usize::from(src));
        let inbox = read_inbox(&p.store, &inbox_key(source)).expect("inbox");
        if check_batch_start(&inbox, ev.offset).is_err() {
            return;
        }
        let me = name(self.index);
        let Attempt::Ready(step) = p
            .core
            .consume(me, source, &ev, &p.store, 0)
            .expect("consume")
        else {
            unreachable!("no 2PC locks in this model")
        };
        match step.answer {
            Consumed::RecordHit => p.ghost.record_hits += 1,
            Consumed::Duplicate => {
                // Its only write counts duplicates (statistics); the model leaves the count out
                // so that endless redelivery does not make endless states.
                p.ghost.duplicates = 1;
                return;
            }
            _ => {}
        }
        let inbox_apart = self.setup.bugs.inbox_apart;
        let ikey = inbox_key(source);
        self.carry_out(
            p,
            step,
            |k: &[u8]| inbox_apart && k == ikey.as_slice(),
            false,
        );
        self.publish(p, o);
    }

    fn deferred(&self, p: &mut Part, o: &mut Out<Self>) {
        if let Some((later, answer)) = p.deferred.take() {
            let mut batch = WriteBatch::default();
            for (k, v) in later {
                match v {
                    Some(v) => batch.put(k, v),
                    None => batch.delete(k),
                };
            }
            p.store.apply(batch).expect("mem store");
            p.store.sync().expect("mem store");
            if answer {
                o.send(Id::from(CLIENT), Msg::Answer { accepted: true });
            }
            self.publish(p, o);
        }
    }
}

impl Actor for Node {
    type Msg = Msg;
    type State = State;
    type Timer = Timer;
    type Random = ();
    type Storage = Disk;

    fn on_start(&self, _id: Id, disk: &Option<Disk>, o: &mut Out<Self>) -> State {
        if self.index == CLIENT {
            o.send(Id::from(SOURCE), Msg::Start);
            return State::Client { accepted: false };
        }
        let p = match disk {
            Some(d) => self.restart(d),
            None => self.on_start_part(),
        };
        o.save(Disk {
            store: p.store.clone(),
            ghost: p.ghost.clone(),
        });
        State::Part(Box::new(p))
    }

    fn on_msg(&self, _id: Id, state: &mut Cow<State>, src: Id, msg: Msg, o: &mut Out<Self>) {
        let mut next = state.as_ref().clone();
        match (&mut next, msg) {
            (State::Client { accepted }, Msg::Answer { accepted: a }) => *accepted |= a,
            (State::Part(p), Msg::Start) if self.index == SOURCE => self.start(p, src, o),
            (State::Part(p), Msg::Event(bytes)) => self.consume(p, src, &bytes, o),
            _ => return,
        }
        self.finish(state, next, o);
    }

    fn on_timeout(&self, _id: Id, state: &mut Cow<State>, _: &Timer, o: &mut Out<Self>) {
        let mut next = state.as_ref().clone();
        if let State::Part(p) = &mut next {
            self.deferred(p, o);
        }
        self.finish(state, next, o);
    }
}

impl Node {
    fn finish(&self, state: &mut Cow<State>, next: State, o: &mut Out<Self>) {
        if let State::Part(p) = &next {
            if p.deferred.is_some() {
                o.set_timer(Timer::Deferred, stateright::actor::model_timeout());
            }
            o.save(Disk {
                store: p.store.clone(),
                ghost: p.ghost.clone(),
            });
        }
        if next != **state {
            *state = Cow::Owned(next);
        }
    }
}

pub type EventsModel = Checked<Node, ()>;
pub type SysState = ActorModelState<Node, ()>;

/// The model of `setup`, each participant crashing at most once.
pub fn model(setup: Setup) -> EventsModel {
    let setup = Arc::new(setup);
    let inner = ActorModel::new((), ())
        .actors((0..3).map(|index| Node {
            index,
            setup: setup.clone(),
        }))
        .init_network(Network::new_unordered_duplicating([]))
        .max_crashes(1);
    let mut m = Checked { inner, properties };
    // One crash per participant: a second one would end the run with it down for good.
    m.inner.within_boundary = |_, s| {
        !s.crashed[CLIENT]
            && [SOURCE, DESTINATION]
                .iter()
                .all(|&i| part(s, i).ghost.restarts + u8::from(s.crashed[i]) <= 1)
    };
    m
}

fn part(s: &SysState, i: usize) -> &Part {
    match &*s.actor_states[i] {
        State::Part(p) => p,
        State::Client { .. } => unreachable!("actors 1 and 2 are participants"),
    }
}

fn parts(s: &SysState) -> impl Iterator<Item = &Part> {
    [SOURCE, DESTINATION].into_iter().map(|i| part(s, i))
}

fn accepted(s: &SysState) -> bool {
    matches!(&*s.actor_states[CLIENT], State::Client { accepted: true })
}

fn counter(store: &dyn Store, key: &[u8]) -> i64 {
    decode_counter(store.get(&data_key(key)).expect("mem store").as_deref()).expect("counter")
}

fn state_of(store: &dyn Store) -> Option<TransferState> {
    read_transfer(store, transfer_id().as_str())
        .expect("record")
        .map(|r| TransferState::try_from(r.state).expect("a state"))
}

fn has_event(store: &dyn Store, kind: EventKind) -> bool {
    store
        .scan_prefix(b"e/")
        .expect("mem store")
        .iter()
        .any(|(k, v)| {
            let ev: EventRecord = txn_types::record::decode(k, v).expect("an event");
            ev.kind == kind as i32
                && ev.txn_id == transfer_id().as_str()
                && *k == event_key(ev.offset)
        })
}

/// At the source: the debit's change, record and event all there or none; the same for the
/// refund.
fn source_atomic(store: &dyn Store) -> bool {
    let alice = counter(store, b"alice");
    let debit = has_event(store, EventKind::TransferDebit);
    let refund = has_event(store, EventKind::TransferRefund);
    match state_of(store) {
        None => alice == 1 && !debit && !refund,
        Some(TransferState::Accepted | TransferState::Credited) => alice == 0 && debit && !refund,
        Some(TransferState::Refunded) => alice == 1 && debit && refund,
        Some(_) => false,
    }
}

/// At the destination: the credit's change, record and event, or the refusal's record and
/// event, all there or none.
fn destination_atomic(store: &dyn Store) -> bool {
    let bob = counter(store, b"bob");
    let credit = has_event(store, EventKind::TransferCredit);
    let refusal = has_event(store, EventKind::TransferRefused);
    match state_of(store) {
        None => bob == 0 && !credit && !refusal,
        Some(TransferState::Credited) => bob == 1 && credit && !refusal,
        Some(TransferState::Refused) => bob == 0 && refusal && !credit,
        Some(_) => false,
    }
}

fn settled(s: &SysState) -> bool {
    let source = state_of(&part(s, SOURCE).store);
    let dest = state_of(&part(s, DESTINATION).store);
    matches!(
        (source, dest),
        (Some(TransferState::Credited), Some(TransferState::Credited))
            | (Some(TransferState::Refunded), Some(TransferState::Refused))
    )
}

fn properties() -> Vec<Property<EventsModel>> {
    vec![
        Property::always("the credit applies at most once", |_, s| {
            let d = &part(s, DESTINATION).store;
            counter(d, b"bob") <= 1 && counter(&d.durable_view(), b"bob") <= 1
        }),
        Property::always("the refund applies at most once", |_, s| {
            let src = &part(s, SOURCE).store;
            counter(src, b"alice") <= 1 && counter(&src.durable_view(), b"alice") <= 1
        }),
        Property::always("a duplicate is an inbox hit", |_, s| {
            parts(s).all(|p| p.ghost.record_hits == 0)
        }),
        Property::always("change, record and event are atomic", |_, s| {
            let src = &part(s, SOURCE).store;
            let dst = &part(s, DESTINATION).store;
            source_atomic(src)
                && source_atomic(&src.durable_view())
                && destination_atomic(dst)
                && destination_atomic(&dst.durable_view())
        }),
        Property::always("no credit without a durable debit", |_, s| {
            counter(&part(s, DESTINATION).store.durable_view(), b"bob") == 0
                || state_of(&part(s, SOURCE).store.durable_view()).is_some()
        }),
        Property::always("accepted means the debit is durable", |_, s| {
            !accepted(s) || state_of(&part(s, SOURCE).store.durable_view()).is_some()
        }),
        Property::eventually("the transfer settles", |_, s| settled(s)),
        Property::sometimes("credited", |_, s| {
            state_of(&part(s, DESTINATION).store) == Some(TransferState::Credited)
        }),
        Property::sometimes("refunded", |_, s| {
            state_of(&part(s, SOURCE).store) == Some(TransferState::Refunded)
        }),
        Property::sometimes("a duplicate is suppressed", |_, s| {
            parts(s).any(|p| p.ghost.duplicates > 0)
        }),
        Property::sometimes("a participant restarts mid-transfer", |_, s| {
            parts(s).any(|p| p.ghost.restarts > 0) && !settled(s) && accepted(s)
        }),
    ]
}

/// The `sometimes` properties a setup must reach (credited or refunded, not both).
pub fn required(setup: &Setup) -> Vec<&'static str> {
    let m = model(setup.clone());
    m.properties()
        .into_iter()
        .filter(|p| p.expectation == Expectation::Sometimes)
        .map(|p| p.name)
        .filter(|n| *n != if setup.refuse { "credited" } else { "refunded" })
        .collect()
}
