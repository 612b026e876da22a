//! Group commit: many writers, one fsync.
//!
//! A writer applies its batch to the store (visible at once) and gets a ticket, the batch's
//! sequence number. One flusher thread repeatedly reads the highest sequence applied so far,
//! calls [`Store::sync`], and publishes that sequence as durable; every writer whose ticket is
//! at or below it wakes up. While one fsync runs, new writers pile up and the next fsync covers
//! them all, so under load the number of fsyncs per write falls well below one.
//!
//! Writes that need no durability of their own (presumed-abort tombstones, end markers) use
//! [`GroupCommit::write_lazy`]: they become durable with whichever flush comes next.
//!
//! A failed sync is fatal for the store: the flusher stops, every waiter gets the error, and
//! later writes are refused. Continuing after a failed fsync could acknowledge data that the
//! kernel has already dropped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::Duration;

use tokio::sync::watch;

use txn_types::store::{Store, StoreError, WriteBatch};

/// A batch's position in the write order; durable once the flusher has published it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(u64);

impl Ticket {
    /// The batch's sequence number, for a caller that keeps tickets as plain numbers.
    pub fn seq(self) -> u64 {
        self.0
    }

    /// The ticket of sequence number `seq`, as [`Ticket::seq`] gave it.
    pub fn from_seq(seq: u64) -> Self {
        Self(seq)
    }
}

#[derive(Debug, Clone, Default)]
struct Published {
    durable: u64,
    failed: Option<String>,
}

struct Shared {
    store: Arc<dyn Store>,
    /// Highest sequence number handed out; its batch was applied before the number was taken.
    applied: AtomicU64,
    /// Highest ticket someone waits on, and whether the flusher should stop.
    request: Mutex<Request>,
    wake: Condvar,
    published: watch::Sender<Published>,
    fsyncs: AtomicU64,
    synced_writes: AtomicU64,
}

#[derive(Default)]
struct Request {
    wanted: u64,
    shutdown: bool,
}

/// Counters for operators and the benchmark.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushStats {
    /// Completed syncs (each one flush + fsync).
    pub fsyncs: u64,
    /// Batches made durable by those syncs.
    pub durable_writes: u64,
}

/// The group-commit front of a store. Cheap to clone; the flusher thread stops when the last
/// clone is dropped.
#[derive(Clone)]
pub struct GroupCommit {
    shared: Arc<Shared>,
    _stopper: Arc<Stopper>,
}

struct Stopper(Arc<Shared>);

impl Drop for Stopper {
    fn drop(&mut self) {
        let mut req = self.0.request.lock().expect("flusher lock");
        req.shutdown = true;
        self.0.wake.notify_one();
    }
}

impl GroupCommit {
    /// Starts the flusher thread for `store`.
    pub fn start(store: Arc<dyn Store>) -> Self {
        let (published, _) = watch::channel(Published::default());
        let shared = Arc::new(Shared {
            store,
            applied: AtomicU64::new(0),
            request: Mutex::new(Request::default()),
            wake: Condvar::new(),
            published,
            fsyncs: AtomicU64::new(0),
            synced_writes: AtomicU64::new(0),
        });
        let flusher = shared.clone();
        thread::Builder::new()
            .name("group-commit".into())
            .spawn(move || run_flusher(flusher))
            .expect("spawn group-commit flusher thread");
        Self {
            _stopper: Arc::new(Stopper(shared.clone())),
            shared,
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.shared.store
    }

    /// Applies `batch` and returns its ticket, without waiting for durability.
    pub fn write_lazy(&self, batch: WriteBatch) -> Result<Ticket, StoreError> {
        self.check_failed()?;
        self.shared.store.apply(batch)?;
        Ok(Ticket(
            self.shared.applied.fetch_add(1, Ordering::SeqCst) + 1,
        ))
    }

    /// Applies `batch` and returns once it is durable.
    pub async fn write_durable(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let ticket = self.write_lazy(batch)?;
        self.wait(ticket).await
    }

    /// A ticket covering everything applied so far (for acks of work applied earlier).
    pub fn current(&self) -> Ticket {
        Ticket(self.shared.applied.load(Ordering::SeqCst))
    }

    /// Waits until the batch with `ticket`, and so every batch before it, is durable.
    pub async fn wait(&self, ticket: Ticket) -> Result<(), StoreError> {
        let mut rx = self.shared.published.subscribe();
        {
            let p = rx.borrow_and_update();
            if let Some(e) = &p.failed {
                return Err(StoreError::Failed(e.clone()));
            }
            if p.durable >= ticket.0 {
                return Ok(());
            }
        }
        {
            let mut req = self.shared.request.lock().expect("flusher lock");
            if req.wanted < ticket.0 {
                req.wanted = ticket.0;
                self.shared.wake.notify_one();
            }
        }
        let p = rx
            .wait_for(|p| p.durable >= ticket.0 || p.failed.is_some())
            .await
            .map_err(|_| flusher_stopped())?;
        p.result()
    }

    /// Waits until `ticket` is durable, letting other writers' syncs cover it; only if none
    /// has within `patience` does it ask for a sync itself. For lazy writes that something
    /// must follow once they are durable, without an fsync of their own under load.
    pub async fn wait_patiently(
        &self,
        ticket: Ticket,
        patience: Duration,
    ) -> Result<(), StoreError> {
        let mut rx = self.shared.published.subscribe();
        // The watch guard must be gone before the next await.
        let covered: Option<Result<(), StoreError>> = match tokio::time::timeout(
            patience,
            rx.wait_for(|p| p.durable >= ticket.0 || p.failed.is_some()),
        )
        .await
        {
            Ok(Ok(p)) => Some(p.result()),
            Ok(Err(_)) => Some(Err(flusher_stopped())),
            Err(_) => None,
        };
        match covered {
            Some(r) => r,
            None => self.wait(ticket).await,
        }
    }

    /// Makes everything applied so far durable.
    pub async fn sync_all(&self) -> Result<(), StoreError> {
        self.wait(self.current()).await
    }

    pub fn stats(&self) -> FlushStats {
        FlushStats {
            fsyncs: self.shared.fsyncs.load(Ordering::Relaxed),
            durable_writes: self.shared.synced_writes.load(Ordering::Relaxed),
        }
    }

    fn check_failed(&self) -> Result<(), StoreError> {
        match &self.shared.published.borrow().failed {
            Some(e) => Err(StoreError::Failed(e.clone())),
            None => Ok(()),
        }
    }
}

fn flusher_stopped() -> StoreError {
    StoreError::Failed("group-commit flusher stopped".into())
}

impl Published {
    /// What a writer waiting on this state is told: fine, or the sync failure.
    fn result(&self) -> Result<(), StoreError> {
        match &self.failed {
            Some(e) => Err(StoreError::Failed(e.clone())),
            None => Ok(()),
        }
    }
}

fn run_flusher(shared: Arc<Shared>) {
    let mut durable = 0u64;
    loop {
        {
            let mut req = shared.request.lock().expect("flusher lock");
            while req.wanted <= durable && !req.shutdown {
                req = shared.wake.wait(req).expect("flusher lock");
            }
            if req.shutdown && req.wanted <= durable {
                return;
            }
        }
        // Everything numbered up to `target` was applied before its number was taken, so one
        // sync started now covers all of it.
        let target = shared.applied.load(Ordering::SeqCst);
        match shared.store.sync() {
            Ok(()) => {
                shared.fsyncs.fetch_add(1, Ordering::Relaxed);
                let m = txn_metrics::metrics();
                m.fsyncs.inc();
                m.group_commit_batch.observe((target - durable) as f64);
                shared
                    .synced_writes
                    .fetch_add(target - durable, Ordering::Relaxed);
                durable = target;
                shared.published.send_modify(|p| p.durable = target);
            }
            Err(e) => {
                tracing::error!(error = %e, "sync failed; the store stops accepting writes");
                shared
                    .published
                    .send_modify(|p| p.failed = Some(format!("sync failed: {e}")));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use txn_types::store::MemStore;

    fn put(k: &str) -> WriteBatch {
        let mut b = WriteBatch::default();
        b.put(k.as_bytes().to_vec(), b"v".to_vec());
        b
    }

    #[tokio::test]
    async fn durable_write_survives_crash_lazy_may_not() {
        let mem = Arc::new(MemStore::new());
        let gc = GroupCommit::start(mem.clone());
        gc.write_durable(put("a")).await.unwrap();
        gc.write_lazy(put("b")).unwrap();
        mem.crash();
        assert!(mem.get(b"a").unwrap().is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_writers_share_fsyncs() {
        let mem = Arc::new(MemStore::new());
        let gc = GroupCommit::start(mem.clone());
        let writers = 200;
        let mut tasks = Vec::new();
        for i in 0..writers {
            let gc = gc.clone();
            tasks.push(tokio::spawn(async move {
                gc.write_durable(put(&format!("k{i}"))).await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let stats = gc.stats();
        assert_eq!(stats.durable_writes, writers);
        assert!(stats.fsyncs >= 1 && stats.fsyncs <= writers);
        mem.crash();
        assert_eq!(mem.scan_prefix(b"k").unwrap().len(), writers as usize);
    }

    struct FailingStore;
    impl Store for FailingStore {
        fn get(&self, _: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            Ok(None)
        }
        fn scan_prefix(&self, _: &[u8]) -> Result<txn_types::store::Pairs, StoreError> {
            Ok(vec![])
        }
        fn scan_page(
            &self,
            _: &[u8],
            _: &[u8],
            _: usize,
        ) -> Result<txn_types::store::Pairs, StoreError> {
            Ok(vec![])
        }
        fn apply(&self, _: WriteBatch) -> Result<(), StoreError> {
            Ok(())
        }
        fn sync(&self) -> Result<(), StoreError> {
            Err(StoreError::Io(std::io::Error::other("disk on fire")))
        }
    }

    #[tokio::test]
    async fn failed_sync_fails_waiters_and_later_writes() {
        let gc = GroupCommit::start(Arc::new(FailingStore));
        let err = gc.write_durable(put("a")).await.unwrap_err();
        assert!(err.to_string().contains("disk on fire"), "{err}");
        assert!(gc.write_lazy(put("b")).is_err());
    }
}
