//! What each actor of the one-phase model holds, what the participant's crash keeps
//! ([`Disk`]), and the helpers that read a store the way the properties judge it: as it is,
//! and as a crash would leave it. What the client was told ([`Told`]) lives here too, since
//! every property is a claim about it.

use std::collections::BTreeSet;

use txn_coordinator_core::core::CoordinatorCore;
use txn_coordinator_core::one_phase::OnePhase;
use txn_participant_core::core::{ParticipantCore, TxnStatus};
use txn_participant_core::keys::data_key;
use txn_types::store::{MemStore, Store};
use txn_types::types::decode_counter;

use super::wire::Msg;
use super::{KEY, txn};

/// What the client was told, and whether the coordinator settled a lost answer to get it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Told {
    Committed {
        settled: bool,
    },
    Aborted {
        settled: bool,
    },
    /// UNAVAILABLE: the settling Aborts went unanswered; no claim either way.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CoordState {
    pub core: CoordinatorCore,
    /// The core's one-phase machine, as `run_one_phase` runs it.
    pub call: OnePhase,
    pub told: Option<Told>,
}

/// What happened at the participant, across crashes (ghost state: the checker's evidence).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PartGhost {
    /// Apply steps taken, counting those a crash undid (capped at 2).
    pub applies: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PartState {
    pub core: ParticipantCore,
    pub store: MemStore,
    pub restarts: u8,
    /// Replies the driver sends once everything applied so far is durable (lost in a crash).
    pub waiting: BTreeSet<Msg>,
    /// A one-phase call waits for the blocker's lock (lost in a crash: the call fails).
    pub blocked: bool,
    pub ghost: PartGhost,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum State {
    Coordinator(CoordState),
    Participant(PartState),
}

/// What survives a participant crash: the store (a restart keeps its synced part), the restart
/// count (for the bound) and the ghost history.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Disk {
    pub store: MemStore,
    pub restarts: u8,
    pub ghost: PartGhost,
}

/// The store as a crash would leave it: exactly what was synced.
pub fn synced(store: &MemStore) -> MemStore {
    let s = store.clone();
    s.crash();
    s
}

/// The branch's counter in `store`.
pub fn counter(store: &MemStore) -> i64 {
    let value = store.get(&data_key(KEY)).expect("mem store");
    decode_counter(value.as_deref()).expect("a counter")
}

/// The txn's outcome recorded in `store` (a fresh core: only the store's records count).
pub fn recorded(store: &MemStore) -> TxnStatus {
    ParticipantCore::new()
        .status(&txn(), store)
        .expect("mem store")
}
