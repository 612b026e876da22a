//! While the coordinator is down, in-doubt participants ask each other. A txn that some
//! participant never prepared can only abort, so it aborts (and the late Prepare votes NO);
//! a txn that every participant prepared must wait for the coordinator: 2PC's blocking window.

use std::time::Duration;

use txn_proto::pb::v1 as pb;
use txn_tests::cluster::{Cluster, ClusterOptions};

fn prepare(txn: &str) -> pb::PrepareRequest {
    pb::PrepareRequest {
        writers: vec![],
        txn_id: txn.into(),
        coordinator_epoch: 1,
        participants: vec!["p1".into(), "p2".into()],
        ops: vec![pb::Op {
            kind: Some(pb::op::Kind::Add(pb::AddOp {
                key: format!("key-{txn}").into_bytes(),
                delta: 1,
                min: None,
                max: None,
            })),
        }],
        read_only: false,
        commit_point: 0,
    }
}

async fn state(cluster: &Cluster, node: &str, txn: &str) -> anyhow::Result<i32> {
    Ok(cluster
        .participant_client(node)
        .await?
        .get_txn_state(pb::TxnStateRequest { txn_id: txn.into() })
        .await?
        .into_inner()
        .state)
}

async fn wait_state(
    cluster: &Cluster,
    node: &str,
    txn: &str,
    want: pb::TxnState,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if state(cluster, node, txn).await? == want as i32 {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{txn} at {node} never reached {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_abort_what_was_never_prepared_and_wait_on_the_rest() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOptions {
        participants: 2,
        participant_args: vec![
            "--resolve-after-ms".into(),
            "100".into(),
            "--resolve-interval-ms".into(),
            "20".into(),
            "--resolve-backoff-max-ms".into(),
            "100".into(),
        ],
        ..Default::default()
    })
    .await?;
    // The test plays a coordinator that dies mid-prepare.
    cluster.coordinator.kill();
    let mut p1 = cluster.participant_client("p1").await?;
    let mut p2 = cluster.participant_client("p2").await?;
    // coop.1 reached p1 only; coop.2 reached both.
    assert_eq!(
        p1.prepare(prepare("coop.1")).await?.into_inner().vote,
        pb::Vote::Yes as i32
    );
    assert_eq!(
        p1.prepare(prepare("coop.2")).await?.into_inner().vote,
        pb::Vote::Yes as i32
    );
    assert_eq!(
        p2.prepare(prepare("coop.2")).await?.into_inner().vote,
        pb::Vote::Yes as i32
    );

    wait_state(&cluster, "p1", "coop.1", pb::TxnState::Aborted).await?;
    assert_eq!(
        state(&cluster, "p2", "coop.1").await?,
        pb::TxnState::Aborted as i32,
        "p2 recorded an abort tombstone when asked"
    );
    let late = p2.prepare(prepare("coop.1")).await?.into_inner();
    assert_eq!(
        late.vote,
        pb::Vote::No as i32,
        "a late Prepare after the tombstone votes NO"
    );

    // coop.2 is prepared everywhere: nobody may decide without the coordinator. By now p1 has
    // already asked its peer several times (coop.1 was resolved the same way).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        state(&cluster, "p1", "coop.2").await?,
        pb::TxnState::Prepared as i32
    );
    assert_eq!(
        state(&cluster, "p2", "coop.2").await?,
        pb::TxnState::Prepared as i32
    );

    // The coordinator comes back. It never logged a decision for coop.2: presumed abort.
    cluster.coordinator.start().await?;
    wait_state(&cluster, "p1", "coop.2", pb::TxnState::Aborted).await?;
    wait_state(&cluster, "p2", "coop.2", pb::TxnState::Aborted).await?;
    cluster.shutdown()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_prepared_record_stops_the_participant() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOptions {
        participants: 1,
        ..Default::default()
    })
    .await?;
    cluster.participant("p1").terminate()?;
    {
        // Plant a prepared record whose checksum does not match.
        use txn_storage::SledStore;
        use txn_types::store::{Store, WriteBatch};
        let store = SledStore::open(&cluster.dir().join("p1"))?;
        let mut b = WriteBatch::default();
        b.put(b"p/bad.1".to_vec(), b"not a record".to_vec());
        store.apply(b)?;
        store.sync()?;
    }
    let err = cluster
        .participant("p1")
        .start()
        .await
        .expect_err("must refuse to start");
    let msg = format!("{err:#}");
    assert!(msg.contains("corrupt record at key \"p/bad.1\""), "{msg}");
    Ok(())
}
