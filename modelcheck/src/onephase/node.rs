//! The one-phase model's actor: one [`Node`] type for the coordinator and the participant.
//! Each handler clones the state, lets `coordinator` or `participant` react, and re-arms the
//! timers the new state calls for; the participant also saves what its crash keeps, so the
//! saved disk never lags behind a step.

use std::borrow::Cow;
use std::sync::Arc;

use stateright::actor::{Actor, Id, Out};

use super::Setup;
use super::coordinator::coordinator_timers;
use super::participant::{participant_timers, save_participant};
use super::state::{Disk, State};
use super::wire::{Msg, Timer};

#[derive(Debug, Clone)]
pub enum Node {
    Coordinator(Arc<Setup>),
    Participant(Arc<Setup>),
}

pub(super) fn set_timer_if(o: &mut Out<Node>, timer: Timer, on: bool) {
    if on {
        o.set_timer(timer, stateright::actor::model_timeout());
    } else {
        o.cancel_timer(timer);
    }
}

impl Node {
    pub(super) fn setup(&self) -> &Setup {
        match self {
            Node::Coordinator(s) | Node::Participant(s) => s,
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
