//! `harness run`: one bank workload on a fresh local cluster, under 2PC or as sagas, then the
//! figures (throughput, latency, fsyncs per txn) and every check of the bank. Any finding
//! fails the run, since nothing was injected that could excuse it.

use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use txn_tests::bank::{self, Outcome, Workload};
use txn_tests::cluster::{self, Cluster, ClusterOptions};

use crate::{INITIAL_BALANCE, QUIET_TIMEOUT, total_fsyncs};

#[derive(clap::Args)]
pub struct RunArgs {
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
    /// Share of transfers whose credit the destination refuses (a closed account), so that
    /// 2PC aborts them, sagas compensate them and the events protocol refunds them (0..1).
    #[arg(long, default_value_t = 0.0)]
    refusal_share: f64,
    /// Seed of the workload's random choices (printed, so a run can be replayed).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// 2pc or saga.
    #[arg(long, default_value = "2pc")]
    protocol: String,
}

pub async fn run(args: RunArgs) -> anyhow::Result<bool> {
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
        refusal_share: args.refusal_share,
        seed: args.seed,
        protocol,
        local: false,
        commit_point: Default::default(),
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
