//! Well-formed calls that are retried, cut short, or more than the services can take: a client
//! key runs its request once however often it is sent (also across a coordinator restart and
//! a caller that gave up), expired deadlines and cancelled calls leave no partial state, a
//! flood beyond the in-flight bound is refused at once, and a participant whose disk is full or
//! read-only refuses Prepares while it keeps serving reads and commits.

use std::time::Duration;

use tonic::Code;
use txn_proto::pb::v1 as pb;

use crate::support::{add, balance, branch, refused, start, transfer, txn};

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
            writers: vec![],
            txn_id: "full.1".into(),
            coordinator_epoch: 1,
            participants: vec!["p1".into()],
            ops: vec![add("a", 1, None, None)],
            read_only: false,
            commit_point: 0,
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
        writers: vec![],
        txn_id: id.into(),
        coordinator_epoch: 1,
        participants: vec!["p1".into()],
        ops: vec![add("dora", 4, None, None)],
        read_only: false,
        commit_point: 0,
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
