//! The coordinator's part of the model, doing what `coordinator/src/node.rs` does with the
//! real [`CoordinatorCore`]: open the log on start (the bumped epoch durable first), carry out
//! the effects the core returns (a decision is synced before anything that depends on it),
//! and retry unacked Commits on a timer. With `forget`, the Forgets go out only once the
//! ended decision's deletion is durable, unless a planted bug says otherwise.

use stateright::actor::{Id, Out};
use txn_coordinator_core::core::{CoordinatorCore, Effect, TxnView, VoteResult};
use txn_types::store::{MemStore, Store, WriteBatch};
use txn_types::types::{Decision, Resolution, TxnId};

use super::node::{Node, set_timer_if};
use super::state::{CoordGhost, CoordState, Disk, after_crash, apply};
use super::txn;
use super::wire::{Answer, Msg, PeerStatus, Timer};

impl Node {
    // ----- coordinator, as coordinator/src/node.rs drives it -----

    pub(super) fn coordinator_start(&self, disk: &Option<Disk>, o: &mut Out<Self>) -> CoordState {
        let cluster = self.cluster();
        let (store, restarts, ghost, first) = match disk {
            None => (MemStore::new(), 0, CoordGhost::default(), true),
            Some(Disk::Coordinator {
                store,
                restarts,
                ghost,
            }) => (after_crash(store), restarts + 1, ghost.clone(), false),
            Some(Disk::Participant { .. }) => unreachable!("a coordinator's disk"),
        };
        // Coordinator::open: the core reads the log; the bumped epoch is durable first.
        let opened = CoordinatorCore::open(&store).expect("open");
        apply(&store, opened.epoch_write);
        store.sync().expect("mem store");
        let (core, resend) = (opened.core, opened.resend);
        let epoch = core.epoch();
        let mut state = CoordState {
            core,
            store,
            restarts,
            ghost,
            forget_pending: Vec::new(),
        };
        for (txn, effects) in resend {
            self.run_effects(&mut state, &txn, effects, o);
        }
        if first {
            // The client's Transact: the core assigns the id, the driver sends the Prepares.
            // No deadline on the clock: the model's PrepareDeadline timer stands for it.
            let txn =
                state
                    .core
                    .begin_at(cluster.participants.clone(), u64::MAX, cluster.commit_point);
            for p in &cluster.participants {
                o.send(
                    cluster.actor_of(p),
                    Msg::Prepare {
                        txn: txn.clone(),
                        epoch,
                    },
                );
            }
        }
        self.coordinator_timers(&state, o);
        self.save_coordinator(&state, o);
        state
    }

    fn run_effects(
        &self,
        s: &mut CoordState,
        txn: &TxnId,
        effects: Vec<Effect>,
        o: &mut Out<Self>,
    ) {
        let cluster = self.cluster();
        for e in effects {
            match e {
                Effect::PersistDecision { key, record } => {
                    // Forced (write_durable), then on_decision_durable. A crash before the
                    // sync is a crash before this step; after it, the decision is logged.
                    let mut batch = WriteBatch::default();
                    batch.put(key, record);
                    apply(&s.store, batch);
                    s.store.sync().expect("mem store");
                    let effects = s.core.on_decision_durable(txn);
                    self.run_effects(s, txn, effects, o);
                }
                Effect::ReplyCommitted => s.ghost.replied = Some(Decision::Commit),
                Effect::ReplyAborted { .. } => s.ghost.replied = Some(Decision::Abort),
                Effect::SendCommit { to } => {
                    o.send(cluster.actor_of(&to), Msg::Commit { txn: txn.clone() })
                }
                Effect::SendAbort { to } => {
                    o.send(cluster.actor_of(&to), Msg::Abort { txn: txn.clone() })
                }
                Effect::Fence { to } => {
                    if cluster.bugs.abort_without_fence {
                        let effects = s.core.on_fence_reply(txn, cluster.index_of(&to), false);
                        self.run_effects(s, txn, effects, o);
                    } else {
                        // The driver's fence: the participant's QueryPeer, retried (the
                        // deadline timer, re-armed while fencing) until answered.
                        o.send(cluster.actor_of(&to), Msg::QueryPeer { txn: txn.clone() });
                    }
                }
                Effect::EndDecision { key, participants } => {
                    // Lazy: synced by a later Flush, or lost and re-driven after a crash.
                    let mut batch = WriteBatch::default();
                    batch.delete(key);
                    apply(&s.store, batch);
                    if cluster.forget {
                        if cluster.bugs.forget_before_durable {
                            for p in &participants {
                                o.send(cluster.actor_of(p), Msg::Forget { txn: txn.clone() });
                            }
                        } else {
                            // The driver waits for the deletion to be durable (the Flush).
                            for p in participants {
                                if !s.forget_pending.contains(&p) {
                                    s.forget_pending.push(p);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    pub(super) fn coordinator_timers(&self, s: &CoordState, o: &mut Out<Self>) {
        let view = s.core.view(&txn());
        set_timer_if(
            o,
            Timer::PrepareDeadline,
            matches!(view, Some(TxnView::Preparing | TxnView::Fencing)),
        );
        set_timer_if(
            o,
            Timer::CommitRetry,
            matches!(view, Some(TxnView::Committing { .. })),
        );
        set_timer_if(o, Timer::Flush, !s.forget_pending.is_empty());
    }

    pub(super) fn save_coordinator(&self, s: &CoordState, o: &mut Out<Self>) {
        o.save(Disk::Coordinator {
            store: s.store.clone(),
            restarts: s.restarts,
            ghost: s.ghost.clone(),
        });
    }

    pub(super) fn coordinator_msg(&self, s: &mut CoordState, src: Id, msg: Msg, o: &mut Out<Self>) {
        let cluster = self.cluster();
        let from = usize::from(src) - 1;
        match msg {
            Msg::Vote { txn, yes } => {
                let vote = if yes {
                    VoteResult::Yes
                } else {
                    VoteResult::No {
                        reason: "voted NO".into(),
                    }
                };
                let effects = s.core.on_vote(&txn, from, vote, 0, 0);
                self.run_effects(s, &txn, effects, o);
            }
            Msg::Ack { txn } => {
                if cluster.forget && cluster.bugs.forget_before_all_acked {
                    o.send(src, Msg::Forget { txn: txn.clone() });
                }
                let effects = s.core.on_commit_ack(&txn, &cluster.participants[from]);
                self.run_effects(s, &txn, effects, o);
            }
            Msg::Resolve { txn } => {
                // Coordinator::resolve: a logged decision counts even if not held in memory.
                let resolution = s
                    .core
                    .resolve(&txn, cluster.commit_point, &s.store)
                    .expect("resolve");
                let answer = match resolution {
                    Resolution::Decided(Decision::Commit) => Answer::Commit,
                    Resolution::Decided(Decision::Abort) => Answer::Abort,
                    Resolution::Pending if cluster.bugs.resolve_aborts_undecided => Answer::Abort,
                    // The resolver asks the peers in the same round anyway (see the module
                    // doc), which is what "ask the participants" tells it to do.
                    Resolution::Pending | Resolution::AskParticipants => Answer::Pending,
                };
                // A PENDING answer changes nothing at the asker (it asks again later), so the
                // model leaves it out rather than let the network remember it.
                if answer != Answer::Pending {
                    o.send(src, Msg::Resolution { txn, answer });
                }
            }
            Msg::PeerReply { txn, status } => {
                // A fence's answer (only a txn at the votes sends fences).
                let prepared = match status {
                    PeerStatus::Prepared | PeerStatus::Committed => true,
                    PeerStatus::Aborted => false,
                    PeerStatus::Unknown => return,
                };
                let effects = s.core.on_fence_reply(&txn, from, prepared);
                self.run_effects(s, &txn, effects, o);
            }
            Msg::Prepare { .. }
            | Msg::Commit { .. }
            | Msg::Abort { .. }
            | Msg::Resolution { .. }
            | Msg::QueryPeer { .. }
            | Msg::Forget { .. } => {}
        }
    }

    pub(super) fn coordinator_timeout(&self, s: &mut CoordState, timer: &Timer, o: &mut Out<Self>) {
        let cluster = self.cluster();
        let txn = txn();
        match timer {
            Timer::PrepareDeadline => {
                let effects = s.core.on_prepare_timeout(&txn);
                self.run_effects(s, &txn, effects, o);
            }
            Timer::CommitRetry => {
                if let Some(TxnView::Committing { unacked }) = s.core.view(&txn) {
                    for p in unacked {
                        o.send(cluster.actor_of(&p), Msg::Commit { txn: txn.clone() });
                    }
                }
            }
            Timer::Flush => {
                // The ended decision's deletion is durable now (GroupCommit::wait_patiently);
                // then forget_everywhere.
                s.store.sync().expect("mem store");
                for p in std::mem::take(&mut s.forget_pending) {
                    o.send(cluster.actor_of(&p), Msg::Forget { txn: txn.clone() });
                }
            }
            Timer::Resolver | Timer::Expire => {}
        }
    }
}
