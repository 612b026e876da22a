//! The harness: runs the bank workload against a local cluster of real processes and reports
//! what it guarantees and costs.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use txn_proto::pb::v1 as pb;
use txn_tests::bank::{self, Outcome, Workload};
use txn_tests::cluster::{self, Cluster, ClusterOptions};

#[derive(Parser)]
#[command(
    name = "harness",
    about = "Runs workloads against a local cluster and checks them"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the same bank workload under 2PC and under sagas while processes crash and links
    /// fail; check every guarantee and report what each protocol keeps and costs.
    Compare(CompareArgs),
    /// Start a local cluster, run bank transfers, check them, report figures.
    Run(RunArgs),
    /// Throughput and latency of transfers at several client counts, beside the physical
    /// floor measured in the same run (fsync of a small append, a no-op gRPC round trip).
    Bench(BenchArgs),
}

#[derive(clap::Args)]
struct BenchArgs {
    /// 2pc, saga, or both.
    #[arg(long, default_value = "both")]
    protocol: String,
    /// Client counts to run, comma-separated.
    #[arg(long, default_value = "1,8,32,64")]
    clients: String,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Number of participants (p1..pN).
    #[arg(long, default_value_t = 3)]
    participants: usize,
    /// Number of accounts, dealt over the participants. Fewer accounts means more lock
    /// conflicts between concurrent transfers (the 2PC locks are held from prepare to commit).
    #[arg(long, default_value_t = BENCH_ACCOUNTS)]
    accounts: usize,
    /// Participants' outcome retention (the services' default; 0 keeps every outcome and
    /// ignores the coordinator's forgets).
    #[arg(long, default_value_t = txn_participant::node::DEFAULT_OUTCOME_RETENTION.as_secs())]
    outcome_retention_secs: u64,
    /// Also measure single-participant transfers (one branch) as the local baseline.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    local_baseline: bool,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(clap::Args)]
struct CompareArgs {
    /// Scenarios to run, comma-separated, or "all": none, coordinator-crash,
    /// participant-crash, crash-after-decision, crash-after-prepare, partition, pause,
    /// message-loss.
    #[arg(long, default_value = "all")]
    scenarios: String,
    /// Seconds of workload per run (each scenario runs once per protocol).
    #[arg(long, default_value_t = 6)]
    duration: u64,
    /// Concurrent closed-loop transfer clients.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Auditor clients taking atomic reads of every balance.
    #[arg(long, default_value_t = 2)]
    auditors: usize,
    /// Number of participants (p1..pN).
    #[arg(long, default_value_t = 3)]
    participants: usize,
    /// Number of accounts, dealt over the participants.
    #[arg(long, default_value_t = 60)]
    accounts: usize,
    /// Seed of the workload and of the fault schedule (printed, so a run can be replayed).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Directory for report.json, report.md and throughput.svg.
    #[arg(long, default_value = "compare-report")]
    out: std::path::PathBuf,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Concurrent closed-loop clients.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// How long to run transfers, in seconds.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Number of participants (p1..pN).
    #[arg(long, default_value_t = 3)]
    participants: usize,
    /// Number of accounts, dealt over the participants.
    #[arg(long, default_value_t = 300)]
    accounts: usize,
    /// Share of transfers that overdraw and must abort (0..1).
    #[arg(long, default_value_t = 0.1)]
    overdraft_share: f64,
    /// Seed of the workload's random choices (printed, so a run can be replayed).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// 2pc or saga.
    #[arg(long, default_value = "2pc")]
    protocol: String,
}

/// Balance every account starts with.
const INITIAL_BALANCE: i64 = 1_000;
/// How long the cluster may take to settle every in-doubt txn after the run.
const QUIET_TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args).await,
        Command::Compare(args) => compare(args).await,
        Command::Bench(args) => bench(args).await,
    };
    match result {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("harness: {e:#}");
            std::process::exit(1);
        }
    }
}

async fn total_fsyncs(cluster: &Cluster) -> anyhow::Result<u64> {
    let mut n = 0;
    let names = std::iter::once("coordinator".to_string())
        .chain(cluster.participants.iter().map(|p| p.name.clone()));
    for name in names {
        let s = cluster
            .stats_client(&name)
            .await?
            .get_stats(pb::StatsRequest {})
            .await?;
        n += s.into_inner().fsyncs;
    }
    Ok(n)
}

async fn run(args: RunArgs) -> anyhow::Result<bool> {
    anyhow::ensure!(
        args.participants >= 2,
        "--participants: transfers need at least 2"
    );
    anyhow::ensure!(
        args.accounts >= args.participants
            && args.accounts <= args.participants * bank::MAX_ACCOUNTS_PER_PARTICIPANT,
        "--accounts: must be between {} and {}",
        args.participants,
        args.participants * bank::MAX_ACCOUNTS_PER_PARTICIPANT
    );
    anyhow::ensure!(args.clients >= 1, "--clients: must be at least 1");
    let protocol = match args.protocol.as_str() {
        "2pc" => bank::Protocol::TwoPhase,
        "saga" => bank::Protocol::Saga,
        other => anyhow::bail!("--protocol: {other:?} is not 2pc or saga"),
    };
    cluster::ensure_binaries()?;
    println!(
        "harness run: {} participants, {} accounts, {} clients, {} s, seed {}, protocol {}",
        args.participants,
        args.accounts,
        args.clients,
        args.duration,
        args.seed,
        protocol.name()
    );
    let mut cluster = Cluster::start(ClusterOptions {
        participants: args.participants,
        ..Default::default()
    })
    .await
    .context("starting the cluster")?;
    let mut client = cluster.coordinator_client().await?;
    let accounts = bank::accounts(args.participants, args.accounts);
    bank::seed(&mut client, &accounts, INITIAL_BALANCE).await?;

    let fsyncs_before = total_fsyncs(&cluster).await?;
    let workload = Workload {
        clients: args.clients,
        transfers: usize::MAX,
        duration: Duration::from_secs(args.duration),
        overdraft_share: args.overdraft_share,
        seed: args.seed,
        protocol,
        local: false,
    };
    let started = Instant::now();
    let history = bank::run(&client, &accounts, INITIAL_BALANCE, &workload).await;
    let elapsed = started.elapsed();
    let left = bank::wait_quiet(&cluster, QUIET_TIMEOUT).await?;
    let fsyncs = total_fsyncs(&cluster).await? - fsyncs_before;

    let tally = bank::tally(&history);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut lock_aborts = 0;
    for r in &history {
        match &r.outcome {
            Outcome::Committed { .. } => {
                hist.record(r.latency.as_micros().max(1) as u64)?;
            }
            Outcome::Aborted { reason, .. } if reason.contains("lock conflict") => lock_aborts += 1,
            _ => {}
        }
    }
    let observed = bank::observe(&cluster, &accounts, &history, protocol).await?;
    let initial = vec![INITIAL_BALANCE; accounts.len()];
    let problems = bank::check(&initial, &history, &observed);
    cluster.shutdown()?;

    let ms = |us: u64| us as f64 / 1000.0;
    println!("committed            {}", tally.committed);
    println!(
        "aborted              {} ({} on lock conflicts)",
        tally.aborted, lock_aborts
    );
    println!("unknown to client    {}", tally.unknown);
    println!(
        "throughput           {:.0} committed txns/s",
        tally.committed as f64 / elapsed.as_secs_f64()
    );
    println!(
        "latency (committed)  p50 {:.2} ms  p99 {:.2} ms  p999 {:.2} ms",
        ms(hist.value_at_quantile(0.5)),
        ms(hist.value_at_quantile(0.99)),
        ms(hist.value_at_quantile(0.999))
    );
    println!(
        "fsyncs               {} ({:.2} per committed txn, all processes)",
        fsyncs,
        fsyncs as f64 / tally.committed.max(1) as f64
    );
    println!("in doubt at the end  {left}");
    if problems.is_empty() {
        println!(
            "checks               OK: total conserved, every txn atomic, nothing acknowledged lost"
        );
        Ok(true)
    } else {
        println!("checks               FAILED:");
        for p in &problems {
            println!("  {p}");
        }
        Ok(false)
    }
}

async fn compare(args: CompareArgs) -> anyhow::Result<bool> {
    use txn_tests::compare::{self, CompareConfig, SCENARIOS};
    let scenarios: Vec<String> = if args.scenarios == "all" {
        SCENARIOS.iter().map(|s| s.to_string()).collect()
    } else {
        args.scenarios
            .split(',')
            .map(|s| s.trim().to_string())
            .collect()
    };
    for s in &scenarios {
        anyhow::ensure!(
            SCENARIOS.contains(&s.as_str()),
            "--scenarios: unknown scenario {s:?}; known: {}",
            SCENARIOS.join(", ")
        );
    }
    anyhow::ensure!(
        args.participants >= 2,
        "--participants: transfers need at least 2"
    );
    anyhow::ensure!(
        args.duration >= 2,
        "--duration: at least 2 seconds, so faults fit in the run"
    );
    anyhow::ensure!(
        args.accounts >= args.participants
            && args.accounts <= args.participants * bank::MAX_ACCOUNTS_PER_PARTICIPANT,
        "--accounts: must be between {} and {}",
        args.participants,
        args.participants * bank::MAX_ACCOUNTS_PER_PARTICIPANT
    );
    cluster::ensure_binaries()?;
    let cfg = CompareConfig {
        duration: Duration::from_secs(args.duration),
        clients: args.clients.max(1),
        auditors: args.auditors,
        participants: args.participants,
        accounts: args.accounts,
        overdraft_share: 0.1,
        seed: args.seed,
    };
    println!(
        "harness compare: {} scenarios x 2 protocols, {} s each, {} clients, seed {} (replay with --seed {})",
        scenarios.len(),
        args.duration,
        cfg.clients,
        cfg.seed,
        cfg.seed
    );
    let bar = indicatif::ProgressBar::new((scenarios.len() * 2) as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} runs, {elapsed} elapsed  {msg}",
        )
        .expect("valid template"),
    );
    let mut runs = Vec::new();
    for scenario in &scenarios {
        for protocol in [bank::Protocol::TwoPhase, bank::Protocol::Saga] {
            bar.set_message(format!("{scenario} / {}", protocol.name()));
            let report = compare::run_one(scenario, protocol, &cfg)
                .await
                .with_context(|| format!("scenario {scenario} under {}", protocol.name()))?;
            bar.inc(1);
            runs.push(report);
        }
    }
    bar.finish_and_clear();
    println!("{}", txn_tests::report::table(&runs));
    txn_tests::report::write_all(&args.out, &runs, &cfg)?;
    println!(
        "wrote {0}/report.json, {0}/report.md and {0}/throughput.svg",
        args.out.display()
    );
    let failures: Vec<_> = runs.iter().filter(|r| r.is_failure()).collect();
    if failures.is_empty() {
        println!(
            "no run broke a guarantee it must keep (2PC: atomicity, no lost acks, nothing unresolved; both: total conserved)"
        );
        Ok(true)
    } else {
        for r in failures {
            println!("FAILED {} / {}:", r.scenario, r.protocol);
            for p in &r.problems {
                println!("  {p}");
            }
        }
        Ok(false)
    }
}

/// Samples for each floor measurement.
const FLOOR_SAMPLES: usize = 500;

/// p50 of fsync (fdatasync) after a 100-byte append, in ms, on the cluster's disk.
fn fsync_floor(dir: &std::path::Path) -> anyhow::Result<f64> {
    use std::io::Write;
    let path = dir.join("fsync-floor.tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    let mut samples = Vec::with_capacity(FLOOR_SAMPLES);
    for _ in 0..FLOOR_SAMPLES {
        f.write_all(&[7u8; 100])?;
        let t = Instant::now();
        f.sync_data()?;
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    std::fs::remove_file(&path)?;
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}

/// p50 of a no-op unary gRPC call (a health check) to a participant, in ms.
async fn rpc_floor(url: &str) -> anyhow::Result<f64> {
    let ch = cluster::connect(url).await?;
    let mut c = tonic_health::pb::health_client::HealthClient::new(ch);
    let mut samples = Vec::with_capacity(FLOOR_SAMPLES);
    for _ in 0..FLOOR_SAMPLES {
        let t = Instant::now();
        c.check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await?;
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}

#[derive(serde::Serialize)]
struct BenchRow {
    protocol: String,
    local: bool,
    clients: usize,
    tps: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    fsync_p50_ms: f64,
    rpc_p50_ms: f64,
    fsyncs_per_txn: f64,
    committed: usize,
    aborted: usize,
}

/// Mean time per phase and writes per fsync, from the nodes' metrics (coordinator and p1).
#[derive(Debug, Clone, Copy, Default)]
struct Phases {
    /// (sum seconds, count) of: coordinator prepare phase, coordinator commit phase,
    /// p1 Prepare, p1 Commit; and (writes, fsyncs) of the coordinator and p1.
    coord_prepare: (f64, f64),
    coord_commit: (f64, f64),
    p1_prepare: (f64, f64),
    p1_commit: (f64, f64),
    coord_batch: (f64, f64),
    p1_batch: (f64, f64),
    p1_flush: (f64, f64),
    p1_fdatasync: (f64, f64),
}

impl Phases {
    async fn scrape(cluster: &Cluster) -> anyhow::Result<Self> {
        let get = |text: &str, name: &str| {
            (
                cluster::metric(text, &format!("{name}_sum")).unwrap_or(0.0),
                cluster::metric(text, &format!("{name}_count")).unwrap_or(0.0),
            )
        };
        let coord = match cluster.coordinator.metrics_addr {
            Some(a) => cluster::scrape_metrics(a).await?,
            None => String::new(),
        };
        let p1 = match cluster.participants[0].metrics_addr {
            Some(a) => cluster::scrape_metrics(a).await?,
            None => String::new(),
        };
        Ok(Self {
            coord_prepare: get(&coord, "txn_prepare_seconds"),
            coord_commit: get(&coord, "txn_commit_seconds"),
            p1_prepare: get(&p1, "txn_prepare_seconds"),
            p1_commit: get(&p1, "txn_commit_seconds"),
            coord_batch: get(&coord, "txn_group_commit_batch_writes"),
            p1_batch: get(&p1, "txn_group_commit_batch_writes"),
            p1_flush: get(&p1, "txn_sled_flush_seconds"),
            p1_fdatasync: get(&p1, "txn_fdatasync_seconds"),
        })
    }

    fn since(&self, before: &Self) -> Self {
        let d = |a: (f64, f64), b: (f64, f64)| (a.0 - b.0, a.1 - b.1);
        Self {
            coord_prepare: d(self.coord_prepare, before.coord_prepare),
            coord_commit: d(self.coord_commit, before.coord_commit),
            p1_prepare: d(self.p1_prepare, before.p1_prepare),
            p1_commit: d(self.p1_commit, before.p1_commit),
            coord_batch: d(self.coord_batch, before.coord_batch),
            p1_batch: d(self.p1_batch, before.p1_batch),
            p1_flush: d(self.p1_flush, before.p1_flush),
            p1_fdatasync: d(self.p1_fdatasync, before.p1_fdatasync),
        }
    }
}

impl std::fmt::Display for Phases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |(sum, n): (f64, f64)| if n > 0.0 { sum / n * 1000.0 } else { 0.0 };
        let per = |(sum, n): (f64, f64)| if n > 0.0 { sum / n } else { 0.0 };
        write!(
            f,
            "mean ms: coordinator prepare phase {:.2}, commit phase {:.2}; p1 Prepare {:.2}, Commit {:.2}, sync = sled flush {:.2} + fdatasync {:.2}; writes per fsync: coordinator {:.1}, p1 {:.1}",
            ms(self.coord_prepare),
            ms(self.coord_commit),
            ms(self.p1_prepare),
            ms(self.p1_commit),
            ms(self.p1_flush),
            ms(self.p1_fdatasync),
            per(self.coord_batch),
            per(self.p1_batch)
        )
    }
}

/// Default accounts of `harness bench`: enough that 64 clients rarely want the same account,
/// so the figures measure the transaction manager rather than the workload's lock conflicts.
const BENCH_ACCOUNTS: usize = 10_000;
/// Most accounts `harness bench` seeds.
const MAX_BENCH_ACCOUNTS: usize = 1_000_000;

async fn bench(args: BenchArgs) -> anyhow::Result<bool> {
    let protocols = match args.protocol.as_str() {
        "2pc" => vec![bank::Protocol::TwoPhase],
        "saga" => vec![bank::Protocol::Saga],
        "both" => vec![bank::Protocol::TwoPhase, bank::Protocol::Saga],
        other => anyhow::bail!("--protocol: {other:?} is not 2pc, saga or both"),
    };
    let clients: Vec<usize> = args
        .clients
        .split(',')
        .map(|c| c.trim().parse::<usize>().ok().filter(|n| *n > 0))
        .collect::<Option<_>>()
        .with_context(|| {
            format!(
                "--clients: {:?} is not a comma-separated list of positive counts",
                args.clients
            )
        })?;
    anyhow::ensure!(
        args.participants >= 2,
        "--participants: transfers need at least 2"
    );
    if cfg!(debug_assertions) {
        eprintln!(
            "harness bench: this is a debug build; run it with cargo run --release for real figures"
        );
    }
    cluster::ensure_binaries()?;
    let mut cluster = Cluster::start(ClusterOptions {
        participants: args.participants,
        metrics: true,
        // By default as in production: outcomes are forgotten and swept (the bench audits
        // nothing per txn).
        outcome_retention_secs: args.outcome_retention_secs,
        ..Default::default()
    })
    .await
    .context("starting the cluster")?;
    let mut client = cluster.coordinator_client().await?;
    anyhow::ensure!(
        (args.participants..=MAX_BENCH_ACCOUNTS).contains(&args.accounts),
        "--accounts: must be between {} and {MAX_BENCH_ACCOUNTS}",
        args.participants
    );
    let accounts = bank::accounts(args.participants, args.accounts);
    bank::seed(&mut client, &accounts, INITIAL_BALANCE).await?;
    let fsync_p50_ms = fsync_floor(cluster.dir())?;
    let rpc_p50_ms = rpc_floor(&cluster.participants[0].url()).await?;
    println!("floor: fsync p50 {fsync_p50_ms:.3} ms, no-op gRPC round trip p50 {rpc_p50_ms:.3} ms");
    let mut rows = Vec::new();
    let mut runs: Vec<(bank::Protocol, bool)> = protocols.iter().map(|p| (*p, false)).collect();
    if args.local_baseline {
        runs.push((bank::Protocol::TwoPhase, true));
    }
    for (protocol, local) in runs {
        for &n in &clients {
            let before = total_fsyncs(&cluster).await?;
            let phases_before = Phases::scrape(&cluster).await?;
            let w = Workload {
                clients: n,
                transfers: usize::MAX,
                duration: Duration::from_secs(args.duration),
                overdraft_share: 0.0,
                seed: n as u64,
                protocol,
                local,
            };
            let started = Instant::now();
            let history = bank::run(&client, &accounts, INITIAL_BALANCE, &w).await;
            let elapsed = started.elapsed();
            bank::wait_quiet(&cluster, QUIET_TIMEOUT).await?;
            let fsyncs = total_fsyncs(&cluster).await? - before;
            let phases = Phases::scrape(&cluster).await?.since(&phases_before);
            let tally = bank::tally(&history);
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            for r in history
                .iter()
                .filter(|r| matches!(r.outcome, Outcome::Committed { .. }))
            {
                hist.record(r.latency.as_micros().max(1) as u64)?;
            }
            let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
            let row = BenchRow {
                protocol: protocol.name().into(),
                local,
                clients: n,
                tps: tally.committed as f64 / elapsed.as_secs_f64(),
                p50_ms: ms(0.5),
                p99_ms: ms(0.99),
                p999_ms: ms(0.999),
                fsync_p50_ms,
                rpc_p50_ms,
                fsyncs_per_txn: fsyncs as f64 / tally.committed.max(1) as f64,
                committed: tally.committed,
                aborted: tally.aborted,
            };
            println!(
                "{:<5} {:<6} clients {:>3}: {:>7.0} txn/s  p50 {:>6.2} ms  p99 {:>6.2} ms  p999 {:>6.2} ms  fsyncs/txn {:.2}  ({} aborted)",
                row.protocol,
                if local { "local" } else { "2-part" },
                n,
                row.tps,
                row.p50_ms,
                row.p99_ms,
                row.p999_ms,
                row.fsyncs_per_txn,
                row.aborted
            );
            println!("      {phases}");
            rows.push(row);
        }
    }
    cluster.shutdown()?;
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&rows)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(true)
}
