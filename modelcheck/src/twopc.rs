//! Two-phase commit as stateright actors: the coordinator and the participants are the real
//! pure cores ([`CoordinatorCore`], [`ParticipantCore`]) over the real in-memory [`MemStore`],
//! driven the way `coordinator/src/node.rs` and `participant/src/node.rs` drive them. Every
//! state transition is a call into a core; this file only plays the drivers' part: apply the
//! batches a core returns, wait for the group-commit flush before answering where the driver
//! waits, send the messages the effects name, retry on timers.
//!
//! What the model abstracts, and why that is sound:
//! - One txn (`1.1`), whose branches all succeed; aborts come from the prepare deadline, from
//!   late Prepares that meet a tombstone, and from cooperative termination.
//! - Group commit is a `Flush` timer: at any moment the store may be synced, and replies that
//!   the driver sends only once their batch is durable wait for it.
//! - Crashes are stateright's: a node stops, loses its volatile state and timers; on restart
//!   it gets back its store after [`MemStore::crash`] (exactly what was synced) and runs the
//!   driver's start-up path. Each node restarts at most `restarts_per_node` times.
//! - The network is unordered and duplicating: any message may be delivered any number of
//!   times, in any order, or never. With `lossy` it may also be dropped outright, which adds
//!   nothing for safety (a never-delivered message already covers it) but removes messages that
//!   would otherwise stay deliverable forever, so a missing retry shows up as a stuck state.
//! - A Resolve call may fail as "unreachable" at any time (a timeout), so the resolver asks the
//!   coordinator and the peers in the same round: the driver's sequential "coordinator first,
//!   then peers" is one of the interleavings.
//! - Replies reach whichever incarnation of the asker is running. Without dropped outcomes
//!   (below) the resolver acts on them only while the txn is still in doubt; with them it
//!   applies every answer, as the driver does (see `participant_msg`).
//!
//! Dropped outcomes (the `forget` and `expire` switches of [`Cluster`], off in the pinned
//! checks that predate them):
//! - `forget`: once every participant acked a commit, the coordinator deletes its decision
//!   lazily; a `Flush` timer stands for the group commit's sync (another writer's, or its own
//!   after the patience), and only then does a `Forget` go out to each participant (in the
//!   service the ids ride on CommitBatch). Through [`ParticipantCore::forget`] a participant
//!   makes its committed outcome expire (lazily), so the next `Expire` drops it.
//! - `expire`: a participant's `Expire` timer runs the real [`sweep_expired`] with a cutoff
//!   past every record, dropping every aborted outcome, tombstone and forgotten commit it
//!   holds, lazily. The
//!   service drops them after a retention (10 min by default) that far exceeds the longest
//!   prepare deadline (60 s) and starts no earlier than the txn, and a coordinator counts no
//!   vote that arrives after its deadline. The model has no clocks, so it turns that timing
//!   into an order: a sweep is only possible once the coordinator can no longer count a vote
//!   for the txn (its deadline fired, it decided, or a restart lost the undecided txn). The
//!   coordinator's core is the ghost that says so, and the sweep is not the participant's to
//!   see, so the order is kept by the model's boundary: a state in which a participant has
//!   swept while the coordinator still collects votes is outside the model (see
//!   [`deadline_respected`]). A coordinator that crashed while collecting votes and never
//!   restarts keeps every outcome from expiring; no path through that state commits, so no
//!   atomicity violation is hidden by it. Each participant sweeps at most once, a bound on
//!   the state space: a record written after the sweep (by a stale message, or by the
//!   resolution of a Prepare that came after it) changes no answer to a peer (one without a
//!   record records a tombstone and answers ABORTED all the same), only whether a Prepare
//!   that comes even later votes NO or a YES that no longer counts, and the model reaches
//!   such a YES after the first sweep.
//! - With either switch a Prepare is delivered at most once: the coordinator sends one per
//!   branch and the RPC is not redelivered. A duplicate would meet a participant that has
//!   forgotten the txn and prepare it afresh, which the wire never does. (Without dropped
//!   outcomes a duplicate only re-votes, and the pinned checks keep exploring that.)

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::sync::Arc;

use stateright::actor::{Actor, ActorModel, ActorModelState, Id, LossyNetwork, Network, Out};
use stateright::{Expectation, Model, Property};
use txn_coordinator_core::core::{CoordinatorCore, Effect, TxnView, VoteResult, decision_key};
use txn_participant_core::keys::{
    EXPIRY_PREFIX, OUTCOME_SWEEP_PAGE, outcome_key, prepared_key, sweep_expired,
};
use txn_participant_core::resolve::{Resolved, peer_verdict};
use txn_participant_core::step::{Attempt, Durability};
use txn_participant_core::core::{
    AbortAnswer, AbortSource, CommitAnswer, ParticipantCore, PrepareAnswer, PrepareRequest,
    TxnStatus,
};
use txn_types::store::{MemStore, Store, WriteBatch};
use txn_types::types::{Decision, Op, ParticipantId, Resolution, TxnId, Vote};

use crate::io::{carry_out, carry_out_unsynced};

use crate::checked::Checked;

/// The coordinator is actor 0; participant `i` (0-based) is actor `i + 1`.
pub const COORDINATOR: usize = 0;

/// The one txn of the model: the first id of the coordinator's first epoch.
pub fn txn() -> TxnId {
    TxnId::generated(1, 1)
}

/// Bugs the model's drivers can be told to have, to show that the checker finds them. They live
/// in the model's drivers, never in the services: a cargo feature on the cores would be
/// switched on for every crate of a workspace build (feature unification), binaries included.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DriverBugs {
    /// The participant sends YES as soon as the prepared record is applied, without waiting
    /// for the flush that makes it durable.
    pub vote_before_durable: bool,
    /// The coordinator answers ABORT to Resolve for a txn it has not decided yet (instead of
    /// PENDING).
    pub resolve_aborts_undecided: bool,
    /// The coordinator sends the Forgets of an ended commit as soon as the decision's deletion
    /// is applied, without waiting for it to be durable (needs `forget`).
    pub forget_before_durable: bool,
    /// The coordinator tells each participant to forget the txn as soon as that participant
    /// acks its Commit, before every participant has (needs `forget`).
    pub forget_before_all_acked: bool,
    /// Participants drop expiring outcomes without waiting for the coordinator's prepare
    /// deadline to pass (needs `expire`; lifts the boundary of [`deadline_respected`]).
    pub expire_before_deadline: bool,
}

/// What every node knows: the participants, their branches, the bounds of the model.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub participants: Vec<ParticipantId>,
    pub ops: Vec<Vec<Op>>,
    pub bugs: DriverBugs,
    /// Which participants run a resolver (the others wait for the coordinator's messages).
    /// A bound on the state space for larger clusters.
    pub resolvers: Vec<bool>,
    /// Participants drop a committed outcome when the coordinator says the txn has ended.
    pub forget: bool,
    /// Participants drop aborted outcomes and tombstones once the coordinator's prepare
    /// deadline has passed.
    pub expire: bool,
}

impl Cluster {
    /// `n` participants, each adding 1 to its own counter (a branch that always votes YES).
    pub fn new(n: usize) -> Self {
        let participants = (1..=n)
            .map(|i| ParticipantId::parse("p", &format!("p{i}")).expect("valid name"))
            .collect();
        let ops = (0..n)
            .map(|_| {
                vec![Op::Add {
                    key: b"k".to_vec(),
                    delta: 1,
                    min: Some(0),
                    max: None,
                }]
            })
            .collect();
        Self {
            participants,
            ops,
            bugs: DriverBugs::default(),
            resolvers: vec![true; n],
            forget: false,
            expire: false,
        }
    }

    /// `n` participants that drop outcomes as the service does: ended commits on the
    /// coordinator's Forget, aborts and tombstones once they expire.
    pub fn dropping_outcomes(n: usize) -> Self {
        Self {
            forget: true,
            expire: true,
            ..Self::new(n)
        }
    }

    /// Whether a participant may lose every record of a txn it has seen.
    fn drops_outcomes(&self) -> bool {
        self.forget || self.expire
    }

    fn index_of(&self, p: &ParticipantId) -> usize {
        self.participants
            .iter()
            .position(|q| q == p)
            .expect("a participant of the cluster")
    }

    fn actor_of(&self, p: &ParticipantId) -> Id {
        Id::from(self.index_of(p) + 1)
    }
}

/// A Resolve answer on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Answer {
    Commit,
    Abort,
    Pending,
}

/// A QueryPeer answer on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerStatus {
    Prepared,
    Committed,
    Aborted,
    Unknown,
}

impl From<PeerStatus> for TxnStatus {
    fn from(s: PeerStatus) -> Self {
        match s {
            PeerStatus::Prepared => TxnStatus::Prepared,
            PeerStatus::Committed => TxnStatus::Committed,
            PeerStatus::Aborted => TxnStatus::Aborted,
            PeerStatus::Unknown => TxnStatus::Unknown,
        }
    }
}

impl From<TxnStatus> for PeerStatus {
    fn from(s: TxnStatus) -> Self {
        match s {
            TxnStatus::Prepared => PeerStatus::Prepared,
            TxnStatus::Committed => PeerStatus::Committed,
            TxnStatus::Aborted => PeerStatus::Aborted,
            TxnStatus::Unknown => PeerStatus::Unknown,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Msg {
    Prepare { txn: TxnId, epoch: u64 },
    Vote { txn: TxnId, yes: bool },
    Commit { txn: TxnId },
    Ack { txn: TxnId },
    Abort { txn: TxnId },
    Resolve { txn: TxnId },
    Resolution { txn: TxnId, answer: Answer },
    QueryPeer { txn: TxnId },
    PeerReply { txn: TxnId, status: PeerStatus },
    Forget { txn: TxnId },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer {
    /// The coordinator's prepare deadline.
    PrepareDeadline,
    /// The coordinator's retry of unacked Commits.
    CommitRetry,
    /// The group-commit flusher: syncs the store and releases the replies waiting on it. At the
    /// coordinator: the sync that makes an ended decision's deletion durable, after which the
    /// Forgets go out.
    Flush,
    /// The participant's resolver round for an in-doubt txn.
    Resolver,
    /// The participant's sweep of expired outcomes.
    Expire,
}

/// What the client was told (ghost state: the checker's evidence, not part of the protocol).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct CoordGhost {
    pub replied: Option<Decision>,
}

/// Who made a participant abort (ghost state).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AbortedBy {
    /// Its own NO vote (a tombstone for a Prepare that meets an earlier abort, or a failed check).
    OwnNoVote,
    /// An Abort from the coordinator.
    Coordinator,
    /// The coordinator's answer to Resolve.
    Resolve,
    /// A peer's answer during cooperative termination.
    Peer,
    /// A peer asked about a txn never prepared here: the tombstone that promises a NO.
    NeverPrepared,
}

/// What happened at a participant, across crashes (ghost state).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PartGhost {
    pub voted_yes: bool,
    pub committed: bool,
    pub aborted_by: BTreeSet<AbortedBy>,
    /// Decided through a peer's answer (cooperative termination).
    pub decided_by_peer: bool,
    /// Aborted on its own (a NO, or a "never prepared" tombstone) after voting YES and before
    /// learning any decision: the YES was undone.
    pub broke_yes: bool,
    /// Made the committed outcome expire on the coordinator's Forget.
    pub forgot: bool,
    /// An expiry sweep dropped the txn's aborted outcome.
    pub expired: bool,
    /// Voted YES to a Prepare that arrived after its own outcome of the txn had expired.
    pub late_yes: bool,
    /// Recorded an abort tombstone for the txn after committing it and forgetting the outcome
    /// (a stale question or answer met no record). Nothing prepared is discarded, so it is
    /// not an abort for atomicity; see [`stale_tombstone`].
    pub stale_tombstone: bool,
    /// The Prepare was delivered (tracked only when Prepares are delivered at most once).
    pub prepare_delivered: bool,
}

impl PartGhost {
    /// Learned a decision: committed, or aborted on the coordinator's or a peer's word.
    fn decided(&self) -> bool {
        self.committed
            || self.aborted_by.iter().any(|b| {
                matches!(
                    b,
                    AbortedBy::Coordinator | AbortedBy::Resolve | AbortedBy::Peer
                )
            })
    }

    /// Records an abort that this participant applied. `was_prepared`: it discarded a
    /// prepared state (otherwise it wrote a tombstone).
    fn record_abort(&mut self, by: AbortedBy, was_prepared: bool) {
        if !was_prepared && self.committed {
            self.stale_tombstone = true;
            return;
        }
        if matches!(by, AbortedBy::OwnNoVote | AbortedBy::NeverPrepared)
            && self.voted_yes
            && !self.decided()
        {
            self.broke_yes = true;
        }
        self.aborted_by.insert(by);
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CoordState {
    pub core: CoordinatorCore,
    pub store: MemStore,
    pub restarts: u8,
    pub ghost: CoordGhost,
    /// Participants of an ended commit, to be told to forget it once the decision's deletion
    /// is durable (volatile: the driver's waiting task dies with the process).
    pub forget_pending: Vec<ParticipantId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PartState {
    pub core: ParticipantCore,
    pub store: MemStore,
    pub restarts: u8,
    pub ghost: PartGhost,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum State {
    Coordinator(CoordState),
    Participant(PartState),
}

/// What survives a crash: the store (of which a restart keeps only the synced part), the
/// restart count (for the model's bound) and the ghost history.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Disk {
    Coordinator {
        store: MemStore,
        restarts: u8,
        ghost: CoordGhost,
    },
    Participant {
        store: MemStore,
        restarts: u8,
        ghost: PartGhost,
    },
}

#[derive(Debug, Clone)]
pub enum Node {
    Coordinator(Arc<Cluster>),
    Participant(usize, Arc<Cluster>),
}

/// Whether the store holds writes not yet synced.
pub fn dirty(store: &MemStore) -> bool {
    let synced = store.clone();
    synced.crash();
    synced != *store
}

/// Whether `key` is in the synced part of the store.
pub fn durable_has(store: &MemStore, key: &[u8]) -> bool {
    let synced = store.clone();
    synced.crash();
    synced.get(key).expect("mem store").is_some()
}

/// The store a node restarts with: exactly what was synced before the crash.
fn after_crash(store: &MemStore) -> MemStore {
    let s = store.clone();
    s.crash();
    s
}

fn apply(store: &MemStore, batch: WriteBatch) {
    if !batch.is_empty() {
        store.apply(batch).expect("mem store");
    }
}

impl Node {
    fn cluster(&self) -> &Cluster {
        match self {
            Node::Coordinator(c) | Node::Participant(_, c) => c,
        }
    }

    // ----- coordinator, as coordinator/src/node.rs drives it -----

    fn coordinator_start(&self, disk: &Option<Disk>, o: &mut Out<Self>) -> CoordState {
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
            let txn = state.core.begin(cluster.participants.clone(), u64::MAX);
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

    fn coordinator_timers(&self, s: &CoordState, o: &mut Out<Self>) {
        let view = s.core.view(&txn());
        set_timer_if(o, Timer::PrepareDeadline, view == Some(TxnView::Preparing));
        set_timer_if(
            o,
            Timer::CommitRetry,
            matches!(view, Some(TxnView::Committing { .. })),
        );
        set_timer_if(o, Timer::Flush, !s.forget_pending.is_empty());
    }

    fn save_coordinator(&self, s: &CoordState, o: &mut Out<Self>) {
        o.save(Disk::Coordinator {
            store: s.store.clone(),
            restarts: s.restarts,
            ghost: s.ghost.clone(),
        });
    }

    fn coordinator_msg(&self, s: &mut CoordState, src: Id, msg: Msg, o: &mut Out<Self>) {
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
                let answer = match s.core.resolve(&txn, &s.store).expect("resolve") {
                    Resolution::Decided(Decision::Commit) => Answer::Commit,
                    Resolution::Decided(Decision::Abort) => Answer::Abort,
                    Resolution::Pending if cluster.bugs.resolve_aborts_undecided => Answer::Abort,
                    Resolution::Pending => Answer::Pending,
                };
                // A PENDING answer changes nothing at the asker (it asks again later), so the
                // model leaves it out rather than let the network remember it.
                if answer != Answer::Pending {
                    o.send(src, Msg::Resolution { txn, answer });
                }
            }
            Msg::Prepare { .. }
            | Msg::Commit { .. }
            | Msg::Abort { .. }
            | Msg::Resolution { .. }
            | Msg::QueryPeer { .. }
            | Msg::PeerReply { .. }
            | Msg::Forget { .. } => {}
        }
    }

    fn coordinator_timeout(&self, s: &mut CoordState, timer: &Timer, o: &mut Out<Self>) {
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

    // ----- participant, as participant/src/node.rs drives it -----

    fn me(&self) -> usize {
        match self {
            Node::Participant(i, _) => *i,
            Node::Coordinator(_) => unreachable!("a participant"),
        }
    }

    fn participant_start(&self, disk: &Option<Disk>, o: &mut Out<Self>) -> PartState {
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
        };
        self.participant_timers(&s, o);
        self.save_participant(&s, o);
        s
    }

    fn participant_timers(&self, s: &PartState, o: &mut Out<Self>) {
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

    fn save_participant(&self, s: &PartState, o: &mut Out<Self>) {
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
            ops: cluster.ops[self.me()].clone(),
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

    fn participant_msg(&self, s: &mut PartState, src: Id, msg: Msg, o: &mut Out<Self>) {
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
                        Answer::Commit => self.resolve(s, &txn, Decision::Commit, AbortedBy::Resolve),
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
                // PREPARED changes nothing at the asker, so the model leaves it out.
                if status != PeerStatus::Prepared {
                    o.send(src, Msg::PeerReply { txn, status });
                }
            }
            Msg::PeerReply { txn, status } => {
                let in_doubt = s.core.is_prepared(&txn);
                if in_doubt || cluster.drops_outcomes() {
                    if let Some(decision) = peer_verdict(status.into()) {
                        self.resolve(s, &txn, decision, AbortedBy::Peer);
                        s.ghost.decided_by_peer |= in_doubt;
                    }
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

    fn participant_timeout(&self, s: &mut PartState, timer: &Timer, o: &mut Out<Self>) {
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

fn set_timer_if(o: &mut Out<Node>, timer: Timer, on: bool) {
    if on {
        o.set_timer(timer, stateright::actor::model_timeout());
    } else {
        o.cancel_timer(timer);
    }
}

impl Actor for Node {
    type Msg = Msg;
    type State = State;
    type Timer = Timer;
    type Random = ();
    type Storage = Disk;

    fn on_start(&self, _id: Id, disk: &Option<Disk>, o: &mut Out<Self>) -> State {
        match self {
            Node::Coordinator(_) => State::Coordinator(self.coordinator_start(disk, o)),
            Node::Participant(..) => State::Participant(self.participant_start(disk, o)),
        }
    }

    fn on_msg(&self, _id: Id, state: &mut Cow<State>, src: Id, msg: Msg, o: &mut Out<Self>) {
        let mut next = state.as_ref().clone();
        match &mut next {
            State::Coordinator(s) => {
                self.coordinator_msg(s, src, msg, o);
                self.coordinator_timers(s, o);
                self.save_coordinator(s, o);
            }
            State::Participant(s) => {
                self.participant_msg(s, src, msg, o);
                self.participant_timers(s, o);
                self.save_participant(s, o);
            }
        }
        if next != **state {
            *state = Cow::Owned(next);
        }
    }

    fn on_timeout(&self, _id: Id, state: &mut Cow<State>, timer: &Timer, o: &mut Out<Self>) {
        let mut next = state.as_ref().clone();
        match &mut next {
            State::Coordinator(s) => {
                self.coordinator_timeout(s, timer, o);
                self.coordinator_timers(s, o);
                self.save_coordinator(s, o);
            }
            State::Participant(s) => {
                self.participant_timeout(s, timer, o);
                self.participant_timers(s, o);
                self.save_participant(s, o);
            }
        }
        if next != **state {
            *state = Cow::Owned(next);
        }
    }
}

/// The bounds of one check.
#[derive(Debug, Clone)]
pub struct Bounds {
    pub participants: usize,
    /// Restarts allowed per node (a crash is allowed only while restarts remain).
    pub restarts_per_node: u8,
    /// Restarts allowed in total, across nodes.
    pub restarts_total: u8,
    pub lossy: bool,
}

/// The history is unused: every fact the properties need is in ghost state.
pub type TwoPcModel = Checked<Node, ()>;
pub type SysState = ActorModelState<Node, ()>;

pub fn model(bounds: &Bounds, cluster: Cluster) -> TwoPcModel {
    let cluster = Arc::new(cluster);
    assert_eq!(cluster.participants.len(), bounds.participants);
    let per_node = bounds.restarts_per_node;
    let total = bounds.restarts_total;
    let inner = ActorModel::new((), ())
        .actor(Node::Coordinator(cluster.clone()))
        .actors((0..bounds.participants).map(|i| Node::Participant(i, cluster.clone())))
        .init_network(Network::new_unordered_duplicating([]))
        .lossy_network(if bounds.lossy {
            LossyNetwork::Yes
        } else {
            LossyNetwork::No
        })
        .max_crashes(usize::from(total > 0));
    let properties = match (cluster.forget, cluster.expire) {
        (false, false) => properties::<false, false>,
        (true, false) => properties::<true, false>,
        (false, true) => properties::<false, true>,
        (true, true) => properties::<true, true>,
    };
    let mut m = Checked { inner, properties };
    let deadline = !cluster.bugs.expire_before_deadline;
    m.inner.within_boundary = within_bounds_fn(per_node, total, deadline);
    m
}

/// Crashes beyond the bounds are outside the model, and so (with `deadline`) are expiries
/// before the coordinator's deadline. Bounds are small constants, so each combination gets
/// its own function (stateright takes a plain fn pointer).
fn within_bounds_fn(per_node: u8, total: u8, deadline: bool) -> fn(&(), &SysState) -> bool {
    type Boundary = fn(&(), &SysState) -> bool;
    macro_rules! bound {
        ($p:literal, $t:literal) => {
            if deadline {
                (|_: &(), s: &SysState| within_bounds(s, $p, $t) && deadline_respected(s))
                    as Boundary
            } else {
                |_: &(), s: &SysState| within_bounds(s, $p, $t)
            }
        };
    }
    match (per_node, total) {
        (0, _) => bound!(0, 0),
        (1, 1) => bound!(1, 1),
        (1, 2) => bound!(1, 2),
        (1, 3) => bound!(1, 3),
        (1, 4) => bound!(1, 4),
        _ => panic!("unsupported crash bounds {per_node}/{total}"),
    }
}

fn restarts(s: &State) -> u8 {
    match s {
        State::Coordinator(c) => c.restarts,
        State::Participant(p) => p.restarts,
    }
}

/// No participant has swept its outcomes while the coordinator still collects votes for the
/// txn: in the service the retention outlasts the prepare deadline, after which no vote
/// counts. (The coordinator never collects votes again once it stopped, so a sweep that
/// happened in a state this allows stays allowed.)
pub fn deadline_respected(s: &SysState) -> bool {
    coordinator(s).core.view(&txn()) != Some(TxnView::Preparing)
        || participants(s).all(|p| !p.ghost.expired)
}

fn within_bounds(s: &SysState, per_node: u8, total: u8) -> bool {
    let mut used = 0;
    for (i, st) in s.actor_states.iter().enumerate() {
        let n = restarts(st) + u8::from(s.crashed[i]);
        if n > per_node {
            return false;
        }
        used += n;
    }
    used <= total
}

pub fn coordinator(s: &SysState) -> &CoordState {
    match &*s.actor_states[COORDINATOR] {
        State::Coordinator(c) => c,
        State::Participant(_) => unreachable!("actor 0 is the coordinator"),
    }
}

pub fn participants(s: &SysState) -> impl Iterator<Item = &PartState> {
    s.actor_states[1..].iter().map(|a| match &**a {
        State::Participant(p) => p,
        State::Coordinator(_) => unreachable!("actors 1.. are participants"),
    })
}

fn someone_committed(s: &SysState) -> bool {
    coordinator(s).ghost.replied == Some(Decision::Commit)
        || participants(s).any(|p| p.ghost.committed)
}

fn someone_aborted(s: &SysState) -> bool {
    coordinator(s).ghost.replied == Some(Decision::Abort)
        || participants(s).any(|p| !p.ghost.aborted_by.is_empty())
}

/// No txn committed somewhere (at a participant, or as told to the client) and aborted
/// somewhere else.
pub fn atomic(s: &SysState) -> bool {
    !(someone_committed(s) && someone_aborted(s))
}

/// A commit, anywhere, only once every participant voted YES.
pub fn commit_needs_every_yes(s: &SysState) -> bool {
    !someone_committed(s) || participants(s).all(|p| p.ghost.voted_yes)
}

/// After YES a participant keeps its prepared record durable until an outcome replaces it
/// (which it may drop later, when forgotten or expired), and only a decision (the
/// coordinator's, or one learned from a peer) aborts it.
pub fn yes_is_kept(s: &SysState) -> bool {
    let t = txn();
    participants(s).all(|p| {
        !p.ghost.voted_yes
            || ((durable_has(&p.store, &prepared_key(&t))
                || durable_has(&p.store, &outcome_key(&t))
                || p.ghost.forgot
                || p.ghost.expired)
                && !p.ghost.broke_yes)
    })
}

/// Whether participant `i` (0-based) still holds the txn so that a Commit would be applied
/// or acked: prepared, or committed. A running participant answers from what it has applied;
/// a crashed one will restart with what it synced.
fn holds_txn(s: &SysState, i: usize) -> bool {
    let t = txn();
    let p = participants(s).nth(i).expect("a participant");
    let status = if s.crashed[i + 1] {
        let mut core = ParticipantCore::new();
        let synced = after_crash(&p.store);
        core.recover(&synced).expect("recover");
        core.status(&t, &synced)
    } else {
        p.core.status(&t, &p.store)
    };
    matches!(
        status.expect("status"),
        TxnStatus::Prepared | TxnStatus::Committed
    )
}

/// Every participant the coordinator still drives a Commit to holds the txn: no Commit it
/// re-sends is refused as unknown (which would leave it re-sending forever).
pub fn driven_commit_applies(s: &SysState) -> bool {
    let c = coordinator(s);
    let t = txn();
    let Some(TxnView::Committing { unacked }) = c.core.view(&t) else {
        return true;
    };
    let all = c.core.participants_of(&t).expect("held");
    unacked
        .iter()
        .all(|p| holds_txn(s, all.iter().position(|q| q == p).expect("a participant")))
}

/// While a commit decision is in the coordinator's durable log (a restart would drive it
/// again), no participant has dropped the txn.
pub fn logged_commit_kept(s: &SysState) -> bool {
    let c = coordinator(s);
    !durable_has(&c.store, &decision_key(&txn()))
        || (0..participants(s).count()).all(|i| holds_txn(s, i))
}

/// A participant that committed and forgot the txn recorded an abort tombstone for it: a
/// peer's question or a resolver's answer that was still under way when the txn ended found
/// no record. Everyone had committed by then, so nobody acts on it, but the participant now
/// reports the txn as aborted (until the tombstone expires).
pub fn stale_tombstone(s: &SysState) -> bool {
    participants(s).any(|p| p.ghost.stale_tombstone)
}

/// Nothing left to do: no txn held by the coordinator or in its log, nobody in doubt. (Lazy
/// writes may still be unsynced: a crash that loses them re-opens the txn, and the model then
/// requires it to be decided again.)
pub fn decided(s: &SysState) -> bool {
    let c = coordinator(s);
    c.core.view(&txn()).is_none()
        && c.store
            .get(&decision_key(&txn()))
            .expect("mem store")
            .is_none()
        && participants(s).all(|p| {
            p.core.in_doubt() == 0
                && p.store
                    .get(&prepared_key(&txn()))
                    .expect("mem store")
                    .is_none()
        })
}

/// The properties of a model; the examples that only dropped outcomes can give are asked for
/// only with the switch that drops them (stateright asks for an example of every `sometimes`).
fn properties<const FORGET: bool, const EXPIRE: bool>() -> Vec<Property<TwoPcModel>> {
    let mut props = vec![
        Property::always("atomic", |_, s| atomic(s)),
        Property::always("commit needs every YES", |_, s| commit_needs_every_yes(s)),
        Property::always("a YES is kept until decided", |_, s| yes_is_kept(s)),
        Property::always("a driven commit is never refused", |_, s| {
            driven_commit_applies(s)
        }),
        Property::always("a logged commit is never forgotten", |_, s| {
            logged_commit_kept(s)
        }),
        Property::eventually("eventually decided", |_, s| decided(s)),
        Property::sometimes("commits everywhere", |_, s| {
            coordinator(s).ghost.replied == Some(Decision::Commit)
                && participants(s).all(|p| p.ghost.committed)
        }),
        Property::sometimes("aborts after a YES", |_, s| {
            participants(s).any(|p| p.ghost.voted_yes && !p.ghost.aborted_by.is_empty())
        }),
        Property::sometimes("cooperative termination decides", |_, s| {
            participants(s).any(|p| p.ghost.decided_by_peer)
        }),
        Property::sometimes("a prepared participant restarts", |_, s| {
            participants(s).any(|p| p.restarts > 0 && p.core.in_doubt() > 0)
        }),
    ];
    if FORGET {
        props.push(Property::sometimes(FORGOT, |_, s| {
            participants(s).any(|p| p.ghost.forgot)
        }));
        props.push(Property::sometimes(STALE_TOMBSTONE, |_, s| {
            stale_tombstone(s)
        }));
    }
    if EXPIRE {
        props.push(Property::sometimes(EXPIRED, |_, s| {
            participants(s).any(|p| p.ghost.expired)
        }));
        props.push(Property::sometimes(LATE_YES, |_, s| {
            participants(s).any(|p| p.ghost.late_yes)
        }));
    }
    props
}

const FORGOT: &str = "a participant forgets a committed txn";
const EXPIRED: &str = "an aborted outcome expires";
const LATE_YES: &str = "a Prepare after its tombstone expired votes YES, too late";
/// See [`stale_tombstone`]: reachable in the service as it is, and asked for so that a change
/// which removes it shows up.
pub const STALE_TOMBSTONE: &str = "a forgotten commit gets a stale abort tombstone";

/// Names of the `sometimes` properties: a correct model must find an example of each, or the
/// check would pass vacuously.
pub fn sometimes_names(m: &TwoPcModel) -> Vec<&'static str> {
    let crashes = m.inner.max_crashes > 0;
    m.properties()
        .into_iter()
        .filter(|p| p.expectation == Expectation::Sometimes)
        .filter(|p| crashes || p.name != "a prepared participant restarts")
        .map(|p| p.name)
        .collect()
}
