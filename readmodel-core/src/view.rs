//! The projection: what one event of a participant's feed does to the view.
//!
//! Exactly once: every event's changes are written in one batch together with the cursor of
//! its feed ([`ViewCursor`]), so an event delivered again after a crash or a reconnect is below
//! the cursor and is suppressed ([`Received::Duplicate`]); one that would skip some events is a
//! gap ([`Received::Gap`]) and changes nothing.
//!
//! Two views are kept. The raw one (`b/`) applies each event as it arrives: what any
//! projection shows, with a two-phase txn half visible while its other participants' events are
//! on their way. The txn-consistent one (`v/`) holds a two-phase txn's events back until every
//! participant that wrote (the event's `participants`) has delivered its event, and then makes
//! them visible in one batch: never half a txn. An event that touches a key held back at the
//! same participant waits behind it, so values stay in commit order. Deadlock is impossible for
//! two-phase txns: two txns that write a common key are ordered the same way at every
//! participant (each took its exclusive lock), so a cycle of waits would be a cycle in that
//! order. Sagas and transfers of the events protocol are not grouped: their intermediate states
//! are real states, and the view shows them (the price of those protocols).

use std::collections::{BTreeMap, BTreeSet};

use prost::Message;
use txn_types::rec::{
    EventKind, EventRecord, StatementRecord, TouchedAccount, TxnIndexRecord, ViewMeta, ViewValue,
};
use txn_types::record;
use txn_types::store::{Store, StoreError, WriteBatch};

use crate::keys::{
    HELD_PREFIX, META_KEY, cursor_key, held_key, read_any, read_cursor, read_meta, read_value,
    statement_key, statement_prefix, txn_key, txn_order_key, value_key,
};

/// Statement entries kept per account; older ones are dropped (bounds the view per account).
pub const MAX_STATEMENT_ENTRIES: u32 = 1_000;
/// Txns whose changes the index keeps for statements' counterparts (the most recent ones).
pub const MAX_TXN_INDEX: u64 = 100_000;
/// Most events held back from the txn-consistent view at once; beyond it the driver stops
/// taking events until some are released (a txn whose other events never come would
/// otherwise grow the view without bound).
pub const MAX_HELD_EVENTS: usize = 10_000;

/// What one delivered event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// Below the cursor: delivered before; suppressed.
    Duplicate,
    /// Applied to the raw view; `released` events (this one or held ones) became visible in
    /// the txn-consistent view.
    Applied { released: usize },
    /// Past the cursor: some events would be skipped. Subscribe again from `expected`.
    Gap { expected: u64 },
}

/// Which events make up one release of the txn-consistent view.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Group {
    /// A two-phase txn written at several participants.
    Txn(String),
    /// Anything else: the event alone, (participant, offset).
    Single(String, u64),
}

/// The view's in-memory state: the events held back, and its meta record. Everything else is
/// in the store, so [`View::recover`] rebuilds this after a crash.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct View {
    /// The participants followed: a txn's group counts only their events.
    followed: BTreeSet<String>,
    held: BTreeMap<String, BTreeMap<u64, EventRecord>>,
    meta: ViewMeta,
}

fn grouped(ev: &EventRecord) -> bool {
    EventKind::try_from(ev.kind) == Ok(EventKind::TwoPhaseCommit) && ev.participants.len() > 1
}

fn shares_a_key(a: &EventRecord, b: &EventRecord) -> bool {
    a.changes
        .iter()
        .any(|x| b.changes.iter().any(|y| x.key == y.key))
}

impl View {
    /// The view of the feeds of `followed`, from what `store` holds.
    pub fn recover(store: &dyn Store, followed: &[String]) -> Result<Self, StoreError> {
        let mut view = View {
            followed: followed.iter().cloned().collect(),
            meta: read_meta(store)?,
            ..Default::default()
        };
        for (key, bytes) in store.scan_prefix(HELD_PREFIX)? {
            let ev: EventRecord = record::decode(&key, &bytes)?;
            let rest = &key[HELD_PREFIX.len()..];
            let slash = rest.iter().position(|b| *b == b'/').unwrap_or(rest.len());
            let participant = String::from_utf8_lossy(&rest[..slash]).into_owned();
            view.held
                .entry(participant)
                .or_default()
                .insert(ev.offset, ev);
        }
        Ok(view)
    }

    pub fn meta(&self) -> &ViewMeta {
        &self.meta
    }

    /// Events held back now, in all.
    pub fn held(&self) -> usize {
        self.held.values().map(BTreeMap::len).sum()
    }

    /// The first event of `participant` held back (its offset and commit time), if any.
    pub fn first_held(&self, participant: &str) -> Option<(u64, u64)> {
        self.held
            .get(participant)
            .and_then(|h| h.first_key_value())
            .map(|(o, e)| (*o, e.at_unix_ms))
    }

    pub fn held_at(&self, participant: &str) -> usize {
        self.held.get(participant).map_or(0, BTreeMap::len)
    }

    /// Whether the event at `participant`/`offset` is held back from the consistent view.
    pub fn is_held(&self, participant: &str, offset: u64) -> bool {
        self.held
            .get(participant)
            .is_some_and(|h| h.contains_key(&offset))
    }

    /// One event of `participant`'s feed, delivered in order: its batch and what it did. The
    /// caller applies the batch before the next call.
    pub fn receive(
        &mut self,
        store: &dyn Store,
        participant: &str,
        ev: &EventRecord,
    ) -> Result<(WriteBatch, Received), StoreError> {
        let mut batch = WriteBatch::default();
        let mut cursor = read_cursor(store, participant)?;
        if ev.offset < cursor.next_offset {
            cursor.duplicates += 1;
            batch.put(cursor_key(participant), record::encode(&cursor));
            return Ok((batch, Received::Duplicate));
        }
        if ev.offset > cursor.next_offset {
            return Ok((
                batch,
                Received::Gap {
                    expected: cursor.next_offset,
                },
            ));
        }
        self.apply_raw(store, participant, ev, &mut batch)?;
        self.index_txn(store, participant, ev, &mut batch)?;
        let blocked = self
            .held
            .get(participant)
            .is_some_and(|h| h.values().any(|e| shares_a_key(e, ev)));
        if grouped(ev) || blocked {
            batch.put(held_key(participant, ev.offset), record::encode(ev));
            self.held
                .entry(participant.to_owned())
                .or_default()
                .insert(ev.offset, ev.clone());
        } else {
            put_consistent(&mut batch, participant, ev);
        }
        let released = self.release(&mut batch) + usize::from(!grouped(ev) && !blocked);
        cursor.next_offset = ev.offset + 1;
        cursor.applied += 1;
        cursor.as_of_unix_ms = ev.at_unix_ms;
        batch.put(cursor_key(participant), record::encode(&cursor));
        Ok((batch, Received::Applied { released }))
    }

    /// The raw view and the statements: each change as it arrives.
    fn apply_raw(
        &self,
        store: &dyn Store,
        participant: &str,
        ev: &EventRecord,
        batch: &mut WriteBatch,
    ) -> Result<(), StoreError> {
        for c in &ev.changes {
            let key = value_key(false, participant, &c.key);
            let mut v = read_value(store, &key)?.unwrap_or_default();
            v.value = c.value.clone();
            v.offset = ev.offset;
            v.at_unix_ms = ev.at_unix_ms;
            v.entries += 1;
            let entry = StatementRecord {
                txn_id: ev.txn_id.clone(),
                kind: ev.kind,
                delta: c.delta,
                value: c.value.clone(),
                at_unix_ms: ev.at_unix_ms,
                participants: ev.participants.clone(),
            };
            batch.put(
                statement_key(participant, &c.key, ev.offset),
                record::encode(&entry),
            );
            if v.entries > MAX_STATEMENT_ENTRIES {
                let prefix = statement_prefix(participant, &c.key);
                if let Some((oldest, _)) = store.scan_page(&prefix, &prefix, 1)?.pop() {
                    batch.delete(oldest);
                    v.entries -= 1;
                }
            }
            batch.put(key, record::encode(&v));
        }
        Ok(())
    }

    /// Notes what `ev` changed under its txn, for statements' counterparts; the oldest txn
    /// goes once [`MAX_TXN_INDEX`] are kept.
    fn index_txn(
        &mut self,
        store: &dyn Store,
        participant: &str,
        ev: &EventRecord,
        batch: &mut WriteBatch,
    ) -> Result<(), StoreError> {
        if ev.changes.is_empty() {
            return Ok(());
        }
        let tkey = txn_key(&ev.txn_id);
        let mut rec = match read_any::<TxnIndexRecord>(store, &tkey)? {
            Some(rec) => rec,
            None => {
                let seq = self.meta.next_txn_seq;
                self.meta.next_txn_seq += 1;
                batch.put(txn_order_key(seq), ev.txn_id.as_bytes().to_vec());
                if let Some(old) = seq.checked_sub(MAX_TXN_INDEX) {
                    let okey = txn_order_key(old);
                    if let Some(txn) = store.get(&okey)? {
                        batch.delete(okey);
                        batch.delete([crate::keys::TXN_PREFIX, txn.as_slice()].concat());
                    }
                }
                batch.put(META_KEY.to_vec(), record::encode(&self.meta));
                TxnIndexRecord {
                    touched: Vec::new(),
                    seq,
                }
            }
        };
        for c in &ev.changes {
            rec.touched.push(TouchedAccount {
                participant: participant.to_owned(),
                key: c.key.clone(),
                delta: c.delta,
            });
        }
        if rec.encoded_len() <= txn_types::types::MAX_RECORD_BYTES {
            batch.put(tkey, record::encode(&rec));
        }
        Ok(())
    }

    fn group_of(ev: &EventRecord, participant: &str) -> Group {
        if grouped(ev) {
            Group::Txn(ev.txn_id.clone())
        } else {
            Group::Single(participant.to_owned(), ev.offset)
        }
    }

    /// Makes visible, in `batch`, every held group that is whole and not waiting behind an
    /// earlier held event of another group on a common key; repeats until none is. Returns
    /// how many events it released.
    fn release(&mut self, batch: &mut WriteBatch) -> usize {
        let mut released = 0;
        loop {
            let mut members: BTreeMap<Group, Vec<(String, u64)>> = BTreeMap::new();
            for (p, events) in &self.held {
                for (o, ev) in events {
                    members
                        .entry(Self::group_of(ev, p))
                        .or_default()
                        .push((p.clone(), *o));
                }
            }
            let ready = members.into_iter().find(|(group, parts)| {
                self.whole(group, parts) && parts.iter().all(|(p, o)| !self.waits(group, p, *o))
            });
            let Some((_, parts)) = ready else {
                return released;
            };
            for (p, o) in parts {
                let ev = self
                    .held
                    .get_mut(&p)
                    .and_then(|h| h.remove(&o))
                    .expect("a held event");
                put_consistent(batch, &p, &ev);
                batch.delete(held_key(&p, o));
                released += 1;
            }
            self.held.retain(|_, h| !h.is_empty());
        }
    }

    /// Every followed participant the txn wrote at has delivered its event.
    fn whole(&self, group: &Group, parts: &[(String, u64)]) -> bool {
        let Group::Txn(_) = group else {
            return true;
        };
        let (p, o) = &parts[0];
        let ev = &self.held[p][o];
        ev.participants
            .iter()
            .filter(|m| self.followed.contains(*m))
            .all(|m| parts.iter().any(|(q, _)| q == m))
    }

    /// The held event `p`/`o` waits behind an earlier held event of another group that
    /// touches one of its keys.
    fn waits(&self, group: &Group, p: &str, o: u64) -> bool {
        let events = &self.held[p];
        let ev = &events[&o];
        events
            .range(..o)
            .any(|(_, e)| Self::group_of(e, p) != *group && shares_a_key(e, ev))
    }
}

/// The txn-consistent view's values for `ev`'s changes.
fn put_consistent(batch: &mut WriteBatch, participant: &str, ev: &EventRecord) {
    for c in &ev.changes {
        let v = ViewValue {
            value: c.value.clone(),
            offset: ev.offset,
            at_unix_ms: ev.at_unix_ms,
            entries: 0,
        };
        batch.put(value_key(true, participant, &c.key), record::encode(&v));
    }
}
