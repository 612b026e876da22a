//! Exhaustive checks of one-phase commit (the model is in `src/onephase.rs`). The state
//! counts are pinned: a change to the drivers' behaviour that changes the state space must
//! show up in review, with the new count. The planted-bug tests show that the checker finds
//! each durability shortcut the drivers must not take; one of them (a refusal answered before
//! its tombstone is durable) was a real bug of the participant driver, found by this model.

use std::time::Instant;

use stateright::{Checker, Expectation, Model};
use txn_modelcheck::onephase::{self, Bounds, Setup};

const COMMITTED: &str = "committed";
const REFUSED: &str = "aborted by a refusal";
const SETTLED_COMMITTED: &str = "committed by settling";
const SETTLED_ABORTED: &str = "aborted by settling";
const UNKNOWN: &str = "outcome unknown";
const LOST_THEN_ABORTED: &str = "aborted after a crash lost the write";
const APPLIED_AGAIN: &str = "the write is applied again after a crash lost it";

/// Runs the BFS checker to the end, asserts every always/eventually property, and that each
/// `required` sometimes property found an example, so no check passes vacuously (the others
/// are impossible for the setup, e.g. COMMITTED for a branch whose check fails). Returns the
/// unique state count.
fn check(bounds: Bounds, setup: Setup, required: &[&str]) -> usize {
    let m = onephase::model(&bounds, setup);
    let started = Instant::now();
    let checker = m.checker().spawn_bfs().join();
    let states = checker.unique_state_count();
    println!("{bounds:?}: {states} states in {:?}", started.elapsed());
    for p in checker.model().properties() {
        let found = checker.discovery(p.name);
        match p.expectation {
            Expectation::Sometimes => {
                if required.contains(&p.name) {
                    assert!(found.is_some(), "never reached: {}", p.name);
                }
            }
            Expectation::Always | Expectation::Eventually => {
                if let Some(path) = found {
                    panic!("{} fails:\n{path}", p.name);
                }
            }
        }
    }
    states
}

/// Asserts that the checker finds a counterexample to `property`, prints its path and
/// returns how many states it took.
fn counterexample(bounds: Bounds, setup: Setup, property: &'static str) -> usize {
    txn_modelcheck::counterexample(onephase::model(&bounds, setup), property, None)
}

fn no_crash() -> Bounds {
    Bounds {
        restarts: 0,
        lossy: false,
    }
}

fn one_restart() -> Bounds {
    Bounds {
        restarts: 1,
        lossy: false,
    }
}

fn two_restarts() -> Bounds {
    Bounds {
        restarts: 2,
        lossy: false,
    }
}

/// A branch that commits: every outcome the client can hear is reached (directly, by
/// settling either way, or unknown), also after a crash lost the unsynced write, and what
/// the client hears always matches what the participant holds durably. Two restarts let a
/// write be lost, applied again and lost again.
#[test]
fn commit_with_crashes() {
    let states = check(
        two_restarts(),
        Setup::adding(1),
        &[
            COMMITTED,
            SETTLED_COMMITTED,
            SETTLED_ABORTED,
            UNKNOWN,
            LOST_THEN_ABORTED,
            APPLIED_AGAIN,
        ],
    );
    assert_eq!(states, 1013);
}

/// The same on a network that may also drop messages, so retries of the settling Abort
/// matter.
#[test]
fn commit_on_a_lossy_network() {
    let bounds = Bounds {
        restarts: 2,
        lossy: true,
    };
    let states = check(
        bounds,
        Setup::adding(1),
        &[
            COMMITTED,
            SETTLED_COMMITTED,
            SETTLED_ABORTED,
            UNKNOWN,
            LOST_THEN_ABORTED,
            APPLIED_AGAIN,
        ],
    );
    assert_eq!(states, 21_354);
}

/// A branch whose check fails (the counter may not go below 0): the participant refuses, and
/// nothing is ever written but tombstones.
#[test]
fn a_failing_check_is_refused() {
    let states = check(
        two_restarts(),
        Setup::adding(-1),
        &[REFUSED, SETTLED_ABORTED, UNKNOWN],
    );
    assert_eq!(states, 281);
}

/// A prepared two-phase txn holds the key when the participant starts: the call waits for
/// it, and either commits once it aborts or is refused when its lock wait ends.
#[test]
fn lock_wait_refusal() {
    let mut setup = Setup::adding(1);
    setup.blocker = true;
    let states = check(
        two_restarts(),
        setup,
        &[
            COMMITTED,
            REFUSED,
            SETTLED_COMMITTED,
            SETTLED_ABORTED,
            UNKNOWN,
            LOST_THEN_ABORTED,
            APPLIED_AGAIN,
        ],
    );
    assert_eq!(states, 3328);
}

// ----- planted bugs: each must be found -----

/// (a) The participant answers committed before the Apply batch is durable: the client hears
/// COMMITTED while a crash would still lose the write.
#[test]
fn commit_answered_before_durable_is_found() {
    let mut setup = Setup::adding(1);
    setup.bugs.commit_before_durable = true;
    let states = counterexample(no_crash(), setup, "COMMITTED is durable");
    assert_eq!(states, 140);
}

/// (b) The settling Abort is refused as "committed here" before the commit is durable.
#[test]
fn abort_refused_before_durable_is_found() {
    let mut setup = Setup::adding(1);
    setup.bugs.refuse_abort_before_durable = true;
    let states = counterexample(no_crash(), setup, "COMMITTED is durable");
    assert_eq!(states, 159);
}

/// (c) The settling Abort is acked before its tombstone is durable (the driver before it
/// synced there): a crash loses the tombstone and the late call commits after ABORTED.
#[test]
fn abort_acked_before_durable_is_found() {
    let mut setup = Setup::adding(1);
    setup.bugs.ack_abort_before_durable = true;
    let states = counterexample(one_restart(), setup, "ABORTED is final");
    assert_eq!(states, 663);
}

/// (e) A refusal answered before its tombstone is durable: a prepared two-phase txn holds the
/// key, the call's lock wait ends, the tombstone is written lazily and "not committed" sent
/// at once, so the client is told ABORTED. A crash loses the tombstone; the call is delivered
/// again after the restart, waits again, and commits once the two-phase txn aborts. This was
/// the participant driver's behaviour until this model found it.
#[test]
fn refusal_answered_before_durable_is_found() {
    let mut setup = Setup::adding(1);
    setup.blocker = true;
    setup.bugs.refuse_before_durable = true;
    let states = counterexample(one_restart(), setup, "ABORTED is final");
    assert_eq!(states, 1468);
}

/// (d) The coordinator takes a lost answer for an abort instead of settling it.
#[test]
fn lost_answer_taken_for_abort_is_found() {
    let mut setup = Setup::adding(1);
    setup.bugs.abort_when_answer_lost = true;
    let states = counterexample(no_crash(), setup, "ABORTED is final");
    assert_eq!(states, 8);
}
