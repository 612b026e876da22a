//! The bounded one-phase model: the two actors on an unordered, duplicating (optionally
//! lossy) network, and the boundary that lets only the participant crash, at most `restarts`
//! times. The coordinator keeps nothing durable, so its crash would only leave the client
//! without an answer, which the "unknown" outcome already covers.

use std::sync::Arc;

use stateright::actor::{ActorModel, ActorModelState, LossyNetwork, Network};

use super::node::Node;
use super::properties::{participant, properties};
use super::{COORDINATOR, PARTICIPANT, Setup};
use crate::checked::Checked;

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
