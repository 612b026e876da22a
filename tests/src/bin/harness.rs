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
