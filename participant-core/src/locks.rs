//! The lock table: shared locks for keys a txn reads or checks, exclusive locks for keys it
//! writes. A txn takes all its locks at once or none of them, so a txn that is refused holds
//! nothing and cannot be part of a wait cycle while it waits.

use std::collections::BTreeMap;

use txn_types::types::TxnId;

#[derive(Debug, Default, Clone, PartialEq, Eq, Hash)]
struct Entry {
    exclusive: Option<TxnId>,
    shared: Vec<TxnId>,
}

/// Ordered, so the table clones, compares and hashes deterministically (for the model checker).
#[derive(Debug, Default, Clone, PartialEq, Eq, Hash)]
pub struct LockTable {
    entries: BTreeMap<Vec<u8>, Entry>,
}

impl LockTable {
    /// A txn other than `txn` holding a lock that conflicts with the given ones.
    pub fn conflict(
        &self,
        txn: Option<&TxnId>,
        exclusive: &[Vec<u8>],
        shared: &[Vec<u8>],
    ) -> Option<TxnId> {
        let other = |h: &&TxnId| Some(*h) != txn;
        for key in exclusive {
            if let Some(e) = self.entries.get(key) {
                if let Some(holder) = e.exclusive.as_ref().filter(other) {
                    return Some(holder.clone());
                }
                if let Some(holder) = e.shared.iter().find(other) {
                    return Some(holder.clone());
                }
            }
        }
        for key in shared {
            if let Some(holder) = self
                .entries
                .get(key)
                .and_then(|e| e.exclusive.as_ref())
                .filter(other)
            {
                return Some(holder.clone());
            }
        }
        None
    }

    /// Takes every lock, or none and names a txn that holds a conflicting one.
    pub fn try_lock_all(
        &mut self,
        txn: &TxnId,
        exclusive: &[Vec<u8>],
        shared: &[Vec<u8>],
    ) -> Result<(), TxnId> {
        if let Some(holder) = self.conflict(Some(txn), exclusive, shared) {
            return Err(holder);
        }
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

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> TxnId {
        TxnId::parse("t", s).unwrap()
    }

    #[test]
    fn shared_locks_coexist_exclusive_conflicts() {
        let mut l = LockTable::default();
        let k = vec![b"a".to_vec()];
        l.try_lock_all(&t("1"), &[], &k).unwrap();
        l.try_lock_all(&t("2"), &[], &k).unwrap();
        assert_eq!(l.try_lock_all(&t("3"), &k, &[]), Err(t("1")));
        l.release_all(&t("1"), &[], &k);
        assert_eq!(l.try_lock_all(&t("3"), &k, &[]), Err(t("2")));
        l.release_all(&t("2"), &[], &k);
        l.try_lock_all(&t("3"), &k, &[]).unwrap();
        assert_eq!(l.try_lock_all(&t("4"), &[], &k), Err(t("3")));
        assert_eq!(l.writer(b"a"), Some(&t("3")));
    }

    #[test]
    fn all_or_nothing() {
        let mut l = LockTable::default();
        l.try_lock_all(&t("1"), &[b"b".to_vec()], &[]).unwrap();
        let err = l.try_lock_all(&t("2"), &[b"a".to_vec(), b"b".to_vec()], &[]);
        assert_eq!(err, Err(t("1")));
        assert!(l.writer(b"a").is_none(), "a refused txn holds nothing");
        l.release_all(&t("1"), &[b"b".to_vec()], &[]);
        assert!(l.is_empty());
    }
}
