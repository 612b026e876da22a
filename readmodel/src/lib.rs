//! The read model (CQRS): a service that follows every participant's change feed and keeps a
//! denormalized view in its own sled database: every account's balance, and a statement of
//! the transfers that touched it across services. It answers queries with the position of each
//! feed the answer reflects, and can answer txn-consistently: a two-phase txn's events from
//! different participants become visible together, never half.
//!
//! The projection's rules are in `txn-readmodel-core` (no I/O); this crate follows the feeds,
//! applies what the core returns, and serves it.
//!
//! Layout:
//! - [`node`]: the driver: the view behind one lock, the feed links, rebuilds.
//! - [`service`]: gRPC conversion (`ReadModel`, `ReadModelAdmin`).
//! - [`server`]: process wiring (flags, health, shutdown) used by the `readmodel` binary.

pub mod node;
pub mod server;
pub mod service;
