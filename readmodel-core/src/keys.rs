//! The read model's storage layout: one keyspace, so one batch is atomic.
//!
//! - `o/<participant>` the cursor in that participant's feed ([`ViewCursor`]);
//! - `b/<participant>/<key>` an account's value as events arrive, `v/<participant>/<key>` its
//!   value with only whole two-phase txns ([`ViewValue`]);
//! - `s/<participant>/<key length, 2 bytes><key><offset, 8 bytes>` statement entries, oldest
//!   first;
//! - `h/<participant>/<offset, 8 bytes>` events held back from the txn-consistent view;
//! - `t/<txn>` what a txn changed, `tq/<seq, 8 bytes>` the order in which txns were indexed;
//! - `m` the view's own state ([`ViewMeta`]).
//!
//! Participant names hold no `/`, so a key splits unambiguously after the name.

use txn_types::rec::{ViewCursor, ViewMeta, ViewValue};
use txn_types::record;
use txn_types::store::{Store, StoreError};

pub const CURSOR_PREFIX: &[u8] = b"o/";
pub const RAW_PREFIX: &[u8] = b"b/";
pub const CONSISTENT_PREFIX: &[u8] = b"v/";
pub const STATEMENT_PREFIX: &[u8] = b"s/";
pub const HELD_PREFIX: &[u8] = b"h/";
pub const TXN_PREFIX: &[u8] = b"t/";
pub const TXN_ORDER_PREFIX: &[u8] = b"tq/";
pub const META_KEY: &[u8] = b"m";

pub fn cursor_key(participant: &str) -> Vec<u8> {
    [CURSOR_PREFIX, participant.as_bytes()].concat()
}

/// An account's value key in the raw view, or with `consistent`, in the txn-consistent one.
pub fn value_key(consistent: bool, participant: &str, key: &[u8]) -> Vec<u8> {
    let prefix = if consistent {
        CONSISTENT_PREFIX
    } else {
        RAW_PREFIX
    };
    [prefix, participant.as_bytes(), b"/", key].concat()
}

/// Splits a value key back into (participant, key).
pub fn split_value_key(k: &[u8]) -> Option<(String, Vec<u8>)> {
    let rest = &k[RAW_PREFIX.len()..];
    let slash = rest.iter().position(|b| *b == b'/')?;
    Some((
        String::from_utf8_lossy(&rest[..slash]).into_owned(),
        rest[slash + 1..].to_vec(),
    ))
}

/// The prefix of every statement entry of one account.
pub fn statement_prefix(participant: &str, key: &[u8]) -> Vec<u8> {
    let len = (key.len() as u16).to_be_bytes();
    [STATEMENT_PREFIX, participant.as_bytes(), b"/", &len, key].concat()
}

pub fn statement_key(participant: &str, key: &[u8], offset: u64) -> Vec<u8> {
    [
        statement_prefix(participant, key).as_slice(),
        &offset.to_be_bytes(),
    ]
    .concat()
}

/// The offset a statement key ends with.
pub fn statement_offset(k: &[u8]) -> u64 {
    k.last_chunk::<8>()
        .map(|b| u64::from_be_bytes(*b))
        .unwrap_or(0)
}

pub fn held_key(participant: &str, offset: u64) -> Vec<u8> {
    [
        HELD_PREFIX,
        participant.as_bytes(),
        b"/",
        &offset.to_be_bytes(),
    ]
    .concat()
}

pub fn txn_key(txn: &str) -> Vec<u8> {
    [TXN_PREFIX, txn.as_bytes()].concat()
}

pub fn txn_order_key(seq: u64) -> Vec<u8> {
    [TXN_ORDER_PREFIX, &seq.to_be_bytes()].concat()
}

fn read<M: prost::Message + Default>(
    store: &dyn Store,
    key: &[u8],
) -> Result<Option<M>, StoreError> {
    match store.get(key)? {
        Some(bytes) => Ok(Some(record::decode(key, &bytes)?)),
        None => Ok(None),
    }
}

pub fn read_cursor(store: &dyn Store, participant: &str) -> Result<ViewCursor, StoreError> {
    Ok(read(store, &cursor_key(participant))?.unwrap_or_default())
}

pub fn read_value(store: &dyn Store, key: &[u8]) -> Result<Option<ViewValue>, StoreError> {
    read(store, key)
}

pub fn read_meta(store: &dyn Store) -> Result<ViewMeta, StoreError> {
    Ok(read(store, META_KEY)?.unwrap_or_default())
}

pub(crate) fn read_any<M: prost::Message + Default>(
    store: &dyn Store,
    key: &[u8],
) -> Result<Option<M>, StoreError> {
    read(store, key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_back_and_order_statements_by_offset() {
        let k = value_key(false, "p1", b"a/b");
        assert_eq!(split_value_key(&k), Some(("p1".into(), b"a/b".to_vec())));
        let k = value_key(true, "p2", b"x");
        assert_eq!(split_value_key(&k), Some(("p2".into(), b"x".to_vec())));
        assert!(statement_key("p1", b"a", 2) < statement_key("p1", b"a", 10));
        assert_eq!(statement_offset(&statement_key("p1", b"a", 77)), 77);
        // An account's entries never run into a longer key's.
        assert!(!statement_key("p1", b"ab", 1).starts_with(&statement_prefix("p1", b"a")));
    }
}
