//! Resolving in-doubt txns: a peer's question (QueryPeer), the cooperative termination
//! verdict drawn from a peer's answer, and applying a decision learned by the resolver.
//!
//! Cooperative termination goes beyond presumed abort's usual "ask the coordinator": while the
//! coordinator is unreachable, an in-doubt participant asks the txn's other participants. Any
//! of them that committed means the decision was COMMIT. Any that voted NO, aborted, or never
//! prepared means the txn can only abort, because the coordinator cannot have collected every
//! YES. A participant that never prepared the txn first records a durable tombstone, so that a
//! Prepare that arrives later votes NO: otherwise the asker's abort and a commit could both
//! happen. If every peer is prepared, a txn that commits at its logged decision is blocked
//! until the coordinator answers; one that commits at its votes has committed
//! ([`peers_verdict`]).

use txn_types::store::{Store, StoreError, WriteBatch};
use txn_types::types::{CommitPoint, Decision, TxnId};

use crate::core::{
    AbortAnswer, AbortRecord, AbortSource, CommitAnswer, ParticipantCore, Refusal, TxnStatus,
};
use crate::step::Step;

/// What a peer's answer tells an in-doubt participant: the decision, if it settles the txn.
pub fn peer_verdict(status: TxnStatus) -> Option<Decision> {
    match status {
        TxnStatus::Committed => Some(Decision::Commit),
        TxnStatus::Aborted | TxnStatus::Unknown => Some(Decision::Abort),
        TxnStatus::Prepared => None,
    }
}

/// What the answers of every other participant of a txn (one each, from this resolver round)
/// tell an in-doubt participant: any answer that settles it alone ([`peer_verdict`]), or, for a
/// txn that commits at its votes, COMMIT once all `peers` answered prepared (this participant
/// is prepared too, so every YES is durable: the commit point has passed). An abort of such a
/// txn is only ever decided behind a fence, a participant that can never vote YES, and a
/// fenced participant never answers prepared.
pub fn peers_verdict(
    commit_point: CommitPoint,
    answers: &[TxnStatus],
    peers: usize,
) -> Option<Decision> {
    if let Some(d) = answers.iter().find_map(|s| peer_verdict(*s)) {
        return Some(d);
    }
    let all_prepared = answers.len() == peers && answers.iter().all(|s| *s == TxnStatus::Prepared);
    (commit_point == CommitPoint::Votes && all_prepared).then_some(Decision::Commit)
}

/// The resolver's step for a decision it learned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// Applied (or already in place).
    Applied,
    /// An operator holds the txn: left for an explicit outcome.
    LeftHeld,
    /// The decision meets the other outcome here (only a heuristic outcome does that).
    Refused(Refusal),
}

impl ParticipantCore {
    /// A peer in doubt asks what this participant knows of `txn`. Answered once everything
    /// written so far is durable: an outcome may still sit in the group-commit queue, and a
    /// tombstone written now is a promise.
    pub fn query_peer(
        &mut self,
        txn: &TxnId,
        store: &dyn Store,
        now_unix_ms: u64,
    ) -> Result<Step<TxnStatus>, StoreError> {
        let status = self.status(txn, store)?;
        if status != TxnStatus::Unknown {
            return Ok(Step::forced(WriteBatch::default(), status));
        }
        let step = match self.abort_record(txn, store, now_unix_ms)? {
            AbortRecord::Written { batch, .. } => Step::forced(batch, TxnStatus::Aborted),
            AbortRecord::AlreadyAborted => Step::forced(WriteBatch::default(), TxnStatus::Aborted),
            AbortRecord::Committed => Step::forced(WriteBatch::default(), TxnStatus::Committed),
        };
        // The txn's own Prepare may still be queued here: the tombstone ends it, so it leaves
        // the queue now rather than when it next looks.
        Ok(self.leave_lock_queue(txn, step))
    }

    /// Applies a decision the resolver learned, from the coordinator or from a peer.
    pub fn resolve(
        &mut self,
        txn: &TxnId,
        decision: Decision,
        store: &dyn Store,
        now_unix_ms: u64,
    ) -> Result<Step<Resolved>, StoreError> {
        Ok(match decision {
            Decision::Commit => self.commit(txn, store, now_unix_ms)?.map(|a| match a {
                CommitAnswer::Committed | CommitAnswer::AlreadyCommitted => Resolved::Applied,
                CommitAnswer::Refused(r) => Resolved::Refused(r),
            }),
            Decision::Abort => self
                .abort(txn, AbortSource::Resolver, store, now_unix_ms)?
                .map(|a| match a {
                    AbortAnswer::Aborted | AbortAnswer::AlreadyAborted => Resolved::Applied,
                    AbortAnswer::LeftHeld => Resolved::LeftHeld,
                    AbortAnswer::Refused(r) => Resolved::Refused(r),
                }),
        })
    }
}
