//! The participant's part of the one-phase model, doing what `participant/src/node.rs` does
//! with the real [`ParticipantCore`]: the one-phase call (waiting for, or giving up on, the
//! blocker's lock), the settling Abort and the state query. A reply waits for the group
//! commit's flush whenever the core's step is forced, which is the durability the client's
//! answer depends on; the planted bugs are the only way around it.

use std::collections::BTreeSet;

use stateright::actor::{Id, Out};
use txn_participant_core::core::{
    AbortAnswer as PartAbortAnswer, AbortSource, ParticipantCore, Refusal, TxnStatus,
};
use txn_participant_core::one_phase::OnePhaseAnswer;
use txn_participant_core::step::{Attempt, Durability, Step};
use txn_types::store::{MemStore, Store};
use txn_types::types::TxnId;

use super::node::{Node, set_timer_if};
use super::state::{Disk, PartGhost, PartState, synced};
use super::wire::{AbortAnswer, Msg, Timer};
use super::{COORDINATOR, blocker, txn};
use crate::twopc::dirty;

impl Node {
    // ----- participant, as `participant/src/node.rs` drives it -----

    pub(super) fn participant_start(&self, disk: &Option<Disk>, o: &mut Out<Self>) -> PartState {
        let (store, restarts, ghost) = match disk {
            None => (self.first_store(), 0, PartGhost::default()),
            Some(d) => (synced(&d.store), d.restarts + 1, d.ghost.clone()),
        };
        // Participant::open: reload prepared records and re-take their locks, then sync.
        let mut core = ParticipantCore::new();
        core.recover(&store).expect("recover");
        store.sync().expect("mem store");
        let s = PartState {
            core,
            store,
            restarts,
            waiting: BTreeSet::new(),
            blocked: false,
            ghost,
        };
        participant_timers(&s, o);
        s
    }

    /// The store the participant first opens: empty, or holding the blocker's durable
    /// prepared record (it voted YES before the model starts).
    fn first_store(&self) -> MemStore {
        let setup = self.setup();
        let store = MemStore::new();
        if setup.blocker {
            let mut core = ParticipantCore::new();
            match core.prepare(&setup.blocker_request(), &store, 0) {
                Ok(Attempt::Ready(step)) => {
                    store.apply(step.write).expect("mem store");
                }
                other => panic!("the blocker prepares: {other:?}"),
            }
            store.sync().expect("mem store");
        }
        store
    }

    pub(super) fn participant_msg(&self, s: &mut PartState, msg: Msg, o: &mut Out<Self>) {
        match msg {
            Msg::CommitOnePhase { txn } => self.one_phase(s, &txn, o),
            Msg::Abort { txn } => self.abort(s, &txn, o),
            // GetTxnState: the recorded status, as it is.
            Msg::GetState { txn } => {
                let status = s.core.status(&txn, &s.store).expect("status");
                o.send(
                    Id::from(COORDINATOR),
                    Msg::State {
                        txn,
                        committed: status == TxnStatus::Committed,
                    },
                );
            }
            Msg::OnePhaseAnswer { .. } | Msg::AbortAnswer { .. } | Msg::State { .. } => {}
        }
    }

    /// One pass of `run_unblocked` for a one-phase call (a blocked call passes again when a
    /// lock is released, or gives up on [`Timer::LockWait`]).
    fn one_phase(&self, s: &mut PartState, txn: &TxnId, o: &mut Out<Self>) {
        let setup = self.setup();
        let attempt = s
            .core
            .commit_one_phase(txn, &setup.ops(), &s.store, 0)
            .expect("commit_one_phase");
        match attempt {
            Attempt::Ready(step) => {
                s.blocked = false;
                self.answer_one_phase(s, txn, step, o);
            }
            Attempt::Blocked { holder, .. } => {
                assert_eq!(holder, blocker(), "only the blocker holds locks");
                s.blocked = true;
            }
        }
    }

    /// Carries out a one-phase step and sends its answer (at once, with a planted bug).
    fn answer_one_phase(
        &self,
        s: &mut PartState,
        txn: &TxnId,
        step: Step<OnePhaseAnswer>,
        o: &mut Out<Self>,
    ) {
        let bugs = self.setup().bugs;
        let (committed, at_once) = match &step.answer {
            OnePhaseAnswer::Committed { .. } => {
                s.ghost.applies = (s.ghost.applies + 1).min(2);
                (true, bugs.commit_before_durable)
            }
            OnePhaseAnswer::AlreadyCommitted => (true, false),
            OnePhaseAnswer::Refused { .. } => (false, bugs.refuse_before_durable),
        };
        let reply = Msg::OnePhaseAnswer {
            txn: txn.clone(),
            committed,
        };
        carry_out(s, step, reply, at_once, o);
    }

    /// The lock wait of a blocked call is over: the core's rule says what it answers.
    fn lock_wait_ends(&self, s: &mut PartState, o: &mut Out<Self>) {
        s.blocked = false;
        let txn = txn();
        match s
            .core
            .one_phase_lock_wait_over(&txn, &blocker(), 50, &s.store, 0)
            .expect("lock wait over")
        {
            Some(step) => self.answer_one_phase(s, &txn, step, o),
            None => self.one_phase(s, &txn, o),
        }
    }

    /// The service's Abort from the coordinator (not forced; nothing is held by an operator).
    fn abort(&self, s: &mut PartState, txn: &TxnId, o: &mut Out<Self>) {
        let bugs = self.setup().bugs;
        assert!(
            !s.core.is_prepared(txn),
            "a one-phase txn is never prepared"
        );
        let step = s
            .core
            .abort(txn, AbortSource::Coordinator, &s.store, 0)
            .expect("abort");
        let released = step.released;
        let (answer, at_once) = match &step.answer {
            PartAbortAnswer::Aborted | PartAbortAnswer::AlreadyAborted => {
                (AbortAnswer::Aborted, bugs.ack_abort_before_durable)
            }
            PartAbortAnswer::Refused(Refusal::Conflict(_)) => {
                (AbortAnswer::Committed, bugs.refuse_abort_before_durable)
            }
            other => unreachable!("no holds and no unknown refusals here: {other:?}"),
        };
        let reply = Msg::AbortAnswer {
            txn: txn.clone(),
            answer,
        };
        carry_out(s, step, reply, at_once, o);
        if released && s.blocked {
            self.one_phase(s, txn, o);
        }
    }

    pub(super) fn participant_timeout(&self, s: &mut PartState, timer: &Timer, o: &mut Out<Self>) {
        match timer {
            Timer::Flush => {
                s.store.sync().expect("mem store");
                for reply in std::mem::take(&mut s.waiting) {
                    o.send(Id::from(COORDINATOR), reply);
                }
            }
            Timer::LockWait => self.lock_wait_ends(s, o),
            Timer::BlockerDecided => {
                // The blocker's own coordinator aborts it (presumed abort: lazy).
                let step = s
                    .core
                    .abort(&blocker(), AbortSource::Coordinator, &s.store, 0)
                    .expect("abort");
                assert!(step.released, "the blocker was prepared: {step:?}");
                s.store.apply(step.write).expect("mem store");
                if s.blocked {
                    self.one_phase(s, &txn(), o);
                }
            }
            Timer::CallFails | Timer::SettleRetry => {}
        }
    }
}

/// Applies a step's write; sends `reply` at once if the step is lazy (or a planted bug says
/// so), else once everything applied so far is durable: at once if it already is (the group
/// commit's ticket is already published), else with the next flush.
fn carry_out<A>(s: &mut PartState, step: Step<A>, reply: Msg, at_once: bool, o: &mut Out<Node>) {
    if !step.write.is_empty() {
        s.store.apply(step.write).expect("mem store");
    }
    if step.durability == Durability::Lazy || at_once || !dirty(&s.store) {
        o.send(Id::from(COORDINATOR), reply);
    } else {
        s.waiting.insert(reply);
    }
}

pub(super) fn participant_timers(s: &PartState, o: &mut Out<Node>) {
    set_timer_if(o, Timer::Flush, dirty(&s.store));
    set_timer_if(o, Timer::LockWait, s.blocked);
    set_timer_if(o, Timer::BlockerDecided, s.core.is_prepared(&blocker()));
}

pub(super) fn save_participant(s: &PartState, o: &mut Out<Node>) {
    o.save(Disk {
        store: s.store.clone(),
        restarts: s.restarts,
        ghost: s.ghost.clone(),
    });
}
