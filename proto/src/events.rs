//! Wire forms of the outbox's events and of the events protocol's transfer records, from the
//! durable records of `txn-types` (the feed serves what the outbox holds, as it is).

use txn_types::rec::{EventRecord, TransferRecord, Write};

use crate::pb::v1 as pb;

pub fn change_to_pb(w: &Write) -> pb::Change {
    pb::Change {
        key: w.key.clone(),
        value: w.value.clone(),
        delta: w.delta,
    }
}

pub fn change_from_pb(c: &pb::Change) -> Write {
    Write {
        key: c.key.clone(),
        value: c.value.clone(),
        delta: c.delta,
    }
}

/// An event of `participant`'s feed. A one-phase commit's event names no members in the
/// outbox (this participant alone); on the wire it names this participant, so every event
/// says whose events make up its change.
pub fn event_to_pb(participant: &str, ev: &EventRecord) -> pb::Event {
    let participants = if ev.participants.is_empty() {
        vec![participant.to_owned()]
    } else {
        ev.participants.clone()
    };
    pb::Event {
        participant: participant.to_owned(),
        offset: ev.offset,
        kind: ev.kind,
        txn_id: ev.txn_id.clone(),
        participants,
        changes: ev.changes.iter().map(change_to_pb).collect(),
        at_unix_ms: ev.at_unix_ms,
        step: ev.step,
        destination_ops: ev.destination_ops.iter().map(op_to_pb).collect(),
        reason: ev.reason.clone(),
    }
}

/// The durable form of a wire event (a consumer hands events to a core in this form).
pub fn event_from_pb(ev: &pb::Event) -> EventRecord {
    EventRecord {
        offset: ev.offset,
        kind: ev.kind,
        txn_id: ev.txn_id.clone(),
        participants: ev.participants.clone(),
        changes: ev.changes.iter().map(change_from_pb).collect(),
        at_unix_ms: ev.at_unix_ms,
        step: ev.step,
        destination_ops: ev.destination_ops.iter().map(op_from_pb).collect(),
        reason: ev.reason.clone(),
    }
}

/// The two schemas keep the same field numbers for operations, so an op crosses between them
/// by its encoding.
fn op_to_pb(op: &txn_types::rec::Op) -> pb::Op {
    use prost::Message;
    pb::Op::decode(op.encode_to_vec().as_slice()).unwrap_or_default()
}

fn op_from_pb(op: &pb::Op) -> txn_types::rec::Op {
    use prost::Message;
    txn_types::rec::Op::decode(op.encode_to_vec().as_slice()).unwrap_or_default()
}

pub fn transfer_to_pb(id: &str, participant: &str, rec: &TransferRecord) -> pb::TransferInfo {
    pb::TransferInfo {
        transfer_id: id.to_owned(),
        participant: participant.to_owned(),
        role: rec.role,
        state: rec.state,
        source: rec.source.clone(),
        destination: rec.destination.clone(),
        reason: rec.reason.clone(),
        accepted_at_unix_ms: rec.accepted_at_unix_ms,
        settled_at_unix_ms: rec.settled_at_unix_ms,
        event_offset: rec.event_offset,
        changes: rec.changes.iter().map(change_to_pb).collect(),
    }
}

/// Where a transfer stands, from whatever records its participants hold.
pub fn transfer_phase(records: &[pb::TransferInfo]) -> pb::TransferPhase {
    use pb::{TransferPhase as P, TransferRole as R, TransferState as S};
    let state_of = |role: R| {
        records
            .iter()
            .find(|r| r.role == role as i32)
            .map(|r| S::try_from(r.state).unwrap_or(S::Unspecified))
    };
    match (state_of(R::Source), state_of(R::Destination)) {
        (Some(S::Rejected), _) => P::Rejected,
        (Some(S::Refunded), _) => P::Refunded,
        (_, Some(S::Credited)) => P::Credited,
        (_, Some(S::Refused)) => P::Refunding,
        (Some(_), _) => P::InFlight,
        (None, _) => P::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use txn_types::rec::EventKind;

    #[test]
    fn an_event_crosses_the_wire_and_back() {
        let ev = EventRecord {
            offset: 7,
            kind: EventKind::TransferDebit as i32,
            txn_id: "3.4".into(),
            participants: vec!["p1".into(), "p2".into()],
            changes: vec![Write {
                key: b"a".to_vec(),
                value: Some(b"5".to_vec()),
                delta: Some(-5),
            }],
            at_unix_ms: 9,
            step: 0,
            destination_ops: vec![
                (&txn_types::types::Op::Add {
                    key: b"b".to_vec(),
                    delta: 5,
                    min: None,
                    max: Some(10),
                })
                    .into(),
            ],
            reason: String::new(),
        };
        let wire = event_to_pb("p1", &ev);
        assert_eq!(event_from_pb(&wire), ev);
        let alone = EventRecord {
            participants: vec![],
            ..ev
        };
        assert_eq!(event_to_pb("p3", &alone).participants, vec!["p3"]);
    }

    #[test]
    fn a_transfer_phase_comes_from_both_records() {
        let rec = |role: pb::TransferRole, state: pb::TransferState| pb::TransferInfo {
            role: role as i32,
            state: state as i32,
            ..Default::default()
        };
        use pb::{TransferPhase as P, TransferRole as R, TransferState as S};
        assert_eq!(transfer_phase(&[]), P::Unknown);
        assert_eq!(transfer_phase(&[rec(R::Source, S::Accepted)]), P::InFlight);
        assert_eq!(
            transfer_phase(&[
                rec(R::Source, S::Accepted),
                rec(R::Destination, S::Credited)
            ]),
            P::Credited
        );
        assert_eq!(
            transfer_phase(&[rec(R::Source, S::Accepted), rec(R::Destination, S::Refused)]),
            P::Refunding
        );
        assert_eq!(
            transfer_phase(&[rec(R::Source, S::Refunded), rec(R::Destination, S::Refused)]),
            P::Refunded
        );
        assert_eq!(transfer_phase(&[rec(R::Source, S::Rejected)]), P::Rejected);
    }
}
