//! Exhaustive checks of the events protocol and the outbox/inbox rules (the model is in
//! `src/events.rs`), with pinned state counts, and the planted bugs the checker must find.

use std::time::Instant;

use stateright::{Checker, Expectation, Model};
use txn_modelcheck::counterexample;
use txn_modelcheck::events::{self, Bugs, Setup};

fn check(setup: Setup) -> usize {
    let required = events::required(&setup);
    let m = events::model(setup);
    let started = Instant::now();
    let checker = m.checker().spawn_bfs().join();
    let states = checker.unique_state_count();
    println!("{states} states in {:?}", started.elapsed());
    for p in checker.model().properties() {
        let found = checker.discovery(p.name);
        match p.expectation {
            Expectation::Sometimes if required.contains(&p.name) => {
                assert!(found.is_some(), "never reached: {}", p.name)
            }
            Expectation::Sometimes => {}
            _ => assert!(found.is_none(), "{} fails:\n{}", p.name, found.unwrap()),
        }
    }
    states
}

/// A transfer that credits: exactly one credit, whatever is delivered again, crashed or lost.
#[test]
fn a_credited_transfer_under_redelivery_and_crashes() {
    assert_eq!(check(Setup::default()), 448);
}

/// The destination refuses: exactly one refund.
#[test]
fn a_refused_transfer_is_refunded_once() {
    assert_eq!(
        check(Setup {
            refuse: true,
            ..Setup::default()
        }),
        552
    );
}

fn bugged(bugs: Bugs) -> events::EventsModel {
    events::model(Setup {
        refuse: false,
        bugs,
    })
}

#[test]
fn planted_an_inbox_stored_apart_from_its_effect_is_found() {
    counterexample(
        bugged(Bugs {
            inbox_apart: true,
            ..Bugs::default()
        }),
        "a duplicate is an inbox hit",
        None,
    );
}

#[test]
fn planted_an_event_written_outside_its_change_s_batch_is_found() {
    counterexample(
        bugged(Bugs {
            event_apart: true,
            ..Bugs::default()
        }),
        "change, record and event are atomic",
        None,
    );
}

#[test]
fn planted_a_feed_that_sends_before_durable_is_found() {
    counterexample(
        bugged(Bugs {
            send_before_durable: true,
            ..Bugs::default()
        }),
        "no credit without a durable debit",
        None,
    );
}
