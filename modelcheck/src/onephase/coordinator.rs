//! The coordinator's part of the one-phase model: the core's own [`OnePhase`] machine, run as
//! `run_one_phase` runs it. The model only turns the machine's actions into messages and its
//! phases into timers; the one decision taken here is the planted bug that tells the client
//! ABORTED when the answer is lost, without settling.

use std::time::Duration;

use stateright::actor::{Id, Out};
use txn_coordinator_core::core::CoordinatorCore;
use txn_coordinator_core::one_phase::{
    OnePhase, OnePhaseAction, OnePhaseEvent, OnePhaseOutcome, Phase as CallPhase,
};
use txn_types::backoff::Backoff;

use super::node::{Node, set_timer_if};
use super::state::{CoordState, Told};
use super::wire::{AbortAnswer, Msg, Timer};
use super::{PARTICIPANT, txn};

impl Node {
    // ----- coordinator: the core's `OnePhase`, as `run_one_phase` runs it -----

    pub(super) fn coordinator_start(&self, o: &mut Out<Self>) -> CoordState {
        let setup = self.setup();
        let mut core = CoordinatorCore::new(1);
        let txn = core.begin(vec![setup.participant.clone()], u64::MAX);
        assert_eq!(txn, self::txn(), "the model's txn id");
        o.send(
            Id::from(PARTICIPANT),
            Msg::CommitOnePhase { txn: txn.clone() },
        );
        let call = OnePhase::new(
            txn,
            setup.participant.clone(),
            Backoff::new(Duration::ZERO, Duration::ZERO),
            u32::from(setup.settle_attempts),
        );
        let s = CoordState {
            core,
            call,
            told: None,
        };
        coordinator_timers(&s, o);
        s
    }

    /// Feeds the machine and carries out what it asks, until it waits for the network.
    fn feed(&self, s: &mut CoordState, event: OnePhaseEvent, o: &mut Out<Self>) {
        let mut next = s.call.on(event, 0.0);
        while let Some(action) = next.take() {
            match action {
                OnePhaseAction::SendAbort { .. } => {
                    o.send(Id::from(PARTICIPANT), Msg::Abort { txn: txn() })
                }
                OnePhaseAction::QueryState => {
                    o.send(Id::from(PARTICIPANT), Msg::GetState { txn: txn() })
                }
                // The pause is time, which the model does not have.
                OnePhaseAction::RetryAfter(_) => next = s.call.on(OnePhaseEvent::RetryDue, 0.0),
                OnePhaseAction::FallBack => unreachable!("the participant offers one phase"),
                OnePhaseAction::Reply(outcome) => finish(
                    s,
                    match outcome {
                        OnePhaseOutcome::Committed { settled, .. } => Told::Committed { settled },
                        OnePhaseOutcome::Aborted { settled, .. } => Told::Aborted { settled },
                        OnePhaseOutcome::Unknown { .. } => Told::Unknown,
                    },
                ),
            }
        }
    }

    pub(super) fn coordinator_msg(&self, s: &mut CoordState, msg: Msg, o: &mut Out<Self>) {
        let event = match msg {
            Msg::OnePhaseAnswer { committed, .. } => OnePhaseEvent::Answered {
                committed,
                reason: String::new(),
                reads: Vec::new(),
            },
            Msg::AbortAnswer {
                answer: AbortAnswer::Aborted,
                ..
            } => OnePhaseEvent::SettleAborted,
            Msg::AbortAnswer {
                answer: AbortAnswer::Committed,
                ..
            } => OnePhaseEvent::SettleRefused {
                message: String::new(),
            },
            Msg::State { committed, .. } => OnePhaseEvent::StateIs { committed },
            Msg::CommitOnePhase { .. } | Msg::Abort { .. } | Msg::GetState { .. } => return,
        };
        // An answer to a call that already failed, or to a question no longer asked, changes
        // nothing (the machine ignores it).
        self.feed(s, event, o);
    }

    pub(super) fn coordinator_timeout(&self, s: &mut CoordState, timer: &Timer, o: &mut Out<Self>) {
        let setup = self.setup();
        match (s.call.phase(), timer) {
            (CallPhase::Calling, Timer::CallFails) => {
                if setup.bugs.abort_when_answer_lost {
                    finish(s, Told::Aborted { settled: false });
                    return;
                }
                let failed = OnePhaseEvent::Failed {
                    error: "no answer".into(),
                };
                self.feed(s, failed, o);
            }
            (CallPhase::Settling { .. } | CallPhase::Confirming { .. }, Timer::SettleRetry) => {
                let failed = OnePhaseEvent::SettleFailed {
                    error: "no answer".into(),
                };
                self.feed(s, failed, o);
            }
            _ => {}
        }
    }
}

fn finish(s: &mut CoordState, told: Told) {
    // Nothing to keep: no decision record, no participant left to tell.
    s.core.forget(&txn());
    s.told = Some(told);
}

pub(super) fn coordinator_timers(s: &CoordState, o: &mut Out<Node>) {
    let phase = s.call.phase();
    set_timer_if(
        o,
        Timer::CallFails,
        s.told.is_none() && phase == CallPhase::Calling,
    );
    set_timer_if(
        o,
        Timer::SettleRetry,
        s.told.is_none()
            && matches!(
                phase,
                CallPhase::Settling { .. } | CallPhase::Confirming { .. }
            ),
    );
}
