//! A participant's part of the model, doing what `participant/src/node.rs` does with the real
//! [`ParticipantCore`]: recover prepared records on start, answer Prepare, Commit, Abort and
//! QueryPeer through the core's steps (a forced step's answer waits for its sync), run the
//! resolver that asks the coordinator and the peers about an in-doubt txn, and, with the
//! dropping switches, forget ended commits and sweep expired outcomes. The ghost state it
//! updates is what the properties judge.

use stateright::actor::{Id, Out};
use txn_participant_core::core::{
    AbortAnswer, AbortSource, CommitAnswer, ParticipantCore, PrepareAnswer, PrepareRequest,
    TxnStatus,
};
use txn_participant_core::keys::{EXPIRY_PREFIX, OUTCOME_SWEEP_PAGE, outcome_key, sweep_expired};
use txn_participant_core::resolve::{Resolved, peer_verdict, peers_verdict};
use txn_participant_core::step::{Attempt, Durability};
use txn_types::store::{MemStore, Store};
use txn_types::types::{Decision, TxnId, Vote};

use super::node::{Node, set_timer_if};
use super::state::{AbortedBy, Disk, PartGhost, PartState, after_crash, apply, dirty};
use super::wire::{Answer, Msg, PeerStatus, Timer};
use super::{COORDINATOR, txn};
use crate::io::{carry_out, carry_out_unsynced};

impl Node {
    // ----- participant, as participant/src/node.rs drives it -----

    fn me(&self) -> usize {
        match self {
            Node::Participant(i, _) => *i,
            Node::Coordinator(_) => unreachable!("a participant"),
        }
    }

    pub(super) fn participant_start(&self, disk: &Option<Disk>, o: &mut Out<Self>) -> PartState {
        let (store, restarts, ghost) = match disk {
            None => (MemStore::new(), 0, PartGhost::default()),
            Some(Disk::Participant {
                store,
                restarts,
                ghost,
            }) => (after_crash(store), restarts + 1, ghost.clone()),
            Some(Disk::Coordinator { .. }) => unreachable!("a participant's disk"),
        };
        // Participant::open: reload prepared records and re-take their locks, then sync.
        let mut core = ParticipantCore::new();
        core.recover(&store).expect("recover");
        store.sync().expect("mem store");
        let s = PartState {
            core,
            store,
            restarts,
            ghost,
            peers_prepared: Default::default(),
        };
        self.participant_timers(&s, o);
        self.save_participant(&s, o);
        s
    }

    pub(super) fn participant_timers(&self, s: &PartState, o: &mut Out<Self>) {
        let resolver = self.cluster().resolvers[self.me()];
        set_timer_if(o, Timer::Resolver, resolver && s.core.in_doubt() > 0);
        // Only the planted bug leaves a forced write unsynced; lazy writes wait for the next
        // forced sync (or are lost in a crash).
        let bug = self.cluster().bugs.vote_before_durable;
        set_timer_if(o, Timer::Flush, bug && dirty(&s.store));
        // The outcome sweeper, while something is indexed for expiry (once: see the module
        // doc). When it may run is the boundary's business (`deadline_respected`).
        let indexed = || {
            !s.store
                .scan_prefix(EXPIRY_PREFIX)
                .expect("mem store")
                .is_empty()
        };
        let expire = self.cluster().expire && !s.ghost.expired;
        set_timer_if(o, Timer::Expire, expire && indexed());
    }

    pub(super) fn save_participant(&self, s: &PartState, o: &mut Out<Self>) {
        o.save(Disk::Participant {
            store: s.store.clone(),
            restarts: s.restarts,
            ghost: s.ghost.clone(),
        });
    }

    fn prepare_request(&self, txn: TxnId, epoch: u64) -> PrepareRequest {
        let cluster = self.cluster();
        PrepareRequest {
            txn,
            coordinator_epoch: epoch,
            participants: cluster.participants.clone(),
            writers: cluster
                .participants
                .iter()
                .zip(&cluster.ops)
                .filter(|(_, ops)| ops.iter().any(|op| op.writes()))
                .map(|(p, _)| p.clone())
                .collect(),
            ops: cluster.ops[self.me()].clone(),
            read_only: cluster.ops.iter().flatten().all(|op| !op.writes()),
            commit_point: cluster.commit_point,
        }
    }

    /// The service's Commit: `ack` when the Commit came from the coordinator (the resolver's
    /// own commit answers nobody).
    fn commit(&self, s: &mut PartState, txn: &TxnId, ack: bool, o: &mut Out<Self>) {
        let answer = carry_out(&s.store, s.core.commit(txn, &s.store, 0).expect("commit"));
        match answer {
            CommitAnswer::Committed | CommitAnswer::AlreadyCommitted => {
                s.ghost.committed |= answer == CommitAnswer::Committed;
                if ack {
                    o.send(Id::from(COORDINATOR), Msg::Ack { txn: txn.clone() });
                }
            }
            // The RPC fails; the coordinator retries.
            CommitAnswer::Refused(_) => {}
        }
    }

    /// The service's Abort from the coordinator (no operator holds in the model).
    fn abort(&self, s: &mut PartState, txn: &TxnId, by: AbortedBy) {
        let was_prepared = s.core.is_prepared(txn);
        let step = s
            .core
            .abort(txn, AbortSource::Coordinator, &s.store, 0)
            .expect("abort");
        if carry_out(&s.store, step) == AbortAnswer::Aborted {
            s.ghost.record_abort(by, was_prepared);
        }
    }

    /// The resolver applies a decision it learned, from the coordinator or from a peer.
    fn resolve(&self, s: &mut PartState, txn: &TxnId, decision: Decision, by: AbortedBy) {
        let was_prepared = s.core.is_prepared(txn);
        let step = s.core.resolve(txn, decision, &s.store, 0).expect("resolve");
        let wrote = !step.write.is_empty();
        if carry_out(&s.store, step) == Resolved::Applied && wrote {
            match decision {
                Decision::Commit => s.ghost.committed = true,
                Decision::Abort => s.ghost.record_abort(by, was_prepared),
            }
        }
    }

    pub(super) fn participant_msg(&self, s: &mut PartState, src: Id, msg: Msg, o: &mut Out<Self>) {
        let cluster = self.cluster();
        match msg {
            Msg::Prepare { txn, epoch } => {
                if cluster.drops_outcomes() {
                    // At most once (see the module doc).
                    if s.ghost.prepare_delivered {
                        return;
                    }
                    s.ghost.prepare_delivered = true;
                }
                let req = self.prepare_request(txn.clone(), epoch);
                let Attempt::Ready(step) = s.core.prepare(&req, &s.store, 0).expect("prepare")
                else {
                    unreachable!("one txn takes no conflicting lock")
                };
                let tombstone = !step.write.is_empty() && step.durability == Durability::Lazy;
                let answer = if cluster.bugs.vote_before_durable {
                    carry_out_unsynced(&s.store, step)
                } else {
                    carry_out(&s.store, step)
                };
                let fresh = matches!(answer, PrepareAnswer::Yes { .. });
                let vote = s.core.confirm_vote(&txn, answer);
                let yes = matches!(vote, Vote::Yes { .. });
                if yes {
                    s.ghost.voted_yes = true;
                    // Its outcome expired, so the coordinator's deadline has passed: this
                    // YES is late and must not count.
                    s.ghost.late_yes |= fresh && s.ghost.expired;
                } else if tombstone {
                    s.ghost.record_abort(AbortedBy::OwnNoVote, false);
                }
                o.send(src, Msg::Vote { txn, yes });
            }
            Msg::Commit { txn } => self.commit(s, &txn, true, o),
            Msg::Abort { txn } => self.abort(s, &txn, AbortedBy::Coordinator),
            // The driver's resolver asks only about txns in doubt, but applies the answer it
            // gets whatever happened meanwhile. While outcomes stay forever that makes no
            // difference (the outcome repeats or refuses the answer), so the pinned checks
            // take only the answers to a txn still in doubt; once outcomes can be dropped, a
            // late answer may meet no record at all, and the model applies it as the driver
            // does.
            Msg::Resolution { txn, answer } => {
                if s.core.is_prepared(&txn) || cluster.drops_outcomes() {
                    match answer {
                        Answer::Commit => {
                            self.resolve(s, &txn, Decision::Commit, AbortedBy::Resolve)
                        }
                        Answer::Abort => self.resolve(s, &txn, Decision::Abort, AbortedBy::Resolve),
                        Answer::Pending => {}
                    }
                }
            }
            Msg::QueryPeer { txn } => {
                // The service's QueryPeer: a txn never prepared here gets a tombstone first.
                let step = s.core.query_peer(&txn, &s.store, 0).expect("query peer");
                if !step.write.is_empty() {
                    s.ghost.record_abort(AbortedBy::NeverPrepared, false);
                }
                let status: PeerStatus = carry_out(&s.store, step).into();
                // With a logged decision PREPARED changes nothing at the asker, so the model
                // leaves it out; at the votes it counts (for a fence, and for a resolver).
                if status != PeerStatus::Prepared || cluster.at_the_votes() {
                    o.send(src, Msg::PeerReply { txn, status });
                }
            }
            Msg::PeerReply { txn, status } => {
                let in_doubt = s.core.is_prepared(&txn);
                if status == PeerStatus::Prepared {
                    s.peers_prepared.insert(usize::from(src) - 1);
                }
                // The resolver's rule (participant/src/resolver.rs): this answer alone, or,
                // at the votes, every peer prepared.
                let peers = cluster.participants.len() - 1;
                let answers = vec![TxnStatus::Prepared; s.peers_prepared.len()];
                let verdict = peer_verdict(status.into())
                    .or_else(|| peers_verdict(cluster.commit_point, &answers, peers));
                if (in_doubt || cluster.drops_outcomes())
                    && let Some(decision) = verdict
                {
                    self.resolve(s, &txn, decision, AbortedBy::Peer);
                    s.ghost.decided_by_peer |= in_doubt;
                }
            }
            Msg::Forget { txn } => {
                // The service's CommitBatch with the txn in its forget list.
                if cluster.forget {
                    let step = s
                        .core
                        .commit_batch(&[], std::slice::from_ref(&txn), true, &s.store, 0)
                        .expect("forget");
                    s.ghost.forgot |= !step.write.is_empty();
                    carry_out(&s.store, step);
                }
            }
            Msg::Vote { .. } | Msg::Ack { .. } | Msg::Resolve { .. } => {}
        }
    }

    pub(super) fn participant_timeout(&self, s: &mut PartState, timer: &Timer, o: &mut Out<Self>) {
        let cluster = self.cluster();
        let coordinator = Id::from(COORDINATOR);
        match timer {
            // Only armed by the planted bug: the prepared record becomes durable late.
            Timer::Flush => s.store.sync().expect("mem store"),
            Timer::Resolver => {
                let me = self.me();
                let in_doubt: Vec<TxnId> = s.core.prepared().map(|(t, _)| t.clone()).collect();
                for t in in_doubt {
                    o.send(coordinator, Msg::Resolve { txn: t.clone() });
                    for (j, _) in cluster
                        .participants
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| *j != me)
                    {
                        o.send(Id::from(j + 1), Msg::QueryPeer { txn: t.clone() });
                    }
                }
            }
            Timer::Expire => {
                // Participant::sweep_outcomes with a cutoff past every record (the model writes
                // them all at time 0), applied lazily.
                let t = txn();
                let had = s.store.get(&outcome_key(&t)).expect("mem store").is_some();
                let (batch, _) =
                    sweep_expired(&s.store, u64::MAX, OUTCOME_SWEEP_PAGE).expect("sweep");
                apply(&s.store, batch);
                if had && s.store.get(&outcome_key(&t)).expect("mem store").is_none() {
                    s.ghost.expired = true;
                }
            }
            Timer::PrepareDeadline | Timer::CommitRetry => {}
        }
    }
}
