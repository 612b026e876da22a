//! Unit tests of the participant's rules, message by message, over the in-memory store.

use txn_types::store::{MemStore, Store};
use txn_types::types::{Decision, Op, ParticipantId, TxnId, Vote, decode_counter, encode_counter};

use crate::core::*;
use crate::keys::{data_key, list_outcomes, outcome_key, prepared_key, sweep_expired};
use crate::one_phase::OnePhaseAnswer;
use crate::resolve::{Resolved, peer_verdict};
use crate::saga::{self, Compensation, StepRef, StepResult};
use crate::step::{Attempt, Durability, LockWait, Step};

fn at(saga: &TxnId, step: u32) -> StepRef<'_> {
    StepRef {
        saga,
        step,
        deadline_unix_ms: 0,
    }
}

fn txn(s: &str) -> TxnId {
    TxnId::parse("t", s).unwrap()
}

fn req(t: &str, ops: Vec<Op>) -> PrepareRequest {
    PrepareRequest {
        txn: txn(t),
        coordinator_epoch: 1,
        participants: vec![ParticipantId::parse("p", "p1").unwrap()],
        writers: vec![ParticipantId::parse("p", "p1").unwrap()],
        read_only: ops.iter().all(|op| !op.writes()),
        commit_point: Default::default(),
        ops,
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

fn read(key: &str) -> Op {
    Op::Read { key: key.into() }
}

fn ready<A: std::fmt::Debug>(a: Attempt<Step<A>>) -> Step<A> {
    match a {
        Attempt::Ready(s) => s,
        Attempt::Blocked { holder, .. } => panic!("blocked by {holder}"),
    }
}

/// Applies a step's write as the driver does, and syncs where the step says so.
fn apply<A>(store: &MemStore, step: Step<A>) -> A {
    store.apply(step.write).unwrap();
    if step.durability.waits() {
        store.sync().unwrap();
    }
    step.answer
}

fn balance(store: &MemStore, key: &str) -> i64 {
    decode_counter(store.get(&data_key(key.as_bytes())).unwrap().as_deref()).unwrap()
}

fn prepare(core: &mut ParticipantCore, store: &MemStore, t: &str, ops: Vec<Op>) -> Vote {
    let answer = apply(store, ready(core.prepare(&req(t, ops), store, 0).unwrap()));
    core.confirm_vote(&txn(t), answer)
}

fn one_phase(core: &mut ParticipantCore, store: &MemStore, t: &str, ops: &[Op]) -> OnePhaseAnswer {
    apply(
        store,
        ready(core.commit_one_phase(&txn(t), ops, store, 0).unwrap()),
    )
}

fn abort(core: &mut ParticipantCore, store: &MemStore, t: &str, by: AbortSource) -> AbortAnswer {
    apply(store, core.abort(&txn(t), by, store, 0).unwrap())
}

#[test]
fn prepare_vote_yes_commit_applies_once() {
    let store = MemStore::new();
    let mut core = ParticipantCore::new();
    let step = ready(
        core.prepare(&req("1", vec![add("a", 10)]), &store, 0)
            .unwrap(),
    );
    // A YES waits for its record to be durable.
    assert_eq!(step.durability, Durability::Forced);
    let answer = apply(&store, step);
    assert!(matches!(
        core.confirm_vote(&txn("1"), answer),
        Vote::Yes { .. }
    ));
    // A duplicate Prepare re-votes without taking anything twice.
    assert!(matches!(
        prepare(&mut core, &store, "1", vec![add("a", 10)]),
        Vote::Yes { .. }
    ));
    let commit = core.commit(&txn("1"), &store, 0).unwrap();
    assert_eq!(commit.durability, Durability::Patient);
    assert_eq!(apply(&store, commit), CommitAnswer::Committed);
    assert_eq!(balance(&store, "a"), 10);
    let again = core.commit(&txn("1"), &store, 0).unwrap();
    // Acked once durable, but on another writer's sync if one comes soon (nobody waits on it).
    assert_eq!(again.durability, Durability::Patient);
    assert_eq!(apply(&store, again), CommitAnswer::AlreadyCommitted);
    assert_eq!(balance(&store, "a"), 10);
    assert_eq!(core.locked_keys(), 0);
    assert_eq!(
        core.status(&txn("1"), &store).unwrap(),
        TxnStatus::Committed
    );
}

#[test]
fn a_yes_is_withdrawn_if_the_txn_was_aborted_while_it_became_durable() {
    let store = MemStore::new();
    let mut core = ParticipantCore::new();
    let step = ready(
        core.prepare(&req("1", vec![add("a", 1)]), &store, 0)
            .unwrap(),
    );
    store.apply(step.write.clone()).unwrap();
    // An Abort overtakes the vote before the record is durable.
    assert_eq!(
        abort(&mut core, &store, "1", AbortSource::Coordinator),
        AbortAnswer::Aborted
    );
    store.sync().unwrap();
    assert!(matches!(
        core.confirm_vote(&txn("1"), step.answer),
        Vote::No { .. }
    ));
}

#[test]
fn bound_violation_votes_no_lazily_and_holds_nothing() {
    let store = MemStore::new();
    let mut core = ParticipantCore::new();
    let step = ready(
        core.prepare(&req("1", vec![add("a", -5)]), &store, 0)
            .unwrap(),
    );
    assert_eq!(step.durability, Durability::Lazy);
    let Vote::No { reason } = core.confirm_vote(&txn("1"), apply(&store, step)) else {
        panic!("expected NO")
    };
    assert!(reason.contains("below the minimum 0"), "{reason}");
    assert_eq!(core.locked_keys(), 0);
    assert_eq!(core.in_doubt(), 0);
    assert_eq!(core.status(&txn("1"), &store).unwrap(), TxnStatus::Aborted);
}

#[test]
fn conflicting_prepare_is_blocked_until_decision() {
    let store = MemStore::new();
    let mut core = ParticipantCore::new();
    prepare(&mut core, &store, "1", vec![add("a", 1)]);
    assert_eq!(
        core.prepare(&req("2", vec![add("a", 1)]), &store, 0)
            .unwrap(),
        Attempt::Blocked {
            holder: txn("1"),
            wait: LockWait::Full
        }
    );
    assert_eq!(core.lock_waiters(), 1, "the blocked Prepare is queued");
    assert!(core.check_readable(&[b"a".to_vec()]).is_err());
    let over = core.prepare_lock_wait_over(&req("2", vec![add("a", 1)]), &txn("1"), 50, 0);
    assert_eq!(
        core.lock_waiters(),
        0,
        "a Prepare whose wait is over leaves the queue"
    );
    assert!(over.released, "and wakes those behind it");
    let Vote::No { reason } = core.confirm_vote(&txn("2"), apply(&store, over)) else {
        panic!("a blocked Prepare votes NO");
    };
    assert!(
        reason.contains("lock conflict with txn 1 (waited 50 ms)"),
        "{reason}"
    );
    let step = core
        .abort(&txn("1"), AbortSource::Coordinator, &store, 0)
        .unwrap();
    // Presumed abort: discarding a prepared state needs nothing durable, but frees locks.
    assert_eq!(step.durability, Durability::Lazy);
    assert!(step.released);
    apply(&store, step);
    assert!(matches!(
        prepare(&mut core, &store, "2", vec![add("a", 1)]),
        Vote::Yes { .. }
    ));
    // The aborted txn stays aborted: Commit is refused, a late Prepare votes NO.
    assert!(matches!(
        apply(&store, core.commit(&txn("1"), &store, 0).unwrap()),
        CommitAnswer::Refused(Refusal::Conflict(_))
    ));
    assert!(matches!(
        prepare(&mut core, &store, "1", vec![add("b", 1)]),
        Vote::No { .. }
    ));
}

#[test]
fn an_abort_for_a_txn_never_prepared_is_forced_when_asked_over_the_wire() {
    let store = MemStore::new();
    let mut core = ParticipantCore::new();
    let step = core
        .abort(&txn("9"), AbortSource::Coordinator, &store, 0)
        .unwrap();
    assert_eq!(step.durability, Durability::Forced);
    assert_eq!(apply(&store, step), AbortAnswer::Aborted);
    assert!(matches!(
        prepare(&mut core, &store, "9", vec![add("a", 1)]),
        Vote::No { .. }
    ));
    let again = core
        .abort(&txn("9"), AbortSource::Coordinator, &store, 0)
        .unwrap();
    assert_eq!(
        (again.durability, again.answer),
        (Durability::Forced, AbortAnswer::AlreadyAborted)
    );
    // The resolver's own tombstone needs no fsync: nobody is promised anything.
    let mine = core
        .abort(&txn("10"), AbortSource::Resolver, &store, 0)
        .unwrap();
    assert_eq!(mine.durability, Durability::Lazy);
    assert!(matches!(
        apply(&store, core.commit(&txn("11"), &store, 0).unwrap()),
        CommitAnswer::Refused(Refusal::Unknown)
    ));
}

#[test]
fn a_refusal_because_it_committed_is_forced() {
    let store = MemStore::new();
    let mut core = ParticipantCore::new();
    prepare(&mut core, &store, "1", vec![add("a", 1)]);
    store
        .apply(core.commit(&txn("1"), &store, 0).unwrap().write)
        .unwrap();
    let step = core
        .abort(&txn("1"), AbortSource::Coordinator, &store, 0)
        .unwrap();
    assert_eq!(step.durability, Durability::Forced);
    assert!(matches!(
        step.answer,
        AbortAnswer::Refused(Refusal::Conflict(_))
    ));
}

#[test]
fn only_an_operator_overrides_a_hold() {
    let store = MemStore::new();
    let mut core = ParticipantCore::new();
    prepare(&mut core, &store, "1", vec![add("a", 1)]);
    let held = core.hold(&txn("1"), &store).unwrap();
    assert_eq!(
        (held.durability, held.answer),
        (Durability::Forced, TxnStatus::Prepared)
    );
    assert_eq!(
        abort(&mut core, &store, "1", AbortSource::Resolver),
        AbortAnswer::LeftHeld
    );
    assert!(matches!(
        abort(&mut core, &store, "1", AbortSource::Coordinator),
        AbortAnswer::Refused(Refusal::Conflict(_))
    ));
    assert!(core.is_prepared(&txn("1")));
    assert_eq!(
        abort(&mut core, &store, "1", AbortSource::Operator),
        AbortAnswer::Aborted
    );
    assert!(!core.is_held(&txn("1")));
    // Release undoes a hold and says where the txn stands.
    prepare(&mut core, &store, "2", vec![add("b", 1)]);
    core.hold(&txn("2"), &store).unwrap();
    assert_eq!(
        core.release(&txn("2"), &store).unwrap(),
        TxnStatus::Prepared
    );
    assert_eq!(
        abort(&mut core, &store, "2", AbortSource::Resolver),
        AbortAnswer::Aborted
    );
}

#[test]
fn a_peer_asking_about_a_txn_never_prepared_gets_a_durable_tombstone() {
    let store = MemStore::new();
    let mut core = ParticipantCore::new();
    let step = core.query_peer(&txn("1"), &store, 0).unwrap();
    assert_eq!(step.durability, Durability::Forced);
    assert_eq!(apply(&store, step), TxnStatus::Aborted);
    store.crash();
    assert_eq!(core.status(&txn("1"), &store).unwrap(), TxnStatus::Aborted);
    assert!(matches!(
        prepare(&mut core, &store, "1", vec![add("a", 1)]),
        Vote::No { .. }
    ));
    prepare(&mut core, &store, "2", vec![add("a", 1)]);
    assert_eq!(
        apply(&store, core.query_peer(&txn("2"), &store, 0).unwrap()),
        TxnStatus::Prepared
    );
}

#[test]
fn cooperative_termination_verdicts() {
    assert_eq!(peer_verdict(TxnStatus::Committed), Some(Decision::Commit));
    assert_eq!(peer_verdict(TxnStatus::Aborted), Some(Decision::Abort));
    assert_eq!(peer_verdict(TxnStatus::Unknown), Some(Decision::Abort));
    assert_eq!(peer_verdict(TxnStatus::Prepared), None);
    let store = MemStore::new();
    let mut core = ParticipantCore::new();
    prepare(&mut core, &store, "1", vec![add("a", 1)]);
    let step = core
        .resolve(&txn("1"), Decision::Commit, &store, 0)
        .unwrap();
    assert_eq!(apply(&store, step), Resolved::Applied);
    assert_eq!(balance(&store, "a"), 1);
    assert!(matches!(
        apply(
            &store,
            core.resolve(&txn("1"), Decision::Abort, &store, 0).unwrap()
        ),
        Resolved::Refused(_)
    ));
}

#[test]
fn commit_batch_commits_each_once_and_forgets_when_told() {
    let store = MemStore::new();
    let mut core = ParticipantCore::new();
    prepare(&mut core, &store, "1", vec![add("a", 1)]);
    prepare(&mut core, &store, "2", vec![add("b", 1)]);
    let step = core
        .commit_batch(
            &[txn("1"), txn("1"), txn("2"), txn("3")],
            &[],
            true,
            &store,
            0,
        )
        .unwrap();
    assert!(step.released);
    let answer = apply(&store, step);
    assert_eq!(answer.committed.len(), 2);
    assert_eq!(answer.refused, vec![(txn("3"), Refusal::Unknown)]);
    assert_eq!((balance(&store, "a"), balance(&store, "b")), (1, 1));
    // Forget makes the commit expire (an expiry index entry), unless outcomes are kept.
    let kept = core
        .commit_batch(&[], &[txn("1")], false, &store, 5)
        .unwrap();
    assert!(kept.write.is_empty());
    let forgotten = core
        .commit_batch(&[], &[txn("1")], true, &store, 5)
        .unwrap();
    assert!(!forgotten.write.is_empty());
}

#[test]
fn one_phase_applies_once_and_a_duplicate_changes_nothing() {
    let store = MemStore::new();
    let mut core = ParticipantCore::new();
    assert!(matches!(
        one_phase(&mut core, &store, "1", &[add("a", 10)]),
        OnePhaseAnswer::Committed { .. }
    ));
    assert_eq!(balance(&store, "a"), 10);
    assert_eq!(
        one_phase(&mut core, &store, "1", &[add("a", 10)]),
        OnePhaseAnswer::AlreadyCommitted
    );
    assert_eq!(balance(&store, "a"), 10);
    assert_eq!(
        core.status(&txn("1"), &store).unwrap(),
        TxnStatus::Committed
    );
    assert_eq!(core.locked_keys(), 0);
    assert_eq!(core.in_doubt(), 0);
}

#[test]
fn one_phase_refuses_after_an_abort_and_on_a_failed_check() {
    let store = MemStore::new();
    let mut core = ParticipantCore::new();
    // An Abort that overtakes the one-phase call leaves a tombstone; the call refuses.
    abort(&mut core, &store, "1", AbortSource::Coordinator);
    assert!(matches!(
        one_phase(&mut core, &store, "1", &[add("a", 10)]),
        OnePhaseAnswer::Refused { .. }
    ));
    // A check that fails (balance below min) refuses, durably, and records the abort.
    let step = ready(
        core.commit_one_phase(&txn("2"), &[add("a", -1)], &store, 0)
            .unwrap(),
    );
    assert_eq!(step.durability, Durability::Forced);
    let OnePhaseAnswer::Refused { reason } = apply(&store, step) else {
        panic!("expected a refusal");
    };
    assert!(reason.contains("below"), "{reason}");
    assert_eq!(core.status(&txn("2"), &store).unwrap(), TxnStatus::Aborted);
    assert_eq!(store.get(&data_key(b"a")).unwrap(), None);
    // And an Abort after a one-phase commit is refused: the outcome is fixed.
    one_phase(&mut core, &store, "3", &[add("a", 1)]);
    assert!(matches!(
        abort(&mut core, &store, "3", AbortSource::Coordinator),
        AbortAnswer::Refused(Refusal::Conflict(_))
    ));
}

#[test]
fn one_phase_waits_for_a_prepared_txn_and_refuses_durably_when_the_wait_is_over() {
    let store = MemStore::new();
    let mut core = ParticipantCore::new();
    prepare(&mut core, &store, "1", vec![add("a", 10)]);
    assert_eq!(
        core.commit_one_phase(&txn("2"), &[add("a", 1)], &store, 0)
            .unwrap(),
        Attempt::Blocked {
            holder: txn("1"),
            wait: LockWait::Full
        }
    );
    // The prepared txn's own id cannot be committed in one phase.
    assert!(matches!(
        one_phase(&mut core, &store, "1", &[add("a", 1)]),
        OnePhaseAnswer::Refused { .. }
    ));
    let over = core
        .one_phase_lock_wait_over(&txn("2"), &txn("1"), 50, &store, 0)
        .unwrap()
        .expect("a refusal");
    assert_eq!(over.durability, Durability::Forced);
    apply(&store, over);
    store.crash();
    // The tombstone survives a crash: a redelivered call cannot commit any more.
    assert!(matches!(
        one_phase(&mut core, &store, "2", &[add("a", 1)]),
        OnePhaseAnswer::Refused { .. }
    ));
    // A txn that committed meanwhile: look again instead of refusing.
    apply(&store, core.commit(&txn("1"), &store, 0).unwrap());
    one_phase(&mut core, &store, "3", &[add("a", 1)]);
    assert_eq!(
        core.one_phase_lock_wait_over(&txn("3"), &txn("1"), 50, &store, 0)
            .unwrap(),
        None
    );
    assert_eq!(balance(&store, "a"), 11);
}

#[test]
fn recovery_after_crash_keeps_durable_prepared_records_and_their_locks() {
    let store = MemStore::new();
    let mut core = ParticipantCore::new();
    prepare(&mut core, &store, "1", vec![add("a", 1)]);
    let step = ready(
        core.prepare(&req("2", vec![add("b", 1)]), &store, 0)
            .unwrap(),
    );
    store.apply(step.write).unwrap(); // applied, never synced: lost in the crash (no YES sent)
    store.crash();
    let mut core = ParticipantCore::new();
    assert_eq!(core.recover(&store).unwrap(), vec![txn("1")]);
    assert!(core.check_readable(&[b"a".to_vec()]).is_err());
    assert!(core.check_readable(&[b"b".to_vec()]).is_ok());
    apply(&store, core.commit(&txn("1"), &store, 0).unwrap());
    assert_eq!(balance(&store, "a"), 1);
}

#[test]
fn reads_checks_and_puts_in_one_branch() {
    let store = MemStore::new();
    let mut core = ParticipantCore::new();
    let ops = vec![
        Op::Check {
            key: b"k".to_vec(),
            expected: None,
        },
        Op::Put {
            key: b"k".to_vec(),
            value: b"v1".to_vec(),
        },
        Op::Read { key: b"k".to_vec() },
        Op::Add {
            key: b"n".to_vec(),
            delta: i64::MAX,
            min: None,
            max: None,
        },
    ];
    let Vote::Yes { reads } = prepare(&mut core, &store, "1", ops) else {
        panic!("expected YES")
    };
    assert_eq!(reads[0].value.as_deref(), Some(&b"v1"[..]));
    let overflow = vec![
        Op::Put {
            key: b"m".to_vec(),
            value: encode_counter(i64::MAX),
        },
        Op::Add {
            key: b"m".to_vec(),
            delta: 1,
            min: None,
            max: None,
        },
    ];
    let Vote::No { reason } = prepare(&mut core, &store, "2", overflow) else {
        panic!("expected NO")
    };
    assert!(reason.contains("overflows"), "{reason}");
}

#[test]
fn corrupt_outcome_is_an_error_not_absent() {
    let store = MemStore::new();
    let mut core = ParticipantCore::new();
    store.corrupt(&outcome_key(&txn("1")), b"garbage!".to_vec());
    assert!(matches!(
        core.commit(&txn("1"), &store, 0),
        Err(txn_types::store::StoreError::Corrupt(_))
    ));
    store.corrupt(&prepared_key(&txn("2")), b"garbage!".to_vec());
    assert!(core.recover(&store).is_err());
}

#[test]
fn a_prepare_after_the_commit_is_a_revote_not_a_second_prepare() {
    let store = MemStore::new();
    let mut core = ParticipantCore::new();
    prepare(&mut core, &store, "1", vec![add("a", 5)]);
    apply(&store, core.commit(&txn("1"), &store, 0).unwrap());
    let step = ready(
        core.prepare(&req("1", vec![add("a", 5)]), &store, 0)
            .unwrap(),
    );
    assert!(step.write.is_empty(), "nothing prepared again");
    assert!(matches!(step.answer, PrepareAnswer::Revote { .. }));
    assert_eq!(core.in_doubt(), 0);
    assert_eq!(core.locked_keys(), 0);
    assert_eq!(balance(&store, "a"), 5);
}

#[test]
fn a_branch_whose_record_is_too_large_votes_no() {
    let store = MemStore::new();
    let mut core = ParticipantCore::new();
    let value = vec![b'v'; txn_types::types::MAX_VALUE_LEN];
    let ops: Vec<Op> = (0..70)
        .map(|i| Op::Put {
            key: format!("k{i}").into_bytes(),
            value: value.clone(),
        })
        .collect();
    let Vote::No { reason } = prepare(&mut core, &store, "1", ops) else {
        panic!("a record over MAX_RECORD_BYTES cannot be made durable safely");
    };
    assert!(reason.contains("the limit is"), "{reason}");
    assert_eq!(core.locked_keys(), 0);
}

#[test]
fn locks_writers_exclusive_readers_shared() {
    let store = MemStore::new();
    let mut core = ParticipantCore::new();
    // A branch that reads and writes one key holds one exclusive lock on it.
    prepare(
        &mut core,
        &store,
        "1",
        vec![read("a"), add("a", 1), read("r")],
    );
    assert_eq!(core.locked_keys(), 2);
    // Readers share: another reader of r goes ahead, a reader of a waits, a writer of r waits.
    assert!(matches!(
        prepare(&mut core, &store, "2", vec![read("r")]),
        Vote::Yes { .. }
    ));
    assert!(matches!(
        core.prepare(&req("3", vec![read("a")]), &store, 0).unwrap(),
        Attempt::Blocked { .. }
    ));
    assert!(matches!(
        core.prepare(&req("4", vec![add("r", 1)]), &store, 0)
            .unwrap(),
        Attempt::Blocked { .. }
    ));
    // Saga steps and one-phase commits take no locks, but wait for prepared txns' locks.
    assert_eq!(core.lock_conflict(&[read("a")]), Some(txn("1")));
    assert_eq!(core.lock_conflict(&[read("r")]), None);
    assert!(core.lock_conflict(&[add("r", 1)]).is_some());
    assert_eq!(core.lock_conflict_keys(&[b"a".to_vec()]), Some(txn("1")));
    assert_eq!(core.lock_conflict_keys(&[b"z".to_vec()]), None);
    let ex = saga::execute(&mut core, at(&txn("9"), 0), &[add("a", 1)], &[], &store, 0).unwrap();
    assert_eq!(
        ex,
        Attempt::Blocked {
            holder: txn("1"),
            wait: LockWait::Full
        }
    );
}

#[test]
fn counter_bounds_are_inclusive() {
    let store = MemStore::new();
    let mut core = ParticipantCore::new();
    let bounded = |delta, min, max| Op::Add {
        key: b"n".to_vec(),
        delta,
        min,
        max,
    };
    assert!(matches!(
        prepare(&mut core, &store, "1", vec![bounded(0, Some(0), Some(0))]),
        Vote::Yes { .. }
    ));
    apply(&store, core.commit(&txn("1"), &store, 0).unwrap());
    assert!(matches!(
        prepare(&mut core, &store, "2", vec![bounded(5, None, Some(5))]),
        Vote::Yes { .. }
    ));
    apply(&store, core.commit(&txn("2"), &store, 0).unwrap());
    let Vote::No { reason } = prepare(&mut core, &store, "3", vec![bounded(1, None, Some(5))])
    else {
        panic!("6 is above the maximum 5");
    };
    assert!(reason.contains("above the maximum 5"), "{reason}");
    // 5 - 7 = -2 is below the minimum -1; 5 - 6 = -1 is on it.
    assert!(matches!(
        prepare(&mut core, &store, "4", vec![bounded(-7, Some(-1), None)]),
        Vote::No { .. }
    ));
    assert!(matches!(
        prepare(&mut core, &store, "6", vec![bounded(-6, Some(-1), None)]),
        Vote::Yes { .. }
    ));
    // A branch sees its own earlier writes.
    let ops = vec![
        Op::Put {
            key: b"m".to_vec(),
            value: b"7".to_vec(),
        },
        Op::Check {
            key: b"m".to_vec(),
            expected: Some(b"7".to_vec()),
        },
    ];
    assert!(matches!(
        prepare(&mut core, &store, "5", ops),
        Vote::Yes { .. }
    ));
}

#[test]
fn expired_outcomes_are_swept_after_their_cutoff_only() {
    let store = MemStore::new();
    let mut core = ParticipantCore::new();
    for (t, at) in [("1", 100), ("2", 200), ("3", 300)] {
        apply(
            &store,
            core.abort(&txn(t), AbortSource::Coordinator, &store, at)
                .unwrap(),
        );
    }
    assert_eq!(list_outcomes(&store, "", 10).unwrap().len(), 3);
    let (batch, more) = sweep_expired(&store, 250, 10).unwrap();
    assert!(!more);
    store.apply(batch).unwrap();
    let left: Vec<String> = list_outcomes(&store, "", 10)
        .unwrap()
        .into_iter()
        .map(|o| o.txn_id)
        .collect();
    assert_eq!(left, vec!["3".to_owned()]);
    // A page that fills up says more may be due.
    apply(
        &store,
        core.abort(&txn("4"), AbortSource::Coordinator, &store, 400)
            .unwrap(),
    );
    let (batch, more) = sweep_expired(&store, 1_000, 1).unwrap();
    assert!(more);
    store.apply(batch).unwrap();
    assert_eq!(list_outcomes(&store, "", 10).unwrap().len(), 1);
    // A record rewritten after its index entry (a forgotten commit) keeps its newer entry.
    prepare(&mut core, &store, "5", vec![add("a", 1)]);
    apply(&store, core.commit(&txn("5"), &store, 0).unwrap());
    let forget = core.forget(&txn("5"), &store, 500).unwrap().unwrap();
    store.apply(forget).unwrap();
    let (batch, _) = sweep_expired(&store, 450, 10).unwrap();
    store.apply(batch).unwrap();
    assert_eq!(
        core.status(&txn("5"), &store).unwrap(),
        TxnStatus::Committed
    );
    let listed = list_outcomes(&store, "4", 10).unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|o| (o.txn_id.as_str(), o.status))
            .collect::<Vec<_>>(),
        vec![("5", TxnStatus::Committed)]
    );
}

#[test]
fn barriers_are_per_step_and_keep_their_answers() {
    let store = MemStore::new();
    let mut core = ParticipantCore::new();
    let saga_id = txn("7");
    let run = |step: Step<StepResult>| apply(&store, step);
    // Compensating step 0 refuses step 0's late Execute, not step 1's.
    let c = apply(
        &store,
        ready(saga::compensate(&mut core, at(&saga_id, 0), &[], &store, 0).unwrap()),
    );
    assert_eq!(c, Compensation::Null);
    let late = run(ready(
        saga::execute(&mut core, at(&saga_id, 0), &[add("a", 1)], &[], &store, 0).unwrap(),
    ));
    assert!(matches!(late, StepResult::Refused { .. }));
    let other = run(ready(
        saga::execute(&mut core, at(&saga_id, 1), &[add("a", 1)], &[], &store, 0).unwrap(),
    ));
    assert!(matches!(other, StepResult::Succeeded { .. }));
    // A failed step answers the same failure, reason included, when asked again.
    let failed = run(ready(
        saga::execute(&mut core, at(&saga_id, 2), &[add("a", -5)], &[], &store, 0).unwrap(),
    ));
    let again = run(ready(
        saga::execute(&mut core, at(&saga_id, 2), &[add("a", -5)], &[], &store, 0).unwrap(),
    ));
    assert_eq!(failed, again);
    let StepResult::Failed { reason } = again else {
        panic!("expected the recorded failure");
    };
    assert!(reason.contains("below the minimum"), "{reason}");
    let barriers = saga::list_barriers(&store, b"", 10).unwrap();
    assert_eq!(barriers.len(), 3);
    assert!(barriers.iter().all(|(k, _)| k.starts_with(b"b/7/")));
}

#[test]
fn outcome_records_name_the_members_and_the_writes_and_keep_them_when_forgotten() {
    use crate::keys::OutcomeFacts;
    let store = MemStore::new();
    let mut core = ParticipantCore::new();
    let facts = |t: &str| {
        list_outcomes(&store, "", 100)
            .unwrap()
            .into_iter()
            .find(|o| o.txn_id == t)
            .map(|o| (o.status, o.facts))
    };
    let p1 = vec!["p1".to_owned()];
    prepare(&mut core, &store, "1", vec![add("a", 5), add("b", 5)]);
    apply(&store, core.commit(&txn("1"), &store, 0).unwrap());
    let committed = OutcomeFacts {
        participants: p1.clone(),
        writes: 2,
        prepared_at_unix_ms: 0,
    };
    assert_eq!(facts("1"), Some((TxnStatus::Committed, committed.clone())));
    store
        .apply(core.forget(&txn("1"), &store, 10).unwrap().unwrap())
        .unwrap();
    assert_eq!(facts("1"), Some((TxnStatus::Committed, committed)));
    prepare(&mut core, &store, "2", vec![add("a", 1)]);
    abort(&mut core, &store, "2", AbortSource::Coordinator);
    assert_eq!(
        facts("2"),
        Some((
            TxnStatus::Aborted,
            OutcomeFacts {
                participants: p1.clone(),
                writes: 1,
                prepared_at_unix_ms: 0,
            }
        ))
    );
    abort(&mut core, &store, "3", AbortSource::Coordinator);
    assert_eq!(
        facts("3"),
        Some((TxnStatus::Aborted, OutcomeFacts::unknown()))
    );
    // An overdraft votes NO: the members are known, nothing was written.
    assert!(matches!(
        prepare(&mut core, &store, "4", vec![add("z", -1)]),
        Vote::No { .. }
    ));
    assert_eq!(
        facts("4"),
        Some((
            TxnStatus::Aborted,
            OutcomeFacts {
                participants: p1,
                ..OutcomeFacts::unknown()
            }
        ))
    );
    one_phase(&mut core, &store, "5", &[add("c", 3)]);
    assert_eq!(
        facts("5"),
        Some((
            TxnStatus::Committed,
            OutcomeFacts {
                writes: 1,
                ..OutcomeFacts::unknown()
            }
        ))
    );
}

/// A whole-bank read queued behind a prepared writer is not overtaken by a later writer of
/// another key: that writer is told it waits behind a reader (the short wait), and the reader
/// gets its locks once the first writer commits.
#[test]
fn a_queued_reader_goes_before_later_writers() {
    let store = MemStore::new();
    let mut core = ParticipantCore::new();
    prepare(&mut core, &store, "w1", vec![add("a", 1)]);
    let audit = req("r", vec![read("a"), read("b")]);
    assert!(matches!(
        core.prepare(&audit, &store, 0).unwrap(),
        Attempt::Blocked { .. }
    ));
    assert_eq!(
        core.prepare(&req("w2", vec![add("b", 1)]), &store, 0)
            .unwrap(),
        Attempt::Blocked {
            holder: txn("r"),
            wait: LockWait::BehindReader
        }
    );
    let step = core.commit(&txn("w1"), &store, 0).unwrap();
    apply(&store, step);
    let Attempt::Ready(step) = core.prepare(&audit, &store, 0).unwrap() else {
        panic!("the reader is first in line once the writer is gone");
    };
    assert!(matches!(apply(&store, step), PrepareAnswer::Yes { .. }));
    assert!(matches!(
        core.prepare(&req("w2", vec![add("b", 1)]), &store, 0)
            .unwrap(),
        Attempt::Blocked { .. }
    ));
}

/// A queued Prepare that is granted and then votes NO (a failed check) leaves the queue and
/// its locks in the same step, so its answer must wake the requests queued behind it.
#[test]
fn a_queued_prepare_that_votes_no_wakes_those_behind() {
    let store = MemStore::new();
    let mut core = ParticipantCore::new();
    prepare(&mut core, &store, "w1", vec![add("a", 1)]);
    let overdraft = req("t", vec![add("a", -1_000)]);
    assert!(matches!(
        core.prepare(&overdraft, &store, 0).unwrap(),
        Attempt::Blocked { .. }
    ));
    let step = core.commit(&txn("w1"), &store, 0).unwrap();
    apply(&store, step);
    let step = ready(core.prepare(&overdraft, &store, 0).unwrap());
    assert!(matches!(step.answer, PrepareAnswer::No { .. }));
    assert!(step.released, "the NO of a queued Prepare wakes the queue");
    assert_eq!(core.lock_waiters(), 0);
    // A Prepare that never queued and votes NO has nobody to wake.
    let step = ready(
        core.prepare(&req("u", vec![add("b", -1)]), &store, 0)
            .unwrap(),
    );
    assert!(matches!(step.answer, PrepareAnswer::No { .. }));
    assert!(!step.released);
}

/// An Abort that overtakes a Prepare still queued for locks takes it out of the queue, and
/// says so, so that the driver wakes the requests behind it.
#[test]
fn an_abort_takes_a_queued_prepare_out_of_the_queue() {
    let store = MemStore::new();
    let mut core = ParticipantCore::new();
    prepare(&mut core, &store, "1", vec![add("a", 1)]);
    assert!(matches!(
        core.prepare(&req("2", vec![add("a", 1)]), &store, 0)
            .unwrap(),
        Attempt::Blocked { .. }
    ));
    let step = core
        .abort(&txn("2"), AbortSource::Coordinator, &store, 0)
        .unwrap();
    assert!(step.released);
    assert_eq!(core.lock_waiters(), 0);
    apply(&store, step);
    assert!(matches!(
        core.prepare(&req("2", vec![add("a", 1)]), &store, 0)
            .unwrap(),
        Attempt::Ready(Step {
            answer: PrepareAnswer::No { .. },
            ..
        })
    ));
}

#[test]
fn at_the_votes_every_no_is_a_durable_tombstone() {
    use txn_types::types::CommitPoint;
    let store = MemStore::new();
    let mut core = ParticipantCore::new();
    let mut r = req(
        "1",
        vec![Op::Add {
            key: b"a".to_vec(),
            delta: -5,
            min: Some(0),
            max: None,
        }],
    );
    r.commit_point = CommitPoint::Votes;
    let Attempt::Ready(step) = core.prepare(&r, &store, 0).unwrap() else {
        panic!("no lock to wait for");
    };
    assert_eq!(
        step.durability,
        Durability::Forced,
        "the NO is the abort's fence"
    );
    assert!(!step.write.is_empty());
    assert!(matches!(apply(&store, step), PrepareAnswer::No { .. }));
    // A lock wait that runs out fences as well.
    prepare(&mut core, &store, "2", vec![add("b", 1)]);
    let mut blocked = req("3", vec![add("b", 1)]);
    blocked.commit_point = CommitPoint::Votes;
    assert!(matches!(
        core.prepare(&blocked, &store, 0).unwrap(),
        Attempt::Blocked { .. }
    ));
    let over = core.prepare_lock_wait_over(&blocked, &txn("2"), 50, 0);
    assert_eq!(over.durability, Durability::Forced);
    apply(&store, over);
    assert_eq!(core.status(&txn("3"), &store).unwrap(), TxnStatus::Aborted);
    // With a logged decision the same NO needs nothing durable.
    let over = core.prepare_lock_wait_over(&req("4", vec![add("b", 1)]), &txn("2"), 50, 0);
    assert_eq!(over.durability, Durability::Lazy);
}

#[test]
fn at_the_votes_every_peer_prepared_means_commit() {
    use crate::resolve::peers_verdict;
    use txn_types::types::CommitPoint::{Decision as Logged, Votes};
    let prepared = [TxnStatus::Prepared, TxnStatus::Prepared];
    assert_eq!(peers_verdict(Votes, &prepared, 2), Some(Decision::Commit));
    assert_eq!(
        peers_verdict(Logged, &prepared, 2),
        None,
        "the coordinator may abort"
    );
    assert_eq!(
        peers_verdict(Votes, &prepared[..1], 2),
        None,
        "one peer not heard"
    );
    assert_eq!(
        peers_verdict(Votes, &[TxnStatus::Prepared, TxnStatus::Aborted], 2),
        Some(Decision::Abort)
    );
}
