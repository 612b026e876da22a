//! Client idempotency keys (`TransactRequest.client_txn_id`): a request sent again with the
//! same key gets the first answer and never runs twice; the same key on a different request
//! is refused.
//!
//! Where the memory lives decides what "never twice" survives:
//! - While the first request runs, later ones with the key wait for its answer (in memory).
//! - A 2PC commit writes its key record in the same batch as the commit decision, so after any
//!   crash the key either names a committed txn or names nothing, in which case the first
//!   attempt was presumed aborted and running the request again is safe.
//! - An abort's key record is written lazily: losing it in a crash only lets a retry run a
//!   request that had no effect.
//! - A saga's key record is made durable with the saga's first log write (without an
//!   answer); the answer is added when the saga ends. A retry while the saga is still running
//!   after a restart is told to come back later.

use std::sync::Arc;

use prost::Message;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use txn_proto::pb::rec::{ClientTxnRecord, SagaRecord, SagaState};
use txn_proto::pb::v1 as pb;
use txn_proto::record;
use txn_proto::store::WriteBatch;
use txn_proto::types::{MAX_RECORD_BYTES, TxnId, TxnRequest};
use txn_proto::unix_ms;

use crate::error::CoordError;
use crate::node::{Coordinator, TxnOutcome};

/// Prefix of client key records: `k/KEY`.
pub const CLIENT_PREFIX: &[u8] = b"k/";

pub fn client_key(id: &TxnId) -> Vec<u8> {
    [CLIENT_PREFIX, id.as_str().as_bytes()].concat()
}

/// A request's idempotency key and the fingerprint of what it asked for.
#[derive(Debug, Clone)]
pub struct ClientTag {
    pub id: TxnId,
    pub request_sha256: Vec<u8>,
}

/// The answer (or the error) of a request, shared with requests that wait on the same key.
pub(crate) type Shared = Result<pb::TransactResponse, (tonic::Code, String)>;

/// A request running under a key right now.
pub(crate) struct Running {
    request_sha256: Vec<u8>,
    done: watch::Receiver<Option<Shared>>,
}

/// Splits the key off a Transact request and fingerprints the rest.
pub fn tag_request(req: &mut pb::TransactRequest) -> Result<Option<ClientTag>, CoordError> {
    let raw = std::mem::take(&mut req.client_txn_id);
    if raw.is_empty() {
        return Ok(None);
    }
    let id = TxnId::parse("client_txn_id", &raw)?;
    let request_sha256 = Sha256::digest(req.encode_to_vec()).to_vec();
    Ok(Some(ClientTag { id, request_sha256 }))
}

impl TxnOutcome {
    /// The client's answer.
    pub fn to_pb(&self) -> pb::TransactResponse {
        pb::TransactResponse {
            txn_id: self.txn.to_string(),
            outcome: if self.committed {
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

/// The encoded key record. A response too big for one record is kept without its reads.
pub(crate) fn client_record(
    tag: &ClientTag,
    txn: &TxnId,
    protocol: pb::Protocol,
    response: Option<pb::TransactResponse>,
) -> Vec<u8> {
    let mut rec = ClientTxnRecord {
        request_sha256: tag.request_sha256.clone(),
        txn_id: txn.to_string(),
        protocol: protocol as i32,
        response,
        at_unix_ms: unix_ms(),
    };
    if rec.encoded_len() > MAX_RECORD_BYTES
        && let Some(r) = rec.response.as_mut()
    {
        r.results.clear();
        r.reason = format!(
            "{}{}(the reads of this txn were too large to keep for replays)",
            r.reason,
            if r.reason.is_empty() { "" } else { "; " }
        );
    }
    record::encode(&rec)
}

fn mismatch(tag: &ClientTag, txn: &str) -> CoordError {
    CoordError::AlreadyExists(format!(
        "client_txn_id {}: already used for a different request (txn {txn}); use a new key \
         for a new request",
        tag.id
    ))
}

impl Coordinator {
    /// Runs `req` once per idempotency key (see the module docs).
    pub async fn transact_once(
        self: &Arc<Self>,
        req: TxnRequest,
        tag: ClientTag,
    ) -> Result<pb::TransactResponse, CoordError> {
        let first = {
            let mut running = self.client_txns.lock().expect("client txns");
            match running.get(tag.id.as_str()) {
                Some(r) if r.request_sha256 != tag.request_sha256 => {
                    return Err(mismatch(&tag, "still running"));
                }
                Some(r) => Err(r.done.clone()),
                None => {
                    if let Some(answer) = self.recorded_answer(&tag)? {
                        return Ok(answer);
                    }
                    let (tx, rx) = watch::channel(None);
                    running.insert(
                        tag.id.as_str().to_owned(),
                        Running {
                            request_sha256: tag.request_sha256.clone(),
                            done: rx,
                        },
                    );
                    Ok(tx)
                }
            }
        };
        let sender = match first {
            Ok(tx) => tx,
            Err(mut done) => {
                // The same request is running: wait for its answer.
                let answer = done
                    .wait_for(Option::is_some)
                    .await
                    .map_err(|_| CoordError::Unavailable("the first attempt was lost".into()))?
                    .clone()
                    .expect("waited for Some");
                return answer.map_err(|(code, msg)| CoordError::Replayed(code, msg));
            }
        };
        // In its own task, so that the key is released and waiters are answered even if
        // this caller goes away (deadline, cancel) while the txn runs.
        let node = self.clone();
        let run = tokio::spawn(async move {
            let shared: Shared = match node.transact_tagged(req, Some(tag.clone())).await {
                Ok(o) => Ok(o.to_pb()),
                Err(e) => {
                    let status = tonic::Status::from(e);
                    Err((status.code(), status.message().to_owned()))
                }
            };
            node.client_txns
                .lock()
                .expect("client txns")
                .remove(tag.id.as_str());
            let _ = sender.send(Some(shared.clone()));
            shared
        });
        run.await
            .map_err(|e| CoordError::Unavailable(format!("txn task failed: {e}")))?
            .map_err(|(code, msg)| CoordError::Replayed(code, msg))
    }

    /// The stored answer for `tag`, if the key was used before.
    fn recorded_answer(&self, tag: &ClientTag) -> Result<Option<pb::TransactResponse>, CoordError> {
        let key = client_key(&tag.id);
        let Some(bytes) = self.check(self.gc.store().get(&key))? else {
            return Ok(None);
        };
        let rec: ClientTxnRecord = self.check(record::decode(&key, &bytes).map_err(Into::into))?;
        if rec.request_sha256 != tag.request_sha256 {
            return Err(mismatch(tag, &rec.txn_id));
        }
        if let Some(r) = rec.response {
            return Ok(Some(r));
        }
        // A saga that was running when the coordinator stopped: answer from its log.
        let saga_id = TxnId::parse("txn_id", &rec.txn_id)?;
        let Some(saga) = self.saga(&saga_id)? else {
            return Err(CoordError::Unavailable(format!(
                "client_txn_id {}: saga {saga_id} has no log record; retry later",
                tag.id
            )));
        };
        Ok(Some(saga_answer(&saga_id, &saga).ok_or_else(|| {
            CoordError::Unavailable(format!(
                "client_txn_id {}: saga {saga_id} is still running; retry later",
                tag.id
            ))
        })?))
    }

    /// Adds the key record for a finished request to a batch.
    pub(crate) fn put_client_record(
        batch: &mut WriteBatch,
        tag: &ClientTag,
        txn: &TxnId,
        protocol: pb::Protocol,
        response: Option<pb::TransactResponse>,
    ) {
        batch.put(
            client_key(&tag.id),
            client_record(tag, txn, protocol, response),
        );
    }
}

/// The answer of a finished saga from its log record (its reads are not kept there).
fn saga_answer(id: &TxnId, rec: &SagaRecord) -> Option<pb::TransactResponse> {
    let outcome = match SagaState::try_from(rec.state).ok()? {
        SagaState::Completed => pb::Outcome::Committed,
        SagaState::Compensated | SagaState::Parked => pb::Outcome::Aborted,
        _ => return None,
    };
    Some(pb::TransactResponse {
        txn_id: id.to_string(),
        outcome: outcome as i32,
        reason: rec.reason.clone(),
        failed_branch: rec.failed_step,
        results: Vec::new(),
    })
}
