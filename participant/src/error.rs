//! The participant's errors, and the one place they become gRPC statuses.

use txn_metrics::RefusalReason;
use txn_types::store::StoreError;
use txn_types::types::{InvalidInput, TxnId};

#[derive(Debug, thiserror::Error)]
pub enum ParticipantError {
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    #[error("txn_id {0}: no prepared record or outcome for this txn here")]
    UnknownTxn(TxnId),
    #[error("{0}")]
    OutcomeConflict(String),
    #[error(
        "key {key:?} is locked by prepared txn {holder}; its committed value is undecided, retry later"
    )]
    Locked { key: String, holder: TxnId },
    #[error("busy: prepared txn {holder} holds a key this step needs; retry later")]
    Busy { holder: TxnId },
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("{}", .0.message)]
    Disk(crate::disk::DiskRefusal),
    /// A Prepare refused at one of the participant's bounds; the message names it and its flag.
    #[error("{0}")]
    Overloaded(String),
    #[error("no vote within the Prepare's timeout (waited {waited_ms} ms for locks)")]
    DeadlineExceeded { waited_ms: u64 },
    #[error("{0}")]
    Feed(txn_participant_core::outbox::FeedRefusal),
    #[error("transfer_id {0}: no record of this transfer here")]
    UnknownTransfer(String),
}

impl ParticipantError {
    /// Whether the same request may succeed if sent again later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ParticipantError::Locked { .. } | ParticipantError::Busy { .. }
        )
    }
}

impl From<ParticipantError> for tonic::Status {
    fn from(e: ParticipantError) -> Self {
        use tonic::Status;
        let msg = e.to_string();
        match e {
            ParticipantError::Invalid(_) => Status::invalid_argument(msg),
            ParticipantError::UnknownTxn(_) => Status::not_found(msg),
            ParticipantError::OutcomeConflict(_) => Status::failed_precondition(msg),
            ParticipantError::Locked { .. } | ParticipantError::Busy { .. } => Status::aborted(msg),
            ParticipantError::DeadlineExceeded { .. } => Status::deadline_exceeded(msg),
            ParticipantError::Store(StoreError::Corrupt(_)) => Status::data_loss(msg),
            ParticipantError::Store(_) => Status::unavailable(msg),
            ParticipantError::Disk(r) => match r.reason {
                RefusalReason::ReadOnly => Status::unavailable(msg),
                _ => Status::resource_exhausted(msg),
            },
            ParticipantError::Overloaded(_) => Status::resource_exhausted(msg),
            ParticipantError::Feed(r) => {
                use txn_participant_core::outbox::FeedRefusal;
                match r {
                    FeedRefusal::OutOfRange { .. } => Status::out_of_range(msg),
                    FeedRefusal::TooManyConsumers => Status::resource_exhausted(msg),
                    FeedRefusal::UnknownConsumer => Status::not_found(format!("consumer: {msg}")),
                    FeedRefusal::AckBeyondHead { .. } => {
                        Status::invalid_argument(format!("offset: {msg}"))
                    }
                }
            }
            ParticipantError::UnknownTransfer(_) => Status::not_found(msg),
        }
    }
}
