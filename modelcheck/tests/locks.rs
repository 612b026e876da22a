//! Exhaustive check of the participant's lock queue (the model is in `src/locks.rs`), with a
//! pinned state count, and the drivers' duties planted as bugs that the checker must find.

use stateright::{Checker, Expectation, Model};
use txn_modelcheck::locks::{self, QueueBugs};

#[test]
fn lock_queue_holds_its_properties() {
    let checker = locks::model(QueueBugs::default())
        .checker()
        .spawn_bfs()
        .join();
    for p in checker.model().properties() {
        let found = checker.discovery(p.name);
        match p.expectation {
            Expectation::Sometimes => assert!(found.is_some(), "never reached: {}", p.name),
            _ => assert!(found.is_none(), "{} fails:\n{}", p.name, found.unwrap()),
        }
    }
    println!("{} states", checker.unique_state_count());
    assert_eq!(checker.unique_state_count(), 5_459);
}

/// A driver that re-queues on every try gets a new place each time, without end: the search
/// is cut at a depth well past the shortest counterexample.
fn counterexample(bugs: QueueBugs, property: &'static str) {
    txn_modelcheck::counterexample(locks::model(bugs), property, Some(16));
}

/// A driver that re-submits each try loses its place each time: a reader and a writer that
/// conflict keep trading places, and the one that came first waits for one that came later
/// (with every waiter re-submitting, nobody is ever granted until someone gives up).
#[test]
fn requeue_on_retry_loses_the_place() {
    counterexample(
        QueueBugs {
            requeue_on_retry: true,
            ..QueueBugs::default()
        },
        "a request waits only for what it conflicts with",
    );
}

/// A driver that forgets to leave the queue when its wait is over leaves a place that holds
/// up every later request that conflicts with it.
#[test]
fn a_stale_place_holds_up_the_queue() {
    counterexample(
        QueueBugs {
            keep_place_after_giving_up: true,
            ..QueueBugs::default()
        },
        "a request waits only for what it conflicts with",
    );
}
