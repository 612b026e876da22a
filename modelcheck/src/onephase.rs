//! One-phase commit (1PC) of a single-branch txn as stateright actors, running the services'
//! own rules: the participant is the real [`ParticipantCore`] over the real [`MemStore`]
//! (`commit_one_phase`, `one_phase_lock_wait_over`, `abort`), and the coordinator is the real
//! [`OnePhase`] machine (the call, the settling Aborts, the state query that confirms a
//! refusal). The actors only carry out what the cores return: apply a step's write, hold its
//! answer until durable where the step says so, send, set timers.
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
//!   is. A settling call (an Abort, or the state query after a refusal) that gets no answer
//!   is [`Timer::SettleRetry`]; the machine's pause before the next attempt is time, which
//!   the model lacks, so it passes at once. After `settle_attempts` attempts (the service
//!   makes `ONE_PHASE_SETTLE_ATTEMPTS`; two already cover "answered" and "given up") the
//!   client is told the outcome is unknown. Any attempt's answer settles the txn: a superset
//!   of the service, which drops answers to timed-out attempts.
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
use std::time::Duration;

use stateright::Property;
use stateright::actor::{Actor, ActorModel, ActorModelState, Id, LossyNetwork, Network, Out};
use txn_coordinator_core::core::CoordinatorCore;
use txn_coordinator_core::one_phase::{
    OnePhase, OnePhaseAction, OnePhaseEvent, OnePhaseOutcome, Phase as CallPhase,
};
use txn_participant_core::core::{
    AbortAnswer as PartAbortAnswer, AbortSource, ParticipantCore, PrepareRequest, Refusal,
    TxnStatus,
};
use txn_participant_core::keys::data_key;
use txn_participant_core::one_phase::OnePhaseAnswer;
use txn_participant_core::step::{Attempt, Durability, Step};
use txn_types::backoff::Backoff;
use txn_types::store::{MemStore, Store};
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
    /// GetTxnState, which confirms a refused settling Abort.
    GetState { txn: TxnId },
    State { txn: TxnId, committed: bool },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer {
    /// The coordinator's one-phase call fails without an answer (deadline, lost connection).
    CallFails,
    /// The coordinator's settling call (Abort or state query) got no answer: call again, or
    /// give up.
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

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CoordState {
    pub core: CoordinatorCore,
    /// The core's one-phase machine, as `run_one_phase` runs it.
    pub call: OnePhase,
    pub told: Option<Told>,
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

    // ----- coordinator: the core's `OnePhase`, as `run_one_phase` runs it -----

    fn coordinator_start(&self, o: &mut Out<Self>) -> CoordState {
        let setup = self.setup();
        let mut core = CoordinatorCore::new(1);
        let txn = core.begin(vec![setup.participant.clone()], u64::MAX);
        assert_eq!(txn, self::txn(), "the model's txn id");
        o.send(Id::from(PARTICIPANT), Msg::CommitOnePhase { txn: txn.clone() });
        let call = OnePhase::new(
            txn,
            setup.participant.clone(),
            Backoff::new(Duration::ZERO, Duration::ZERO),
            u32::from(setup.settle_attempts),
        );
        let s = CoordState {
            core,
            call,
            told: None,
        };
        coordinator_timers(&s, o);
        s
    }

    /// Feeds the machine and carries out what it asks, until it waits for the network.
    fn feed(&self, s: &mut CoordState, event: OnePhaseEvent, o: &mut Out<Self>) {
        let mut next = s.call.on(event, 0.0);
        while let Some(action) = next.take() {
            match action {
                OnePhaseAction::SendAbort { .. } => {
                    o.send(Id::from(PARTICIPANT), Msg::Abort { txn: txn() })
                }
                OnePhaseAction::QueryState => {
                    o.send(Id::from(PARTICIPANT), Msg::GetState { txn: txn() })
                }
                // The pause is time, which the model does not have.
                OnePhaseAction::RetryAfter(_) => next = s.call.on(OnePhaseEvent::RetryDue, 0.0),
                OnePhaseAction::FallBack => unreachable!("the participant offers one phase"),
                OnePhaseAction::Reply(outcome) => finish(
                    s,
                    match outcome {
                        OnePhaseOutcome::Committed { settled, .. } => Told::Committed { settled },
                        OnePhaseOutcome::Aborted { settled, .. } => Told::Aborted { settled },
                        OnePhaseOutcome::Unknown { .. } => Told::Unknown,
                    },
                ),
            }
        }
    }

    fn coordinator_msg(&self, s: &mut CoordState, msg: Msg, o: &mut Out<Self>) {
        let event = match msg {
            Msg::OnePhaseAnswer { committed, .. } => OnePhaseEvent::Answered {
                committed,
                reason: String::new(),
                reads: Vec::new(),
            },
            Msg::AbortAnswer {
                answer: AbortAnswer::Aborted,
                ..
            } => OnePhaseEvent::SettleAborted,
            Msg::AbortAnswer {
                answer: AbortAnswer::Committed,
                ..
            } => OnePhaseEvent::SettleRefused {
                message: String::new(),
            },
            Msg::State { committed, .. } => OnePhaseEvent::StateIs { committed },
            Msg::CommitOnePhase { .. } | Msg::Abort { .. } | Msg::GetState { .. } => return,
        };
        // An answer to a call that already failed, or to a question no longer asked, changes
        // nothing (the machine ignores it).
        self.feed(s, event, o);
    }

    fn coordinator_timeout(&self, s: &mut CoordState, timer: &Timer, o: &mut Out<Self>) {
        let setup = self.setup();
        match (s.call.phase(), timer) {
            (CallPhase::Calling, Timer::CallFails) => {
                if setup.bugs.abort_when_answer_lost {
                    finish(s, Told::Aborted { settled: false });
                    return;
                }
                let failed = OnePhaseEvent::Failed {
                    error: "no answer".into(),
                };
                self.feed(s, failed, o);
            }
            (CallPhase::Settling { .. } | CallPhase::Confirming { .. }, Timer::SettleRetry) => {
                let failed = OnePhaseEvent::SettleFailed {
                    error: "no answer".into(),
                };
                self.feed(s, failed, o);
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
                Ok(Attempt::Ready(step)) => {
                    store.apply(step.write).expect("mem store");
                }
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
            // GetTxnState: the recorded status, as it is.
            Msg::GetState { txn } => {
                let status = s.core.status(&txn, &s.store).expect("status");
                o.send(
                    Id::from(COORDINATOR),
                    Msg::State {
                        txn,
                        committed: status == TxnStatus::Committed,
                    },
                );
            }
            Msg::OnePhaseAnswer { .. } | Msg::AbortAnswer { .. } | Msg::State { .. } => {}
        }
    }

    /// One pass of `run_unblocked` for a one-phase call (a blocked call passes again when a
    /// lock is released, or gives up on [`Timer::LockWait`]).
    fn one_phase(&self, s: &mut PartState, txn: &TxnId, o: &mut Out<Self>) {
        let setup = self.setup();
        let attempt = s
            .core
            .commit_one_phase(txn, &setup.ops(), &s.store, 0)
            .expect("commit_one_phase");
        match attempt {
            Attempt::Ready(step) => {
                s.blocked = false;
                self.answer_one_phase(s, txn, step, o);
            }
            Attempt::Blocked { holder } => {
                assert_eq!(holder, blocker(), "only the blocker holds locks");
                s.blocked = true;
            }
        }
    }

    /// Carries out a one-phase step and sends its answer (at once, with a planted bug).
    fn answer_one_phase(
        &self,
        s: &mut PartState,
        txn: &TxnId,
        step: Step<OnePhaseAnswer>,
        o: &mut Out<Self>,
    ) {
        let bugs = self.setup().bugs;
        let (committed, at_once) = match &step.answer {
            OnePhaseAnswer::Committed { .. } => {
                s.ghost.applies = (s.ghost.applies + 1).min(2);
                (true, bugs.commit_before_durable)
            }
            OnePhaseAnswer::AlreadyCommitted => (true, false),
            OnePhaseAnswer::Refused { .. } => (false, bugs.refuse_before_durable),
        };
        let reply = Msg::OnePhaseAnswer {
            txn: txn.clone(),
            committed,
        };
        carry_out(s, step, reply, at_once, o);
    }

    /// The lock wait of a blocked call is over: the core's rule says what it answers.
    fn lock_wait_ends(&self, s: &mut PartState, o: &mut Out<Self>) {
        s.blocked = false;
        let txn = txn();
        match s
            .core
            .one_phase_lock_wait_over(&txn, &blocker(), 50, &s.store, 0)
            .expect("lock wait over")
        {
            Some(step) => self.answer_one_phase(s, &txn, step, o),
            None => self.one_phase(s, &txn, o),
        }
    }

    /// The service's Abort from the coordinator (not forced; nothing is held by an operator).
    fn abort(&self, s: &mut PartState, txn: &TxnId, o: &mut Out<Self>) {
        let bugs = self.setup().bugs;
        assert!(!s.core.is_prepared(txn), "a one-phase txn is never prepared");
        let step = s
            .core
            .abort(txn, AbortSource::Coordinator, &s.store, 0)
            .expect("abort");
        let released = step.released;
        let (answer, at_once) = match &step.answer {
            PartAbortAnswer::Aborted | PartAbortAnswer::AlreadyAborted => {
                (AbortAnswer::Aborted, bugs.ack_abort_before_durable)
            }
            PartAbortAnswer::Refused(Refusal::Conflict(_)) => {
                (AbortAnswer::Committed, bugs.refuse_abort_before_durable)
            }
            other => unreachable!("no holds and no unknown refusals here: {other:?}"),
        };
        let reply = Msg::AbortAnswer {
            txn: txn.clone(),
            answer,
        };
        carry_out(s, step, reply, at_once, o);
        if released && s.blocked {
            self.one_phase(s, txn, o);
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
                // The blocker's own coordinator aborts it (presumed abort: lazy).
                let step = s
                    .core
                    .abort(&blocker(), AbortSource::Coordinator, &s.store, 0)
                    .expect("abort");
                assert!(step.released, "the blocker was prepared: {step:?}");
                s.store.apply(step.write).expect("mem store");
                if s.blocked {
                    self.one_phase(s, &txn(), o);
                }
            }
            Timer::CallFails | Timer::SettleRetry => {}
        }
    }
}

/// Applies a step's write; sends `reply` at once if the step is lazy (or a planted bug says
/// so), else once everything applied so far is durable: at once if it already is (the group
/// commit's ticket is already published), else with the next flush.
fn carry_out<A>(s: &mut PartState, step: Step<A>, reply: Msg, at_once: bool, o: &mut Out<Node>) {
    if !step.write.is_empty() {
        s.store.apply(step.write).expect("mem store");
    }
    if step.durability == Durability::Lazy || at_once || !dirty(&s.store) {
        o.send(Id::from(COORDINATOR), reply);
    } else {
        s.waiting.insert(reply);
    }
}

fn finish(s: &mut CoordState, told: Told) {
    // Nothing to keep: no decision record, no participant left to tell.
    s.core.forget(&txn());
    s.told = Some(told);
}

fn coordinator_timers(s: &CoordState, o: &mut Out<Node>) {
    let phase = s.call.phase();
    set_timer_if(o, Timer::CallFails, s.told.is_none() && phase == CallPhase::Calling);
    set_timer_if(
        o,
        Timer::SettleRetry,
        s.told.is_none()
            && matches!(phase, CallPhase::Settling { .. } | CallPhase::Confirming { .. }),
    );
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
                self.coordinator_msg(s, msg, o);
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
    coordinator(s).told
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
