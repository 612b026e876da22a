//! Exhaustive checks of the saga executor and barrier (the model is in `src/saga.rs`), with
//! pinned state counts.

use std::time::Instant;

use stateright::{Checker, Model};
use txn_modelcheck::saga::{self, Plan};

fn check(plan: Plan, required: &[&str]) -> usize {
    let m = saga::model(plan);
    let started = Instant::now();
    let checker = m.checker().spawn_bfs().join();
    let states = checker.unique_state_count();
    println!("{states} states in {:?}", started.elapsed());
    checker.assert_properties_holding(required);
    states
}

trait AssertHolding {
    fn assert_properties_holding(&self, required: &[&str]);
}

impl<C: Checker<saga::SagaModel>> AssertHolding for C {
    /// Every always/eventually property holds, and each named `sometimes` property found an
    /// example (the others may be impossible for this plan, e.g. completing when a step fails).
    fn assert_properties_holding(&self, required: &[&str]) {
        for p in self.model().properties() {
            let found = self.discovery(p.name).is_some();
            match p.expectation {
                stateright::Expectation::Sometimes => {
                    if required.contains(&p.name) {
                        assert!(found, "never reached: {}", p.name);
                    }
                }
                _ => assert!(
                    !found,
                    "{} fails:\n{}",
                    p.name,
                    self.discovery(p.name).unwrap()
                ),
            }
        }
        let _ = saga::sometimes_names(self.model());
    }
}

/// Three steps that all succeed: the saga completes, or (its deadline) compensates, under
/// duplicated and reordered Execute and Compensate messages.
#[test]
fn saga_of_three_steps() {
    let states = check(
        Plan::new(3, false),
        &[
            "completes",
            "compensates an executed step",
            "a late Execute is refused",
        ],
    );
    assert_eq!(states, 388);
}

/// The last step fails its check: the saga can only compensate.
#[test]
fn saga_whose_last_step_fails() {
    let states = check(
        Plan::new(3, true),
        &["compensates an executed step", "a late Execute is refused"],
    );
    assert_eq!(states, 440);
}
