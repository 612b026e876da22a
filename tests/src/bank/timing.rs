//! How long txns stayed unfinished, from the timestamps the participants recorded with their
//! outcomes and barriers. Read-only txns (the auditors' atomic reads) wrote nothing and are
//! left out, so the figures are the transfers' own.

use std::collections::HashMap;

use txn_proto::pb::v1 as pb;

use super::{Observed, Protocol};

/// Longest a participant held a transfer prepared before its outcome was recorded (2PC's
/// blocking window): prepared to decided at one participant, in milliseconds.
pub fn longest_in_doubt_ms(observed: &Observed) -> u64 {
    observed
        .outcomes
        .values()
        .flatten()
        .filter(|r| r.writes > 0 && r.prepared_at_unix_ms > 0)
        .map(|r| r.at_unix_ms.saturating_sub(r.prepared_at_unix_ms))
        .max()
        .unwrap_or(0)
}

/// Each saga's first and last barrier record: its first step executed, and its end.
fn saga_spans(observed: &Observed) -> HashMap<&str, (u64, u64)> {
    let mut spans = HashMap::new();
    for (saga, records) in &observed.barriers {
        let times = records.iter().map(|(_, b)| b.at_unix_ms).filter(|&t| t > 0);
        if let (Some(first), Some(last)) = (times.clone().min(), times.max()) {
            spans.insert(saga.as_str(), (first, last));
        }
    }
    spans
}

/// Longest a saga was in flight: first step executed to its last step or compensation, in
/// milliseconds.
pub fn longest_in_flight_ms(observed: &Observed) -> u64 {
    saga_spans(observed)
        .values()
        .map(|(first, last)| last - first)
        .max()
        .unwrap_or(0)
}

/// From `heal_unix_ms` until every transfer that had started by then was settled at every
/// participant: the last outcome (2PC) or barrier (saga) of those, in milliseconds after the
/// heal. 0 when nothing was left open at the heal.
pub fn settled_after_ms(observed: &Observed, protocol: Protocol, heal_unix_ms: u64) -> u64 {
    let last = match protocol {
        // A transfer begun by the heal: prepared somewhere by then. Settled when its last
        // participant recorded its outcome.
        Protocol::TwoPhase => observed
            .outcomes
            .values()
            .filter(|records| {
                records.iter().any(|r| {
                    r.writes > 0
                        && r.prepared_at_unix_ms > 0
                        && r.prepared_at_unix_ms <= heal_unix_ms
                })
            })
            .flat_map(|records| records.iter().map(|r| r.at_unix_ms))
            .max(),
        Protocol::Saga => saga_spans(observed)
            .values()
            .filter(|(first, _)| *first <= heal_unix_ms)
            .map(|(_, last)| *last)
            .max(),
        Protocol::Events => transfer_spans(observed)
            .into_iter()
            .filter(|t| t.accepted_at <= heal_unix_ms)
            .map(|t| t.settled_at.unwrap_or(u64::MAX))
            .max(),
    };
    last.map_or(0, |t| t.saturating_sub(heal_unix_ms))
}

/// One transfer of the events protocol, from its records: accepted when the source's step
/// committed, settled when the destination applied its own or the source refunded; `amount`
/// the money it took from the source meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferSpan {
    pub accepted_at: u64,
    pub settled_at: Option<u64>,
    pub amount: i64,
    pub refunded: bool,
}

/// Every accepted transfer's span, from the records.
pub fn transfer_spans(observed: &Observed) -> Vec<TransferSpan> {
    let mut out = Vec::new();
    for records in observed.feeds.transfers.values() {
        let (Some(source), dest) = super::sides(records) else {
            continue;
        };
        let state = pb::TransferState::try_from(source.state).unwrap_or_default();
        if state == pb::TransferState::Rejected {
            continue;
        }
        let refunded = state == pb::TransferState::Refunded;
        let settled_at = if refunded {
            Some(source.settled_at_unix_ms)
        } else {
            dest.filter(|d| d.state == pb::TransferState::Credited as i32)
                .map(|d| d.settled_at_unix_ms)
        };
        out.push(TransferSpan {
            accepted_at: source.accepted_at_unix_ms,
            settled_at,
            amount: -source.changes.iter().filter_map(|c| c.delta).sum::<i64>(),
            refunded,
        });
    }
    out
}

/// Money taken from a source and not yet at its destination (or back), sampled at the end of
/// each `bucket_ms` bucket from `start_unix_ms`, for `buckets` buckets.
pub fn money_in_flight(
    spans: &[TransferSpan],
    start_unix_ms: u64,
    bucket_ms: u64,
    buckets: usize,
) -> Vec<i64> {
    (1..=buckets as u64)
        .map(|b| {
            let at = start_unix_ms + b * bucket_ms;
            spans
                .iter()
                .filter(|t| t.accepted_at <= at && t.settled_at.is_none_or(|s| s > at))
                .map(|t| t.amount)
                .sum()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::bank::Recorded;
    use pb::TxnState::Committed;

    fn at(mut r: Recorded, prepared: u64, decided: u64) -> Recorded {
        r.prepared_at_unix_ms = prepared;
        r.at_unix_ms = decided;
        r
    }

    fn barrier(step: u32, t: u64) -> (String, pb::Barrier) {
        (
            "p1".into(),
            pb::Barrier {
                saga_id: "s".into(),
                step,
                action: pb::BarrierAction::Execute as i32,
                outcome: pb::BarrierOutcome::Executed as i32,
                at_unix_ms: t,
            },
        )
    }

    #[test]
    fn windows_come_from_the_recorded_times_and_leave_reads_out() {
        let both = ["p1", "p2"];
        let mut outcomes = HashMap::new();
        outcomes.insert(
            "1".to_string(),
            vec![
                at(Recorded::new("p1", Committed, &both, 1), 1_000, 1_040),
                at(Recorded::new("p2", Committed, &both, 1), 1_010, 1_300),
            ],
        );
        // An audit: read-only, in doubt far longer, and not counted.
        outcomes.insert(
            "2".to_string(),
            vec![at(Recorded::new("p1", Committed, &both, 0), 1_000, 9_000)],
        );
        outcomes.insert(
            "3".to_string(),
            vec![at(Recorded::new("p1", Committed, &both, 1), 2_000, 2_050)],
        );
        let mut observed = Observed {
            outcomes,
            ..Default::default()
        };
        assert_eq!(longest_in_doubt_ms(&observed), 290);
        assert_eq!(settled_after_ms(&observed, Protocol::TwoPhase, 1_100), 200);
        assert_eq!(settled_after_ms(&observed, Protocol::TwoPhase, 500), 0);
        observed
            .barriers
            .insert("s1".into(), vec![barrier(0, 5_000), barrier(1, 5_700)]);
        observed
            .barriers
            .insert("s2".into(), vec![barrier(0, 6_000), barrier(1, 6_100)]);
        assert_eq!(longest_in_flight_ms(&observed), 700);
        assert_eq!(settled_after_ms(&observed, Protocol::Saga, 5_500), 200);
    }
}
