//! Unit tests of the outbox as every committed change writes it, and of the events protocol:
//! the source's step, consumption through the inbox, duplicates, refusals and refunds.

use txn_types::rec::{EventKind, EventRecord, TransferState};
use txn_types::store::{MemStore, Store};
use txn_types::types::{Op, ParticipantId, TxnId, decode_counter};

use crate::core::{ParticipantCore, PrepareRequest};
use crate::keys::data_key;
use crate::outbox::read_events;
use crate::saga;
use crate::step::{Attempt, Durability, Step};
use crate::transfer::{
    Consumed, StartAnswer, TransferRequest, check_batch_start, inbox_key, read_inbox,
    read_transfer, unsettled_transfers,
};

fn id(s: &str) -> TxnId {
    TxnId::parse("t", s).unwrap()
}

fn p(s: &str) -> ParticipantId {
    ParticipantId::parse("p", s).unwrap()
}

fn add(key: &str, delta: i64, min: Option<i64>) -> Op {
    Op::Add {
        key: key.into(),
        delta,
        min,
        max: None,
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
    if step.durability.waits() {
        store.sync().unwrap();
    }
    step.answer
}

fn balance(store: &MemStore, key: &str) -> i64 {
    decode_counter(store.get(&data_key(key.as_bytes())).unwrap().as_deref()).unwrap()
}

fn events(store: &MemStore, core: &ParticipantCore) -> Vec<EventRecord> {
    read_events(store, 0, core.outbox().head(), 1_000, usize::MAX).unwrap()
}

fn kinds(evs: &[EventRecord]) -> Vec<EventKind> {
    evs.iter()
        .map(|e| EventKind::try_from(e.kind).unwrap())
        .collect()
}

/// One participant: its core and store.
struct Node {
    name: &'static str,
    core: ParticipantCore,
    store: MemStore,
}

impl Node {
    fn new(name: &'static str, seed: &[(&str, i64)]) -> Self {
        let mut n = Self {
            name,
            core: ParticipantCore::new(),
            store: MemStore::new(),
        };
        for (k, v) in seed {
            let ops = [Op::Put {
                key: k.as_bytes().to_vec(),
                value: v.to_string().into_bytes(),
            }];
            apply(
                &n.store,
                ready(
                    n.core
                        .commit_one_phase(&id(&format!("seed-{k}")), &ops, &n.store, 0)
                        .unwrap(),
                ),
            );
        }
        n
    }

    /// Delivers every event of `from`'s feed from `at` on, as a consumer does.
    fn consume_all(&mut self, from: &Node, at: u64) -> Vec<Consumed> {
        let evs = read_events(
            &from.store,
            at,
            from.core.outbox().head(),
            1_000,
            usize::MAX,
        )
        .unwrap();
        let inbox = read_inbox(&self.store, &inbox_key(from.name)).unwrap();
        assert_eq!(check_batch_start(&inbox, at), Ok(()));
        evs.iter()
            .map(|ev| {
                let step = ready(
                    self.core
                        .consume(self.name, from.name, ev, &self.store, 5)
                        .unwrap(),
                );
                apply(&self.store, step)
            })
            .collect()
    }
}

fn transfer(t: &str, amount: i64) -> TransferRequest {
    TransferRequest {
        id: id(t),
        source: p("p1"),
        destination: p("p2"),
        source_ops: vec![add("alice", -amount, Some(0))],
        destination_ops: vec![add("bob", amount, Some(0))],
    }
}

#[test]
fn every_committed_change_appends_its_event_in_the_same_durable_batch() {
    let store = MemStore::new();
    let mut core = ParticipantCore::new();
    // One-phase commit.
    let step = ready(
        core.commit_one_phase(&id("1"), &[add("a", 5, None)], &store, 10)
            .unwrap(),
    );
    assert_eq!(step.durability, Durability::Forced);
    apply(&store, step);
    // Two-phase commit of a txn whose writers are p1 and p2.
    let req = PrepareRequest {
        txn: id("2"),
        coordinator_epoch: 1,
        participants: vec![p("p1"), p("p2"), p("p3")],
        writers: vec![p("p1"), p("p2")],
        ops: vec![add("a", -2, Some(0))],
        read_only: false,
        commit_point: Default::default(),
    };
    apply(&store, ready(core.prepare(&req, &store, 11).unwrap()));
    assert_eq!(
        events(&store, &core).len(),
        1,
        "a prepare changes nothing yet"
    );
    let step = core.commit(&id("2"), &store, 12).unwrap();
    // A commit's ack is patient, but it too waits until its batch, event and all, is durable.
    assert_eq!(step.durability, Durability::Patient);
    apply(&store, step);
    // A read-only branch commits with no event.
    let read = PrepareRequest {
        txn: id("3"),
        ops: vec![Op::Read { key: b"a".to_vec() }],
        read_only: true,
        ..req.clone()
    };
    apply(&store, ready(core.prepare(&read, &store, 13).unwrap()));
    apply(&store, core.commit(&id("3"), &store, 14).unwrap());
    // A saga step and its compensation.
    let members = ["p1".to_string(), "p2".to_string()];
    let saga_id = id("4");
    apply(
        &store,
        ready(
            saga::execute(
                &mut core,
                saga::StepRef {
                    saga: &saga_id,
                    step: 1,
                    deadline_unix_ms: 0,
                },
                &[add("a", 7, None)],
                &members,
                &store,
                15,
            )
            .unwrap(),
        ),
    );
    apply(
        &store,
        ready(
            saga::compensate(
                &mut core,
                saga::StepRef {
                    saga: &saga_id,
                    step: 1,
                    deadline_unix_ms: 0,
                },
                &members,
                &store,
                16,
            )
            .unwrap(),
        ),
    );
    let evs = events(&store, &core);
    assert_eq!(
        kinds(&evs),
        vec![
            EventKind::OnePhaseCommit,
            EventKind::TwoPhaseCommit,
            EventKind::SagaExecute,
            EventKind::SagaCompensate
        ]
    );
    let offsets: Vec<u64> = evs.iter().map(|e| e.offset).collect();
    assert_eq!(offsets, vec![0, 1, 2, 3], "dense");
    assert!(evs[0].participants.is_empty(), "one phase: this one alone");
    assert_eq!(evs[1].participants, vec!["p1", "p2"], "the writers only");
    assert_eq!(evs[1].changes[0].delta, Some(-2));
    assert_eq!(evs[1].changes[0].value.as_deref(), Some(&b"3"[..]));
    assert_eq!((evs[2].step, evs[3].step), (1, 1));
    assert_eq!(evs[3].changes[0].delta, Some(-7), "the undo's change");
    assert_eq!(balance(&store, "a"), 3);
    // What a crash keeps: everything here was forced, so all of it, offsets included.
    store.crash();
    let mut again = ParticipantCore::new();
    again.recover(&store).unwrap();
    assert_eq!(again.outbox().head(), 4);
}

#[test]
fn a_transfer_debits_then_credits_once_whatever_is_delivered_twice() {
    let mut p1 = Node::new("p1", &[("alice", 100)]);
    let mut p2 = Node::new("p2", &[]);
    let start = 1; // after the seed's event
    let answer = apply(
        &p1.store,
        ready(
            p1.core
                .start_transfer(&transfer("9.1", 30), &p1.store, 1)
                .unwrap(),
        ),
    );
    assert!(matches!(answer, StartAnswer::Accepted { .. }));
    assert_eq!(balance(&p1.store, "alice"), 70);
    assert_eq!(unsettled_transfers(&p1.store, 10).unwrap(), 1);
    // A duplicate start changes nothing and appends nothing.
    let dup = ready(
        p1.core
            .start_transfer(&transfer("9.1", 30), &p1.store, 2)
            .unwrap(),
    );
    assert!(dup.write.is_empty());
    assert_eq!(apply(&p1.store, dup), StartAnswer::AlreadyAccepted);
    assert_eq!(p1.core.outbox().head(), 2);
    // The destination consumes p1's feed (the seed, then the debit) twice.
    assert_eq!(
        p2.consume_all(&p1, 0),
        vec![Consumed::Skipped, Consumed::Credited]
    );
    assert_eq!(
        p2.consume_all(&p1, start),
        vec![Consumed::Duplicate],
        "a redelivery is an inbox hit"
    );
    assert_eq!(balance(&p2.store, "bob"), 30);
    let inbox = read_inbox(&p2.store, &inbox_key("p1")).unwrap();
    assert_eq!(
        (inbox.next_offset, inbox.applied, inbox.duplicates),
        (2, 2, 1)
    );
    // The source learns of the credit from p2's feed; again, twice.
    assert_eq!(p1.consume_all(&p2, 0), vec![Consumed::Settled]);
    assert_eq!(p1.consume_all(&p2, 0), vec![Consumed::Duplicate]);
    let rec = read_transfer(&p1.store, "9.1").unwrap().unwrap();
    assert_eq!(rec.state, TransferState::Credited as i32);
    assert_eq!(rec.settled_at_unix_ms, 5);
    assert_eq!(unsettled_transfers(&p1.store, 10).unwrap(), 0);
    assert_eq!(balance(&p1.store, "alice") + balance(&p2.store, "bob"), 100);
}

#[test]
fn a_refused_credit_is_refunded_exactly_once() {
    let mut p1 = Node::new("p1", &[("alice", 100)]);
    // The destination's check fails: bob must stay at most 10.
    let mut t = transfer("9.2", 30);
    t.destination_ops = vec![Op::Add {
        key: b"bob".to_vec(),
        delta: 30,
        min: None,
        max: Some(10),
    }];
    let mut p2 = Node::new("p2", &[]);
    apply(
        &p1.store,
        ready(p1.core.start_transfer(&t, &p1.store, 1).unwrap()),
    );
    assert_eq!(p2.consume_all(&p1, 0)[1], Consumed::Refused);
    assert_eq!(balance(&p2.store, "bob"), 0);
    let refusal = kinds(&events(&p2.store, &p2.core));
    assert_eq!(refusal, vec![EventKind::TransferRefused]);
    assert_eq!(p1.consume_all(&p2, 0), vec![Consumed::Refunded]);
    assert_eq!(p1.consume_all(&p2, 0), vec![Consumed::Duplicate]);
    assert_eq!(balance(&p1.store, "alice"), 100);
    let rec = read_transfer(&p1.store, "9.2").unwrap().unwrap();
    assert_eq!(rec.state, TransferState::Refunded as i32);
    assert!(rec.reason.contains("above the maximum"), "{}", rec.reason);
    assert_eq!(
        kinds(&events(&p1.store, &p1.core))[1..],
        [EventKind::TransferDebit, EventKind::TransferRefund]
    );
}

#[test]
fn a_rejected_transfer_changes_nothing_and_says_so_again() {
    let mut p1 = Node::new("p1", &[("alice", 10)]);
    let step = ready(
        p1.core
            .start_transfer(&transfer("9.3", 30), &p1.store, 1)
            .unwrap(),
    );
    assert_eq!(
        step.durability,
        Durability::Forced,
        "a refusal is a promise"
    );
    let StartAnswer::Rejected { reason } = apply(&p1.store, step) else {
        panic!("an overdraft is rejected");
    };
    assert!(reason.contains("below the minimum"), "{reason}");
    assert_eq!(balance(&p1.store, "alice"), 10);
    assert_eq!(p1.core.outbox().head(), 1, "no event: no change");
    let again = apply(
        &p1.store,
        ready(
            p1.core
                .start_transfer(&transfer("9.3", 1), &p1.store, 2)
                .unwrap(),
        ),
    );
    assert!(matches!(again, StartAnswer::Rejected { .. }), "{again:?}");
}

#[test]
fn an_inbox_lost_apart_from_its_effect_is_caught_by_the_record() {
    let mut p1 = Node::new("p1", &[("alice", 100)]);
    let mut p2 = Node::new("p2", &[]);
    apply(
        &p1.store,
        ready(
            p1.core
                .start_transfer(&transfer("9.4", 30), &p1.store, 1)
                .unwrap(),
        ),
    );
    p2.consume_all(&p1, 0);
    // As if the inbox had been stored apart from the effect and lost.
    let mut batch = txn_types::store::WriteBatch::default();
    batch.delete(inbox_key("p1"));
    p2.store.apply(batch).unwrap();
    assert_eq!(
        p2.consume_all(&p1, 0),
        vec![Consumed::Skipped, Consumed::RecordHit]
    );
    assert_eq!(balance(&p2.store, "bob"), 30, "not credited twice");
}

#[test]
fn a_batch_past_the_inbox_is_a_gap_and_a_prepared_lock_blocks_the_credit() {
    let mut p1 = Node::new("p1", &[("alice", 100)]);
    let mut p2 = Node::new("p2", &[]);
    apply(
        &p1.store,
        ready(
            p1.core
                .start_transfer(&transfer("9.5", 1), &p1.store, 1)
                .unwrap(),
        ),
    );
    let inbox = read_inbox(&p2.store, &inbox_key("p1")).unwrap();
    assert_eq!(check_batch_start(&inbox, 1), Err(0));
    // A prepared 2PC txn holds bob at p2.
    let req = PrepareRequest {
        txn: id("8.1"),
        coordinator_epoch: 1,
        participants: vec![p("p2")],
        writers: vec![p("p2")],
        ops: vec![add("bob", 1, None)],
        read_only: false,
        commit_point: Default::default(),
    };
    apply(
        &p2.store,
        ready(p2.core.prepare(&req, &p2.store, 1).unwrap()),
    );
    let evs = read_events(&p1.store, 0, 2, 10, usize::MAX).unwrap();
    apply(
        &p2.store,
        ready(p2.core.consume("p2", "p1", &evs[0], &p2.store, 2).unwrap()),
    );
    assert!(matches!(
        p2.core.consume("p2", "p1", &evs[1], &p2.store, 2).unwrap(),
        Attempt::Blocked { .. }
    ));
    assert_eq!(
        read_inbox(&p2.store, &inbox_key("p1")).unwrap().next_offset,
        1
    );
}
