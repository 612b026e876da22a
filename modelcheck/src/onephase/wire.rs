//! What travels between the coordinator and the participant of the one-phase model: the
//! one-phase call, the settling Abort and the state query with their answers, and the timers
//! that stand for what the model has no clock for (a call that fails, a lock wait that ends,
//! a flush, the blocker's own decision).

use txn_types::types::TxnId;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AbortAnswer {
    /// The Abort call succeeded: the txn is aborted here (durably).
    Aborted,
    /// FAILED_PRECONDITION: the txn committed here (durably) and cannot abort.
    Committed,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Msg {
    CommitOnePhase {
        txn: TxnId,
    },
    OnePhaseAnswer {
        txn: TxnId,
        committed: bool,
    },
    Abort {
        txn: TxnId,
    },
    AbortAnswer {
        txn: TxnId,
        answer: AbortAnswer,
    },
    /// GetTxnState, which confirms a refused settling Abort.
    GetState {
        txn: TxnId,
    },
    State {
        txn: TxnId,
        committed: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer {
    /// The coordinator's one-phase call fails without an answer (deadline, lost connection).
    CallFails,
    /// The coordinator's settling call (Abort or state query) got no answer: call again, or
    /// give up.
    SettleRetry,
    /// The participant's group commit: syncs the store and sends the replies waiting on it.
    Flush,
    /// The lock wait of a one-phase call blocked by the prepared two-phase txn ends.
    LockWait,
    /// The prepared two-phase txn gets its Abort (from its own coordinator).
    BlockerDecided,
}
