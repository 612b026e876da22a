//! What both themes of the bad-input tests share: request builders, a two-participant cluster,
//! the assertion that a refusal carries the right code and names its field, and the readings
//! (balances, durable-write counts) that show a refused call changed nothing.

use std::time::Duration;

use tonic::{Code, Status};
use txn_proto::pb::v1 as pb;
use txn_tests::cluster::{Cluster, ClusterOptions};

pub type Coord = pb::coordinator_client::CoordinatorClient<tonic::transport::Channel>;
pub type Part = pb::participant_client::ParticipantClient<tonic::transport::Channel>;

pub fn add(key: &str, delta: i64, min: Option<i64>, max: Option<i64>) -> pb::Op {
    pb::Op {
        kind: Some(pb::op::Kind::Add(pb::AddOp {
            key: key.as_bytes().to_vec(),
            delta,
            min,
            max,
        })),
    }
}

pub fn put(key: &[u8], value: Vec<u8>) -> pb::Op {
    pb::Op {
        kind: Some(pb::op::Kind::Put(pb::PutOp {
            key: key.to_vec(),
            value,
        })),
    }
}

pub fn branch(p: &str, ops: Vec<pb::Op>) -> pb::Branch {
    pb::Branch {
        participant: p.into(),
        ops,
    }
}

pub fn txn(branches: Vec<pb::Branch>) -> pb::TransactRequest {
    pb::TransactRequest {
        protocol: pb::Protocol::TwoPhase as i32,
        branches,
        prepare_timeout_ms: 0,
        client_txn_id: String::new(),
        commit_point: 0,
    }
}

pub fn transfer(amount: i64) -> pb::TransactRequest {
    txn(vec![
        branch("p1", vec![add("alice", -amount, None, None)]),
        branch("p2", vec![add("bob", amount, None, None)]),
    ])
}

/// Asserts a refusal with `code` whose message names `field`.
pub fn refused<T: std::fmt::Debug>(what: &str, r: Result<T, Status>, code: Code, field: &str) {
    match r {
        Ok(v) => panic!("{what}: expected {code:?}, got {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "{what}: {}", s.message());
            assert!(
                s.message().contains(field),
                "{what}: message should name {field:?}: {}",
                s.message()
            );
            println!("{what:<45} {:?}: {}", s.code(), s.message());
        }
    }
}

async fn durable_writes(cluster: &Cluster) -> Vec<u64> {
    let mut out = Vec::new();
    for node in ["coordinator", "p1", "p2"] {
        let s = cluster
            .stats_client(node)
            .await
            .unwrap()
            .get_stats(pb::StatsRequest {})
            .await
            .unwrap()
            .into_inner();
        out.push(s.durable_writes);
    }
    out
}

/// [`durable_writes`] once the nodes have been still for a while: background writes of earlier
/// work (an ended decision's deletion, synced after `FORGET_PATIENCE` if nothing else syncs)
/// must not be taken for writes of the calls under test.
pub async fn settled_durable_writes(cluster: &Cluster) -> Vec<u64> {
    txn_tests::cluster::when_still(
        || async { Ok(durable_writes(cluster).await) },
        2 * txn_coordinator::node::FORGET_PATIENCE,
    )
    .await
    .unwrap()
}

/// The committed value of `key`. The client hears COMMITTED once the decision is durable;
/// the participants apply it a moment later, and a Read of a key still locked by the txn is
/// refused with ABORTED ("retry later"), so retry.
pub async fn balance(p: &mut Part, key: &str) -> i64 {
    let mut attempts = 0;
    let r = loop {
        match p
            .read(pb::ReadRequest {
                keys: vec![key.as_bytes().to_vec()],
            })
            .await
        {
            Ok(r) => break r.into_inner(),
            Err(s) if s.code() == Code::Aborted && attempts < 100 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(s) => panic!("read {key}: {s:?}"),
        }
    };
    r.values[0]
        .value
        .as_ref()
        .map(|v| String::from_utf8_lossy(v).parse().unwrap())
        .unwrap_or(0)
}

pub async fn start(coordinator_args: &[&str], participant_args: &[&str]) -> (Cluster, Coord) {
    let cluster = Cluster::start(ClusterOptions {
        participants: 2,
        coordinator_args: coordinator_args.iter().map(|s| s.to_string()).collect(),
        participant_args: participant_args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    })
    .await
    .unwrap();
    let coord = cluster.coordinator_client().await.unwrap();
    (cluster, coord)
}
