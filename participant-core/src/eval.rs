//! Evaluating a branch: which keys it locks, and what its operations read and write against
//! committed data. Shared by two-phase prepare, one-phase commit and saga steps, so the three
//! agree on what an operation means.

use txn_types::rec::Write;
use txn_types::store::{Store, StoreError};
use txn_types::types::{KeyValue, Op, decode_counter, encode_counter};

use crate::keys::data_key;

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

/// The change a branch made to a counter `key`, when every operation on the key is an Add:
/// the sum of their deltas (each was checked not to overflow). None when something else
/// (a Put, a Delete) touched the key: its change is its new value only.
pub(crate) fn counter_delta(ops: &[Op], key: &[u8]) -> Option<i64> {
    let mut sum = 0i64;
    for op in ops.iter().filter(|op| op.writes() && op.key() == key) {
        match op {
            Op::Add { delta, .. } => sum = sum.checked_add(*delta)?,
            _ => return None,
        }
    }
    Some(sum)
}

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
        .map(|(key, value)| {
            let delta = counter_delta(ops, &key);
            Write { key, value, delta }
        })
        .collect();
    Ok(Ok((writes, reads)))
}
