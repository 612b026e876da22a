//! txnctl against a real cluster: a stuck txn is found, shown with why it is stuck, and
//! settled; forced outcomes that would break atomicity are refused without --heuristic;
//! --json parses; every error path prints one line and exits non-zero.

use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use txn_proto::pb::v1 as pb;
use txn_tests::cluster::{Cluster, ClusterOptions, bin_dir};

fn txnctl(cluster: &Cluster, args: &[&str]) -> Output {
    Command::new(bin_dir().unwrap().join("txnctl"))
        .arg("--coordinator")
        .arg(cluster.coordinator.url())
        .args(args)
        .output()
        .expect("run txnctl")
}

fn ok_json(cluster: &Cluster, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = txnctl(cluster, &all);
    assert!(
        out.status.success(),
        "txnctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "txnctl {args:?} --json is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Runs a failing command; returns its one-line error.
fn fails(out: Output, code: i32) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    if code == 1 {
        assert_eq!(err.trim_end().lines().count(), 1, "one line, got: {err}");
        assert!(err.starts_with("txnctl: "), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    err
}

fn prepare(txn: &str, key: &str) -> pb::PrepareRequest {
    pb::PrepareRequest {
        writers: vec![],
        txn_id: txn.into(),
        coordinator_epoch: 9,
        participants: vec!["p1".into(), "p2".into()],
        ops: vec![pb::Op {
            kind: Some(pb::op::Kind::Add(pb::AddOp {
                key: key.as_bytes().to_vec(),
                delta: 7,
                min: None,
                max: None,
            })),
        }],
        read_only: false,
        commit_point: 0,
    }
}

async fn wait_for(mut pred: impl AsyncFnMut() -> bool, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !pred().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_show_and_settle_stuck_transactions() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(ClusterOptions {
        participants: 2,
        // Participants must not settle the planted txns on their own while the test looks.
        participant_args: vec!["--resolve-after-ms".into(), "600000".into()],
        coordinator_args: vec!["--commit-retry-max-ms".into(), "100".into()],
        ..Default::default()
    })
    .await?;

    // --- A commit decision whose ack is stuck: p2 dies right after applying the commit.
    let v = ok_json(
        &cluster,
        &[
            "failpoint",
            "set",
            "p2",
            "participant::after_commit_apply",
            "crash",
        ],
    );
    assert_eq!(v["action"], "crash");
    let v = ok_json(
        &cluster,
        &[
            "transfer",
            "--from",
            "p1/alice",
            "--to",
            "p2/bob",
            "--amount",
            "5",
            "--allow-negative",
        ],
    );
    assert_eq!(v["outcome"], "committed", "{v}");
    let txn = v["txn_id"].as_str().unwrap().to_string();
    cluster
        .participant("p2")
        .wait_exit(Duration::from_secs(10))
        .await?;
    wait_for(
        async || {
            let d = ok_json(&cluster, &["txn", "show", &txn]);
            d["branches"][1]["commit_attempts"].as_u64().unwrap_or(0) > 0
        },
        "a failed commit attempt to be recorded",
    )
    .await;
    let list = ok_json(&cluster, &["txn", "list", "--state", "committing"]);
    assert!(
        list.as_array()
            .unwrap()
            .iter()
            .any(|t| t["txn_id"] == txn.as_str()),
        "{list}"
    );
    let show = ok_json(&cluster, &["txn", "show", &txn]);
    assert_eq!(show["decision"], "COMMIT");
    assert_eq!(show["coordinator_state"], "committing");
    let p2 = &show["branches"][1];
    assert_eq!(p2["participant"], "p2");
    assert_eq!(p2["state"], "unreachable");
    assert!(
        !p2["last_error"].as_str().unwrap().is_empty(),
        "why it is stuck: {show}"
    );
    // Aborting after a durable commit decision would break atomicity: refused.
    let err = fails(
        txnctl(
            &cluster,
            &["txn", "abort", &txn, "--reason", "operator test"],
        ),
        1,
    );
    assert!(
        err.contains("refused") && err.contains("--heuristic"),
        "{err}"
    );
    cluster.participant("p2").start().await?;
    // The coordinator's own commit retry may reach the restarted p2 first and end the txn;
    // then the operator's retry finds nothing left to do, which it says.
    let out = txnctl(&cluster, &["txn", "retry", &txn, "--json"]);
    if out.status.success() {
        let r: Value = serde_json::from_slice(&out.stdout)?;
        assert!(
            r["action"].as_str().unwrap().contains("re-sending Commit"),
            "{r}"
        );
    } else {
        let err = fails(out, 1);
        assert!(err.contains("not in flight at the coordinator"), "{err}");
    }
    wait_for(
        async || {
            ok_json(&cluster, &["txn", "list", "--state", "committing"])
                .as_array()
                .unwrap()
                .is_empty()
        },
        "the decision to end after the retry",
    )
    .await;

    // --- Txns the coordinator never heard of, left prepared at participants (its log lost).
    let mut p1 = cluster.participant_client("p1").await?;
    let mut p2 = cluster.participant_client("p2").await?;
    assert_eq!(
        p1.prepare(prepare("9.1", "x")).await?.into_inner().vote,
        pb::Vote::Yes as i32
    );
    assert_eq!(
        p2.prepare(prepare("9.1", "y")).await?.into_inner().vote,
        pb::Vote::Yes as i32
    );
    assert_eq!(
        p1.prepare(prepare("9.2", "z")).await?.into_inner().vote,
        pb::Vote::Yes as i32
    );
    let list = ok_json(&cluster, &["txn", "list", "--state", "in-doubt"]);
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["txn_id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"9.1") && ids.contains(&"9.2"), "{list}");
    let show = ok_json(&cluster, &["txn", "show", "9.2"]);
    assert_eq!(show["coordinator_state"], "unknown");
    assert_eq!(show["decision"], "ABORT", "presumed abort: {show}");

    // An id of this coordinator's own epoch that it no longer holds was aborted by it
    // (presumed abort): a forced commit would contradict what its client was told.
    let epoch = ok_json(&cluster, &["status"])["epoch"].as_u64().unwrap();
    let own = format!("{epoch}.999");
    assert_eq!(
        p1.prepare(prepare(&own, "w")).await?.into_inner().vote,
        pb::Vote::Yes as i32
    );
    let err = fails(
        txnctl(&cluster, &["txn", "commit", &own, "--reason", "try"]),
        1,
    );
    assert!(err.contains("already aborted it"), "{err}");
    ok_json(&cluster, &["txn", "abort", &own, "--reason", "cleanup"]);

    // 9.2 never prepared at p2: committing it would break atomicity.
    let err = fails(
        txnctl(&cluster, &["txn", "commit", "9.2", "--reason", "try"]),
        1,
    );
    assert!(err.contains("not every participant voted YES"), "{err}");
    let held = ok_json(&cluster, &["participant", "in-doubt", "p1"]);
    assert!(
        held.as_array().unwrap().iter().all(|t| t["held"] == false),
        "a refused forced commit releases its holds: {held}"
    );
    let forced = ok_json(
        &cluster,
        &["txn", "abort", "9.2", "--reason", "never reached p2"],
    );
    assert_eq!(forced["forced"]["reason"], "never reached p2");
    // 9.1 prepared everywhere: a safe forced commit.
    let forced = ok_json(
        &cluster,
        &["txn", "commit", "9.1", "--reason", "both voted YES"],
    );
    assert_eq!(forced["forced"]["decision"], "COMMIT");
    wait_for(
        async || {
            let d = ok_json(&cluster, &["txn", "show", "9.1"]);
            d["branches"]
                .as_array()
                .unwrap()
                .iter()
                .all(|b| b["state"] == "committed")
        },
        "the forced commit to reach both participants",
    )
    .await;
    let shown = ok_json(&cluster, &["txn", "show", "9.1"]);
    assert_eq!(
        shown["forced"]["reason"], "both voted YES",
        "recorded with its reason"
    );
    wait_for(
        async || {
            ok_json(&cluster, &["participant", "in-doubt", "p1"])
                .as_array()
                .unwrap()
                .is_empty()
        },
        "p1 to hold nothing in doubt",
    )
    .await;
    let reads = ok_json(&cluster, &["read", "p1/x", "p1/z", "p2/y"]);
    let values: Vec<&Value> = reads
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["value"])
        .collect();
    assert_eq!(
        values,
        vec![&Value::from("7"), &Value::Null, &Value::from("7")],
        "{reads}"
    );

    // --- Every error path: one line, exit 1 (2 for usage).
    let status = ok_json(&cluster, &["status"]);
    assert_eq!(status["participants"].as_array().unwrap().len(), 2);
    let err = fails(txnctl(&cluster, &["txn", "show", "77.77"]), 1);
    assert!(err.contains("not found"), "{err}");
    let err = fails(txnctl(&cluster, &["txn", "show", "bad id"]), 1);
    assert!(err.contains("txn_id"), "{err}");
    let bad = tempfile::NamedTempFile::new()?;
    std::fs::write(bad.path(), b"{\"branches\": [ oops")?;
    let err = fails(
        txnctl(&cluster, &["submit", bad.path().to_str().unwrap()]),
        1,
    );
    assert!(err.contains("malformed transaction JSON"), "{err}");
    let out = Command::new(bin_dir()?.join("txnctl"))
        .args(["--coordinator", "http://127.0.0.1:1", "status"])
        .output()?;
    let err = fails(out, 1);
    assert!(
        err.contains("cannot reach the coordinator at http://127.0.0.1:1"),
        "{err}"
    );
    let out = Command::new(bin_dir()?.join("txnctl"))
        .args(["--coordinator", "not a url", "status"])
        .output()?;
    assert!(fails(out, 1).contains("is not a valid URL"));
    fails(txnctl(&cluster, &["txn", "frobnicate"]), 2);
    let err = fails(txnctl(&cluster, &["txn", "list", "--state", "done"]), 2);
    assert!(err.contains("in-doubt"), "names the states it takes: {err}");
    let err = fails(
        txnctl(
            &cluster,
            &[
                "transfer", "--from", "alice", "--to", "p2/bob", "--amount", "1",
            ],
        ),
        1,
    );
    assert!(err.contains("--from"), "{err}");
    let err = fails(txnctl(&cluster, &["participant", "in-doubt", "p9"]), 1);
    assert!(err.contains("unknown participant"), "{err}");

    // --- Exit status by outcome: 3 for an aborted transfer (an overdraft), with the same
    // outcome in --json, so `txnctl transfer ... && next-step` stops.
    let overdraft = [
        "transfer",
        "--from",
        "p1/alice",
        "--to",
        "p2/bob",
        "--amount",
        "1000000000",
        "--json",
    ];
    let out = txnctl(&cluster, &overdraft);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v["outcome"], "aborted", "{v}");
    let out = txnctl(&cluster, &["read", "p1/alice", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "a committed read exits 0: {out:?}"
    );
    // 4 when the call may have run: the coordinator dies right after logging the decision,
    // so the client never hears the outcome.
    ok_json(
        &cluster,
        &[
            "failpoint",
            "set",
            "coordinator",
            "coordinator::after_decision_durable",
            "crash",
        ],
    );
    let out = txnctl(
        &cluster,
        &[
            "transfer",
            "--from",
            "p1/alice",
            "--to",
            "p2/bob",
            "--amount",
            "1",
            "--allow-negative",
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(v["outcome"], "unknown", "{v}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("outcome is unknown"),
        "{out:?}"
    );
    // With the coordinator gone, a new transfer is refused before it runs: an error (1).
    cluster
        .coordinator
        .wait_exit(Duration::from_secs(10))
        .await?;
    fails(txnctl(&cluster, &overdraft), 1);
    cluster.shutdown()?;
    Ok(())
}
