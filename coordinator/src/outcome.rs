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

/// What went wrong with a call to `participant`, in words a client or operator reads as the
/// cause: "p2 unreachable", "p2 timed out after 200 ms", "p2 refused: ...". The transport's own
/// text (connection errors, HTTP/2 details) goes to the log, not into abort reasons.
pub(crate) fn call_failure(
    participant: &str,
    status: &tonic::Status,
    timeout: std::time::Duration,
) -> String {
    let transport = std::error::Error::source(status).is_some()
        || status.message().contains("transport error")
        || status.message().contains("tcp connect error");
    tracing::debug!(
        participant,
        code = ?status.code(),
        message = %status.message(),
        source = ?std::error::Error::source(status),
        "a call to a participant failed"
    );
    use tonic::Code;
    match status.code() {
        Code::DeadlineExceeded | Code::Cancelled => {
            format!("{participant} timed out after {} ms", timeout.as_millis())
        }
        Code::Unavailable | Code::Unknown | Code::Internal if transport => {
            format!("{participant} unreachable")
        }
        Code::ResourceExhausted => format!("{participant} is overloaded: {}", status.message()),
        Code::Unavailable => format!("{participant} is unavailable: {}", status.message()),
        _ => format!("{participant} refused: {}", status.message()),
    }
}

/// Counts a finished txn in the metrics.
pub(crate) fn count_txn(protocol: ProtocolLabel, outcome: OutcomeLabel) {
    txn_metrics::metrics()
        .txns
        .get_or_create(&TxnLabels { protocol, outcome })
        .inc();
}
