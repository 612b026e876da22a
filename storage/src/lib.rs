//! Storage for the services: the sled store of record and group commit over it.
//!
//! The protocol cores never see this crate. They read through [`txn_types::store::Store`] and
//! return write batches; the drivers apply those batches here and wait, through
//! [`GroupCommit`], until they are durable.
//!
//! Layout:
//! - [`sled_store`]: [`SledStore`], sled made durable by `flush()` + `fdatasync`.
//! - [`durable`]: [`GroupCommit`], one flusher thread whose every sync covers all the writers
//!   waiting on it.
//! - [`fail_stop`]: [`FailStop`], the one policy for storage errors in both services.

pub mod durable;
pub mod fail_stop;
pub mod sled_store;

pub use durable::{GroupCommit, Ticket};
pub use fail_stop::FailStop;
pub use sled_store::{SEGMENT_SIZE, SledStore};
