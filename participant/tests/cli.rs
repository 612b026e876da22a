//! The participant binary refuses bad flags and unusable data directories clearly.

use std::process::Command;

#[test]
fn bad_listen_address_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_participant"))
        .args(["--listen", "not-an-address"])
        .output()
        .expect("run participant");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--listen"));
}

#[test]
fn unusable_data_dir_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_participant"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&file)
        .output()
        .expect("run participant");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("opening the database"), "{err}");
}

#[test]
fn an_outcome_retention_shorter_than_the_prepare_deadline_is_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_participant"))
        .args(["--listen", "127.0.0.1:0", "--outcome-retention-secs", "30"])
        .output()
        .expect("run participant");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--outcome-retention-secs"), "{err}");
    assert!(err.contains("prepare deadline"), "{err}");
}
