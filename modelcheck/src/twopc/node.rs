//! The model's actor: one [`Node`] type for the coordinator and the participants, as
//! stateright wants. Each handler clones the state, lets the driver's part (`coordinator` or
//! `participant`) react, re-arms the timers that the new state calls for and saves what a
//! crash keeps, so every step leaves the timers and the saved disk consistent with the state.

use std::borrow::Cow;
use std::sync::Arc;

use stateright::actor::{Actor, Id, Out};

use super::Cluster;
use super::state::{Disk, State};
use super::wire::{Msg, Timer};

#[derive(Debug, Clone)]
pub enum Node {
    Coordinator(Arc<Cluster>),
    Participant(usize, Arc<Cluster>),
}

impl Node {
    pub(super) fn cluster(&self) -> &Cluster {
        match self {
            Node::Coordinator(c) | Node::Participant(_, c) => c,
        }
    }
}

pub(super) fn set_timer_if(o: &mut Out<Node>, timer: Timer, on: bool) {
    if on {
        o.set_timer(timer, stateright::actor::model_timeout());
    } else {
        o.cancel_timer(timer);
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
            Node::Coordinator(_) => State::Coordinator(self.coordinator_start(disk, o)),
            Node::Participant(..) => State::Participant(self.participant_start(disk, o)),
        }
    }

    fn on_msg(&self, _id: Id, state: &mut Cow<State>, src: Id, msg: Msg, o: &mut Out<Self>) {
        let mut next = state.as_ref().clone();
        match &mut next {
            State::Coordinator(s) => {
                self.coordinator_msg(s, src, msg, o);
                self.coordinator_timers(s, o);
                self.save_coordinator(s, o);
            }
            State::Participant(s) => {
                self.participant_msg(s, src, msg, o);
                self.participant_timers(s, o);
                self.save_participant(s, o);
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
                self.coordinator_timers(s, o);
                self.save_coordinator(s, o);
            }
            State::Participant(s) => {
                self.participant_timeout(s, timer, o);
                self.participant_timers(s, o);
                self.save_participant(s, o);
            }
        }
        if next != **state {
            *state = Cow::Owned(next);
        }
    }
}
