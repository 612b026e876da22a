//! What the client may rely on after a one-phase commit, checked in every reachable state:
//! COMMITTED is durable, ABORTED is final, and the write is applied at most once and only
//! with its committed outcome; eventually the client is answered. The `sometimes`
//! properties name each way the call can end, so a check cannot pass without reaching them.

use stateright::Property;
use txn_participant_core::core::TxnStatus;

use super::model::{OnePhaseModel, SysState};
use super::node::Node;
use super::state::{CoordState, PartState, State, Told, counter, recorded, synced};
use super::{COORDINATOR, PARTICIPANT};

pub fn coordinator(s: &SysState) -> &CoordState {
    match &*s.actor_states[COORDINATOR] {
        State::Coordinator(c) => c,
        State::Participant(_) => unreachable!("actor 0 is the coordinator"),
    }
}

/// The participant's state; while it is crashed, the state it had when it crashed.
pub fn participant(s: &SysState) -> &PartState {
    match &*s.actor_states[PARTICIPANT] {
        State::Participant(p) => p,
        State::Coordinator(_) => unreachable!("actor 1 is the participant"),
    }
}

pub fn told(s: &SysState) -> Option<Told> {
    coordinator(s).told
}

/// Told COMMITTED: the write and its committed outcome are durable, so no crash from here on
/// can take them back.
pub fn committed_is_durable(s: &SysState, delta: i64) -> bool {
    if !matches!(told(s), Some(Told::Committed { .. })) {
        return true;
    }
    let durable = synced(&participant(s).store);
    recorded(&durable) == TxnStatus::Committed && counter(&durable) == delta
}

/// Told ABORTED: the participant holds no committed outcome and no write, not even unsynced
/// (and, since this is checked in every later state, never will).
pub fn aborted_is_final(s: &SysState) -> bool {
    if !matches!(told(s), Some(Told::Aborted { .. })) {
        return true;
    }
    let store = &participant(s).store;
    [store.clone(), synced(store)]
        .iter()
        .all(|st| recorded(st) != TxnStatus::Committed && counter(st) == 0)
}

/// The write is applied at most once, and only together with its committed outcome (in the
/// store as it is and as a crash would leave it).
pub fn one_effect(s: &SysState, delta: i64) -> bool {
    let store = &participant(s).store;
    [store.clone(), synced(store)].iter().all(|st| {
        let c = counter(st);
        (c == 0 || c == delta) && ((c == delta) == (recorded(st) == TxnStatus::Committed))
    })
}

pub(super) fn properties() -> Vec<Property<OnePhaseModel>> {
    vec![
        Property::always("COMMITTED is durable", |m, s| {
            committed_is_durable(s, delta(m))
        }),
        Property::always("ABORTED is final", |_, s| aborted_is_final(s)),
        Property::always(
            "the write applies at most once, with its outcome",
            |m, s| one_effect(s, delta(m)),
        ),
        Property::eventually("the client is answered", |_, s| told(s).is_some()),
        Property::sometimes("committed", |_, s| {
            told(s) == Some(Told::Committed { settled: false })
        }),
        Property::sometimes("aborted by a refusal", |_, s| {
            told(s) == Some(Told::Aborted { settled: false })
        }),
        Property::sometimes("committed by settling", |_, s| {
            told(s) == Some(Told::Committed { settled: true })
        }),
        Property::sometimes("aborted by settling", |_, s| {
            told(s) == Some(Told::Aborted { settled: true })
        }),
        Property::sometimes("outcome unknown", |_, s| told(s) == Some(Told::Unknown)),
        Property::sometimes("aborted after a crash lost the write", |_, s| {
            participant(s).ghost.applies > 0 && matches!(told(s), Some(Told::Aborted { .. }))
        }),
        Property::sometimes(
            "the write is applied again after a crash lost it",
            |_, s| participant(s).ghost.applies > 1,
        ),
    ]
}

fn delta(m: &OnePhaseModel) -> i64 {
    match &m.inner.actors[PARTICIPANT] {
        Node::Participant(setup) | Node::Coordinator(setup) => setup.delta,
    }
}
