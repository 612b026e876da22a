//! Bounds on what one participant holds for prepared txns, and the refusal a Prepare gets past
//! one. Prepared txns and their locks live in memory until their decision comes, so a flood of
//! Prepares (a buggy or hostile client, a coordinator that keeps voting while a participant's
//! commits stall) would otherwise grow them without bound.
//!
//! A refused Prepare changes nothing here: no lock, no record. The driver answers it with
//! RESOURCE_EXHAUSTED, which the coordinator counts as a NO (at the commit point at the votes
//! it fences the participant first, as for any failed Prepare). A duplicate Prepare of a txn
//! already prepared is never refused: it only re-votes.

use std::fmt;

use crate::core::ParticipantCore;

/// Default most prepared txns one participant holds: the coordinator's own limit on txns in
/// flight, so one coordinator alone never meets it.
pub const DEFAULT_MAX_PREPARED_TXNS: usize = 10_000;
/// Default most keys the lock table holds for prepared txns. Keys are up to 1 KiB, so this
/// bounds the table to about 256 MiB at worst and a few MiB for typical keys; a txn locks at
/// most 256 keys here, so the default admits a thousand of the largest txns at once.
pub const DEFAULT_MAX_LOCKED_KEYS: usize = 262_144;

/// The participant's bounds (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limits {
    /// Most txns prepared here at once.
    pub max_prepared: usize,
    /// Most keys locked here at once (held by prepared txns, shared or exclusive).
    pub max_locked_keys: usize,
    /// How long a saga's barriers outlive its deadline (the participant's retention), or None
    /// when they are kept forever. A Compensate that finds no barrier later than that needs
    /// none: no Execute can apply so late (it is refused past the deadline), and a barrier
    /// written then would never be swept, its saga's end having been handled already.
    pub barrier_margin_ms: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_prepared: DEFAULT_MAX_PREPARED_TXNS,
            max_locked_keys: DEFAULT_MAX_LOCKED_KEYS,
            barrier_margin_ms: None,
        }
    }
}

/// Which bound a Prepare would pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Overload {
    /// `limit` txns are prepared here already.
    PreparedTxns { limit: usize },
    /// Taking the txn's locks would make the table hold `would_hold` keys.
    LockedKeys { would_hold: usize, limit: usize },
}

impl fmt::Display for Overload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Overload::PreparedTxns { limit } => {
                write!(f, "holds {limit} prepared txns, its limit")
            }
            Overload::LockedKeys { would_hold, limit } => write!(
                f,
                "would lock {would_hold} keys with this txn, over its limit of {limit}"
            ),
        }
    }
}

impl ParticipantCore {
    pub fn with_limits(limits: Limits) -> Self {
        let mut core = Self::default();
        core.limits = limits;
        core
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The bound a new Prepare of `txn` locking these keys would pass, if any.
    pub(crate) fn overload(&self, exclusive: &[Vec<u8>], shared: &[Vec<u8>]) -> Option<Overload> {
        if self.in_doubt() >= self.limits.max_prepared {
            return Some(Overload::PreparedTxns {
                limit: self.limits.max_prepared,
            });
        }
        let new_keys = exclusive
            .iter()
            .chain(shared)
            .filter(|k| !self.locks.is_locked(k))
            .count();
        let would_hold = self.locks.len() + new_keys;
        (new_keys > 0 && would_hold > self.limits.max_locked_keys).then_some(Overload::LockedKeys {
            would_hold,
            limit: self.limits.max_locked_keys,
        })
    }
}
