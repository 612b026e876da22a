//! `harness compare`: the command-line side of the comparison of 2PC, sagas and the events
//! protocol under faults. It checks the flags, runs every scenario under every protocol and
//! writes the reports; the
//! runs themselves are `txn_tests::compare`. It fails only on runs that broke a guarantee their
//! protocol must keep, not on every finding.

use std::time::Duration;

use anyhow::Context;
use txn_tests::bank;
use txn_tests::cluster;

#[derive(clap::Args)]
pub struct CompareArgs {
    /// Scenarios to run, comma-separated, or "all": none, coordinator-crash,
    /// participant-crash, crash-after-decision, crash-after-prepare, partition, pause,
    /// message-loss, consumer-crash (kill -9 the read model and a participant mid-feed),
    /// coordinator-failover (kill -9 the coordinator with the most txns in flight),
    /// etcd-member-loss (kill an etcd member, then the leader).
    #[arg(long, default_value = "all")]
    scenarios: String,
    /// Seconds of workload per run (each scenario runs once per protocol).
    #[arg(long, default_value_t = 6)]
    duration: u64,
    /// Concurrent closed-loop transfer clients.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Auditor clients taking atomic (2PC) reads of every balance.
    #[arg(long, default_value_t = 2)]
    auditors: usize,
    /// Clients reading every balance by composition (each service's Read, in parallel).
    #[arg(long, default_value_t = 1)]
    composed_readers: usize,
    /// Clients reading every balance from the read model (txn-consistent).
    #[arg(long, default_value_t = 1)]
    readmodel_readers: usize,
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
    /// What to run each scenario under, comma-separated: 2pc, saga, events (one coordinator,
    /// its own sled log), 2pc-etcd, saga-etcd, events-etcd (three coordinators over a
    /// three-member etcd cluster, which needs Debian's etcd-server). "auto": 2pc, saga and
    /// events, and for coordinator-failover and etcd-member-loss the etcd variants too. A
    /// scenario is skipped under a variant it cannot run on (etcd-member-loss without etcd;
    /// partition and message-loss, whose proxied link is a single coordinator's, with it).
    #[arg(long, default_value = "auto")]
    protocols: String,
    /// Share of transfers whose destination refuses the credit (a closed account): 2PC votes
    /// NO, a saga compensates, the events protocol refunds.
    #[arg(long, default_value_t = 0.05)]
    refusal_share: f64,
    /// Test the checker: plant this violation into a participant's database once each run
    /// is quiet, before the checks (the run must then fail).
    #[arg(long, value_enum, hide = true)]
    plant: Option<txn_tests::plant::Plant>,
}

pub async fn compare(args: CompareArgs) -> anyhow::Result<bool> {
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
        composed_readers: args.composed_readers,
        readmodel_readers: args.readmodel_readers,
        refusal_share: args.refusal_share.clamp(0.0, 1.0),
        participants: args.participants,
        accounts: args.accounts,
        overdraft_share: 0.1,
        seed: args.seed,
        plant: args.plant,
    };
    let asked: Option<Vec<compare::Variant>> = match args.protocols.as_str() {
        "auto" => None,
        list => Some(
            list.split(',')
                .map(str::trim)
                .map(|p| {
                    compare::Variant::parse(p).with_context(|| {
                        format!(
                            "--protocols: unknown protocol {p:?}; known: 2pc, saga, events, 2pc-etcd, saga-etcd, \
                             events-etcd, auto"
                        )
                    })
                })
                .collect::<anyhow::Result<_>>()?,
        ),
    };
    let plan: Vec<(String, compare::Variant)> = scenarios
        .iter()
        .flat_map(|s| {
            let variants = asked
                .clone()
                .unwrap_or_else(|| compare::default_variants(s));
            variants
                .into_iter()
                .filter(|v| v.runs(s))
                .map(|v| (s.clone(), v))
                .collect::<Vec<_>>()
        })
        .collect();
    anyhow::ensure!(
        !plan.is_empty(),
        "no scenario runs under the protocols asked for"
    );
    println!(
        "harness compare: {} scenarios, {} runs, {} s each, {} clients, seed {} (replay with --seed {})",
        scenarios.len(),
        plan.len(),
        args.duration,
        cfg.clients,
        cfg.seed,
        cfg.seed
    );
    let bar = indicatif::ProgressBar::new(plan.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} runs, {elapsed} elapsed  {msg}",
        )
        .expect("valid template"),
    );
    let mut runs = Vec::new();
    for (scenario, variant) in &plan {
        bar.set_message(format!("{scenario} / {}", variant.name()));
        let report = compare::run_one(scenario, *variant, &cfg)
            .await
            .with_context(|| format!("scenario {scenario} under {}", variant.name()))?;
        bar.inc(1);
        runs.push(report);
    }
    bar.finish_and_clear();
    println!("{}", txn_tests::report::table(&runs));
    println!("{}", txn_tests::report::read_paths_table(&runs));
    if runs.iter().any(|r| r.events.is_some()) {
        println!("{}", txn_tests::report::events_table(&runs));
    }
    txn_tests::report::write_all(&args.out, &runs, &cfg)?;
    println!(
        "wrote {0}/report.json, {0}/report.md and {0}/throughput.svg",
        args.out.display()
    );
    let failures: Vec<_> = runs.iter().filter(|r| r.is_failure()).collect();
    if failures.is_empty() {
        println!(
            "no run broke a guarantee it must keep (atomicity at every participant, nothing acknowledged lost, no aborted txn applied, one effect per saga step, every change with its event and no event lost, every transfer settled with each effect once, the read model equal to the participants, nothing unresolved, total conserved)"
        );
        Ok(true)
    } else {
        for r in failures {
            println!("FAILED {} / {}:", r.scenario, r.protocol);
            for p in &r.problems {
                println!("  {p}");
            }
            if r.unresolved_at_end > 0 {
                println!(
                    "  {} txns or sagas unresolved at the end",
                    r.unresolved_at_end
                );
            }
        }
        Ok(false)
    }
}
