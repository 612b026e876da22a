//! `harness compare`: the same bank workload under 2PC, sagas and the events protocol, while
//! processes crash and links fail, with every guarantee checked from what the participants
//! recorded, and three ways of reading every balance measured side by side. Each protocol runs
//! with the coordinator's own sled log, or (`2pc-etcd`, `saga-etcd`, `events-etcd`) with three
//! coordinators over a three-member etcd cluster.
//!
//! Layout: this file runs one scenario under one variant and measures it; `inject` holds the
//! faults of each scenario.

mod inject;
mod variant;

pub use variant::{ETCD_COORDINATORS, ETCD_ONLY, SLED_ONLY, Variant, default_variants};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Serialize;

use crate::bank::{self, Account, Outcome, Protocol, Violation, Workload};
use crate::cluster::{Cluster, ClusterOptions};
use crate::coordinators::Coordinators;
use crate::plant::Plant;
use crate::readpaths::{self, Markers, PathStats, ReadPath, ReadPathReport, Reader};

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
    "consumer-crash",
    "coordinator-failover",
    "etcd-member-loss",
];

/// How long a killed etcd member stays down.
const ETCD_DOWNTIME: Duration = Duration::from_millis(1000);

/// Balance every account starts with.
pub const INITIAL_BALANCE: i64 = 1_000;
/// Width of one throughput bucket of the timeline.
pub const BUCKET: Duration = Duration::from_millis(250);
/// How long a run may take to settle after its faults heal.
const QUIET_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a crashed process stays down before the harness restarts it.
const DOWNTIME_MS: std::ops::Range<u64> = 300..800;
/// Share of connections a lossy link cuts.
const MESSAGE_LOSS: f64 = 0.2;
/// Participant whose link to the coordinator is proxied, and the one paused or crashed by
/// the crash-after-prepare and consumer-crash scenarios.
const LINK_PARTICIPANT: &str = "p1";
const VICTIM_PARTICIPANT: &str = "p2";

#[derive(Debug, Clone)]
pub struct CompareConfig {
    pub duration: Duration,
    pub clients: usize,
    /// Readers of each path: atomic 2PC reads (the auditors), composed reads, read model.
    pub auditors: usize,
    pub composed_readers: usize,
    pub readmodel_readers: usize,
    pub participants: usize,
    pub accounts: usize,
    pub overdraft_share: f64,
    /// Share of transfers whose credit the destination refuses (see `bank::Workload`).
    pub refusal_share: f64,
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

/// The events protocol's own figures, from the transfer records.
#[derive(Debug, Clone, Serialize)]
pub struct EventsReport {
    /// Transfers whose debit committed (the client heard ACCEPTED, or heard nothing).
    pub accepted: usize,
    pub settled: usize,
    /// Transfers the destination refused and the source refunded.
    pub refunds: usize,
    /// From the debit's commit to the credit (or the refund).
    pub accept_to_settled_p50_ms: f64,
    pub accept_to_settled_p99_ms: f64,
    pub accept_to_settled_max_ms: f64,
    /// The most money taken from a source and not yet at its destination, at any bucket end.
    pub in_flight_max: i64,
}

/// Everything measured and checked in one run (one scenario under one protocol).
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub scenario: String,
    /// The variant: `2pc`, `saga`, `events`, or one of them with `-etcd`.
    pub protocol: String,
    /// Where the coordinators kept their log (`sled` or `etcd`), and how many ran.
    pub log: String,
    pub coordinators: usize,
    pub seed: u64,
    pub duration_s: f64,
    pub clients: usize,
    /// Under events: accepted.
    pub committed: usize,
    pub aborted: usize,
    /// Calls with no answer that may have run.
    pub unknown: usize,
    /// Calls refused before a live coordinator ran them (connection refused while it was
    /// down, or refused at admission): certainly not run.
    pub not_started: usize,
    /// What became of the `unknown` calls, from the participants' records.
    pub unknown_resolved: bank::UnknownResolved,
    /// Txns (2PC), sagas or transfers (events) judged from the participants' own records
    /// (every recorded one but the auditors' reads), whatever their clients heard.
    pub txns_checked_at_participants: usize,
    pub atomicity_violations: usize,
    pub lost_acknowledged: usize,
    pub total_before: i64,
    pub total_after: i64,
    pub total_conserved: bool,
    /// The atomic 2PC read path (the auditors): tried (refused before reaching a live
    /// coordinator: not counted), completed, and off (a reader saw money in flight).
    pub audits_tried: u64,
    pub audits_completed: u64,
    pub audits_inconsistent: u64,
    /// Latency of the completed audits.
    pub audit_p50_ms: f64,
    pub audit_p99_ms: f64,
    /// Each read path: composed, atomic 2PC, read model.
    pub read_paths: Vec<ReadPathReport>,
    /// Accounts whose final balance differs from the acknowledged transfers; null when some
    /// call had no answer, so that is unknowable.
    pub lost_updates: Option<usize>,
    /// 2PC: longest a participant held a transfer prepared (prepared to decided, from its
    /// records). Auditors left out.
    pub longest_in_doubt_ms: Option<u64>,
    /// Sagas: longest from a saga's first step executed to its end (from the barrier
    /// records); events: longest from a debit to its credit or refund.
    pub longest_in_flight_ms: Option<u64>,
    pub unresolved_at_end: u64,
    /// Changes without their event, feed gaps, events a consumer never applied: must be 0.
    pub events_lost: usize,
    /// Effects applied twice or lost (the events protocol's accounts against its records,
    /// the read model against the participants): must be 0.
    pub double_effects: usize,
    /// Events delivered again to a consumer (the participants' inboxes and the read model)
    /// and suppressed there.
    pub duplicates_delivered: u64,
    /// The events protocol's figures (null under the other protocols).
    pub events: Option<EventsReport>,
    /// Events: money in flight at the end of each bucket.
    pub in_flight_timeline: Vec<i64>,
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
    /// Committed (events: accepted) transfers per bucket.
    pub timeline: Vec<u64>,
    /// Broken guarantees: any one fails the run. The protocols' prices are not findings but
    /// counts: intermediate states are the reads that saw money in flight, 2PC's blocking is
    /// `longest_in_doubt_ms`, the events protocol's delay is its accept-to-settled time. The
    /// bank's compensations are additive (Add undone by Add), so a lost update is a bug under
    /// any protocol here.
    pub problems: Vec<Violation>,
}

impl RunReport {
    /// Whether the run broke a guarantee its protocol must keep: the harness then exits
    /// non-zero. That is every finding (atomicity, an ABORTED txn applied, a COMMITTED or
    /// ACCEPTED one not applied, a saga step recorded twice or left half done, a lost update,
    /// a phantom commit, a broken total, an event lost, an effect applied twice, a transfer
    /// not settled, a read model that is wrong), and anything still unresolved.
    pub fn is_failure(&self) -> bool {
        !self.problems.is_empty() || !self.total_conserved || self.unresolved_at_end > 0
    }
}

fn options(scenario: &str, participants: usize, variant: Variant) -> ClusterOptions {
    ClusterOptions {
        participants,
        coordinators: if variant.etcd { ETCD_COORDINATORS } else { 1 },
        etcd: variant.etcd,
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
        readmodel: true,
        ..Default::default()
    }
}

/// Starts the readers of every path and the marker writer; returns their tasks and stats.
async fn start_readers(
    cluster: &Cluster,
    client: &Coordinators,
    accounts: &[Account],
    cfg: &CompareConfig,
    stop: &Arc<AtomicBool>,
) -> anyhow::Result<(Vec<tokio::task::JoinHandle<()>>, Vec<Arc<PathStats>>)> {
    let total = INITIAL_BALANCE * accounts.len() as i64;
    let markers = Arc::new(Markers::default());
    let names: Vec<String> = cluster
        .participants
        .iter()
        .map(|p| p.name.clone())
        .collect();
    let mut tasks = vec![tokio::spawn(readpaths::marker_loop(
        client.clone(),
        names.clone(),
        stop.clone(),
        markers.clone(),
    ))];
    let mut composed = Vec::new();
    for n in &names {
        composed.push((n.clone(), cluster.participant_client(n).await?));
    }
    let paths = [
        (
            ReadPath::Composed,
            cfg.composed_readers,
            Reader::Composed(composed),
        ),
        (
            ReadPath::Atomic,
            cfg.auditors,
            Reader::Atomic(client.clone(), 0),
        ),
        (
            ReadPath::ReadModel,
            cfg.readmodel_readers,
            Reader::ReadModel(cluster.readmodel_client()?),
        ),
    ];
    let mut stats = Vec::new();
    for (path, readers, reader) in paths {
        let s = Arc::new(PathStats::new(path)?);
        for i in 0..readers {
            tasks.push(tokio::spawn(readpaths::read_loop(
                reader.numbered(i),
                accounts.to_vec(),
                total,
                stop.clone(),
                s.clone(),
                markers.clone(),
            )));
        }
        stats.push(s);
    }
    Ok((tasks, stats))
}

/// Runs one scenario under one protocol on a fresh cluster.
pub async fn run_one(
    scenario: &str,
    variant: Variant,
    cfg: &CompareConfig,
) -> anyhow::Result<RunReport> {
    let protocol = variant.protocol;
    let mut cluster = Cluster::start(options(scenario, cfg.participants, variant))
        .await
        .context("starting the cluster")?;
    let mut client = cluster.coordinators()?;
    let accounts = bank::accounts(cfg.participants, cfg.accounts);
    let seeding = bank::seed(&mut client, &accounts, INITIAL_BALANCE).await?;
    let total = INITIAL_BALANCE * accounts.len() as i64;
    // The read model shows the seeded bank before anyone reads it.
    bank::wait_quiet(&cluster, QUIET_TIMEOUT).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let (readers, paths) = start_readers(&cluster, &client, &accounts, cfg, &stop).await?;
    let workload = Workload {
        clients: cfg.clients,
        transfers: usize::MAX,
        duration: cfg.duration,
        overdraft_share: cfg.overdraft_share,
        refusal_share: cfg.refusal_share,
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
    let faults = inject::inject(
        scenario,
        variant,
        &mut cluster,
        cfg.duration,
        started,
        &mut rng,
    )
    .await?;
    let history = runner.await.context("workload task")?;
    inject::heal(&mut cluster).await?;
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        let _ = r.await;
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
    problems.extend(bank::check_transfers(
        &initial, &accounts, &history, &observed,
    ));
    problems.extend(bank::check_readmodel(&observed, &accounts));
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
    let read_paths: Vec<ReadPathReport> = paths.iter().map(|p| p.report()).collect();
    let atomic = read_paths
        .iter()
        .find(|p| p.path == ReadPath::Atomic.name())
        .cloned()
        .expect("the atomic path");
    let spans = bank::transfer_spans(&observed);
    let events = (protocol == Protocol::Events).then(|| events_report(&spans));
    let duplicates_delivered = observed
        .feeds
        .inboxes
        .iter()
        .map(|(_, i)| i.duplicates)
        .chain(
            observed
                .feeds
                .readmodel
                .iter()
                .flat_map(|r| r.feeds.iter().map(|f| f.duplicates)),
        )
        .sum();
    Ok(RunReport {
        scenario: scenario.to_string(),
        protocol: variant.name(),
        log: if variant.etcd { "etcd" } else { "sled" }.into(),
        coordinators: if variant.etcd { ETCD_COORDINATORS } else { 1 },
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
            Protocol::Events => observed.feeds.transfers.len(),
        },
        atomicity_violations: count(Violation::breaks_atomicity),
        lost_acknowledged: count(Violation::loses_acknowledged),
        total_before: total,
        total_after: observed.balances.iter().sum(),
        total_conserved: observed.balances.iter().sum::<i64>() == total,
        audits_tried: atomic.tried,
        audits_completed: atomic.completed,
        audits_inconsistent: atomic.off,
        audit_p50_ms: atomic.p50_ms,
        audit_p99_ms: atomic.p99_ms,
        read_paths,
        lost_updates: bank::lost_updates(&initial, &history, &observed),
        longest_in_doubt_ms: (protocol == Protocol::TwoPhase)
            .then(|| bank::longest_in_doubt_ms(&observed)),
        longest_in_flight_ms: match protocol {
            Protocol::Saga => Some(bank::longest_in_flight_ms(&observed)),
            Protocol::Events => events.as_ref().map(|e| e.accept_to_settled_max_ms as u64),
            Protocol::TwoPhase => None,
        },
        unresolved_at_end,
        events_lost: count(Violation::loses_events),
        double_effects: count(Violation::double_or_lost_effect),
        duplicates_delivered,
        in_flight_timeline: if protocol == Protocol::Events {
            bank::money_in_flight(&spans, started_unix_ms, BUCKET.as_millis() as u64, buckets)
        } else {
            Vec::new()
        },
        events,
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

/// The events protocol's figures from its transfers' spans.
fn events_report(spans: &[bank::TransferSpan]) -> EventsReport {
    let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("bounds");
    let mut settled = 0;
    for s in spans {
        if let Some(at) = s.settled_at {
            settled += 1;
            let _ = h.record((at.saturating_sub(s.accepted_at) * 1000).max(1));
        }
    }
    let q = |q: f64| {
        if h.is_empty() {
            0.0
        } else {
            h.value_at_quantile(q) as f64 / 1000.0
        }
    };
    EventsReport {
        accepted: spans.len(),
        settled,
        refunds: spans.iter().filter(|s| s.refunded).count(),
        accept_to_settled_p50_ms: q(0.5),
        accept_to_settled_p99_ms: q(0.99),
        accept_to_settled_max_ms: if h.is_empty() {
            0.0
        } else {
            h.max() as f64 / 1000.0
        },
        in_flight_max: {
            // The peak over the whole run, at every acceptance (when money leaves a source).
            spans
                .iter()
                .map(|at| {
                    spans
                        .iter()
                        .filter(|t| {
                            t.accepted_at <= at.accepted_at
                                && t.settled_at.is_none_or(|s| s > at.accepted_at)
                        })
                        .map(|t| t.amount)
                        .sum::<i64>()
                })
                .max()
                .unwrap_or(0)
        },
    }
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

fn scenario_salt(scenario: &str) -> u64 {
    scenario.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
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
