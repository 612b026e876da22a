//! The saga executor and the participants' barrier as stateright actors. The orchestrator is
//! the real [`Saga`] state machine, driven as `coordinator/src/saga_driver.rs` drives it (log
//! the saga, call the step, log the transition, go on); each participant runs the real
//! [`saga::execute`] and [`saga::compensate`] over a [`MemStore`]. The network duplicates and
//! reorders every Execute and Compensate, and the orchestrator may give up on a step whose
//! answer has not come (its deadline) at any moment, so Compensates overtake their Executes.
//!
//! Checked: every saga ends completed or compensated; exactly one effect per (saga, step,
//! action); no Execute applies after its Compensate (anti-hanging); the counters end where
//! the outcome says (every step's delta when completed, untouched when compensated).
//!
//! Barrier expiry (with [`Plan::expiry`]): once the saga has ended (logged), the orchestrator
//! tells every participant (`EndSaga`), which runs the real [`saga::end_saga`]; a participant's
//! `Sweep` timer runs the real [`saga::sweep_barriers`] with the cutoff its driver uses (now
//! minus the retention). Each participant has its own clock, which a `Tick` timer moves on
//! through [`TIMES`] at any moment, independently of the orchestrator's deadline timer (the
//! clocks of two machines agree on nothing), so Executes and Compensates, duplicated and
//! delayed, meet barriers before and after they are swept. The same properties must hold.
//! Planted bugs ([`SagaBugs`], switches in the participants' actors, never in a core):
//! sweeping as soon as the end notice arrives (expiry too early), and an orchestrator that
//! does not send the saga's deadline (so a late Execute is not refused).

use std::borrow::Cow;
use std::sync::Arc;

use stateright::actor::{Actor, ActorModel, ActorModelState, Id, Network, Out};
use stateright::{Expectation, Model, Property};
use txn_coordinator_core::saga::{Next, Saga, saga_key};
use txn_participant_core::core::ParticipantCore;
use txn_participant_core::keys::data_key;
use txn_participant_core::limits::Limits;
use txn_participant_core::saga::{
    self, BARRIER_EXPIRY_PREFIX, BARRIER_PREFIX, BARRIER_SWEEP_PAGE, Compensation, StepRef,
    StepResult,
};
use txn_participant_core::step::Attempt;

use crate::io::carry_out;
use txn_types::rec;
use txn_types::record;
use txn_types::store::{MemStore, Store, WriteBatch};
use txn_types::types::{Op, TxnId, decode_counter};

use crate::checked::Checked;

pub fn saga_id() -> TxnId {
    TxnId::generated(1, 1)
}

/// The saga's deadline (ms since the epoch, on the model's clocks).
pub const DEADLINE: u64 = 100;
/// The participants' retention: barriers outlive the deadline by this much.
pub const RETENTION: u64 = 1_000;
/// The times a participant's clock passes through: before the deadline, just past it, and past
/// it by more than the retention. (An end notice that arrives at the last time is counted
/// from then, so its barriers stay in the model: nothing can happen to them later anyway.)
pub const TIMES: [u64; 3] = [0, DEADLINE + 1, DEADLINE + RETENTION + 100];

/// Planted bugs: switches in the model's actors (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SagaBugs {
    /// A participant drops an ended saga's barriers as soon as it is told the saga ended,
    /// without waiting for the deadline to pass by the retention.
    pub expire_at_end_notice: bool,
    /// The orchestrator sends no deadline with its Executes (as an older one did), so a
    /// participant cannot refuse one that comes after the barriers went.
    pub no_deadline: bool,
}

/// Step `i` runs at participant `i` (actor `i + 1`); the orchestrator is actor 0.
#[derive(Debug, Clone)]
pub struct Plan {
    pub ops: Vec<Vec<Op>>,
    /// End notices, a clock and barrier sweeps at the first step's participant (the others
    /// keep their barriers; one is enough for every interleaving that matters, and keeps the
    /// state space small).
    pub expiry: bool,
    pub bugs: SagaBugs,
}

impl Plan {
    /// `steps` steps, each adding 1 to its participant's counter; with `fail_last`, the last
    /// step instead subtracts 1 from an empty counter with a minimum of 0: a business failure.
    pub fn new(steps: usize, fail_last: bool) -> Self {
        let ops = (0..steps)
            .map(|i| {
                let delta = if fail_last && i + 1 == steps { -1 } else { 1 };
                vec![Op::Add {
                    key: b"k".to_vec(),
                    delta,
                    min: Some(0),
                    max: None,
                }]
            })
            .collect();
        Self {
            ops,
            expiry: false,
            bugs: SagaBugs::default(),
        }
    }

    /// The same plan with end notices, clocks and barrier sweeps.
    pub fn with_expiry(mut self) -> Self {
        self.expiry = true;
        self
    }

    /// The deadline the orchestrator's calls carry.
    fn sent_deadline(&self) -> u64 {
        if self.bugs.no_deadline { 0 } else { DEADLINE }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    Succeeded,
    Failed,
    Refused,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Msg {
    Execute {
        step: u32,
    },
    Executed {
        step: u32,
        outcome: Outcome,
    },
    Compensate {
        step: u32,
    },
    Compensated {
        step: u32,
    },
    /// The saga has ended: no Compensate of it will come (EndSagas).
    EndSaga,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer {
    /// The saga's deadline passed while a step's answer was outstanding.
    Deadline,
    /// A participant's clock moves on to its next time.
    Tick,
    /// A participant's sweep of barriers that are due.
    Sweep,
}

/// The orchestrator's saga and its log. `Saga` is a prost record underneath, so equality and
/// hashing go through its encoding.
#[derive(Debug, Clone)]
pub struct Orchestrator {
    pub saga: Saga,
    pub log: MemStore,
}

impl PartialEq for Orchestrator {
    fn eq(&self, other: &Self) -> bool {
        self.saga == other.saga && self.log == other.log
    }
}

impl Eq for Orchestrator {}

impl std::hash::Hash for Orchestrator {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        record::encode(self.saga.record()).hash(state);
        self.log.hash(state);
    }
}

/// A participant's store and, as ghost state, how many effects each action applied.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Step {
    pub store: MemStore,
    pub executed: u8,
    pub compensated: u8,
    /// An Execute applied after a Compensate (null or not) of the same step was recorded.
    pub hanging: bool,
    pub compensate_seen: bool,
    /// Where this participant's clock is in [`TIMES`].
    pub clock: u8,
    /// Its sweep dropped the saga's barriers.
    pub swept: bool,
    /// An Execute came after the sweep and was refused.
    pub late_refused: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum State {
    Orchestrator(Orchestrator),
    Participant(Step),
}

#[derive(Debug, Clone)]
pub enum Node {
    Orchestrator(Arc<Plan>),
    Participant(usize, Arc<Plan>),
}

impl Node {
    /// The driver's loop body: log the saga durably, then make the call `next()` names.
    fn drive(&self, o: &mut Orchestrator, out: &mut Out<Self>) {
        let mut batch = WriteBatch::default();
        batch.put(saga_key(&saga_id()), record::encode(o.saga.record()));
        o.log.apply(batch).expect("mem store");
        o.log.sync().expect("mem store");
        let plan = match self {
            Node::Orchestrator(plan) | Node::Participant(_, plan) => plan,
        };
        if plan.expiry && o.saga.ended() {
            // Its end is durable: the participants may be told (the one that sweeps).
            out.send(Id::from(1), Msg::EndSaga);
        }
        match o.saga.next() {
            Next::Execute(step) => {
                out.send(Id::from(step as usize + 1), Msg::Execute { step });
                out.set_timer(Timer::Deadline, stateright::actor::model_timeout());
            }
            Next::Compensate(step) => {
                out.cancel_timer(Timer::Deadline);
                out.send(Id::from(step as usize + 1), Msg::Compensate { step });
            }
            Next::Completed | Next::Compensated | Next::Parked => out.cancel_timer(Timer::Deadline),
        }
    }

    fn participant(&self, st: &mut Step, step: u32, msg: Msg, plan: &Plan) -> Option<Msg> {
        // The participant's core holds the outbox's position, which it reads back from the
        // store as a restarted participant does, and the barrier margin.
        let mut core = ParticipantCore::with_limits(Limits {
            barrier_margin_ms: Some(RETENTION),
            ..Limits::default()
        });
        core.recover(&st.store).expect("recover");
        let id = saga_id();
        let now = TIMES[st.clock as usize];
        let at = StepRef {
            saga: &id,
            step,
            deadline_unix_ms: plan.sent_deadline(),
        };
        let members: Vec<String> = (0..plan.ops.len()).map(|i| format!("p{}", i + 1)).collect();
        match msg {
            Msg::Execute { .. } => {
                let ops = &plan.ops[step as usize];
                let Attempt::Ready(done) =
                    saga::execute(&mut core, at, ops, &members, &st.store, now).expect("execute")
                else {
                    unreachable!("no 2PC locks in the saga model")
                };
                let wrote = !done.write.is_empty();
                let result = carry_out(&st.store, done);
                if wrote && matches!(result, StepResult::Succeeded { .. }) {
                    st.executed += 1;
                    st.hanging |= st.compensate_seen;
                }
                st.late_refused |= st.swept && matches!(result, StepResult::Refused { .. });
                let outcome = match result {
                    StepResult::Succeeded { .. } => Outcome::Succeeded,
                    StepResult::Failed { .. } => Outcome::Failed,
                    StepResult::Refused { .. } => Outcome::Refused,
                };
                Some(Msg::Executed { step, outcome })
            }
            Msg::Compensate { .. } => {
                let Attempt::Ready(done) =
                    saga::compensate(&mut core, at, &members, &st.store, now).expect("compensate")
                else {
                    unreachable!("no 2PC locks in the saga model")
                };
                let wrote = !done.write.is_empty();
                let compensation = carry_out(&st.store, done);
                if wrote {
                    st.compensate_seen = true;
                    if compensation == Compensation::Applied {
                        st.compensated += 1;
                    }
                }
                Some(Msg::Compensated { step })
            }
            Msg::EndSaga => {
                carry_out(&st.store, saga::end_saga(&id, plan.sent_deadline(), now));
                None
            }
            Msg::Executed { .. } | Msg::Compensated { .. } => None,
        }
    }

    /// A participant's timers: its clock moves on while it can, and it sweeps while an ended
    /// saga is indexed.
    fn participant_timers(st: &Step, plan: &Plan, step: usize, out: &mut Out<Self>) {
        if !plan.expiry || step != 0 {
            return;
        }
        let indexed = !st
            .store
            .scan_prefix(BARRIER_EXPIRY_PREFIX)
            .expect("mem store")
            .is_empty();
        let timeout = stateright::actor::model_timeout();
        if (st.clock as usize) + 1 < TIMES.len() {
            out.set_timer(Timer::Tick, timeout.clone());
        } else {
            out.cancel_timer(Timer::Tick);
        }
        if indexed {
            out.set_timer(Timer::Sweep, timeout);
        } else {
            out.cancel_timer(Timer::Sweep);
        }
    }

    /// The participant's sweep, as its driver runs it: a cutoff of now minus the retention.
    fn sweep(st: &mut Step, plan: &Plan) {
        let now = TIMES[st.clock as usize];
        let cutoff = if plan.bugs.expire_at_end_notice {
            u64::MAX
        } else {
            now.saturating_sub(RETENTION)
        };
        let had = !st
            .store
            .scan_prefix(BARRIER_PREFIX)
            .expect("mem store")
            .is_empty();
        let (batch, _) =
            saga::sweep_barriers(&st.store, cutoff, BARRIER_SWEEP_PAGE).expect("sweep");
        if !batch.is_empty() {
            st.store.apply(batch).expect("mem store");
        }
        let left = !st
            .store
            .scan_prefix(BARRIER_PREFIX)
            .expect("mem store")
            .is_empty();
        st.swept |= had && !left;
    }
}

impl Actor for Node {
    type Msg = Msg;
    type State = State;
    type Timer = Timer;
    type Random = ();
    type Storage = ();

    fn on_start(&self, _id: Id, _: &Option<()>, out: &mut Out<Self>) -> State {
        match self {
            Node::Orchestrator(plan) => {
                let branches = (0..plan.ops.len())
                    .map(|i| rec::Branch {
                        participant: format!("p{}", i + 1),
                        ops: plan.ops[i].iter().map(rec::Op::from).collect(),
                    })
                    .collect();
                let mut o = Orchestrator {
                    saga: Saga::new(&saga_id(), branches, 0, 0),
                    log: MemStore::new(),
                };
                self.drive(&mut o, out);
                State::Orchestrator(o)
            }
            Node::Participant(i, plan) => {
                let st = Step {
                    store: MemStore::new(),
                    executed: 0,
                    compensated: 0,
                    hanging: false,
                    compensate_seen: false,
                    clock: 0,
                    swept: false,
                    late_refused: false,
                };
                Self::participant_timers(&st, plan, *i, out);
                State::Participant(st)
            }
        }
    }

    fn on_msg(&self, _id: Id, state: &mut Cow<State>, src: Id, msg: Msg, out: &mut Out<Self>) {
        let mut next = state.as_ref().clone();
        match (self, &mut next) {
            (Node::Orchestrator(_), State::Orchestrator(o)) => {
                match msg {
                    Msg::Executed { step, outcome } => match outcome {
                        Outcome::Succeeded => o.saga.on_executed(step, 0),
                        Outcome::Failed => o.saga.on_execute_failed(step, "failed".into(), 0),
                        Outcome::Refused => o.saga.on_execute_abandoned(step, "refused".into(), 0),
                    },
                    Msg::Compensated { step } => o.saga.on_compensated(step, 0),
                    Msg::Execute { .. } | Msg::Compensate { .. } | Msg::EndSaga => return,
                }
                if next == **state {
                    // A duplicate answer: the saga did not move.
                    return;
                }
                if let State::Orchestrator(o) = &mut next {
                    self.drive(o, out);
                }
            }
            (Node::Participant(i, plan), State::Participant(st)) => {
                let step = match msg {
                    Msg::Execute { step } | Msg::Compensate { step } => step,
                    Msg::EndSaga => *i as u32,
                    _ => return,
                };
                debug_assert_eq!(step as usize, *i);
                if let Some(reply) = self.participant(st, step, msg, plan) {
                    out.send(src, reply);
                }
                Self::participant_timers(st, plan, *i, out);
            }
            _ => unreachable!("state matches node"),
        }
        if next != **state {
            *state = Cow::Owned(next);
        }
    }

    fn on_timeout(&self, _id: Id, state: &mut Cow<State>, timer: &Timer, out: &mut Out<Self>) {
        let mut next = state.as_ref().clone();
        match (&mut next, timer, self) {
            (State::Orchestrator(o), Timer::Deadline, _) => {
                if let Next::Execute(step) = o.saga.next() {
                    o.saga
                        .on_execute_abandoned(step, "deadline passed".into(), 0);
                    self.drive(o, out);
                }
            }
            (State::Participant(st), Timer::Tick, Node::Participant(i, plan)) => {
                st.clock = (st.clock + 1).min(TIMES.len() as u8 - 1);
                Self::participant_timers(st, plan, *i, out);
            }
            (State::Participant(st), Timer::Sweep, Node::Participant(i, plan)) => {
                Self::sweep(st, plan);
                Self::participant_timers(st, plan, *i, out);
            }
            _ => {}
        }
        if next != **state {
            *state = Cow::Owned(next);
        }
    }
}

pub type SagaModel = Checked<Node, ()>;
pub type SysState = ActorModelState<Node, ()>;

pub fn model(plan: Plan) -> SagaModel {
    let plan = Arc::new(plan);
    let expiry = plan.expiry;
    let inner = ActorModel::new((), ())
        .actor(Node::Orchestrator(plan.clone()))
        .actors((0..plan.ops.len()).map(|i| Node::Participant(i, plan.clone())))
        .init_network(Network::new_unordered_duplicating([]));
    Checked {
        inner,
        properties: if expiry {
            properties_with_expiry
        } else {
            properties
        },
    }
}

fn orchestrator(s: &SysState) -> &Orchestrator {
    match &*s.actor_states[0] {
        State::Orchestrator(o) => o,
        State::Participant(_) => unreachable!("actor 0 orchestrates"),
    }
}

fn steps(s: &SysState) -> impl Iterator<Item = &Step> {
    s.actor_states[1..].iter().map(|a| match &**a {
        State::Participant(st) => st,
        State::Orchestrator(_) => unreachable!("actors 1.. are participants"),
    })
}

fn counter(st: &Step) -> i64 {
    decode_counter(st.store.get(&data_key(b"k")).expect("mem store").as_deref()).expect("counter")
}

/// The saga finished, and the data says so: every step's effect once (completed), or no net
/// effect at all (compensated).
pub fn finished_consistently(s: &SysState) -> bool {
    match orchestrator(s).saga.next() {
        Next::Completed => steps(s).all(|st| st.executed == 1 && st.compensated == 0),
        Next::Compensated => steps(s).all(|st| st.executed == st.compensated && counter(st) == 0),
        _ => false,
    }
}

fn properties() -> Vec<Property<SagaModel>> {
    vec![
        Property::always("one effect per (saga, step, action)", |_, s| {
            steps(s).all(|st| st.executed <= 1 && st.compensated <= 1)
        }),
        Property::always("no Execute after its Compensate", |_, s| {
            steps(s).all(|st| !st.hanging)
        }),
        Property::always("a compensation undoes an effect that happened", |_, s| {
            steps(s).all(|st| st.compensated <= st.executed)
        }),
        Property::eventually("completed or compensated", |_, s| finished_consistently(s)),
        Property::sometimes("completes", |_, s| {
            orchestrator(s).saga.next() == Next::Completed
        }),
        Property::sometimes("compensates an executed step", |_, s| {
            orchestrator(s).saga.next() == Next::Compensated
                && steps(s).any(|st| st.compensated == 1)
        }),
        Property::sometimes("a late Execute is refused", |_, s| {
            steps(s).any(|st| st.compensate_seen && st.executed == 0)
                && orchestrator(s).saga.next() == Next::Compensated
        }),
    ]
}

/// With barrier expiry, the same properties, and expiry must be reached: barriers swept, and
/// an Execute that comes after them refused.
fn properties_with_expiry() -> Vec<Property<SagaModel>> {
    let mut props = properties();
    props.push(Property::sometimes(
        "an ended saga's barriers are swept",
        |_, s| steps(s).any(|st| st.swept),
    ));
    props.push(Property::sometimes(
        "an Execute after the sweep is refused",
        |_, s| steps(s).any(|st| st.late_refused),
    ));
    props
}

pub fn sometimes_names(m: &SagaModel) -> Vec<&'static str> {
    m.properties()
        .into_iter()
        .filter(|p| p.expectation == Expectation::Sometimes)
        .map(|p| p.name)
        .collect()
}
