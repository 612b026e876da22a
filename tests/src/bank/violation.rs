//! What the bank's checkers can find wrong, one [`Violation`] variant per kind of finding.
//!
//! Each variant prints as the sentence the reports and the tests have always shown, so a
//! report reads the same whether it was rendered from this type or read from report.json.
//! The variants also say which guarantee they break, which is how `harness compare` counts
//! atomicity violations and lost acknowledgements without searching the sentences for words.

use std::fmt;

use serde::{Serialize, Serializer};
use txn_proto::pb::v1 as pb;

/// One finding of [`check`](fn@super::check), [`check_outcomes`](super::check_outcomes) or
/// [`check_sagas`](super::check_sagas).
///
/// Which findings fail a run depends on the caller, and this type leaves that to them:
/// `harness run` and the integration tests fail on any finding, while `harness compare`
/// injects faults on purpose, so it fails a run only when a guarantee the protocol must keep
/// is broken (see `RunReport::is_failure`). There, the variants for which
/// [`breaks_atomicity`](Violation::breaks_atomicity) or
/// [`loses_acknowledged`](Violation::loses_acknowledged) hold are counted for that decision;
/// every other finding is only listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// The sum of the balances after the run differs from the sum before it.
    TotalNotConserved { before: i64, after: i64 },
    /// Participants still hold prepared txns once the system is quiet.
    InDoubt { txns: u64 },
    /// From the participants' own records: a txn committed at some of its participants is in
    /// `state` at `member`.
    PartialCommit {
        txn: String,
        state: pb::TxnState,
        member: String,
    },
    /// A saga step has more than one execute record, or more than one compensate record.
    StepRecordedTwice { saga: String, step: u32 },
    /// A compensating saga left an executed step without its compensation; `compensations`
    /// holds the step's compensate records.
    StepNotCompensated {
        saga: String,
        step: u32,
        compensations: Vec<pb::BarrierOutcome>,
    },
    /// A saga that compensated nothing never executed this step, though no earlier step
    /// failed.
    StepNeverExecuted { saga: String, step: u32 },
    /// A saga step executed although an earlier step of the saga had failed.
    StepAfterFailure { saga: String, step: u32 },
    /// A step of the saga failed, and the steps that did execute were not compensated.
    FailedSagaNotCompensated { saga: String },
    /// The client saw the saga commit, yet fewer than all its steps executed, or it was
    /// compensated.
    AcknowledgedSagaLost {
        saga: String,
        executed: usize,
        compensated: bool,
    },
    /// The client saw the saga abort, yet some of its steps executed and none was undone.
    AbortedSagaApplied { saga: String, executed: usize },
    /// A participant of the txn gave no state for it.
    NoStateObserved { txn: String },
    /// The txn is still prepared at one of its two participants.
    StillPrepared {
        txn: String,
        from: pb::TxnState,
        to: pb::TxnState,
    },
    /// The txn committed at one of its two participants and not at the other.
    CommittedAtOneParticipant {
        txn: String,
        from: pb::TxnState,
        to: pb::TxnState,
    },
    /// The client saw the txn commit, but it is not committed at both participants.
    AcknowledgedTxnLost {
        txn: String,
        from: pb::TxnState,
        to: pb::TxnState,
    },
    /// The client saw the txn abort, but a participant committed it.
    AbortedTxnApplied {
        txn: String,
        from: pb::TxnState,
        to: pb::TxnState,
    },
    /// An account's balance differs from what the acknowledged transfers give.
    LostUpdate {
        account: usize,
        holds: i64,
        expected: i64,
    },
    /// The participants hold more committed transfers that no client heard of than there were
    /// calls with no answer: some request ran more than once.
    PhantomCommits { committed: usize, unknown: usize },
    /// A participant's feed skips an offset.
    FeedGap {
        participant: String,
        expected: u64,
        found: u64,
    },
    /// A change a participant recorded (a commit, a saga step, a transfer's step) has no
    /// event in its feed.
    EventLost {
        participant: String,
        txn: String,
        what: String,
    },
    /// An event in a participant's feed describes a change it has no record of.
    EventWithoutChange {
        participant: String,
        offset: u64,
        txn: String,
    },
    /// Events protocol: the client saw the transfer accepted, but the source has no debit.
    AcknowledgedTransferLost { transfer: String },
    /// Events protocol: the client saw the transfer refused, but the source debited it.
    AbortedTransferApplied { transfer: String },
    /// Events protocol: once quiet, the transfer is still in flight.
    TransferUnsettled { transfer: String },
    /// Events protocol: the source's and the destination's records of a transfer cannot both
    /// be true.
    TransferRecordsDisagree { transfer: String, detail: String },
    /// Events protocol: an account holds something else than the effects its participants
    /// recorded give: an effect applied twice, or lost.
    EffectMismatch {
        account: String,
        holds: i64,
        expected: i64,
    },
    /// The read model has not caught up with a feed once everything is quiet.
    ReadModelBehind {
        participant: String,
        offset: u64,
        head: u64,
    },
    /// The read model applied a different number of a feed's events than the feed holds.
    ReadModelCountOff {
        participant: String,
        applied: u64,
        head: u64,
    },
    /// The read model's view of an account differs from what the participant holds.
    ReadModelWrong {
        account: String,
        view: &'static str,
        holds: i64,
        expected: i64,
    },
}

impl Violation {
    /// A txn applied at some participants and not at others (2PC), or a saga left half done:
    /// what `harness compare` reports as an atomicity violation.
    pub fn breaks_atomicity(&self) -> bool {
        matches!(
            self,
            Violation::PartialCommit { .. }
                | Violation::CommittedAtOneParticipant { .. }
                | Violation::StepNotCompensated { .. }
                | Violation::StepNeverExecuted { .. }
                | Violation::StepAfterFailure { .. }
                | Violation::FailedSagaNotCompensated { .. }
        )
    }

    /// The client was told COMMITTED, and what it was promised is not all there.
    pub fn loses_acknowledged(&self) -> bool {
        matches!(
            self,
            Violation::AcknowledgedTxnLost { .. }
                | Violation::AcknowledgedSagaLost { .. }
                | Violation::AcknowledgedTransferLost { .. }
        )
    }

    /// An event lost: a change with no event, a gap in a feed, or an event a consumer (the
    /// read model) did not apply.
    pub fn loses_events(&self) -> bool {
        matches!(
            self,
            Violation::EventLost { .. }
                | Violation::FeedGap { .. }
                | Violation::ReadModelBehind { .. }
        )
    }

    /// An effect applied twice or not at all (the inbox and the read model's cursor exist to
    /// prevent both).
    pub fn double_or_lost_effect(&self) -> bool {
        matches!(
            self,
            Violation::EffectMismatch { .. }
                | Violation::ReadModelCountOff { .. }
                | Violation::ReadModelWrong { .. }
                | Violation::EventWithoutChange { .. }
        )
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::TotalNotConserved { before, after } => write!(
                f,
                "bank total not conserved: {before} before, {after} after"
            ),
            Violation::InDoubt { txns } => write!(f, "{txns} txns still prepared (in doubt)"),
            Violation::PartialCommit { txn, state, member } => write!(
                f,
                "atomicity violation: txn {txn} committed at some participants but {state:?} at {member}"
            ),
            Violation::StepRecordedTwice { saga, step } => {
                write!(f, "saga {saga} step {step}: more than one effect recorded")
            }
            Violation::StepNotCompensated {
                saga,
                step,
                compensations,
            } => write!(
                f,
                "saga {saga} step {step}: executed but not compensated ({compensations:?})"
            ),
            Violation::StepNeverExecuted { saga, step } => write!(
                f,
                "saga {saga} step {step}: never executed, yet nothing was compensated"
            ),
            Violation::StepAfterFailure { saga, step } => write!(
                f,
                "saga {saga} step {step}: executed after an earlier step failed"
            ),
            Violation::FailedSagaNotCompensated { saga } => write!(
                f,
                "saga {saga}: a step failed but executed steps were not compensated"
            ),
            Violation::AcknowledgedSagaLost {
                saga,
                executed,
                compensated,
            } => write!(
                f,
                "acknowledged saga {saga} lost: client saw COMMITTED, but {executed} steps executed{}",
                if *compensated {
                    " and it was compensated"
                } else {
                    ""
                }
            ),
            Violation::AbortedSagaApplied { saga, executed } => write!(
                f,
                "saga {saga}: client saw ABORTED, yet {executed} steps executed and none was compensated"
            ),
            Violation::NoStateObserved { txn } => write!(f, "txn {txn}: no state observed"),
            Violation::StillPrepared { txn, from, to } => {
                write!(f, "txn {txn}: still prepared ({from:?}, {to:?})")
            }
            Violation::CommittedAtOneParticipant { txn, from, to } => write!(
                f,
                "atomicity violation: txn {txn} committed at one participant only ({from:?}, {to:?})"
            ),
            Violation::AcknowledgedTxnLost { txn, from, to } => write!(
                f,
                "acknowledged txn {txn} lost: client saw COMMITTED, participants hold ({from:?}, {to:?})"
            ),
            Violation::AbortedTxnApplied { txn, from, to } => write!(
                f,
                "txn {txn}: client saw ABORTED, participants hold ({from:?}, {to:?})"
            ),
            Violation::LostUpdate {
                account,
                holds,
                expected,
            } => write!(
                f,
                "lost update: account #{account} holds {holds}, but the committed transfers give {expected}"
            ),
            Violation::PhantomCommits { committed, unknown } => write!(
                f,
                "{committed} committed transfers no client heard of, from only {unknown} calls with no answer"
            ),
            Violation::FeedGap {
                participant,
                expected,
                found,
            } => write!(
                f,
                "event lost: {participant}'s feed has offset {found} where {expected} should be"
            ),
            Violation::EventLost {
                participant,
                txn,
                what,
            } => write!(
                f,
                "event lost: {participant} recorded a change of {txn} but its feed holds no {what} event of it"
            ),
            Violation::EventWithoutChange {
                participant,
                offset,
                txn,
            } => write!(
                f,
                "event without its change: {participant}'s event {offset} describes {txn}, which it has no record of"
            ),
            Violation::AcknowledgedTransferLost { transfer } => write!(
                f,
                "acknowledged transfer {transfer} lost: client saw ACCEPTED, the source has no debit"
            ),
            Violation::AbortedTransferApplied { transfer } => write!(
                f,
                "transfer {transfer}: client saw ABORTED, yet the source debited it"
            ),
            Violation::TransferUnsettled { transfer } => {
                write!(f, "transfer {transfer}: still in flight once quiet")
            }
            Violation::TransferRecordsDisagree { transfer, detail } => {
                write!(f, "transfer {transfer}: records disagree ({detail})")
            }
            Violation::EffectMismatch {
                account,
                holds,
                expected,
            } => write!(
                f,
                "double or lost effect: {account} holds {holds}, but its recorded effects give {expected}"
            ),
            Violation::ReadModelBehind {
                participant,
                offset,
                head,
            } => write!(
                f,
                "event lost: the read model reflects {participant}'s feed up to {offset}, its head is {head}"
            ),
            Violation::ReadModelCountOff {
                participant,
                applied,
                head,
            } => write!(
                f,
                "the read model applied {applied} of {participant}'s {head} events: not exactly once"
            ),
            Violation::ReadModelWrong {
                account,
                view,
                holds,
                expected,
            } => write!(
                f,
                "the read model's {view} view holds {holds} for {account}, the participant holds {expected}"
            ),
        }
    }
}

/// In report.json a finding is its sentence, as it always was.
impl Serialize for Violation {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// The findings as the sentences a report prints, in order: for tests that compare or print
/// them as text.
pub fn to_strings(found: &[Violation]) -> Vec<String> {
    found.iter().map(Violation::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::TxnState::{Committed, Prepared};

    /// One finding of every kind, each with the sentence it printed as when the checkers
    /// returned strings.
    fn every_kind() -> Vec<(Violation, &'static str)> {
        let saga = || "3.4".to_string();
        let txn = || "1.2".to_string();
        vec![
            (
                Violation::TotalNotConserved {
                    before: 200,
                    after: 195,
                },
                "bank total not conserved: 200 before, 195 after",
            ),
            (
                Violation::InDoubt { txns: 2 },
                "2 txns still prepared (in doubt)",
            ),
            (
                Violation::PartialCommit {
                    txn: txn(),
                    state: pb::TxnState::Aborted,
                    member: "p2".into(),
                },
                "atomicity violation: txn 1.2 committed at some participants but Aborted at p2",
            ),
            (
                Violation::StepRecordedTwice {
                    saga: saga(),
                    step: 1,
                },
                "saga 3.4 step 1: more than one effect recorded",
            ),
            (
                Violation::StepNotCompensated {
                    saga: saga(),
                    step: 0,
                    compensations: vec![pb::BarrierOutcome::NullCompensated],
                },
                "saga 3.4 step 0: executed but not compensated ([NullCompensated])",
            ),
            (
                Violation::StepNeverExecuted {
                    saga: saga(),
                    step: 1,
                },
                "saga 3.4 step 1: never executed, yet nothing was compensated",
            ),
            (
                Violation::StepAfterFailure {
                    saga: saga(),
                    step: 1,
                },
                "saga 3.4 step 1: executed after an earlier step failed",
            ),
            (
                Violation::FailedSagaNotCompensated { saga: saga() },
                "saga 3.4: a step failed but executed steps were not compensated",
            ),
            (
                Violation::AcknowledgedSagaLost {
                    saga: saga(),
                    executed: 1,
                    compensated: true,
                },
                "acknowledged saga 3.4 lost: client saw COMMITTED, but 1 steps executed and it was compensated",
            ),
            (
                Violation::AcknowledgedSagaLost {
                    saga: saga(),
                    executed: 1,
                    compensated: false,
                },
                "acknowledged saga 3.4 lost: client saw COMMITTED, but 1 steps executed",
            ),
            (
                Violation::AbortedSagaApplied {
                    saga: saga(),
                    executed: 2,
                },
                "saga 3.4: client saw ABORTED, yet 2 steps executed and none was compensated",
            ),
            (
                Violation::NoStateObserved { txn: txn() },
                "txn 1.2: no state observed",
            ),
            (
                Violation::StillPrepared {
                    txn: txn(),
                    from: Committed,
                    to: Prepared,
                },
                "txn 1.2: still prepared (Committed, Prepared)",
            ),
            (
                Violation::CommittedAtOneParticipant {
                    txn: txn(),
                    from: Committed,
                    to: Prepared,
                },
                "atomicity violation: txn 1.2 committed at one participant only (Committed, Prepared)",
            ),
            (
                Violation::AcknowledgedTxnLost {
                    txn: txn(),
                    from: Committed,
                    to: Prepared,
                },
                "acknowledged txn 1.2 lost: client saw COMMITTED, participants hold (Committed, Prepared)",
            ),
            (
                Violation::AbortedTxnApplied {
                    txn: txn(),
                    from: Committed,
                    to: Prepared,
                },
                "txn 1.2: client saw ABORTED, participants hold (Committed, Prepared)",
            ),
            (
                Violation::LostUpdate {
                    account: 3,
                    holds: 90,
                    expected: 100,
                },
                "lost update: account #3 holds 90, but the committed transfers give 100",
            ),
            (
                Violation::PhantomCommits {
                    committed: 3,
                    unknown: 2,
                },
                "3 committed transfers no client heard of, from only 2 calls with no answer",
            ),
        ]
    }

    #[test]
    fn every_kind_prints_its_old_sentence() {
        for (v, text) in every_kind() {
            assert_eq!(v.to_string(), text);
            assert_eq!(
                serde_json::to_value(&v).unwrap(),
                serde_json::Value::String(text.into())
            );
        }
    }

    /// `harness compare` used to count findings by searching their sentences for these words;
    /// the variants must classify every kind the same way.
    #[test]
    fn the_classification_matches_the_words_compare_searched_for() {
        const ATOMICITY: &[&str] = &[
            "atomicity violation",
            "executed but not compensated",
            "never executed",
            "executed after an earlier step failed",
            "were not compensated",
        ];
        for (v, text) in every_kind() {
            let hits = ATOMICITY.iter().filter(|n| text.contains(*n)).count();
            assert_eq!(usize::from(v.breaks_atomicity()), hits, "{text}");
            assert_eq!(
                v.loses_acknowledged(),
                text.contains("lost: client saw COMMITTED"),
                "{text}"
            );
        }
    }
}
