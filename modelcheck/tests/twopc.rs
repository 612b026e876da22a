//! Exhaustive checks of two-phase commit with cooperative termination (the model is in
//! `src/twopc.rs`). The state counts are pinned: a change to the protocol or to the drivers'
//! behaviour that changes the state space must show up in review, with the new count.

use std::collections::BTreeSet;
use std::time::Instant;

use stateright::{Checker, HasDiscoveries, Model};
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
    assert_eq!(check(bounds, Cluster::new(2)), 441_348);
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
    assert_eq!(check(bounds, cluster), 479_823);
}

/// Two participants that drop outcomes as the service does: a committed outcome once the
/// coordinator's Forget comes, aborts and tombstones once they expire (after the prepare
/// deadline). Any node may crash and restart once. Only p2 runs the resolver: the two
/// branches are alike, so p1 asking p2 mirrors these paths, and what is left out is both
/// asking at once. Resolvers on both, or two crashes, multiply the state space (to about
/// 270,000 states with two crashes, 180,000 with both resolvers and no crash) past CI's
/// budget.
#[test]
fn two_participants_dropping_outcomes() {
    let bounds = Bounds {
        participants: 2,
        restarts_per_node: 1,
        restarts_total: 1,
        lossy: false,
    };
    let mut cluster = Cluster::dropping_outcomes(2);
    cluster.resolvers = vec![false, true];
    // 152,708 before outcome records named their txn's members, writes and prepare time:
    // records written by different paths (a NO vote's tombstone, an abort of a prepared txn,
    // a tombstone for a txn never seen) now differ, so fewer states coincide.
    assert_eq!(check(bounds, cluster), 172_152);
}

/// Not a violation of any property, but a behaviour of the service worth knowing (asked for
/// by the check above as a `sometimes`): a question that was under way when the txn ended
/// (a peer's QueryPeer, or the coordinator's ABORT for the no longer logged decision) reaches
/// a participant that has dropped the committed txn. It finds no record and records an
/// abort tombstone, so for the retention it reports the txn as aborted. Every participant
/// had committed before any was told to forget, so nobody acts on it. In the service a
/// forgotten commit is kept for the retention after the forget (the model, without clocks,
/// lets it expire at any time), so the question must be that late. Prints the shortest
/// path.
#[test]
fn a_forgotten_commit_can_get_a_stale_tombstone() {
    let bounds = Bounds {
        participants: 2,
        restarts_per_node: 0,
        restarts_total: 0,
        lossy: false,
    };
    let mut cluster = Cluster::dropping_outcomes(2);
    cluster.resolvers = vec![false, true];
    let checker = twopc::model(&bounds, cluster)
        .checker()
        .finish_when(HasDiscoveries::AnyOf(BTreeSet::from([
            twopc::STALE_TOMBSTONE,
        ])))
        .spawn_bfs()
        .join();
    let path = checker
        .discovery(twopc::STALE_TOMBSTONE)
        .expect("a stale tombstone is reachable");
    println!(
        "{}, after {} states:",
        twopc::STALE_TOMBSTONE,
        checker.unique_state_count()
    );
    for action in path.into_actions() {
        println!("  {}", checker.model().format_action(&action));
    }
}

/// The commit point at the votes, two participants, any one node crashing and restarting
/// once: the coordinator answers at the last YES with nothing logged, fences missing votes
/// before it aborts, and a restarted coordinator sends resolvers to their peers, who commit
/// once every one of them is prepared. PREPARED answers travel here (a fence and a resolver
/// count them), so the network holds many more messages than with a logged decision. Only p2
/// runs the resolver (the branches are alike); with both resolvers and no crash the space is
/// 1,625,400 states (about four minutes), and three crashes ran out of 24 GiB.
#[test]
fn two_participants_at_the_votes_with_a_crash() {
    let bounds = Bounds {
        participants: 2,
        restarts_per_node: 1,
        restarts_total: 1,
        lossy: false,
    };
    let mut cluster = Cluster::at_votes(2);
    cluster.resolvers = vec![false, true];
    assert_eq!(check(bounds, cluster), 339_172);
}
