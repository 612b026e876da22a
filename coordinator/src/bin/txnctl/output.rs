//! How txnctl prints: every command's result is one JSON value, printed as pretty JSON with
//! `--json`, or else as a table (nested objects and lists of objects become nested tables).
//! Answers that several commands show (the coordinator's status, a participant, a txn's
//! detail, a saga) are turned into that value here, once, so every command shows them alike.

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde_json::{Value, json};
use txn_proto::pb::v1 as pb;

pub fn participant_json(p: &pb::ParticipantInfo) -> Value {
    json!({"name": p.name, "url": p.url, "healthy": p.healthy, "in_doubt": p.in_doubt})
}

pub fn status_json(s: &pb::AdminStatusResponse) -> Value {
    let mut v = status_fields(s);
    if !s.coordinators.is_empty() {
        v["coordinators"] = json!(s.coordinators);
    }
    v
}

fn status_fields(s: &pb::AdminStatusResponse) -> Value {
    json!({
        "epoch": s.epoch,
        "uptime_s": s.uptime_ms / 1000,
        "participants": s.participants.iter().map(participant_json).collect::<Vec<_>>(),
        "txns_in_flight": s.txns_in_flight,
        "txns_committed": s.txns_committed,
        "txns_aborted": s.txns_aborted,
        "txns_committing": s.txns_committing,
        "txns_in_doubt": s.txns_in_doubt,
        "sagas_running": s.sagas_running,
        "sagas_compensating": s.sagas_compensating,
        "sagas_parked": s.sagas_parked,
        "sagas_completed": s.sagas_completed,
        "sagas_compensated": s.sagas_compensated,
    })
}

fn decision_name(d: i32) -> &'static str {
    match pb::Decision::try_from(d) {
        Ok(pb::Decision::Commit) => "COMMIT",
        Ok(pb::Decision::Abort) => "ABORT",
        Ok(pb::Decision::Pending) => "PENDING",
        _ => "UNKNOWN",
    }
}

/// An enum value's wire name as operators spell it (and `--state` takes it): the enum's
/// prefix dropped, lower case, words joined by `-` (`TXN_PHASE_IN_DOUBT` is `in-doubt`);
/// `?` for UNSPECIFIED or a value this build does not know.
fn operator_name(wire: Option<&str>, prefix: &str) -> String {
    match wire.and_then(|w| w.strip_prefix(prefix)) {
        Some(name) if name != "UNSPECIFIED" => name.to_lowercase().replace('_', "-"),
        _ => "?".into(),
    }
}

/// The operators' name of a txn phase, as `txn list --state` spells it.
pub fn phase_name(p: i32) -> String {
    operator_name(
        pb::TxnPhase::try_from(p).ok().map(|p| p.as_str_name()),
        "TXN_PHASE_",
    )
}

/// The operators' name of a saga state, as `saga list --state` spells it.
fn saga_phase_name(p: i32) -> String {
    operator_name(
        pb::SagaPhase::try_from(p).ok().map(|p| p.as_str_name()),
        "SAGA_PHASE_",
    )
}

fn state_name(s: i32) -> &'static str {
    match pb::TxnState::try_from(s) {
        Ok(pb::TxnState::Prepared) => "prepared",
        Ok(pb::TxnState::Committed) => "committed",
        Ok(pb::TxnState::Aborted) => "aborted",
        Ok(pb::TxnState::Unknown) => "no record",
        _ => "?",
    }
}

pub fn detail_json(d: &pb::TxnDetail) -> Value {
    let mut v = json!({
        "txn_id": d.txn_id,
        "coordinator_state": phase_name(d.coordinator_state),
        "decision": decision_name(d.decision),
        "decided_at_unix_ms": (d.decided_at_unix_ms > 0).then_some(d.decided_at_unix_ms),
        "branches": d.branches.iter().map(|b| json!({
            "participant": b.participant,
            "state": if b.reachable { state_name(b.state) } else { "unreachable" },
            "acked": b.acked,
            "commit_attempts": b.commit_attempts,
            "last_error": b.last_error,
        })).collect::<Vec<_>>(),
    });
    if let Some(f) = &d.forced {
        v["forced"] = json!({
            "decision": decision_name(f.decision),
            "reason": f.reason,
            "heuristic": f.heuristic,
            "at_unix_ms": f.at_unix_ms,
        });
    }
    v
}

pub fn saga_json(s: &pb::SagaSummary) -> Value {
    json!({
        "saga_id": s.saga_id,
        "state": saga_phase_name(s.state),
        "steps": s.steps,
        "next_step": s.next_step,
        "failed_step": s.failed_step,
        "reason": s.reason,
        "compensation_attempts": s.compensation_attempts,
        "last_error": s.last_error,
        "participants": s.participants.join(","),
    })
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.iter().all(|i| i.is_object()) => {
            let mut t = Table::new();
            t.load_preset(UTF8_FULL_CONDENSED);
            table_rows(&mut t, items);
            t.to_string()
        }
        Value::Object(_) => {
            let mut t = Table::new();
            t.load_preset(UTF8_FULL_CONDENSED);
            kv_rows(&mut t, v);
            t.to_string()
        }
        other => other.to_string(),
    }
}

fn table_rows(t: &mut Table, items: &[Value]) {
    if let Some(Value::Object(first)) = items.first() {
        t.set_header(first.keys().cloned().collect::<Vec<_>>());
        for item in items {
            if let Value::Object(m) = item {
                t.add_row(m.values().map(cell).collect::<Vec<_>>());
            }
        }
    }
}

fn kv_rows(t: &mut Table, v: &Value) {
    if let Value::Object(m) = v {
        for (k, val) in m {
            t.add_row(vec![k.clone(), cell(val)]);
        }
    }
}

pub fn print(v: &Value, as_json: bool) {
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(v).expect("JSON values serialize")
        );
        return;
    }
    match v {
        Value::Array(items) if items.is_empty() => println!("(none)"),
        Value::Array(items) => {
            let mut t = Table::new();
            t.load_preset(UTF8_FULL_CONDENSED);
            table_rows(&mut t, items);
            println!("{t}");
        }
        other => {
            let mut t = Table::new();
            t.load_preset(UTF8_FULL_CONDENSED);
            kv_rows(&mut t, other);
            println!("{t}");
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum;

    use super::*;
    use crate::cli::{SagaListState, TxnListState};

    #[test]
    fn printed_states_are_spelled_as_state_takes_them() {
        for s in TxnListState::value_variants() {
            let clap_name = s.to_possible_value().unwrap().get_name().to_owned();
            assert_eq!(phase_name(s.to_wire() as i32), clap_name);
        }
        for s in SagaListState::value_variants() {
            let clap_name = s.to_possible_value().unwrap().get_name().to_owned();
            assert_eq!(saga_phase_name(s.to_wire() as i32), clap_name);
        }
        assert_eq!(phase_name(pb::TxnPhase::Unknown as i32), "unknown");
        assert_eq!(phase_name(0), "?");
        assert_eq!(phase_name(99), "?");
    }
}
