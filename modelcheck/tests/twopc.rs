//! Exhaustive checks of two-phase commit with cooperative termination (the model is in
//! `src/twopc.rs`). The state counts are pinned: a change to the protocol or to the drivers'
//! behaviour that changes the state space must show up in review, with the new count.

use std::time::Instant;

use stateright::{Checker, Model};
use txn_modelcheck::twopc::{self, Bounds, Cluster};

/// Runs the BFS checker to the end, asserts every property, and that every `sometimes`
/// property found an example (so no check passes vacuously). Returns the unique state count.
fn check(bounds: Bounds, cluster: Cluster) -> usize {
    let m = twopc::model(&bounds, cluster);
    let sometimes = twopc::sometimes_names(&m);
    let started = Instant::now();
    let checker = m.checker().spawn_bfs().join();
    let states = checker.unique_state_count();
    println!("{bounds:?}: {states} states in {:?}", started.elapsed());
    checker.assert_properties();
    for name in sometimes {
        assert!(checker.discovery(name).is_some(), "never reached: {name}");
    }
    states
}

/// Two participants; the coordinator and each participant may crash and restart once, so
/// every single and combined crash of the three nodes is explored, with both participants
/// running their resolvers (cooperative termination both ways).
#[test]
fn two_participants_with_crashes() {
    let bounds = Bounds {
        participants: 2,
        restarts_per_node: 1,
        restarts_total: 3,
        lossy: false,
    };
    assert_eq!(check(bounds, Cluster::new(2)), 333_880);
}

/// Three participants, one crash of any node; p3 runs the resolver and asks its two peers.
/// (Resolvers on all three, or more crashes, multiply the state space past CI's budget.)
#[test]
fn three_participants_with_a_crash() {
    let bounds = Bounds {
        participants: 3,
        restarts_per_node: 1,
        restarts_total: 1,
        lossy: false,
    };
    let mut cluster = Cluster::new(3);
    cluster.resolvers = vec![false, false, true];
    assert_eq!(check(bounds, cluster), 249_403);
}
