//! Sagas against real processes: concurrent transfers with overdrafts conserve the total and
//! every saga ends completed or compensated with one effect per (saga, step, action); the
//! barrier's three guarantees hold against a running participant; a coordinator killed
//! mid-saga resumes it; a participant that is down during a compensation gets it once back.

use std::time::Duration;

use txn_proto::pb::v1 as pb;
use txn_tests::bank::{self, Protocol, Workload};
use txn_tests::cluster::{Cluster, ClusterOptions};

const BALANCE: i64 = 100;
const QUIET_TIMEOUT: Duration = Duration::from_secs(60);

fn options() -> ClusterOptions {
    ClusterOptions {
        participants: 3,
        coordinator_args: vec![
            "--commit-retry-max-ms".into(),
            "100".into(),
            "--saga-retry-max-ms".into(),
            "100".into(),
        ],
        ..Default::default()
    }
}

async fn run_and_check(
    cluster: &Cluster,
    accounts: &[bank::Account],
    history: &[bank::Record],
) -> anyhow::Result<()> {
    let left = bank::wait_quiet(cluster, QUIET_TIMEOUT).await?;
    assert_eq!(left, 0, "sagas still running after the run");
    let observed = bank::observe(cluster, accounts, history, Protocol::Saga).await?;
    assert!(
        !observed.barriers.is_empty(),
        "the participants recorded no saga step at all"
    );
    let problems = bank::check(&vec![BALANCE; accounts.len()], history, &observed);
    let problems = bank::to_strings(&problems);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_saga_transfers_conserve_the_total() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(options()).await?;
    let mut client = cluster.coordinator_client().await?;
    let accounts = bank::accounts(3, 30);
    bank::seed(&mut client, &accounts, BALANCE).await?;
    let workload = Workload {
        clients: 16,
        transfers: 400,
        duration: Duration::from_secs(120),
        overdraft_share: 0.15,
        refusal_share: 0.0,
        seed: 21,
        protocol: Protocol::Saga,
        local: false,
        commit_point: Default::default(),
    };
    let history = bank::run(&client, &accounts, BALANCE, &workload).await;
    let tally = bank::tally(&history);
    println!("{tally:?}");
    assert_eq!(tally.unknown, 0);
    assert!(tally.committed > 0 && tally.aborted > 0, "{tally:?}");
    run_and_check(&cluster, &accounts, &history).await?;
    cluster.shutdown()?;
    Ok(())
}

fn add(key: &str, delta: i64) -> pb::Op {
    pb::Op {
        kind: Some(pb::op::Kind::Add(pb::AddOp {
            key: key.as_bytes().to_vec(),
            delta,
            min: Some(0),
            max: None,
        })),
    }
}

async fn balance(cluster: &Cluster, node: &str, key: &str) -> anyhow::Result<i64> {
    let r = cluster
        .participant_client(node)
        .await?
        .read(pb::ReadRequest {
            keys: vec![key.as_bytes().to_vec()],
        })
        .await?
        .into_inner();
    txn_types::types::decode_counter(r.values[0].value.as_deref()).map_err(anyhow::Error::msg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barrier_gives_idempotency_null_compensation_and_anti_hanging() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOptions {
        participants: 1,
        ..Default::default()
    })
    .await?;
    let p1 = cluster.participant_client("p1").await?;
    let execute = |saga: &str, step: u32, delta: i64| pb::ExecuteRequest {
        participants: vec![],
        saga_id: saga.into(),
        step,
        ops: vec![add("acct", delta)],
        deadline_unix_ms: 0,
    };

    // Idempotency: ten concurrent duplicates of one Execute apply once, all see one result.
    let mut calls = Vec::new();
    for _ in 0..10 {
        let mut c = p1.clone();
        let req = execute("t.1", 0, 5);
        calls.push(tokio::spawn(async move {
            c.execute(req).await.map(|r| r.into_inner())
        }));
    }
    for call in calls {
        assert_eq!(call.await??.result, pb::StepResult::Succeeded as i32);
    }
    assert_eq!(balance(&cluster, "p1", "acct").await?, 5);
    // ... and so do duplicated Compensates.
    let mut calls = Vec::new();
    for _ in 0..10 {
        let mut c = p1.clone();
        let req = pb::CompensateRequest {
            participants: vec![],
            saga_id: "t.1".into(),
            step: 0,
            deadline_unix_ms: 0,
        };
        calls.push(tokio::spawn(async move {
            c.compensate(req).await.map(|r| r.into_inner())
        }));
    }
    for call in calls {
        assert_eq!(call.await??.kind, pb::CompensationKind::Applied as i32);
    }
    assert_eq!(balance(&cluster, "p1", "acct").await?, 0);

    // Null compensation: Compensate of a step that never ran succeeds and changes nothing.
    let mut c = p1.clone();
    let r = c
        .compensate(pb::CompensateRequest {
            participants: vec![],
            saga_id: "t.2".into(),
            step: 0,
            deadline_unix_ms: 0,
        })
        .await?
        .into_inner();
    assert_eq!(r.kind, pb::CompensationKind::Null as i32);
    // Anti-hanging: the Execute that arrives after it is refused, and applies nothing.
    let r = c.execute(execute("t.2", 0, 7)).await?.into_inner();
    assert_eq!(r.result, pb::StepResult::Refused as i32, "{}", r.reason);
    assert_eq!(balance(&cluster, "p1", "acct").await?, 0);

    // The barrier survives a crash: the duplicate after kill -9 still returns the stored result.
    let r = c.execute(execute("t.3", 0, 3)).await?.into_inner();
    assert_eq!(r.result, pb::StepResult::Succeeded as i32);
    cluster.participant("p1").kill();
    cluster.participant("p1").start().await?;
    let mut c = cluster.participant_client("p1").await?;
    let r = c.execute(execute("t.3", 0, 3)).await?.into_inner();
    assert_eq!(r.result, pb::StepResult::Succeeded as i32);
    assert_eq!(
        balance(&cluster, "p1", "acct").await?,
        3,
        "applied once across the restart"
    );
    // A bad step number is refused with the field named.
    let err = c
        .execute(execute("t.4", 99, 1))
        .await
        .expect_err("step out of range");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("step"), "{}", err.message());
    cluster.shutdown()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_killed_mid_saga_resumes_after_restart() -> anyhow::Result<()> {
    for failpoint in [
        "coordinator::saga_after_step_logged",
        "coordinator::saga_after_step_executed",
    ] {
        let mut cluster = Cluster::start(options()).await?;
        let mut client = cluster.coordinator_client().await?;
        let accounts = bank::accounts(3, 30);
        bank::seed(&mut client, &accounts, BALANCE).await?;
        cluster
            .set_failpoint("coordinator", failpoint, "crash")
            .await?;
        let workload = Workload {
            clients: 8,
            transfers: 300,
            duration: Duration::from_secs(90),
            overdraft_share: 0.2,
            refusal_share: 0.0,
            seed: 31,
            protocol: Protocol::Saga,
            local: false,
            commit_point: Default::default(),
        };
        let runner = {
            let accounts = accounts.clone();
            tokio::spawn(async move { bank::run(&client, &accounts, BALANCE, &workload).await })
        };
        let crashed = cluster
            .coordinator
            .wait_exit(Duration::from_secs(20))
            .await?;
        assert!(!crashed.success(), "{failpoint} must crash the coordinator");
        cluster.coordinator.start().await?;
        let history = runner.await?;
        let tally = bank::tally(&history);
        println!("{failpoint}: {tally:?}");
        assert!(
            tally.unknown > 0,
            "calls in flight at the crash have no outcome"
        );
        run_and_check(&cluster, &accounts, &history).await?;
        cluster.shutdown()?;
    }
    Ok(())
}

/// A saga whose step 1 fails, so step 0 (+10 at p1) must be compensated.
fn failing_saga() -> pb::TransactRequest {
    pb::TransactRequest {
        protocol: pb::Protocol::Saga as i32,
        branches: vec![
            pb::Branch {
                participant: "p1".into(),
                ops: vec![add("acct", 10)],
            },
            // Fails: p2/acct is 0 and may not go negative.
            pb::Branch {
                participant: "p2".into(),
                ops: vec![add("acct", -10)],
            },
        ],
        prepare_timeout_ms: 0,
        client_txn_id: String::new(),
        commit_point: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_killed_mid_compensation_finishes_it_after_restart() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(options()).await?;
    cluster
        .set_failpoint("coordinator", "coordinator::saga_mid_compensation", "crash")
        .await?;
    let mut client = cluster.coordinator_client().await?;
    let err = client
        .transact(failing_saga())
        .await
        .expect_err("the coordinator dies mid-saga");
    assert!(
        matches!(
            err.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
        ),
        "{err}"
    );
    cluster
        .coordinator
        .wait_exit(Duration::from_secs(10))
        .await?;
    // The Compensate reached p1 before the crash; the log does not say so yet.
    assert_eq!(balance(&cluster, "p1", "acct").await?, 0);
    cluster.coordinator.start().await?;
    assert_eq!(
        bank::wait_quiet(&cluster, QUIET_TIMEOUT).await?,
        0,
        "the saga was resumed and ended"
    );
    let stats = cluster
        .stats_client("coordinator")
        .await?
        .get_stats(pb::StatsRequest {})
        .await?
        .into_inner();
    assert_eq!(
        stats.sagas_compensated, 1,
        "the restarted coordinator finished the compensation"
    );
    assert_eq!(
        balance(&cluster, "p1", "acct").await?,
        0,
        "compensated exactly once"
    );
    cluster.shutdown()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participant_down_during_compensation_gets_it_once_back() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(options()).await?;
    // Hold the saga right after step 0 is logged, so p1 can be taken down before the
    // compensation of that step is sent.
    cluster
        .set_failpoint(
            "coordinator",
            "coordinator::saga_after_step_logged",
            "pause",
        )
        .await?;
    let mut client = cluster.coordinator_client().await?;
    let saga = tokio::spawn(async move {
        client
            .transact(failing_saga())
            .await
            .map(|r| r.into_inner())
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while balance(&cluster, "p1", "acct").await? != 10 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "step 0 never executed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cluster.participant("p1").kill();
    cluster
        .set_failpoint("coordinator", "coordinator::saga_after_step_logged", "off")
        .await?;
    // Step 1 fails at p2; the compensation of step 0 cannot reach p1 for a while.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !saga.is_finished(),
        "the saga cannot finish while p1 is down"
    );
    cluster.participant("p1").start().await?;
    let outcome = saga.await??;
    assert_eq!(outcome.outcome, pb::Outcome::Aborted as i32);
    assert_eq!(outcome.failed_branch, Some(1));
    assert!(
        outcome.reason.contains("below the minimum"),
        "{}",
        outcome.reason
    );
    assert_eq!(
        balance(&cluster, "p1", "acct").await?,
        0,
        "step 0 was compensated once"
    );
    cluster.shutdown()?;
    Ok(())
}
