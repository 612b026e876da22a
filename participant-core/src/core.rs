//! The participant's side of two-phase commit, as a state machine with no I/O.
//!
//! It owns the lock table and the in-memory image of the prepared records, and decides what
//! each message does. It reads committed data through [`Store`] but never writes: every
//! change comes back as a [`WriteBatch`] that the driver applies, and the driver alone decides
//! when to wait for durability. The invariants it protects:
//! - a YES vote is only sent after its prepared record is durable (the driver waits on the
//!   batch returned by [`ParticipantCore::prepare`] before replying);
//! - after YES, only a decision moves the txn on: there is no unilateral abort here;
//! - every message is idempotent: a duplicate Prepare, Commit or Abort returns the same answer
//!   and changes nothing.
//!
//! Storage layout (one keyspace, so one batch is atomic):
//! `d/<key>` committed data, `p/<txn>` prepared records, `o/<txn>` outcomes and abort tombstones.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message;

use txn_types::rec::{OutcomeKind, OutcomeRecord, PreparedRecord, Write};
use txn_types::record;
use txn_types::store::{Store, StoreError, WriteBatch};
use txn_types::types::{
    KeyValue, MAX_RECORD_BYTES, Op, ParticipantId, TxnId, decode_counter, encode_counter,
};

use crate::locks::LockTable;

pub const DATA_PREFIX: &[u8] = b"d/";
pub const PREPARED_PREFIX: &[u8] = b"p/";
pub const OUTCOME_PREFIX: &[u8] = b"o/";
/// Index of the outcomes that expire by age: `x/<at_unix_ms, 8 bytes big-endian><txn>`.
pub const EXPIRY_PREFIX: &[u8] = b"x/";
/// Expired outcome index entries one sweep step handles (bounds one write batch).
pub const OUTCOME_SWEEP_PAGE: usize = 1_000;

pub fn data_key(key: &[u8]) -> Vec<u8> {
    [DATA_PREFIX, key].concat()
}

pub fn prepared_key(txn: &TxnId) -> Vec<u8> {
    [PREPARED_PREFIX, txn.as_str().as_bytes()].concat()
}

pub fn outcome_key(txn: &TxnId) -> Vec<u8> {
    [OUTCOME_PREFIX, txn.as_str().as_bytes()].concat()
}

fn expiry_key(at_unix_ms: u64, txn: &TxnId) -> Vec<u8> {
    [
        EXPIRY_PREFIX,
        &at_unix_ms.to_be_bytes(),
        txn.as_str().as_bytes(),
    ]
    .concat()
}

/// Records `txn`'s outcome. `expires`: the record only has to outlive the messages that can
/// still ask about it (aborts and tombstones: a Prepare, at most the coordinator's prepare
/// deadline; one-phase commits: the coordinator's settling), so [`sweep_expired`] may drop it
/// after the retention; otherwise it stays until the coordinator says the txn has ended.
fn put_outcome(
    batch: &mut WriteBatch,
    txn: &TxnId,
    kind: OutcomeKind,
    now_unix_ms: u64,
    expires: bool,
) {
    batch.put(outcome_key(txn), outcome(kind, now_unix_ms));
    if expires {
        batch.put(expiry_key(now_unix_ms, txn), Vec::new());
    }
}

/// Drops the outcomes indexed for expiry that were recorded before `cutoff_unix_ms`, at most
/// `limit` index entries. Returns the batch and whether more entries may be due.
pub fn sweep_expired(
    store: &dyn Store,
    cutoff_unix_ms: u64,
    limit: usize,
) -> Result<(WriteBatch, bool), StoreError> {
    let mut batch = WriteBatch::default();
    let page = store.scan_page(EXPIRY_PREFIX, EXPIRY_PREFIX, limit)?;
    let full = page.len() == limit;
    for (key, _) in page {
        let rest = &key[EXPIRY_PREFIX.len()..];
        let corrupt = |problem: &str| {
            StoreError::Corrupt(record::CorruptRecord {
                key: String::from_utf8_lossy(&key).into_owned(),
                problem: problem.to_owned(),
            })
        };
        let (at, txn) = rest
            .split_first_chunk::<8>()
            .ok_or_else(|| corrupt("expiry key too short"))?;
        let at = u64::from_be_bytes(*at);
        if at >= cutoff_unix_ms {
            return Ok((batch, false));
        }
        let txn = std::str::from_utf8(txn)
            .ok()
            .and_then(|t| TxnId::parse("txn", t).ok())
            .ok_or_else(|| corrupt("expiry key names no valid txn id"))?;
        // Only the record this entry was written with: a newer one has its own entry.
        let okey = outcome_key(&txn);
        if let Some(bytes) = store.get(&okey)? {
            let rec: OutcomeRecord = record::decode(&okey, &bytes)?;
            if rec.at_unix_ms == at {
                batch.delete(okey);
            }
        }
        batch.delete(key);
    }
    Ok((batch, full))
}

/// A Prepare, validated.
#[derive(Debug, Clone)]
pub struct PrepareRequest {
    pub txn: TxnId,
    pub coordinator_epoch: u64,
    pub participants: Vec<ParticipantId>,
    pub ops: Vec<Op>,
}

/// What the driver must do with a Prepare.
#[derive(Debug, PartialEq)]
pub enum PrepareStep {
    /// Another txn holds a conflicting lock: wait for a release and try again, or vote NO
    /// once the lock wait is over.
    Blocked { holder: TxnId },
    /// Vote NO. `batch` (an abort tombstone) may be written lazily.
    VoteNo { reason: String, batch: WriteBatch },
    /// Make `batch` (the prepared record) durable, then vote YES with `reads`.
    Persist {
        batch: WriteBatch,
        reads: Vec<KeyValue>,
    },
    /// A duplicate of a Prepare already voted YES: vote YES again once the store is synced.
    Revote { reads: Vec<KeyValue> },
}

/// What the driver must do with a Commit.
#[derive(Debug, PartialEq)]
pub enum CommitStep {
    /// Apply `batch` (writes, outcome, prepared record removed); ack once it is durable.
    Apply { batch: WriteBatch },
    /// Already committed: ack once the store is synced.
    AlreadyCommitted,
    /// The txn is not prepared here: the Commit is refused.
    Refused(Refusal),
}

/// What the driver must do with a one-phase commit (a txn whose only participant is this one).
#[derive(Debug, PartialEq)]
pub enum OnePhaseStep {
    /// A prepared txn holds a conflicting lock: wait for a release and try again, or refuse
    /// once the lock wait is over.
    Blocked { holder: TxnId },
    /// Apply `batch` (the writes and the committed outcome, in one write); answer committed
    /// with `reads` once it is durable.
    Apply {
        batch: WriteBatch,
        reads: Vec<KeyValue>,
    },
    /// An earlier copy committed it: answer committed once the store is synced.
    AlreadyCommitted,
    /// Nothing changes. `batch` (an abort tombstone, possibly empty) may be written lazily.
    Refuse { reason: String, batch: WriteBatch },
}

/// What the driver must do with an Abort.
#[derive(Debug, PartialEq)]
pub enum AbortStep {
    /// Apply `batch` lazily (presumed abort: nothing here needs to be durable) and ack.
    Apply {
        batch: WriteBatch,
    },
    /// Already aborted: ack.
    AlreadyAborted,
    Refused(Refusal),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No record of the txn at all.
    Unknown,
    /// The txn reached the other outcome: answering would break atomicity.
    Conflict(String),
}

/// What this participant knows about a txn, for Resolve answers and operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnStatus {
    Prepared,
    Committed,
    Aborted,
    Unknown,
}

/// Ordered collections only, so that cloning, comparing and hashing a core is deterministic
/// (the model checker explores cores as states).
#[derive(Default, Debug, Clone, PartialEq)]
pub struct ParticipantCore {
    locks: LockTable,
    prepared: BTreeMap<TxnId, PreparedRecord>,
    /// Prepared txns an operator pinned for a forced outcome: only an explicit Commit or
    /// Abort moves them, never this participant's own resolver.
    held: BTreeSet<TxnId>,
}

// Prepared records are prost messages, which derive neither `Eq` nor `Hash`; their fields
// hold no floats, so equality is total, and hashing their encoding is consistent with it.
impl Eq for ParticipantCore {}

impl std::hash::Hash for ParticipantCore {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.locks.hash(state);
        for (txn, rec) in &self.prepared {
            txn.hash(state);
            rec.encode_to_vec().hash(state);
        }
        self.held.hash(state);
    }
}

impl ParticipantCore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds the in-memory state from the durable prepared records, re-taking their locks.
    /// Must run before any request is served: a prepared txn's keys may not be read or written
    /// by anyone until its decision is known.
    pub fn recover(&mut self, store: &dyn Store) -> Result<Vec<TxnId>, StoreError> {
        let mut txns = Vec::new();
        for (key, bytes) in store.scan_prefix(PREPARED_PREFIX)? {
            let rec: PreparedRecord = record::decode(&key, &bytes)?;
            let txn = TxnId::parse("prepared record txn_id", &rec.txn_id).map_err(|e| {
                StoreError::Corrupt(record::CorruptRecord {
                    key: String::from_utf8_lossy(&key).into_owned(),
                    problem: e.to_string(),
                })
            })?;
            // Locks of recovered txns cannot conflict: they were all held together before.
            self.locks
                .try_lock_all(&txn, &rec.exclusive_keys, &rec.shared_keys)
                .expect("prepared txns held their locks together before the restart");
            self.prepared.insert(txn.clone(), rec);
            txns.push(txn);
        }
        Ok(txns)
    }

    pub fn prepare(
        &mut self,
        req: &PrepareRequest,
        store: &dyn Store,
        now_unix_ms: u64,
    ) -> Result<PrepareStep, StoreError> {
        if let Some(rec) = self.prepared.get(&req.txn) {
            return Ok(PrepareStep::Revote {
                reads: rec.reads.iter().cloned().map(Into::into).collect(),
            });
        }
        match read_outcome(store, &req.txn)? {
            Some(OutcomeKind::Aborted) => {
                return Ok(PrepareStep::VoteNo {
                    reason: "txn was already aborted here".into(),
                    batch: WriteBatch::default(),
                });
            }
            Some(OutcomeKind::Committed) => {
                // A duplicate Prepare that arrives after the commit: the vote was YES.
                return Ok(PrepareStep::Revote { reads: Vec::new() });
            }
            _ => {}
        }

        let (exclusive, shared) = lock_sets(&req.ops);
        if let Err(holder) = self.locks.try_lock_all(&req.txn, &exclusive, &shared) {
            return Ok(PrepareStep::Blocked { holder });
        }
        match evaluate(&req.ops, store)? {
            Err(reason) => {
                self.locks.release_all(&req.txn, &exclusive, &shared);
                // Remember the NO, so a peer asking during cooperative termination learns that
                // this txn can only abort. Lazily: losing it is harmless under presumed abort.
                let mut batch = WriteBatch::default();
                put_outcome(
                    &mut batch,
                    &req.txn,
                    OutcomeKind::Aborted,
                    now_unix_ms,
                    true,
                );
                Ok(PrepareStep::VoteNo { reason, batch })
            }
            Ok((writes, reads)) => {
                let rec = PreparedRecord {
                    txn_id: req.txn.as_str().to_owned(),
                    coordinator_epoch: req.coordinator_epoch,
                    participants: req
                        .participants
                        .iter()
                        .map(|p| p.as_str().to_owned())
                        .collect(),
                    writes,
                    reads: reads.iter().cloned().map(Into::into).collect(),
                    exclusive_keys: exclusive,
                    shared_keys: shared,
                    prepared_at_unix_ms: now_unix_ms,
                };
                if rec.encoded_len() > MAX_RECORD_BYTES {
                    self.locks
                        .release_all(&req.txn, &rec.exclusive_keys, &rec.shared_keys);
                    return Ok(PrepareStep::VoteNo {
                        reason: format!(
                            "the prepared record would be {} bytes, the limit is {MAX_RECORD_BYTES}",
                            rec.encoded_len()
                        ),
                        batch: WriteBatch::default(),
                    });
                }
                let mut batch = WriteBatch::default();
                batch.put(prepared_key(&req.txn), record::encode(&rec));
                self.prepared.insert(req.txn.clone(), rec);
                Ok(PrepareStep::Persist { batch, reads })
            }
        }
    }

    pub fn commit(
        &mut self,
        txn: &TxnId,
        store: &dyn Store,
        now_unix_ms: u64,
    ) -> Result<CommitStep, StoreError> {
        if let Some(rec) = self.prepared.remove(txn) {
            self.held.remove(txn);
            self.locks
                .release_all(txn, &rec.exclusive_keys, &rec.shared_keys);
            let mut batch = WriteBatch::default();
            for w in rec.writes {
                match w.value {
                    Some(v) => batch.put(data_key(&w.key), v),
                    None => batch.delete(data_key(&w.key)),
                };
            }
            batch.delete(prepared_key(txn));
            // Kept until the coordinator says the txn has ended (see `forget`): a peer in doubt
            // may still ask, and must hear "committed".
            put_outcome(&mut batch, txn, OutcomeKind::Committed, now_unix_ms, false);
            return Ok(CommitStep::Apply { batch });
        }
        Ok(match read_outcome(store, txn)? {
            Some(OutcomeKind::Committed) => CommitStep::AlreadyCommitted,
            Some(OutcomeKind::Aborted) => CommitStep::Refused(Refusal::Conflict(format!(
                "txn {txn} was aborted here and cannot commit"
            ))),
            _ => CommitStep::Refused(Refusal::Unknown),
        })
    }

    /// Both phases at once: the branch is checked and applied with its committed outcome in
    /// one batch, so there is never a prepared state to be in doubt about. It takes no locks
    /// (the driver applies the batch under the core's mutex, as it does saga steps); it only
    /// waits for prepared txns whose locks it conflicts with. An abort tombstone (from an
    /// Abort that overtook it) makes it refuse, which is how the coordinator settles a call
    /// whose answer it lost.
    pub fn commit_one_phase(
        &self,
        txn: &TxnId,
        ops: &[Op],
        store: &dyn Store,
        now_unix_ms: u64,
    ) -> Result<OnePhaseStep, StoreError> {
        if self.prepared.contains_key(txn) {
            return Ok(OnePhaseStep::Refuse {
                reason:
                    "txn is prepared here for two-phase commit; it cannot also commit in one phase"
                        .into(),
                batch: WriteBatch::default(),
            });
        }
        match read_outcome(store, txn)? {
            Some(OutcomeKind::Committed) => return Ok(OnePhaseStep::AlreadyCommitted),
            Some(OutcomeKind::Aborted) => {
                return Ok(OnePhaseStep::Refuse {
                    reason: "txn was already aborted here".into(),
                    batch: WriteBatch::default(),
                });
            }
            _ => {}
        }
        let (exclusive, shared) = lock_sets(ops);
        if let Some(holder) = self.locks.conflict(None, &exclusive, &shared) {
            return Ok(OnePhaseStep::Blocked { holder });
        }
        let mut batch = WriteBatch::default();
        match evaluate(ops, store)? {
            Err(reason) => {
                put_outcome(&mut batch, txn, OutcomeKind::Aborted, now_unix_ms, true);
                Ok(OnePhaseStep::Refuse { reason, batch })
            }
            Ok((writes, reads)) => {
                for w in writes {
                    match w.value {
                        Some(v) => batch.put(data_key(&w.key), v),
                        None => batch.delete(data_key(&w.key)),
                    };
                }
                // Needed only while the coordinator may still settle the call.
                put_outcome(&mut batch, txn, OutcomeKind::Committed, now_unix_ms, true);
                Ok(OnePhaseStep::Apply { batch, reads })
            }
        }
    }

    pub fn abort(
        &mut self,
        txn: &TxnId,
        store: &dyn Store,
        now_unix_ms: u64,
    ) -> Result<AbortStep, StoreError> {
        let mut batch = WriteBatch::default();
        if let Some(rec) = self.prepared.remove(txn) {
            self.held.remove(txn);
            self.locks
                .release_all(txn, &rec.exclusive_keys, &rec.shared_keys);
            batch.delete(prepared_key(txn));
            put_outcome(&mut batch, txn, OutcomeKind::Aborted, now_unix_ms, true);
            return Ok(AbortStep::Apply { batch });
        }
        Ok(match read_outcome(store, txn)? {
            Some(OutcomeKind::Aborted) => AbortStep::AlreadyAborted,
            Some(OutcomeKind::Committed) => AbortStep::Refused(Refusal::Conflict(format!(
                "txn {txn} was committed here and cannot abort"
            ))),
            // Never prepared here: leave a tombstone so a Prepare that arrives late votes NO.
            _ => {
                put_outcome(&mut batch, txn, OutcomeKind::Aborted, now_unix_ms, true);
                AbortStep::Apply { batch }
            }
        })
    }

    /// The coordinator says `txn` has ended: every participant committed it, and no Commit
    /// or peer question that matters can come any more. Returns the batch that makes its
    /// committed outcome expire like an abort's (after the retention, counted from now),
    /// if it has one here; anything else is left alone. Not dropped at once: a stale
    /// question still in flight (a peer's QueryPeer, a Resolve answered late) would find
    /// no record, write an abort tombstone, and the txn would show as aborted here.
    pub fn forget(
        &self,
        txn: &TxnId,
        store: &dyn Store,
        now_unix_ms: u64,
    ) -> Result<Option<WriteBatch>, StoreError> {
        if self.prepared.contains_key(txn) {
            return Ok(None);
        }
        Ok(match read_outcome(store, txn)? {
            Some(OutcomeKind::Committed) => {
                let mut batch = WriteBatch::default();
                put_outcome(&mut batch, txn, OutcomeKind::Committed, now_unix_ms, true);
                Some(batch)
            }
            _ => None,
        })
    }

    /// Whether `keys` may be read as committed values now: a key that a prepared txn will
    /// write has an undecided value, so the reader is told which txn holds it.
    pub fn check_readable(&self, keys: &[Vec<u8>]) -> Result<(), (Vec<u8>, TxnId)> {
        for k in keys {
            if let Some(holder) = self.locks.writer(k) {
                return Err((k.clone(), holder.clone()));
            }
        }
        Ok(())
    }

    pub fn status(&self, txn: &TxnId, store: &dyn Store) -> Result<TxnStatus, StoreError> {
        if self.prepared.contains_key(txn) {
            return Ok(TxnStatus::Prepared);
        }
        Ok(match read_outcome(store, txn)? {
            Some(OutcomeKind::Committed) => TxnStatus::Committed,
            Some(OutcomeKind::Aborted) => TxnStatus::Aborted,
            _ => TxnStatus::Unknown,
        })
    }

    /// Prepared txns (in doubt until their decision arrives).
    pub fn prepared(&self) -> impl Iterator<Item = (&TxnId, &PreparedRecord)> {
        self.prepared.iter()
    }

    pub fn prepared_at_unix_ms(&self, txn: &TxnId) -> Option<u64> {
        self.prepared.get(txn).map(|r| r.prepared_at_unix_ms)
    }

    /// Pins a prepared txn (see [`ParticipantCore::is_held`]); returns its status.
    pub fn hold(&mut self, txn: &TxnId, store: &dyn Store) -> Result<TxnStatus, StoreError> {
        let status = self.status(txn, store)?;
        if status == TxnStatus::Prepared {
            self.held.insert(txn.clone());
        }
        Ok(status)
    }

    /// Undoes [`ParticipantCore::hold`].
    pub fn release(&mut self, txn: &TxnId) {
        self.held.remove(txn);
    }

    pub fn is_held(&self, txn: &TxnId) -> bool {
        self.held.contains(txn)
    }

    pub fn is_prepared(&self, txn: &TxnId) -> bool {
        self.prepared.contains_key(txn)
    }

    pub fn in_doubt(&self) -> usize {
        self.prepared.len()
    }

    pub fn locked_keys(&self) -> usize {
        self.locks.len()
    }

    /// A 2PC txn holding a lock that conflicts with running `ops` now (for saga steps, which
    /// apply in one atomic batch under the core's mutex and so need no locks of their own).
    pub fn lock_conflict(&self, ops: &[Op]) -> Option<TxnId> {
        let (exclusive, shared) = lock_sets(ops);
        self.locks.conflict(None, &exclusive, &shared)
    }

    pub fn lock_conflict_keys(&self, keys: &[Vec<u8>]) -> Option<TxnId> {
        self.locks.conflict(None, keys, &[])
    }
}

fn outcome(kind: OutcomeKind, at_unix_ms: u64) -> Vec<u8> {
    record::encode(&OutcomeRecord {
        kind: kind as i32,
        at_unix_ms,
        participants: Vec::new(),
    })
}

/// Recorded outcomes with txn ids after `start_after`, at most `limit`, in id order.
pub fn list_outcomes(
    store: &dyn Store,
    start_after: &str,
    limit: usize,
) -> Result<Vec<(String, TxnStatus, Vec<String>)>, StoreError> {
    let mut out = Vec::new();
    // Strictly after `start_after`: the smallest key greater than it appends a zero byte.
    let start = [OUTCOME_PREFIX, start_after.as_bytes(), b"\0"].concat();
    let start = if start_after.is_empty() {
        OUTCOME_PREFIX.to_vec()
    } else {
        start
    };
    for (key, bytes) in store.scan_page(OUTCOME_PREFIX, &start, limit)? {
        let id = String::from_utf8_lossy(&key[OUTCOME_PREFIX.len()..]).into_owned();
        let rec: OutcomeRecord = record::decode(&key, &bytes)?;
        let status = match OutcomeKind::try_from(rec.kind) {
            Ok(OutcomeKind::Committed) => TxnStatus::Committed,
            Ok(OutcomeKind::Aborted) => TxnStatus::Aborted,
            _ => {
                return Err(StoreError::Corrupt(record::CorruptRecord {
                    key: String::from_utf8_lossy(&key).into_owned(),
                    problem: format!("outcome kind {} is not committed or aborted", rec.kind),
                }));
            }
        };
        out.push((id, status, rec.participants));
    }
    Ok(out)
}

fn read_outcome(store: &dyn Store, txn: &TxnId) -> Result<Option<OutcomeKind>, StoreError> {
    let key = outcome_key(txn);
    let Some(bytes) = store.get(&key)? else {
        return Ok(None);
    };
    let rec: OutcomeRecord = record::decode(&key, &bytes)?;
    match OutcomeKind::try_from(rec.kind) {
        Ok(k @ (OutcomeKind::Committed | OutcomeKind::Aborted)) => Ok(Some(k)),
        _ => Err(StoreError::Corrupt(record::CorruptRecord {
            key: String::from_utf8_lossy(&key).into_owned(),
            problem: format!("outcome kind {} is not committed or aborted", rec.kind),
        })),
    }
}

/// Keys to lock exclusively (written) and shared (only read or checked), each once.
pub(crate) fn lock_sets(ops: &[Op]) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut exclusive: Vec<Vec<u8>> = Vec::new();
    let mut shared: Vec<Vec<u8>> = Vec::new();
    for op in ops.iter().filter(|op| op.writes()) {
        if !exclusive.iter().any(|k| k == op.key()) {
            exclusive.push(op.key().to_vec());
        }
    }
    for op in ops.iter().filter(|op| !op.writes()) {
        if !exclusive.iter().any(|k| k == op.key()) && !shared.iter().any(|k| k == op.key()) {
            shared.push(op.key().to_vec());
        }
    }
    (exclusive, shared)
}

/// Runs the branch's operations in order against committed data (plus the branch's own earlier
/// writes). Returns the writes and reads, or the reason to vote NO.
pub(crate) type Evaluated = Result<(Vec<Write>, Vec<KeyValue>), String>;

pub(crate) fn evaluate(ops: &[Op], store: &dyn Store) -> Result<Evaluated, StoreError> {
    let mut overlay: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
    let mut reads = Vec::new();
    let current = |overlay: &[(Vec<u8>, Option<Vec<u8>>)],
                   key: &[u8]|
     -> Result<Option<Vec<u8>>, StoreError> {
        match overlay.iter().find(|(k, _)| k == key) {
            Some((_, v)) => Ok(v.clone()),
            None => store.get(&data_key(key)),
        }
    };
    let set = |overlay: &mut Vec<(Vec<u8>, Option<Vec<u8>>)>, key: &[u8], v: Option<Vec<u8>>| {
        match overlay.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = v,
            None => overlay.push((key.to_vec(), v)),
        }
    };
    let mut written: Vec<Vec<u8>> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::Read { key } => reads.push(KeyValue {
                key: key.clone(),
                value: current(&overlay, key)?,
            }),
            Op::Put { key, value } => {
                set(&mut overlay, key, Some(value.clone()));
                written.push(key.clone());
            }
            Op::Delete { key } => {
                set(&mut overlay, key, None);
                written.push(key.clone());
            }
            Op::Add {
                key,
                delta,
                min,
                max,
            } => {
                let value = current(&overlay, key)?;
                let old = match decode_counter(value.as_deref()) {
                    Ok(n) => n,
                    Err(e) => return Ok(Err(format!("ops[{i}] add: {e}"))),
                };
                let Some(new) = old.checked_add(*delta) else {
                    return Ok(Err(format!("ops[{i}] add: {old} + {delta} overflows i64")));
                };
                if let Some(min) = min.filter(|m| new < *m) {
                    return Ok(Err(format!(
                        "ops[{i}] add: {} would become {new}, below the minimum {min}",
                        String::from_utf8_lossy(key)
                    )));
                }
                if let Some(max) = max.filter(|m| new > *m) {
                    return Ok(Err(format!(
                        "ops[{i}] add: {} would become {new}, above the maximum {max}",
                        String::from_utf8_lossy(key)
                    )));
                }
                set(&mut overlay, key, Some(encode_counter(new)));
                written.push(key.clone());
            }
            Op::Check { key, expected } => {
                let value = current(&overlay, key)?;
                if value != *expected {
                    return Ok(Err(format!(
                        "ops[{i}] check: {} does not hold the expected value",
                        String::from_utf8_lossy(key)
                    )));
                }
            }
        }
    }
    let writes = overlay
        .into_iter()
        .filter(|(k, _)| written.contains(k))
        .map(|(key, value)| Write { key, value })
        .collect();
    Ok(Ok((writes, reads)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use txn_types::store::MemStore;

    fn txn(s: &str) -> TxnId {
        TxnId::parse("t", s).unwrap()
    }

    fn req(t: &str, ops: Vec<Op>) -> PrepareRequest {
        PrepareRequest {
            txn: txn(t),
            coordinator_epoch: 1,
            participants: vec![ParticipantId::parse("p", "p1").unwrap()],
            ops,
        }
    }

    fn add(key: &str, delta: i64) -> Op {
        Op::Add {
            key: key.into(),
            delta,
            min: Some(0),
            max: None,
        }
    }

    fn apply(store: &MemStore, batch: WriteBatch) {
        store.apply(batch).unwrap();
    }

    fn balance(store: &MemStore, key: &str) -> i64 {
        decode_counter(store.get(&data_key(key.as_bytes())).unwrap().as_deref()).unwrap()
    }

    fn one_phase(core: &ParticipantCore, store: &MemStore, t: &str, ops: &[Op]) -> OnePhaseStep {
        core.commit_one_phase(&txn(t), ops, store, 0).unwrap()
    }

    #[test]
    fn one_phase_applies_once_and_a_duplicate_changes_nothing() {
        let store = MemStore::new();
        let core = ParticipantCore::new();
        let OnePhaseStep::Apply { batch, .. } = one_phase(&core, &store, "1", &[add("a", 10)])
        else {
            panic!("expected Apply");
        };
        apply(&store, batch);
        assert_eq!(balance(&store, "a"), 10);
        assert_eq!(
            one_phase(&core, &store, "1", &[add("a", 10)]),
            OnePhaseStep::AlreadyCommitted
        );
        assert_eq!(balance(&store, "a"), 10);
        assert_eq!(
            core.status(&txn("1"), &store).unwrap(),
            TxnStatus::Committed
        );
        // Nothing is left locked or prepared.
        assert_eq!(core.locked_keys(), 0);
        assert_eq!(core.in_doubt(), 0);
    }

    #[test]
    fn one_phase_refuses_after_an_abort_and_on_a_failed_check() {
        let store = MemStore::new();
        let mut core = ParticipantCore::new();
        // An Abort that overtakes the one-phase call leaves a tombstone; the call refuses.
        let AbortStep::Apply { batch } = core.abort(&txn("1"), &store, 0).unwrap() else {
            panic!("expected a tombstone");
        };
        apply(&store, batch);
        assert!(matches!(
            one_phase(&core, &store, "1", &[add("a", 10)]),
            OnePhaseStep::Refuse { .. }
        ));
        // A check that fails (balance below min) refuses and records the abort.
        let OnePhaseStep::Refuse { reason, batch } = one_phase(&core, &store, "2", &[add("a", -1)])
        else {
            panic!("expected Refuse");
        };
        assert!(reason.contains("below"), "{reason}");
        apply(&store, batch);
        assert_eq!(core.status(&txn("2"), &store).unwrap(), TxnStatus::Aborted);
        assert_eq!(store.get(&data_key(b"a")).unwrap(), None);
        // And an Abort after a one-phase commit is refused: the outcome is fixed.
        let OnePhaseStep::Apply { batch, .. } = one_phase(&core, &store, "3", &[add("a", 1)])
        else {
            panic!("expected Apply");
        };
        apply(&store, batch);
        assert!(matches!(
            core.abort(&txn("3"), &store, 0).unwrap(),
            AbortStep::Refused(Refusal::Conflict(_))
        ));
    }

    #[test]
    fn one_phase_waits_for_a_prepared_txn_holding_its_key() {
        let store = MemStore::new();
        let mut core = ParticipantCore::new();
        let PrepareStep::Persist { batch, .. } = core
            .prepare(&req("1", vec![add("a", 10)]), &store, 0)
            .unwrap()
        else {
            panic!("expected Persist");
        };
        apply(&store, batch);
        assert_eq!(
            one_phase(&core, &store, "2", &[add("a", 1)]),
            OnePhaseStep::Blocked { holder: txn("1") }
        );
        // The prepared txn's own id cannot be committed in one phase.
        assert!(matches!(
            one_phase(&core, &store, "1", &[add("a", 1)]),
            OnePhaseStep::Refuse { .. }
        ));
        let CommitStep::Apply { batch } = core.commit(&txn("1"), &store, 0).unwrap() else {
            panic!("expected Apply");
        };
        apply(&store, batch);
        let OnePhaseStep::Apply { batch, .. } = one_phase(&core, &store, "2", &[add("a", 1)])
        else {
            panic!("expected Apply");
        };
        apply(&store, batch);
        assert_eq!(balance(&store, "a"), 11);
    }

    #[test]
    fn prepare_vote_yes_commit_applies_once() {
        let store = MemStore::new();
        let mut core = ParticipantCore::new();
        let step = core
            .prepare(&req("1", vec![add("a", 10)]), &store, 0)
            .unwrap();
        let PrepareStep::Persist { batch, .. } = step else {
            panic!("expected Persist, got {step:?}")
        };
        apply(&store, batch);
        // A duplicate Prepare re-votes without taking anything twice.
        let dup = core
            .prepare(&req("1", vec![add("a", 10)]), &store, 0)
            .unwrap();
        assert!(matches!(dup, PrepareStep::Revote { .. }));
        let CommitStep::Apply { batch } = core.commit(&txn("1"), &store, 0).unwrap() else {
            panic!("expected Apply")
        };
        apply(&store, batch);
        assert_eq!(balance(&store, "a"), 10);
        assert_eq!(
            core.commit(&txn("1"), &store, 0).unwrap(),
            CommitStep::AlreadyCommitted
        );
        assert_eq!(balance(&store, "a"), 10);
        assert_eq!(core.locked_keys(), 0);
        assert_eq!(
            core.status(&txn("1"), &store).unwrap(),
            TxnStatus::Committed
        );
    }

    #[test]
    fn bound_violation_votes_no_and_holds_nothing() {
        let store = MemStore::new();
        let mut core = ParticipantCore::new();
        let step = core
            .prepare(&req("1", vec![add("a", -5)]), &store, 0)
            .unwrap();
        let PrepareStep::VoteNo { reason, batch } = step else {
            panic!("expected NO")
        };
        assert!(reason.contains("below the minimum 0"), "{reason}");
        apply(&store, batch);
        assert_eq!(core.locked_keys(), 0);
        assert_eq!(core.in_doubt(), 0);
        assert_eq!(core.status(&txn("1"), &store).unwrap(), TxnStatus::Aborted);
    }

    #[test]
    fn conflicting_prepare_is_blocked_until_decision() {
        let store = MemStore::new();
        let mut core = ParticipantCore::new();
        let PrepareStep::Persist { batch, .. } = core
            .prepare(&req("1", vec![add("a", 1)]), &store, 0)
            .unwrap()
        else {
            panic!()
        };
        apply(&store, batch);
        let step = core
            .prepare(&req("2", vec![add("a", 1)]), &store, 0)
            .unwrap();
        assert_eq!(step, PrepareStep::Blocked { holder: txn("1") });
        assert!(core.check_readable(&[b"a".to_vec()]).is_err());
        let AbortStep::Apply { batch } = core.abort(&txn("1"), &store, 0).unwrap() else {
            panic!()
        };
        apply(&store, batch);
        assert!(matches!(
            core.prepare(&req("2", vec![add("a", 1)]), &store, 0)
                .unwrap(),
            PrepareStep::Persist { .. }
        ));
        // The aborted txn stays aborted: Commit is refused, a late Prepare votes NO.
        assert!(matches!(
            core.commit(&txn("1"), &store, 0).unwrap(),
            CommitStep::Refused(Refusal::Conflict(_))
        ));
        assert!(matches!(
            core.prepare(&req("1", vec![add("b", 1)]), &store, 0)
                .unwrap(),
            PrepareStep::VoteNo { .. }
        ));
    }

    #[test]
    fn abort_before_prepare_leaves_a_tombstone() {
        let store = MemStore::new();
        let mut core = ParticipantCore::new();
        let AbortStep::Apply { batch } = core.abort(&txn("9"), &store, 0).unwrap() else {
            panic!()
        };
        apply(&store, batch);
        assert!(matches!(
            core.prepare(&req("9", vec![add("a", 1)]), &store, 0)
                .unwrap(),
            PrepareStep::VoteNo { .. }
        ));
        assert_eq!(
            core.abort(&txn("9"), &store, 0).unwrap(),
            AbortStep::AlreadyAborted
        );
        assert_eq!(
            core.commit(&txn("10"), &store, 0).unwrap(),
            CommitStep::Refused(Refusal::Unknown)
        );
    }

    #[test]
    fn recovery_after_crash_keeps_durable_prepared_records_and_their_locks() {
        let store = MemStore::new();
        let mut core = ParticipantCore::new();
        let PrepareStep::Persist { batch, .. } = core
            .prepare(&req("1", vec![add("a", 1)]), &store, 0)
            .unwrap()
        else {
            panic!()
        };
        apply(&store, batch);
        store.sync().unwrap();
        let PrepareStep::Persist { batch, .. } = core
            .prepare(&req("2", vec![add("b", 1)]), &store, 0)
            .unwrap()
        else {
            panic!()
        };
        apply(&store, batch); // applied, never synced: lost in the crash (it never voted YES)
        store.crash();
        let mut core = ParticipantCore::new();
        assert_eq!(core.recover(&store).unwrap(), vec![txn("1")]);
        assert!(core.check_readable(&[b"a".to_vec()]).is_err());
        assert!(core.check_readable(&[b"b".to_vec()]).is_ok());
        let CommitStep::Apply { batch } = core.commit(&txn("1"), &store, 0).unwrap() else {
            panic!()
        };
        apply(&store, batch);
        assert_eq!(balance(&store, "a"), 1);
    }

    #[test]
    fn reads_checks_and_puts_in_one_branch() {
        let store = MemStore::new();
        let mut core = ParticipantCore::new();
        let ops = vec![
            Op::Check {
                key: b"k".to_vec(),
                expected: None,
            },
            Op::Put {
                key: b"k".to_vec(),
                value: b"v1".to_vec(),
            },
            Op::Read { key: b"k".to_vec() },
            Op::Add {
                key: b"n".to_vec(),
                delta: i64::MAX,
                min: None,
                max: None,
            },
        ];
        let PrepareStep::Persist { reads, .. } = core.prepare(&req("1", ops), &store, 0).unwrap()
        else {
            panic!()
        };
        assert_eq!(reads[0].value.as_deref(), Some(&b"v1"[..]));
        let overflow = vec![
            Op::Put {
                key: b"m".to_vec(),
                value: encode_counter(i64::MAX),
            },
            Op::Add {
                key: b"m".to_vec(),
                delta: 1,
                min: None,
                max: None,
            },
        ];
        let PrepareStep::VoteNo { reason, .. } =
            core.prepare(&req("2", overflow), &store, 0).unwrap()
        else {
            panic!()
        };
        assert!(reason.contains("overflows"), "{reason}");
    }

    #[test]
    fn corrupt_outcome_is_an_error_not_absent() {
        let store = MemStore::new();
        let mut core = ParticipantCore::new();
        store.corrupt(&outcome_key(&txn("1")), b"garbage!".to_vec());
        assert!(matches!(
            core.commit(&txn("1"), &store, 0),
            Err(StoreError::Corrupt(_))
        ));
        store.corrupt(&prepared_key(&txn("2")), b"garbage!".to_vec());
        assert!(core.recover(&store).is_err());
    }
}
