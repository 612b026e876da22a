//! Cancellations are not an attack. A client whose calls hit their deadlines cancels them
//! (HTTP/2 RST_STREAM), often before the server has even taken them up. The server's guard
//! against reset floods must not take a burst of those for one and close the connection,
//! killing every other call on it: here a long call runs beside a burst of calls with a
//! 1 ms deadline on the same channel, and it must still get its answer.

use std::time::Duration;

use txn_proto::pb::v1 as pb;
use txn_tests::cluster::{Cluster, ClusterOptions};

fn put(key: &[u8]) -> pb::Op {
    pb::Op {
        kind: Some(pb::op::Kind::Put(pb::PutOp {
            key: key.to_vec(),
            value: b"1".to_vec(),
        })),
    }
}

fn prepare(txn: &str) -> pb::PrepareRequest {
    pb::PrepareRequest {
        txn_id: txn.into(),
        coordinator_epoch: 9,
        participants: vec!["p1".into()],
        ops: vec![put(b"held")],
        read_only: false,
        commit_point: 0,
        writers: vec!["p1".into()],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_expiring_calls_does_not_cost_the_connection() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOptions {
        participants: 1,
        participant_args: ["--lock-wait-ms", "4000", "--resolve-after-ms", "600000"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    })
    .await?;
    // One connection for everything below.
    let channel = tonic::transport::Endpoint::from_shared(cluster.participants[0].url())?
        .connect()
        .await?;
    let mut p1 = pb::participant_client::ParticipantClient::new(channel.clone());
    let held = p1.prepare(prepare("9.1")).await?.into_inner();
    assert_eq!(held.vote, pb::Vote::Yes as i32);
    // The long call: a Prepare that waits (up to 4 s) for the lock 9.1 holds.
    let mut long = p1.clone();
    let long = tokio::spawn(async move { long.prepare(prepare("9.2")).await });
    // Bursts of calls that expire after 1 ms, on the same connection.
    let mut expired = 0;
    for _ in 0..4 {
        let mut burst = Vec::new();
        for i in 0..250 {
            let mut c = p1.clone();
            burst.push(tokio::spawn(async move {
                let mut req = tonic::Request::new(pb::ReadRequest {
                    keys: vec![format!("k{i}").into_bytes()],
                });
                req.set_timeout(Duration::from_millis(1));
                c.read(req).await
            }));
        }
        for call in burst {
            if call.await?.is_err() {
                expired += 1;
            }
        }
    }
    println!("{expired} of 1000 short calls expired");
    assert!(expired > 0, "no call expired: the burst tested nothing");
    // Release the lock: the long call gets its YES, on the connection it started on.
    p1.abort(pb::AbortRequest {
        txn_id: "9.1".into(),
        forced: false,
    })
    .await?;
    let vote = long.await?.map_err(|s| {
        anyhow::anyhow!(
            "the long call failed beside the burst: {:?}: {}",
            s.code(),
            s.message()
        )
    })?;
    assert_eq!(vote.into_inner().vote, pb::Vote::Yes as i32);
    cluster.shutdown()?;
    Ok(())
}

/// An abort reason names the cause in words a client can act on; the transport's own text
/// (connection errors, HTTP/2 details) stays in the coordinator's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_reasons_name_the_cause_in_words() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOptions {
        participants: 2,
        coordinator_args: vec!["--prepare-timeout-ms".into(), "300".into()],
        participant_args: vec!["--resolve-after-ms".into(), "600000".into()],
        ..Default::default()
    })
    .await?;
    let mut coordinator = cluster.coordinator_client().await?;
    let transfer = || pb::TransactRequest {
        protocol: pb::Protocol::TwoPhase as i32,
        branches: vec![
            pb::Branch {
                participant: "p1".into(),
                ops: vec![put(b"held")],
            },
            pb::Branch {
                participant: "p2".into(),
                ops: vec![put(b"other")],
            },
        ],
        ..Default::default()
    };
    let reason = |r: pb::TransactResponse| {
        assert_eq!(r.outcome, pb::Outcome::Aborted as i32);
        assert!(
            !r.reason.contains("transport") && !r.reason.contains("tcp"),
            "transport detail in the reason: {}",
            r.reason
        );
        r.reason
    };
    // A lock conflict names the txn holding the key.
    let mut p1 = cluster.participant_client("p1").await?;
    let held = p1.prepare(prepare("9.1")).await?.into_inner();
    assert_eq!(held.vote, pb::Vote::Yes as i32);
    let r = reason(coordinator.transact(transfer()).await?.into_inner());
    assert!(r.contains("p1 voted NO: lock conflict with txn 9.1"), "{r}");
    p1.abort(pb::AbortRequest {
        txn_id: "9.1".into(),
        forced: false,
    })
    .await?;
    // A participant that is down is unreachable.
    cluster.participant("p2").kill();
    let r = reason(coordinator.transact(transfer()).await?.into_inner());
    assert_eq!(r, "p2 unreachable");
    // One that does not answer in time timed out.
    cluster.participant("p2").start().await?;
    cluster.participant("p2").pause()?;
    let r = reason(coordinator.transact(transfer()).await?.into_inner());
    assert!(r.starts_with("p2 timed out"), "{r}");
    cluster.participant("p2").resume()?;
    cluster.shutdown()?;
    Ok(())
}
