//! Test support shared by the integration tests and the `harness` binary: a cluster of real
//! processes ([`cluster`]) and the bank workload with its checks ([`bank`]).

pub mod bank;
pub mod cluster;
pub mod compare;
pub mod proxy;
pub mod report;
