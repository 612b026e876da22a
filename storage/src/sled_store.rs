//! The sled store of record: every service's votes, decisions, outcomes, saga log and data.
//!
//! Durability contract (see [`txn_types::store::Store`]): a batch is visible once applied and
//! durable once a later `sync` returns. Here `sync` is sled's `flush()` followed by
//! `fdatasync` of sled's log file, because sled 0.34's `flush()` alone uses
//! `sync_file_range`, which neither flushes the device cache nor the file size.

use std::fs::File;
use std::path::Path;

use txn_types::store::{Pairs, Store, StoreError, WriteBatch, WriteOp};

fn engine(e: sled::Error) -> StoreError {
    StoreError::Engine(format!("sled: {e}"))
}

/// sled's segment size. sled writes any item larger than a quarter of a segment to a separate
/// blob file that it never fsyncs, so our durability (fdatasync of the log file) would not
/// cover it. 16 MiB, sled's largest, puts that threshold at about 4 MiB, and
/// [`txn_types::types::MAX_RECORD_BYTES`] keeps every record we write far below it.
pub const SEGMENT_SIZE: usize = 16 * 1024 * 1024;

/// sled, made durable by `flush()` followed by `fdatasync` of its log file.
///
/// sled 0.34's `flush()` writes its buffers with `sync_file_range`, which neither flushes the
/// device cache nor the file size, so it is not durable on its own; the `sync_data` after it
/// is. `flush_async()` is never used: it deadlocks with many concurrent waiters.
pub struct SledStore {
    db: sled::Db,
    log_file: File,
}

impl SledStore {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir)?;
        let db = sled::Config::new()
            .path(dir)
            .segment_size(SEGMENT_SIZE)
            // Our flusher decides when to flush; sled's periodic flush adds nothing to
            // durability and competes with it for the disk.
            .flush_every_ms(None)
            .open()
            .map_err(engine)?;
        let log_file = File::open(dir.join("db"))?;
        Ok(Self { db, log_file })
    }
}

impl Store for SledStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get(key).map_err(engine)?.map(|v| v.to_vec()))
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<Pairs, StoreError> {
        self.db
            .scan_prefix(prefix)
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(engine))
            .collect()
    }

    fn count_prefix(&self, prefix: &[u8]) -> Result<usize, StoreError> {
        let mut n = 0;
        for key in self.db.scan_prefix(prefix).keys() {
            key.map_err(engine)?;
            n += 1;
        }
        Ok(n)
    }

    fn scan_page(&self, prefix: &[u8], start: &[u8], limit: usize) -> Result<Pairs, StoreError> {
        self.db
            .range(start.max(prefix)..)
            .take_while(|r| {
                r.as_ref()
                    .map(|(k, _)| k.starts_with(prefix))
                    .unwrap_or(true)
            })
            .take(limit)
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(engine))
            .collect()
    }

    fn apply(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        for op in batch.ops {
            match op {
                WriteOp::Put(k, v) => b.insert(k, v),
                WriteOp::Delete(k) => b.remove(k),
            }
        }
        self.db.apply_batch(b).map_err(engine)?;
        Ok(())
    }

    fn sync(&self) -> Result<(), StoreError> {
        let m = txn_metrics::metrics();
        let started = std::time::Instant::now();
        self.db.flush().map_err(engine)?;
        let flushed = std::time::Instant::now();
        self.log_file.sync_data()?;
        m.sled_flush_seconds
            .observe((flushed - started).as_secs_f64());
        m.fdatasync_seconds.observe(flushed.elapsed().as_secs_f64());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_pages_and_deletes() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let mut b = WriteBatch::default();
        b.put(b"a/1".to_vec(), b"x".to_vec())
            .put(b"a/2".to_vec(), b"y".to_vec())
            .put(b"b/1".to_vec(), b"z".to_vec());
        store.apply(b).unwrap();
        assert_eq!(store.get(b"a/1").unwrap(), Some(b"x".to_vec()));
        assert_eq!(store.scan_prefix(b"a/").unwrap().len(), 2);
        let page = store.scan_page(b"a/", b"a/1\0", 10).unwrap();
        assert_eq!(page, vec![(b"a/2".to_vec(), b"y".to_vec())]);
        let mut b = WriteBatch::default();
        b.delete(b"a/1".to_vec());
        store.apply(b).unwrap();
        assert_eq!(store.get(b"a/1").unwrap(), None);
        store.sync().unwrap();
    }

    #[test]
    fn data_survives_reopen_after_sync() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            let mut b = WriteBatch::default();
            b.put(b"k".to_vec(), b"v".to_vec());
            s.apply(b).unwrap();
            s.sync().unwrap();
        }
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.get(b"k").unwrap(), Some(b"v".to_vec()));
    }
}
