//! `harness compare`: the same bank workload under 2PC and under sagas, while processes crash
//! and links fail, with every guarantee checked from what the participants recorded.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tonic::transport::Channel;
use txn_proto::pb::v1 as pb;
use txn_proto::pb::v1::coordinator_client::CoordinatorClient;

use crate::bank::{self, Account, Outcome, Protocol, Violation, Workload};
use crate::cluster::{Cluster, ClusterOptions};

/// Every scenario, in report order.
pub const SCENARIOS: &[&str] = &[
    "none",
    "coordinator-crash",
    "participant-crash",
    "crash-after-decision",
    "crash-after-prepare",
    "partition",
    "pause",
    "message-loss",
];

/// Balance every account starts with.
pub const INITIAL_BALANCE: i64 = 1_000;
/// Width of one throughput bucket of the timeline.
pub const BUCKET: Duration = Duration::from_millis(250);
/// How long a run may take to settle after its faults heal.
const QUIET_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between two audits of one auditor.
const AUDIT_PAUSE: Duration = Duration::from_millis(20);
/// How long a crashed process stays down before the harness restarts it.
const DOWNTIME_MS: std::ops::Range<u64> = 300..800;
/// Share of connections a lossy link cuts.
const MESSAGE_LOSS: f64 = 0.2;
/// Participant whose link to the coordinator is proxied, and the one paused or crashed by
/// the crash-after-prepare scenario.
const LINK_PARTICIPANT: &str = "p1";
const VICTIM_PARTICIPANT: &str = "p2";

#[derive(Debug, Clone)]
pub struct CompareConfig {
    pub duration: Duration,
    pub clients: usize,
    pub auditors: usize,
    pub participants: usize,
    pub accounts: usize,
    pub overdraft_share: f64,
    pub seed: u64,
}

/// One fault, from its start to its heal, in milliseconds from the start of the workload.
#[derive(Debug, Clone, Serialize)]
pub struct FaultWindow {
    pub what: String,
    pub start_ms: u64,
    pub end_ms: u64,
}

/// Everything measured and checked in one run (one scenario under one protocol).
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub scenario: String,
    pub protocol: String,
    pub seed: u64,
    pub duration_s: f64,
    pub clients: usize,
    pub committed: usize,
    pub aborted: usize,
    pub unknown: usize,
    pub atomicity_violations: usize,
    pub lost_acknowledged: usize,
    pub total_before: i64,
    pub total_after: i64,
    pub total_conserved: bool,
    /// Audits attempted, audits that read every balance (the rest aborted, mostly on lock
    /// conflicts with transfers: under 2PC, readers wait for writers), and those whose total
    /// was off.
    pub audits_attempted: u64,
    pub audits: u64,
    pub audits_off: u64,
    /// Accounts whose final balance differs from the acknowledged transfers; null when some
    /// call had no answer, so that is unknowable.
    pub lost_updates: Option<usize>,
    pub max_in_doubt_ms: u64,
    pub unresolved_at_end: u64,
    pub tps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// From the last heal to the first transfer committed after it.
    pub recovery_ms: Option<u64>,
    /// From the end of the workload until nothing was in doubt or running.
    pub quiet_ms: u64,
    pub faults: Vec<FaultWindow>,
    pub bucket_ms: u64,
    /// Committed transfers per bucket.
    pub timeline: Vec<u64>,
    pub problems: Vec<Violation>,
}

impl RunReport {
    /// A result that is a bug, not a finding: the harness exits non-zero. For 2PC that is any
    /// broken guarantee; for sagas, intermediate states are findings, but a saga left half
    /// done, a lost acknowledgement, or a broken total at the end are bugs too.
    pub fn is_failure(&self) -> bool {
        !self.total_conserved
            || self.atomicity_violations > 0
            || self.lost_acknowledged > 0
            || self.unresolved_at_end > 0
    }
}

fn options(scenario: &str, participants: usize) -> ClusterOptions {
    ClusterOptions {
        participants,
        coordinator_args: vec![
            "--commit-retry-max-ms".into(),
            "200".into(),
            "--saga-retry-max-ms".into(),
            "200".into(),
            "--prepare-timeout-ms".into(),
            "1000".into(),
            "--rpc-timeout-ms".into(),
            "1000".into(),
            "--saga-timeout-ms".into(),
            "3000".into(),
            "--compensation-budget".into(),
            "1000".into(),
        ],
        participant_args: vec![
            "--resolve-after-ms".into(),
            "500".into(),
            "--resolve-interval-ms".into(),
            "100".into(),
            "--resolve-backoff-max-ms".into(),
            "500".into(),
        ],
        proxy: matches!(scenario, "partition" | "message-loss")
            .then(|| LINK_PARTICIPANT.to_string()),
        ..Default::default()
    }
}

/// Runs one scenario under one protocol on a fresh cluster.
pub async fn run_one(
    scenario: &str,
    protocol: Protocol,
    cfg: &CompareConfig,
) -> anyhow::Result<RunReport> {
    let mut cluster = Cluster::start(options(scenario, cfg.participants))
        .await
        .context("starting the cluster")?;
    let mut client = cluster.coordinator_client().await?;
    let accounts = bank::accounts(cfg.participants, cfg.accounts);
    bank::seed(&mut client, &accounts, INITIAL_BALANCE).await?;
    let total = INITIAL_BALANCE * accounts.len() as i64;

    let stop = Arc::new(AtomicBool::new(false));
    let audits = Arc::new(AtomicU64::new(0));
    let audits_off = Arc::new(AtomicU64::new(0));
    let audits_attempted = Arc::new(AtomicU64::new(0));
    let mut auditors = Vec::new();
    for _ in 0..cfg.auditors {
        auditors.push(tokio::spawn(audit_loop(
            client.clone(),
            accounts.clone(),
            total,
            stop.clone(),
            [audits_attempted.clone(), audits.clone(), audits_off.clone()],
        )));
    }
    let max_in_doubt = Arc::new(AtomicU64::new(0));
    let sampler = tokio::spawn(sample_in_doubt(
        participant_urls(&cluster),
        stop.clone(),
        max_in_doubt.clone(),
    ));

    let workload = Workload {
        clients: cfg.clients,
        transfers: usize::MAX,
        duration: cfg.duration,
        overdraft_share: cfg.overdraft_share,
        seed: cfg.seed,
        protocol,
        local: false,
    };
    let started = Instant::now();
    let runner = {
        let client = client.clone();
        let accounts = accounts.clone();
        tokio::spawn(async move { bank::run(&client, &accounts, INITIAL_BALANCE, &workload).await })
    };
    let mut rng = StdRng::seed_from_u64(cfg.seed ^ scenario_salt(scenario));
    let faults = inject(
        scenario,
        protocol,
        &mut cluster,
        cfg.duration,
        started,
        &mut rng,
    )
    .await?;
    let history = runner.await.context("workload task")?;
    heal(&mut cluster).await?;
    stop.store(true, Ordering::Relaxed);
    for a in auditors {
        let _ = a.await;
    }
    let quiet_started = Instant::now();
    let unresolved_at_end = bank::wait_quiet(&cluster, QUIET_TIMEOUT).await?;
    let quiet_ms = quiet_started.elapsed().as_millis() as u64;
    let _ = sampler.await;
    for p in &cluster.participants {
        if let Ok(mut c) = cluster.stats_client(&p.name).await
            && let Ok(s) = c.get_stats(pb::StatsRequest {}).await
        {
            max_in_doubt.fetch_max(s.into_inner().max_in_doubt_ms, Ordering::Relaxed);
        }
    }

    let observed = bank::observe(&cluster, &accounts, &history, protocol).await?;
    let initial = vec![INITIAL_BALANCE; accounts.len()];
    let problems = bank::check(&initial, &history, &observed);
    cluster.shutdown()?;

    let tally = bank::tally(&history);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    // Whole buckets only: a last, partial one would show a false drop at the end.
    let buckets = (cfg.duration.as_millis() / BUCKET.as_millis()) as usize;
    let mut timeline = vec![0u64; buckets];
    for r in &history {
        if matches!(r.outcome, Outcome::Committed { .. }) {
            hist.record(r.latency.as_micros().max(1) as u64)?;
            let b = (r.at.as_millis() / BUCKET.as_millis()) as usize;
            if let Some(slot) = timeline.get_mut(b) {
                *slot += 1;
            }
        }
    }
    let last_heal = faults.iter().map(|f| f.end_ms).max();
    let recovery_ms = last_heal.and_then(|heal| {
        history
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Committed { .. }))
            .map(|r| r.at.as_millis() as u64)
            .filter(|at| *at >= heal)
            .min()
            .map(|at| at - heal)
    });
    let count = |kind: fn(&Violation) -> bool| problems.iter().filter(|p| kind(p)).count();
    let elapsed = history.iter().map(|r| r.at).max().unwrap_or(cfg.duration);
    Ok(RunReport {
        scenario: scenario.to_string(),
        protocol: protocol.name().to_string(),
        seed: cfg.seed,
        duration_s: cfg.duration.as_secs_f64(),
        clients: cfg.clients,
        committed: tally.committed,
        aborted: tally.aborted,
        unknown: tally.unknown,
        atomicity_violations: count(Violation::breaks_atomicity),
        lost_acknowledged: count(Violation::loses_acknowledged),
        total_before: total,
        total_after: observed.balances.iter().sum(),
        total_conserved: observed.balances.iter().sum::<i64>() == total,
        audits_attempted: audits_attempted.load(Ordering::Relaxed),
        audits: audits.load(Ordering::Relaxed),
        audits_off: audits_off.load(Ordering::Relaxed),
        lost_updates: bank::lost_updates(&initial, &history, &observed),
        max_in_doubt_ms: max_in_doubt.load(Ordering::Relaxed),
        unresolved_at_end,
        tps: tally.committed as f64 / elapsed.as_secs_f64().max(0.001),
        p50_ms: hist.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: hist.value_at_quantile(0.99) as f64 / 1000.0,
        recovery_ms,
        quiet_ms,
        faults,
        bucket_ms: BUCKET.as_millis() as u64,
        timeline,
        problems,
    })
}

fn scenario_salt(scenario: &str) -> u64 {
    scenario.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

fn participant_urls(cluster: &Cluster) -> Vec<String> {
    cluster.participants.iter().map(|p| p.url()).collect()
}

/// Reads every balance in one atomic multi-participant read and counts totals that are off.
/// The read is a 2PC read-only txn under either protocol: it shows what a consistent reader
/// would see of the data each protocol leaves behind.
async fn audit_loop(
    mut client: CoordinatorClient<Channel>,
    accounts: Vec<Account>,
    total: i64,
    stop: Arc<AtomicBool>,
    [attempted, audits, off]: [Arc<AtomicU64>; 3],
) {
    let mut branches: Vec<pb::Branch> = Vec::new();
    for a in &accounts {
        let op = pb::Op {
            kind: Some(pb::op::Kind::Read(pb::ReadOp {
                key: a.key.as_bytes().to_vec(),
            })),
        };
        match branches.iter_mut().find(|b| b.participant == a.participant) {
            Some(b) => b.ops.push(op),
            None => branches.push(pb::Branch {
                participant: a.participant.clone(),
                ops: vec![op],
            }),
        }
    }
    while !stop.load(Ordering::Relaxed) {
        let req = pb::TransactRequest {
            protocol: pb::Protocol::TwoPhase as i32,
            branches: branches.clone(),
            prepare_timeout_ms: 0,
            client_txn_id: String::new(),
        };
        attempted.fetch_add(1, Ordering::Relaxed);
        let res = client.transact(req).await;
        if std::env::var_os("HARNESS_DEBUG").is_some() {
            eprintln!(
                "audit: {:?}",
                res.as_ref()
                    .map(|r| (r.get_ref().outcome, r.get_ref().reason.clone()))
            );
        }
        if let Ok(r) = res {
            let r = r.into_inner();
            if r.outcome == pb::Outcome::Committed as i32 {
                let sum: i64 = r
                    .results
                    .iter()
                    .flat_map(|b| &b.reads)
                    .map(|kv| txn_types::types::decode_counter(kv.value.as_deref()).unwrap_or(0))
                    .sum();
                audits.fetch_add(1, Ordering::Relaxed);
                if sum != total {
                    off.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        tokio::time::sleep(AUDIT_PAUSE).await;
    }
}

/// Polls the participants for the oldest prepared txn, keeping the largest age seen.
async fn sample_in_doubt(urls: Vec<String>, stop: Arc<AtomicBool>, max: Arc<AtomicU64>) {
    while !stop.load(Ordering::Relaxed) {
        for url in &urls {
            if let Ok(ch) = crate::cluster::connect(url).await {
                let mut c = pb::stats_client::StatsClient::new(ch);
                let mut req = tonic::Request::new(pb::StatsRequest {});
                req.set_timeout(Duration::from_millis(200));
                if let Ok(s) = c.get_stats(req).await {
                    let s = s.into_inner();
                    max.fetch_max(
                        s.oldest_in_doubt_ms.max(s.max_in_doubt_ms),
                        Ordering::Relaxed,
                    );
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ms_since(t: Instant) -> u64 {
    t.elapsed().as_millis() as u64
}

async fn sleep_until(started: Instant, at: Duration) {
    let now = started.elapsed();
    if at > now {
        tokio::time::sleep(at - now).await;
    }
}

/// Injects the scenario's faults on a seeded schedule inside the run, healing each one before
/// the run's last quarter. Returns the fault windows.
async fn inject(
    scenario: &str,
    protocol: Protocol,
    cluster: &mut Cluster,
    duration: Duration,
    started: Instant,
    rng: &mut StdRng,
) -> anyhow::Result<Vec<FaultWindow>> {
    let mut faults = Vec::new();
    let at = |frac: f64| duration.mul_f64(frac);
    match scenario {
        "none" => {}
        "coordinator-crash" | "participant-crash" => {
            for round in 0..2 {
                let lo = 0.15 + 0.3 * round as f64;
                sleep_until(started, at(rng.random_range(lo..lo + 0.2))).await;
                let victim = if scenario == "coordinator-crash" {
                    "coordinator".to_string()
                } else {
                    format!("p{}", rng.random_range(1..=cluster.participants.len()))
                };
                let start = ms_since(started);
                cluster.node(&victim).kill();
                tokio::time::sleep(Duration::from_millis(rng.random_range(DOWNTIME_MS))).await;
                cluster.node(&victim).start().await?;
                faults.push(FaultWindow {
                    what: format!("kill -9 {victim}"),
                    start_ms: start,
                    end_ms: ms_since(started),
                });
            }
        }
        "crash-after-decision" | "crash-after-prepare" => {
            let (node, failpoint) = match (scenario, protocol) {
                ("crash-after-decision", Protocol::TwoPhase) => {
                    ("coordinator", "coordinator::after_decision_durable")
                }
                ("crash-after-decision", Protocol::Saga) => {
                    ("coordinator", "coordinator::saga_after_step_logged")
                }
                (_, Protocol::TwoPhase) => {
                    (VICTIM_PARTICIPANT, "participant::after_prepare_durable")
                }
                (_, Protocol::Saga) => {
                    (VICTIM_PARTICIPANT, "participant::saga_after_step_executed")
                }
            };
            sleep_until(started, at(rng.random_range(0.2..0.35))).await;
            cluster.set_failpoint(node, failpoint, "crash").await?;
            let armed = ms_since(started);
            let limit = at(0.75).saturating_sub(started.elapsed());
            match cluster.node(node).wait_exit(limit).await {
                Ok(_) => {
                    let start = ms_since(started);
                    tokio::time::sleep(Duration::from_millis(rng.random_range(DOWNTIME_MS))).await;
                    cluster.node(node).start().await?;
                    faults.push(FaultWindow {
                        what: format!("{node} crashed at {failpoint}"),
                        start_ms: start,
                        end_ms: ms_since(started),
                    });
                }
                Err(_) => {
                    // Never reached (e.g. nothing committed): disarm; the window stays empty.
                    cluster.set_failpoint(node, failpoint, "off").await?;
                    faults.push(FaultWindow {
                        what: format!("{failpoint} armed, never reached"),
                        start_ms: armed,
                        end_ms: armed,
                    });
                }
            }
        }
        "partition" => {
            sleep_until(started, at(rng.random_range(0.2..0.3))).await;
            let start = ms_since(started);
            for p in &cluster.proxies {
                p.partition();
            }
            sleep_until(started, at(0.6)).await;
            for p in &cluster.proxies {
                p.heal();
            }
            faults.push(FaultWindow {
                what: format!("partition coordinator <-> {LINK_PARTICIPANT}"),
                start_ms: start,
                end_ms: ms_since(started),
            });
        }
        "pause" => {
            sleep_until(started, at(rng.random_range(0.2..0.3))).await;
            let start = ms_since(started);
            cluster.node(VICTIM_PARTICIPANT).pause()?;
            sleep_until(started, at(0.55)).await;
            cluster.node(VICTIM_PARTICIPANT).resume()?;
            faults.push(FaultWindow {
                what: format!("SIGSTOP {VICTIM_PARTICIPANT}"),
                start_ms: start,
                end_ms: ms_since(started),
            });
        }
        "message-loss" => {
            sleep_until(started, at(0.2)).await;
            let start = ms_since(started);
            for p in &cluster.proxies {
                p.set_loss(MESSAGE_LOSS);
            }
            sleep_until(started, at(0.7)).await;
            for p in &cluster.proxies {
                p.heal();
            }
            faults.push(FaultWindow {
                what: format!(
                    "{}% of connections cut, coordinator <-> {LINK_PARTICIPANT}",
                    (MESSAGE_LOSS * 100.0) as u32
                ),
                start_ms: start,
                end_ms: ms_since(started),
            });
        }
        other => anyhow::bail!(
            "unknown scenario {other:?}; known: {}",
            SCENARIOS.join(", ")
        ),
    }
    Ok(faults)
}

/// Undoes every fault still in force: restarts dead processes, resumes paused ones, heals
/// the proxies.
async fn heal(cluster: &mut Cluster) -> anyhow::Result<()> {
    for p in &cluster.proxies {
        p.heal();
    }
    let names: Vec<String> = std::iter::once("coordinator".to_string())
        .chain(cluster.participants.iter().map(|p| p.name.clone()))
        .collect();
    for name in names {
        let node = cluster.node(&name);
        if node.is_running() {
            let _ = node.resume();
        } else {
            node.start().await?;
        }
    }
    Ok(())
}
