//! The harness: runs the bank workload against a local cluster of real processes and reports
//! what it guarantees and costs.
//!
//! Layout: this file parses the command line and holds what the commands share. Each command
//! has its own module with its flags: `run` (one workload, checked), `compare` (2PC against
//! sagas under faults) and `bench` (throughput and latency beside the physical floor).

mod bench;
mod compare;
mod pgpeer;
mod run;
mod scale;

use std::time::Duration;

use clap::{Parser, Subcommand};
use txn_proto::pb::v1 as pb;
use txn_tests::cluster::Cluster;

use bench::BenchArgs;
use compare::CompareArgs;
use run::RunArgs;

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

/// Balance every account starts with.
const INITIAL_BALANCE: i64 = 1_000;
/// How long the cluster may take to settle every in-doubt txn after the run.
const QUIET_TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run::run(args).await,
        Command::Compare(args) => compare::compare(args).await,
        Command::Bench(args) => bench::bench(args).await,
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
    let names = cluster
        .coordinator_names()
        .into_iter()
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
