//! The coordinator's protocol rules, as state machines with no I/O: no tokio, no tonic, no
//! sled (Cargo keeps it so: `cargo tree -p txn-coordinator-core -e normal`). The coordinator
//! service (`coordinator/`) and the model checker (`modelcheck/`) run this same code.
//!
//! Layout:
//! - [`core`]: two-phase commit with presumed abort: votes, the prepare deadline, the durable
//!   decision, acks, Resolve.
//! - [`saga`]: a saga's orchestration over its durable log record.

pub mod core;
pub mod saga;
