//! What a `harness compare` run runs on: a protocol, and where its coordinators keep their log
//! (one coordinator's sled, or three coordinators over etcd), and which scenarios each can run.

use crate::bank::Protocol;

/// Scenarios that run only where the coordinators keep their log in etcd, and scenarios only
/// where one coordinator keeps it in sled (the proxied link is the one coordinator's).
pub const ETCD_ONLY: &[&str] = &["etcd-member-loss"];
pub const SLED_ONLY: &[&str] = &["partition", "message-loss"];

/// Coordinators of a run over etcd.
pub const ETCD_COORDINATORS: usize = 3;

/// What a run runs: a protocol, over one coordinator's sled log or over etcd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variant {
    pub protocol: Protocol,
    pub etcd: bool,
}

impl Variant {
    /// A protocol's name (`2pc`, `saga`, `events`), with `-etcd` for the etcd log.
    pub fn parse(s: &str) -> Option<Self> {
        let (p, etcd) = match s.strip_suffix("-etcd") {
            Some(p) => (p, true),
            None => (s, false),
        };
        Some(Self {
            protocol: Protocol::parse(p)?,
            etcd,
        })
    }

    pub fn name(&self) -> String {
        format!(
            "{}{}",
            self.protocol.name(),
            if self.etcd { "-etcd" } else { "" }
        )
    }

    /// Whether `scenario` can run under this variant.
    pub fn runs(&self, scenario: &str) -> bool {
        if self.etcd {
            !SLED_ONLY.contains(&scenario)
        } else {
            !ETCD_ONLY.contains(&scenario)
        }
    }
}

/// The variants a scenario runs when none are asked for: the three protocols on sled, and for
/// the scenarios about failover, the three over etcd too. The events protocol needs the
/// coordinators only to accept a transfer, so over etcd it shows what a failover or a lost
/// etcd member costs a protocol whose coordinator is out of the path once it answered.
pub fn default_variants(scenario: &str) -> Vec<Variant> {
    let all = [
        "2pc",
        "saga",
        "events",
        "2pc-etcd",
        "saga-etcd",
        "events-etcd",
    ];
    let wanted: &[&str] = match scenario {
        "coordinator-failover" | "etcd-member-loss" => &all,
        _ => &all[..3],
    };
    wanted
        .iter()
        .filter_map(|v| Variant::parse(v))
        .filter(|v| v.runs(scenario))
        .collect()
}
