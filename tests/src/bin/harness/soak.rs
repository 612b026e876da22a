//! `harness soak`: a fixed-rate mix of 2PC, saga and one-phase transfers on a fresh cluster
//! that runs with the services' production retention defaults (unless shortened here), every
//! node sampled over time (resident memory, open file descriptors, data directory bytes,
//! records by key prefix); writes `soak.json` and `soak.svg` and judges the growth of each
//! figure after the warm-up against `--max-growth-pct`.

use std::time::Duration;

use anyhow::Context;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde_json::json;
use txn_tests::bank;
use txn_tests::cluster::{self, Cluster, ClusterOptions};
use txn_tests::soak::{self, SoakOptions};

#[derive(clap::Args)]
pub struct SoakArgs {
    /// How long to run the load, in seconds (the warm-up included).
    #[arg(long, default_value_t = 1920)]
    duration: u64,
    /// Transfers started per second: a third each 2PC, saga and one-phase.
    #[arg(long, default_value_t = 1000)]
    rate: u32,
    /// Seconds after which nothing may grow any more (the retentions below must fit in it).
    #[arg(long, default_value_t = 120)]
    warmup: u64,
    /// Seconds between two samples of every node.
    #[arg(long, default_value_t = 5)]
    sample_every: u64,
    /// Largest growth (percent) of any figure of any node, between the first minute after
    /// the warm-up and the last minute.
    #[arg(long, default_value_t = 5.0)]
    max_growth_pct: f64,
    /// Number of participants (p1..pN).
    #[arg(long, default_value_t = 3)]
    participants: usize,
    /// Accounts, dealt over the participants.
    #[arg(long, default_value_t = 300)]
    accounts: usize,
    /// The participants' --outcome-retention-secs (aborts, tombstones, one-phase commits,
    /// ended sagas' barriers); default: the service's own.
    #[arg(long)]
    outcome_retention_secs: Option<u64>,
    /// The coordinator's --saga-retention-secs; default: the service's own.
    #[arg(long)]
    saga_retention_secs: Option<u64>,
    /// The participants' --event-retention-secs (events every consumer has acknowledged; with
    /// no consumer, every durable event); default: the service's own.
    #[arg(long)]
    event_retention_secs: Option<u64>,
    /// Seed of the workload's random choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Directory for soak.json and soak.svg.
    #[arg(long, default_value = "soak-report")]
    out: std::path::PathBuf,
}

pub async fn soak(args: SoakArgs) -> anyhow::Result<bool> {
    anyhow::ensure!(args.participants >= 2, "--participants: at least 2");
    anyhow::ensure!(args.rate >= 1, "--rate: at least 1 txn/s");
    anyhow::ensure!(
        args.warmup + 60 <= args.duration,
        "--duration: at least the warm-up plus a minute to judge"
    );
    cluster::ensure_binaries()?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let outcome_retention = args
        .outcome_retention_secs
        .unwrap_or(txn_participant::node::DEFAULT_OUTCOME_RETENTION.as_secs());
    let mut coordinator_args = Vec::new();
    if let Some(secs) = args.saga_retention_secs {
        coordinator_args.extend(["--saga-retention-secs".to_owned(), secs.to_string()]);
    }
    println!(
        "harness soak: {} s at {} txn/s, {} participants, {} accounts, warm-up {} s, outcome \
         retention {} s, saga retention {}, seed {}",
        args.duration,
        args.rate,
        args.participants,
        args.accounts,
        args.warmup,
        outcome_retention,
        args.saga_retention_secs
            .map_or("the coordinator's default".to_owned(), |s| format!("{s} s")),
        args.seed
    );
    let participant_args = match args.event_retention_secs {
        Some(secs) => vec!["--event-retention-secs".to_owned(), secs.to_string()],
        None => Vec::new(),
    };
    let mut cluster = Cluster::start(ClusterOptions {
        participants: args.participants,
        outcome_retention_secs: outcome_retention,
        coordinator_args,
        participant_args,
        dir: Some(args.out.join("cluster")),
        ..Default::default()
    })
    .await
    .context("starting the cluster")?;
    let accounts = bank::accounts(args.participants, args.accounts);
    soak::seed(&cluster, &accounts).await?;
    let opts = SoakOptions {
        duration_s: args.duration,
        rate: args.rate,
        warmup_s: args.warmup,
        sample_every_s: args.sample_every,
        seed: args.seed,
    };
    let samples = soak::run(&cluster, &accounts, &opts, |s| {
        let secs = opts.sample_every_s.max(1) as f64;
        let records: Vec<String> = s
            .nodes
            .iter()
            .map(|n| format!("{} {}", n.node, n.total_records()))
            .collect();
        println!(
            "{:>6.0} s  {:>5.0} committed/s  {:>4.0} aborted/s  {} shed  {} failed  p99 {:.1} ms  rss {} MiB  records: {}",
            s.at_s,
            s.committed as f64 / secs,
            s.aborted as f64 / secs,
            s.shed,
            s.failed,
            s.p99_ms,
            s.nodes.iter().map(|n| n.rss_bytes >> 20).sum::<u64>(),
            records.join(", ")
        );
    })
    .await?;
    let left = bank::wait_quiet(&cluster, Duration::from_secs(60)).await?;
    cluster.shutdown()?;

    let window = 60.0_f64.min((args.duration - args.warmup) as f64 / 2.0);
    let growth = soak::growth(&samples, args.warmup as f64, window);
    let met = growth
        .iter()
        .all(|g| g.growth_pct.is_finite() && g.growth_pct <= args.max_growth_pct);
    // The windows that began after the warm-up (each sample counts the one before it).
    let mut prev = 0.0;
    let (mut committed, mut aborted, mut shed, mut failed, mut span) = (0, 0, 0, 0, 0.0);
    for s in &samples {
        if prev >= args.warmup as f64 {
            (committed, aborted) = (committed + s.committed, aborted + s.aborted);
            (shed, failed) = (shed + s.shed, failed + s.failed);
            span += s.at_s - prev;
        }
        prev = s.at_s;
    }
    let span = span.max(1.0);
    let reached = (committed + aborted) as f64 / span;
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED);
    table.set_header(vec![
        "node",
        "figure",
        "start",
        "after warm-up",
        "end",
        "growth %",
    ]);
    for g in &growth {
        let (figure, unit) = match g.figure.as_str() {
            "rss_bytes" => ("RSS MiB", 1024.0 * 1024.0),
            "data_bytes" => ("data MiB", 1024.0 * 1024.0),
            other => (other, 1.0),
        };
        table.add_row(vec![
            g.node.clone(),
            figure.to_owned(),
            format!("{:.1}", g.start / unit),
            format!("{:.1}", g.after_warmup / unit),
            format!("{:.1}", g.end / unit),
            format!("{:+.1}", g.growth_pct),
        ]);
    }
    println!("{table}");
    println!(
        "after the warm-up: {reached:.0} txn/s answered of {} asked ({:.0} committed/s), {shed} \
         shed, {failed} failed; in doubt or running at the end: {left}",
        args.rate,
        committed as f64 / span,
    );
    let json_path = args.out.join("soak.json");
    let report = json!({
        "options": opts,
        "max_growth_pct": args.max_growth_pct,
        "outcome_retention_secs": outcome_retention,
        "saga_retention_secs": args.saga_retention_secs,
        "event_retention_secs": args.event_retention_secs,
        "answered_per_s_after_warmup": reached,
        "committed_per_s_after_warmup": committed as f64 / span,
        "shed_after_warmup": shed,
        "failed_after_warmup": failed,
        "left_at_end": left,
        "growth": growth,
        "target_met": met,
        "samples": samples,
    });
    std::fs::write(&json_path, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    let svg = args.out.join("soak.svg");
    soak::chart(&svg, &samples, args.warmup as f64)?;
    println!(
        "growth within {}%: {}; wrote {} and {}",
        args.max_growth_pct,
        if met { "yes" } else { "NO" },
        json_path.display(),
        svg.display()
    );
    Ok(met)
}
