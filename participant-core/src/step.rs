//! What a core hands its driver for each message: the write to apply, when the answer may go
//! out, whether locks came free, and the answer itself.
//!
//! The driver does exactly this and nothing else: it applies `write` under the core's lock (so
//! the next message sees it), waits for durability if `durability` says so, wakes blocked
//! requests if `released`, and then sends `answer`. Which answers need which durability is a
//! protocol rule, so it is decided here, once, for the service and the model checker alike.

use txn_types::store::WriteBatch;
use txn_types::types::TxnId;

pub use crate::locks::LockWait;

/// When an answer may be sent, relative to the writes behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// At once: nothing the answer promises depends on a write surviving a crash (presumed
    /// abort: an abort record, a NO vote's tombstone).
    Lazy,
    /// Only once this step's write, and every write applied before it, is durable: the answer
    /// promises something a crash must not undo (a YES vote, "never prepared here").
    Forced,
    /// Exactly as [`Durability::Forced`] for what the answer promises, but nobody is waiting
    /// on it urgently: the driver lets other writers' syncs cover the write and asks for one
    /// of its own only after a short patience. A commit's ack is such an answer: the client
    /// was told COMMITTED before the Commit was sent, and only the coordinator's bookkeeping
    /// (ending the decision, forgetting the txn) waits for the ack. Under light load this
    /// spares a sync per commit that would otherwise delay the next txn's YES vote.
    Patient,
}

impl Durability {
    /// Whether the answer waits until the write is durable (forced or patient).
    pub fn waits(self) -> bool {
        !matches!(self, Durability::Lazy)
    }
}

/// One step of a participant's protocol.
#[derive(Debug, Clone, PartialEq)]
pub struct Step<A> {
    /// Applied at once and atomically, before anything else touches the core.
    pub write: WriteBatch,
    pub durability: Durability,
    /// Locks were released: requests waiting for them should look again.
    pub released: bool,
    pub answer: A,
}

impl<A> Step<A> {
    /// An answer that needs nothing written and nothing durable.
    pub fn reply(answer: A) -> Self {
        Self {
            write: WriteBatch::default(),
            durability: Durability::Lazy,
            released: false,
            answer,
        }
    }

    /// An answer sent once `write` and everything before it is durable.
    pub fn forced(write: WriteBatch, answer: A) -> Self {
        Self {
            write,
            durability: Durability::Forced,
            released: false,
            answer,
        }
    }

    /// An answer sent once `write` and everything before it is durable, by a sync that need
    /// not be its own (see [`Durability::Patient`]).
    pub fn patient(write: WriteBatch, answer: A) -> Self {
        Self {
            write,
            durability: Durability::Patient,
            released: false,
            answer,
        }
    }

    /// An answer sent once `write` is applied; durable with some later sync, or lost.
    pub fn lazy(write: WriteBatch, answer: A) -> Self {
        Self {
            write,
            durability: Durability::Lazy,
            released: false,
            answer,
        }
    }

    /// Marks the step as one that released locks.
    pub fn releasing(mut self) -> Self {
        self.released = true;
        self
    }

    pub fn map<B>(self, f: impl FnOnce(A) -> B) -> Step<B> {
        Step {
            write: self.write,
            durability: self.durability,
            released: self.released,
            answer: f(self.answer),
        }
    }
}

/// A request that may have to wait for locks held by prepared txns.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt<S> {
    /// A prepared txn holds a conflicting lock, or an earlier request waits for one. Wait for
    /// a release, then try again; once the wait `wait` allows is over, ask the core what the
    /// request's answer is.
    Blocked {
        holder: TxnId,
        wait: LockWait,
    },
    Ready(S),
}
