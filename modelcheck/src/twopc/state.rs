//! What each actor of the model holds: the real core and store, the restart count that bounds
//! crashes, and ghost state (what was told or done, kept across crashes) that only the
//! properties read. Also what a crash keeps ([`Disk`]) and the helpers that look at the synced
//! part of a store, since a restart gets back exactly that and nothing more.

use std::collections::BTreeSet;

use txn_coordinator_core::core::CoordinatorCore;
use txn_participant_core::core::ParticipantCore;
use txn_types::store::{MemStore, Store, WriteBatch};
use txn_types::types::{Decision, ParticipantId};

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
    /// not an abort for atomicity; see [`stale_tombstone`](super::stale_tombstone).
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
    pub(super) fn record_abort(&mut self, by: AbortedBy, was_prepared: bool) {
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
    /// Peers (0-based) that answered this resolver's QueryPeer with PREPARED, for a txn that
    /// commits at its votes (volatile: the resolver's round dies with the process).
    pub peers_prepared: BTreeSet<usize>,
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
pub(super) fn after_crash(store: &MemStore) -> MemStore {
    let s = store.clone();
    s.crash();
    s
}

pub(super) fn apply(store: &MemStore, batch: WriteBatch) {
    if !batch.is_empty() {
        store.apply(batch).expect("mem store");
    }
}
