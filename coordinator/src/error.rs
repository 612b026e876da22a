//! The coordinator's errors, and the one place they become gRPC statuses.

use txn_types::store::StoreError;
use txn_types::types::InvalidInput;

#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    #[error("{0}")]
    Unsupported(String),
    #[error("too many txns in flight (limit {limit}); retry later")]
    Overloaded { limit: usize },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Precondition(String),
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Unavailable(String),
    /// Refused before anything ran (the log is unreachable, or the request runs at another
    /// coordinator): the client may send it again, here or elsewhere. The message starts with
    /// "not started", so that clients can tell it from a call lost midway.
    #[error("not started: {0}")]
    NotStarted(String),
    /// An error passed on as it was (the answer of an earlier attempt).
    #[error("{1}")]
    Replayed(tonic::Code, String),
}

impl From<txn_types::record::CorruptRecord> for CoordError {
    fn from(e: txn_types::record::CorruptRecord) -> Self {
        CoordError::Store(StoreError::Corrupt(e))
    }
}

impl CoordError {
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            CoordError::Overloaded { .. } | CoordError::NotStarted(_)
        )
    }
}

impl From<CoordError> for tonic::Status {
    fn from(e: CoordError) -> Self {
        use tonic::Status;
        let msg = e.to_string();
        match e {
            CoordError::Invalid(_) => Status::invalid_argument(msg),
            CoordError::Unsupported(_) => Status::unimplemented(msg),
            CoordError::Overloaded { .. } => Status::resource_exhausted(msg),
            CoordError::NotFound(_) => Status::not_found(msg),
            CoordError::Precondition(_) => Status::failed_precondition(msg),
            CoordError::Store(StoreError::Corrupt(_)) => Status::data_loss(msg),
            CoordError::Store(_) => Status::unavailable(msg),
            CoordError::AlreadyExists(_) => Status::already_exists(msg),
            CoordError::Unavailable(_) | CoordError::NotStarted(_) => Status::unavailable(msg),
            CoordError::Replayed(code, _) => Status::new(code, msg),
        }
    }
}
