//! What travels between the model's actors: the RPCs and their answers as messages, and the
//! timers each driver arms. The names follow the service's gRPC calls, so a counterexample
//! reads like a trace of the real protocol. Answers that change nothing at the asker (PENDING,
//! PREPARED) are never sent, which keeps the network, and so the state space, small.

use txn_participant_core::core::TxnStatus;
use txn_types::types::TxnId;

/// A Resolve answer on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Answer {
    Commit,
    Abort,
    Pending,
}

/// A QueryPeer answer on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerStatus {
    Prepared,
    Committed,
    Aborted,
    Unknown,
}

impl From<PeerStatus> for TxnStatus {
    fn from(s: PeerStatus) -> Self {
        match s {
            PeerStatus::Prepared => TxnStatus::Prepared,
            PeerStatus::Committed => TxnStatus::Committed,
            PeerStatus::Aborted => TxnStatus::Aborted,
            PeerStatus::Unknown => TxnStatus::Unknown,
        }
    }
}

impl From<TxnStatus> for PeerStatus {
    fn from(s: TxnStatus) -> Self {
        match s {
            TxnStatus::Prepared => PeerStatus::Prepared,
            TxnStatus::Committed => PeerStatus::Committed,
            TxnStatus::Aborted => PeerStatus::Aborted,
            TxnStatus::Unknown => PeerStatus::Unknown,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Msg {
    Prepare { txn: TxnId, epoch: u64 },
    Vote { txn: TxnId, yes: bool },
    Commit { txn: TxnId },
    Ack { txn: TxnId },
    Abort { txn: TxnId },
    Resolve { txn: TxnId },
    Resolution { txn: TxnId, answer: Answer },
    QueryPeer { txn: TxnId },
    PeerReply { txn: TxnId, status: PeerStatus },
    Forget { txn: TxnId },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer {
    /// The coordinator's prepare deadline.
    PrepareDeadline,
    /// The coordinator's retry of unacked Commits.
    CommitRetry,
    /// The group-commit flusher: syncs the store and releases the replies waiting on it. At the
    /// coordinator: the sync that makes an ended decision's deletion durable, after which the
    /// Forgets go out.
    Flush,
    /// The participant's resolver round for an in-doubt txn.
    Resolver,
    /// The participant's sweep of expired outcomes.
    Expire,
}
