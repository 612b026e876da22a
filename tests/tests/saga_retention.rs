//! Ended sagas are not kept forever: the coordinator drops a saga's log record after
//! --saga-retention-secs, and each participant drops the saga's barriers once the coordinator
//! has told it the saga ended and the saga's deadline is past by the outcome retention. Here
//! both are a second. Records come back down to nothing, the balances stay what the sagas
//! made them, and an Execute that comes after its barrier went still cannot apply.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use txn_proto::pb::v1 as pb;
use txn_tests::cluster::{Cluster, ClusterOptions, bin_dir};
use txn_types::types::decode_counter;

const SAGA_TIMEOUT_MS: u64 = 1_000;

fn add(key: &str, delta: i64, min: Option<i64>) -> pb::Op {
    pb::Op {
        kind: Some(pb::op::Kind::Add(pb::AddOp {
            key: key.as_bytes().to_vec(),
            delta,
            min,
            max: None,
        })),
    }
}

/// Credits p2/b first, then debits p1/a (never below 0): once p1/a is empty, the debit fails
/// and the credit is compensated.
fn saga_transfer() -> pb::TransactRequest {
    pb::TransactRequest {
        protocol: pb::Protocol::Saga as i32,
        branches: vec![
            pb::Branch {
                participant: "p2".into(),
                ops: vec![add("b", 1, None)],
            },
            pb::Branch {
                participant: "p1".into(),
                ops: vec![add("a", -1, Some(0))],
            },
        ],
        ..Default::default()
    }
}

async fn balance(cluster: &Cluster, p: &str, key: &str) -> anyhow::Result<i64> {
    let v = cluster
        .participant_client(p)
        .await?
        .read(pb::ReadRequest {
            keys: vec![key.as_bytes().to_vec()],
        })
        .await?
        .into_inner()
        .values;
    decode_counter(v[0].value.as_deref()).map_err(anyhow::Error::msg)
}

/// Saga records at the coordinator and barriers at both participants (prefix -> records).
async fn saga_records(cluster: &Cluster) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut out = BTreeMap::new();
    for node in ["coordinator", "p1", "p2"] {
        for (prefix, n) in cluster.record_counts(node).await? {
            if prefix.starts_with('s') || prefix.starts_with('b') {
                *out.entry(format!("{node} {prefix}")).or_insert(0) += n;
            }
        }
    }
    Ok(out)
}

/// Waits until no saga record or barrier is left anywhere (at most a minute).
async fn all_gone(cluster: &Cluster) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = saga_records(cluster).await?;
        if left.values().all(|&n| n == 0) {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "still held after 60 s: {left:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn txnctl_json(cluster: &Cluster, args: &[&str]) -> (Option<i32>, Value) {
    let out = Command::new(bin_dir().unwrap().join("txnctl"))
        .arg("--coordinator")
        .arg(cluster.coordinator.url())
        .args(args)
        .arg("--json")
        .output()
        .expect("run txnctl");
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code(), v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_sagas_and_their_barriers_go_and_a_late_execute_cannot_apply() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOptions {
        participants: 2,
        outcome_retention_secs: 1,
        coordinator_args: vec![
            "--saga-retention-secs".into(),
            "1".into(),
            "--saga-timeout-ms".into(),
            SAGA_TIMEOUT_MS.to_string(),
        ],
        ..Default::default()
    })
    .await?;
    let mut coordinator = cluster.coordinator_client().await?;
    let seeded = coordinator
        .transact(pb::TransactRequest {
            protocol: pb::Protocol::TwoPhase as i32,
            branches: vec![pb::Branch {
                participant: "p1".into(),
                ops: vec![add("a", 10, None)],
            }],
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(seeded.outcome, pb::Outcome::Committed as i32);
    let mut completed = Vec::new();
    let mut compensated = Vec::new();
    for _ in 0..16 {
        let r = coordinator.transact(saga_transfer()).await?.into_inner();
        if r.outcome == pb::Outcome::Committed as i32 {
            completed.push(r.txn_id);
        } else {
            compensated.push(r.txn_id);
        }
    }
    assert_eq!((completed.len(), compensated.len()), (10, 6));
    // Recently ended sagas are still found.
    let (code, shown) = txnctl_json(&cluster, &["saga", "show", &completed[0]]);
    assert_eq!(code, Some(0), "{shown}");
    assert_eq!(shown["outcome"], "committed");
    let (_, shown) = txnctl_json(&cluster, &["saga", "show", &compensated[0]]);
    assert_eq!(shown["outcome"], "aborted");
    let during = saga_records(&cluster).await?;
    assert!(during["p2 b/"] >= 16, "barriers while kept: {during:?}");
    let created = pb::admin_client::AdminClient::new(cluster.channel(&cluster.coordinator.url())?)
        .show_saga(pb::TxnIdRequest {
            txn_id: completed[0].clone(),
        })
        .await?
        .into_inner()
        .created_at_unix_ms;

    // Everything comes back down: log records, notices, barriers and their indexes.
    println!("saga records while kept: {during:?}");
    all_gone(&cluster).await?;
    let (code, _) = txnctl_json(&cluster, &["saga", "show", &completed[0]]);
    assert_eq!(code, Some(1), "no longer kept");

    // A copy of the first saga's first Execute, delayed until now: its barrier is gone, but
    // its deadline has passed, so it is refused and applies nothing.
    let before = balance(&cluster, "p2", "b").await?;
    let mut p2 = cluster.participant_client("p2").await?;
    let late = p2
        .execute(pb::ExecuteRequest {
            saga_id: completed[0].clone(),
            step: 0,
            ops: vec![add("b", 1, None)],
            deadline_unix_ms: created + SAGA_TIMEOUT_MS,
            participants: vec!["p1".into(), "p2".into()],
        })
        .await?
        .into_inner();
    assert_eq!(
        late.result,
        pb::StepResult::Refused as i32,
        "{}",
        late.reason
    );
    // And a late copy of a compensation finds nothing to undo and leaves nothing behind.
    let late = p2
        .compensate(pb::CompensateRequest {
            saga_id: compensated[0].clone(),
            step: 0,
            deadline_unix_ms: created + SAGA_TIMEOUT_MS,
            participants: vec!["p1".into(), "p2".into()],
        })
        .await?
        .into_inner();
    assert_eq!(late.kind, pb::CompensationKind::Null as i32);
    assert_eq!(balance(&cluster, "p2", "b").await?, before);
    assert_eq!(before, 10, "one credit per completed saga");
    assert_eq!(balance(&cluster, "p1", "a").await?, 0);
    assert!(saga_records(&cluster).await?.values().all(|&n| n == 0));

    // A coordinator killed -9 may have lost some lazy deletions (notices, ended records):
    // they come back, are sent or swept again, and go.
    cluster.node("coordinator").kill();
    cluster.node("coordinator").start().await?;
    let status: Value = txnctl_json(&cluster, &["status"]).1;
    assert_eq!(status["sagas_running"], 0, "nothing to resume: {status}");
    println!("after the restart: {:?}", saga_records(&cluster).await?);
    all_gone(&cluster).await?;
    assert_eq!(balance(&cluster, "p2", "b").await?, 10);
    cluster.shutdown()?;
    Ok(())
}
