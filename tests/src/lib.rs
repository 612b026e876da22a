//! Test support shared by the integration tests and the `harness` binary: a cluster of real
//! processes ([`cluster`]) and the bank workload with its checks ([`bank`]).
//!
//! # Layout
//!
//! - [`cluster`]: starts a local cluster and reaches its nodes. `cluster::process` is one
//!   node's process (start, health check, signals, log), `cluster::binaries` finds or builds
//!   the service binaries, `cluster::metrics` reads a node's Prometheus endpoint.
//! - [`bank`]: the bank workload and its clients. `bank::observe` reads what the
//!   participants hold once the system is quiet, `bank::check` judges a history against that,
//!   and `bank::violation` names each kind of finding ([`bank::Violation`]).
//! - [`compare`]: one run of `harness compare`, a fault scenario under one protocol.
//! - [`readpaths`]: the three read paths compare measures (composed, atomic 2PC, read model)
//!   and the markers that measure their staleness.
//! - [`report`]: renders the comparison as a table, report.json, report.md and a chart.
//! - [`proxy`]: the fault-injecting TCP proxy a cluster can put on one link.
//! - [`plant`]: planted violations in a participant's own database, to test the checker.
//! - [`soak`]: a fixed-rate mix of transfers for a long time, with every node sampled (memory,
//!   file descriptors, data directory, records), and its chart.
//!
//! The `harness` binary (`src/bin/harness/`) has one module per command: `run`, `compare`,
//! `bench` and `soak`.

pub mod bank;
pub mod cluster;
pub mod compare;
pub mod coordinators;
pub mod plant;
pub mod proxy;
pub mod readpaths;
pub mod report;
pub mod soak;
