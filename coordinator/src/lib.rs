//! The coordinator: runs client transactions with two-phase commit (presumed abort), keeps
//! its commit decisions durable in its own sled database, and re-drives them after a crash.
//!
//! The protocol rules live in `txn-coordinator-core` (no I/O); this crate executes their
//! effects against sled and the participants.
//!
//! Layout:
//! - [`admin`]: the operator's `Admin` service.
//! - [`commit_batch`]: batches the Commits bound for one participant.
//! - [`dedup`]: client idempotency keys, so a retried request never runs twice.
//! - [`error`]: the coordinator's errors and their gRPC status codes.
//! - [`node`]: the driver that runs the core against the decision log and the participants.
//! - [`saga_driver`]: runs sagas from their durable log.
//! - [`service`]: gRPC conversion.
//! - [`server`]: process wiring (flags, health, shutdown) used by the `coordinator` binary.

pub mod admin;
pub mod commit_batch;
pub mod dedup;
pub mod error;
pub mod node;
pub mod one_phase;
pub mod saga_driver;
pub mod server;
pub mod service;
