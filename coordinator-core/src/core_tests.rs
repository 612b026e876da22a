//! Unit tests of the 2PC core, event by event.
use super::*;

fn p(s: &str) -> ParticipantId {
    ParticipantId::parse("p", s).unwrap()
}

fn two() -> (CoordinatorCore, TxnId) {
    let mut c = CoordinatorCore::new(3);
    let t = c.begin(vec![p("p1"), p("p2")], 100);
    (c, t)
}

#[test]
fn ids_carry_the_epoch_and_never_repeat() {
    let mut c = CoordinatorCore::new(3);
    let a = c.begin(vec![p("p1")], u64::MAX);
    let b = c.begin(vec![p("p1")], u64::MAX);
    assert_ne!(a, b);
    assert!(a.as_str().starts_with("3."));
}

#[test]
fn all_yes_forces_decision_before_reply_and_commits() {
    let (mut c, t) = two();
    assert!(c.on_vote(&t, 0, VoteResult::Yes, 0, 10).is_empty());
    assert_eq!(
        c.resolve_with(&t, false, CommitPoint::Decision),
        Resolution::Pending
    );
    let e = c.on_vote(&t, 1, VoteResult::Yes, 0, 10);
    assert!(matches!(e.as_slice(), [Effect::PersistDecision { .. }]));
    // Not durable yet: Resolve must not say COMMIT, and certainly not ABORT.
    assert_eq!(
        c.resolve_with(&t, false, CommitPoint::Decision),
        Resolution::Pending
    );
    let e = c.on_decision_durable(&t);
    assert_eq!(e[0], Effect::ReplyCommitted);
    assert_eq!(e.len(), 3);
    assert_eq!(
        c.resolve_with(&t, true, CommitPoint::Decision),
        Resolution::Decided(Decision::Commit)
    );
    assert!(c.on_commit_ack(&t, &p("p1")).is_empty());
    // A duplicate ack changes nothing.
    assert!(c.on_commit_ack(&t, &p("p1")).is_empty());
    let e = c.on_commit_ack(&t, &p("p2"));
    assert!(matches!(e.as_slice(), [Effect::EndDecision { .. }]));
    assert_eq!(c.committing(), 0);
}

#[test]
fn a_no_vote_aborts_and_tells_everyone() {
    let (mut c, t) = two();
    c.on_vote(&t, 0, VoteResult::Yes, 0, 0);
    let e = c.on_vote(
        &t,
        1,
        VoteResult::No {
            reason: "below the minimum".into(),
        },
        0,
        0,
    );
    let Effect::ReplyAborted {
        reason,
        failed_branch,
    } = &e[0]
    else {
        panic!()
    };
    assert!(reason.contains("p2 voted NO"));
    assert_eq!(*failed_branch, Some(1));
    assert_eq!(e.len(), 3);
    // Late and duplicate messages after the abort do nothing.
    assert!(c.on_vote(&t, 1, VoteResult::Yes, 0, 0).is_empty());
    assert!(c.on_prepare_timeout(&t).is_empty());
    assert_eq!(
        c.resolve_with(&t, false, CommitPoint::Decision),
        Resolution::Decided(Decision::Abort)
    );
}

#[test]
fn timeout_aborts_while_preparing_only() {
    let (mut c, t) = two();
    c.on_vote(&t, 0, VoteResult::Yes, 0, 0);
    let e = c.on_prepare_timeout(&t);
    let Effect::ReplyAborted { reason, .. } = &e[0] else {
        panic!()
    };
    assert!(reason.contains("p2"), "{reason}");
    let (mut c, t) = two();
    c.on_vote(&t, 0, VoteResult::Yes, 0, 0);
    c.on_vote(&t, 1, VoteResult::Yes, 0, 0);
    assert!(c.on_prepare_timeout(&t).is_empty(), "no abort once decided");
}

#[test]
fn recovered_decisions_resend_commit() {
    let mut c = CoordinatorCore::new(4);
    let t = TxnId::generated(3, 9);
    let out = c.recover(vec![(t.clone(), vec![p("p1"), p("p2")], 0)]);
    assert_eq!(out[0].1.len(), 2);
    assert_eq!(
        c.resolve_with(&t, true, CommitPoint::Decision),
        Resolution::Decided(Decision::Commit)
    );
    c.on_commit_ack(&t, &p("p1"));
    assert_eq!(
        c.view(&t),
        Some(TxnView::Committing {
            unacked: vec![p("p2")]
        })
    );
}

#[test]
fn unknown_txn_resolves_abort_unless_logged() {
    let c = CoordinatorCore::new(1);
    let t = TxnId::generated(0, 1);
    assert_eq!(
        c.resolve_with(&t, false, CommitPoint::Decision),
        Resolution::Decided(Decision::Abort)
    );
    assert_eq!(
        c.resolve_with(&t, true, CommitPoint::Decision),
        Resolution::Decided(Decision::Commit)
    );
}

#[test]
fn a_vote_after_the_deadline_counts_as_a_timeout() {
    let (mut c, t) = two();
    c.on_vote(&t, 0, VoteResult::Yes, 10, 0);
    let e = c.on_vote(&t, 1, VoteResult::Yes, 100, 0);
    assert!(
        matches!(&e[0], Effect::ReplyAborted { reason, .. } if reason.contains("deadline")),
        "{e:?}"
    );
}

#[test]
fn an_operator_pin_makes_resolve_wait_and_an_operator_abort_reaches_the_client() {
    let (mut c, t) = two();
    assert!(c.pin(&t));
    assert!(!c.pin(&t), "one operator action at a time");
    assert_eq!(
        c.resolve_with(&t, true, CommitPoint::Decision),
        Resolution::Pending
    );
    c.unpin(&t);
    assert!(c.force_abort(&t).is_some());
    let e = c.on_vote(&t, 0, VoteResult::Yes, 0, 0);
    assert!(
        matches!(&e[..], [Effect::ReplyAborted { reason, .. }] if reason == OPERATOR_ABORT_REASON)
    );
    assert!(c.on_prepare_timeout(&t).is_empty(), "told once");
}

#[test]
fn open_bumps_the_epoch_and_reloads_unended_decisions() {
    use txn_types::store::MemStore;
    let store = MemStore::new();
    let first = CoordinatorCore::open(&store).unwrap();
    assert_eq!(first.core.epoch(), 1);
    store.apply(first.epoch_write).unwrap();
    let mut b = WriteBatch::default();
    let rec = DecisionRecord {
        txn_id: "1.4".into(),
        participants: vec!["p1".into()],
        decided_at_unix_ms: 5,
        ..Default::default()
    };
    b.put(decision_key(&TxnId::generated(1, 4)), record::encode(&rec));
    store.apply(b).unwrap();
    let again = CoordinatorCore::open(&store).unwrap();
    assert_eq!(again.core.epoch(), 2);
    assert_eq!(again.resend.len(), 1);
    assert_eq!(
        again
            .core
            .resolve(&TxnId::generated(1, 4), CommitPoint::Decision, &store)
            .unwrap(),
        Resolution::Decided(Decision::Commit)
    );
    store.corrupt(&decision_key(&TxnId::generated(1, 5)), b"garbage".to_vec());
    assert!(CoordinatorCore::open(&store).is_err());
}

#[test]
fn an_operator_s_forced_commit_is_driven_like_any_other() {
    let mut c = CoordinatorCore::new(5);
    let t = TxnId::generated(4, 2);
    assert!(c.pin(&t));
    c.unpin(&t);
    assert_eq!(
        c.resolve_with(&t, false, CommitPoint::Decision),
        Resolution::Decided(Decision::Abort)
    );
    let e = c.adopt_commit(&t, vec![p("p1"), p("p2")], 9);
    assert_eq!(e.len(), 2, "a Commit to each participant: {e:?}");
    assert_eq!(c.decided_at_unix_ms(&t), Some(9));
    assert_eq!(c.participants_of(&t), Some(vec![p("p1"), p("p2")]));
    assert_eq!(
        c.resolve_with(&t, false, CommitPoint::Decision),
        Resolution::Decided(Decision::Commit)
    );
}

#[test]
fn the_operators_view_of_the_table() {
    let (mut c, t) = two();
    let u = c.begin(vec![p("p1")], u64::MAX);
    c.on_vote(&u, 0, VoteResult::Yes, 0, 0);
    c.on_decision_durable(&u);
    assert_eq!((c.in_flight(), c.committing()), (1, 1));
    let listed: Vec<TxnId> = c.list().into_iter().map(|(id, ..)| id).collect();
    assert!(listed.contains(&t) && listed.contains(&u), "{listed:?}");
}

fn two_at_votes() -> (CoordinatorCore, TxnId) {
    let mut c = CoordinatorCore::new(3);
    let t = c.begin_at(vec![p("p1"), p("p2")], 100, CommitPoint::Votes);
    (c, t)
}

#[test]
fn at_the_votes_the_last_yes_commits_with_nothing_logged() {
    let (mut c, t) = two_at_votes();
    assert!(c.on_vote(&t, 0, VoteResult::Yes, 0, 10).is_empty());
    let e = c.on_vote(&t, 1, VoteResult::Yes, 0, 10);
    assert_eq!(e[0], Effect::ReplyCommitted, "{e:?}");
    assert!(
        !e.iter()
            .any(|e| matches!(e, Effect::PersistDecision { .. }))
    );
    assert_eq!(
        c.resolve_with(&t, false, CommitPoint::Votes),
        Resolution::Decided(Decision::Commit)
    );
    assert!(c.on_commit_ack(&t, &p("p1")).is_empty());
    assert!(matches!(
        c.on_commit_ack(&t, &p("p2")).as_slice(),
        [Effect::EndDecision { .. }]
    ));
}

#[test]
fn at_the_votes_a_missing_vote_is_fenced_before_any_abort() {
    // The deadline passes with p2's vote missing: no abort yet, a fence for p2 only.
    let (mut c, t) = two_at_votes();
    c.on_vote(&t, 0, VoteResult::Yes, 0, 10);
    let e = c.on_prepare_timeout(&t);
    assert_eq!(e, vec![Effect::Fence { to: p("p2") }]);
    assert_eq!(c.view(&t), Some(TxnView::Fencing));
    assert_eq!(
        c.resolve_with(&t, false, CommitPoint::Votes),
        Resolution::Pending
    );
    assert!(
        c.force_abort(&t).is_none(),
        "an operator cannot abort past a fence"
    );
    // The fence finds p2 prepared: its YES was durable all along, so the txn commits.
    let e = c.on_fence_reply(&t, 1, true);
    assert_eq!(e[0], Effect::ReplyCommitted);

    // A failed Prepare is fenced too, and a fence that finds a tombstone aborts.
    let (mut c, t) = two_at_votes();
    let e = c.on_vote(
        &t,
        1,
        VoteResult::Failed {
            error: "p2 unreachable".into(),
        },
        0,
        10,
    );
    assert_eq!(
        e,
        vec![Effect::Fence { to: p("p1") }, Effect::Fence { to: p("p2") }]
    );
    assert!(c.on_vote(&t, 0, VoteResult::Yes, 0, 10).is_empty());
    let e = c.on_fence_reply(&t, 1, false);
    assert!(
        matches!(&e[0], Effect::ReplyAborted { reason, .. } if reason.contains("p2 unreachable")),
        "{e:?}"
    );
    assert!(e.contains(&Effect::SendAbort { to: p("p1") }));
    assert_eq!(
        c.resolve_with(&t, false, CommitPoint::Votes),
        Resolution::Decided(Decision::Abort),
        "this epoch's txn, aborted behind a fence"
    );
}

#[test]
fn at_the_votes_a_durable_no_aborts_at_once() {
    let (mut c, t) = two_at_votes();
    let e = c.on_vote(
        &t,
        0,
        VoteResult::No {
            reason: "overdraft".into(),
        },
        0,
        10,
    );
    assert!(matches!(&e[0], Effect::ReplyAborted { .. }), "{e:?}");
}

#[test]
fn a_later_epoch_sends_the_asker_to_the_participants_instead_of_presuming_abort() {
    let c = CoordinatorCore::new(4);
    let old = TxnId::generated(3, 7);
    assert_eq!(
        c.resolve_with(&old, false, CommitPoint::Votes),
        Resolution::AskParticipants
    );
    assert_eq!(
        c.resolve_with(&old, false, CommitPoint::Decision),
        Resolution::Decided(Decision::Abort)
    );
}
