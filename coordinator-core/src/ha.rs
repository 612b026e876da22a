//! Several coordinators over one shared log (etcd), as rules with no I/O: who owns a txn or a
//! saga, when another instance may take it over, what fences the one it was taken from, and
//! what an instance answers about a txn it does not hold.
//!
//! The rules, and why they keep two coordinators from ever driving one txn to two outcomes:
//! - **Epochs.** Each instance takes a new epoch from the shared counter with a
//!   compare-and-swap ([`next_epoch`], [`epoch_claim_guards`]), in the same transaction that
//!   writes its member record. Epochs are never reused, and every txn id carries its epoch.
//! - **Membership.** The member record of an epoch is written once, at that instance's start,
//!   attached to its lease, and never again. It exists while the lease lives; once it is gone
//!   it is gone for good. So "the member record of E exists" is "E is alive and never
//!   superseded".
//! - **Fencing.** Every write an instance makes carries [`write_guards`]: its own member
//!   record still exists. Once an instance's lease has expired, nothing it writes lands: no
//!   decision, no saga transition, no client key, no deletion. An instance that learns its
//!   lease is gone stops.
//! - **Ownership.** Each decision and saga record names its owner ([`owner_of`]: the epoch of
//!   its id unless a takeover rewrote it). Only the owner drives it.
//! - **Adoption.** A record whose owner's member record is gone is taken over
//!   ([`adoptions`]) with a compare-and-swap that checks, atomically, that the old owner is
//!   gone, that nobody else took the record first (it is unchanged since read), and that the
//!   adopter is alive. Exactly one instance wins; it rewrites the owner and drives the record.
//! - **Resolve elsewhere** ([`resolve_elsewhere`]). A decision in the log means COMMIT,
//!   whoever asks whom. With none, an undecided txn of a live owner is the owner's to answer
//!   (the asker is sent there); a txn of a gone owner can never get a decision any more
//!   (fencing), so it is presumed aborted, or, if it commits at its votes, its participants
//!   decide it. The log must be read in one snapshot, or the membership before the decision:
//!   reading "no decision" and then "owner gone" could miss a decision written in between.

use std::collections::BTreeSet;

use txn_types::types::{CommitPoint, Decision, Resolution, TxnId};

/// The shared counter of epochs (the same key as a single coordinator's epoch record).
pub const EPOCH_COUNTER_KEY: &[u8] = crate::core::EPOCH_KEY;
/// Member records: `m/EPOCH`, one per live instance, attached to its lease.
pub const MEMBER_PREFIX: &[u8] = b"m/";

/// The key of an instance's member record. Zero-padded, so members list in epoch order.
pub fn member_key(epoch: u64) -> Vec<u8> {
    [MEMBER_PREFIX, format!("{epoch:020}").as_bytes()].concat()
}

/// The epoch a member key names.
pub fn member_epoch(key: &[u8]) -> Option<u64> {
    std::str::from_utf8(key.strip_prefix(MEMBER_PREFIX)?)
        .ok()?
        .parse()
        .ok()
}

/// A condition the shared log checks atomically with a write: the write lands only if every
/// guard holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Guard {
    /// The member record of this epoch exists: its lease is alive.
    MemberAlive(u64),
    /// The member record of this epoch is gone: its lease expired or was revoked, for good.
    MemberGone(u64),
    /// The key was last written at this revision of the log (0: it does not exist).
    Unchanged { key: Vec<u8>, revision: i64 },
}

/// An instance as another one sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Liveness {
    /// The asking instance itself.
    Mine,
    /// Another instance whose member record exists.
    Live,
    /// An instance whose member record is gone (or that never registered): it can write
    /// nothing any more.
    Gone,
}

/// The guards of every write an instance makes: its own member record still exists.
pub fn write_guards(me: u64) -> Vec<Guard> {
    vec![Guard::MemberAlive(me)]
}

/// The epoch an instance takes, given the counter's current value (none yet: the first).
pub fn next_epoch(counter: Option<u64>) -> u64 {
    counter.map_or(1, |c| c + 1)
}

/// Taking epoch [`next_epoch`]: the counter is unchanged since it was read at `revision`, so
/// two instances that read the same value cannot both take it.
pub fn epoch_claim_guards(revision: i64) -> Vec<Guard> {
    vec![Guard::Unchanged {
        key: EPOCH_COUNTER_KEY.to_vec(),
        revision,
    }]
}

/// Who owns a record: the epoch it names, or, for a record no takeover rewrote (0), the epoch
/// of its txn or saga id.
pub fn owner_of(owner_epoch: u64, id: &TxnId) -> Option<u64> {
    if owner_epoch != 0 {
        Some(owner_epoch)
    } else {
        id.epoch()
    }
}

/// A record of the shared log that one instance owns, as read with its revision.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owned {
    pub key: Vec<u8>,
    /// None: an id of no epoch, owned by nobody alive (taken over like a gone owner's).
    pub owner: Option<u64>,
    pub revision: i64,
}

/// One takeover: rewrite `key` with this instance as its owner, under `guards`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Adoption {
    pub key: Vec<u8>,
    pub from: Option<u64>,
    pub guards: Vec<Guard>,
}

/// Which of `records` instance `me` takes over, given the epochs whose member records exist
/// (`live`, read before the records): those whose owner is gone. Each takeover is guarded:
/// the old owner is still gone (its member record cannot come back, so this only guards a
/// stale `live`), nobody rewrote the record since it was read, and `me` is alive.
pub fn adoptions(me: u64, live: &BTreeSet<u64>, records: &[Owned]) -> Vec<Adoption> {
    records
        .iter()
        .filter(|r| r.owner.is_none_or(|o| o != me && !live.contains(&o)))
        .map(|r| {
            let mut guards: Vec<Guard> = r.owner.map(Guard::MemberGone).into_iter().collect();
            guards.push(Guard::Unchanged {
                key: r.key.clone(),
                revision: r.revision,
            });
            guards.extend(write_guards(me));
            Adoption {
                key: r.key.clone(),
                from: r.owner,
                guards,
            }
        })
        .collect()
}

/// What an instance does about a txn it does not hold in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Answer this.
    Give(Resolution),
    /// The txn's owner, another live instance, holds the truth: ask it (once; if it cannot be
    /// reached, the answer is PENDING).
    AskOwner,
}

/// The answer about a txn this instance does not hold, from the shared log read in one
/// snapshot: whether a commit decision is logged, and how its owner stands.
///
/// - A logged decision: COMMIT.
/// - An owner that is this instance: it ran the txn and holds nothing, so the txn ended or was
///   aborted: ABORT (presumed abort; at the votes too, as nothing is held there either way).
/// - An owner alive elsewhere: its to answer ([`Answer::AskOwner`]).
/// - An owner gone: no decision can be written for it any more (every write of the owner was
///   guarded by its membership). ABORT if it commits at its decision; if at its votes, only
///   its participants know ([`Resolution::AskParticipants`]).
pub fn resolve_elsewhere(logged: bool, owner: Liveness, commit_point: CommitPoint) -> Answer {
    match (logged, owner, commit_point) {
        (true, _, _) => Answer::Give(Resolution::Decided(Decision::Commit)),
        (false, Liveness::Live, _) => Answer::AskOwner,
        (false, Liveness::Gone, CommitPoint::Votes) => Answer::Give(Resolution::AskParticipants),
        (false, Liveness::Mine | Liveness::Gone, _) => {
            Answer::Give(Resolution::Decided(Decision::Abort))
        }
    }
}

/// How a single coordinator with its own log sees an epoch: its own (or a later one, which
/// cannot exist) is itself; an earlier one, or an id of no epoch, was an earlier life of it,
/// gone.
pub fn single_liveness(txn: &TxnId, me: u64) -> Liveness {
    match txn.epoch() {
        Some(e) if e >= me => Liveness::Mine,
        _ => Liveness::Gone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(key: &str, owner: Option<u64>, revision: i64) -> Owned {
        Owned {
            key: key.as_bytes().to_vec(),
            owner,
            revision,
        }
    }

    #[test]
    fn only_records_of_gone_owners_are_adopted_each_under_its_guards() {
        let live: BTreeSet<u64> = [3, 5].into();
        let records = [
            owned("c/3.1", Some(3), 10),
            owned("c/4.1", Some(4), 11),
            owned("c/5.1", Some(5), 12),
            owned("s/x", None, 13),
        ];
        let a = adoptions(5, &live, &records);
        assert_eq!(a.len(), 2, "{a:?}");
        assert_eq!(a[0].from, Some(4));
        assert_eq!(
            a[0].guards,
            vec![
                Guard::MemberGone(4),
                Guard::Unchanged {
                    key: b"c/4.1".to_vec(),
                    revision: 11
                },
                Guard::MemberAlive(5)
            ]
        );
        assert_eq!(a[1].from, None);
        assert_eq!(a[1].guards.len(), 2, "no owner to check gone");
        // A record an instance owns itself is never adopted by it, even if `live` is stale.
        assert!(adoptions(4, &BTreeSet::new(), &records[1..2]).is_empty());
    }

    #[test]
    fn resolve_elsewhere_never_presumes_abort_for_a_live_owner() {
        use CommitPoint::*;
        use Liveness::*;
        let commit = Answer::Give(Resolution::Decided(txn_types::types::Decision::Commit));
        let abort = Answer::Give(Resolution::Decided(txn_types::types::Decision::Abort));
        for cp in [Decision, Votes] {
            for owner in [Mine, Live, Gone] {
                assert_eq!(resolve_elsewhere(true, owner, cp), commit);
            }
            assert_eq!(resolve_elsewhere(false, Live, cp), Answer::AskOwner);
            assert_eq!(resolve_elsewhere(false, Mine, cp), abort);
        }
        assert_eq!(resolve_elsewhere(false, Gone, Decision), abort);
        assert_eq!(
            resolve_elsewhere(false, Gone, Votes),
            Answer::Give(Resolution::AskParticipants)
        );
    }

    #[test]
    fn epochs_members_and_owners() {
        assert_eq!(next_epoch(None), 1);
        assert_eq!(next_epoch(Some(41)), 42);
        assert_eq!(member_epoch(&member_key(42)), Some(42));
        assert!(member_key(9) < member_key(10));
        assert_eq!(member_epoch(b"c/1"), None);
        let id = TxnId::generated(7, 1);
        assert_eq!(owner_of(0, &id), Some(7));
        assert_eq!(owner_of(9, &id), Some(9));
        assert_eq!(single_liveness(&id, 7), Liveness::Mine);
        assert_eq!(single_liveness(&id, 8), Liveness::Gone);
        assert_eq!(
            single_liveness(&TxnId::parse("t", "plain").unwrap(), 8),
            Liveness::Gone
        );
        assert_eq!(
            epoch_claim_guards(5),
            vec![Guard::Unchanged {
                key: EPOCH_COUNTER_KEY.to_vec(),
                revision: 5
            }]
        );
        assert_eq!(write_guards(3), vec![Guard::MemberAlive(3)]);
    }
}
