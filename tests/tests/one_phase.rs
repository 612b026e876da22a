//! One-phase commit: a txn with a single branch skips the vote. The participant checks,
//! applies and records the outcome in one forced write, and the coordinator logs nothing.
//! These tests check that it is really one phase (no coordinator write), that the switch
//! turns it off, that client keys still take two phases, and that a lossy link, which makes
//! the coordinator lose answers, never lets the client hear an outcome the participant does
//! not hold.

use std::time::Duration;

use txn_proto::pb::v1 as pb;
use txn_tests::bank::{self, Outcome, Workload};
use txn_tests::cluster::{Cluster, ClusterOptions};

const BALANCE: i64 = 100;

fn local_workload(transfers: usize, seed: u64) -> Workload {
    Workload {
        clients: 4,
        transfers,
        duration: Duration::from_secs(60),
        overdraft_share: 0.2,
        refusal_share: 0.0,
        seed,
        protocol: bank::Protocol::TwoPhase,
        local: true,
        commit_point: Default::default(),
    }
}

async fn coordinator_writes(cluster: &Cluster) -> anyhow::Result<u64> {
    let mut stats = cluster.stats_client("coordinator").await?;
    Ok(stats
        .get_stats(pb::StatsRequest {})
        .await?
        .into_inner()
        .durable_writes)
}

/// The coordinator's durable-write count once it has been still for a while: the seeding
/// txns' decision records are deleted after their acks (synced after `FORGET_PATIENCE` if
/// nothing else syncs), and that must not count as the run's writes.
async fn settled_coordinator_writes(cluster: &Cluster) -> anyhow::Result<u64> {
    txn_tests::cluster::when_still(
        || coordinator_writes(cluster),
        2 * txn_coordinator::node::FORGET_PATIENCE,
    )
    .await
}

/// Runs `w` against a fresh cluster and checks every invariant; returns the cluster, the
/// history and how many records the coordinator made durable during the run.
async fn run_checked(
    opts: ClusterOptions,
    w: &Workload,
) -> anyhow::Result<(Cluster, Vec<bank::Record>, u64)> {
    let cluster = Cluster::start(opts).await?;
    let mut client = cluster.coordinator_client().await?;
    let accounts = bank::accounts(3, 30);
    bank::seed(&mut client, &accounts, BALANCE).await?;
    bank::wait_quiet(&cluster, Duration::from_secs(10)).await?;
    let before = settled_coordinator_writes(&cluster).await?;
    let history = bank::run(&client, &accounts, BALANCE, w).await;
    let written = coordinator_writes(&cluster).await? - before;
    let left = bank::wait_quiet(&cluster, Duration::from_secs(30)).await?;
    assert_eq!(left, 0, "txns in doubt after the run");
    let observed = bank::observe(&cluster, &accounts, &history, bank::Protocol::TwoPhase).await?;
    let problems = bank::check(&vec![BALANCE; accounts.len()], &history, &observed);
    let problems = bank::to_strings(&problems);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    Ok((cluster, history, written))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_branch_txns_commit_in_one_phase_with_nothing_logged_by_the_coordinator()
-> anyhow::Result<()> {
    let opts = ClusterOptions {
        metrics: true,
        ..Default::default()
    };
    let (mut cluster, history, written) = run_checked(opts, &local_workload(120, 31)).await?;
    let tally = bank::tally(&history);
    println!("{tally:?}; coordinator durable writes during the run: {written}");
    assert_eq!(tally.unknown, 0, "no faults, every call answers: {tally:?}");
    assert!(tally.committed > 0 && tally.aborted > 0, "{tally:?}");
    assert_eq!(
        written, 0,
        "one-phase txns must not write the coordinator's log"
    );
    for r in &history {
        if let Outcome::Aborted { reason, .. } = &r.outcome {
            // A refusal, or (on a very slow machine) a call that timed out and was settled.
            assert!(
                reason.contains("voted NO") || reason.contains("one-phase commit"),
                "abort reason: {reason}"
            );
        }
    }
    let addr = cluster
        .node("coordinator")
        .metrics_addr
        .expect("metrics are on");
    let text = txn_tests::cluster::scrape_metrics(addr).await?;
    let one_phase = |outcome: &str| {
        txn_tests::cluster::metric(
            &text,
            &format!("txn_txns_total{{protocol=\"one_phase\",outcome=\"{outcome}\"}}"),
        )
        .unwrap_or(0.0) as usize
    };
    assert_eq!(one_phase("committed"), tally.committed, "{text}");
    assert_eq!(one_phase("aborted"), tally.aborted, "{text}");

    // With a client key the answer must be durable with the outcome: two phases, and a
    // retry gets the first answer without applying twice.
    let mut client = cluster.coordinator_client().await?;
    let before = coordinator_writes(&cluster).await?;
    let keyed = pb::TransactRequest {
        protocol: pb::Protocol::TwoPhase as i32,
        branches: vec![pb::Branch {
            participant: "p1".into(),
            ops: vec![pb::Op {
                kind: Some(pb::op::Kind::Put(pb::PutOp {
                    key: b"one-phase-keyed".to_vec(),
                    value: b"x".to_vec(),
                })),
            }],
        }],
        prepare_timeout_ms: 0,
        client_txn_id: "one-phase-keyed-1".into(),
        commit_point: 0,
    };
    let first = client.transact(keyed.clone()).await?.into_inner();
    let again = client.transact(keyed).await?.into_inner();
    assert_eq!(first.outcome, pb::Outcome::Committed as i32);
    assert_eq!(
        first.txn_id, again.txn_id,
        "the retry answers the first txn"
    );
    assert!(
        coordinator_writes(&cluster).await? > before,
        "a keyed txn records its key with a decision"
    );
    cluster.shutdown()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_one_phase_runs_single_branch_txns_through_both_phases() -> anyhow::Result<()> {
    let opts = ClusterOptions {
        coordinator_args: vec!["--no-one-phase".into()],
        ..Default::default()
    };
    let (mut cluster, history, written) = run_checked(opts, &local_workload(60, 32)).await?;
    let tally = bank::tally(&history);
    println!("{tally:?}; coordinator durable writes during the run: {written}");
    assert!(tally.committed > 0, "{tally:?}");
    assert!(
        written > 0,
        "two-phase commits write decisions at the coordinator"
    );
    cluster.shutdown()?;
    Ok(())
}

/// The link to p1 is cut every 100 ms for 30 ms, so one-phase calls in flight lose their
/// answers (or never arrive). The coordinator settles each one with an Abort; whatever the client hears must
/// match what p1 holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_answers_on_a_lossy_link_are_settled() -> anyhow::Result<()> {
    let opts = ClusterOptions {
        proxy: Some("p1".into()),
        coordinator_args: vec!["--commit-retry-max-ms".into(), "200".into()],
        ..Default::default()
    };
    let mut cluster = Cluster::start(opts).await?;
    let mut client = cluster.coordinator_client().await?;
    let accounts = bank::accounts(3, 30);
    bank::seed(&mut client, &accounts, BALANCE).await?;
    bank::wait_quiet(&cluster, Duration::from_secs(10)).await?;
    let runner = {
        let accounts = accounts.clone();
        tokio::spawn(async move {
            bank::run(&client, &accounts, BALANCE, &local_workload(600, 33)).await
        })
    };
    while !runner.is_finished() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        cluster.proxies.iter().for_each(|p| p.partition());
        tokio::time::sleep(Duration::from_millis(30)).await;
        cluster.proxies.iter().for_each(|p| p.heal());
    }
    let history = runner.await?;
    let cuts: u64 = cluster.proxies.iter().map(|p| p.cuts()).sum();
    let left = bank::wait_quiet(&cluster, Duration::from_secs(30)).await?;
    assert_eq!(left, 0, "txns in doubt after the link healed");
    let observed = bank::observe(&cluster, &accounts, &history, bank::Protocol::TwoPhase).await?;
    let problems = bank::check(&vec![BALANCE; accounts.len()], &history, &observed);
    let problems = bank::to_strings(&problems);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let log = std::fs::read_to_string(cluster.node("coordinator").log_path())?;
    let settled = log.matches("settling it with an Abort").count();
    let tally = bank::tally(&history);
    println!("{tally:?}; {cuts} connections cut; {settled} one-phase calls settled");
    assert!(cuts > 0, "the link must have cut connections");
    assert!(
        settled > 0,
        "some one-phase call must have lost its answer and been settled"
    );
    assert!(tally.committed > 0, "{tally:?}");
    cluster.shutdown()?;
    Ok(())
}
