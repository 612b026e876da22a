//! The projection against the events a participant's outbox writes.

use txn_types::rec::{EventKind, EventRecord, Write};
use txn_types::store::{MemStore, Store};
use txn_types::types::{decode_counter, encode_counter};

use crate::query::{self, balances, statement};
use crate::view::{MAX_STATEMENT_ENTRIES, Received, View};

fn change(key: &str, value: i64, delta: i64) -> Write {
    Write {
        key: key.as_bytes().to_vec(),
        value: Some(encode_counter(value)),
        delta: Some(delta),
    }
}

fn ev(
    offset: u64,
    kind: EventKind,
    txn: &str,
    members: &[&str],
    changes: Vec<Write>,
) -> EventRecord {
    EventRecord {
        offset,
        kind: kind as i32,
        txn_id: txn.into(),
        participants: members.iter().map(|m| m.to_string()).collect(),
        changes,
        at_unix_ms: 100 + offset,
        ..Default::default()
    }
}

fn two_phase(offset: u64, txn: &str, changes: Vec<Write>) -> EventRecord {
    ev(
        offset,
        EventKind::TwoPhaseCommit,
        txn,
        &["p1", "p2"],
        changes,
    )
}

fn one_phase(offset: u64, txn: &str, changes: Vec<Write>) -> EventRecord {
    ev(offset, EventKind::OnePhaseCommit, txn, &["p1"], changes)
}

struct Model {
    store: MemStore,
    view: View,
}

impl Model {
    fn new() -> Self {
        let store = MemStore::new();
        let view = View::recover(&store, &["p1".into(), "p2".into()]).unwrap();
        Self { store, view }
    }

    fn deliver(&mut self, p: &str, e: &EventRecord) -> Received {
        let (batch, r) = self.view.receive(&self.store, p, e).unwrap();
        self.store.apply(batch).unwrap();
        r
    }

    fn value(&self, p: &str, key: &str, consistent: bool) -> Option<i64> {
        balances(
            &self.store,
            &[(p.into(), key.as_bytes().to_vec())],
            consistent,
        )
        .unwrap()[0]
            .as_deref()
            .map(|v| decode_counter(Some(v)).unwrap())
    }
}

#[test]
fn every_event_is_applied_once_however_often_it_is_delivered() {
    let mut m = Model::new();
    let e0 = one_phase(0, "1", vec![change("a", 10, 10)]);
    let e1 = one_phase(1, "2", vec![change("a", 7, -3)]);
    assert_eq!(m.deliver("p1", &e0), Received::Applied { released: 1 });
    assert_eq!(m.deliver("p1", &e0), Received::Duplicate);
    assert_eq!(m.deliver("p1", &e1), Received::Applied { released: 1 });
    assert_eq!(m.deliver("p1", &e0), Received::Duplicate);
    let e3 = one_phase(3, "4", vec![change("a", 1, -6)]);
    assert_eq!(m.deliver("p1", &e3), Received::Gap { expected: 2 });
    assert_eq!(m.value("p1", "a", false), Some(7));
    let r = query::reflects(&m.view, &m.store, "p1", false).unwrap();
    assert_eq!((r.offset, r.cursor.applied, r.cursor.duplicates), (2, 2, 2));
    // A crash loses nothing durable and recovers the same view.
    m.store.sync().unwrap();
    m.store.crash();
    let again = View::recover(&m.store, &["p1".into(), "p2".into()]).unwrap();
    assert_eq!(again, m.view);
}

#[test]
fn a_two_phase_txn_becomes_visible_whole_in_the_consistent_view() {
    let mut m = Model::new();
    m.deliver(
        "p1",
        &one_phase(0, "seed1", vec![change("alice", 100, 100)]),
    );
    m.deliver("p2", &one_phase(0, "seed2", vec![change("bob", 0, 0)]));
    let debit = two_phase(1, "9", vec![change("alice", 90, -10)]);
    let credit = two_phase(1, "9", vec![change("bob", 10, 10)]);
    assert_eq!(m.deliver("p1", &debit), Received::Applied { released: 0 });
    // The raw view shows half the txn; the consistent one shows none of it.
    assert_eq!(m.value("p1", "alice", false), Some(90));
    assert_eq!(m.value("p1", "alice", true), Some(100));
    assert_eq!(m.value("p2", "bob", true), Some(0));
    let r = query::reflects(&m.view, &m.store, "p1", true).unwrap();
    assert_eq!(
        (r.offset, r.held),
        (1, 1),
        "the consistent answer reflects p1 below 1"
    );
    // A later change of alice at p1 waits behind the held txn.
    let later = one_phase(2, "10", vec![change("alice", 85, -5)]);
    assert_eq!(m.deliver("p1", &later), Received::Applied { released: 0 });
    assert_eq!(m.value("p1", "alice", true), Some(100));
    // The txn's other event: both halves and the later change, in order.
    assert_eq!(m.deliver("p2", &credit), Received::Applied { released: 3 });
    assert_eq!(m.value("p1", "alice", true), Some(85));
    assert_eq!(m.value("p2", "bob", true), Some(10));
    assert_eq!(m.view.held(), 0);
    // The statement names the txn and the account on the other side.
    let s = statement(&m.view, &m.store, "p1", b"alice", 10, true).unwrap();
    let txns: Vec<&str> = s.iter().map(|e| e.record.txn_id.as_str()).collect();
    assert_eq!(txns, vec!["10", "9", "seed1"], "newest first");
    assert_eq!(s[1].record.delta, Some(-10));
    assert_eq!(s[1].counterparts.len(), 1);
    assert_eq!(s[1].counterparts[0].participant, "p2");
    assert_eq!(s[1].counterparts[0].key, b"bob");
}

#[test]
fn held_events_survive_a_crash_and_unrelated_keys_do_not_wait() {
    let mut m = Model::new();
    m.deliver("p1", &two_phase(0, "9", vec![change("alice", 90, -10)]));
    // Another key at p1 is not held back.
    assert_eq!(
        m.deliver("p1", &one_phase(1, "11", vec![change("carol", 3, 3)])),
        Received::Applied { released: 1 }
    );
    assert_eq!(m.value("p1", "carol", true), Some(3));
    m.store.sync().unwrap();
    m.store.crash();
    let mut m = Model {
        view: View::recover(&m.store, &["p1".into(), "p2".into()]).unwrap(),
        store: m.store,
    };
    assert_eq!(m.view.held(), 1);
    assert_eq!(
        m.deliver("p2", &two_phase(0, "9", vec![change("bob", 10, 10)])),
        Received::Applied { released: 2 }
    );
    assert_eq!(m.value("p1", "alice", true), Some(90));
    // With consistent statements, nothing held shows.
    m.deliver("p1", &two_phase(2, "12", vec![change("alice", 80, -10)]));
    let held: Vec<String> = statement(&m.view, &m.store, "p1", b"alice", 10, true)
        .unwrap()
        .into_iter()
        .map(|e| e.record.txn_id)
        .collect();
    assert_eq!(held, vec!["9"]);
}

#[test]
fn statements_are_bounded_per_account_and_a_rebuild_clears_all_but_its_count() {
    let mut m = Model::new();
    let n = MAX_STATEMENT_ENTRIES as u64 + 5;
    for i in 0..n {
        m.deliver(
            "p1",
            &one_phase(i, &format!("t{i}"), vec![change("a", i as i64, 1)]),
        );
    }
    let all = statement(&m.view, &m.store, "p1", b"a", 10_000, false).unwrap();
    assert_eq!(
        all.len(),
        query::MAX_STATEMENT_PAGE.min(MAX_STATEMENT_ENTRIES as usize)
    );
    assert_eq!(all[0].offset, n - 1);
    let prefix = crate::keys::statement_prefix("p1", b"a");
    assert_eq!(
        m.store.scan_prefix(&prefix).unwrap().len(),
        MAX_STATEMENT_ENTRIES as usize
    );
    m.store
        .apply(query::begin_rebuild(&m.store).unwrap())
        .unwrap();
    loop {
        let (batch, more) = query::clear_page(&m.store).unwrap();
        m.store.apply(batch).unwrap();
        if !more {
            break;
        }
    }
    m.store
        .apply(query::finish_rebuild(&m.store).unwrap())
        .unwrap();
    let view = View::recover(&m.store, &["p1".into()]).unwrap();
    assert_eq!(view.meta().rebuilds, 1);
    assert!(!view.meta().rebuilding);
    assert_eq!(
        m.store.scan_prefix(b"").unwrap().len(),
        1,
        "only the meta record"
    );
}
