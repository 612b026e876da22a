//! One-phase commit (1PC) of a single-branch txn as stateright actors, running the services'
//! own rules: the participant is the real [`ParticipantCore`] over the real [`MemStore`]
//! (`commit_one_phase`, `one_phase_lock_wait_over`, `abort`), and the coordinator is the real
//! [`OnePhase`] machine (the call, the settling Aborts, the state query that confirms a
//! refusal). The actors only carry out what the cores return: apply a step's write, hold its
//! answer until durable where the step says so, send, set timers.
//!
//! The invariant at stake is the one the client relies on: what it was told is what the
//! participant holds, across crashes. Checked: COMMITTED means the write and its committed
//! outcome are durable when the client hears it; ABORTED means the participant holds neither,
//! then or ever after, however the network replays the call; the write is applied at most
//! once, and only with its committed outcome; the client always gets an answer (possibly
//! "unknown").
//!
//! What the model abstracts, and why that is sound:
//! - One txn (`1.1`) with one branch, at actor [`PARTICIPANT`]. The branch adds `delta` to
//!   one counter; the counter's value shows how many times the write was applied.
//! - "The call failed" is the coordinator's [`Timer::CallFails`], which may fire at any moment
//!   before an answer arrives; an answer that comes later is dropped, as a timed-out call's
//!   is. A settling call (an Abort, or the state query after a refusal) that gets no answer
//!   is [`Timer::SettleRetry`]; the machine's pause before the next attempt is time, which
//!   the model lacks, so it passes at once. After `settle_attempts` attempts (the service
//!   makes `ONE_PHASE_SETTLE_ATTEMPTS`; two already cover "answered" and "given up") the
//!   client is told the outcome is unknown. Any attempt's answer settles the txn: a superset
//!   of the service, which drops answers to timed-out attempts.
//! - Group commit is the participant's [`Timer::Flush`], armed while the store holds unsynced
//!   writes: it syncs everything and sends the replies waiting for durability. sled may also
//!   flush on its own, so lazy writes can become durable at any moment, or never.
//! - Crashes are stateright's and only the participant's (the coordinator keeps nothing; its
//!   crash leaves the client without an answer, which "unknown" already covers). A restart
//!   gets back exactly what was synced ([`MemStore::crash`]) and loses waiting replies and
//!   blocked calls. The participant restarts at most `restarts` times.
//! - The network is unordered and duplicating (optionally lossy), so a CommitOnePhase may be
//!   delivered again at any time, before or after an Abort, before or after a crash.
//! - Optionally a txn prepared for two-phase commit holds the branch's key at first (a
//!   shared lock from a read), and its Abort arrives at some moment ([`Timer::BlockerDecided`]):
//!   the one-phase call then waits for the lock, or gives up when its lock wait ends
//!   ([`Timer::LockWait`]).
//!
//! Layout: this file sets the model up ([`Setup`], [`DriverBugs`], the txn and the blocker).
//! The messages and timers are in `wire`, the actors' state and what the participant's crash
//! keeps in `state`. The actor is `node`, which hands every event to `coordinator` (the core's
//! one-phase machine) or `participant` (the driver around the participant's core). `model`
//! builds the bounded model, and `properties` says what the client may rely on.
//!
//! [`ParticipantCore`]: txn_participant_core::core::ParticipantCore
//! [`MemStore`]: txn_types::store::MemStore
//! [`MemStore::crash`]: txn_types::store::MemStore::crash
//! [`OnePhase`]: txn_coordinator_core::one_phase::OnePhase

mod coordinator;
mod model;
mod node;
mod participant;
mod properties;
mod state;
mod wire;

use txn_participant_core::core::PrepareRequest;
use txn_types::types::{Op, ParticipantId, TxnId};

pub use model::{Bounds, OnePhaseModel, SysState, model};
pub use node::Node;
pub use properties::{
    aborted_is_final, committed_is_durable, coordinator, one_effect, participant, told,
};
pub use state::{CoordState, Disk, PartGhost, PartState, State, Told, counter, recorded, synced};
pub use wire::{AbortAnswer, Msg, Timer};

/// The coordinator is actor 0, the participant actor 1.
pub const COORDINATOR: usize = 0;
pub const PARTICIPANT: usize = 1;

/// The counter the branch adds to.
pub const KEY: &[u8] = b"k";

/// The one txn of the model: the first id of the coordinator's first epoch.
pub fn txn() -> TxnId {
    TxnId::generated(1, 1)
}

/// The two-phase txn that may hold the branch's key when the model starts.
pub fn blocker() -> TxnId {
    TxnId::parse("txn_id", "other.2pc").expect("valid txn id")
}

/// Bugs the model's drivers can be told to have, to show that the checker finds them (in the
/// model only, never in the services; see `twopc::DriverBugs`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DriverBugs {
    /// The participant answers committed as soon as the Apply batch is applied, before it is
    /// durable.
    pub commit_before_durable: bool,
    /// The participant refuses the settling Abort ("it committed here") without syncing the
    /// commit first.
    pub refuse_abort_before_durable: bool,
    /// The participant acks an Abort of a txn never prepared here without syncing the
    /// tombstone first (the driver before the sync was added).
    pub ack_abort_before_durable: bool,
    /// The coordinator tells the client ABORTED when the call fails, without settling.
    pub abort_when_answer_lost: bool,
    /// The participant answers "not committed" at once, before the refusal's tombstone is
    /// durable (the driver before this model found the problem).
    pub refuse_before_durable: bool,
}

/// What both nodes know: the branch, the bounds of the driver, the planted bugs.
#[derive(Debug, Clone)]
pub struct Setup {
    pub participant: ParticipantId,
    /// The branch: add `delta` to [`KEY`], which may not go below 0.
    pub delta: i64,
    /// Abort calls the coordinator makes to settle a lost answer before it gives up.
    pub settle_attempts: u8,
    /// Whether a prepared two-phase txn holds [`KEY`] when the participant first starts.
    pub blocker: bool,
    pub bugs: DriverBugs,
}

impl Setup {
    /// A branch adding `delta` to an empty counter: 1 commits, -1 fails its check (the
    /// counter may not go below 0) and is refused.
    pub fn adding(delta: i64) -> Self {
        Self {
            participant: ParticipantId::parse("p", "p1").expect("valid name"),
            delta,
            settle_attempts: 2,
            blocker: false,
            bugs: DriverBugs::default(),
        }
    }

    pub fn ops(&self) -> Vec<Op> {
        vec![Op::Add {
            key: KEY.to_vec(),
            delta: self.delta,
            min: Some(0),
            max: None,
        }]
    }

    /// The blocker's branch: it reads the counter, so it holds a shared lock on it, which
    /// the one-phase write conflicts with, and it changes nothing when it commits or aborts.
    fn blocker_request(&self) -> PrepareRequest {
        PrepareRequest {
            txn: blocker(),
            coordinator_epoch: 1,
            participants: vec![self.participant.clone()],
            writers: Vec::new(),
            ops: vec![Op::Read { key: KEY.to_vec() }],
            read_only: true,
            commit_point: Default::default(),
        }
    }
}
