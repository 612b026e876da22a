//! The model checker finds known bugs: each test plants one behind a test-only switch and
//! asserts that stateright reports a counterexample to atomicity, printing the path it found.

use std::collections::BTreeSet;

use stateright::{Checker, HasDiscoveries, Model};
use txn_modelcheck::twopc::{self, Bounds, Cluster};

fn counterexample(bounds: Bounds, cluster: Cluster, property: &'static str) {
    let m = twopc::model(&bounds, cluster);
    let checker = m
        .checker()
        .finish_when(HasDiscoveries::AnyOf(BTreeSet::from([property])))
        .spawn_bfs()
        .join();
    let path = checker
        .discovery(property)
        .unwrap_or_else(|| panic!("the checker missed the planted bug ({property} holds)"));
    println!(
        "counterexample to {property:?}, after {} states:",
        checker.unique_state_count()
    );
    for action in path.into_actions() {
        println!("  {}", checker.model().format_action(&action));
    }
}

/// (a) The participant votes YES before its prepared record is durable. A crash then loses
/// the record; asked by its peer, the restarted participant records "never prepared" and
/// the peer aborts, while the coordinator had every YES and told the client COMMIT.
#[test]
fn vote_before_durable_breaks_atomicity() {
    let mut cluster = Cluster::new(2);
    cluster.bugs.vote_before_durable = true;
    let bounds = Bounds {
        participants: 2,
        restarts_per_node: 1,
        restarts_total: 1,
        lossy: false,
    };
    counterexample(bounds, cluster, "atomic");
}

/// (b) The coordinator answers ABORT to Resolve for a txn it is still deciding: an in-doubt
/// participant aborts while the others' YES votes lead to COMMIT.
#[test]
fn resolve_abort_for_undecided_breaks_atomicity() {
    let mut cluster = Cluster::new(2);
    cluster.bugs.resolve_aborts_undecided = true;
    let bounds = Bounds {
        participants: 2,
        restarts_per_node: 0,
        restarts_total: 0,
        lossy: false,
    };
    counterexample(bounds, cluster, "atomic");
}
