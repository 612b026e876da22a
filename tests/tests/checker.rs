//! The checker itself, end to end against real processes: `harness compare` runs a short
//! workload, then plants a violation in one participant's own database through the storage
//! layer (the participant stopped, changed, started again) before its checks. Its exit status
//! must fail, and its output must name the violation; report.json must carry the fields other
//! tools read. Planted: a 2PC half-commit, a saga step applied twice, an events transfer
//! credited twice, a committed change whose event is lost.

use std::process::Command;

use serde_json::Value;

/// Runs `harness compare` on one quiet scenario with `plant`; returns (success, stdout,
/// report.json).
fn compare_with(protocol: &str, plant: &str) -> (bool, String, Value) {
    let out_dir = tempfile::tempdir().expect("temp dir");
    // The service binaries cargo test built: without this, a harness started under cargo
    // would run `cargo build` itself, and could replace binaries other tests are running.
    let bins = txn_tests::cluster::bin_dir().expect("the test's target directory");
    let out = Command::new(env!("CARGO_BIN_EXE_harness"))
        .env("TXN_BIN_DIR", bins)
        .env_remove("CARGO")
        .args([
            "compare",
            "--scenarios",
            "none",
            "--protocols",
            protocol,
            "--duration",
            "3",
            "--clients",
            "4",
            "--auditors",
            "1",
            "--plant",
            plant,
            "--out",
        ])
        .arg(out_dir.path())
        .output()
        .expect("run harness compare");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report = std::fs::read(out_dir.path().join("report.json"))
        .unwrap_or_else(|e| panic!("no report.json ({e}); stdout:\n{stdout}\nstderr:\n{stderr}"));
    let report: Value = serde_json::from_slice(&report).expect("report.json parses");
    (out.status.success(), format!("{stdout}\n{stderr}"), report)
}

fn planted_txn(output: &str) -> String {
    output
        .lines()
        .find_map(|l| {
            l.strip_prefix("planted ")
                .and_then(|l| l.split(" into txn ").nth(1))
        })
        .unwrap_or_else(|| panic!("no 'planted' line in:\n{output}"))
        .trim()
        .to_string()
}

#[test]
fn a_planted_half_commit_fails_compare_and_is_named() {
    let (ok, output, report) = compare_with("2pc", "half-commit");
    assert!(!ok, "compare passed a half-commit:\n{output}");
    let txn = planted_txn(&output);
    assert!(output.contains("FAILED none / 2pc"), "{output}");
    assert!(
        output.contains(&format!(
            "atomicity violation: txn {txn} committed at some participants"
        )),
        "the half-committed txn is named from the participants' records:\n{output}"
    );
    assert!(
        output.contains(&format!("acknowledged txn {txn} lost")),
        "{output}"
    );
    let run = &report["runs"][0];
    assert!(run["atomicity_violations"].as_u64().unwrap() >= 1, "{run}");
    assert_eq!(run["total_conserved"], false, "{run}");
    assert!(
        run["txns_checked_at_participants"].as_u64().unwrap() > 0,
        "{run}"
    );
    for field in [
        "scenario",
        "protocol",
        "committed",
        "aborted",
        "unknown",
        "not_started",
        "txns_checked_at_participants",
        "atomicity_violations",
        "lost_acknowledged",
        "unresolved_at_end",
        "total_conserved",
        "audits_tried",
        "audits_completed",
        "audits_inconsistent",
        "audit_p99_ms",
        "longest_in_doubt_ms",
        "longest_in_flight_ms",
        "recovery_ms",
        "events_lost",
        "double_effects",
        "duplicates_delivered",
        "read_paths",
        "problems",
    ] {
        assert!(run.get(field).is_some(), "report.json lacks {field}: {run}");
    }
}

#[test]
fn a_planted_double_effect_of_a_saga_step_fails_compare_and_is_named() {
    let (ok, output, report) = compare_with("saga", "double-effect");
    assert!(!ok, "compare passed a double effect:\n{output}");
    let saga = planted_txn(&output);
    assert!(output.contains("FAILED none / saga"), "{output}");
    assert!(
        output.contains(&format!(
            "saga {saga} step 1: more than one effect recorded"
        )),
        "{output}"
    );
    assert_eq!(report["runs"][0]["total_conserved"], false);
}

#[test]
fn a_planted_double_credit_of_an_events_transfer_fails_compare_and_is_named() {
    let (ok, output, report) = compare_with("events", "double-credit");
    assert!(!ok, "compare passed a double credit:\n{output}");
    let transfer = planted_txn(&output);
    assert!(output.contains("FAILED none / events"), "{output}");
    assert!(
        output.contains("double or lost effect: "),
        "the account credited twice is named:\n{output}"
    );
    let run = &report["runs"][0];
    assert_eq!(run["total_conserved"], false, "{run}");
    assert!(run["double_effects"].as_u64().unwrap() >= 1, "{run}");
    assert!(
        run["events"]["accepted"].as_u64().unwrap() > 0,
        "{transfer} and others ran: {run}"
    );
}

#[test]
fn a_planted_lost_event_fails_compare_and_is_named() {
    let (ok, output, report) = compare_with("2pc", "lost-event");
    assert!(!ok, "compare passed a lost event:\n{output}");
    let txn = planted_txn(&output);
    assert!(output.contains("FAILED none / 2pc"), "{output}");
    assert!(
        output.contains(&format!(
            "event lost: p1 recorded a change of {txn} but its feed holds no"
        )),
        "the change without its event is named:\n{output}"
    );
    assert!(report["runs"][0]["events_lost"].as_u64().unwrap() >= 1);
}
