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

use std::borrow::Cow;
use std::sync::Arc;

use stateright::actor::{Actor, ActorModel, ActorModelState, Id, Network, Out};
use stateright::{Expectation, Model, Property};
use txn_coordinator_core::saga::{Next, Saga, saga_key};
use txn_participant_core::core::ParticipantCore;
use txn_participant_core::keys::data_key;
use txn_participant_core::saga::{self, Compensation, StepResult};
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

/// Step `i` runs at participant `i` (actor `i + 1`); the orchestrator is actor 0.
#[derive(Debug, Clone)]
pub struct Plan {
    pub ops: Vec<Vec<Op>>,
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
        Self { ops }
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
    Execute { step: u32 },
    Executed { step: u32, outcome: Outcome },
    Compensate { step: u32 },
    Compensated { step: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer {
    /// The saga's deadline passed while a step's answer was outstanding.
    Deadline,
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
        // The participant's core holds nothing a step needs but the outbox's position, which
        // it reads back from the store, as a restarted participant does.
        let mut core = ParticipantCore::new();
        core.recover(&st.store).expect("recover");
        let id = saga_id();
        let members: Vec<String> = (0..plan.ops.len()).map(|i| format!("p{}", i + 1)).collect();
        match msg {
            Msg::Execute { .. } => {
                let ops = &plan.ops[step as usize];
                let Attempt::Ready(done) =
                    saga::execute(&mut core, &id, step, ops, &members, &st.store, 0)
                        .expect("execute")
                else {
                    unreachable!("no 2PC locks in the saga model")
                };
                let wrote = !done.write.is_empty();
                let result = carry_out(&st.store, done);
                if wrote && matches!(result, StepResult::Succeeded { .. }) {
                    st.executed += 1;
                    st.hanging |= st.compensate_seen;
                }
                let outcome = match result {
                    StepResult::Succeeded { .. } => Outcome::Succeeded,
                    StepResult::Failed { .. } => Outcome::Failed,
                    StepResult::Refused { .. } => Outcome::Refused,
                };
                Some(Msg::Executed { step, outcome })
            }
            Msg::Compensate { .. } => {
                let Attempt::Ready(done) =
                    saga::compensate(&mut core, &id, step, &members, &st.store, 0)
                        .expect("compensate")
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
            Msg::Executed { .. } | Msg::Compensated { .. } => None,
        }
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
            Node::Participant(..) => State::Participant(Step {
                store: MemStore::new(),
                executed: 0,
                compensated: 0,
                hanging: false,
                compensate_seen: false,
            }),
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
                    Msg::Execute { .. } | Msg::Compensate { .. } => return,
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
                    _ => return,
                };
                debug_assert_eq!(step as usize, *i);
                if let Some(reply) = self.participant(st, step, msg, plan) {
                    out.send(src, reply);
                }
            }
            _ => unreachable!("state matches node"),
        }
        if next != **state {
            *state = Cow::Owned(next);
        }
    }

    fn on_timeout(&self, _id: Id, state: &mut Cow<State>, _: &Timer, out: &mut Out<Self>) {
        let mut next = state.as_ref().clone();
        if let State::Orchestrator(o) = &mut next
            && let Next::Execute(step) = o.saga.next()
        {
            o.saga
                .on_execute_abandoned(step, "deadline passed".into(), 0);
            self.drive(o, out);
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
    let inner = ActorModel::new((), ())
        .actor(Node::Orchestrator(plan.clone()))
        .actors((0..plan.ops.len()).map(|i| Node::Participant(i, plan.clone())))
        .init_network(Network::new_unordered_duplicating([]));
    Checked { inner, properties }
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

pub fn sometimes_names(m: &SagaModel) -> Vec<&'static str> {
    m.properties()
        .into_iter()
        .filter(|p| p.expectation == Expectation::Sometimes)
        .map(|p| p.name)
        .collect()
}
