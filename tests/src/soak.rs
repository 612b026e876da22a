//! The soak: a fixed-rate mix of 2PC, saga and one-phase transfers against a cluster that
//! runs for a long time, while every node is sampled: resident memory, open file descriptors,
//! bytes in its data directory, and the records it holds by key prefix. What must hold is that
//! nothing grows without bound: once the services' retentions have filled, each figure stays
//! level ([`growth`] compares the first minute after the warm-up with the last).
//!
//! The load is open-loop: transfers start on a clock, whatever the answers. If the cluster
//! cannot keep up, transfers in flight pile up to [`MAX_IN_FLIGHT`], and the ones that would
//! pass it are counted as shed, not queued: the figures then say what rate was reached.
//!
//! Layout: this file runs the load and takes the samples; `chart` draws them.

mod chart;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::sync::Semaphore;
use txn_proto::pb::v1::coordinator_client::CoordinatorClient;

use crate::bank::{self, Account, Outcome, Protocol, Transfer};
use crate::cluster::Cluster;

pub use chart::chart;

/// Transfers in flight at once; beyond it new ones are shed (counted, not sent).
pub const MAX_IN_FLIGHT: usize = 4_096;
/// Connections to the coordinator the load spreads over (each carries up to 1024 calls).
const CHANNELS: usize = 8;
/// How often the load clock starts the transfers that are due.
const TICK: Duration = Duration::from_millis(10);
/// Every this many transfers, one asks for more than any account holds, so it aborts (a NO
/// vote, a failed first saga step, a refused one-phase commit): aborts leave records too.
const OVERDRAFT_EVERY: u64 = 20;
/// What every account starts with: enough that no ordinary transfer runs out in a day.
pub const SOAK_BALANCE: i64 = 1_000_000_000;

/// What a soak runs.
#[derive(Debug, Clone, Serialize)]
pub struct SoakOptions {
    pub duration_s: u64,
    /// Transfers started per second, a third of each kind.
    pub rate: u32,
    pub warmup_s: u64,
    pub sample_every_s: u64,
    pub seed: u64,
}

/// One node at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct NodeSample {
    pub node: String,
    pub rss_bytes: u64,
    pub open_fds: u64,
    pub data_bytes: u64,
    /// Records by key prefix.
    pub records: BTreeMap<String, u64>,
}

impl NodeSample {
    pub fn total_records(&self) -> u64 {
        self.records.values().sum()
    }

    /// One of the figures the soak judges, by name.
    pub fn figure(&self, name: &str) -> f64 {
        match name {
            "rss_bytes" => self.rss_bytes as f64,
            "open_fds" => self.open_fds as f64,
            "data_bytes" => self.data_bytes as f64,
            "records" => self.total_records() as f64,
            other => panic!("no figure {other}"),
        }
    }
}

/// The figures [`growth`] judges.
pub const FIGURES: [&str; 4] = ["rss_bytes", "open_fds", "data_bytes", "records"];

/// The load since the previous sample, and every node now.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    /// Seconds since the load started.
    pub at_s: f64,
    /// Transfers due by the clock, started, and shed since the previous sample.
    pub due: u64,
    pub shed: u64,
    /// Answers since the previous sample.
    pub committed: u64,
    pub aborted: u64,
    /// Calls that failed without an outcome.
    pub failed: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub nodes: Vec<NodeSample>,
}

/// What was answered in one sampling window.
struct Window {
    due: u64,
    shed: u64,
    committed: u64,
    aborted: u64,
    failed: u64,
    latency_us: Histogram<u64>,
}

impl Window {
    fn new() -> Self {
        Self {
            due: 0,
            shed: 0,
            committed: 0,
            aborted: 0,
            failed: 0,
            latency_us: Histogram::new_with_bounds(1, 600_000_000, 2).expect("histogram bounds"),
        }
    }
}

fn proc_rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn proc_open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Every node of `cluster` now: the coordinator first, then the participants.
pub async fn sample_nodes(cluster: &Cluster) -> anyhow::Result<Vec<NodeSample>> {
    let mut out = Vec::new();
    let nodes = std::iter::once(&cluster.coordinator).chain(&cluster.participants);
    for p in nodes {
        let pid = p.pid().unwrap_or(0);
        out.push(NodeSample {
            node: p.name.clone(),
            rss_bytes: proc_rss_bytes(pid),
            open_fds: proc_open_fds(pid),
            data_bytes: dir_bytes(&cluster.dir().join(&p.name)),
            records: cluster.record_counts(&p.name).await?,
        });
    }
    Ok(out)
}

/// The transfer of the `n`-th call: 2PC, saga and one-phase in turn, with an overdraft now
/// and then. Returns the transfer and its protocol (a one-phase transfer is a 2PC request
/// with one branch: two accounts of one participant).
fn pick(
    n: u64,
    accounts: &[Account],
    participants: usize,
    rng: &mut StdRng,
) -> (Transfer, Protocol) {
    let amount = if n % OVERDRAFT_EVERY == OVERDRAFT_EVERY - 1 {
        SOAK_BALANCE * 4
    } else {
        1
    };
    let from = rng.random_range(0..accounts.len());
    let same = |i: usize| accounts[i].participant == accounts[from].participant;
    let to = loop {
        let to = rng.random_range(0..accounts.len());
        // Accounts are dealt round-robin, so stepping by `participants` stays on one.
        let one_phase = n % 3 == 2;
        if to != from && (same(to) == one_phase || participants == 1) {
            break to;
        }
    };
    let protocol = if n % 3 == 1 {
        Protocol::Saga
    } else {
        Protocol::TwoPhase
    };
    (
        Transfer {
            from,
            to,
            amount,
            refused_credit: false,
        },
        protocol,
    )
}

/// Runs the load on `cluster` (seeded with `accounts`) and samples every node, until
/// `opts.duration_s` has passed. `progress` is told about each sample as it is taken.
pub async fn run(
    cluster: &Cluster,
    accounts: &[Account],
    opts: &SoakOptions,
    mut progress: impl FnMut(&Sample),
) -> anyhow::Result<Vec<Sample>> {
    let url = cluster.coordinator.url();
    let clients: Vec<_> = (0..CHANNELS)
        .map(|_| cluster.channel(&url).map(CoordinatorClient::new))
        .collect::<anyhow::Result<_>>()?;
    let window = Arc::new(Mutex::new(Window::new()));
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let accounts: Arc<Vec<Account>> = Arc::new(accounts.to_vec());
    let participants = cluster.participants.len();
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let started = Instant::now();
    let end = started + Duration::from_secs(opts.duration_s);
    let every = Duration::from_secs(opts.sample_every_s.max(1));
    let mut next_sample = started + every;
    let mut samples = Vec::new();
    let mut clock = tokio::time::interval(TICK);
    clock.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut due = 0.0;
    let mut n: u64 = 0;
    while Instant::now() < end {
        clock.tick().await;
        due += f64::from(opts.rate) * TICK.as_secs_f64();
        while due >= 1.0 {
            due -= 1.0;
            n += 1;
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                let mut w = window.lock().expect("soak window");
                w.due += 1;
                w.shed += 1;
                continue;
            };
            window.lock().expect("soak window").due += 1;
            let (t, protocol) = pick(n, &accounts, participants, &mut rng);
            let mut client = clients[n as usize % CHANNELS].clone();
            let (accounts, window) = (accounts.clone(), window.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let began = Instant::now();
                let outcome = bank::transfer(
                    &mut client,
                    n as usize,
                    &accounts,
                    t,
                    protocol,
                    // The coordinator's own commit point, as a production client would.
                    txn_proto::pb::v1::CommitPoint::Unspecified,
                )
                .await;
                let us = began.elapsed().as_micros().max(1) as u64;
                let mut w = window.lock().expect("soak window");
                match outcome {
                    Outcome::Committed { .. } => {
                        w.committed += 1;
                        let _ = w.latency_us.record(us);
                    }
                    Outcome::Aborted { .. } => w.aborted += 1,
                    Outcome::Unknown { .. } | Outcome::NotStarted { .. } => w.failed += 1,
                }
            });
        }
        if Instant::now() >= next_sample {
            next_sample += every;
            let w = std::mem::replace(&mut *window.lock().expect("soak window"), Window::new());
            let sample = Sample {
                at_s: started.elapsed().as_secs_f64(),
                due: w.due,
                shed: w.shed,
                committed: w.committed,
                aborted: w.aborted,
                failed: w.failed,
                p50_ms: w.latency_us.value_at_quantile(0.5) as f64 / 1000.0,
                p99_ms: w.latency_us.value_at_quantile(0.99) as f64 / 1000.0,
                nodes: sample_nodes(cluster).await?,
            };
            progress(&sample);
            samples.push(sample);
        }
    }
    // Let the transfers in flight finish, so the cluster is quiet for whatever comes next.
    let _all = permits
        .acquire_many(MAX_IN_FLIGHT as u32)
        .await
        .map_err(|e| anyhow::anyhow!("soak permits: {e}"))?;
    Ok(samples)
}

/// How one figure of one node moved: its first value, its mean over the first window after
/// the warm-up, its mean over the last window, and the growth between those two means.
#[derive(Debug, Clone, Serialize)]
pub struct Growth {
    pub node: String,
    pub figure: String,
    pub start: f64,
    pub after_warmup: f64,
    pub end: f64,
    pub growth_pct: f64,
}

/// The growth of every figure of every node between the first `window_s` after `warmup_s` and
/// the last `window_s` of the run (means, so a sweeper's sawtooth does not count as growth).
pub fn growth(samples: &[Sample], warmup_s: f64, window_s: f64) -> Vec<Growth> {
    let Some(last) = samples.last() else {
        return Vec::new();
    };
    let mean = |node: &str, figure: &str, from: f64, to: f64| {
        let v: Vec<f64> = samples
            .iter()
            .filter(|s| s.at_s >= from && s.at_s <= to)
            .flat_map(|s| s.nodes.iter().filter(|n| n.node == node))
            .map(|n| n.figure(figure))
            .collect();
        if v.is_empty() {
            f64::NAN
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    let mut out = Vec::new();
    for n in &samples[0].nodes {
        for figure in FIGURES {
            let after = mean(&n.node, figure, warmup_s, warmup_s + window_s);
            let end = mean(&n.node, figure, last.at_s - window_s, last.at_s);
            out.push(Growth {
                node: n.node.clone(),
                figure: figure.to_owned(),
                start: n.figure(figure),
                after_warmup: after,
                end,
                growth_pct: if after > 0.0 {
                    (end - after) / after * 100.0
                } else if end > 0.0 {
                    f64::INFINITY
                } else {
                    0.0
                },
            });
        }
    }
    out
}

/// Seeds `accounts` with [`SOAK_BALANCE`] each.
pub async fn seed(cluster: &Cluster, accounts: &[Account]) -> anyhow::Result<()> {
    let mut client = cluster.coordinator_client().await?;
    bank::seed(&mut client, accounts, SOAK_BALANCE).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at_s: f64, records: u64) -> Sample {
        Sample {
            at_s,
            nodes: vec![NodeSample {
                node: "p1".into(),
                rss_bytes: 100,
                open_fds: 10,
                data_bytes: 1000,
                records: [("o/".to_owned(), records)].into(),
            }],
            ..Sample::default()
        }
    }

    #[test]
    fn growth_compares_window_means_after_the_warmup_with_the_last() {
        // Records fill up to 100 during the warm-up, then saw between 90 and 110.
        let mut samples = vec![sample(0.0, 0), sample(5.0, 50)];
        for i in 2..40 {
            samples.push(sample(i as f64 * 5.0, if i % 2 == 0 { 90 } else { 110 }));
        }
        let g = growth(&samples, 10.0, 20.0);
        let records = g.iter().find(|g| g.figure == "records").unwrap();
        assert_eq!(records.start, 0.0);
        assert!((records.after_warmup - 100.0).abs() < 11.0, "{records:?}");
        assert!(records.growth_pct.abs() < 11.0, "{records:?}");
        // A leak shows.
        let leaking: Vec<Sample> = (0..40).map(|i| sample(i as f64 * 5.0, i * 10)).collect();
        let g = growth(&leaking, 10.0, 20.0);
        let records = g.iter().find(|g| g.figure == "records").unwrap();
        assert!(records.growth_pct > 500.0, "{records:?}");
    }

    #[test]
    fn the_mix_has_every_kind_and_its_overdrafts() {
        let accounts = bank::accounts(3, 30);
        let mut rng = StdRng::seed_from_u64(1);
        let mut kinds = BTreeMap::new();
        for n in 1..=60 {
            let (t, p) = pick(n, &accounts, 3, &mut rng);
            let local = accounts[t.from].participant == accounts[t.to].participant;
            assert_ne!(t.from, t.to);
            *kinds
                .entry((p.name(), local, t.amount > SOAK_BALANCE))
                .or_insert(0) += 1;
        }
        assert_eq!(kinds[&("2pc", false, false)], 19);
        assert_eq!(kinds[&("saga", false, false)], 19);
        assert_eq!(kinds[&("2pc", true, false)], 19);
        assert_eq!(kinds.values().sum::<i32>(), 60);
    }
}
