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
//!
//! Keys are kept for a retention period (`--client-key-retention-secs`, a day by default),
//! then forgotten by a sweeper: a request sent again after that runs as a new one. Keys of
//! sagas still running are kept whatever their age.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use txn_proto::pb::v1 as pb;
use txn_types::rec::{ClientTxnRecord, SagaRecord, SagaState};
use txn_types::record;
use txn_types::store::WriteBatch;
use txn_types::types::{MAX_RECORD_BYTES, TxnId};
use txn_types::unix_ms;

use crate::context::Context;
use crate::error::CoordError;
use crate::log::MAX_LOG_BATCH_OPS;

/// Prefix of client key records: `k/KEY`.
pub const CLIENT_PREFIX: &[u8] = b"k/";

/// Default time a client key is remembered.
pub const DEFAULT_CLIENT_KEY_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);
/// Key records the sweeper reads at once (bounds its memory and each write batch).
pub const CLIENT_KEY_SWEEP_PAGE: usize = 1_000;
/// Longest pause between two sweeps (shorter when the retention is short).
pub const CLIENT_KEY_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

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

/// The encoded key record. A response too big for one record is kept without its reads.
pub(crate) fn client_record(
    tag: &ClientTag,
    txn: &TxnId,
    protocol: pb::Protocol,
    response: Option<pb::TransactResponse>,
) -> Vec<u8> {
    let record = |response: &Option<pb::TransactResponse>| ClientTxnRecord {
        request_sha256: tag.request_sha256.clone(),
        txn_id: txn.to_string(),
        protocol: protocol as i32,
        response: response.as_ref().map(|r| r.encode_to_vec()),
        at_unix_ms: unix_ms(),
        owner_epoch: 0,
    };
    let mut response = response;
    let mut rec = record(&response);
    if rec.encoded_len() > MAX_RECORD_BYTES
        && let Some(r) = response.as_mut()
    {
        r.results.clear();
        r.reason = format!(
            "{}{}(the reads of this txn were too large to keep for replays)",
            r.reason,
            if r.reason.is_empty() { "" } else { "; " }
        );
        rec = record(&response);
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

/// What a request under a key gets when it arrives.
pub(crate) enum Claim {
    /// The key was used before: its recorded answer.
    Answered(pb::TransactResponse),
    /// The same request runs now: wait for its answer.
    Wait(watch::Receiver<Option<Shared>>),
    /// This request runs; send its answer here, then [`ClientKeys::release`].
    Run(watch::Sender<Option<Shared>>),
    /// An events transfer was started under the key and its answer never recorded (the
    /// coordinator stopped): run it again under the same id, which its source answers as it
    /// did the first time. Then as for `Run`.
    Resume(watch::Sender<Option<Shared>>, TxnId),
}

/// What a key's record says about a request sent again.
pub(crate) enum Recorded {
    Answer(pb::TransactResponse),
    /// An events transfer whose answer was not recorded: ask its source again.
    Resume(TxnId),
}

/// The client-key component: the requests running under a key, and the key records.
pub struct ClientKeys {
    pub(crate) ctx: Arc<Context>,
    /// Requests running under a client key right now (bounded by the admission limit).
    running: Mutex<HashMap<String, Running>>,
}

impl std::ops::Deref for ClientKeys {
    type Target = Context;

    fn deref(&self) -> &Context {
        &self.ctx
    }
}

impl ClientKeys {
    pub(crate) fn new(ctx: Arc<Context>) -> Self {
        Self {
            ctx,
            running: Mutex::new(HashMap::new()),
        }
    }

    /// Registers a request under `tag`, or says what it gets instead of running. The key is
    /// held here first (a later request with it waits for this one), then the log says
    /// whether it was used before; over a shared log (etcd) the key is also claimed there, so
    /// no other coordinator runs the request meanwhile (see [`crate::dedup_shared`]).
    pub(crate) async fn claim(&self, tag: &ClientTag) -> Result<Claim, CoordError> {
        let tx = {
            let mut running = self.running.lock().expect("client txns");
            match running.get(tag.id.as_str()) {
                Some(r) if r.request_sha256 != tag.request_sha256 => {
                    return Err(mismatch(tag, "still running"));
                }
                Some(r) => return Ok(Claim::Wait(r.done.clone())),
                None => {
                    let (tx, rx) = watch::channel(None);
                    running.insert(
                        tag.id.as_str().to_owned(),
                        Running {
                            request_sha256: tag.request_sha256.clone(),
                            done: rx,
                        },
                    );
                    tx
                }
            }
        };
        let known = match self.gc.shared() {
            Some(shared) => self.claim_shared(shared, tag).await,
            None => self.recorded_answer(tag).await,
        };
        match known {
            Ok(None) => Ok(Claim::Run(tx)),
            Ok(Some(Recorded::Resume(id))) => Ok(Claim::Resume(tx, id)),
            Ok(Some(Recorded::Answer(answer))) => {
                self.release(tag);
                let _ = tx.send(Some(Ok(answer.clone())));
                Ok(Claim::Answered(answer))
            }
            Err(e) => {
                // Whoever waits on this key meanwhile gets the same refusal.
                self.release(tag);
                let status = tonic::Status::from(e);
                let shared = (status.code(), status.message().to_owned());
                let _ = tx.send(Some(Err(shared.clone())));
                Err(CoordError::Replayed(shared.0, shared.1))
            }
        }
    }

    /// The request under `tag` is over: later ones read its key record.
    pub(crate) fn release(&self, tag: &ClientTag) {
        self.running
            .lock()
            .expect("client txns")
            .remove(tag.id.as_str());
    }

    /// The stored answer for `tag`, if the key was used before.
    async fn recorded_answer(&self, tag: &ClientTag) -> Result<Option<Recorded>, CoordError> {
        let key = client_key(&tag.id);
        let Some(bytes) = self.check(self.gc.get(&key).await)? else {
            return Ok(None);
        };
        let rec: ClientTxnRecord = self.check(record::decode(&key, &bytes).map_err(Into::into))?;
        self.answer_of(tag, &key, rec).await.map(Some)
    }

    /// The answer a key record gives `tag`: the one recorded, or a saga's from its log, or for
    /// an events transfer whose answer was not recorded, its id to ask its source again.
    pub(crate) async fn answer_of(
        &self,
        tag: &ClientTag,
        key: &[u8],
        rec: ClientTxnRecord,
    ) -> Result<Recorded, CoordError> {
        if rec.request_sha256 != tag.request_sha256 {
            return Err(mismatch(tag, &rec.txn_id));
        }
        if let Some(bytes) = rec.response {
            let r = pb::TransactResponse::decode(bytes.as_slice()).map_err(|e| {
                txn_types::store::StoreError::Corrupt(record::CorruptRecord {
                    key: String::from_utf8_lossy(key).into_owned(),
                    problem: format!("the recorded answer is undecodable: {e}"),
                })
            });
            return Ok(Recorded::Answer(self.check(r)?));
        }
        if rec.protocol == pb::Protocol::Events as i32 {
            return Ok(Recorded::Resume(TxnId::parse("txn_id", &rec.txn_id)?));
        }
        // A saga that was running when the coordinator stopped: answer from its log.
        let saga_id = TxnId::parse("txn_id", &rec.txn_id)?;
        let Some(saga) = self.saga(&saga_id).await? else {
            return Err(CoordError::Unavailable(format!(
                "client_txn_id {}: saga {saga_id} has no log record; retry later",
                tag.id
            )));
        };
        Ok(Recorded::Answer(saga_answer(&saga_id, &saga).ok_or_else(
            || {
                CoordError::Unavailable(format!(
                    "client_txn_id {}: saga {saga_id} is still running; retry later",
                    tag.id
                ))
            },
        )?))
    }

    /// Forgets the keys whose record is older than `retention` at `now_unix_ms`, except keys
    /// of requests running now and of sagas not yet ended. The deletions are lazy: one lost in
    /// a crash is made again by the next sweep. Returns how many keys it forgot.
    pub async fn sweep_client_keys(
        &self,
        retention: Duration,
        now_unix_ms: u64,
    ) -> Result<usize, CoordError> {
        let cutoff = now_unix_ms.saturating_sub(retention.as_millis() as u64);
        let mut start = CLIENT_PREFIX.to_vec();
        let mut forgotten = 0;
        loop {
            let page = self.check(
                self.gc
                    .scan_page(CLIENT_PREFIX, &start, CLIENT_KEY_SWEEP_PAGE)
                    .await,
            )?;
            let mut batch = WriteBatch::default();
            for (key, bytes) in &page {
                let rec: ClientTxnRecord =
                    self.check(record::decode(key, bytes).map_err(Into::into))?;
                if rec.at_unix_ms >= cutoff {
                    continue;
                }
                let id = String::from_utf8_lossy(&key[CLIENT_PREFIX.len()..]).into_owned();
                if self.running.lock().expect("client txns").contains_key(&id) {
                    continue;
                }
                let ended = rec.response.is_some()
                    || match TxnId::parse("txn_id", &rec.txn_id) {
                        // A saga's key written before its end: keep it while the saga runs.
                        Ok(saga) => match self.saga(&saga).await? {
                            Some(log) => saga_answer(&saga, &log).is_some(),
                            None => true,
                        },
                        // A claim whose request never got an answer (a shared log's).
                        Err(_) => true,
                    };
                if ended {
                    batch.delete(key.clone());
                    forgotten += 1;
                }
                if batch.ops.len() >= MAX_LOG_BATCH_OPS {
                    self.check(self.gc.write_lazy(std::mem::take(&mut batch)))?;
                }
            }
            if !batch.is_empty() {
                self.check(self.gc.write_lazy(batch))?;
            }
            match page.last() {
                Some((last, _)) if page.len() == CLIENT_KEY_SWEEP_PAGE => {
                    start = [last.as_slice(), &[0]].concat();
                }
                _ => return Ok(forgotten),
            }
        }
    }

    /// Runs [`ClientKeys::sweep_client_keys`] every minute (or every half retention, if that
    /// is shorter) until the process stops.
    pub async fn run_client_key_sweeper(self: Arc<Self>, retention: Duration) {
        let every = txn_server::serve::sweep_every(retention, CLIENT_KEY_SWEEP_INTERVAL);
        txn_server::serve::run_sweeper("sweeping client keys", every, || async {
            self.sweep_client_keys(retention, unix_ms())
                .await
                .map(|dropped| txn_server::serve::Swept {
                    dropped,
                    more: false,
                })
        })
        .await
    }

    /// Adds the key record for a finished request to a batch.
    pub(crate) fn put_record(
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

/// Writes into the record of `saga`'s client key (if its log names one, the key still belongs
/// to the saga, and its record lacks the answer) the answer from the log, before the log
/// record goes: otherwise a retry with the key could never be answered.
pub(crate) async fn answer_key_from_log(
    ctx: &Context,
    batch: &mut WriteBatch,
    saga: &TxnId,
    log: &SagaRecord,
) -> Result<(), CoordError> {
    let Ok(key_id) = TxnId::parse("client_txn_id", &log.client_txn_id) else {
        return Ok(());
    };
    let key = client_key(&key_id);
    let Some(bytes) = ctx.check(ctx.gc.get(&key).await)? else {
        return Ok(());
    };
    let mut rec: ClientTxnRecord = ctx.check(record::decode(&key, &bytes).map_err(Into::into))?;
    if rec.txn_id != saga.as_str() || rec.response.is_some() {
        return Ok(());
    }
    if let Some(answer) = saga_answer(saga, log) {
        rec.response = Some(answer.encode_to_vec());
        batch.put(key, record::encode(&rec));
    }
    Ok(())
}

/// The answer of a finished saga from its log record (its reads are not kept there).
pub(crate) fn saga_answer(id: &TxnId, rec: &SagaRecord) -> Option<pb::TransactResponse> {
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
