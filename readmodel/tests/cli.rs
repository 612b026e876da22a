//! The readmodel binary refuses bad flags and unusable data directories clearly. (These tests
//! also make `cargo test --workspace` build the binary that the cluster tests start.)

use std::process::Command;

fn readmodel(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_readmodel"))
        .args(args)
        .output()
        .expect("run readmodel")
}

#[test]
fn a_missing_participant_is_a_usage_error() {
    let out = readmodel(&["--listen", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--participant"));
}

#[test]
fn a_participant_without_its_url_is_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_readmodel"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--participant",
            "p1",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .expect("run readmodel");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("expected NAME=URL"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

#[test]
fn an_unusable_data_dir_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_readmodel"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--participant",
            "p1=http://127.0.0.1:1",
            "--data-dir",
        ])
        .arg(&file)
        .output()
        .expect("run readmodel");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("opening the database"), "{err}");
}
