//! Bad input against running services: every refusal carries the right gRPC status and names
//! the field, and none of them writes anything. Also: idempotency keys, expired deadlines and
//! cancelled calls (no partial state), a flood beyond the in-flight bound, and a participant
//! whose disk is full or read-only.

use std::time::Duration;

use tonic::{Code, Status};
use txn_proto::pb::v1 as pb;
use txn_tests::cluster::{Cluster, ClusterOptions};

type Coord = pb::coordinator_client::CoordinatorClient<tonic::transport::Channel>;
type Part = pb::participant_client::ParticipantClient<tonic::transport::Channel>;

fn add(key: &str, delta: i64, min: Option<i64>, max: Option<i64>) -> pb::Op {
    pb::Op {
        kind: Some(pb::op::Kind::Add(pb::AddOp {
            key: key.as_bytes().to_vec(),
            delta,
            min,
            max,
        })),
    }
}

fn put(key: &[u8], value: Vec<u8>) -> pb::Op {
    pb::Op {
        kind: Some(pb::op::Kind::Put(pb::PutOp {
            key: key.to_vec(),
            value,
        })),
    }
}

fn branch(p: &str, ops: Vec<pb::Op>) -> pb::Branch {
    pb::Branch {
        participant: p.into(),
        ops,
    }
}

fn txn(branches: Vec<pb::Branch>) -> pb::TransactRequest {
    pb::TransactRequest {
        protocol: pb::Protocol::TwoPhase as i32,
        branches,
        prepare_timeout_ms: 0,
        client_txn_id: String::new(),
    }
}

fn transfer(amount: i64) -> pb::TransactRequest {
    txn(vec![
        branch("p1", vec![add("alice", -amount, None, None)]),
        branch("p2", vec![add("bob", amount, None, None)]),
    ])
}

/// Asserts a refusal with `code` whose message names `field`.
fn refused<T: std::fmt::Debug>(what: &str, r: Result<T, Status>, code: Code, field: &str) {
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
async fn settled_durable_writes(cluster: &Cluster) -> Vec<u64> {
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
async fn balance(p: &mut Part, key: &str) -> i64 {
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

async fn start(coordinator_args: &[&str], participant_args: &[&str]) -> (Cluster, Coord) {
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
            txn_id: long_id.clone(),
            coordinator_epoch: 1,
            participants: vec!["p1".into()],
            ops: vec![add("a", 1, None, None)],
        })
        .await,
        ia,
        "txn_id",
    );
    refused(
        "Execute with an empty saga id",
        p1.execute(pb::ExecuteRequest {
            saga_id: String::new(),
            step: 0,
            ops: vec![add("a", 1, None, None)],
        })
        .await,
        ia,
        "saga_id",
    );
    refused(
        "Execute with an over-long saga id",
        p1.execute(pb::ExecuteRequest {
            saga_id: long_id.clone(),
            step: 0,
            ops: vec![add("a", 1, None, None)],
        })
        .await,
        ia,
        "saga_id",
    );
    refused(
        "Compensate with an empty saga id",
        p1.compensate(pb::CompensateRequest {
            saga_id: String::new(),
            step: 0,
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
                state: "bogus".into(),
                limit: 0,
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
            txn_id: "late.1".into(),
            coordinator_epoch: 1,
            participants: vec!["p1".into(), "p2".into()],
            ops: vec![add("alice", 1, None, None)],
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
async fn a_client_key_runs_its_request_once() {
    let (cluster, mut coord) = start(&[], &[]).await;
    let mut p1 = cluster.participant_client("p1").await.unwrap();
    for protocol in [pb::Protocol::TwoPhase, pb::Protocol::Saga] {
        let key = format!("order-{}", protocol.as_str_name());
        let mut req = transfer(10);
        req.protocol = protocol as i32;
        req.client_txn_id = key.clone();
        let before = balance(&mut p1, "alice").await;
        // Sent concurrently and then again: one runs, the others get its answer.
        let (mut c1, mut c2) = (coord.clone(), coord.clone());
        let (a, b) = tokio::join!(c1.transact(req.clone()), c2.transact(req.clone()));
        let (a, b) = (a.unwrap().into_inner(), b.unwrap().into_inner());
        let c = coord.transact(req.clone()).await.unwrap().into_inner();
        assert_eq!(a.outcome, pb::Outcome::Committed as i32, "{}", a.reason);
        assert_eq!(a, b, "{protocol:?}: concurrent retry");
        assert_eq!(a, c, "{protocol:?}: later retry");
        assert_eq!(
            balance(&mut p1, "alice").await,
            before - 10,
            "{protocol:?}: applied once"
        );
        // The same key with another payload is refused.
        let mut other = transfer(11);
        other.protocol = protocol as i32;
        other.client_txn_id = key.clone();
        refused(
            "reused client_txn_id, different payload",
            coord.transact(other).await,
            Code::AlreadyExists,
            "client_txn_id",
        );
    }
    // A caller that gives up (deadline) does not strand its key: the retry gets the answer,
    // and the transfer is applied once.
    let before = balance(&mut p1, "alice").await;
    let mut req = transfer(2);
    req.client_txn_id = "impatient-1".into();
    let mut first = tonic::Request::new(req.clone());
    first.set_timeout(Duration::from_micros(300));
    let _ = coord.transact(first).await;
    let r = coord.transact(req.clone()).await.unwrap().into_inner();
    assert_eq!(r.outcome, pb::Outcome::Committed as i32, "{}", r.reason);
    assert_eq!(balance(&mut p1, "alice").await, before - 2);

    // An aborted request's answer is replayed too.
    let mut req = txn(vec![branch("p1", vec![add("carol", -1, Some(0), None)])]);
    req.client_txn_id = "overdraft-1".into();
    let a = coord.transact(req.clone()).await.unwrap().into_inner();
    let b = coord.transact(req).await.unwrap().into_inner();
    assert_eq!(a.outcome, pb::Outcome::Aborted as i32);
    assert_eq!(a, b);

    // Survives a coordinator restart: the key's answer is durable with the decision.
    let mut req = transfer(3);
    req.client_txn_id = "after-restart".into();
    let first = coord.transact(req.clone()).await.unwrap().into_inner();
    let mut cluster = cluster;
    cluster.coordinator.kill();
    cluster.coordinator.start().await.unwrap();
    let mut coord = cluster.coordinator_client().await.unwrap();
    let before = balance(&mut p1, "alice").await;
    let again = coord.transact(req).await.unwrap().into_inner();
    assert_eq!(first, again);
    assert_eq!(balance(&mut p1, "alice").await, before, "not applied twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_cancels_and_floods_leave_no_partial_state() {
    let (mut cluster, mut coord) = start(&["--max-in-flight-txns", "4"], &[]).await;
    let mut p1 = cluster.participant_client("p1").await.unwrap();
    let mut p2 = cluster.participant_client("p2").await.unwrap();

    // Expired deadlines: the client gives up, the txn still ends atomically.
    let mut deadline_exceeded = 0;
    for _ in 0..20 {
        let mut req = tonic::Request::new(transfer(1));
        req.set_timeout(Duration::from_micros(300));
        match coord.transact(req).await {
            Err(s) if s.code() == Code::DeadlineExceeded || s.code() == Code::Cancelled => {
                deadline_exceeded += 1
            }
            // The txns of earlier expired calls still run to their end and hold the slots.
            Err(s) if s.code() == Code::ResourceExhausted => {}
            Err(s) => panic!("unexpected {s:?}"),
            Ok(_) => {}
        }
    }
    assert!(deadline_exceeded > 0, "no call hit its deadline");
    // Cancelled calls: the client drops the call mid-flight.
    for _ in 0..20 {
        let mut c = coord.clone();
        let call = tokio::spawn(async move { c.transact(transfer(1)).await });
        tokio::time::sleep(Duration::from_micros(200)).await;
        call.abort();
    }

    tokio::time::sleep(Duration::from_millis(500)).await;
    // A flood beyond the in-flight bound (4) while p2 is stopped: the extra calls are
    // refused at once with RESOURCE_EXHAUSTED, and nothing crashes.
    cluster.participant("p2").pause().unwrap();
    let mut calls = Vec::new();
    for _ in 0..40 {
        let mut c = coord.clone();
        let mut req = transfer(1);
        req.prepare_timeout_ms = 500;
        calls.push(tokio::spawn(async move { c.transact(req).await }));
    }
    let mut exhausted = 0;
    let mut answered = 0;
    for call in calls {
        match call.await.unwrap() {
            Err(s) if s.code() == Code::ResourceExhausted => {
                assert!(s.message().contains("in flight"), "{}", s.message());
                exhausted += 1;
            }
            Err(s) => panic!("unexpected {s:?}"),
            Ok(r) => {
                assert_eq!(r.into_inner().outcome, pb::Outcome::Aborted as i32);
                answered += 1;
            }
        }
    }
    cluster.participant("p2").resume().unwrap();
    println!("flood of 40 with a bound of 4: {exhausted} RESOURCE_EXHAUSTED, {answered} aborted");
    assert!(exhausted >= 30, "only {exhausted} refused");
    assert!(cluster.coordinator.is_running());

    // Once quiet, nothing is left in doubt and the money adds up.
    let mut quiet = false;
    for _ in 0..100 {
        let mut in_doubt = 0;
        for node in ["coordinator", "p1", "p2"] {
            in_doubt += cluster
                .stats_client(node)
                .await
                .unwrap()
                .get_stats(pb::StatsRequest {})
                .await
                .unwrap()
                .into_inner()
                .in_doubt;
        }
        if in_doubt == 0 {
            quiet = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(quiet, "txns left in doubt");
    let total = balance(&mut p1, "alice").await + balance(&mut p2, "bob").await;
    assert_eq!(total, 0, "a transfer was half applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_without_disk_refuses_prepares_and_keeps_serving() {
    // A reserve larger than any disk: p1 starts out "full".
    let (mut cluster, mut coord) = start(&[], &["--min-free-mb", "1000000000"]).await;
    let r = coord.transact(transfer(1)).await.unwrap().into_inner();
    assert_eq!(r.outcome, pb::Outcome::Aborted as i32);
    assert!(r.reason.contains("disk"), "{}", r.reason);
    let mut p1 = cluster.participant_client("p1").await.unwrap();
    refused(
        "Prepare on a full disk",
        p1.prepare(pb::PrepareRequest {
            txn_id: "full.1".into(),
            coordinator_epoch: 1,
            participants: vec!["p1".into()],
            ops: vec![add("a", 1, None, None)],
        })
        .await,
        Code::ResourceExhausted,
        "--min-free-mb",
    );
    assert_eq!(balance(&mut p1, "alice").await, 0, "reads still served");
    cluster.shutdown().unwrap();

    // Read-only: a txn prepared before the disk went read-only still commits; new Prepares
    // are refused; reads and txn state keep working; all resumes once it is writable.
    let (mut cluster, _coord) = start(&[], &[]).await;
    let mut p1 = cluster.participant_client("p1").await.unwrap();
    let prepare = |id: &str| pb::PrepareRequest {
        txn_id: id.into(),
        coordinator_epoch: 1,
        participants: vec!["p1".into()],
        ops: vec![add("dora", 4, None, None)],
    };
    let v = p1.prepare(prepare("ro.1")).await.unwrap().into_inner();
    assert_eq!(v.vote, pb::Vote::Yes as i32, "{}", v.reason);
    cluster
        .set_failpoint("p1", "participant::disk_read_only", "return")
        .await
        .unwrap();
    let mut refusal = None;
    for i in 0..50 {
        let id = format!("ro.2.{i}");
        match p1.prepare(prepare(&id)).await {
            Err(s) => {
                refusal = Some(s);
                break;
            }
            Ok(_) => {
                p1.abort(pb::AbortRequest {
                    txn_id: id,
                    forced: false,
                })
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let s = refusal.expect("Prepare still accepted on a read-only disk");
    assert_eq!(s.code(), Code::Unavailable, "{}", s.message());
    assert!(s.message().contains("read-only"), "{}", s.message());
    p1.commit(pb::CommitRequest {
        txn_id: "ro.1".into(),
    })
    .await
    .unwrap();
    assert_eq!(balance(&mut p1, "dora").await, 4);
    let st = p1
        .get_txn_state(pb::TxnStateRequest {
            txn_id: "ro.1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(st.state, pb::TxnState::Committed as i32);
    cluster
        .set_failpoint("p1", "participant::disk_read_only", "off")
        .await
        .unwrap();
    let mut accepted = false;
    for _ in 0..50 {
        if p1.prepare(prepare("ro.3")).await.is_ok() {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        accepted,
        "Prepares not accepted again once the disk is writable"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_batch_commits_each_prepared_txn_once_and_reports_the_rest() {
    let (cluster, _coord) = start(&[], &[]).await;
    let mut p1 = cluster.participant_client("p1").await.unwrap();
    for (id, key) in [("b.1", "x"), ("b.2", "y")] {
        let v = p1
            .prepare(pb::PrepareRequest {
                txn_id: id.into(),
                coordinator_epoch: 1,
                participants: vec!["p1".into()],
                ops: vec![add(key, 5, None, None)],
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
