//! Unit tests of what keeps a participant bounded: the limits on prepared txns and locked
//! keys, the expiry of outcomes in small steps, and the expiry of saga barriers (with the
//! deadline that makes it safe).

use txn_types::store::{MemStore, Store};
use txn_types::types::{Op, ParticipantId, TxnId, Vote, decode_counter};

use crate::core::{ParticipantCore, PrepareAnswer, PrepareRequest};
use crate::keys::{data_key, due_outcomes, expire_outcomes, outcome_key};
use crate::limits::{Limits, Overload};
use crate::saga::{
    self, BARRIER_EXPIRY_PREFIX, BARRIER_PREFIX, Compensation, StepRef, StepResult, compensate_key,
    execute_key,
};
use crate::step::{Attempt, Durability, Step};

fn txn(s: &str) -> TxnId {
    TxnId::parse("t", s).unwrap()
}

fn put(key: &str) -> Op {
    Op::Put {
        key: key.into(),
        value: b"v".to_vec(),
    }
}

fn add(key: &str, delta: i64) -> Op {
    Op::Add {
        key: key.into(),
        delta,
        min: Some(0),
        max: None,
    }
}

fn req(t: &str, ops: Vec<Op>) -> PrepareRequest {
    PrepareRequest {
        txn: txn(t),
        coordinator_epoch: 1,
        participants: vec![ParticipantId::parse("p", "p1").unwrap()],
        read_only: false,
        commit_point: Default::default(),
        ops,
        writers: vec![ParticipantId::parse("p", "p1").unwrap()],
    }
}

fn ready<A: std::fmt::Debug>(a: Attempt<Step<A>>) -> Step<A> {
    match a {
        Attempt::Ready(s) => s,
        Attempt::Blocked { holder, .. } => panic!("blocked by {holder}"),
    }
}

fn apply<A>(store: &MemStore, step: Step<A>) -> A {
    store.apply(step.write).unwrap();
    if step.durability == Durability::Forced {
        store.sync().unwrap();
    }
    step.answer
}

fn prepare(core: &mut ParticipantCore, store: &MemStore, t: &str, ops: Vec<Op>) -> PrepareAnswer {
    apply(store, ready(core.prepare(&req(t, ops), store, 0).unwrap()))
}

#[test]
fn a_prepare_past_the_prepared_limit_is_refused_and_changes_nothing() {
    let store = MemStore::new();
    let mut core = ParticipantCore::with_limits(Limits {
        max_prepared: 2,
        ..Limits::default()
    });
    assert!(matches!(
        prepare(&mut core, &store, "1", vec![put("a")]),
        PrepareAnswer::Yes { .. }
    ));
    assert!(matches!(
        prepare(&mut core, &store, "2", vec![put("b")]),
        PrepareAnswer::Yes { .. }
    ));
    let before = store.scan_prefix(b"").unwrap();
    let step = ready(core.prepare(&req("3", vec![put("c")]), &store, 0).unwrap());
    assert!(step.write.is_empty(), "a refusal writes nothing");
    assert_eq!(
        step.answer,
        PrepareAnswer::Overloaded(Overload::PreparedTxns { limit: 2 })
    );
    assert!(!core.is_prepared(&txn("3")));
    assert!(!core.locks.is_locked(b"c"), "and locks nothing");
    assert_eq!(store.scan_prefix(b"").unwrap(), before);
    // A duplicate of a prepared txn only re-votes: never refused.
    assert!(matches!(
        prepare(&mut core, &store, "1", vec![put("a")]),
        PrepareAnswer::Revote { .. }
    ));
    let vote = core.confirm_vote(&txn("3"), step.answer);
    assert!(matches!(vote, Vote::No { reason } if reason.contains("2 prepared txns")));
    // Room again once one is decided.
    apply(&store, core.commit(&txn("1"), &store, 0).unwrap());
    assert!(matches!(
        prepare(&mut core, &store, "3", vec![put("c")]),
        PrepareAnswer::Yes { .. }
    ));
}

#[test]
fn a_prepare_that_would_lock_too_many_keys_is_refused() {
    let store = MemStore::new();
    let mut core = ParticipantCore::with_limits(Limits {
        max_locked_keys: 3,
        ..Limits::default()
    });
    assert!(matches!(
        prepare(&mut core, &store, "1", vec![put("a"), put("b")]),
        PrepareAnswer::Yes { .. }
    ));
    assert_eq!(
        prepare(&mut core, &store, "2", vec![put("c"), put("d")]),
        PrepareAnswer::Overloaded(Overload::LockedKeys {
            would_hold: 4,
            limit: 3
        })
    );
    assert_eq!(core.locked_keys(), 2, "the refused txn locked nothing");
    assert!(matches!(
        prepare(&mut core, &store, "3", vec![put("c")]),
        PrepareAnswer::Yes { .. }
    ));
}

/// Outcomes expire in two halves: the due entries are read with nothing held, then checked
/// and dropped in one small batch; a record rewritten in between keeps its newer self.
#[test]
fn outcomes_expire_in_small_checked_steps() {
    let store = MemStore::new();
    let mut core = ParticipantCore::new();
    for t in ["1", "2", "3"] {
        apply(
            &store,
            core.abort(&txn(t), crate::core::AbortSource::Coordinator, &store, 10)
                .unwrap(),
        );
    }
    let (due, more) = due_outcomes(&store, 11, 2).unwrap();
    assert_eq!(
        (due.len(), more),
        (2, true),
        "a step takes at most its page"
    );
    // Txn 1's record is rewritten (as a forgotten commit is, with a new time) meanwhile.
    let newer = {
        let mut b = txn_types::store::WriteBatch::default();
        let rec = txn_types::rec::OutcomeRecord {
            kind: txn_types::rec::OutcomeKind::Aborted as i32,
            at_unix_ms: 50,
            ..Default::default()
        };
        b.put(outcome_key(&txn("1")), txn_types::record::encode(&rec));
        b
    };
    store.apply(newer).unwrap();
    store.apply(expire_outcomes(&store, due).unwrap()).unwrap();
    assert!(
        store.get(&outcome_key(&txn("1"))).unwrap().is_some(),
        "the newer record stays"
    );
    assert!(store.get(&outcome_key(&txn("2"))).unwrap().is_none());
    assert!(
        store.get(&outcome_key(&txn("3"))).unwrap().is_some(),
        "next step"
    );
    let (due, more) = due_outcomes(&store, 11, 2).unwrap();
    assert_eq!((due.len(), more), (1, false));
    store.apply(expire_outcomes(&store, due).unwrap()).unwrap();
    assert!(store.get(&outcome_key(&txn("3"))).unwrap().is_none());
}

const DEADLINE: u64 = 1_000;
const MARGIN: u64 = 500;

fn step_at(saga: &TxnId, step: u32) -> StepRef<'_> {
    StepRef {
        saga,
        step,
        deadline_unix_ms: DEADLINE,
    }
}

fn saga_core() -> ParticipantCore {
    ParticipantCore::with_limits(Limits {
        barrier_margin_ms: Some(MARGIN),
        ..Limits::default()
    })
}

fn execute(
    core: &mut ParticipantCore,
    store: &MemStore,
    s: &TxnId,
    step: u32,
    now: u64,
) -> StepResult {
    apply(
        store,
        ready(saga::execute(core, step_at(s, step), &[add("k", 1)], &[], store, now).unwrap()),
    )
}

fn compensate(
    core: &mut ParticipantCore,
    store: &MemStore,
    s: &TxnId,
    step: u32,
    now: u64,
) -> Compensation {
    apply(
        store,
        ready(saga::compensate(core, step_at(s, step), &[], store, now).unwrap()),
    )
}

fn counter(store: &MemStore) -> i64 {
    decode_counter(store.get(&data_key(b"k")).unwrap().as_deref()).unwrap()
}

fn barriers(store: &MemStore) -> usize {
    store.scan_prefix(BARRIER_PREFIX).unwrap().len()
}

#[test]
fn an_execute_past_the_deadline_is_refused_with_nothing_written() {
    let store = MemStore::new();
    let mut core = saga_core();
    let s = txn("5.1");
    let step = ready(
        saga::execute(
            &mut core,
            step_at(&s, 0),
            &[add("k", 1)],
            &[],
            &store,
            DEADLINE + 1,
        )
        .unwrap(),
    );
    assert!(step.write.is_empty());
    assert!(
        matches!(step.answer, StepResult::Refused { .. }),
        "{:?}",
        step.answer
    );
    assert_eq!(counter(&store), 0);
    // At the deadline itself it still runs.
    assert!(matches!(
        execute(&mut core, &store, &s, 0, DEADLINE),
        StepResult::Succeeded { .. }
    ));
    // A duplicate after the deadline gets the stored result.
    assert!(matches!(
        execute(&mut core, &store, &s, 0, DEADLINE + 1),
        StepResult::Succeeded { .. }
    ));
    assert_eq!(counter(&store), 1);
}

/// The whole life of an ended saga's barriers: kept until the end notice and past the
/// deadline by the margin, then dropped together; a late Execute still cannot apply, and a
/// late Compensate neither undoes anything nor leaves a barrier behind.
#[test]
fn ended_sagas_barriers_go_after_the_deadline_and_late_calls_cannot_apply() {
    let store = MemStore::new();
    let mut core = saga_core();
    let done = txn("5.1");
    let undone = txn("5.2");
    let running = txn("5.3");
    assert!(matches!(
        execute(&mut core, &store, &done, 0, 1),
        StepResult::Succeeded { .. }
    ));
    assert!(matches!(
        execute(&mut core, &store, &undone, 0, 1),
        StepResult::Succeeded { .. }
    ));
    assert_eq!(
        compensate(&mut core, &store, &undone, 0, 2),
        Compensation::Applied
    );
    assert_eq!(
        compensate(&mut core, &store, &undone, 1, 2),
        Compensation::Null
    );
    assert!(matches!(
        execute(&mut core, &store, &running, 0, 1),
        StepResult::Succeeded { .. }
    ));
    assert_eq!(counter(&store), 2);
    assert_eq!(barriers(&store), 5);

    // Nothing is due before an end notice, however late it is.
    let (batch, _) = saga::sweep_barriers(&store, u64::MAX, 64).unwrap();
    assert!(batch.is_empty());
    // The notices come before the deadline: the index counts from the deadline.
    for s in [&done, &undone] {
        apply(&store, saga::end_saga(s, DEADLINE, 10));
    }
    assert_eq!(store.scan_prefix(BARRIER_EXPIRY_PREFIX).unwrap().len(), 2);
    let (batch, _) = saga::sweep_barriers(&store, DEADLINE, 64).unwrap();
    assert!(
        batch.is_empty(),
        "not before the deadline has passed by the margin"
    );
    let (batch, more) = saga::sweep_barriers(&store, DEADLINE + 1, 64).unwrap();
    assert!(!more);
    store.apply(batch).unwrap();
    assert_eq!(
        barriers(&store),
        1,
        "only the running saga's barrier is left"
    );
    assert!(store.get(&execute_key(&running, 0)).unwrap().is_some());
    assert!(store.scan_prefix(BARRIER_EXPIRY_PREFIX).unwrap().is_empty());

    // Late copies of the calls (the sweep ran at DEADLINE + MARGIN at the earliest).
    let late = DEADLINE + MARGIN;
    assert!(matches!(
        execute(&mut core, &store, &done, 0, late),
        StepResult::Refused { .. }
    ));
    assert!(matches!(
        execute(&mut core, &store, &undone, 1, late),
        StepResult::Refused { .. }
    ));
    let step = ready(saga::compensate(&mut core, step_at(&undone, 0), &[], &store, late).unwrap());
    assert!(step.write.is_empty(), "no barrier that nobody would sweep");
    assert_eq!(step.answer, Compensation::Null);
    assert_eq!(counter(&store), 2, "no late call applied anything");
    assert!(store.get(&compensate_key(&undone, 0)).unwrap().is_none());

    // Before the margin, a Compensate that finds nothing still records its barrier.
    assert_eq!(
        compensate(&mut core, &store, &running, 1, late - 1),
        Compensation::Null
    );
    assert!(store.get(&compensate_key(&running, 1)).unwrap().is_some());
}
