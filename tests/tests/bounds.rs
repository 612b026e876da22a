//! What keeps a participant bounded, against real processes: the refusal each bound gives,
//! lists that come a page at a time (also when everything in doubt would not fit in one
//! message), and reads that return only what survives a crash.

use std::collections::BTreeSet;
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use tonic::Code;
use txn_proto::pb::v1 as pb;
use txn_tests::cluster::{Cluster, ClusterOptions, bin_dir, metric, scrape_metrics};

fn put(key: &[u8], value: &[u8]) -> pb::Op {
    pb::Op {
        kind: Some(pb::op::Kind::Put(pb::PutOp {
            key: key.to_vec(),
            value: value.to_vec(),
        })),
    }
}

fn read(key: Vec<u8>) -> pb::Op {
    pb::Op {
        kind: Some(pb::op::Kind::Read(pb::ReadOp { key })),
    }
}

fn prepare(txn: &str, ops: Vec<pb::Op>) -> pb::PrepareRequest {
    pb::PrepareRequest {
        txn_id: txn.into(),
        coordinator_epoch: 9,
        participants: vec!["p1".into(), "p2".into()],
        ops,
        read_only: false,
        commit_point: 0,
        writers: vec!["p1".into()],
    }
}

fn txnctl(cluster: &Cluster, args: &[&str]) -> Output {
    Command::new(bin_dir().unwrap().join("txnctl"))
        .arg("--coordinator")
        .arg(cluster.coordinator.url())
        .args(args)
        .output()
        .expect("run txnctl")
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bound_refuses_with_resource_exhausted_and_the_txn_aborts() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOptions {
        participants: 2,
        metrics: true,
        participant_args: [
            "--max-prepared-txns",
            "2",
            "--max-locked-keys",
            "4",
            "--resolve-after-ms",
            "600000",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    })
    .await?;
    let mut p1 = cluster.participant_client("p1").await?;
    let mut p2 = cluster.participant_client("p2").await?;
    for (txn, key) in [("9.1", b"a"), ("9.2", b"b")] {
        let v = p1.prepare(prepare(txn, vec![put(key, b"1")])).await?;
        assert_eq!(v.into_inner().vote, pb::Vote::Yes as i32);
    }
    // --max-prepared-txns: a third txn is refused, naming the bound.
    let refused = p1
        .prepare(prepare("9.3", vec![put(b"c", b"1")]))
        .await
        .expect_err("over --max-prepared-txns");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("p1 holds 2 prepared txns")
            && refused.message().contains("--max-prepared-txns"),
        "{}",
        refused.message()
    );
    // A read of a key a prepared txn writes waits, then aborts: exit 3, and --json says so.
    let out = txnctl(&cluster, &["read", "p1/a", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(json_of(&out)["outcome"], "aborted");
    // A duplicate of a prepared txn only votes again.
    let again = p1.prepare(prepare("9.1", vec![put(b"a", b"1")])).await?;
    assert_eq!(again.into_inner().vote, pb::Vote::Yes as i32);
    // Through the coordinator, the refusal is a NO: the txn aborts, saying why.
    let mut coordinator = cluster.coordinator_client().await?;
    let resp = coordinator
        .transact(pb::TransactRequest {
            protocol: pb::Protocol::TwoPhase as i32,
            branches: vec![
                pb::Branch {
                    participant: "p1".into(),
                    ops: vec![put(b"x", b"1")],
                },
                pb::Branch {
                    participant: "p2".into(),
                    ops: vec![put(b"y", b"1")],
                },
            ],
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(resp.outcome, pb::Outcome::Aborted as i32);
    assert!(
        resp.reason.starts_with("p1 is overloaded") && resp.reason.contains("--max-prepared-txns"),
        "the cause in words: {}",
        resp.reason
    );
    let text = scrape_metrics(cluster.participant("p1").metrics_addr.unwrap()).await?;
    let counted = metric(&text, "txn_prepares_refused_total{reason=\"max_prepared\"}");
    assert!(counted >= Some(2.0), "{counted:?}");

    // --max-locked-keys: p2 holds 3 keys; 2 more would make 5.
    let keys = |ks: &[&[u8]]| ks.iter().map(|k| put(k, b"1")).collect::<Vec<_>>();
    let v = p2
        .prepare(prepare("9.4", keys(&[b"k1", b"k2", b"k3"])))
        .await?;
    assert_eq!(v.into_inner().vote, pb::Vote::Yes as i32);
    let refused = p2
        .prepare(prepare("9.5", keys(&[b"k4", b"k5"])))
        .await
        .expect_err("over --max-locked-keys");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused.message().contains("--max-locked-keys") && refused.message().contains("5 keys"),
        "{}",
        refused.message()
    );
    // One more key fits exactly.
    let v = p2.prepare(prepare("9.6", keys(&[b"k4"]))).await?;
    assert_eq!(v.into_inner().vote, pb::Vote::Yes as i32);

    // Room again once a prepared txn is decided.
    p1.abort(pb::AbortRequest {
        txn_id: "9.1".into(),
        forced: false,
    })
    .await?;
    let v = p1.prepare(prepare("9.3", vec![put(b"c", b"1")])).await?;
    assert_eq!(v.into_inner().vote, pb::Vote::Yes as i32);
    cluster.shutdown()?;
    Ok(())
}

/// Twenty prepared txns, each locking 256 keys of 1000 bytes: about 5 MB of in-doubt detail,
/// more than one 4 MiB message. Every list still shows every one, a page at a time; and a
/// participant that does not answer is named, not silently left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_doubt_txns_beyond_one_message_come_page_by_page() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOptions {
        participants: 2,
        participant_args: vec!["--resolve-after-ms".into(), "600000".into()],
        ..Default::default()
    })
    .await?;
    let mut p1 = cluster.participant_client("p1").await?;
    let mut ids = BTreeSet::new();
    for i in 0..20 {
        let ops = (0..256)
            .map(|j| read(format!("{i:02}-{j:03}-{}", "k".repeat(990)).into_bytes()))
            .collect();
        let txn = format!("9.{i}");
        let v = p1.prepare(prepare(&txn, ops)).await?.into_inner();
        assert_eq!(v.vote, pb::Vote::Yes as i32, "{}", v.reason);
        ids.insert(txn);
    }
    // The participant's own pages end before the message limit.
    let mut admin = pb::participant_admin_client::ParticipantAdminClient::new(
        cluster.channel(&cluster.participants[0].url())?,
    );
    let first = admin
        .in_doubt(pb::InDoubtRequest::default())
        .await?
        .into_inner();
    assert!(
        !first.txns.is_empty() && first.txns.len() < 20 && !first.next_page_token.is_empty(),
        "{} txns in the first page",
        first.txns.len()
    );
    let bad = admin
        .in_doubt(pb::InDoubtRequest {
            page_token: "not a txn id".into(),
            ..Default::default()
        })
        .await
        .expect_err("a bad token");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("page_token"), "{}", bad.message());

    // The coordinator's ListTxns, 7 at a time: each txn once.
    let mut coordinator =
        pb::admin_client::AdminClient::new(cluster.channel(&cluster.coordinator.url())?);
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = coordinator
            .list_txns(pb::ListTxnsRequest {
                state: pb::TxnPhase::InDoubt as i32,
                page_size: 7,
                page_token: token,
                ..Default::default()
            })
            .await?
            .into_inner();
        assert!(page.txns.len() <= 7);
        assert!(page.unanswered.is_empty(), "{:?}", page.unanswered);
        seen.extend(page.txns.into_iter().map(|t| t.txn_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen.len(), 20, "{seen:?}");
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), ids);

    // txnctl follows the pages.
    let out = txnctl(&cluster, &["txn", "list", "--state", "in-doubt", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(json_of(&out).as_array().unwrap().len(), 20);
    let out = txnctl(&cluster, &["participant", "in-doubt", "p1", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(json_of(&out).as_array().unwrap().len(), 20);

    // A participant that cannot be asked is named, and the list exits 1 after printing.
    cluster.participant("p2").kill();
    let out = txnctl(&cluster, &["txn", "list", "--state", "in-doubt", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(json_of(&out).as_array().unwrap().len(), 20, "p1's part");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("p2 unreachable"), "{err}");
    cluster.participant("p2").start().await?;
    for txn in &ids {
        p1.abort(pb::AbortRequest {
            txn_id: txn.clone(),
            forced: false,
        })
        .await?;
    }
    cluster.shutdown()?;
    Ok(())
}

/// Sagas (the unfinished log, then the ended one) and a participant's outcomes come a page at a
/// time, and txnctl follows the pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_and_outcomes_come_page_by_page() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOptions {
        participants: 2,
        ..Default::default()
    })
    .await?;
    let mut coordinator = cluster.coordinator_client().await?;
    let transfer = |protocol: pb::Protocol| pb::TransactRequest {
        protocol: protocol as i32,
        branches: vec![
            pb::Branch {
                participant: "p1".into(),
                ops: vec![put(b"a", b"1")],
            },
            pb::Branch {
                participant: "p2".into(),
                ops: vec![put(b"b", b"1")],
            },
        ],
        ..Default::default()
    };
    for protocol in [pb::Protocol::Saga, pb::Protocol::TwoPhase] {
        for _ in 0..15 {
            let r = coordinator.transact(transfer(protocol)).await?.into_inner();
            assert_eq!(r.outcome, pb::Outcome::Committed as i32, "{}", r.reason);
        }
    }
    let mut admin =
        pb::admin_client::AdminClient::new(cluster.channel(&cluster.coordinator.url())?);
    let all = |state: pb::SagaPhase, size: u32| {
        let mut admin = admin.clone();
        async move {
            let mut seen = Vec::new();
            let mut token = String::new();
            loop {
                let page = admin
                    .list_sagas(pb::ListSagasRequest {
                        state: state as i32,
                        page_size: size,
                        page_token: token,
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                assert!(page.sagas.len() <= size as usize);
                seen.extend(page.sagas.into_iter().map(|s| s.saga_id));
                if page.next_page_token.is_empty() {
                    return anyhow::Ok(seen);
                }
                token = page.next_page_token;
            }
        }
    };
    let sagas = all(pb::SagaPhase::Unspecified, 4).await?;
    assert_eq!(sagas.len(), 15);
    assert_eq!(sagas.iter().collect::<BTreeSet<_>>().len(), 15);
    assert_eq!(all(pb::SagaPhase::Completed, 1000).await?.len(), 15);
    assert!(all(pb::SagaPhase::Parked, 1000).await?.is_empty());
    let bad = admin
        .list_sagas(pb::ListSagasRequest {
            page_token: "k/1.1".into(),
            ..Default::default()
        })
        .await
        .expect_err("not a ListSagas token");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("page_token"), "{}", bad.message());

    let out = txnctl(&cluster, &["saga", "list", "--limit", "6", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(json_of(&out).as_array().unwrap().len(), 6);
    let out = txnctl(&cluster, &["saga", "list", "--json"]);
    let listed = json_of(&out);
    assert_eq!(listed.as_array().unwrap().len(), 15);
    let out = txnctl(
        &cluster,
        &[
            "saga",
            "show",
            listed[0]["saga_id"].as_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(json_of(&out)["outcome"], "committed");

    // Outcomes at p1: the 2PC txns, 4 at a time.
    let mut p1 = cluster.participant_client("p1").await?;
    let mut outcomes = BTreeSet::new();
    let mut start_after = String::new();
    loop {
        let page = p1
            .list_outcomes(pb::ListOutcomesRequest {
                start_after,
                limit: 4,
            })
            .await?
            .into_inner();
        assert!(page.outcomes.len() <= 4);
        outcomes.extend(page.outcomes.into_iter().map(|o| o.txn_id));
        if page.next.is_empty() {
            break;
        }
        start_after = page.next;
    }
    assert_eq!(outcomes.len(), 15);
    cluster.shutdown()?;
    Ok(())
}

/// A Read returns a value only once its write is durable: a one-phase commit stopped right
/// after it applied (before its sync) is read, then the participant is killed -9; the value
/// that was read is still there after the restart. (Without the wait, nothing would have
/// synced the write, and the restart would lose a value someone had read.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_that_was_read_survives_kill_9() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOptions {
        participants: 1,
        // The paused commit holds one runtime thread; the Read needs another.
        env: vec![("TXN_WORKER_THREADS".into(), "4".into())],
        ..Default::default()
    })
    .await?;
    cluster
        .set_failpoint("p1", "participant::before_one_phase_durable", "pause")
        .await?;
    let mut coordinator = cluster.coordinator_client().await?;
    let commit = tokio::spawn(async move {
        coordinator
            .transact(pb::TransactRequest {
                protocol: pb::Protocol::TwoPhase as i32,
                branches: vec![pb::Branch {
                    participant: "p1".into(),
                    ops: vec![put(b"k", b"read-me")],
                }],
                ..Default::default()
            })
            .await
    });
    let mut p1 = cluster.participant_client("p1").await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let values = p1
            .read(pb::ReadRequest {
                keys: vec![b"k".to_vec()],
            })
            .await?
            .into_inner()
            .values;
        if values[0].value.as_deref() == Some(&b"read-me"[..]) {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the one-phase commit never became visible"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.participant("p1").kill();
    cluster.participant("p1").start().await?;
    let mut p1 = cluster.participant_client("p1").await?;
    let values = p1
        .read(pb::ReadRequest {
            keys: vec![b"k".to_vec()],
        })
        .await?
        .into_inner()
        .values;
    assert_eq!(
        values[0].value.as_deref(),
        Some(&b"read-me"[..]),
        "a value that was read was lost in the crash"
    );
    // The client, whose call was cut, hears what the participant holds (if it hears at all).
    if let Ok(Ok(Ok(resp))) = tokio::time::timeout(Duration::from_secs(30), commit).await {
        let resp = resp.into_inner();
        assert_eq!(
            resp.outcome,
            pb::Outcome::Committed as i32,
            "{}",
            resp.reason
        );
    }
    cluster.shutdown()?;
    Ok(())
}
