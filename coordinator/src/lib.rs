//! The coordinator: runs client transactions with two-phase commit (presumed abort), keeps
//! its commit decisions durable in its own sled database, and re-drives them after a crash.
//!
//! The protocol rules live in `txn-coordinator-core` (no I/O); this crate executes their
//! effects against sled and the participants.
//!
//! Layout:
//! - [`admin`]: the operator's `Admin` service and its views (status, txns, sagas).
//! - [`admin_filter`]: the list filters, parsed once into enums.
//! - [`admin_force`]: operator actions: retries now and forced outcomes.
//! - [`context`]: what every component shares: the core, the log, the participant links.
//! - [`commit_batch`]: batches the Commits bound for one participant.
//! - [`commit_phase`]: forcing the decision, sending Commits until acked, ending it.
//! - [`dedup`]: client idempotency keys, so a retried request never runs twice.
//! - [`error`]: the coordinator's errors and their gRPC status codes.
//! - [`events_driver`]: the events protocol's first step, and a transfer's status from its
//!   participants' records.
//! - [`node`]: the two-phase driver: runs the core against the decision log and the
//!   participants; owns the components.
//! - [`one_phase`]: runs the core's one-phase commit machine over gRPC.
//! - [`outcome`]: what the client is told.
//! - [`saga_driver`]: runs sagas from their durable log.
//! - [`service`]: gRPC conversion.
//! - [`server`]: process wiring (flags, health, shutdown) used by the `coordinator` binary.

pub mod admin;
pub mod admin_filter;
pub mod admin_force;
pub mod commit_batch;
pub mod commit_phase;
pub mod context;
pub mod dedup;
pub mod error;
pub mod events_driver;
pub mod node;
pub mod one_phase;
pub mod outcome;
pub mod saga_driver;
pub mod server;
pub mod service;
