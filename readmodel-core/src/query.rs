//! What the view answers: balances and statements, raw or txn-consistent, with the position
//! of each feed the answer reflects; and clearing it for a rebuild.

use txn_types::rec::{StatementRecord, TouchedAccount, TxnIndexRecord, ViewCursor, ViewMeta};
use txn_types::record;
use txn_types::store::{Store, StoreError, WriteBatch};

use crate::keys::{
    CONSISTENT_PREFIX, META_KEY, RAW_PREFIX, read_any, read_cursor, read_value, split_value_key,
    statement_offset, statement_prefix, txn_key, value_key,
};
use crate::view::View;

/// Most balances one query returns.
pub const MAX_BALANCES_PAGE: usize = 10_000;
/// Most statement entries one query returns.
pub const MAX_STATEMENT_PAGE: usize = 1_000;
/// Keys one step of a rebuild's clearing deletes (bounds one write batch).
pub const CLEAR_PAGE: usize = 10_000;

/// How far an answer reflects one feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reflects {
    /// Every event below this offset is in the answer.
    pub offset: u64,
    /// Events held back from the consistent view.
    pub held: u64,
    /// When the last event reflected was committed.
    pub as_of_unix_ms: u64,
    pub cursor: ViewCursor,
}

/// What an answer reflects of `participant`'s feed: with `consistent`, nothing from its first
/// held event on is certain to be in it.
pub fn reflects(
    view: &View,
    store: &dyn Store,
    participant: &str,
    consistent: bool,
) -> Result<Reflects, StoreError> {
    let cursor = read_cursor(store, participant)?;
    let mut r = Reflects {
        offset: cursor.next_offset,
        held: view.held_at(participant) as u64,
        as_of_unix_ms: cursor.as_of_unix_ms,
        cursor,
    };
    if consistent && let Some((offset, at)) = view.first_held(participant) {
        r.offset = offset;
        r.as_of_unix_ms = r.as_of_unix_ms.min(at);
    }
    Ok(r)
}

/// The values of `accounts` ((participant, key)); None for an account the view has no value
/// for (never written, or deleted).
pub fn balances(
    store: &dyn Store,
    accounts: &[(String, Vec<u8>)],
    consistent: bool,
) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
    accounts
        .iter()
        .map(|(p, k)| Ok(read_value(store, &value_key(consistent, p, k))?.and_then(|v| v.value)))
        .collect()
}

/// Every account the view holds, at most `limit`, in (participant, key) order.
#[allow(clippy::type_complexity)]
pub fn all_balances(
    store: &dyn Store,
    consistent: bool,
    limit: usize,
) -> Result<Vec<(String, Vec<u8>, Option<Vec<u8>>)>, StoreError> {
    let prefix = if consistent {
        CONSISTENT_PREFIX
    } else {
        RAW_PREFIX
    };
    let mut out = Vec::new();
    for (k, bytes) in store.scan_page(prefix, prefix, limit.clamp(1, MAX_BALANCES_PAGE))? {
        let v: txn_types::rec::ViewValue = record::decode(&k, &bytes)?;
        if let Some((p, key)) = split_value_key(&k) {
            out.push((p, key, v.value));
        }
    }
    Ok(out)
}

/// One statement entry as a query returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub offset: u64,
    pub record: StatementRecord,
    /// The other accounts the same txn changed, as far as the index knows.
    pub counterparts: Vec<TouchedAccount>,
}

/// The most recent `limit` entries of an account's statement, newest first. With
/// `consistent`, entries of events held back are left out.
pub fn statement(
    view: &View,
    store: &dyn Store,
    participant: &str,
    key: &[u8],
    limit: usize,
    consistent: bool,
) -> Result<Vec<Entry>, StoreError> {
    let prefix = statement_prefix(participant, key);
    let page = store.scan_page(
        &prefix,
        &prefix,
        crate::view::MAX_STATEMENT_ENTRIES as usize,
    )?;
    let mut out = Vec::new();
    for (k, bytes) in page.into_iter().rev() {
        let offset = statement_offset(&k);
        if consistent && view.is_held(participant, offset) {
            continue;
        }
        let record: StatementRecord = record::decode(&k, &bytes)?;
        let counterparts = read_any::<TxnIndexRecord>(store, &txn_key(&record.txn_id))?
            .map(|t| {
                t.touched
                    .into_iter()
                    .filter(|a| !(a.participant == participant && a.key == key))
                    .collect()
            })
            .unwrap_or_default();
        out.push(Entry {
            offset,
            record,
            counterparts,
        });
        if out.len() >= limit.clamp(1, MAX_STATEMENT_PAGE) {
            break;
        }
    }
    Ok(out)
}

/// The first step of a rebuild: marks it under way, durably, so that a crash in the middle
/// finishes it at the next start instead of serving a half-cleared view.
pub fn begin_rebuild(store: &dyn Store) -> Result<WriteBatch, StoreError> {
    let mut meta: ViewMeta = crate::keys::read_meta(store)?;
    meta.rebuilding = true;
    let mut batch = WriteBatch::default();
    batch.put(META_KEY.to_vec(), record::encode(&meta));
    Ok(batch)
}

/// One page of a rebuild's clearing: every key but the meta record, at most [`CLEAR_PAGE`].
/// Returns the batch and whether more remain; once none do, [`finish_rebuild`].
pub fn clear_page(store: &dyn Store) -> Result<(WriteBatch, bool), StoreError> {
    let mut batch = WriteBatch::default();
    let page = store.scan_page(b"", b"", CLEAR_PAGE + 1)?;
    let mut n = 0;
    for (k, _) in page {
        if k == META_KEY {
            continue;
        }
        if n == CLEAR_PAGE {
            return Ok((batch, true));
        }
        batch.delete(k);
        n += 1;
    }
    Ok((batch, false))
}

/// The last step of a rebuild: counted, and no longer under way.
pub fn finish_rebuild(store: &dyn Store) -> Result<WriteBatch, StoreError> {
    let mut meta: ViewMeta = crate::keys::read_meta(store)?;
    meta.rebuilding = false;
    meta.rebuilds += 1;
    meta.next_txn_seq = 0;
    let mut batch = WriteBatch::default();
    batch.put(META_KEY.to_vec(), record::encode(&meta));
    Ok(batch)
}
