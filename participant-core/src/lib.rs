//! The participant's protocol rules, as a state machine with no I/O: no tokio, no tonic, no
//! sled (Cargo keeps it so: `cargo tree -p txn-participant-core -e normal`). The participant
//! service (`participant/`) and the model checker (`modelcheck/`) run this same code.
//!
//! Layout:
//! - [`core`]: 2PC at a participant: prepare and vote, commit, abort, one-phase commit,
//!   outcomes and their expiry.
//! - [`locks`]: the lock table (shared for reads, exclusive for writes, all or nothing).
//! - [`saga`]: saga steps and their barrier (idempotent, null compensation, anti-hanging).

pub mod core;
pub mod locks;
pub mod saga;
