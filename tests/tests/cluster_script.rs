//! scripts/cluster.sh driven as a user would: up, status, transfers through txnctl under 2PC
//! and the events protocol, the feeds and the read model, kill and restart a participant,
//! down; then no process of the cluster may be left running.

use std::path::PathBuf;
use std::process::Command;

/// Ports a two-participant cluster.sh cluster takes from its base: the coordinator's, the read
/// model's, the eight it leaves free, and one per participant.
const CLUSTER_PORT_SPAN: u16 = 12;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn script(args: &[&str]) -> (bool, String) {
    let out = Command::new("bash")
        .arg(root().join("scripts/cluster.sh"))
        .args(args)
        // `cargo test` has built the binaries (with failpoints, through this crate's
        // dependencies); a second build with another feature set would only cost time and disk.
        .env("CLUSTER_NO_BUILD", "1")
        .output()
        .expect("run cluster.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Running and not a zombie (a killed node nobody reaped is gone for our purposes).
fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            let state = s
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .chars()
                .next();
            !matches!(state, Some('Z') | Some('X') | None)
        })
        .unwrap_or(false)
}

#[test]
fn up_status_transfer_kill_restart_down() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    // cluster.sh puts the coordinator at the base port and participant N at base + 9 + N.
    let port = txn_tests::cluster::free_port_block(CLUSTER_PORT_SPAN)
        .unwrap()
        .to_string();
    let (ok, out) = script(&[
        "up",
        "--dir",
        d,
        "--participants",
        "2",
        "--base-port",
        &port,
    ]);
    assert!(ok, "up failed:\n{out}");
    let pids: Vec<String> = ["coordinator", "readmodel", "p1", "p2"]
        .iter()
        .map(|n| {
            std::fs::read_to_string(dir.path().join(format!("{n}.pid")))
                .unwrap()
                .trim()
                .to_string()
        })
        .collect();
    assert!(pids.iter().all(|p| alive(p)), "every node runs");
    // A second `up` starts no duplicates.
    let (ok, out) = script(&["up", "--dir", d]);
    assert!(ok && out.contains("already running"), "{out}");

    let (ok, out) = script(&["status", "--dir", d]);
    assert!(ok && out.matches("running").count() == 4, "{out}");

    let txnctl = txn_tests::cluster::bin_dir().unwrap().join("txnctl");
    let coordinator = format!("http://127.0.0.1:{port}");
    let out = Command::new(&txnctl)
        .args([
            "--coordinator",
            &coordinator,
            "transfer",
            "--from",
            "p1/a",
            "--to",
            "p2/b",
            "--amount",
            "3",
            "--allow-negative",
        ])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("committed"),
        "{out:?}"
    );
    // The same transfer as choreography: accepted at once, and --wait follows it until the
    // destination applied its credit.
    // cluster.sh puts the read model at base + 9 (the coordinators take base + 0..8).
    let readmodel = format!("http://127.0.0.1:{}", port.parse::<u16>().unwrap() + 9);
    let txnctl_json = |args: &[&str]| {
        let out = Command::new(&txnctl)
            .args([
                "--coordinator",
                &coordinator,
                "--readmodel",
                &readmodel,
                "--json",
            ])
            .args(args)
            .output()
            .unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
        (out.status.code(), v)
    };
    let (code, v) = txnctl_json(&[
        "transfer",
        "--from",
        "p1/a",
        "--to",
        "p2/b",
        "--amount",
        "2",
        "--protocol",
        "events",
        "--allow-negative",
        "--wait",
    ]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["phase"], "credited", "{v}");
    let (_, events) = txnctl_json(&["events"]);
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|row| row["consumer"] == "readmodel"),
        "the read model follows every feed: {events}"
    );
    // The read model shows both transfers once it has caught up (polled, not slept for).
    let mut balances = serde_json::Value::Null;
    for _ in 0..200 {
        let (_, v) = txnctl_json(&["readmodel", "balances", "--consistent", "p1/a", "p2/b"]);
        balances = v["balances"].clone();
        if balances[0]["value"] == "-5" && balances[1]["value"] == "5" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(balances[0]["value"], "-5", "{balances}");
    assert_eq!(balances[1]["value"], "5", "{balances}");

    let (ok, out) = script(&["kill", "p1", "--dir", d]);
    assert!(ok, "{out}");
    let (_, out) = script(&["status", "--dir", d]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("p1") && l.contains("stopped")),
        "{out}"
    );
    let (ok, out) = script(&["--dir", d, "restart", "p1"]);
    assert!(ok, "{out}");
    let (ok, out) = script(&["kill", "p7", "--dir", d]);
    assert!(!ok && out.contains("unknown node p7"), "{out}");
    let out = Command::new(&txnctl)
        .args(["--coordinator", &coordinator, "read", "p1/a", "p2/b"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("-5") && text.contains(" 5 "),
        "the transfers survived the restart: {text}"
    );

    let new_pid = std::fs::read_to_string(dir.path().join("p1.pid"))
        .unwrap()
        .trim()
        .to_string();
    let (ok, out) = script(&["down", "--dir", d]);
    assert!(ok, "{out}");
    for pid in pids.iter().chain(std::iter::once(&new_pid)) {
        assert!(!alive(pid), "process {pid} is still running after down");
    }
}

#[test]
fn up_tls_runs_the_cluster_with_mutual_tls_and_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    // cluster.sh puts the coordinator at the base port and participant N at base + 9 + N.
    let port = txn_tests::cluster::free_port_block(CLUSTER_PORT_SPAN)
        .unwrap()
        .to_string();
    let (ok, out) = script(&[
        "up",
        "--tls",
        "--dir",
        d,
        "--participants",
        "2",
        "--base-port",
        &port,
    ]);
    assert!(ok, "up --tls failed:\n{out}");
    let (ok, env) = script(&["env", "--dir", d]);
    assert!(ok, "{env}");
    let vars: Vec<(String, String)> = env
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    assert_eq!(vars.len(), 6, "{env}");
    let txnctl = txn_tests::cluster::bin_dir().unwrap().join("txnctl");
    let run = |envs: &[(String, String)], args: &[&str]| {
        let mut cmd = Command::new(&txnctl);
        for k in [
            "TXNCTL_COORDINATOR",
            "TXNCTL_READMODEL",
            "TXNCTL_TLS_CA",
            "TXNCTL_TLS_CERT",
            "TXNCTL_TLS_KEY",
            "TXNCTL_TOKEN",
        ] {
            cmd.env_remove(k);
        }
        cmd.envs(envs.iter().cloned()).args(args).output().unwrap()
    };
    let transfer = [
        "transfer",
        "--from",
        "p1/a",
        "--to",
        "p2/b",
        "--amount",
        "3",
        "--allow-negative",
    ];
    let out = run(&vars, &transfer);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("committed"),
        "{out:?}"
    );
    // Without the certificates (plaintext) and without the token: refused.
    let plain: Vec<_> = vars
        .iter()
        .filter(|(k, _)| k == "TXNCTL_COORDINATOR" || k == "TXNCTL_TOKEN")
        .cloned()
        .collect();
    let out = run(&plain, &transfer);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let no_token: Vec<_> = vars
        .iter()
        .filter(|(k, _)| k != "TXNCTL_TOKEN")
        .cloned()
        .collect();
    let out = run(&no_token, &["status"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unauthenticated"),
        "{out:?}"
    );
    let (ok, out) = script(&["down", "--dir", d]);
    assert!(ok, "{out}");
}

/// Ports `up --etcd` takes from its base: coordinators from the base, the read model at
/// base + 9, participants from base + 10, etcd members' client ports from base + 111 and peer
/// ports from base + 121.
const ETCD_CLUSTER_PORT_SPAN: u16 = 124;

#[test]
fn up_etcd_with_three_coordinators_survives_kills_and_pauses_of_any_node() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let port = txn_tests::cluster::free_port_block(ETCD_CLUSTER_PORT_SPAN)
        .unwrap()
        .to_string();
    let (ok, out) = script(&[
        "up",
        "--etcd",
        "--coordinators",
        "3",
        "--dir",
        d,
        "--participants",
        "2",
        "--base-port",
        &port,
    ]);
    assert!(ok, "up --etcd failed:\n{out}");
    let (ok, out) = script(&["status", "--dir", d]);
    // Three etcd members, three coordinators, the read model and two participants.
    assert!(ok && out.matches("running").count() == 9, "{out}");
    let names = ["e1", "e2", "e3", "c1", "c2", "c3", "p1", "p2"];
    let pids: Vec<String> = names
        .iter()
        .map(|n| {
            std::fs::read_to_string(dir.path().join(format!("{n}.pid")))
                .unwrap()
                .trim()
                .to_string()
        })
        .collect();
    // env names every coordinator, so txnctl can fail over.
    let (ok, env) = script(&["env", "--dir", d]);
    assert!(ok, "{env}");
    let coordinators = env
        .lines()
        .find_map(|l| l.strip_prefix("export TXNCTL_COORDINATOR="))
        .unwrap_or_else(|| panic!("{env}"))
        .to_owned();
    assert_eq!(coordinators.split(',').count(), 3, "{env}");
    let txnctl = txn_tests::cluster::bin_dir().unwrap().join("txnctl");
    let transfer = |what: &str| {
        let attempt = || {
            Command::new(&txnctl)
                .env("TXNCTL_COORDINATOR", &coordinators)
                .args([
                    "transfer",
                    "--from",
                    "p1/a",
                    "--to",
                    "p2/b",
                    "--amount",
                    "1",
                    "--allow-negative",
                ])
                .output()
                .unwrap()
        };
        // Refused before it ran ("not started": etcd just lost a member) is safe to send again.
        let mut out = attempt();
        for _ in 0..50 {
            if !String::from_utf8_lossy(&out.stderr).contains("not started") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
            out = attempt();
        }
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("committed"),
            "{what}: {out:?}"
        );
    };
    transfer("all up");
    // status names every live coordinator.
    let out = Command::new(&txnctl)
        .env("TXNCTL_COORDINATOR", &coordinators)
        .args(["--json", "status"])
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert_eq!(
        status["coordinators"].as_array().map(Vec::len),
        Some(3),
        "{out:?}"
    );
    let run = |args: &[&str]| {
        let (ok, out) = script(&[args, &["--dir", d]].concat());
        assert!(ok, "{args:?}: {out}");
    };
    run(&["kill", "c1"]);
    transfer("c1 killed");
    run(&["pause", "c2"]);
    transfer("c1 killed, c2 paused");
    // Paused past its lease (txnctl waited 2 s for c2's answer), c2 is fenced: once resumed it
    // finds its lease gone and stops. A restart makes it a new member.
    run(&["resume", "c2"]);
    run(&["restart", "c2"]);
    run(&["restart", "c1"]);
    run(&["kill", "e1"]);
    transfer("etcd member e1 killed");
    run(&["restart", "e1"]);
    run(&["pause", "e2"]);
    transfer("etcd member e2 paused");
    run(&["resume", "e2"]);
    // A read is refused while etcd recovers from the pause ("not started"), or aborts behind
    // a lock: it is safe to ask again.
    let mut text = String::new();
    for _ in 0..50 {
        let out = Command::new(&txnctl)
            .env("TXNCTL_COORDINATOR", &coordinators)
            .args(["read", "p1/a", "p2/b"])
            .output()
            .unwrap();
        text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(
        text.contains("-5") && text.contains(" 5 "),
        "every transfer applied once: {text}"
    );
    let (ok, out) = script(&["status", "--dir", d]);
    // Three etcd members, three coordinators, the read model and two participants.
    assert!(ok && out.matches("running").count() == 9, "{out}");
    let restarted: Vec<String> = ["c1", "c2", "e1"]
        .iter()
        .map(|n| {
            std::fs::read_to_string(dir.path().join(format!("{n}.pid")))
                .unwrap()
                .trim()
                .to_string()
        })
        .collect();
    let (ok, out) = script(&["down", "--dir", d]);
    assert!(ok, "{out}");
    for pid in pids.iter().chain(&restarted) {
        assert!(!alive(pid), "process {pid} is still running after down");
    }
}
