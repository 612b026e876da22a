//! What the checker asks of every reachable state of the 2PC model: atomicity, no commit
//! without every YES, a YES kept until decided, no Commit driven to a participant that lost
//! the txn, no forgotten txn whose commit is still logged, and eventually nothing left to
//! decide. The `sometimes` properties are examples the checker must find, so that a check
//! cannot pass because the interesting paths were never reached.

use stateright::{Expectation, Model, Property};
use txn_coordinator_core::core::{TxnView, decision_key};
use txn_participant_core::core::{ParticipantCore, TxnStatus};
use txn_participant_core::keys::{data_key, outcome_key, prepared_key};
use txn_participant_core::outbox::event_key;
use txn_types::store::Store;
use txn_types::types::Decision;

use super::model::{SysState, TwoPcModel};
use super::state::{CoordState, PartState, State, after_crash, durable_has};
use super::{COORDINATOR, txn};

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

/// At every participant, the commit's change and its outbox event are durable together: the
/// event rides in the commit's own batch (see `txn_participant_core::outbox`).
pub fn change_with_event(s: &SysState) -> bool {
    // One txn, so its event, if any, is the feed's first.
    participants(s).all(|p| {
        let durable = p.store.durable_view();
        let changed = durable.get(&data_key(b"k")).expect("mem store").is_some();
        let evented = durable.get(&event_key(0)).expect("mem store").is_some();
        changed == evented
    })
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
pub(super) fn properties<const FORGET: bool, const EXPIRE: bool>() -> Vec<Property<TwoPcModel>> {
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
        Property::always(
            "a commit's change and its event are durable together",
            |_, s| change_with_event(s),
        ),
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
