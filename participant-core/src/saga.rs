//! The participant's side of a saga: each step is a local transaction, applied at once, with
//! its undo record and a barrier, all in one atomic batch. No I/O here; the driver applies the
//! batches and waits for durability before answering.
//!
//! The barrier, keyed by (saga, step, action), makes the orchestrator's retries safe:
//! - a duplicate Execute or Compensate returns the stored result and changes nothing;
//! - a Compensate for a step that never executed records a null compensation and succeeds;
//! - an Execute that arrives after its Compensate is refused (anti-hanging), so a delayed
//!   Execute can never apply an effect that nobody will undo.
//!
//! Keys: `b/<saga>/<step>/x` (execute) and `b/<saga>/<step>/c` (compensate).

use prost::Message;
use txn_types::rec::{BarrierKind, BarrierRecord, EventKind, Restore, UndoOp, Write, undo_op};
use txn_types::record;
use txn_types::store::{Store, StoreError, WriteBatch};
use txn_types::types::{KeyValue, MAX_RECORD_BYTES, Op, TxnId, decode_counter, encode_counter};

use crate::core::ParticipantCore;
use crate::eval::evaluate;
use crate::keys::data_key;
use crate::outbox;
use crate::step::{Attempt, LockWait, Step};

pub const BARRIER_PREFIX: &[u8] = b"b/";

fn barrier_key(saga: &TxnId, step: u32, action: u8) -> Vec<u8> {
    format!("b/{}/{step:010}/{}", saga, action as char).into_bytes()
}

pub fn execute_key(saga: &TxnId, step: u32) -> Vec<u8> {
    barrier_key(saga, step, b'x')
}

pub fn compensate_key(saga: &TxnId, step: u32) -> Vec<u8> {
    barrier_key(saga, step, b'c')
}

/// The answer to an Execute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepResult {
    Succeeded { reads: Vec<KeyValue> },
    Failed { reason: String },
    Refused { reason: String },
}

/// An Execute: blocked by a prepared 2PC txn's lock, or a step whose answer goes out once it
/// (and everything before it, such as an earlier copy's effect) is durable.
pub type ExecuteStep = Attempt<Step<StepResult>>;

/// The answer to a Compensate: whether an undo was applied or it was a null compensation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compensation {
    Applied,
    Null,
}

/// A Compensate, like an Execute.
pub type CompensateStep = Attempt<Step<Compensation>>;

fn read_barrier(store: &dyn Store, key: &[u8]) -> Result<Option<BarrierRecord>, StoreError> {
    match store.get(key)? {
        Some(bytes) => Ok(Some(record::decode(key, &bytes)?)),
        None => Ok(None),
    }
}

fn kind(rec: &BarrierRecord) -> BarrierKind {
    BarrierKind::try_from(rec.kind).unwrap_or(BarrierKind::Unspecified)
}

/// How to undo `writes`, which `ops` made against what `store` holds now: an Add by the
/// opposite delta (commutes with concurrent adds), anything else by restoring the before-image.
pub(crate) fn undo_of(
    ops: &[Op],
    writes: &[Write],
    store: &dyn Store,
) -> Result<Vec<UndoOp>, StoreError> {
    let mut undo = Vec::with_capacity(writes.len());
    for w in writes {
        let only_adds = ops
            .iter()
            .filter(|op| op.key() == w.key.as_slice())
            .all(|op| matches!(op, Op::Add { .. }));
        let before = store.get(&data_key(&w.key))?;
        let kind = if only_adds {
            let old = decode_counter(before.as_deref()).unwrap_or(0);
            let new = decode_counter(w.value.as_deref()).unwrap_or(0);
            undo_op::Kind::Add(old.wrapping_sub(new))
        } else {
            undo_op::Kind::Restore(Restore { value: before })
        };
        undo.push(UndoOp {
            key: w.key.clone(),
            kind: Some(kind),
        });
    }
    Ok(undo)
}

/// Puts `writes` into `batch` as data.
pub(crate) fn put_writes(batch: &mut WriteBatch, writes: &[Write]) {
    for w in writes {
        match &w.value {
            Some(v) => batch.put(data_key(&w.key), v.clone()),
            None => batch.delete(data_key(&w.key)),
        };
    }
}

/// Applies `undo` into `batch` against what `store` holds now; returns the changes it makes.
pub(crate) fn apply_undo(
    undo: &[UndoOp],
    store: &dyn Store,
    batch: &mut WriteBatch,
) -> Result<Vec<Write>, StoreError> {
    let mut changes = Vec::with_capacity(undo.len());
    for u in undo {
        let change = match &u.kind {
            Some(undo_op::Kind::Add(delta)) => {
                let current = store.get(&data_key(&u.key))?;
                let n = decode_counter(current.as_deref()).unwrap_or(0);
                Write {
                    key: u.key.clone(),
                    value: Some(encode_counter(n.wrapping_add(*delta))),
                    delta: Some(*delta),
                }
            }
            Some(undo_op::Kind::Restore(Restore { value })) => Write {
                key: u.key.clone(),
                value: value.clone(),
                delta: None,
            },
            None => Write {
                key: u.key.clone(),
                value: None,
                delta: None,
            },
        };
        changes.push(change);
    }
    put_writes(batch, &changes);
    Ok(changes)
}

/// Executes step `step` of `saga` with `ops`. `participants` are the saga's, in step order:
/// the step's event names them.
pub fn execute(
    core: &mut ParticipantCore,
    saga: &TxnId,
    step: u32,
    ops: &[Op],
    participants: &[String],
    store: &dyn Store,
    now_unix_ms: u64,
) -> Result<ExecuteStep, StoreError> {
    if read_barrier(store, &compensate_key(saga, step))?.is_some() {
        return Ok(Attempt::Ready(Step::forced(
            WriteBatch::default(),
            StepResult::Refused {
                reason: format!("step {step} of saga {saga} was already compensated"),
            },
        )));
    }
    let xkey = execute_key(saga, step);
    if let Some(rec) = read_barrier(store, &xkey)? {
        let result = match kind(&rec) {
            BarrierKind::Executed => StepResult::Succeeded {
                reads: rec.reads.into_iter().map(Into::into).collect(),
            },
            _ => StepResult::Failed { reason: rec.reason },
        };
        return Ok(Attempt::Ready(Step::forced(WriteBatch::default(), result)));
    }
    if let Some(holder) = core.lock_conflict(ops) {
        return Ok(Attempt::Blocked {
            holder,
            wait: LockWait::Full,
        });
    }
    let mut batch = WriteBatch::default();
    match evaluate(ops, store)? {
        Err(reason) => {
            let rec = BarrierRecord {
                kind: BarrierKind::ExecuteFailed as i32,
                reason: reason.clone(),
                at_unix_ms: now_unix_ms,
                ..Default::default()
            };
            batch.put(xkey, record::encode(&rec));
            Ok(Attempt::Ready(Step::forced(
                batch,
                StepResult::Failed { reason },
            )))
        }
        Ok((writes, reads)) => {
            let undo = undo_of(ops, &writes, store)?;
            put_writes(&mut batch, &writes);
            let rec = BarrierRecord {
                kind: BarrierKind::Executed as i32,
                reason: String::new(),
                reads: reads.iter().cloned().map(Into::into).collect(),
                undo,
                at_unix_ms: now_unix_ms,
            };
            if rec.encoded_len() > MAX_RECORD_BYTES {
                // Nothing applied: the step fails like a failed check, durably, so a retry
                // gets the same answer.
                let reason = format!(
                    "the step's undo record would be {} bytes, the limit is {MAX_RECORD_BYTES}",
                    rec.encoded_len()
                );
                let failed = BarrierRecord {
                    kind: BarrierKind::ExecuteFailed as i32,
                    reason: reason.clone(),
                    at_unix_ms: now_unix_ms,
                    ..Default::default()
                };
                let mut batch = WriteBatch::default();
                batch.put(xkey, record::encode(&failed));
                return Ok(Attempt::Ready(Step::forced(
                    batch,
                    StepResult::Failed { reason },
                )));
            }
            batch.put(xkey, record::encode(&rec));
            if !writes.is_empty() {
                let mut ev = outbox::event(
                    EventKind::SagaExecute,
                    saga.as_str(),
                    participants.to_vec(),
                    writes,
                    now_unix_ms,
                );
                ev.step = step;
                core.outbox.append(&mut batch, ev);
            }
            Ok(Attempt::Ready(Step::forced(
                batch,
                StepResult::Succeeded { reads },
            )))
        }
    }
}

/// Compensates step `step` of `saga` (of `participants`, as for [`execute`]).
pub fn compensate(
    core: &mut ParticipantCore,
    saga: &TxnId,
    step: u32,
    participants: &[String],
    store: &dyn Store,
    now_unix_ms: u64,
) -> Result<CompensateStep, StoreError> {
    let ckey = compensate_key(saga, step);
    if let Some(rec) = read_barrier(store, &ckey)? {
        let compensation = match kind(&rec) {
            BarrierKind::Compensated => Compensation::Applied,
            _ => Compensation::Null,
        };
        return Ok(Attempt::Ready(Step::forced(
            WriteBatch::default(),
            compensation,
        )));
    }
    let mut batch = WriteBatch::default();
    let executed = read_barrier(store, &execute_key(saga, step))?
        .filter(|rec| kind(rec) == BarrierKind::Executed);
    let Some(executed) = executed else {
        // Never executed (or failed): record the null compensation, which also refuses a
        // late Execute.
        let rec = BarrierRecord {
            kind: BarrierKind::NullCompensated as i32,
            at_unix_ms: now_unix_ms,
            ..Default::default()
        };
        batch.put(ckey, record::encode(&rec));
        return Ok(Attempt::Ready(Step::forced(batch, Compensation::Null)));
    };
    let keys: Vec<Vec<u8>> = executed.undo.iter().map(|u| u.key.clone()).collect();
    if let Some(holder) = core.lock_conflict_keys(&keys) {
        return Ok(Attempt::Blocked {
            holder,
            wait: LockWait::Full,
        });
    }
    let changes = apply_undo(&executed.undo, store, &mut batch)?;
    let rec = BarrierRecord {
        kind: BarrierKind::Compensated as i32,
        at_unix_ms: now_unix_ms,
        ..Default::default()
    };
    batch.put(ckey, record::encode(&rec));
    if !changes.is_empty() {
        let mut ev = outbox::event(
            EventKind::SagaCompensate,
            saga.as_str(),
            participants.to_vec(),
            changes,
            now_unix_ms,
        );
        ev.step = step;
        core.outbox.append(&mut batch, ev);
    }
    Ok(Attempt::Ready(Step::forced(batch, Compensation::Applied)))
}

/// Every barrier record, as (saga, step, action 'x' or 'c', kind): the checker's evidence of
/// exactly one effect per (saga, step, action).
pub fn list_barriers(
    store: &dyn Store,
    start: &[u8],
    limit: usize,
) -> Result<Vec<(Vec<u8>, BarrierRecord)>, StoreError> {
    let start = if start.is_empty() {
        BARRIER_PREFIX
    } else {
        start
    };
    store
        .scan_page(BARRIER_PREFIX, start, limit)?
        .into_iter()
        .map(|(k, v)| Ok((k.clone(), record::decode(&k, &v)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use txn_types::store::MemStore;

    fn saga() -> TxnId {
        TxnId::parse("saga", "5.1").unwrap()
    }

    fn add(key: &str, delta: i64) -> Op {
        Op::Add {
            key: key.into(),
            delta,
            min: Some(0),
            max: None,
        }
    }

    fn apply(store: &MemStore, step: ExecuteStep) -> StepResult {
        let Attempt::Ready(step) = step else {
            panic!("blocked")
        };
        store.apply(step.write).unwrap();
        step.answer
    }

    fn apply_c(store: &MemStore, step: CompensateStep) -> Compensation {
        let Attempt::Ready(step) = step else {
            panic!("blocked")
        };
        store.apply(step.write).unwrap();
        step.answer
    }

    fn balance(store: &MemStore, key: &str) -> i64 {
        decode_counter(store.get(&data_key(key.as_bytes())).unwrap().as_deref()).unwrap()
    }

    #[test]
    fn duplicate_execute_applies_once_and_returns_the_stored_result() {
        let store = MemStore::new();
        let mut core = ParticipantCore::new();
        let ops = [add("a", 7)];
        let r1 = apply(
            &store,
            execute(&mut core, &saga(), 0, &ops, &[], &store, 0).unwrap(),
        );
        let r2 = apply(
            &store,
            execute(&mut core, &saga(), 0, &ops, &[], &store, 0).unwrap(),
        );
        assert_eq!(r1, r2);
        assert!(matches!(r1, StepResult::Succeeded { .. }));
        assert_eq!(balance(&store, "a"), 7);
        // And the compensation, duplicated too, undoes it once.
        assert_eq!(
            apply_c(
                &store,
                compensate(&mut core, &saga(), 0, &[], &store, 0).unwrap()
            ),
            Compensation::Applied
        );
        assert_eq!(
            apply_c(
                &store,
                compensate(&mut core, &saga(), 0, &[], &store, 0).unwrap()
            ),
            Compensation::Applied
        );
        assert_eq!(balance(&store, "a"), 0);
    }

    #[test]
    fn null_compensation_then_late_execute_is_refused() {
        let store = MemStore::new();
        let mut core = ParticipantCore::new();
        assert_eq!(
            apply_c(
                &store,
                compensate(&mut core, &saga(), 1, &[], &store, 0).unwrap()
            ),
            Compensation::Null
        );
        let late = apply(
            &store,
            execute(&mut core, &saga(), 1, &[add("a", 5)], &[], &store, 0).unwrap(),
        );
        assert!(matches!(late, StepResult::Refused { .. }), "{late:?}");
        assert_eq!(
            balance(&store, "a"),
            0,
            "the hanging Execute applied nothing"
        );
    }

    #[test]
    fn failed_step_records_failure_and_compensates_to_nothing() {
        let store = MemStore::new();
        let mut core = ParticipantCore::new();
        let r = apply(
            &store,
            execute(&mut core, &saga(), 0, &[add("a", -5)], &[], &store, 0).unwrap(),
        );
        assert!(matches!(r, StepResult::Failed { .. }));
        assert_eq!(
            apply_c(
                &store,
                compensate(&mut core, &saga(), 0, &[], &store, 0).unwrap()
            ),
            Compensation::Null
        );
        assert_eq!(balance(&store, "a"), 0);
    }

    #[test]
    fn add_undo_commutes_with_concurrent_adds_but_put_undo_loses_the_update() {
        let store = MemStore::new();
        let mut core = ParticipantCore::new();
        let s1 = TxnId::parse("s", "1.1").unwrap();
        let s2 = TxnId::parse("s", "1.2").unwrap();
        apply(
            &store,
            execute(&mut core, &s1, 0, &[add("n", 10)], &[], &store, 0).unwrap(),
        );
        apply(
            &store,
            execute(&mut core, &s2, 0, &[add("n", 5)], &[], &store, 0).unwrap(),
        );
        apply_c(
            &store,
            compensate(&mut core, &s1, 0, &[], &store, 0).unwrap(),
        );
        assert_eq!(balance(&store, "n"), 5, "the other saga's add survives");

        let put = |v: &str| Op::Put {
            key: b"p".to_vec(),
            value: v.as_bytes().to_vec(),
        };
        apply(
            &store,
            execute(&mut core, &s1, 1, &[put("one")], &[], &store, 0).unwrap(),
        );
        apply(
            &store,
            execute(&mut core, &s2, 1, &[put("two")], &[], &store, 0).unwrap(),
        );
        apply_c(
            &store,
            compensate(&mut core, &s1, 1, &[], &store, 0).unwrap(),
        );
        assert_eq!(
            store.get(&data_key(b"p")).unwrap(),
            None,
            "before-image restored over s2's write"
        );
    }
}
