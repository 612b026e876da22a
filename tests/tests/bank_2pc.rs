//! Hundreds of concurrent bank transfers through real coordinator and participant processes:
//! the total is conserved, committed transfers are applied at both ends, aborted ones at
//! neither, and nothing stays prepared.

use std::time::Duration;

use txn_tests::bank::{self, Workload};
use txn_tests::cluster::{Cluster, ClusterOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transfers_are_atomic() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOptions::default()).await?;
    let mut client = cluster.coordinator_client().await?;
    let accounts = bank::accounts(3, 30);
    let balance = 100;
    bank::seed(&mut client, &accounts, balance).await?;

    let workload = Workload {
        clients: 16,
        transfers: 400,
        duration: Duration::from_secs(120),
        overdraft_share: 0.15,
        refusal_share: 0.0,
        seed: 7,
        protocol: bank::Protocol::TwoPhase,
        local: false,
        commit_point: Default::default(),
    };
    let history = bank::run(&client, &accounts, balance, &workload).await;
    let tally = bank::tally(&history);
    println!("{tally:?}");
    assert_eq!(history.len(), 400);
    assert_eq!(
        tally.unknown, 0,
        "no faults were injected, every call must answer"
    );
    assert!(tally.committed > 0, "some transfers must commit: {tally:?}");
    assert!(tally.aborted > 0, "overdrafts must abort: {tally:?}");

    let left = bank::wait_quiet(&cluster, Duration::from_secs(10)).await?;
    assert_eq!(left, 0, "txns still in doubt after the run");
    let observed = bank::observe(&cluster, &accounts, &history, bank::Protocol::TwoPhase).await?;
    let initial = vec![balance; accounts.len()];
    let problems = bank::check(&initial, &history, &observed);
    let problems = bank::to_strings(&problems);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    cluster.shutdown()?;
    Ok(())
}
