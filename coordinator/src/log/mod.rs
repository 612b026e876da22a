//! The coordinator's durable state behind one trait, [`CoordLog`]: commit decisions (`c/`),
//! the saga log (`s/`), the epoch (`e`), client keys (`k/`) and forced outcomes (`f/`).
//!
//! Two logs implement it:
//! - [`local::SledLog`], the default: the coordinator's own sled database, made durable by the
//!   group-commit flusher (one fsync for every writer waiting). One coordinator owns it.
//! - [`etcd::EtcdLog`] (`--log etcd://HOST:PORT,...`): the same records in an etcd cluster,
//!   shared by every coordinator instance over it. Group commit becomes one etcd transaction
//!   for every write waiting (durable once etcd answers: a majority of its members fsynced
//!   it), each transaction guarded by the instance's membership (see
//!   [`txn_coordinator_core::ha`]). It also offers what only a shared log can
//!   ([`SharedLog`]): membership, reads of other instances' state, guarded takeovers.
//!
//! The durability contract is the same for both. [`CoordLog::write_lazy`] makes a batch visible
//! to this instance's reads at once and returns a ticket; the batch is durable, atomically,
//! once [`CoordLog::wait`] on that ticket (or on a later one) returns. [`CoordLog::write_durable`]
//! is both. A batch is never split, so it must respect [`MAX_LOG_BATCH_OPS`].

pub mod etcd;
mod etcd_writes;
pub mod local;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::BoxFuture;
use txn_coordinator_core::ha::Guard;
use txn_storage::durable::FlushStats;
use txn_types::rec::MemberRecord;
use txn_types::store::{Pairs, StoreError, WriteBatch};

/// What a log call returns, boxed so that both logs fit one trait object.
pub type LogFuture<'a, T> = BoxFuture<'a, Result<T, StoreError>>;

/// Most writes one batch may hold. etcd takes at most 128 operations per transaction by
/// default (`--max-txn-ops`); a batch is never split across transactions, so the one large
/// batch the coordinator writes (the client-key sweeper's deletions) is cut to this size.
pub const MAX_LOG_BATCH_OPS: usize = 64;

/// A batch's place in the log's write order; durable once [`CoordLog::wait`] returns for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogTicket(pub(crate) u64);

/// The coordinator's durable state. See the module docs for the contract.
pub trait CoordLog: Send + Sync + 'static {
    fn get<'a>(&'a self, key: &'a [u8]) -> LogFuture<'a, Option<Vec<u8>>>;
    /// Every pair whose key starts with `prefix`, in key order.
    fn scan_prefix<'a>(&'a self, prefix: &'a [u8]) -> LogFuture<'a, Pairs>;
    /// At most `limit` pairs whose key starts with `prefix`, from `start` on, in key order.
    fn scan_page<'a>(
        &'a self,
        prefix: &'a [u8],
        start: &'a [u8],
        limit: usize,
    ) -> LogFuture<'a, Pairs>;
    /// Queues `batch`: visible to this instance at once, durable later.
    fn write_lazy(&self, batch: WriteBatch) -> Result<LogTicket, StoreError>;
    /// Waits until the batch of `ticket`, and every batch before it, is durable.
    fn wait(&self, ticket: LogTicket) -> LogFuture<'_, ()>;
    /// Like [`CoordLog::wait`], but lets other writers' syncs cover the ticket first, asking
    /// for one of its own only after `patience` (a lazy write that something must follow).
    fn wait_patiently(&self, ticket: LogTicket, patience: Duration) -> LogFuture<'_, ()>;
    /// Queues `batch` and waits until it is durable.
    fn write_durable(&self, batch: WriteBatch) -> LogFuture<'_, ()> {
        match self.write_lazy(batch) {
            Ok(ticket) => self.wait(ticket),
            Err(e) => Box::pin(std::future::ready(Err(e))),
        }
    }
    /// Makes everything written so far durable.
    fn sync_all(&self) -> LogFuture<'_, ()>;
    /// Syncs (sled) or transactions (etcd), and the batches they made durable.
    fn stats(&self) -> FlushStats;
    /// The shared log's own operations; None for a log one coordinator owns alone.
    fn shared(&self) -> Option<&dyn SharedLog> {
        None
    }
}

/// A record read with the revision of the log it was last written at, for guarded
/// takeovers ([`Guard::Unchanged`]).
#[derive(Debug, Clone)]
pub struct Revisioned {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub revision: i64,
}

/// What a Resolve about a txn this instance does not hold reads from the shared log, in one
/// snapshot: whether a commit decision is logged, and the owner's member record (None: gone).
#[derive(Debug, Clone)]
pub struct ResolveView {
    pub logged: bool,
    pub owner: Option<MemberRecord>,
}

/// What a log shared by several coordinator instances offers besides [`CoordLog`].
pub trait SharedLog: Send + Sync {
    /// This instance's epoch, unique among every instance that ever used the log.
    fn epoch(&self) -> u64;
    /// Whether a new txn may start here: no while the log cannot be reached or this
    /// instance's membership is in doubt (the reason says why).
    fn admits(&self) -> Result<(), String>;
    /// Set once this instance's membership is lost for good (its lease expired); it must stop.
    fn lost(&self) -> tokio::sync::watch::Receiver<Option<String>>;
    /// Reads [`ResolveView`] for `decision_key` and the member record of `owner`.
    fn resolve_view(&self, decision_key: Vec<u8>, owner: u64) -> LogFuture<'_, ResolveView>;
    /// The live instances: epoch and member record.
    fn members(&self) -> LogFuture<'_, BTreeMap<u64, MemberRecord>>;
    /// Every record under `prefix`, with its revision.
    fn scan_revisions<'a>(&'a self, prefix: &'a [u8]) -> LogFuture<'a, Vec<Revisioned>>;
    /// One record with its revision.
    fn get_revisioned<'a>(&'a self, key: &'a [u8]) -> LogFuture<'a, Option<Revisioned>>;
    /// Writes `batch` if every guard holds, durably; false if one did not (nothing written).
    /// Not ordered with the queued writes: only for records this instance does not yet own
    /// (a takeover, a client key's claim).
    fn write_guarded(&self, guards: Vec<Guard>, batch: WriteBatch) -> LogFuture<'_, bool>;
    /// Leaves: ends the lease now, so that other instances take over at once.
    fn leave(&self) -> LogFuture<'_, ()>;
}
