//! Client keys (`client_txn_id`) are remembered for a retention period, then forgotten, so
//! the key store does not grow forever.

use std::time::{Duration, Instant};

use txn_proto::pb::v1 as pb;
use txn_tests::cluster::{Cluster, ClusterOptions};

fn put(participant: &str, key: &str, value: &str) -> pb::Branch {
    pb::Branch {
        participant: participant.into(),
        ops: vec![pb::Op {
            kind: Some(pb::op::Kind::Put(pb::PutOp {
                key: key.as_bytes().to_vec(),
                value: value.as_bytes().to_vec(),
            })),
        }],
    }
}

fn keyed(value: &str) -> pb::TransactRequest {
    pb::TransactRequest {
        protocol: pb::Protocol::TwoPhase as i32,
        branches: vec![put("p1", "a", value), put("p2", "b", value)],
        prepare_timeout_ms: 0,
        client_txn_id: "retained-key".into(),
        commit_point: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_key_is_forgotten_after_its_retention() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOptions {
        participants: 2,
        coordinator_args: vec!["--client-key-retention-secs".into(), "1".into()],
        ..Default::default()
    })
    .await?;
    let mut client = cluster.coordinator_client().await?;
    let first = client.transact(keyed("one")).await?.into_inner();
    assert_eq!(first.outcome, pb::Outcome::Committed as i32);
    // Within the retention, the key is bound to its first request.
    let refused = client
        .transact(keyed("two"))
        .await
        .expect_err("a different request under a remembered key");
    assert_eq!(refused.code(), tonic::Code::AlreadyExists, "{refused:?}");
    // Once the sweeper has forgotten it, the key runs a new request.
    let deadline = Instant::now() + Duration::from_secs(20);
    let second = loop {
        match client.transact(keyed("two")).await {
            Ok(r) => break r.into_inner(),
            Err(s) if s.code() == tonic::Code::AlreadyExists && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => anyhow::bail!("the key was not forgotten: {s:?}"),
        }
    };
    assert_eq!(second.outcome, pb::Outcome::Committed as i32);
    assert_ne!(second.txn_id, first.txn_id, "a new txn ran");
    cluster.shutdown()?;
    Ok(())
}
