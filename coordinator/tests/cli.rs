//! The coordinator binary refuses bad flags with one clear line and a non-zero exit.

use std::process::Command;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_coordinator"))
        .args(args)
        .output()
        .expect("run coordinator");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn malformed_participant_flag_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let (code, err) = run(&[
        "--data-dir",
        &data,
        "--listen",
        "127.0.0.1:0",
        "--participant",
        "p1",
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("--participant \"p1\": expected NAME=URL"),
        "{err}"
    );
    let (code, err) = run(&[
        "--data-dir",
        &data,
        "--listen",
        "127.0.0.1:0",
        "--participant",
        "p 1=http://127.0.0.1:1",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("--participant NAME"), "{err}");
}

#[test]
fn missing_participants_is_a_usage_error() {
    let (code, err) = run(&[]);
    assert_eq!(code, 2, "clap exits 2 on usage errors");
    assert!(err.contains("--participant"), "{err}");
}

fn txnctl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_txnctl"))
        .args(args)
        .output()
        .expect("run txnctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every exit status is documented in --help, and every command keeps to them without a
/// cluster: usage errors exit 2, a coordinator that cannot be reached 1 with one line.
#[test]
fn txnctl_exit_statuses_for_every_command() {
    let (code, help, _) = txnctl(&["--help"]);
    assert_eq!(code, 0);
    for line in [
        "0  success",
        "1  error",
        "2  usage error",
        "3  transfer, read, submit: the transaction aborted",
        "4  transfer, read, submit: the outcome is unknown",
    ] {
        assert!(help.contains(line), "--help lacks {line:?}:\n{help}");
    }
    for usage in [
        &["frobnicate"][..],
        &["txn", "list", "--state", "done"],
        &["saga", "list", "--state", "bogus"],
        &["saga", "list", "--limit", "many"],
        &["participant"],
        &[
            "transfer", "--from", "p1/a", "--to", "p2/b", "--amount", "x",
        ],
        &["read"],
        &["failpoint", "set", "p1"],
        &["certs", "node"],
    ] {
        let (code, _, err) = txnctl(usage);
        assert_eq!(code, 2, "txnctl {usage:?}: {err}");
    }
    let nowhere = ["--coordinator", "http://127.0.0.1:1"];
    for cmd in [
        &["status"][..],
        &["txn", "list"],
        &["txn", "show", "1.1"],
        &["txn", "retry", "1.1"],
        &["txn", "abort", "1.1", "--reason", "r"],
        &["txn", "commit", "1.1", "--reason", "r"],
        &["saga", "list"],
        &["saga", "show", "1.1"],
        &["saga", "retry", "1.1"],
        &["participant", "list"],
        &["participant", "in-doubt", "p1"],
        &["failpoint", "list", "coordinator"],
        &[
            "transfer", "--from", "p1/a", "--to", "p2/b", "--amount", "1",
        ],
        &["read", "p1/a"],
    ] {
        let args: Vec<&str> = nowhere.iter().chain(cmd).copied().collect();
        let (code, out, err) = txnctl(&args);
        assert_eq!(code, 1, "txnctl {cmd:?}: {err}");
        assert!(out.is_empty(), "txnctl {cmd:?} printed {out}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
        assert!(err.contains("cannot reach"), "{err}");
    }
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = txnctl(&[
        "certs",
        "--dir",
        dir.path().to_str().unwrap(),
        "n1",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
}
