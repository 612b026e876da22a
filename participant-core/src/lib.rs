//! The participant's protocol rules, as a state machine with no I/O: no tokio, no tonic, no
//! sled (Cargo keeps it so: `cargo tree -p txn-participant-core -e normal`). The participant
//! service (`participant/`) and the model checker (`modelcheck/`) run this same code.
//!
//! Every message becomes a [`step::Step`]: the write to apply, the durability its answer
//! needs, whether locks came free, and the answer. A request that meets a prepared txn's lock
//! is [`step::Attempt::Blocked`]; what happens when its wait is over is a rule here too.
//!
//! Layout:
//! - [`step`]: the effect a core hands its driver.
//! - [`core`]: 2PC at a participant: prepare and vote, commit, abort, holds.
//! - [`one_phase`]: one-phase commit of a single-branch txn.
//! - [`resolve`]: peers' questions, cooperative termination, applying a learned decision.
//! - [`saga`]: saga steps and their barrier (idempotent, null compensation, anti-hanging).
//! - [`outbox`]: the transactional outbox (an event in the batch of every committed change)
//!   and the change feed's rules: what may be sent, registered consumers, pruning.
//! - [`transfer`]: the events protocol (choreography): the source's step with its event, and
//!   a consumer applying another participant's events exactly once through its inbox.
//! - [`keys`]: the storage layout, outcome records and their expiry.
//! - [`limits`]: the bounds on prepared txns and locked keys, and a Prepare's refusal.
//! - [`eval`]: what a branch's operations lock, read and write.
//! - [`locks`]: the lock table (shared for reads, exclusive for writes, all or nothing,
//!   waiters queued in order).

pub mod core;
pub mod eval;
pub mod keys;
pub mod limits;
pub mod locks;
pub mod one_phase;
pub mod outbox;
pub mod resolve;
pub mod saga;
pub mod step;
pub mod transfer;

#[cfg(test)]
mod bounds_tests;
#[cfg(test)]
mod tests;

#[cfg(test)]
mod transfer_tests;
