//! A thin [`Model`] around stateright's [`ActorModel`] that treats a step which leaves the
//! whole system exactly as it was as no step at all.
//!
//! Why: the network is unordered and duplicating, so a message once sent stays deliverable,
//! and the drivers answer duplicates (a second Commit is acked again, a retry timer re-sends).
//! Such a step re-sends messages that are already in flight and changes nothing else. Stateright
//! would count it as an edge back to a known state, and a state with such an edge is never
//! *terminal*, which is where `eventually` properties are judged. Dropping self-loops keeps
//! the explored states identical (the same states are reachable) and makes "the system went
//! quiet" observable, so liveness can be checked at all.

use std::fmt::Debug;
use std::hash::Hash;

use stateright::actor::{Actor, ActorModel, ActorModelAction, ActorModelState};
use stateright::{Model, Property};

pub struct Checked<A, H>
where
    A: Actor,
    A::Msg: Ord,
    A::Timer: Ord,
    H: Clone + Debug + Hash + Eq,
{
    pub inner: ActorModel<A, (), H>,
    pub properties: fn() -> Vec<Property<Checked<A, H>>>,
}

impl<A, H> Model for Checked<A, H>
where
    A: Actor,
    A::Msg: Ord,
    A::Timer: Ord,
    H: Clone + Debug + Hash + Eq,
{
    type State = ActorModelState<A, H>;
    type Action = ActorModelAction<A::Msg, A::Timer, A::Random>;

    fn init_states(&self) -> Vec<Self::State> {
        self.inner.init_states()
    }

    fn actions(&self, state: &Self::State, actions: &mut Vec<Self::Action>) {
        self.inner.actions(state, actions)
    }

    fn next_state(&self, last: &Self::State, action: Self::Action) -> Option<Self::State> {
        let next = self.inner.next_state(last, action)?;
        (next != *last).then_some(next)
    }

    fn format_action(&self, action: &Self::Action) -> String {
        self.inner.format_action(action)
    }

    fn format_step(&self, last: &Self::State, action: Self::Action) -> Option<String> {
        self.inner.format_step(last, action)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        (self.properties)()
    }

    fn within_boundary(&self, state: &Self::State) -> bool {
        Model::within_boundary(&self.inner, state)
    }
}
