//! Participants do not keep every outcome forever. Commits of two-phase txns are forgotten
//! when the coordinator says the txn ended (every participant acked, and its decision record
//! is gone for good); aborts, abort tombstones and one-phase commits expire after the
//! retention. Here the retention is one second: after a mixed run, every outcome record goes
//! away, while the balances stay exactly what the acknowledged transfers make them.

use std::time::{Duration, Instant};

use txn_proto::pb::v1 as pb;
use txn_tests::bank::{self, Workload};
use txn_tests::cluster::{Cluster, ClusterOptions};

const BALANCE: i64 = 100;

async fn outcome_records(cluster: &Cluster, name: &str) -> anyhow::Result<usize> {
    let mut p = cluster.participant_client(name).await?;
    let mut start_after = String::new();
    let mut n = 0;
    loop {
        let page = p
            .list_outcomes(pb::ListOutcomesRequest {
                start_after: start_after.clone(),
                limit: 0,
            })
            .await?
            .into_inner();
        n += page.outcomes.len();
        if page.next.is_empty() {
            return Ok(n);
        }
        start_after = page.next;
    }
}

async fn all_outcome_records(cluster: &Cluster) -> anyhow::Result<Vec<usize>> {
    let mut out = Vec::new();
    for name in ["p1", "p2", "p3"] {
        out.push(outcome_records(cluster, name).await?);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_and_expired_outcomes_are_dropped_and_balances_stay() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOptions {
        outcome_retention_secs: 1,
        coordinator_args: vec!["--commit-retry-max-ms".into(), "200".into()],
        ..Default::default()
    })
    .await?;
    let mut client = cluster.coordinator_client().await?;
    let accounts = bank::accounts(3, 30);
    bank::seed(&mut client, &accounts, BALANCE).await?;
    let mut history = Vec::new();
    for (local, seed) in [(false, 41), (true, 42)] {
        let w = Workload {
            clients: 8,
            transfers: 300,
            duration: Duration::from_secs(60),
            overdraft_share: 0.2,
            refusal_share: 0.0,
            seed,
            protocol: bank::Protocol::TwoPhase,
            local,
            commit_point: Default::default(),
        };
        history.extend(bank::run(&client, &accounts, BALANCE, &w).await);
    }
    let tally = bank::tally(&history);
    assert_eq!(tally.unknown, 0, "no faults, every call answers: {tally:?}");
    assert!(tally.committed > 0 && tally.aborted > 0, "{tally:?}");
    assert_eq!(
        bank::wait_quiet(&cluster, Duration::from_secs(30)).await?,
        0
    );

    // Outcome records go away: forgets ride on commit batches (or go alone after a short
    // linger), expired ones are swept every half second.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut left = all_outcome_records(&cluster).await?;
    println!("{tally:?}; outcome records at p1..p3 after the run: {left:?}");
    while left.iter().any(|&n| n > 0) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "outcome records still held after 30 s: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        left = all_outcome_records(&cluster).await?;
    }

    // The data is untouched by the pruning: the bank is whole and every account holds what
    // the acknowledged transfers give, also after the coordinator restarts from its log.
    cluster.node("coordinator").kill();
    cluster.node("coordinator").start().await?;
    let observed = bank::observe(&cluster, &accounts, &history, bank::Protocol::TwoPhase).await?;
    assert_eq!(observed.in_doubt, 0);
    assert_eq!(
        observed.balances.iter().sum::<i64>(),
        BALANCE * accounts.len() as i64,
        "total conserved"
    );
    let initial = vec![BALANCE; accounts.len()];
    assert_eq!(
        bank::lost_updates(&initial, &history, &observed),
        Some(0),
        "balances differ from the acknowledged transfers"
    );
    // Nothing came back: the restarted coordinator re-sent no Commit for a forgotten txn.
    assert_eq!(all_outcome_records(&cluster).await?, vec![0, 0, 0]);
    cluster.shutdown()?;
    Ok(())
}
