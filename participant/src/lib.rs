//! The participant: one service with its own sled database (database per service).
//!
//! It votes on prepared branches, holds their locks until the decision, and applies or drops
//! them idempotently. Usable as a library: a real service can embed [`node::Participant`] over
//! its own store and serve [`service::ParticipantService`].
//!
//! The protocol rules live in `txn-participant-core` (no I/O); this crate executes their
//! effects against sled and the network.
//!
//! Layout:
//! - [`disk`]: the disk guard that refuses new Prepares when the disk is full or read-only.
//! - [`feed`]: the change feed's durability tracking and bounds; [`subscribe`]: serving it
//!   (streams, acknowledgements, pruning); [`feed_service`]: its gRPC face.
//! - [`choreo`]: the events protocol: a transfer's first step here, and following the peers'
//!   feeds to apply what their events ask of this participant.
//! - [`error`]: the participant's errors and their gRPC status codes.
//! - [`exec`]: how a core's step is carried out: apply, wait for durability, wake waiters.
//! - [`node`]: the driver that runs the core against a store with group commit.
//! - [`resolver`]: asks the coordinator, then the peers, about txns left in doubt.
//! - [`housekeeping`]: the outcome sweeper, the disk guard's verdict, stats, operator views.
//! - [`service`]: gRPC conversion.
//! - [`service_lists`]: the listings a page at a time, and the `ParticipantAdmin` service.
//! - [`server`]: process wiring (flags, health, shutdown) used by the `participant` binary.

pub mod choreo;
pub mod disk;
pub mod error;
pub mod exec;
pub mod feed;
pub mod feed_service;
pub mod housekeeping;
pub mod node;
pub mod prepare;
pub mod resolver;
pub mod server;
pub mod service;
pub mod service_lists;
pub mod subscribe;
