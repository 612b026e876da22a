//! Malformed calls to every service: each is refused with the right gRPC status, its message
//! names the offending field, and none of them writes anything (the nodes' durable-write counts
//! are the same before and after). Also what looks wrong but is well formed: a Resolve or Abort
//! of an unknown txn (presumed abort), an overflowing Add, and a CommitBatch that names txns
//! twice or not at all (each prepared one commits once, the rest are reported).

use tonic::Code;
use txn_proto::pb::v1 as pb;

use crate::support::{
    add, balance, branch, put, refused, settled_durable_writes, start, transfer, txn,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_is_refused_by_name_and_writes_nothing() {
    let (cluster, mut coord) = start(&[], &[]).await;
    let mut p1 = cluster.participant_client("p1").await.unwrap();
    // One good txn first, so the services are warm and have something to lose.
    let r = coord.transact(transfer(5)).await.unwrap().into_inner();
    assert_eq!(r.outcome, pb::Outcome::Committed as i32, "{}", r.reason);
    let before = settled_durable_writes(&cluster).await;

    let ia = Code::InvalidArgument;
    let long_id = "x".repeat(txn_types::types::MAX_TXN_ID_LEN + 1);
    let long_key = vec![b'k'; txn_types::types::MAX_KEY_LEN + 1];
    let big_value = vec![b'v'; txn_types::types::MAX_VALUE_LEN + 1];

    // Transact.
    refused(
        "empty branch list",
        coord.transact(txn(vec![])).await,
        ia,
        "branches",
    );
    refused(
        "same participant twice",
        coord
            .transact(txn(vec![
                branch("p1", vec![add("a", 1, None, None)]),
                branch("p1", vec![add("b", 1, None, None)]),
            ]))
            .await,
        ia,
        "branches[1].participant",
    );
    refused(
        "unknown participant",
        coord
            .transact(txn(vec![branch("p9", vec![add("a", 1, None, None)])]))
            .await,
        ia,
        "branches[0].participant",
    );
    refused(
        "empty participant name",
        coord
            .transact(txn(vec![branch("", vec![add("a", 1, None, None)])]))
            .await,
        ia,
        "branches[0].participant",
    );
    refused(
        "branch without ops",
        coord.transact(txn(vec![branch("p1", vec![])])).await,
        ia,
        "branches[0].ops",
    );
    refused(
        "op with no kind set",
        coord
            .transact(txn(vec![branch("p1", vec![pb::Op { kind: None }])]))
            .await,
        ia,
        "branches[0].ops[0]",
    );
    refused(
        "empty key",
        coord
            .transact(txn(vec![branch("p1", vec![add("", 1, None, None)])]))
            .await,
        ia,
        "key",
    );
    refused(
        "over-long key",
        coord
            .transact(txn(vec![branch("p1", vec![put(&long_key, b"1".to_vec())])]))
            .await,
        ia,
        "key",
    );
    refused(
        "value over the size limit",
        coord
            .transact(txn(vec![branch("p1", vec![put(b"k", big_value.clone())])]))
            .await,
        ia,
        "value",
    );
    refused(
        "add bounds with min > max",
        coord
            .transact(txn(vec![branch("p1", vec![add("a", 1, Some(5), Some(1))])]))
            .await,
        ia,
        "min",
    );
    let mut unspecified = transfer(1);
    unspecified.protocol = pb::Protocol::Unspecified as i32;
    refused(
        "protocol UNSPECIFIED",
        coord.transact(unspecified).await,
        ia,
        "protocol",
    );
    let mut unknown = transfer(1);
    unknown.protocol = 99;
    refused(
        "protocol unknown enum value",
        coord.transact(unknown).await,
        ia,
        "protocol",
    );
    let mut long_timeout = transfer(1);
    long_timeout.prepare_timeout_ms = u32::MAX;
    refused(
        "prepare timeout over the limit",
        coord.transact(long_timeout).await,
        ia,
        "prepare_timeout_ms",
    );
    let mut bad_key = transfer(1);
    bad_key.client_txn_id = "has space".into();
    refused(
        "client_txn_id with a bad character",
        coord.transact(bad_key).await,
        ia,
        "client_txn_id",
    );
    let mut long_key_id = transfer(1);
    long_key_id.client_txn_id = long_id.clone();
    refused(
        "over-long client_txn_id",
        coord.transact(long_key_id).await,
        ia,
        "client_txn_id",
    );
    // Over the gRPC message size limit: refused before it is decoded.
    let huge = txn(vec![branch(
        "p1",
        (0..300)
            .map(|i| put(format!("k{i}").as_bytes(), big_value[..16_000].to_vec()))
            .collect(),
    )]);
    refused(
        "message over the gRPC size limit",
        coord.transact(huge).await,
        Code::ResourceExhausted,
        "request: over the message size limit",
    );

    // Resolve.
    refused(
        "Resolve with an empty txn id",
        coord
            .resolve(pb::ResolveRequest {
                txn_id: String::new(),
                commit_point: 0,
                from_coordinator: false,
            })
            .await,
        ia,
        "txn_id",
    );
    refused(
        "Resolve with an over-long txn id",
        coord
            .resolve(pb::ResolveRequest {
                txn_id: long_id.clone(),
                commit_point: 0,
                from_coordinator: false,
            })
            .await,
        ia,
        "txn_id",
    );

    // Participant.
    refused(
        "Commit with an empty txn id",
        p1.commit(pb::CommitRequest {
            txn_id: String::new(),
        })
        .await,
        ia,
        "txn_id",
    );
    refused(
        "Commit of an unknown txn",
        p1.commit(pb::CommitRequest {
            txn_id: "77.1".into(),
        })
        .await,
        Code::NotFound,
        "txn_id 77.1",
    );
    refused(
        "Prepare with an over-long txn id",
        p1.prepare(pb::PrepareRequest {
            writers: vec![],
            txn_id: long_id.clone(),
            coordinator_epoch: 1,
            participants: vec!["p1".into()],
            ops: vec![add("a", 1, None, None)],
            read_only: false,
            commit_point: 0,
        })
        .await,
        ia,
        "txn_id",
    );
    refused(
        "Execute with an empty saga id",
        p1.execute(pb::ExecuteRequest {
            participants: vec![],
            saga_id: String::new(),
            step: 0,
            ops: vec![add("a", 1, None, None)],
            deadline_unix_ms: 0,
        })
        .await,
        ia,
        "saga_id",
    );
    refused(
        "Execute with an over-long saga id",
        p1.execute(pb::ExecuteRequest {
            participants: vec![],
            saga_id: long_id.clone(),
            step: 0,
            ops: vec![add("a", 1, None, None)],
            deadline_unix_ms: 0,
        })
        .await,
        ia,
        "saga_id",
    );
    refused(
        "Compensate with an empty saga id",
        p1.compensate(pb::CompensateRequest {
            participants: vec![],
            saga_id: String::new(),
            step: 0,
            deadline_unix_ms: 0,
        })
        .await,
        ia,
        "saga_id",
    );
    refused(
        "Read with an empty key",
        p1.read(pb::ReadRequest {
            keys: vec![Vec::new()],
        })
        .await,
        ia,
        "keys[0]",
    );
    refused(
        "Read with an over-long key",
        p1.read(pb::ReadRequest {
            keys: vec![long_key.clone()],
        })
        .await,
        ia,
        "keys[0]",
    );

    // Operator API.
    let mut admin =
        pb::admin_client::AdminClient::new(cluster.channel(&cluster.coordinator.url()).unwrap());
    for (what, decision) in [("UNSPECIFIED", 0), ("unknown enum value", 42)] {
        refused(
            &format!("ForceTxn with decision {what}"),
            admin
                .force_txn(pb::ForceTxnRequest {
                    txn_id: "1.1".into(),
                    decision,
                    reason: "test".into(),
                    heuristic: false,
                })
                .await,
            ia,
            "decision",
        );
    }
    refused(
        "ForceTxn without a reason",
        admin
            .force_txn(pb::ForceTxnRequest {
                txn_id: "1.1".into(),
                decision: pb::Decision::Abort as i32,
                reason: " ".into(),
                heuristic: false,
            })
            .await,
        ia,
        "reason",
    );
    refused(
        "ListTxns with an unknown state",
        admin
            .list_txns(pb::ListTxnsRequest {
                state: 99,
                ..Default::default()
            })
            .await,
        ia,
        "state",
    );
    refused(
        "ShowSaga of an unknown saga",
        admin
            .show_saga(pb::TxnIdRequest {
                txn_id: "nope.1".into(),
            })
            .await,
        Code::NotFound,
        "nope.1",
    );

    let after = settled_durable_writes(&cluster).await;
    assert_eq!(
        before, after,
        "bad input wrote something (durable writes coordinator, p1, p2)"
    );

    // Resolve of an unknown (never begun) txn: presumed abort.
    let r = coord
        .resolve(pb::ResolveRequest {
            txn_id: "1.999999".into(),
            commit_point: 0,
            from_coordinator: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.decision, pb::Decision::Abort as i32);
    // Abort of an unknown txn is accepted (presumed abort), and a Prepare that arrives after
    // it is refused with a NO vote: the abort is remembered.
    p1.abort(pb::AbortRequest {
        txn_id: "late.1".into(),
        forced: false,
    })
    .await
    .unwrap();
    let v = p1
        .prepare(pb::PrepareRequest {
            writers: vec![],
            txn_id: "late.1".into(),
            coordinator_epoch: 1,
            participants: vec!["p1".into(), "p2".into()],
            ops: vec![add("alice", 1, None, None)],
            read_only: false,
            commit_point: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.vote, pb::Vote::No as i32, "Prepare after Abort");
    println!("Prepare after Abort: vote NO: {}", v.reason);

    // Add overflow: a well-formed request whose effect cannot be applied aborts cleanly.
    let mut p2 = cluster.participant_client("p2").await.unwrap();
    let bob = balance(&mut p2, "bob").await;
    let r = coord
        .transact(txn(vec![branch(
            "p2",
            vec![add("bob", i64::MAX, None, None)],
        )]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.outcome, pb::Outcome::Aborted as i32);
    assert!(r.reason.contains("overflow"), "{}", r.reason);
    println!("Add overflow: ABORTED: {}", r.reason);
    assert_eq!(balance(&mut p2, "bob").await, bob);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_batch_commits_each_prepared_txn_once_and_reports_the_rest() {
    let (cluster, _coord) = start(&[], &[]).await;
    let mut p1 = cluster.participant_client("p1").await.unwrap();
    for (id, key) in [("b.1", "x"), ("b.2", "y")] {
        let v = p1
            .prepare(pb::PrepareRequest {
                writers: vec![],
                txn_id: id.into(),
                coordinator_epoch: 1,
                participants: vec!["p1".into()],
                ops: vec![add(key, 5, None, None)],
                read_only: false,
                commit_point: 0,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(v.vote, pb::Vote::Yes as i32, "{}", v.reason);
    }
    let ids = ["b.1", "b.2", "b.1", "b.404"];
    let r = p1
        .commit_batch(pb::CommitBatchRequest {
            txn_ids: ids.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.failed.len(), 1, "{r:?}");
    assert_eq!(r.failed[0].txn_id, "b.404");
    assert_eq!(r.failed[0].code, Code::NotFound as i32);
    assert_eq!(balance(&mut p1, "x").await, 5);
    assert_eq!(balance(&mut p1, "y").await, 5);
    // Again: already committed, nothing applied twice.
    let r = p1
        .commit_batch(pb::CommitBatchRequest {
            txn_ids: vec!["b.1".into(), "b.2".into()],
            // These test clusters keep every outcome (--outcome-retention-secs 0), so the
            // forget is accepted and ignored.
            forget: vec!["b.1".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.failed.is_empty(), "{r:?}");
    assert_eq!(balance(&mut p1, "x").await, 5);
    refused(
        "CommitBatch over the batch limit",
        p1.commit_batch(pb::CommitBatchRequest {
            txn_ids: vec!["b.1".into(); txn_types::types::MAX_COMMIT_BATCH + 1],
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "txn_ids",
    );
    refused(
        "CommitBatch with an empty txn id",
        p1.commit_batch(pb::CommitBatchRequest {
            txn_ids: vec![String::new()],
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "txn_ids[0]",
    );
    refused(
        "CommitBatch with an empty id to forget",
        p1.commit_batch(pb::CommitBatchRequest {
            forget: vec!["b.1".into(), String::new()],
            ..Default::default()
        })
        .await,
        Code::InvalidArgument,
        "forget[1]",
    );
    let state = p1
        .get_txn_state(pb::TxnStateRequest {
            txn_id: "b.1".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .state;
    assert_eq!(
        state,
        pb::TxnState::Committed as i32,
        "kept: outcomes never expire here"
    );
}
