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
