//! Two-phase commit as stateright actors: the coordinator and the participants are the real
//! pure cores ([`CoordinatorCore`], [`ParticipantCore`]) over the real in-memory [`MemStore`],
//! driven the way `coordinator/src/node.rs` and `participant/src/node.rs` drive them. Every
//! state transition is a call into a core; this module only plays the drivers' part: apply the
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
//!
//! Layout: this file sets the model up ([`Cluster`], [`DriverBugs`], the one txn). The
//! messages and timers are in `wire`, each actor's state and what survives its crash in
//! `state`. The actor is `node`, which hands every event to the driver's part it plays,
//! `coordinator` or `participant`. `model` builds the bounded model and its boundary, and
//! `properties` says what must hold in it.
//!
//! [`CoordinatorCore`]: txn_coordinator_core::core::CoordinatorCore
//! [`ParticipantCore`]: txn_participant_core::core::ParticipantCore
//! [`ParticipantCore::forget`]: txn_participant_core::core::ParticipantCore::forget
//! [`MemStore`]: txn_types::store::MemStore
//! [`MemStore::crash`]: txn_types::store::MemStore::crash
//! [`sweep_expired`]: txn_participant_core::keys::sweep_expired

mod coordinator;
mod model;
mod node;
mod participant;
mod properties;
mod state;
mod wire;

use stateright::actor::Id;
use txn_types::types::{CommitPoint, Op, ParticipantId, TxnId};

pub use model::{Bounds, SysState, TwoPcModel, deadline_respected, model};
pub use node::Node;
pub use properties::{
    STALE_TOMBSTONE, atomic, commit_needs_every_yes, coordinator, decided, driven_commit_applies,
    logged_commit_kept, participants, sometimes_names, stale_tombstone, yes_is_kept,
};
pub use state::{
    AbortedBy, CoordGhost, CoordState, Disk, PartGhost, PartState, State, dirty, durable_has,
};
pub use wire::{Answer, Msg, PeerStatus, Timer};

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
    /// At the votes: the coordinator's driver answers a fence itself, as if the participant
    /// had been fenced off, without asking it (an abort without a fence).
    pub abort_without_fence: bool,
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
    /// Where the txn commits: at the coordinator's logged decision, or at the last durable
    /// vote (then a missing vote is fenced with QueryPeer, PREPARED answers are sent, and a
    /// resolver whose peers are all prepared commits).
    pub commit_point: CommitPoint,
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
            commit_point: CommitPoint::Decision,
        }
    }

    /// `n` participants running a txn that commits at its votes.
    pub fn at_votes(n: usize) -> Self {
        Self {
            commit_point: CommitPoint::Votes,
            ..Self::new(n)
        }
    }

    fn at_the_votes(&self) -> bool {
        self.commit_point == CommitPoint::Votes
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
