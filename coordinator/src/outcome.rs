//! What a client is told about its transaction, and the metric that counts it.

use txn_metrics::{OutcomeLabel, ProtocolLabel, TxnLabels};
use txn_proto::pb::v1 as pb;
use txn_types::types::{KeyValue, ParticipantId, TxnId};

/// What the client is told.
#[derive(Debug, Clone)]
pub struct TxnOutcome {
    pub txn: TxnId,
    pub committed: bool,
    /// Events protocol: `committed` means only that the first step committed ("accepted").
    pub accepted: bool,
    pub reason: String,
    pub failed_branch: Option<usize>,
    pub reads: Vec<(ParticipantId, Vec<KeyValue>)>,
}

impl TxnOutcome {
    /// The client's answer.
    pub fn to_pb(&self) -> pb::TransactResponse {
        pb::TransactResponse {
            txn_id: self.txn.to_string(),
            outcome: if self.accepted {
                pb::Outcome::Accepted
            } else if self.committed {
                pb::Outcome::Committed
            } else {
                pb::Outcome::Aborted
            } as i32,
            reason: self.reason.clone(),
            failed_branch: self.failed_branch.map(|i| i as u32),
            results: self
                .reads
                .iter()
                .map(|(p, reads)| pb::BranchResult {
                    participant: p.to_string(),
                    reads: reads.iter().cloned().map(Into::into).collect(),
                })
                .collect(),
        }
    }
}

/// Counts a finished txn in the metrics.
pub(crate) fn count_txn(protocol: ProtocolLabel, outcome: OutcomeLabel) {
    txn_metrics::metrics()
        .txns
        .get_or_create(&TxnLabels { protocol, outcome })
        .inc();
}
