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

const EXPIRY: [&str; 2] = [
    "an ended saga's barriers are swept",
    "an Execute after the sweep is refused",
];

/// Barriers go once the saga has ended and its deadline has passed by the retention, under
/// duplicated and delayed Executes and Compensates and clocks that agree on nothing: every
/// property still holds, and the sweep and a refused late Execute are both reached.
#[test]
fn saga_barriers_expire_safely() {
    let mut required = vec!["completes", "compensates an executed step"];
    required.extend(EXPIRY);
    let states = check(Plan::new(3, false).with_expiry(), &required);
    assert_eq!(states, 5_959);
    let mut required = vec!["compensates an executed step"];
    required.extend(EXPIRY);
    let states = check(Plan::new(3, true).with_expiry(), &required);
    assert_eq!(states, 6_740);
}

/// Planted: a participant drops an ended saga's barriers as soon as it hears the saga ended,
/// while its clock is still before the deadline. A delayed copy of an Execute then applies its
/// step a second time.
#[test]
fn expiring_barriers_too_early_is_found() {
    let mut plan = Plan::new(3, false).with_expiry();
    plan.bugs.expire_at_end_notice = true;
    txn_modelcheck::counterexample(
        saga::model(plan),
        "one effect per (saga, step, action)",
        None,
    );
}

/// Planted: Executes carry no deadline, so after the barriers went (on time) a delayed
/// Execute is not refused and applies again.
#[test]
fn executes_without_the_deadline_are_found() {
    let mut plan = Plan::new(3, false).with_expiry();
    plan.bugs.no_deadline = true;
    txn_modelcheck::counterexample(
        saga::model(plan),
        "one effect per (saga, step, action)",
        None,
    );
}
