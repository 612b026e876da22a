//! The coordinator's protocol rules, as state machines with no I/O: no tokio, no tonic, no
//! sled (Cargo keeps it so: `cargo tree -p txn-coordinator-core -e normal`). The coordinator
//! service (`coordinator/`) and the model checker (`modelcheck/`) run this same code.
//!
//! Layout:
//! - [`core`]: two-phase commit with presumed abort: votes, the prepare deadline, the durable
//!   decision, acks, Resolve.
//! - [`one_phase`]: one-phase commit of a single-branch txn, and settling a lost answer.
//! - [`ha`]: several coordinators over one shared log: epochs, membership, fencing, who owns
//!   a txn, adoption of a gone instance's records, Resolve about a txn held elsewhere.
//! - [`forced`]: which outcomes an operator may force, and the refusals that keep atomicity.
//! - [`saga`]: a saga's orchestration over its durable log record.

pub mod core;
pub mod forced;
pub mod ha;
pub mod one_phase;
pub mod saga;
