//! Exhaustive checks of two-phase commit with cooperative termination (see `src/twopc.rs`).
//! The state counts are pinned: a change to the protocol that changes the state space must
//! show up in review, with the new count.

use std::time::Instant;

use stateright::{Checker, Model};
use txn_modelcheck::twopc::{self, Bounds, Cluster};

fn check(bounds: Bounds) -> usize {
    let m = twopc::model(&bounds, Cluster::new(bounds.participants));
    let sometimes = twopc::sometimes_names(&m);
    let started = Instant::now();
    let checker = m.checker().timeout(std::time::Duration::from_secs(60)).spawn_bfs();
    while !checker.is_done() {
        std::thread::sleep(std::time::Duration::from_millis(500));
        println!("{} unique, depth {}", checker.unique_state_count(), checker.max_depth());
    }
    let checker = checker.join();
    let states = checker.unique_state_count();
    println!("{bounds:?}: {states} states in {:?}", started.elapsed());
    checker.assert_properties();
    for name in sometimes {
        assert!(checker.discovery(name).is_some(), "never reached: {name}");
    }
    states
}

#[test]
fn explore() {
    let b = std::env::var("B").unwrap_or("2,1,1,0".into());
    let v: Vec<u8> = b.split(',').map(|x| x.parse().unwrap()).collect();
    check(Bounds { participants: v[0] as usize, restarts_per_node: v[1], restarts_total: v[2], lossy: v[3] == 1 });
}
