//! Exhaustive check of coordinators over a shared log (the model is in `src/adoption.rs`):
//! the rules hold in every state, every `sometimes` is reached, and each planted bug is found.

use stateright::{Checker, Expectation, Model};
use txn_modelcheck::adoption::{AdoptionModel, Bugs, model};
use txn_modelcheck::counterexample;

#[test]
fn takeover_and_fencing_keep_the_txn_atomic_and_its_owner_exclusive() {
    let checker = model().checker().spawn_bfs().join();
    for p in checker.model().properties() {
        let found = checker.discovery(p.name);
        match p.expectation {
            Expectation::Sometimes => assert!(found.is_some(), "never reached: {}", p.name),
            _ => assert!(found.is_none(), "{} fails:\n{}", p.name, found.unwrap()),
        }
    }
    let states = checker.unique_state_count();
    println!("{states} states");
    assert_eq!(
        states, 511,
        "pinned state count changed; review and update it"
    );
}

#[test]
fn planted_a_write_without_the_membership_guard_breaks_atomicity() {
    let m = AdoptionModel {
        bugs: Bugs {
            unfenced_writes: true,
            ..Bugs::default()
        },
    };
    counterexample(m, "atomic", None);
}

#[test]
fn planted_a_takeover_while_the_owner_lives_breaks_exclusive_ownership() {
    let m = AdoptionModel {
        bugs: Bugs {
            adopt_without_fence: true,
            ..Bugs::default()
        },
    };
    counterexample(m, "the owner is exclusive", None);
}

#[test]
fn planted_presumed_abort_for_a_live_owner_breaks_atomicity() {
    let m = AdoptionModel {
        bugs: Bugs {
            presume_abort_for_live_owner: true,
            ..Bugs::default()
        },
    };
    counterexample(m, "atomic", None);
}
