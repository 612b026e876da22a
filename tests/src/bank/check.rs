//! The checks that prove what a bank history kept: the total conserved, every 2PC txn atomic
//! at its participants, every saga completed or compensated, nothing acknowledged lost, and no
//! lost update. Each judges the clients' history against what the participants recorded
//! ([`Observed`]) and returns the [`Violation`]s it found, empty when all hold.

use std::collections::{BTreeSet, HashSet};

use txn_proto::pb::v1 as pb;

use super::violation::Violation;
use super::{Observed, Outcome, Protocol, Record};

/// Saga checks from the participants' barrier records: every saga ended completed (each of its
/// `steps` executed, nothing compensated) or compensated (every executed step undone), with at
/// most one record per (saga, step, action).
pub fn check_sagas(observed: &Observed, steps: u32) -> Vec<Violation> {
    use pb::{BarrierAction as A, BarrierOutcome as O};
    let mut problems = Vec::new();
    let mut sagas: Vec<_> = observed.barriers.iter().collect();
    sagas.sort_by(|a, b| a.0.cmp(b.0));
    for (saga, records) in sagas {
        let find = |step: u32, action: A| -> Vec<O> {
            records
                .iter()
                .filter(|(_, b)| b.step == step && b.action == action as i32)
                .map(|(_, b)| O::try_from(b.outcome).unwrap_or(O::Unspecified))
                .collect()
        };
        let compensating = records
            .iter()
            .any(|(_, b)| b.action == A::Compensate as i32);
        for step in 0..steps {
            let x = find(step, A::Execute);
            let c = find(step, A::Compensate);
            if x.len() > 1 || c.len() > 1 {
                problems.push(Violation::StepRecordedTwice {
                    saga: saga.clone(),
                    step,
                });
            }
            let executed = x.first() == Some(&O::Executed);
            if compensating {
                if executed && c.first() != Some(&O::Compensated) {
                    problems.push(Violation::StepNotCompensated {
                        saga: saga.clone(),
                        step,
                        compensations: c,
                    });
                }
            } else if !executed && !x.contains(&O::ExecuteFailed) {
                // No compensation anywhere: either every step ran, or the first failed one
                // ended it (a failure at step 0 needs no compensation).
                let failed_before =
                    (0..step).any(|s| find(s, A::Execute).contains(&O::ExecuteFailed));
                if !failed_before {
                    problems.push(Violation::StepNeverExecuted {
                        saga: saga.clone(),
                        step,
                    });
                }
            } else if executed && (0..step).any(|s| find(s, A::Execute).contains(&O::ExecuteFailed))
            {
                problems.push(Violation::StepAfterFailure {
                    saga: saga.clone(),
                    step,
                });
            }
        }
        if !compensating
            && (0..steps).any(|s| find(s, A::Execute).contains(&O::ExecuteFailed))
            && (0..steps).any(|s| find(s, A::Execute).contains(&O::Executed))
        {
            problems.push(Violation::FailedSagaNotCompensated { saga: saga.clone() });
        }
    }
    problems
}

/// Atomicity from the participants' own records, for every txn they recorded, whatever the
/// clients were told (or not told): a txn committed anywhere must be committed at every one of
/// its participants. The members are those any of its records names (every prepared record
/// names them all); a commit that names none is a one-phase commit, atomic by itself.
pub fn check_outcomes(observed: &Observed) -> Vec<Violation> {
    let mut problems = Vec::new();
    let mut txns: Vec<_> = observed.outcomes.iter().collect();
    txns.sort_by(|a, b| a.0.cmp(b.0));
    for (txn, records) in txns {
        if !records.iter().any(|r| r.state == pb::TxnState::Committed) {
            continue;
        }
        let members: BTreeSet<&str> = records
            .iter()
            .flat_map(|r| r.members.iter().map(String::as_str))
            .collect();
        for member in members {
            let state = records
                .iter()
                .find(|r| r.participant == member)
                .map(|r| r.state)
                .unwrap_or(pb::TxnState::Unknown);
            if state != pb::TxnState::Committed {
                problems.push(Violation::PartialCommit {
                    txn: txn.clone(),
                    state,
                    member: member.to_string(),
                });
            }
        }
    }
    problems
}

/// How many txns the participants' records let [`check_outcomes`] judge with something at
/// stake: every txn that wrote at some participant (prepared or committed there), whatever
/// its client heard. Txns that wrote nowhere (the audits' reads, transfers refused before
/// any participant prepared them) are atomic trivially and not counted.
pub fn txns_checked(observed: &Observed) -> usize {
    observed
        .outcomes
        .values()
        .filter(|records| records.iter().any(|r| r.writes > 0))
        .count()
}

/// What became of the calls whose client got no answer, from the participants' records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct UnknownResolved {
    /// Applied everywhere: a 2PC txn committed at its participants, or a saga that ran every
    /// step and compensated none.
    pub committed: usize,
    /// Left no effect: aborted, compensated, or never reached a participant.
    pub not_applied: usize,
}

/// Matches the unanswered calls against the transfers the participants applied that no
/// client heard of (`setup`: txns outside the history, such as the bank's seeding). More of
/// those than unanswered calls means a request ran twice.
pub fn resolve_unknown(
    history: &[Record],
    observed: &Observed,
    setup: &[String],
) -> (UnknownResolved, Vec<Violation>) {
    let known: HashSet<&str> = history
        .iter()
        .filter_map(|r| match &r.outcome {
            Outcome::Committed { txn } | Outcome::Aborted { txn, .. } => Some(txn.as_str()),
            Outcome::Unknown { .. } | Outcome::NotStarted { .. } => None,
        })
        .chain(setup.iter().map(String::as_str))
        .collect();
    let unknown = history
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Unknown { .. }))
        .count();
    let committed = if observed.protocol == Some(Protocol::Events) {
        observed
            .feeds
            .transfers
            .iter()
            .filter(|(id, _)| !known.contains(id.as_str()))
            .filter(|(_, records)| {
                super::sides(records)
                    .0
                    .is_some_and(|s| s.state != pb::TransferState::Rejected as i32)
            })
            .count()
    } else if observed.protocol == Some(Protocol::Saga) {
        observed
            .barriers
            .iter()
            .filter(|(saga, _)| !known.contains(saga.as_str()))
            .filter(|(_, records)| {
                let (executed, compensated) = saga_progress(records);
                executed >= SAGA_STEPS && !compensated
            })
            .count()
    } else {
        observed
            .outcomes
            .iter()
            .filter(|(txn, _)| !known.contains(txn.as_str()))
            // A transfer between two participants names both; a commit naming none is a
            // one-branch txn (the read paths' staleness markers), not a transfer.
            .filter(|(_, records)| {
                records.iter().any(|r| {
                    r.state == pb::TxnState::Committed && r.writes > 0 && !r.members.is_empty()
                })
            })
            .count()
    };
    let mut problems = Vec::new();
    if committed > unknown {
        problems.push(Violation::PhantomCommits { committed, unknown });
    }
    (
        UnknownResolved {
            committed,
            not_applied: unknown.saturating_sub(committed),
        },
        problems,
    )
}

/// Steps of a bank transfer as a saga: the debit, then the credit.
const SAGA_STEPS: usize = 2;

/// How far a saga got, from its barrier records: steps executed, and whether it compensated.
fn saga_progress(records: &[(String, pb::Barrier)]) -> (usize, bool) {
    let executed = records
        .iter()
        .filter(|(_, b)| b.outcome == pb::BarrierOutcome::Executed as i32)
        .count();
    let compensated = records
        .iter()
        .any(|(_, b)| b.action == pb::BarrierAction::Compensate as i32);
    (executed, compensated)
}

/// Every invariant that failed; empty when all hold.
pub fn check(initial: &[i64], history: &[Record], observed: &Observed) -> Vec<Violation> {
    use pb::TxnState::{Committed, Prepared};
    let mut problems = Vec::new();
    let total_before: i64 = initial.iter().sum();
    let total_after: i64 = observed.balances.iter().sum();
    if total_before != total_after {
        problems.push(Violation::TotalNotConserved {
            before: total_before,
            after: total_after,
        });
    }
    if observed.in_doubt > 0 {
        problems.push(Violation::InDoubt {
            txns: observed.in_doubt,
        });
    }
    problems.extend(check_outcomes(observed));
    if observed.protocol == Some(Protocol::Saga) {
        problems.extend(check_sagas(observed, SAGA_STEPS as u32));
    }
    problems.extend(super::check_events(observed));
    let mut expected = initial.to_vec();
    for r in history {
        let (txn, client_committed) = match &r.outcome {
            Outcome::Committed { txn } => (txn, true),
            Outcome::Aborted { txn, .. } => (txn, false),
            Outcome::Unknown { .. } | Outcome::NotStarted { .. } => continue,
        };
        if observed.protocol == Some(Protocol::Events) {
            // The transfer records decide; see `check_transfers`.
            if applies(r, observed) {
                expected[r.transfer.from] -= r.transfer.amount;
                expected[r.transfer.to] += r.transfer.amount;
            }
            continue;
        }
        if observed.protocol == Some(Protocol::Saga) {
            let records = observed.barriers.get(txn).map(Vec::as_slice).unwrap_or(&[]);
            let (executed, compensated) = saga_progress(records);
            if client_committed && (compensated || executed < SAGA_STEPS) {
                problems.push(Violation::AcknowledgedSagaLost {
                    saga: txn.clone(),
                    executed,
                    compensated,
                });
            }
            if !client_committed && executed > 0 && !compensated {
                problems.push(Violation::AbortedSagaApplied {
                    saga: txn.clone(),
                    executed,
                });
            }
            if client_committed {
                expected[r.transfer.from] -= r.transfer.amount;
                expected[r.transfer.to] += r.transfer.amount;
            }
            continue;
        }
        let Some(&(a, b)) = observed.states.get(txn) else {
            problems.push(Violation::NoStateObserved { txn: txn.clone() });
            continue;
        };
        if a == Prepared || b == Prepared {
            problems.push(Violation::StillPrepared {
                txn: txn.clone(),
                from: a,
                to: b,
            });
        }
        if (a == Committed) != (b == Committed) {
            problems.push(Violation::CommittedAtOneParticipant {
                txn: txn.clone(),
                from: a,
                to: b,
            });
        }
        if client_committed && !(a == Committed && b == Committed) {
            problems.push(Violation::AcknowledgedTxnLost {
                txn: txn.clone(),
                from: a,
                to: b,
            });
        }
        if !client_committed && (a == Committed || b == Committed) {
            problems.push(Violation::AbortedTxnApplied {
                txn: txn.clone(),
                from: a,
                to: b,
            });
        }
        if client_committed {
            expected[r.transfer.from] -= r.transfer.amount;
            expected[r.transfer.to] += r.transfer.amount;
        }
    }
    if let Some(n) = lost_updates(initial, history, observed)
        && n > 0
    {
        for (i, (want, got)) in expected.iter().zip(&observed.balances).enumerate() {
            if want != got {
                problems.push(Violation::LostUpdate {
                    account: i,
                    holds: *got,
                    expected: *want,
                });
            }
        }
    }
    problems
}

/// Whether the client's answer says the transfer moved the money: committed, and under the
/// events protocol (where committed means accepted) not one the destination refuses, which is
/// refunded.
fn applies(r: &Record, observed: &Observed) -> bool {
    matches!(r.outcome, Outcome::Committed { .. })
        && !(observed.protocol == Some(Protocol::Events) && r.transfer.refused_credit)
}

/// Accounts whose final balance differs from what the acknowledged transfers give. `None`
/// when some call had no answer, so the expected balances are not known.
pub fn lost_updates(initial: &[i64], history: &[Record], observed: &Observed) -> Option<usize> {
    if history
        .iter()
        .any(|r| matches!(r.outcome, Outcome::Unknown { .. }))
    {
        return None;
    }
    let mut expected = initial.to_vec();
    for r in history.iter().filter(|r| applies(r, observed)) {
        expected[r.transfer.from] -= r.transfer.amount;
        expected[r.transfer.to] += r.transfer.amount;
    }
    Some(
        expected
            .iter()
            .zip(&observed.balances)
            .filter(|(want, got)| want != got)
            .count(),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use super::*;
    use crate::bank::observe::Recorded;
    use crate::bank::{Transfer, to_strings};
    use pb::TxnState::{Aborted, Committed, Prepared};

    fn rec(from: usize, to: usize, amount: i64, outcome: Outcome) -> Record {
        Record {
            transfer: Transfer {
                from,
                to,
                amount,
                refused_credit: false,
            },
            outcome,
            latency: Duration::ZERO,
            at: Duration::ZERO,
        }
    }

    fn committed(t: &str) -> Outcome {
        Outcome::Committed { txn: t.into() }
    }

    #[test]
    fn a_clean_history_passes() {
        let history = vec![
            rec(0, 1, 10, committed("1.1")),
            rec(
                1,
                0,
                500,
                Outcome::Aborted {
                    txn: "1.2".into(),
                    reason: "NO".into(),
                },
            ),
        ];
        let observed = Observed {
            balances: vec![90, 110],
            states: [
                ("1.1".into(), (Committed, Committed)),
                ("1.2".into(), (Aborted, Aborted)),
            ]
            .into_iter()
            .collect(),
            in_doubt: 0,
            outcomes: HashMap::new(),
            ..Default::default()
        };
        assert_eq!(
            to_strings(&check(&[100, 100], &history, &observed)),
            Vec::<String>::new()
        );
    }

    #[test]
    fn planted_faults_are_caught() {
        let history = vec![
            rec(0, 1, 10, committed("1.1")),
            rec(0, 1, 5, committed("1.2")),
        ];
        let observed = Observed {
            // 1.2 committed at p1 only: money vanished.
            balances: vec![85, 110],
            states: [
                ("1.1".into(), (Committed, Committed)),
                ("1.2".into(), (Committed, Prepared)),
            ]
            .into_iter()
            .collect(),
            in_doubt: 1,
            outcomes: HashMap::new(),
            ..Default::default()
        };
        let problems = to_strings(&check(&[100, 100], &history, &observed)).join("\n");
        assert!(problems.contains("not conserved"), "{problems}");
        assert!(
            problems.contains("atomicity violation: txn 1.2"),
            "{problems}"
        );
        assert!(problems.contains("acknowledged txn 1.2 lost"), "{problems}");
        assert!(problems.contains("still prepared"), "{problems}");
        assert!(problems.contains("lost update"), "{problems}");
    }

    #[test]
    fn outcome_records_reveal_a_half_commit_the_client_never_saw() {
        let both = ["p1", "p2"];
        let mut outcomes = HashMap::new();
        outcomes.insert(
            "2.7".to_string(),
            vec![
                Recorded::new("p1", Committed, &both, 1),
                Recorded::new("p2", Aborted, &[], 0),
            ],
        );
        outcomes.insert(
            "2.8".to_string(),
            vec![Recorded::new("p1", Committed, &both, 1)],
        );
        outcomes.insert(
            "2.9".to_string(),
            vec![
                Recorded::new("p1", Committed, &both, 1),
                Recorded::new("p2", Committed, &both, 1),
            ],
        );
        // The commit names no members, but the other record does.
        outcomes.insert(
            "3.1".to_string(),
            vec![
                Recorded::new("p1", Committed, &[], 1),
                Recorded::new("p2", Aborted, &both, 1),
            ],
        );
        // A one-phase commit, and an audit's read-only commit.
        outcomes.insert(
            "3.2".to_string(),
            vec![Recorded::new("p2", Committed, &[], 2)],
        );
        outcomes.insert(
            "3.3".to_string(),
            vec![
                Recorded::new("p1", Committed, &both, 0),
                Recorded::new("p2", Committed, &both, 0),
            ],
        );
        let observed = Observed {
            outcomes,
            ..Default::default()
        };
        let problems = to_strings(&check_outcomes(&observed));
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("2.7") && problems[0].contains("Aborted at p2"));
        assert!(problems[1].contains("2.8") && problems[1].contains("Unknown at p2"));
        assert!(problems[2].contains("3.1") && problems[2].contains("Aborted at p2"));
        assert_eq!(txns_checked(&observed), 5, "every txn that wrote somewhere");
        // An audit aborted on a lock wait wrote nothing: atomic trivially, not counted.
        let mut observed = observed;
        observed.outcomes.insert(
            "3.4".to_string(),
            vec![Recorded::new("p1", Aborted, &both, 0)],
        );
        assert_eq!(txns_checked(&observed), 5);
    }

    #[test]
    fn unanswered_calls_are_matched_to_what_the_participants_applied() {
        let both = ["p1", "p2"];
        let unknown = || Outcome::Unknown {
            error: "Unavailable".into(),
        };
        let history = vec![
            rec(0, 1, 10, committed("1.1")),
            rec(0, 1, 10, unknown()),
            rec(0, 1, 10, unknown()),
        ];
        let mut outcomes = HashMap::new();
        for t in ["1.1", "1.5"] {
            outcomes.insert(
                t.to_string(),
                vec![
                    Recorded::new("p1", Committed, &both, 1),
                    Recorded::new("p2", Committed, &both, 1),
                ],
            );
        }
        outcomes.insert(
            "1.6".to_string(),
            vec![Recorded::new("p1", Aborted, &both, 1)],
        );
        let mut observed = Observed {
            outcomes,
            protocol: Some(Protocol::TwoPhase),
            ..Default::default()
        };
        let seed = vec!["1.0".to_string()];
        observed.outcomes.insert(
            "1.0".to_string(),
            vec![Recorded::new("p1", Committed, &both, 20)],
        );
        let (resolved, problems) = resolve_unknown(&history, &observed, &seed);
        assert_eq!(
            resolved,
            UnknownResolved {
                committed: 1,
                not_applied: 1
            }
        );
        assert!(problems.is_empty(), "{problems:?}");
        // A one-branch commit (a staleness marker) is not a transfer.
        observed.outcomes.insert(
            "1.9".to_string(),
            vec![Recorded::new("p2", Committed, &[], 1)],
        );
        let (resolved, problems) = resolve_unknown(&history, &observed, &seed);
        assert_eq!(resolved.committed, 1);
        assert!(problems.is_empty(), "{problems:?}");
        // A third committed transfer nobody heard of: one call ran twice.
        observed.outcomes.insert(
            "1.7".to_string(),
            vec![Recorded::new("p2", Committed, &both, 2)],
        );
        observed.outcomes.insert(
            "1.8".to_string(),
            vec![Recorded::new("p2", Committed, &both, 2)],
        );
        let (_, problems) = resolve_unknown(&history, &observed, &seed);
        assert_eq!(
            problems,
            vec![Violation::PhantomCommits {
                committed: 3,
                unknown: 2
            }]
        );
    }
}
