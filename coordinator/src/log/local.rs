//! The default log: the coordinator's own store (sled in production), made durable through the
//! group-commit flusher. Reads answer at once; nothing here is shared with another
//! coordinator, so every epoch but this one's belongs to an earlier life of it.

use std::sync::Arc;
use std::time::Duration;

use txn_coordinator_core::core::{CoordinatorCore, Opened};
use txn_storage::GroupCommit;
use txn_storage::durable::FlushStats;
use txn_types::store::{Pairs, Store, StoreError, WriteBatch};

use super::{CoordLog, LogFuture, LogTicket};

/// A store of this coordinator's own, behind its group-commit flusher.
pub struct SledLog {
    gc: GroupCommit,
}

impl SledLog {
    /// Opens the log: reads the epoch and every unfinished decision, and makes the next epoch
    /// durable before returning (no id of it can be handed out earlier).
    pub async fn open(store: Arc<dyn Store>) -> Result<(Arc<Self>, Opened), StoreError> {
        let gc = GroupCommit::start(store.clone());
        let mut opened = CoordinatorCore::open(store.as_ref())?;
        gc.write_durable(std::mem::take(&mut opened.epoch_write))
            .await?;
        Ok((Arc::new(Self { gc }), opened))
    }

    fn ready<T: Send + 'static>(r: Result<T, StoreError>) -> LogFuture<'static, T> {
        Box::pin(std::future::ready(r))
    }
}

/// The flusher's ticket behind a log ticket (the log's tickets are the flusher's numbers).
fn flusher_ticket(t: LogTicket) -> txn_storage::Ticket {
    txn_storage::Ticket::from_seq(t.0)
}

impl CoordLog for SledLog {
    fn get<'a>(&'a self, key: &'a [u8]) -> LogFuture<'a, Option<Vec<u8>>> {
        Self::ready(self.gc.store().get(key))
    }

    fn scan_prefix<'a>(&'a self, prefix: &'a [u8]) -> LogFuture<'a, Pairs> {
        Self::ready(self.gc.store().scan_prefix(prefix))
    }

    fn scan_page<'a>(
        &'a self,
        prefix: &'a [u8],
        start: &'a [u8],
        limit: usize,
    ) -> LogFuture<'a, Pairs> {
        Self::ready(self.gc.store().scan_page(prefix, start, limit))
    }

    fn write_lazy(&self, batch: WriteBatch) -> Result<LogTicket, StoreError> {
        self.gc.write_lazy(batch).map(|t| LogTicket(t.seq()))
    }

    fn wait(&self, ticket: LogTicket) -> LogFuture<'_, ()> {
        Box::pin(self.gc.wait(flusher_ticket(ticket)))
    }

    fn wait_patiently(&self, ticket: LogTicket, patience: Duration) -> LogFuture<'_, ()> {
        Box::pin(self.gc.wait_patiently(flusher_ticket(ticket), patience))
    }

    fn write_durable(&self, batch: WriteBatch) -> LogFuture<'_, ()> {
        Box::pin(self.gc.write_durable(batch))
    }

    fn sync_all(&self) -> LogFuture<'_, ()> {
        Box::pin(self.gc.sync_all())
    }

    fn stats(&self) -> FlushStats {
        self.gc.stats()
    }
}
