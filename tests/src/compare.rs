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
use crate::plant::Plant;

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
    /// A violation to plant once the run is quiet, to test that the checks catch it.
    pub plant: Option<Plant>,
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
    /// Calls with no answer that may have run.
    pub unknown: usize,
    /// Calls refused before a live coordinator ran them (connection refused while it was
    /// down, or refused at admission): certainly not run.
    pub not_started: usize,
    /// What became of the `unknown` calls, from the participants' records.
    pub unknown_resolved: bank::UnknownResolved,
    /// Txns judged all-or-none from the participants' own outcome records (every recorded
    /// txn but the auditors' reads), whatever their clients heard.
    pub txns_checked_at_participants: usize,
    pub atomicity_violations: usize,
    pub lost_acknowledged: usize,
    pub total_before: i64,
    pub total_after: i64,
    pub total_conserved: bool,
    /// Audits tried (refused before reaching a live coordinator: not counted), audits that
    /// read every balance (the rest aborted on a lock wait or a fault), and those whose total
    /// was off (a reader saw money in flight).
    pub audits_tried: u64,
    pub audits_completed: u64,
    pub audits_inconsistent: u64,
    /// Latency of the completed audits.
    pub audit_p50_ms: f64,
    pub audit_p99_ms: f64,
    /// Accounts whose final balance differs from the acknowledged transfers; null when some
    /// call had no answer, so that is unknowable.
    pub lost_updates: Option<usize>,
    /// 2PC: longest a participant held a transfer prepared (prepared to decided, from its
    /// records). Auditors left out.
    pub longest_in_doubt_ms: Option<u64>,
    /// Sagas: longest from a saga's first step executed to its end (from the barrier
    /// records).
    pub longest_in_flight_ms: Option<u64>,
    pub unresolved_at_end: u64,
    pub tps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// From the last heal until committed throughput is back at 80% of its rate before the
    /// first fault (whole 250 ms buckets); null with no fault, or if it never came back.
    pub recovery_ms: Option<u64>,
    /// From the last heal until every transfer begun by then was settled at its participants
    /// (nothing in doubt or in flight); null with no fault.
    pub settled_ms: Option<u64>,
    /// From the end of the workload until nothing was in doubt or running.
    pub quiet_ms: u64,
    pub faults: Vec<FaultWindow>,
    pub bucket_ms: u64,
    /// Committed transfers per bucket.
    pub timeline: Vec<u64>,
    /// Broken guarantees: any one fails the run. The protocols' prices are not findings but
    /// counts: sagas' intermediate states are `audits_inconsistent`, 2PC's blocking is
    /// `longest_in_doubt_ms`. The bank's compensations are additive (Add undone by Add), so a
    /// lost update is a bug under either protocol here; only a before-image compensation
    /// (Put or Delete restored) could lose one by design, and the bank runs none.
    pub problems: Vec<Violation>,
}

impl RunReport {
    /// Whether the run broke a guarantee its protocol must keep: the harness then exits
    /// non-zero. That is every finding (atomicity, an ABORTED txn applied, a COMMITTED one not
    /// applied everywhere, a saga step recorded twice or left half done, a lost update, a
    /// phantom commit, a broken total), and anything still unresolved.
    pub fn is_failure(&self) -> bool {
        !self.problems.is_empty() || !self.total_conserved || self.unresolved_at_end > 0
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
    let seeding = bank::seed(&mut client, &accounts, INITIAL_BALANCE).await?;
    let total = INITIAL_BALANCE * accounts.len() as i64;

    let stop = Arc::new(AtomicBool::new(false));
    let audits = Arc::new(Audits::new()?);
    let mut auditors = Vec::new();
    for _ in 0..cfg.auditors {
        auditors.push(tokio::spawn(audit_loop(
            client.clone(),
            accounts.clone(),
            total,
            stop.clone(),
            audits.clone(),
        )));
    }

    let workload = Workload {
        clients: cfg.clients,
        transfers: usize::MAX,
        duration: cfg.duration,
        overdraft_share: cfg.overdraft_share,
        seed: cfg.seed,
        protocol,
        local: false,
        commit_point: Default::default(),
    };
    let started = Instant::now();
    let started_unix_ms = txn_types::unix_ms();
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
    if let Some(what) = cfg.plant {
        let txn = crate::plant::plant(&mut cluster, what, &accounts, &history).await?;
        eprintln!("planted {what:?} into txn {txn}");
    }

    let observed = bank::observe(&cluster, &accounts, &history, protocol).await?;
    let initial = vec![INITIAL_BALANCE; accounts.len()];
    let (unknown_resolved, phantoms) = bank::resolve_unknown(&history, &observed, &seeding);
    let mut problems = bank::check(&initial, &history, &observed);
    problems.extend(phantoms);
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
    let last_heal = faults
        .iter()
        .filter(|f| f.end_ms > f.start_ms)
        .map(|f| f.end_ms)
        .max();
    let first_fault = faults.iter().map(|f| f.start_ms).min();
    let recovery_ms = match (first_fault, last_heal) {
        (Some(start), Some(heal)) => back_to_rate(&timeline, start, heal),
        _ => None,
    };
    let settled_ms =
        last_heal.map(|heal| bank::settled_after_ms(&observed, protocol, started_unix_ms + heal));
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
        not_started: tally.not_started,
        unknown_resolved,
        txns_checked_at_participants: match protocol {
            Protocol::TwoPhase => bank::txns_checked(&observed),
            Protocol::Saga => observed.barriers.len(),
        },
        atomicity_violations: count(Violation::breaks_atomicity),
        lost_acknowledged: count(Violation::loses_acknowledged),
        total_before: total,
        total_after: observed.balances.iter().sum(),
        total_conserved: observed.balances.iter().sum::<i64>() == total,
        audits_tried: audits.tried.load(Ordering::Relaxed),
        audits_completed: audits.completed.load(Ordering::Relaxed),
        audits_inconsistent: audits.inconsistent.load(Ordering::Relaxed),
        audit_p50_ms: audits.quantile_ms(0.5),
        audit_p99_ms: audits.quantile_ms(0.99),
        lost_updates: bank::lost_updates(&initial, &history, &observed),
        longest_in_doubt_ms: (protocol == Protocol::TwoPhase)
            .then(|| bank::longest_in_doubt_ms(&observed)),
        longest_in_flight_ms: (protocol == Protocol::Saga)
            .then(|| bank::longest_in_flight_ms(&observed)),
        unresolved_at_end,
        tps: tally.committed as f64 / elapsed.as_secs_f64().max(0.001),
        p50_ms: hist.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: hist.value_at_quantile(0.99) as f64 / 1000.0,
        recovery_ms,
        settled_ms,
        quiet_ms,
        faults,
        bucket_ms: BUCKET.as_millis() as u64,
        timeline,
        problems,
    })
}

/// Share of the pre-fault rate that counts as recovered.
const RECOVERED_SHARE: f64 = 0.8;

/// From `heal_ms` until the end of the first whole bucket after it whose committed count is
/// back at [`RECOVERED_SHARE`] of the mean before `fault_ms`. None without a pre-fault bucket, or if
/// throughput never came back within the run.
fn back_to_rate(timeline: &[u64], fault_ms: u64, heal_ms: u64) -> Option<u64> {
    let bucket = BUCKET.as_millis() as u64;
    let before = (fault_ms / bucket) as usize;
    if before == 0 {
        return None;
    }
    let rate = timeline[..before.min(timeline.len())].iter().sum::<u64>() as f64 / before as f64;
    let first = heal_ms.div_ceil(bucket) as usize;
    timeline
        .iter()
        .enumerate()
        .skip(first)
        .find(|(_, n)| **n as f64 >= RECOVERED_SHARE * rate)
        // The rate is known at the end of the bucket that shows it.
        .map(|(i, _)| ((i as u64 + 1) * bucket).saturating_sub(heal_ms))
}

/// What the auditors saw: how many atomic reads they tried, completed, and found off, and
/// how long the completed ones took.
struct Audits {
    tried: AtomicU64,
    completed: AtomicU64,
    inconsistent: AtomicU64,
    latency_us: std::sync::Mutex<Histogram<u64>>,
}

impl Audits {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            tried: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            inconsistent: AtomicU64::new(0),
            latency_us: std::sync::Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3)?),
        })
    }

    fn quantile_ms(&self, q: f64) -> f64 {
        let h = self.latency_us.lock().expect("audit histogram");
        if h.is_empty() {
            0.0
        } else {
            h.value_at_quantile(q) as f64 / 1000.0
        }
    }
}

fn scenario_salt(scenario: &str) -> u64 {
    scenario.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

/// Reads every balance in one atomic multi-participant read and counts totals that are off.
/// The read is a 2PC read-only txn under either protocol: it shows what a consistent reader
/// would see of the data each protocol leaves behind.
async fn audit_loop(
    mut client: CoordinatorClient<Channel>,
    accounts: Vec<Account>,
    total: i64,
    stop: Arc<AtomicBool>,
    audits: Arc<Audits>,
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
            commit_point: 0,
        };
        let t0 = Instant::now();
        let res = client.transact(req).await;
        // An audit refused before it reached a live coordinator (it was down) never ran: it
        // says nothing about readers, so it is not counted as tried.
        if !matches!(&res, Err(s) if crate::bank::never_started(s)) {
            audits.tried.fetch_add(1, Ordering::Relaxed);
        }
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
                audits.completed.fetch_add(1, Ordering::Relaxed);
                let us = t0.elapsed().as_micros().max(1) as u64;
                let _ = audits
                    .latency_us
                    .lock()
                    .expect("audit histogram")
                    .record(us);
                if sum != total {
                    audits.inconsistent.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        tokio::time::sleep(AUDIT_PAUSE).await;
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

#[cfg(test)]
mod tests {
    use super::back_to_rate;

    #[test]
    fn recovery_ends_with_the_first_bucket_back_at_the_pre_fault_rate() {
        // Four buckets at 4 before the fault at 1 s; healed at 1.5 s; bucket 6 (1.5-1.75 s)
        // holds 1, bucket 7 (1.75-2 s) is back at 4: recovered at 2 s, 500 ms after the heal.
        let timeline = [4, 4, 4, 4, 0, 0, 1, 4, 4];
        assert_eq!(back_to_rate(&timeline, 1_000, 1_500), Some(500));
        // No whole bucket before the fault, or never back: unknown.
        assert_eq!(back_to_rate(&timeline, 100, 1_500), None);
        assert_eq!(back_to_rate(&[4, 4, 0, 0], 500, 600), None);
    }
}
