//! The participant's storage layout and the records that answer questions about past txns.
//!
//! One keyspace, so one batch is atomic: `d/<key>` committed data, `p/<txn>` prepared records,
//! `o/<txn>` outcomes and abort tombstones, `x/<at><txn>` the expiry index of outcomes that
//! only have to outlive the messages that can still ask about them.
//!
//! A record that fails its checksum or names an unknown kind is an error, never "absent":
//! reading garbage as "no outcome" would let a peer's question turn a commit into an abort.

use txn_types::rec::{OutcomeKind, OutcomeRecord};
use txn_types::record;
use txn_types::store::{Store, StoreError, WriteBatch};
use txn_types::types::TxnId;

use crate::core::TxnStatus;

pub const DATA_PREFIX: &[u8] = b"d/";
pub const PREPARED_PREFIX: &[u8] = b"p/";
pub const OUTCOME_PREFIX: &[u8] = b"o/";
/// Index of the outcomes that expire by age: `x/<at_unix_ms, 8 bytes big-endian><txn>`.
pub const EXPIRY_PREFIX: &[u8] = b"x/";
/// Expired outcome index entries one sweep step handles: it bounds one write batch and how
/// long the driver holds the core's lock to check them (one point read each).
pub const OUTCOME_SWEEP_PAGE: usize = 64;

/// The error for a key of our own layout that does not parse.
pub(crate) fn corrupt_key(key: &[u8], problem: &str) -> StoreError {
    StoreError::Corrupt(record::CorruptRecord {
        key: String::from_utf8_lossy(key).into_owned(),
        problem: problem.to_owned(),
    })
}

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
pub(crate) fn put_outcome(
    batch: &mut WriteBatch,
    txn: &TxnId,
    kind: OutcomeKind,
    now_unix_ms: u64,
    expires: bool,
    facts: OutcomeFacts,
) {
    batch.put(outcome_key(txn), outcome(kind, now_unix_ms, facts));
    if expires {
        batch.put(expiry_key(now_unix_ms, txn), Vec::new());
    }
}

/// Records an abort (or an abort tombstone), which expires after the retention.
pub(crate) fn put_abort(
    batch: &mut WriteBatch,
    txn: &TxnId,
    now_unix_ms: u64,
    facts: OutcomeFacts,
) {
    put_outcome(batch, txn, OutcomeKind::Aborted, now_unix_ms, true, facts);
}

/// An expiry index entry that is due, with the record it was written with, as
/// [`due_outcomes`] read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueOutcome {
    index_key: Vec<u8>,
    txn: TxnId,
    at_unix_ms: u64,
}

/// The outcomes indexed for expiry that were recorded before `cutoff_unix_ms`, at most
/// `limit` index entries, and whether more may be due. Reads the index only, so a driver can
/// run it without holding anything; [`expire_outcomes`] then makes the batch.
pub fn due_outcomes(
    store: &dyn Store,
    cutoff_unix_ms: u64,
    limit: usize,
) -> Result<(Vec<DueOutcome>, bool), StoreError> {
    let page = store.scan_page(EXPIRY_PREFIX, EXPIRY_PREFIX, limit)?;
    let full = page.len() == limit;
    let mut due = Vec::with_capacity(page.len());
    for (key, _) in page {
        let rest = &key[EXPIRY_PREFIX.len()..];
        let (at, txn) = rest
            .split_first_chunk::<8>()
            .ok_or_else(|| corrupt_key(&key, "expiry key too short"))?;
        let at = u64::from_be_bytes(*at);
        if at >= cutoff_unix_ms {
            return Ok((due, false));
        }
        let txn = std::str::from_utf8(txn)
            .ok()
            .and_then(|t| TxnId::parse("txn", t).ok())
            .ok_or_else(|| corrupt_key(&key, "expiry key names no valid txn id"))?;
        due.push(DueOutcome {
            index_key: key,
            txn,
            at_unix_ms: at,
        });
    }
    Ok((due, full))
}

/// The batch that drops `due` entries and, for each, the outcome record if it is still the
/// one the entry was written with (a newer record, such as a commit forgotten again, has an
/// entry of its own). The driver runs it under the core's lock, because the check and the
/// drop must not straddle a step that rewrites the record; it reads one record per entry.
pub fn expire_outcomes(store: &dyn Store, due: Vec<DueOutcome>) -> Result<WriteBatch, StoreError> {
    let mut batch = WriteBatch::default();
    for d in due {
        let okey = outcome_key(&d.txn);
        if let Some(bytes) = store.get(&okey)? {
            let rec: OutcomeRecord = record::decode(&okey, &bytes)?;
            if rec.at_unix_ms == d.at_unix_ms {
                batch.delete(okey);
            }
        }
        batch.delete(d.index_key);
    }
    Ok(batch)
}

/// [`due_outcomes`] and [`expire_outcomes`] in one: drops the outcomes indexed for expiry
/// that were recorded before `cutoff_unix_ms`, at most `limit` index entries. Returns the
/// batch and whether more entries may be due.
pub fn sweep_expired(
    store: &dyn Store,
    cutoff_unix_ms: u64,
    limit: usize,
) -> Result<(WriteBatch, bool), StoreError> {
    let (due, more) = due_outcomes(store, cutoff_unix_ms, limit)?;
    Ok((expire_outcomes(store, due)?, more))
}

/// What an outcome record says about the txn besides its outcome: its members and how much
/// it wrote here. Operators and checkers read them; no protocol rule does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutcomeFacts {
    /// Every participant of the txn; empty when this participant was its only one, or when
    /// the txn never prepared here (a tombstone).
    pub participants: Vec<String>,
    /// Keys the txn wrote here.
    pub writes: u32,
    /// When it was prepared here (0: never).
    pub prepared_at_unix_ms: u64,
}

impl OutcomeFacts {
    /// A tombstone's: nothing is known of the txn.
    pub fn unknown() -> Self {
        Self::default()
    }

    /// A prepared txn's, from its prepared record.
    pub fn of_prepared(rec: &txn_types::rec::PreparedRecord) -> Self {
        Self {
            participants: rec.participants.clone(),
            writes: rec.writes.len() as u32,
            prepared_at_unix_ms: rec.prepared_at_unix_ms,
        }
    }
}

/// One recorded outcome, as [`list_outcomes`] returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedOutcome {
    pub txn_id: String,
    pub status: TxnStatus,
    pub at_unix_ms: u64,
    pub facts: OutcomeFacts,
}

fn outcome(kind: OutcomeKind, at_unix_ms: u64, facts: OutcomeFacts) -> Vec<u8> {
    record::encode(&OutcomeRecord {
        kind: kind as i32,
        at_unix_ms,
        participants: facts.participants,
        writes: facts.writes,
        prepared_at_unix_ms: facts.prepared_at_unix_ms,
    })
}

/// Recorded outcomes with txn ids after `start_after`, at most `limit`, in id order.
pub fn list_outcomes(
    store: &dyn Store,
    start_after: &str,
    limit: usize,
) -> Result<Vec<ListedOutcome>, StoreError> {
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
        out.push(ListedOutcome {
            txn_id: id,
            status,
            at_unix_ms: rec.at_unix_ms,
            facts: OutcomeFacts {
                participants: rec.participants,
                writes: rec.writes,
                prepared_at_unix_ms: rec.prepared_at_unix_ms,
            },
        });
    }
    Ok(out)
}

pub(crate) fn read_outcome(
    store: &dyn Store,
    txn: &TxnId,
) -> Result<Option<OutcomeKind>, StoreError> {
    Ok(read_outcome_facts(store, txn)?.map(|(k, _)| k))
}

/// `txn`'s recorded outcome with what the record says about the txn.
pub(crate) fn read_outcome_facts(
    store: &dyn Store,
    txn: &TxnId,
) -> Result<Option<(OutcomeKind, OutcomeFacts)>, StoreError> {
    let key = outcome_key(txn);
    let Some(bytes) = store.get(&key)? else {
        return Ok(None);
    };
    let rec: OutcomeRecord = record::decode(&key, &bytes)?;
    let facts = OutcomeFacts {
        participants: rec.participants,
        writes: rec.writes,
        prepared_at_unix_ms: rec.prepared_at_unix_ms,
    };
    match OutcomeKind::try_from(rec.kind) {
        Ok(k @ (OutcomeKind::Committed | OutcomeKind::Aborted)) => Ok(Some((k, facts))),
        _ => Err(StoreError::Corrupt(record::CorruptRecord {
            key: String::from_utf8_lossy(&key).into_owned(),
            problem: format!("outcome kind {} is not committed or aborted", rec.kind),
        })),
    }
}
