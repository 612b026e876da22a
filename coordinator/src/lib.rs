//! The coordinator: runs client transactions with two-phase commit (presumed abort), keeps
//! its commit decisions durable in its own sled database (or in etcd, shared by several
//! coordinator instances that take over each other's txns), and re-drives them after a crash.
//!
//! The protocol rules live in `txn-coordinator-core` (no I/O); this crate executes their
//! effects against sled and the participants.
//!
//! Layout:
//! - [`admin`]: the operator's `Admin` service and its views (status, txns, sagas).
//! - [`admin_filter`]: the list filters, parsed once into enums.
//! - [`admin_list`]: the operators' lists (txns, sagas, what is in doubt), a page at a time.
//! - [`admin_force`]: operator actions: retries now and forced outcomes.
//! - [`context`]: what every component shares: the core, the log, the participant links.
//! - [`commit_batch`]: batches the Commits bound for one participant.
//! - [`commit_phase`]: forcing the decision, sending Commits until acked, ending it.
//! - [`dedup`]: client idempotency keys, so a retried request never runs twice.
//! - [`dedup_shared`]: claiming a key in a log shared with other coordinators.
//! - [`error`]: the coordinator's errors and their gRPC status codes.
//! - [`events_driver`]: the events protocol's first step, and a transfer's status from its
//!   participants' records.
//! - [`ha`]: over a shared log (etcd): taking over the records of gone instances, Resolve
//!   about txns held elsewhere.
//! - [`log`]: the durable state behind one trait: the coordinator's own sled database, or
//!   etcd shared by several instances.
//! - [`node`]: the two-phase driver: runs the core against the decision log and the
//!   participants; owns the components.
//! - [`one_phase`]: runs the core's one-phase commit machine over gRPC.
//! - [`outcome`]: what the client is told.
//! - [`saga_driver`]: runs sagas from their durable log.
//! - [`saga_end`]: what a saga's end writes; after it ends, telling its participants and
//!   dropping its log record; picking up a saga taken over from another coordinator.
//! - [`service`]: gRPC conversion.
//! - [`server`]: process wiring (flags, health, shutdown) used by the `coordinator` binary.

pub mod admin;
pub mod admin_filter;
pub mod admin_force;
pub mod admin_list;
pub mod commit_batch;
pub mod commit_phase;
pub mod context;
pub mod dedup;
pub mod dedup_shared;
pub mod error;
pub mod events_driver;
pub mod ha;
pub mod log;
pub mod node;
pub mod one_phase;
pub mod outcome;
pub mod prepare_batch;
pub mod saga_driver;
pub mod saga_end;
pub mod server;
pub mod service;
