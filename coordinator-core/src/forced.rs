//! Forced outcomes: what an operator may decide for a txn, and when the coordinator refuses.
//!
//! An operator forces an outcome when a txn is stuck (a participant gone for good). The rules
//! refuse every forced outcome that could break atomicity, unless the operator says
//! `--heuristic`, accepting that risk:
//! - ABORT is refused once a commit decision is durable: participants may have committed.
//!   While the commit decision is being written, the operator is asked to try again.
//! - COMMIT is refused for an id of this coordinator's own epoch that it no longer holds: it
//!   presumed that txn aborted and may have told the client so. Otherwise every participant
//!   is pinned first (so none can abort it on its own any more), and the txn commits only if
//!   every one of them is still prepared (each voted YES) or already committed.
//!
//! While an operator acts on a txn, Resolve answers PENDING for it ([`CoordinatorCore::pin`]).

use txn_types::types::{ParticipantId, TxnId};

use crate::core::{CoordinatorCore, Effect, TxnView};

/// What a forced ABORT does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForceAbort {
    /// Refused; the message says why.
    Refused(String),
    /// The txn was still collecting votes and is aborted now; send these Aborts.
    Aborted(Vec<Effect>),
    /// The coordinator holds no live state for it: record the outcome and send Aborts to
    /// every participant that holds it. `delete_decision`: a logged commit decision is
    /// dropped first (heuristic only).
    AbortEverywhere { delete_decision: bool },
}

/// What a forced COMMIT does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForceCommit {
    Refused(String),
    /// A commit decision is already durable: re-send its Commits now.
    RetryCommits,
    /// Pin the txn at every participant that holds it, then ask [`commit_after_holds`].
    HoldEverywhere,
}

/// What a participant answered to the hold of a forced commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldAnswer {
    Prepared,
    Committed,
    /// Aborted, unknown there, or unreachable: it did not (or cannot be shown to) vote YES.
    Other,
}

impl CoordinatorCore {
    /// Decides a forced ABORT of `txn`, and applies it to the core when the txn is still
    /// collecting votes, in one step (so no last YES can slip in between).
    pub fn force_abort_decision(
        &mut self,
        txn: &TxnId,
        logged: bool,
        heuristic: bool,
    ) -> ForceAbort {
        let refused = |why: &str| {
            ForceAbort::Refused(format!(
                "txn_id {txn}: {why}. Use --heuristic to force it anyway"
            ))
        };
        match self.view(txn) {
            Some(TxnView::Preparing | TxnView::Fencing) => match self.force_abort(txn) {
                Some(effects) => ForceAbort::Aborted(effects),
                None if heuristic => {
                    self.forget(txn);
                    ForceAbort::AbortEverywhere {
                        delete_decision: false,
                    }
                }
                None => refused(
                    "it commits at its votes and they are still being collected: it may \
                         have committed already, and only its deadline's fence can abort it",
                ),
            },
            Some(TxnView::Deciding) => ForceAbort::Refused(format!(
                "txn_id {txn}: every participant voted YES and the commit decision is being written; try again in a moment"
            )),
            Some(TxnView::Committing { .. }) if !heuristic => refused(
                "a commit decision is durable; aborting now would break atomicity (participants may have committed)",
            ),
            None if logged && !heuristic => {
                refused("a commit decision is durable; aborting would break atomicity")
            }
            _ => {
                if heuristic {
                    // A heuristic outcome: the coordinator stops driving the txn.
                    self.forget(txn);
                }
                ForceAbort::AbortEverywhere {
                    delete_decision: heuristic && logged,
                }
            }
        }
    }

    /// Decides a forced COMMIT of `txn`.
    pub fn force_commit_decision(&self, txn: &TxnId, logged: bool, heuristic: bool) -> ForceCommit {
        match self.view(txn) {
            Some(TxnView::Committing { .. }) => return ForceCommit::RetryCommits,
            Some(v) => {
                let phase = match v {
                    TxnView::Preparing => "preparing",
                    _ => "deciding",
                };
                return ForceCommit::Refused(format!(
                    "txn_id {txn}: is {phase}; the coordinator is still deciding it"
                ));
            }
            None => {}
        }
        if logged {
            return ForceCommit::RetryCommits;
        }
        if txn.epoch() == Some(self.epoch()) && !heuristic {
            // This coordinator ran the txn and no longer holds it, with no decision logged:
            // it decided ABORT and may have told the client so.
            return ForceCommit::Refused(format!(
                "txn_id {txn}: this coordinator already aborted it (presumed abort); committing now would contradict what the client was told. Use --heuristic to force it anyway"
            ));
        }
        ForceCommit::HoldEverywhere
    }
}

/// After every participant was asked to hold the txn: commit only if each is prepared or
/// committed, unless `heuristic`. The error lists who is not.
pub fn commit_after_holds(
    txn: &TxnId,
    answers: &[(ParticipantId, HoldAnswer, String)],
    heuristic: bool,
) -> Result<(), String> {
    let not_prepared: Vec<String> = answers
        .iter()
        .filter(|(_, a, _)| *a == HoldAnswer::Other)
        .map(|(p, _, state)| format!("{p} is {state}"))
        .collect();
    if not_prepared.is_empty() || heuristic {
        return Ok(());
    }
    Err(format!(
        "txn_id {txn}: cannot commit, not every participant voted YES ({}). Use --heuristic to force it anyway",
        not_prepared.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::VoteResult;

    fn p(s: &str) -> ParticipantId {
        ParticipantId::parse("p", s).unwrap()
    }

    #[test]
    fn the_abort_table() {
        let mut c = CoordinatorCore::new(2);
        let t = c.begin(vec![p("p1"), p("p2")], u64::MAX);
        assert!(
            matches!(c.force_abort_decision(&t, false, false), ForceAbort::Aborted(e) if e.len() == 2)
        );
        let t = c.begin(vec![p("p1")], u64::MAX);
        c.on_vote(&t, 0, VoteResult::Yes, 0, 0);
        assert!(
            matches!(c.force_abort_decision(&t, false, false), ForceAbort::Refused(m) if m.contains("being written"))
        );
        c.on_decision_durable(&t);
        assert!(
            matches!(c.force_abort_decision(&t, true, false), ForceAbort::Refused(m) if m.contains("--heuristic"))
        );
        assert_eq!(
            c.force_abort_decision(&t, true, true),
            ForceAbort::AbortEverywhere {
                delete_decision: true
            }
        );
        assert_eq!(
            c.view(&t),
            None,
            "a heuristic outcome ends the coordinator's part"
        );
        let old = TxnId::generated(1, 7);
        assert!(matches!(
            c.force_abort_decision(&old, true, false),
            ForceAbort::Refused(_)
        ));
        assert_eq!(
            c.force_abort_decision(&old, false, false),
            ForceAbort::AbortEverywhere {
                delete_decision: false
            }
        );
    }

    #[test]
    fn the_commit_table() {
        let mut c = CoordinatorCore::new(2);
        let mine = c.begin(vec![p("p1")], u64::MAX);
        assert!(
            matches!(c.force_commit_decision(&mine, false, false), ForceCommit::Refused(m) if m.contains("preparing"))
        );
        c.on_vote(&mine, 0, VoteResult::No { reason: "x".into() }, 0, 0);
        assert!(
            matches!(c.force_commit_decision(&mine, false, false), ForceCommit::Refused(m) if m.contains("presumed abort"))
        );
        assert_eq!(
            c.force_commit_decision(&mine, false, true),
            ForceCommit::HoldEverywhere
        );
        let old = TxnId::generated(1, 3);
        assert_eq!(
            c.force_commit_decision(&old, true, false),
            ForceCommit::RetryCommits
        );
        assert_eq!(
            c.force_commit_decision(&old, false, false),
            ForceCommit::HoldEverywhere
        );
        let answers = vec![
            (p("p1"), HoldAnswer::Prepared, "Prepared".into()),
            (p("p2"), HoldAnswer::Other, "unreachable".into()),
        ];
        let err = commit_after_holds(&old, &answers, false).unwrap_err();
        assert!(err.contains("p2 is unreachable"), "{err}");
        assert!(commit_after_holds(&old, &answers, true).is_ok());
        assert!(commit_after_holds(&old, &answers[..1], false).is_ok());
    }
}
