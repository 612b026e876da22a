//! Storage behind one small trait, so the protocol cores read through it and the drivers run on
//! sled in production (`txn_storage::SledStore`) and on an in-memory store in tests and in the
//! model checker, which can lose exactly what a crash loses.
//!
//! Durability contract: [`Store::apply`] makes a batch visible to reads at once and atomically
//! (all of it or none of it survives a crash), but durable only once a later
//! [`Store::sync`] has returned. `sync` covers every batch applied before it was called.
//! Callers do not call `sync` themselves: the group-commit flusher (`txn_storage::GroupCommit`) does,
//! once for many writers.

use std::collections::BTreeMap;
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage engine failed (its own error, as text).
    #[error("{0}")]
    Engine(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Corrupt(#[from] crate::record::CorruptRecord),
    #[error("the store failed earlier and stopped accepting writes: {0}")]
    Failed(String),
    /// A store on other machines (etcd) could not be reached: nothing is known to have
    /// failed, and the same call may succeed later. Never a reason to stop the service.
    #[error("the log is unreachable: {0}")]
    Unavailable(String),
}

/// Key-value pairs, in key order.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// One write of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

/// Writes applied together, atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    pub ops: Vec<WriteOp>,
}

impl WriteBatch {
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(WriteOp::Put(key.into(), value.into()));
        self
    }

    pub fn delete(&mut self, key: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(WriteOp::Delete(key.into()));
        self
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Appends every write of `other`, after this batch's own.
    pub fn append(&mut self, other: WriteBatch) -> &mut Self {
        self.ops.extend(other.ops);
        self
    }
}

pub trait Store: Send + Sync + 'static {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Every pair whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Pairs, StoreError>;
    /// At most `limit` pairs whose key starts with `prefix` and is at or after `start`, in key
    /// order: one page of a long listing.
    fn scan_page(&self, prefix: &[u8], start: &[u8], limit: usize) -> Result<Pairs, StoreError>;
    /// Applies `batch` atomically; visible at once, durable after the next `sync`.
    fn apply(&self, batch: WriteBatch) -> Result<(), StoreError>;
    /// Makes every batch applied before this call durable.
    fn sync(&self) -> Result<(), StoreError>;
    /// How many keys start with `prefix` (for operators and soak tests: it scans them).
    fn count_prefix(&self, prefix: &[u8]) -> Result<usize, StoreError> {
        Ok(self.scan_prefix(prefix)?.len())
    }
}

/// In-memory store for tests: `crash()` throws away everything applied since the last `sync`,
/// which is what a process crash does to the sled store.
///
/// Clones, equality and hashing cover what is visible and what is durable, not the sync
/// counter, so the model checker can use a store as part of a node's state.
#[derive(Default, Debug)]
pub struct MemStore {
    inner: Mutex<MemInner>,
}

impl Clone for MemStore {
    fn clone(&self) -> Self {
        let inner = self.inner.lock().expect("mem store lock");
        Self {
            inner: Mutex::new(MemInner {
                current: inner.current.clone(),
                durable: inner.durable.clone(),
                syncs: inner.syncs,
            }),
        }
    }
}

impl PartialEq for MemStore {
    fn eq(&self, other: &Self) -> bool {
        if std::ptr::eq(self, other) {
            return true;
        }
        let a = self.inner.lock().expect("mem store lock");
        let b = other.inner.lock().expect("mem store lock");
        a.current == b.current && a.durable == b.durable
    }
}

impl Eq for MemStore {}

impl std::hash::Hash for MemStore {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let inner = self.inner.lock().expect("mem store lock");
        inner.current.hash(state);
        inner.durable.hash(state);
    }
}

#[derive(Default, Debug)]
struct MemInner {
    current: BTreeMap<Vec<u8>, Vec<u8>>,
    durable: BTreeMap<Vec<u8>, Vec<u8>>,
    syncs: u64,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets every write that was not yet made durable.
    pub fn crash(&self) {
        let mut inner = self.inner.lock().expect("mem store lock");
        inner.current = inner.durable.clone();
    }

    pub fn syncs(&self) -> u64 {
        self.inner.lock().expect("mem store lock").syncs
    }

    /// Overwrites a stored value behind the protocol's back, for corruption tests.
    pub fn corrupt(&self, key: &[u8], value: Vec<u8>) {
        let mut inner = self.inner.lock().expect("mem store lock");
        inner.current.insert(key.to_vec(), value.clone());
        inner.durable.insert(key.to_vec(), value);
    }
}

impl MemStore {
    /// A store holding only what is durable here: what a crash would leave. A model's feed
    /// reads from it, since a feed may only ever send durable events.
    pub fn durable_view(&self) -> MemStore {
        let inner = self.inner.lock().expect("mem store lock");
        MemStore {
            inner: Mutex::new(MemInner {
                current: inner.durable.clone(),
                durable: inner.durable.clone(),
                syncs: inner.syncs,
            }),
        }
    }
}

impl Store for MemStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .inner
            .lock()
            .expect("mem store lock")
            .current
            .get(key)
            .cloned())
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Pairs, StoreError> {
        let inner = self.inner.lock().expect("mem store lock");
        Ok(inner
            .current
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn scan_page(&self, prefix: &[u8], start: &[u8], limit: usize) -> Result<Pairs, StoreError> {
        let inner = self.inner.lock().expect("mem store lock");
        Ok(inner
            .current
            .range(start.max(prefix).to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn apply(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut inner = self.inner.lock().expect("mem store lock");
        for op in batch.ops {
            match op {
                WriteOp::Put(k, v) => {
                    inner.current.insert(k, v);
                }
                WriteOp::Delete(k) => {
                    inner.current.remove(&k);
                }
            }
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), StoreError> {
        let mut inner = self.inner.lock().expect("mem store lock");
        inner.durable = inner.current.clone();
        inner.syncs += 1;
        Ok(())
    }
}

impl<S: Store> Store for std::sync::Arc<S> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        (**self).get(key)
    }
    fn scan_prefix(&self, prefix: &[u8]) -> Result<Pairs, StoreError> {
        (**self).scan_prefix(prefix)
    }
    fn scan_page(&self, prefix: &[u8], start: &[u8], limit: usize) -> Result<Pairs, StoreError> {
        (**self).scan_page(prefix, start, limit)
    }
    fn apply(&self, batch: WriteBatch) -> Result<(), StoreError> {
        (**self).apply(batch)
    }
    fn sync(&self) -> Result<(), StoreError> {
        (**self).sync()
    }
    fn count_prefix(&self, prefix: &[u8]) -> Result<usize, StoreError> {
        (**self).count_prefix(prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exercise(store: &dyn Store) {
        let mut b = WriteBatch::default();
        b.put(b"a/1".to_vec(), b"x".to_vec())
            .put(b"a/2".to_vec(), b"y".to_vec());
        b.put(b"b/1".to_vec(), b"z".to_vec());
        store.apply(b).unwrap();
        assert_eq!(store.get(b"a/1").unwrap(), Some(b"x".to_vec()));
        assert_eq!(store.scan_prefix(b"a/").unwrap().len(), 2);
        let page = store.scan_page(b"a/", b"a/1\0", 10).unwrap();
        assert_eq!(page, vec![(b"a/2".to_vec(), b"y".to_vec())]);
        assert_eq!(store.scan_page(b"a/", b"", 1).unwrap().len(), 1);
        let mut b = WriteBatch::default();
        b.delete(b"a/1".to_vec());
        store.apply(b).unwrap();
        assert_eq!(store.get(b"a/1").unwrap(), None);
        store.sync().unwrap();
    }

    #[test]
    fn mem_store_reads_pages_and_deletes() {
        exercise(&MemStore::new());
    }

    #[test]
    fn mem_crash_loses_only_what_was_not_synced() {
        let s = MemStore::new();
        let mut b = WriteBatch::default();
        b.put(b"k".to_vec(), b"durable".to_vec());
        s.apply(b).unwrap();
        s.sync().unwrap();
        let mut b = WriteBatch::default();
        b.put(b"k".to_vec(), b"volatile".to_vec())
            .put(b"j".to_vec(), b"v".to_vec());
        s.apply(b).unwrap();
        s.crash();
        assert_eq!(s.get(b"k").unwrap(), Some(b"durable".to_vec()));
        assert_eq!(s.get(b"j").unwrap(), None);
    }
}
