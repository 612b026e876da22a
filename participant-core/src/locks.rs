//! The lock table: shared locks for keys a txn reads or checks, exclusive locks for keys it
//! writes. A txn takes all its locks at once or none of them, so a txn that waits holds
//! nothing at this participant.
//!
//! Waiters queue in order of arrival. A write is granted only when it conflicts with no
//! holder and with no earlier waiter, so a request that needs many keys (a whole-bank read)
//! is not overtaken forever by later ones that each need one. A request that only reads here
//! waits for holders only: behind queued writers it would wait for whatever they wait for. Each wait is bounded by the
//! driver. Queueing adds wait edges between txns, and with them distributed deadlocks: a
//! reader holding its shared locks here while it waits at another participant for a writer
//! that, in turn, waits here behind the reader. [`LockWait::BehindReader`] names exactly the
//! waits that can close such a cycle (a writer behind a reader), so the driver bounds them
//! by a shorter wait and the writer gives way.

use std::collections::BTreeMap;

use txn_types::types::TxnId;

/// Most requests waiting at once. A Prepare waits while its RPC is open, so this is also a
/// bound on the Prepares one participant keeps open; beyond it a blocked request is refused
/// at once rather than queued (the coordinator aborts it and the client may retry).
pub const MAX_LOCK_WAITERS: usize = 4_096;
/// Most keys the waiting requests ask for, in all: the queue keeps a copy of each (up to 1 KiB
/// apiece), so this bounds its memory as [`MAX_LOCK_WAITERS`] bounds its length. Beyond it a
/// blocked request is refused at once, as when the queue is full.
pub const MAX_QUEUED_KEYS: usize = 262_144;

#[derive(Debug, Default, Clone, PartialEq, Eq, Hash)]
struct Entry {
    exclusive: Option<TxnId>,
    shared: Vec<TxnId>,
}

/// One waiting request: its place in the queue and the locks it asks for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Waiter {
    seq: u64,
    exclusive: Vec<Vec<u8>>,
    shared: Vec<Vec<u8>>,
}

/// How long a blocked request may wait, as a class: the driver maps it to a duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LockWait {
    /// The ordinary bound (the participant's lock wait).
    Full,
    /// A branch of a read-only txn (one that writes at no participant) waiting for writers.
    /// It can never close a deadlock through its own wait (every writer it could be waiting
    /// on gives way to it, see `BehindReader`, and it holds nothing a writer elsewhere waits
    /// for but shared locks), so it may wait longer than a writer: long enough to outlast a
    /// deadlock among writers. A branch that only reads here but belongs to a txn that writes
    /// elsewhere waits as a writer does (`Full`).
    Reader,
    /// A write waiting behind a reader (holding or queued): a wait that can close a
    /// distributed deadlock with that reader, so the writer waits only briefly and gives way.
    BehindReader,
    /// The queue is full: give up at once.
    None,
}

/// Why a request cannot take its locks now.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Blocked {
    /// A txn holding, or queued ahead for, a conflicting lock.
    pub by: TxnId,
    pub wait: LockWait,
}

/// Ordered, so the table clones, compares and hashes deterministically (for the model checker).
#[derive(Debug, Default, Clone, PartialEq, Eq, Hash)]
pub struct LockTable {
    entries: BTreeMap<Vec<u8>, Entry>,
    waiters: BTreeMap<TxnId, Waiter>,
    /// The same waiters by key, in queue order (seq), each marked exclusive or not: a
    /// request looks only at the queues of its own keys.
    queued: BTreeMap<Vec<u8>, BTreeMap<u64, (TxnId, bool)>>,
    /// Keys the waiters ask for, counted once per waiter and key (see [`MAX_QUEUED_KEYS`]).
    queued_keys: usize,
    next_seq: u64,
}

impl LockTable {
    /// A txn other than `txn` holding a lock that conflicts with the given ones, and whether
    /// that conflict is a write of ours against its shared lock. Waiters are not looked at.
    fn holder_conflict(
        &self,
        txn: Option<&TxnId>,
        exclusive: &[Vec<u8>],
        shared: &[Vec<u8>],
    ) -> Option<(TxnId, bool)> {
        let other = |h: &&TxnId| Some(*h) != txn;
        let mut found = None;
        for key in exclusive {
            if let Some(e) = self.entries.get(key) {
                if let Some(holder) = e.exclusive.as_ref().filter(other) {
                    found.get_or_insert((holder.clone(), false));
                }
                if let Some(holder) = e.shared.iter().find(other) {
                    return Some((holder.clone(), true));
                }
            }
        }
        if found.is_some() {
            return found;
        }
        for key in shared {
            if let Some(holder) = self
                .entries
                .get(key)
                .and_then(|e| e.exclusive.as_ref())
                .filter(other)
            {
                return Some((holder.clone(), false));
            }
        }
        None
    }

    /// A txn other than `txn` holding a lock that conflicts with the given ones (for
    /// requests that apply at once and take no locks: saga steps, one-phase commits).
    pub fn conflict(
        &self,
        txn: Option<&TxnId>,
        exclusive: &[Vec<u8>],
        shared: &[Vec<u8>],
    ) -> Option<TxnId> {
        self.holder_conflict(txn, exclusive, shared).map(|(t, _)| t)
    }

    /// A waiter queued before `txn` (before every waiter if `txn` is not queued) whose
    /// request conflicts with the given locks, and whether it is a reader we would write past.
    fn earlier_waiter(
        &self,
        txn: &TxnId,
        exclusive: &[Vec<u8>],
        shared: &[Vec<u8>],
    ) -> Option<(TxnId, bool)> {
        let mine = self.waiters.get(txn).map(|w| w.seq).unwrap_or(u64::MAX);
        let ahead = |key: &[u8]| {
            self.queued
                .get(key)
                .into_iter()
                .flat_map(move |q| q.range(..mine).map(|(_, w)| w))
        };
        let mut found = None;
        for key in exclusive {
            for (other, wants_exclusive) in ahead(key) {
                if !wants_exclusive {
                    return Some((other.clone(), true));
                }
                found.get_or_insert((other.clone(), false));
            }
        }
        if found.is_some() {
            return found;
        }
        for key in shared {
            if let Some((other, _)) = ahead(key).find(|(_, x)| *x) {
                return Some((other.clone(), false));
            }
        }
        None
    }

    fn enqueue(&mut self, txn: &TxnId, exclusive: &[Vec<u8>], shared: &[Vec<u8>]) {
        let seq = self.next_seq;
        self.next_seq += 1;
        for (key, x) in exclusive
            .iter()
            .map(|k| (k, true))
            .chain(shared.iter().map(|k| (k, false)))
        {
            self.queued
                .entry(key.clone())
                .or_default()
                .entry(seq)
                .and_modify(|w| w.1 |= x)
                .or_insert((txn.clone(), x));
        }
        self.queued_keys += exclusive.len() + shared.len();
        self.waiters.insert(
            txn.clone(),
            Waiter {
                seq,
                exclusive: exclusive.to_vec(),
                shared: shared.to_vec(),
            },
        );
    }

    fn dequeue(&mut self, txn: &TxnId) -> bool {
        let Some(w) = self.waiters.remove(txn) else {
            return false;
        };
        self.queued_keys -= w.exclusive.len() + w.shared.len();
        for key in w.exclusive.iter().chain(&w.shared) {
            if let Some(q) = self.queued.get_mut(key) {
                q.remove(&w.seq);
                if q.is_empty() {
                    self.queued.remove(key);
                }
            }
        }
        if self.waiters.is_empty() {
            self.next_seq = 0;
        }
        true
    }

    /// Takes every lock, or none: then `txn` keeps (or takes) its place in the queue and the
    /// answer names who it waits for and how long it may. `read_only_txn`: the txn writes at
    /// no participant.
    pub fn try_lock_all(
        &mut self,
        txn: &TxnId,
        exclusive: &[Vec<u8>],
        shared: &[Vec<u8>],
        read_only_txn: bool,
    ) -> Result<(), Blocked> {
        let holder = self.holder_conflict(Some(txn), exclusive, shared);
        // A reader waits for holders only: queued writers would make it wait for whatever
        // they wait for, and it holds every other participant's keys meanwhile.
        let waiter = if exclusive.is_empty() {
            None
        } else {
            self.earlier_waiter(txn, exclusive, shared)
        };
        // A writer behind a reader, by either conflict, gets the short wait.
        let conflict = match (holder, waiter) {
            (Some(h), Some(w)) => Some(if w.1 && !h.1 { w } else { h }),
            (h, w) => h.or(w),
        };
        if let Some((by, behind_reader)) = conflict {
            let wait = if behind_reader {
                LockWait::BehindReader
            } else if exclusive.is_empty() && read_only_txn {
                LockWait::Reader
            } else {
                LockWait::Full
            };
            if self.waiters.contains_key(txn) {
                return Err(Blocked { by, wait });
            }
            if self.waiters.len() >= MAX_LOCK_WAITERS
                || self.queued_keys + exclusive.len() + shared.len() > MAX_QUEUED_KEYS
            {
                return Err(Blocked {
                    by,
                    wait: LockWait::None,
                });
            }
            self.enqueue(txn, exclusive, shared);
            return Err(Blocked { by, wait });
        }
        self.dequeue(txn);
        for key in exclusive {
            self.entries.entry(key.clone()).or_default().exclusive = Some(txn.clone());
        }
        for key in shared {
            let e = self.entries.entry(key.clone()).or_default();
            if !e.shared.contains(txn) {
                e.shared.push(txn.clone());
            }
        }
        Ok(())
    }

    /// `txn` stops waiting (its wait is over, its request went away, or it was aborted).
    /// True if it was queued: waiters behind it may now be granted.
    pub fn abandon(&mut self, txn: &TxnId) -> bool {
        self.dequeue(txn)
    }

    pub fn release_all(&mut self, txn: &TxnId, exclusive: &[Vec<u8>], shared: &[Vec<u8>]) {
        for key in exclusive.iter().chain(shared) {
            if let Some(e) = self.entries.get_mut(key) {
                if e.exclusive.as_ref() == Some(txn) {
                    e.exclusive = None;
                }
                e.shared.retain(|h| h != txn);
                if e.exclusive.is_none() && e.shared.is_empty() {
                    self.entries.remove(key);
                }
            }
        }
    }

    /// The txn holding `key` for writing, if any.
    pub fn writer(&self, key: &[u8]) -> Option<&TxnId> {
        self.entries.get(key).and_then(|e| e.exclusive.as_ref())
    }

    /// Whether `txn` holds `key`, exclusively or shared.
    pub fn holds(&self, txn: &TxnId, key: &[u8]) -> bool {
        self.entries
            .get(key)
            .is_some_and(|e| e.exclusive.as_ref() == Some(txn) || e.shared.contains(txn))
    }

    /// Whether any txn holds `key`.
    pub fn is_locked(&self, key: &[u8]) -> bool {
        self.entries.contains_key(key)
    }

    /// Keys the waiting requests ask for, in all.
    pub fn queued_keys(&self) -> usize {
        self.queued_keys
    }

    /// Keys with at least one holder.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Requests waiting for locks.
    pub fn waiting(&self) -> usize {
        self.waiters.len()
    }

    /// Whether `txn` is queued.
    pub fn is_waiting(&self, txn: &TxnId) -> bool {
        self.waiters.contains_key(txn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> TxnId {
        TxnId::parse("t", s).unwrap()
    }

    fn k(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    /// Asks as a txn that writes nowhere else: a pure reader is a read-only txn.
    fn lock(l: &mut LockTable, txn: &TxnId, x: &[Vec<u8>], s: &[Vec<u8>]) -> Result<(), Blocked> {
        l.try_lock_all(txn, x, s, x.is_empty())
    }

    #[test]
    fn shared_locks_coexist_exclusive_conflicts() {
        let mut l = LockTable::default();
        let a = vec![k("a")];
        lock(&mut l, &t("1"), &[], &a).unwrap();
        lock(&mut l, &t("2"), &[], &a).unwrap();
        let blocked = lock(&mut l, &t("3"), &a, &[]).unwrap_err();
        assert_eq!(blocked.by, t("1"));
        assert_eq!(blocked.wait, LockWait::BehindReader);
        l.release_all(&t("1"), &[], &a);
        assert_eq!(lock(&mut l, &t("3"), &a, &[]).unwrap_err().by, t("2"));
        l.release_all(&t("2"), &[], &a);
        lock(&mut l, &t("3"), &a, &[]).unwrap();
        assert!(!l.is_waiting(&t("3")), "a granted request leaves the queue");
        let blocked = lock(&mut l, &t("4"), &[], &a).unwrap_err();
        assert_eq!((blocked.by, blocked.wait), (t("3"), LockWait::Reader));
        assert_eq!(l.writer(b"a"), Some(&t("3")));
    }

    #[test]
    fn all_or_nothing() {
        let mut l = LockTable::default();
        lock(&mut l, &t("1"), &[k("b")], &[]).unwrap();
        let err = lock(&mut l, &t("2"), &[k("a"), k("b")], &[]);
        assert_eq!(err.unwrap_err().by, t("1"));
        assert!(l.writer(b"a").is_none(), "a refused txn holds nothing");
        l.release_all(&t("1"), &[k("b")], &[]);
        l.abandon(&t("2"));
        assert!(l.is_empty());
        assert_eq!(l.waiting(), 0);
    }

    /// A whole-bank read waiting for one writer is not overtaken by later writers of other
    /// keys; those wait behind it briefly, and it goes first once the writer is gone.
    #[test]
    fn a_waiting_reader_is_not_overtaken() {
        let mut l = LockTable::default();
        let all = [k("a"), k("b"), k("c")];
        lock(&mut l, &t("w1"), &[k("a")], &[]).unwrap();
        assert_eq!(lock(&mut l, &t("r"), &[], &all).unwrap_err().by, t("w1"));
        let blocked = lock(&mut l, &t("w2"), &[k("b")], &[]).unwrap_err();
        assert_eq!((blocked.by, blocked.wait), (t("r"), LockWait::BehindReader));
        assert!(l.writer(b"b").is_none());
        // Keys the reader does not want are not held up.
        lock(&mut l, &t("w3"), &[k("d")], &[]).unwrap();
        l.release_all(&t("w1"), &[k("a")], &[]);
        // Still queued, w2 asks again first: the reader is ahead of it.
        assert_eq!(
            lock(&mut l, &t("w2"), &[k("b")], &[]).unwrap_err().by,
            t("r")
        );
        lock(&mut l, &t("r"), &[], &all).unwrap();
        assert_eq!(
            lock(&mut l, &t("w2"), &[k("b")], &[]).unwrap_err().by,
            t("r")
        );
        l.release_all(&t("r"), &[], &all);
        lock(&mut l, &t("w2"), &[k("b")], &[]).unwrap();
    }

    /// Readers do not wait for each other, nor for queued writers (only for holders): a
    /// reader queued behind a waiting writer would wait for whatever that writer waits for.
    #[test]
    fn readers_wait_for_holders_only() {
        let mut l = LockTable::default();
        lock(&mut l, &t("w1"), &[k("a")], &[]).unwrap();
        assert!(lock(&mut l, &t("w2"), &[k("a"), k("b")], &[]).is_err());
        // w2 waits for a and wants b: a reader of b goes ahead of it.
        lock(&mut l, &t("r"), &[], &[k("b")]).unwrap();
        // A reader of a waits for the holder, with a reader's wait.
        let blocked = lock(&mut l, &t("r2"), &[], &[k("a")]).unwrap_err();
        assert_eq!((blocked.by, blocked.wait), (t("w1"), LockWait::Reader));
        lock(&mut l, &t("r3"), &[], &[k("c")]).unwrap();
        lock(&mut l, &t("r4"), &[], &[k("c")]).unwrap();
        // w2 now waits behind the reader of b (the short wait).
        l.release_all(&t("w1"), &[k("a")], &[]);
        let blocked = lock(&mut l, &t("w2"), &[k("a"), k("b")], &[]).unwrap_err();
        assert_eq!(blocked.wait, LockWait::BehindReader);
    }

    /// Leaving the queue lets the ones behind go; the queue's order restarts when empty.
    #[test]
    fn abandoning_a_wait_unblocks_those_behind() {
        let mut l = LockTable::default();
        lock(&mut l, &t("w1"), &[k("a")], &[]).unwrap();
        assert!(lock(&mut l, &t("r"), &[], &[k("a"), k("b")]).is_err());
        assert!(lock(&mut l, &t("w2"), &[k("b")], &[]).is_err());
        assert!(l.abandon(&t("r")));
        assert!(!l.abandon(&t("r")), "only once");
        lock(&mut l, &t("w2"), &[k("b")], &[]).unwrap();
        assert_eq!(l.waiting(), 0);
        assert_eq!(l.next_seq, 0);
    }

    #[test]
    fn a_full_queue_refuses_at_once() {
        let mut l = LockTable::default();
        lock(&mut l, &t("holder"), &[k("a")], &[]).unwrap();
        for i in 0..MAX_LOCK_WAITERS {
            let b = lock(&mut l, &t(&i.to_string()), &[k("a")], &[]).unwrap_err();
            assert_eq!(b.wait, LockWait::Full);
        }
        let b = lock(&mut l, &t("late"), &[k("a")], &[]).unwrap_err();
        assert_eq!(b.wait, LockWait::None);
        assert!(!l.is_waiting(&t("late")));
        assert_eq!(l.waiting(), MAX_LOCK_WAITERS);
    }

    /// The waiters' keys are bounded too: a few waiters asking for many keys fill the queue
    /// as many waiters would, and a refused one leaves nothing queued.
    #[test]
    fn the_queued_keys_are_bounded() {
        let mut l = LockTable::default();
        lock(&mut l, &t("holder"), &[k("a")], &[]).unwrap();
        let wide: Vec<Vec<u8>> = std::iter::once(k("a"))
            .chain((0..255).map(|i| k(&format!("w{i}"))))
            .collect();
        let fit = MAX_QUEUED_KEYS / wide.len();
        for i in 0..fit {
            let b = lock(&mut l, &t(&format!("q{i}")), &wide, &[]).unwrap_err();
            assert_eq!(b.wait, LockWait::Full);
        }
        assert_eq!(l.queued_keys(), fit * wide.len());
        let b = lock(&mut l, &t("late"), &wide, &[]).unwrap_err();
        assert_eq!(b.wait, LockWait::None, "over {MAX_QUEUED_KEYS} queued keys");
        assert!(!l.is_waiting(&t("late")));
        assert!(l.abandon(&t("q0")));
        assert_eq!(l.queued_keys(), (fit - 1) * wide.len());
        assert_eq!(
            lock(&mut l, &t("late"), &wide, &[]).unwrap_err().wait,
            LockWait::Full,
            "room again once a waiter left"
        );
    }
}
