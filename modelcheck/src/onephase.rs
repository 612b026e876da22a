//! One-phase commit (1PC) of a single-branch txn as stateright actors. The participant is the
//! real [`ParticipantCore`] over the real [`MemStore`], driven the way `participant/src/node.rs`
//! drives `commit_one_phase` and `abort`; the coordinator is a small driver written here,
//! because `coordinator/src/node.rs` uses [`CoordinatorCore`] only for the txn id
//! (`begin`/`forget`) and logs nothing for 1PC: it sends one CommitOnePhase, and if that call
//! fails without an answer it settles the txn with Aborts.
//!
//! The invariant at stake is the one the client relies on: what it was told is what the
//! participant holds, across crashes. Checked: COMMITTED means the write and its committed
//! outcome are durable when the client hears it; ABORTED means the participant holds neither,
//! then or ever after, however the network replays the call; the write is applied at most
//! once, and only with its committed outcome; the client always gets an answer (possibly
//! "unknown").
//!
//! What the model abstracts, and why that is sound:
//! - One txn (`1.1`) with one branch, at actor [`PARTICIPANT`]. The branch adds `delta` to
//!   one counter; the counter's value shows how many times the write was applied.
//! - "The call failed" is the coordinator's [`Timer::CallFails`], which may fire at any moment
//!   before an answer arrives; an answer that comes later is dropped, as a timed-out call's
//!   is. The settling Abort is retried on [`Timer::SettleRetry`] up to `settle_attempts`
//!   times (the service makes `ONE_PHASE_SETTLE_ATTEMPTS`; two already cover "answered" and
//!   "given up"), then the client is told the outcome is unknown. Any attempt's answer
//!   settles the txn: a superset of the service, which drops answers to timed-out attempts.
//! - Group commit is the participant's [`Timer::Flush`], armed while the store holds unsynced
//!   writes: it syncs everything and sends the replies waiting for durability. sled may also
//!   flush on its own, so lazy writes can become durable at any moment, or never.
//! - Crashes are stateright's and only the participant's (the coordinator keeps nothing; its
//!   crash leaves the client without an answer, which "unknown" already covers). A restart
//!   gets back exactly what was synced ([`MemStore::crash`]) and loses waiting replies and
//!   blocked calls. The participant restarts at most `restarts` times.
//! - The network is unordered and duplicating (optionally lossy), so a CommitOnePhase may be
//!   delivered again at any time, before or after an Abort, before or after a crash.
//! - Optionally a txn prepared for two-phase commit holds the branch's key at first (a
//!   shared lock from a read), and its Abort arrives at some moment ([`Timer::BlockerDecided`]):
//!   the one-phase call then waits for the lock, or gives up when its lock wait ends
//!   ([`Timer::LockWait`]).

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::Arc;

use stateright::Property;
use stateright::actor::{Actor, ActorModel, ActorModelState, Id, LossyNetwork, Network, Out};
use txn_coordinator_core::core::CoordinatorCore;
use txn_participant_core::core::{
    AbortStep, OnePhaseStep, ParticipantCore, PrepareRequest, PrepareStep, Refusal, TxnStatus,
    data_key,
};
use txn_types::store::{MemStore, Store, WriteBatch};
use txn_types::types::{Op, ParticipantId, TxnId, decode_counter};

use crate::checked::Checked;
use crate::twopc::dirty;

/// The coordinator is actor 0, the participant actor 1.
pub const COORDINATOR: usize = 0;
pub const PARTICIPANT: usize = 1;

/// The counter the branch adds to.
pub const KEY: &[u8] = b"k";

/// The one txn of the model: the first id of the coordinator's first epoch.
pub fn txn() -> TxnId {
    TxnId::generated(1, 1)
}

/// The two-phase txn that may hold the branch's key when the model starts.
pub fn blocker() -> TxnId {
    TxnId::parse("txn_id", "other.2pc").expect("valid txn id")
}

/// Bugs the model's drivers can be told to have, to show that the checker finds them (in the
/// model only, never in the services; see `twopc::DriverBugs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DriverBugs {
    /// The participant answers committed as soon as the Apply batch is applied, before it is
    /// durable.
    pub commit_before_durable: bool,
    /// The participant refuses the settling Abort ("it committed here") without syncing the
    /// commit first.
    pub refuse_abort_before_durable: bool,
    /// The participant acks an Abort of a txn never prepared here without syncing the
    /// tombstone first (the driver before the sync was added).
    pub ack_abort_before_durable: bool,
    /// The coordinator tells the client ABORTED when the call fails, without settling.
    pub abort_when_answer_lost: bool,
    /// The participant answers "not committed" at once, before the refusal's tombstone is
    /// durable (the driver before this model found the problem).
    pub refuse_before_durable: bool,
}

/// What both nodes know: the branch, the bounds of the driver, the planted bugs.
#[derive(Debug, Clone)]
pub struct Setup {
    pub participant: ParticipantId,
    /// The branch: add `delta` to [`KEY`], which may not go below 0.
    pub delta: i64,
    /// Abort calls the coordinator makes to settle a lost answer before it gives up.
    pub settle_attempts: u8,
    /// Whether a prepared two-phase txn holds [`KEY`] when the participant first starts.
    pub blocker: bool,
    pub bugs: DriverBugs,
}

impl Setup {
    /// A branch adding `delta` to an empty counter: 1 commits, -1 fails its check (the
    /// counter may not go below 0) and is refused.
    pub fn adding(delta: i64) -> Self {
        Self {
            participant: ParticipantId::parse("p", "p1").expect("valid name"),
            delta,
            settle_attempts: 2,
            blocker: false,
            bugs: DriverBugs::default(),
        }
    }

    pub fn ops(&self) -> Vec<Op> {
        vec![Op::Add {
            key: KEY.to_vec(),
            delta: self.delta,
            min: Some(0),
            max: None,
        }]
    }

    /// The blocker's branch: it reads the counter, so it holds a shared lock on it, which
    /// the one-phase write conflicts with, and it changes nothing when it commits or aborts.
    fn blocker_request(&self) -> PrepareRequest {
        PrepareRequest {
            txn: blocker(),
            coordinator_epoch: 1,
            participants: vec![self.participant.clone()],
            ops: vec![Op::Read { key: KEY.to_vec() }],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AbortAnswer {
    /// The Abort call succeeded: the txn is aborted here (durably).
    Aborted,
    /// FAILED_PRECONDITION: the txn committed here (durably) and cannot abort.
    Committed,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Msg {
    CommitOnePhase { txn: TxnId },
    OnePhaseAnswer { txn: TxnId, committed: bool },
    Abort { txn: TxnId },
    AbortAnswer { txn: TxnId, answer: AbortAnswer },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer {
    /// The coordinator's one-phase call fails without an answer (deadline, lost connection).
    CallFails,
    /// The coordinator's settling Abort got no answer: call again, or give up.
    SettleRetry,
    /// The participant's group commit: syncs the store and sends the replies waiting on it.
    Flush,
    /// The lock wait of a one-phase call blocked by the prepared two-phase txn ends.
    LockWait,
    /// The prepared two-phase txn gets its Abort (from its own coordinator).
    BlockerDecided,
}

/// What the client was told, and whether the coordinator settled a lost answer to get it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Told {
    Committed {
        settled: bool,
    },
    Aborted {
        settled: bool,
    },
    /// UNAVAILABLE: the settling Aborts went unanswered; no claim either way.
    Unknown,
}

/// The coordinator's one-phase driver (`run_one_phase` and `settle_one_phase`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// The CommitOnePhase call is outstanding.
    Calling,
    /// The call failed; `attempts` Abort calls were made so far.
    Settling {
        attempts: u8,
    },
    Done(Told),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CoordState {
    pub core: CoordinatorCore,
    pub phase: Phase,
}

/// What happened at the participant, across crashes (ghost state: the checker's evidence).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PartGhost {
    /// Apply steps taken, counting those a crash undid (capped at 2).
    pub applies: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PartState {
    pub core: ParticipantCore,
    pub store: MemStore,
    pub restarts: u8,
    /// Replies the driver sends once everything applied so far is durable (lost in a crash).
    pub waiting: BTreeSet<Msg>,
    /// A one-phase call waits for the blocker's lock (lost in a crash: the call fails).
    pub blocked: bool,
    pub ghost: PartGhost,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum State {
    Coordinator(CoordState),
    Participant(PartState),
}

/// What survives a participant crash: the store (a restart keeps its synced part), the restart
/// count (for the bound) and the ghost history.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Disk {
    pub store: MemStore,
    pub restarts: u8,
    pub ghost: PartGhost,
}

#[derive(Debug, Clone)]
pub enum Node {
    Coordinator(Arc<Setup>),
    Participant(Arc<Setup>),
}

/// The store as a crash would leave it: exactly what was synced.
pub fn synced(store: &MemStore) -> MemStore {
    let s = store.clone();
    s.crash();
    s
}

/// The branch's counter in `store`.
pub fn counter(store: &MemStore) -> i64 {
    let value = store.get(&data_key(KEY)).expect("mem store");
    decode_counter(value.as_deref()).expect("a counter")
}

/// The txn's outcome recorded in `store` (a fresh core: only the store's records count).
pub fn recorded(store: &MemStore) -> TxnStatus {
    ParticipantCore::new()
        .status(&txn(), store)
        .expect("mem store")
}

fn apply(store: &MemStore, batch: WriteBatch) {
    if !batch.is_empty() {
        store.apply(batch).expect("mem store");
    }
}

fn set_timer_if(o: &mut Out<Node>, timer: Timer, on: bool) {
    if on {
        o.set_timer(timer, stateright::actor::model_timeout());
    } else {
        o.cancel_timer(timer);
    }
}

impl Node {
    fn setup(&self) -> &Setup {
        match self {
            Node::Coordinator(s) | Node::Participant(s) => s,
        }
    }

    // ----- coordinator, as `run_one_phase` and `settle_one_phase` drive it -----

    fn coordinator_start(&self, o: &mut Out<Self>) -> CoordState {
        let setup = self.setup();
        let mut core = CoordinatorCore::new(1);
        let txn = core.begin(vec![setup.participant.clone()]);
        assert_eq!(txn, self::txn(), "the model's txn id");
        o.send(Id::from(PARTICIPANT), Msg::CommitOnePhase { txn });
        let s = CoordState {
            core,
            phase: Phase::Calling,
        };
        coordinator_timers(&s, o);
        s
    }

    fn coordinator_msg(&self, s: &mut CoordState, msg: Msg) {
        match (s.phase, msg) {
            (Phase::Calling, Msg::OnePhaseAnswer { committed, .. }) => {
                let told = if committed {
                    Told::Committed { settled: false }
                } else {
                    Told::Aborted { settled: false }
                };
                finish(s, told);
            }
            (Phase::Settling { .. }, Msg::AbortAnswer { answer, .. }) => {
                let told = match answer {
                    AbortAnswer::Aborted => Told::Aborted { settled: true },
                    AbortAnswer::Committed => Told::Committed { settled: true },
                };
                finish(s, told);
            }
            // The answer to a call that already failed, or to a question no longer asked.
            _ => {}
        }
    }

    fn coordinator_timeout(&self, s: &mut CoordState, timer: &Timer, o: &mut Out<Self>) {
        let setup = self.setup();
        match (s.phase, timer) {
            (Phase::Calling, Timer::CallFails) => {
                if setup.bugs.abort_when_answer_lost {
                    finish(s, Told::Aborted { settled: false });
                    return;
                }
                s.phase = Phase::Settling { attempts: 1 };
                o.send(Id::from(PARTICIPANT), Msg::Abort { txn: txn() });
            }
            (Phase::Settling { attempts }, Timer::SettleRetry) => {
                if attempts < setup.settle_attempts {
                    s.phase = Phase::Settling {
                        attempts: attempts + 1,
                    };
                    o.send(Id::from(PARTICIPANT), Msg::Abort { txn: txn() });
                } else {
                    finish(s, Told::Unknown);
                }
            }
            _ => {}
        }
    }

    // ----- participant, as `participant/src/node.rs` drives it -----

    fn participant_start(&self, disk: &Option<Disk>, o: &mut Out<Self>) -> PartState {
        let (store, restarts, ghost) = match disk {
            None => (self.first_store(), 0, PartGhost::default()),
            Some(d) => (synced(&d.store), d.restarts + 1, d.ghost.clone()),
        };
        // Participant::open: reload prepared records and re-take their locks, then sync.
        let mut core = ParticipantCore::new();
        core.recover(&store).expect("recover");
        store.sync().expect("mem store");
        let s = PartState {
            core,
            store,
            restarts,
            waiting: BTreeSet::new(),
            blocked: false,
            ghost,
        };
        participant_timers(&s, o);
        s
    }

    /// The store the participant first opens: empty, or holding the blocker's durable
    /// prepared record (it voted YES before the model starts).
    fn first_store(&self) -> MemStore {
        let setup = self.setup();
        let store = MemStore::new();
        if setup.blocker {
            let mut core = ParticipantCore::new();
            match core.prepare(&setup.blocker_request(), &store, 0) {
                Ok(PrepareStep::Persist { batch, .. }) => apply(&store, batch),
                other => panic!("the blocker prepares: {other:?}"),
            }
            store.sync().expect("mem store");
        }
        store
    }

    fn participant_msg(&self, s: &mut PartState, msg: Msg, o: &mut Out<Self>) {
        match msg {
            Msg::CommitOnePhase { txn } => self.one_phase(s, &txn, o),
            Msg::Abort { txn } => self.abort(s, &txn, o),
            Msg::OnePhaseAnswer { .. } | Msg::AbortAnswer { .. } => {}
        }
    }

    /// `one_phase_inner`: one pass of its loop (a blocked call passes again when a lock is
    /// released, or gives up on [`Timer::LockWait`]).
    fn one_phase(&self, s: &mut PartState, txn: &TxnId, o: &mut Out<Self>) {
        let setup = self.setup();
        let step = s
            .core
            .commit_one_phase(txn, &setup.ops(), &s.store, 0)
            .expect("commit_one_phase");
        let committed = Msg::OnePhaseAnswer {
            txn: txn.clone(),
            committed: true,
        };
        match step {
            OnePhaseStep::Apply { batch, .. } => {
                s.blocked = false;
                apply(&s.store, batch);
                s.ghost.applies = (s.ghost.applies + 1).min(2);
                if setup.bugs.commit_before_durable {
                    o.send(Id::from(COORDINATOR), committed);
                } else {
                    reply_when_durable(s, committed, o);
                }
            }
            OnePhaseStep::AlreadyCommitted => {
                s.blocked = false;
                reply_when_durable(s, committed, o);
            }
            OnePhaseStep::Refuse { batch, .. } => {
                s.blocked = false;
                // The answer waits until the tombstone (or the earlier one found) is durable.
                apply(&s.store, batch);
                self.refuse(s, txn, o);
            }
            OnePhaseStep::Blocked { holder } => {
                assert_eq!(holder, blocker(), "only the blocker holds locks");
                s.blocked = true;
            }
        }
    }

    /// The lock wait of a blocked call is over: record the refusal with a tombstone and
    /// answer not committed once it is durable.
    fn lock_wait_ends(&self, s: &mut PartState, o: &mut Out<Self>) {
        s.blocked = false;
        let txn = txn();
        if let AbortStep::Apply { batch } = s.core.abort(&txn, &s.store, 0).expect("abort") {
            apply(&s.store, batch);
        }
        self.refuse(s, &txn, o);
    }

    /// Answers "not committed" once the store is synced, as the driver does (at once with
    /// the planted bug [`DriverBugs::refuse_before_durable`]).
    fn refuse(&self, s: &mut PartState, txn: &TxnId, o: &mut Out<Self>) {
        let refused = Msg::OnePhaseAnswer {
            txn: txn.clone(),
            committed: false,
        };
        if self.setup().bugs.refuse_before_durable {
            o.send(Id::from(COORDINATOR), refused);
        } else {
            reply_when_durable(s, refused, o);
        }
    }

    /// `Participant::abort` for the coordinator (not forced; nothing is held by an operator).
    fn abort(&self, s: &mut PartState, txn: &TxnId, o: &mut Out<Self>) {
        let bugs = self.setup().bugs;
        let was_prepared = s.core.is_prepared(txn);
        let aborted = Msg::AbortAnswer {
            txn: txn.clone(),
            answer: AbortAnswer::Aborted,
        };
        match s.core.abort(txn, &s.store, 0).expect("abort") {
            AbortStep::Apply { .. } | AbortStep::AlreadyAborted if was_prepared => {
                unreachable!("a one-phase txn is never prepared")
            }
            AbortStep::Apply { batch } => {
                // Presumed abort: written lazily, but synced before the ack below.
                apply(&s.store, batch);
                self.abort_acked(s, aborted, o);
            }
            AbortStep::AlreadyAborted => self.abort_acked(s, aborted, o),
            AbortStep::Refused(Refusal::Conflict(_)) => {
                let refused = Msg::AbortAnswer {
                    txn: txn.clone(),
                    answer: AbortAnswer::Committed,
                };
                if bugs.refuse_abort_before_durable {
                    o.send(Id::from(COORDINATOR), refused);
                } else {
                    reply_when_durable(s, refused, o);
                }
            }
            // NOT_FOUND: the coordinator's call fails and it tries again.
            AbortStep::Refused(Refusal::Unknown) => {}
        }
    }

    /// The Abort of a txn never prepared here succeeded: ack it once the tombstone is
    /// durable, and wake a one-phase call waiting for a lock (`abort_from` notifies waiters).
    fn abort_acked(&self, s: &mut PartState, ack: Msg, o: &mut Out<Self>) {
        if self.setup().bugs.ack_abort_before_durable {
            o.send(Id::from(COORDINATOR), ack);
        } else {
            reply_when_durable(s, ack, o);
        }
        if s.blocked {
            self.one_phase(s, &txn(), o);
        }
    }

    fn participant_timeout(&self, s: &mut PartState, timer: &Timer, o: &mut Out<Self>) {
        match timer {
            Timer::Flush => {
                s.store.sync().expect("mem store");
                for reply in std::mem::take(&mut s.waiting) {
                    o.send(Id::from(COORDINATOR), reply);
                }
            }
            Timer::LockWait => self.lock_wait_ends(s, o),
            Timer::BlockerDecided => {
                // Presumed abort: the blocker's abort record is lazy.
                let step = s.core.abort(&blocker(), &s.store, 0).expect("abort");
                let AbortStep::Apply { batch } = step else {
                    panic!("the blocker was prepared: {step:?}");
                };
                apply(&s.store, batch);
                if s.blocked {
                    self.one_phase(s, &txn(), o);
                }
            }
            Timer::CallFails | Timer::SettleRetry => {}
        }
    }
}

fn finish(s: &mut CoordState, told: Told) {
    // Nothing to keep: no decision record, no participant left to tell.
    s.core.forget(&txn());
    s.phase = Phase::Done(told);
}

fn coordinator_timers(s: &CoordState, o: &mut Out<Node>) {
    set_timer_if(o, Timer::CallFails, s.phase == Phase::Calling);
    set_timer_if(
        o,
        Timer::SettleRetry,
        matches!(s.phase, Phase::Settling { .. }),
    );
}

/// Sends `reply` once everything applied so far is durable: at once if it already is (the
/// group commit's ticket is already published), else with the next flush.
fn reply_when_durable(s: &mut PartState, reply: Msg, o: &mut Out<Node>) {
    if dirty(&s.store) {
        s.waiting.insert(reply);
    } else {
        o.send(Id::from(COORDINATOR), reply);
    }
}

fn participant_timers(s: &PartState, o: &mut Out<Node>) {
    set_timer_if(o, Timer::Flush, dirty(&s.store));
    set_timer_if(o, Timer::LockWait, s.blocked);
    set_timer_if(o, Timer::BlockerDecided, s.core.is_prepared(&blocker()));
}

fn save_participant(s: &PartState, o: &mut Out<Node>) {
    o.save(Disk {
        store: s.store.clone(),
        restarts: s.restarts,
        ghost: s.ghost.clone(),
    });
}

impl Actor for Node {
    type Msg = Msg;
    type State = State;
    type Timer = Timer;
    type Random = ();
    type Storage = Disk;

    fn on_start(&self, _id: Id, disk: &Option<Disk>, o: &mut Out<Self>) -> State {
        match self {
            Node::Coordinator(_) => State::Coordinator(self.coordinator_start(o)),
            Node::Participant(_) => {
                let s = self.participant_start(disk, o);
                save_participant(&s, o);
                State::Participant(s)
            }
        }
    }

    fn on_msg(&self, _id: Id, state: &mut Cow<State>, _src: Id, msg: Msg, o: &mut Out<Self>) {
        let mut next = state.as_ref().clone();
        match &mut next {
            State::Coordinator(s) => {
                self.coordinator_msg(s, msg);
                coordinator_timers(s, o);
            }
            State::Participant(s) => {
                self.participant_msg(s, msg, o);
                participant_timers(s, o);
                save_participant(s, o);
            }
        }
        if next != **state {
            *state = Cow::Owned(next);
        }
    }

    fn on_timeout(&self, _id: Id, state: &mut Cow<State>, timer: &Timer, o: &mut Out<Self>) {
        let mut next = state.as_ref().clone();
        match &mut next {
            State::Coordinator(s) => {
                self.coordinator_timeout(s, timer, o);
                coordinator_timers(s, o);
            }
            State::Participant(s) => {
                self.participant_timeout(s, timer, o);
                participant_timers(s, o);
                save_participant(s, o);
            }
        }
        if next != **state {
            *state = Cow::Owned(next);
        }
    }
}

/// The bounds of one check.
#[derive(Debug, Clone)]
pub struct Bounds {
    /// Restarts allowed to the participant (the coordinator does not crash).
    pub restarts: u8,
    pub lossy: bool,
}

/// The history is unused: every fact the properties need is in the actors' states.
pub type OnePhaseModel = Checked<Node, ()>;
pub type SysState = ActorModelState<Node, ()>;

pub fn model(bounds: &Bounds, setup: Setup) -> OnePhaseModel {
    let setup = Arc::new(setup);
    let inner = ActorModel::new((), ())
        .actor(Node::Coordinator(setup.clone()))
        .actor(Node::Participant(setup))
        .init_network(Network::new_unordered_duplicating([]))
        .lossy_network(if bounds.lossy {
            LossyNetwork::Yes
        } else {
            LossyNetwork::No
        })
        .max_crashes(usize::from(bounds.restarts > 0));
    let mut m = Checked { inner, properties };
    m.inner.within_boundary = match bounds.restarts {
        0 => |_, s| within_bounds(s, 0),
        1 => |_, s| within_bounds(s, 1),
        2 => |_, s| within_bounds(s, 2),
        n => panic!("unsupported restart bound {n}"),
    };
    m
}

/// Only the participant crashes, at most `restarts` times.
fn within_bounds(s: &SysState, restarts: u8) -> bool {
    !s.crashed[COORDINATOR]
        && participant(s).restarts + u8::from(s.crashed[PARTICIPANT]) <= restarts
}

pub fn coordinator(s: &SysState) -> &CoordState {
    match &*s.actor_states[COORDINATOR] {
        State::Coordinator(c) => c,
        State::Participant(_) => unreachable!("actor 0 is the coordinator"),
    }
}

/// The participant's state; while it is crashed, the state it had when it crashed.
pub fn participant(s: &SysState) -> &PartState {
    match &*s.actor_states[PARTICIPANT] {
        State::Participant(p) => p,
        State::Coordinator(_) => unreachable!("actor 1 is the participant"),
    }
}

pub fn told(s: &SysState) -> Option<Told> {
    match coordinator(s).phase {
        Phase::Done(t) => Some(t),
        Phase::Calling | Phase::Settling { .. } => None,
    }
}

/// Told COMMITTED: the write and its committed outcome are durable, so no crash from here on
/// can take them back.
pub fn committed_is_durable(s: &SysState, delta: i64) -> bool {
    if !matches!(told(s), Some(Told::Committed { .. })) {
        return true;
    }
    let durable = synced(&participant(s).store);
    recorded(&durable) == TxnStatus::Committed && counter(&durable) == delta
}

/// Told ABORTED: the participant holds no committed outcome and no write, not even unsynced
/// (and, since this is checked in every later state, never will).
pub fn aborted_is_final(s: &SysState) -> bool {
    if !matches!(told(s), Some(Told::Aborted { .. })) {
        return true;
    }
    let store = &participant(s).store;
    [store.clone(), synced(store)]
        .iter()
        .all(|st| recorded(st) != TxnStatus::Committed && counter(st) == 0)
}

/// The write is applied at most once, and only together with its committed outcome (in the
/// store as it is and as a crash would leave it).
pub fn one_effect(s: &SysState, delta: i64) -> bool {
    let store = &participant(s).store;
    [store.clone(), synced(store)].iter().all(|st| {
        let c = counter(st);
        (c == 0 || c == delta) && ((c == delta) == (recorded(st) == TxnStatus::Committed))
    })
}

fn properties() -> Vec<Property<OnePhaseModel>> {
    vec![
        Property::always("COMMITTED is durable", |m, s| {
            committed_is_durable(s, delta(m))
        }),
        Property::always("ABORTED is final", |_, s| aborted_is_final(s)),
        Property::always(
            "the write applies at most once, with its outcome",
            |m, s| one_effect(s, delta(m)),
        ),
        Property::eventually("the client is answered", |_, s| told(s).is_some()),
        Property::sometimes("committed", |_, s| {
            told(s) == Some(Told::Committed { settled: false })
        }),
        Property::sometimes("aborted by a refusal", |_, s| {
            told(s) == Some(Told::Aborted { settled: false })
        }),
        Property::sometimes("committed by settling", |_, s| {
            told(s) == Some(Told::Committed { settled: true })
        }),
        Property::sometimes("aborted by settling", |_, s| {
            told(s) == Some(Told::Aborted { settled: true })
        }),
        Property::sometimes("outcome unknown", |_, s| told(s) == Some(Told::Unknown)),
        Property::sometimes("aborted after a crash lost the write", |_, s| {
            participant(s).ghost.applies > 0 && matches!(told(s), Some(Told::Aborted { .. }))
        }),
        Property::sometimes(
            "the write is applied again after a crash lost it",
            |_, s| participant(s).ghost.applies > 1,
        ),
    ]
}

fn delta(m: &OnePhaseModel) -> i64 {
    match &m.inner.actors[PARTICIPANT] {
        Node::Participant(setup) | Node::Coordinator(setup) => setup.delta,
    }
}
