//! One-phase commit of a single-branch txn, at the coordinator: one call, and if its answer
//! is lost, the settling that finds out what happened.
//!
//! A txn with one branch has nobody to agree with, so the coordinator sends one
//! CommitOnePhase and logs nothing. If the call fails without an answer, the branch may or may
//! not have committed. An Abort settles it: the participant refuses it (FAILED_PRECONDITION)
//! once the txn has committed there, durably, and otherwise records an abort that makes any
//! late copy of the call refuse. A refusal is confirmed with a state query before the client
//! is told COMMITTED, rather than trusting a status code alone. If the participant answers
//! none of [`ONE_PHASE_SETTLE_ATTEMPTS`] calls, the outcome is unknown and the client is told
//! so.
//!
//! [`OnePhase`] is a state machine: events in (the answers the driver got), actions out (the
//! calls to make, the pause before the next one, the client's answer). The coordinator service
//! and the model checker run it alike.

use std::time::Duration;

use txn_types::backoff::Backoff;
use txn_types::types::{KeyValue, ParticipantId, TxnId};

/// Abort calls made to learn the outcome of a one-phase commit whose answer was lost, before
/// the client is told the outcome is unknown (with the retry backoff, about 10 s).
pub const ONE_PHASE_SETTLE_ATTEMPTS: u32 = 15;

/// What the driver learned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnePhaseEvent {
    /// The call was answered: committed (with the branch's reads) or refused.
    Answered {
        committed: bool,
        reason: String,
        reads: Vec<KeyValue>,
    },
    /// The participant does not offer one-phase commit (UNIMPLEMENTED).
    Unimplemented,
    /// The call failed without an answer.
    Failed { error: String },
    /// A settling Abort succeeded: the txn is aborted there, and will stay so.
    SettleAborted,
    /// A settling Abort was refused as for a txn that committed there.
    SettleRefused { message: String },
    /// The answer of the state query that confirms a refusal.
    StateIs { committed: bool },
    /// A settling call (Abort or state query) got no usable answer.
    SettleFailed { error: String },
    /// The pause before the next settling attempt is over.
    RetryDue,
}

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnePhaseAction {
    /// Send the settling Abort (attempt `attempt`, from 1).
    SendAbort { attempt: u32 },
    /// Ask the participant for the txn's state.
    QueryState,
    /// Wait this long, then report [`OnePhaseEvent::RetryDue`].
    RetryAfter(Duration),
    /// Run two phases instead.
    FallBack,
    /// Tell the client; the txn is over at the coordinator.
    Reply(OnePhaseOutcome),
}

/// What the client is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnePhaseOutcome {
    /// Committed. `settled`: learned by settling, so the reads went with the lost answer.
    Committed {
        reads: Vec<KeyValue>,
        settled: bool,
    },
    Aborted {
        reason: String,
        settled: bool,
    },
    /// The participant stayed silent through every settling call.
    Unknown {
        message: String,
    },
}

/// Where a one-phase commit stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// The CommitOnePhase call is out.
    Calling,
    /// Waiting for the answer of settling attempt `attempt`.
    Settling { attempt: u32 },
    /// Waiting for the state query that confirms a refusal of attempt `attempt`.
    Confirming { attempt: u32 },
    /// Pausing after a failed attempt `attempt`.
    Pausing { attempt: u32 },
    /// The client has its answer (or the txn went to two phases).
    Done,
}

/// One one-phase commit, from the call to the client's answer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OnePhase {
    txn: TxnId,
    to: ParticipantId,
    phase: Phase,
    max_attempts: u32,
    backoff: Backoff,
    /// Why the call failed, for the client's reason.
    failure: String,
}

impl OnePhase {
    /// A call to `to` is about to be sent. Settling retries follow `backoff`, at most
    /// `max_attempts` calls (at least one).
    pub fn new(txn: TxnId, to: ParticipantId, backoff: Backoff, max_attempts: u32) -> Self {
        Self {
            txn,
            to,
            phase: Phase::Calling,
            max_attempts: max_attempts.max(1),
            backoff,
            failure: String::new(),
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Feeds one event; `jitter` in `[0, 1]` for a retry pause. Events that do not fit the
    /// current phase (a late answer to a call given up on) change nothing.
    pub fn on(&mut self, event: OnePhaseEvent, jitter: f64) -> Option<OnePhaseAction> {
        use OnePhaseEvent as E;
        let to = &self.to;
        match (self.phase, event) {
            (
                Phase::Calling,
                E::Answered {
                    committed,
                    reason,
                    reads,
                },
            ) => Some(self.reply(if committed {
                OnePhaseOutcome::Committed {
                    reads,
                    settled: false,
                }
            } else {
                OnePhaseOutcome::Aborted {
                    reason: format!("{to} voted NO: {reason}"),
                    settled: false,
                }
            })),
            (Phase::Calling, E::Unimplemented) => {
                self.phase = Phase::Done;
                Some(OnePhaseAction::FallBack)
            }
            (Phase::Calling, E::Failed { error }) => {
                self.failure = error;
                self.phase = Phase::Settling { attempt: 1 };
                Some(OnePhaseAction::SendAbort { attempt: 1 })
            }
            (Phase::Settling { .. }, E::SettleAborted) => {
                let reason = format!(
                    "{to} failed during the one-phase commit ({}); aborted",
                    self.failure
                );
                Some(self.reply(OnePhaseOutcome::Aborted {
                    reason,
                    settled: true,
                }))
            }
            (Phase::Settling { attempt }, E::SettleRefused { .. }) => {
                self.phase = Phase::Confirming { attempt };
                Some(OnePhaseAction::QueryState)
            }
            (Phase::Confirming { .. }, E::StateIs { committed: true }) => {
                Some(self.reply(OnePhaseOutcome::Committed {
                    reads: Vec::new(),
                    settled: true,
                }))
            }
            // Refused, yet not committed there: not an answer; try again.
            (Phase::Confirming { attempt }, E::StateIs { committed: false })
            | (Phase::Confirming { attempt }, E::SettleFailed { .. })
            | (Phase::Settling { attempt }, E::SettleFailed { .. }) => {
                Some(self.pause(attempt, jitter))
            }
            (Phase::Pausing { attempt }, E::RetryDue) => {
                self.phase = Phase::Settling {
                    attempt: attempt + 1,
                };
                Some(OnePhaseAction::SendAbort {
                    attempt: attempt + 1,
                })
            }
            _ => None,
        }
    }

    fn reply(&mut self, outcome: OnePhaseOutcome) -> OnePhaseAction {
        self.phase = Phase::Done;
        OnePhaseAction::Reply(outcome)
    }

    /// After failed attempt `attempt`: pause and try again, or give up with "unknown".
    fn pause(&mut self, attempt: u32, jitter: f64) -> OnePhaseAction {
        if attempt >= self.max_attempts {
            let (txn, to) = (&self.txn, &self.to);
            let message = format!(
                "txn {txn}: {to} failed during its one-phase commit ({}) and did not answer \
                 {attempt} calls to settle it; the outcome is unknown until {to} is back \
                 (then: txnctl txn show {txn})",
                self.failure
            );
            return self.reply(OnePhaseOutcome::Unknown { message });
        }
        self.phase = Phase::Pausing { attempt };
        OnePhaseAction::RetryAfter(self.backoff.failed(jitter))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(max: u32) -> OnePhase {
        let ms = Duration::from_millis;
        OnePhase::new(
            TxnId::generated(1, 1),
            ParticipantId::parse("p", "p1").unwrap(),
            Backoff::new(ms(20), ms(1000)),
            max,
        )
    }

    fn failed() -> OnePhaseEvent {
        OnePhaseEvent::Failed {
            error: "Unavailable: gone".into(),
        }
    }

    #[test]
    fn an_answer_is_the_outcome() {
        let mut c = call(3);
        let a = c.on(
            OnePhaseEvent::Answered {
                committed: false,
                reason: "below 0".into(),
                reads: vec![],
            },
            0.0,
        );
        assert!(matches!(
            a,
            Some(OnePhaseAction::Reply(OnePhaseOutcome::Aborted { ref reason, settled: false }))
                if reason == "p1 voted NO: below 0"
        ));
        assert_eq!(c.phase(), Phase::Done);
        // A late event changes nothing.
        assert_eq!(c.on(OnePhaseEvent::SettleAborted, 0.0), None);
    }

    #[test]
    fn a_lost_answer_is_settled_by_an_abort_and_a_refusal_is_confirmed() {
        let mut c = call(3);
        assert_eq!(
            c.on(failed(), 0.0),
            Some(OnePhaseAction::SendAbort { attempt: 1 })
        );
        let refused = OnePhaseEvent::SettleRefused {
            message: "committed here".into(),
        };
        assert_eq!(c.on(refused, 0.0), Some(OnePhaseAction::QueryState));
        assert_eq!(
            c.on(OnePhaseEvent::StateIs { committed: true }, 0.0),
            Some(OnePhaseAction::Reply(OnePhaseOutcome::Committed {
                reads: vec![],
                settled: true
            }))
        );
        let mut c = call(3);
        c.on(failed(), 0.0);
        let Some(OnePhaseAction::Reply(OnePhaseOutcome::Aborted { settled: true, .. })) =
            c.on(OnePhaseEvent::SettleAborted, 0.0)
        else {
            panic!("an acked settling Abort means aborted");
        };
    }

    #[test]
    fn silence_through_every_attempt_is_unknown_and_a_refusal_not_confirmed_retries() {
        let mut c = call(2);
        c.on(failed(), 0.0);
        c.on(
            OnePhaseEvent::SettleRefused {
                message: String::new(),
            },
            0.0,
        );
        assert_eq!(
            c.on(OnePhaseEvent::StateIs { committed: false }, 0.0),
            Some(OnePhaseAction::RetryAfter(Duration::from_millis(20)))
        );
        assert_eq!(
            c.on(OnePhaseEvent::RetryDue, 0.0),
            Some(OnePhaseAction::SendAbort { attempt: 2 })
        );
        let silent = OnePhaseEvent::SettleFailed {
            error: "timeout".into(),
        };
        let Some(OnePhaseAction::Reply(OnePhaseOutcome::Unknown { message })) = c.on(silent, 0.0)
        else {
            panic!("gives up after the last attempt");
        };
        assert!(message.contains("did not answer 2 calls"), "{message}");
        let mut c = call(3);
        assert_eq!(
            c.on(OnePhaseEvent::Unimplemented, 0.0),
            Some(OnePhaseAction::FallBack)
        );
    }
}
