//! The vocabulary every other crate shares, with no I/O in it: validated domain types, the
//! durable record formats and their checksummed encoding, and the storage trait the protocol
//! cores read through (with an in-memory store that loses exactly what a crash loses).
//!
//! Nothing here depends on tokio, tonic or sled, so the protocol cores can depend on it and
//! stay pure (`cargo tree -p txn-types -e normal`).
//!
//! Layout:
//! - [`types`]: txn and participant ids, operations, votes, decisions, and the size limits
//!   that bound them.
//! - [`rec`]: the generated durable record messages (`types/proto/.../records.proto`), and
//!   conversions between them and the domain types.
//! - [`record`]: checksummed encoding of durable records; a record that fails its checksum
//!   is an error, never "absent".
//! - [`store`]: the [`store::Store`] trait, write batches, and [`store::MemStore`].
//! - [`backoff`]: the retry schedule of every retry loop.

pub mod backoff;
pub mod rec;
pub mod record;
pub mod store;
pub mod types;

/// Milliseconds since the Unix epoch, for timestamps shown to operators and for retention.
/// Never used for timeouts, which run on the monotonic clock.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
