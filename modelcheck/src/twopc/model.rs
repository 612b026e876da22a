//! The bounded model: the actors on an unordered, duplicating (optionally lossy) network, and
//! the boundary that keeps the state space finite and the model honest. Crashes beyond the
//! restart bounds are outside it, and so, unless a planted bug lifts it, is an expiry sweep
//! while the coordinator still counts votes, since the service's retention outlasts the
//! prepare deadline.

use std::sync::Arc;

use stateright::actor::{ActorModel, ActorModelState, LossyNetwork, Network};
use txn_coordinator_core::core::TxnView;

use super::node::Node;
use super::properties::{coordinator, participants, properties};
use super::state::State;
use super::{Cluster, txn};
use crate::checked::Checked;

/// The bounds of one check.
#[derive(Debug, Clone)]
pub struct Bounds {
    pub participants: usize,
    /// Restarts allowed per node (a crash is allowed only while restarts remain).
    pub restarts_per_node: u8,
    /// Restarts allowed in total, across nodes.
    pub restarts_total: u8,
    pub lossy: bool,
}

/// The history is unused: every fact the properties need is in ghost state.
pub type TwoPcModel = Checked<Node, ()>;
pub type SysState = ActorModelState<Node, ()>;

pub fn model(bounds: &Bounds, cluster: Cluster) -> TwoPcModel {
    let cluster = Arc::new(cluster);
    assert_eq!(cluster.participants.len(), bounds.participants);
    let per_node = bounds.restarts_per_node;
    let total = bounds.restarts_total;
    let inner = ActorModel::new((), ())
        .actor(Node::Coordinator(cluster.clone()))
        .actors((0..bounds.participants).map(|i| Node::Participant(i, cluster.clone())))
        .init_network(Network::new_unordered_duplicating([]))
        .lossy_network(if bounds.lossy {
            LossyNetwork::Yes
        } else {
            LossyNetwork::No
        })
        .max_crashes(usize::from(total > 0));
    let properties = match (cluster.forget, cluster.expire) {
        (false, false) => properties::<false, false>,
        (true, false) => properties::<true, false>,
        (false, true) => properties::<false, true>,
        (true, true) => properties::<true, true>,
    };
    let mut m = Checked { inner, properties };
    let deadline = !cluster.bugs.expire_before_deadline;
    m.inner.within_boundary = within_bounds_fn(per_node, total, deadline);
    m
}

/// Crashes beyond the bounds are outside the model, and so (with `deadline`) are expiries
/// before the coordinator's deadline. Bounds are small constants, so each combination gets
/// its own function (stateright takes a plain fn pointer).
fn within_bounds_fn(per_node: u8, total: u8, deadline: bool) -> fn(&(), &SysState) -> bool {
    type Boundary = fn(&(), &SysState) -> bool;
    macro_rules! bound {
        ($p:literal, $t:literal) => {
            if deadline {
                (|_: &(), s: &SysState| within_bounds(s, $p, $t) && deadline_respected(s))
                    as Boundary
            } else {
                |_: &(), s: &SysState| within_bounds(s, $p, $t)
            }
        };
    }
    match (per_node, total) {
        (0, _) => bound!(0, 0),
        (1, 1) => bound!(1, 1),
        (1, 2) => bound!(1, 2),
        (1, 3) => bound!(1, 3),
        (1, 4) => bound!(1, 4),
        _ => panic!("unsupported crash bounds {per_node}/{total}"),
    }
}

fn restarts(s: &State) -> u8 {
    match s {
        State::Coordinator(c) => c.restarts,
        State::Participant(p) => p.restarts,
    }
}

/// No participant has swept its outcomes while the coordinator still collects votes for the
/// txn: in the service the retention outlasts the prepare deadline, after which no vote
/// counts. (The coordinator never collects votes again once it stopped, so a sweep that
/// happened in a state this allows stays allowed.)
pub fn deadline_respected(s: &SysState) -> bool {
    coordinator(s).core.view(&txn()) != Some(TxnView::Preparing)
        || participants(s).all(|p| !p.ghost.expired)
}

fn within_bounds(s: &SysState, per_node: u8, total: u8) -> bool {
    let mut used = 0;
    for (i, st) in s.actor_states.iter().enumerate() {
        let n = restarts(st) + u8::from(s.crashed[i]);
        if n > per_node {
            return false;
        }
        used += n;
    }
    used <= total
}
