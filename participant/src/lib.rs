//! The participant: one service with its own sled database (database per service).
//!
//! It votes on prepared branches, holds their locks until the decision, and applies or drops
//! them idempotently. Usable as a library: a real service can embed [`node::Participant`] over
//! its own store and serve [`service::ParticipantService`].
//!
//! Layout:
//! - [`core`]: the protocol logic, a state machine with no I/O.
//! - [`disk`]: the disk guard that refuses new Prepares when the disk is full or read-only.
//! - [`locks`]: the lock table.
//! - [`node`]: the driver that runs the core against a store with group commit.
//! - [`service`]: gRPC conversion.
//! - [`server`]: process wiring (flags, health, shutdown) used by the `participant` binary.

pub mod core;
pub mod disk;
pub mod error;
pub mod locks;
pub mod node;
pub mod saga;
pub mod server;
pub mod service;
