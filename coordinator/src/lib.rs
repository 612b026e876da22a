//! The coordinator: runs client transactions with two-phase commit (presumed abort), keeps
//! its commit decisions durable in its own sled database, and re-drives them after a crash.
//!
//! Layout:
//! - [`core`]: the protocol logic, a state machine with no I/O.
//! - [`commit_batch`]: batches the Commits bound for one participant.
//! - [`dedup`]: client idempotency keys, so a retried request never runs twice.
//! - [`node`]: the driver that runs the core against the decision log and the participants.
//! - [`service`]: gRPC conversion.
//! - [`server`]: process wiring (flags, health, shutdown) used by the `coordinator` binary.

pub mod admin;
pub mod commit_batch;
pub mod core;
pub mod dedup;
pub mod error;
pub mod node;
pub mod saga;
pub mod saga_driver;
pub mod server;
pub mod service;
