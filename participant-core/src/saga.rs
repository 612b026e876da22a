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
//! Barriers are not kept forever ([`end_saga`], [`sweep_barriers`]). Each Execute and
//! Compensate carries the saga's deadline, and an Execute that arrives after it is refused
//! with nothing written: past the deadline the coordinator compensates the step anyway. So a
//! saga's barriers are needed only until (a) no Compensate of it can come any more, which the
//! coordinator says with EndSagas once the saga has ended, and (b) no Execute of it can apply
//! any more, which is once the participant's clock is past the deadline. They go when both
//! hold, with a margin: the participant's outcome retention (at least 120 s), counted from the
//! later of the end notice and the deadline, the same rule that keeps abort tombstones. Later
//! copies of either call change nothing: an Execute is refused, and a Compensate finds no
//! Execute to undo, so it is a null compensation that needs no barrier either.
//!
//! Keys: `b/<saga>/<step>/x` (execute) and `b/<saga>/<step>/c` (compensate);
//! `bx/<at, 8 bytes big-endian><saga>` the expiry index of ended sagas' barriers.

use prost::Message;
use txn_types::rec::{BarrierKind, BarrierRecord, EventKind, Restore, UndoOp, Write, undo_op};
use txn_types::record;
use txn_types::store::{Store, StoreError, WriteBatch};
use txn_types::types::{KeyValue, MAX_RECORD_BYTES, Op, TxnId, decode_counter, encode_counter};

use crate::core::ParticipantCore;
use crate::eval::evaluate;
use crate::keys::{corrupt_key, data_key};
use crate::outbox;
use crate::step::{Attempt, LockWait, Step};

pub const BARRIER_PREFIX: &[u8] = b"b/";
/// Index of the sagas whose barriers may go once old enough: `bx/<at><saga>`, where `at` is
/// the later of the saga's end notice and its deadline (8 bytes big-endian milliseconds).
pub const BARRIER_EXPIRY_PREFIX: &[u8] = b"bx/";
/// Ended sagas one barrier sweep step handles (each has at most two barriers per step).
pub const BARRIER_SWEEP_PAGE: usize = 64;

/// Every barrier key of `saga` starts with this.
pub fn saga_barriers_prefix(saga: &TxnId) -> Vec<u8> {
    format!("b/{saga}/").into_bytes()
}

fn barrier_expiry_key(at_unix_ms: u64, saga: &TxnId) -> Vec<u8> {
    [
        BARRIER_EXPIRY_PREFIX,
        &at_unix_ms.to_be_bytes(),
        saga.as_str().as_bytes(),
    ]
    .concat()
}

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

/// A saga step as the orchestrator names it: which saga, which step, and the saga's deadline
/// (ms since the Unix epoch; 0 = none, from an orchestrator that does not send it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepRef<'a> {
    pub saga: &'a TxnId,
    pub step: u32,
    pub deadline_unix_ms: u64,
}

impl StepRef<'_> {
    fn past_deadline(&self, now_unix_ms: u64) -> bool {
        self.deadline_unix_ms > 0 && now_unix_ms > self.deadline_unix_ms
    }
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

/// Executes step `step` of `saga` with `ops`. Past the saga's deadline it is refused with
/// nothing written (see the module docs). `participants` are the saga's, in step order: the
/// step's event names them.
pub fn execute(
    core: &mut ParticipantCore,
    at: StepRef<'_>,
    ops: &[Op],
    participants: &[String],
    store: &dyn Store,
    now_unix_ms: u64,
) -> Result<ExecuteStep, StoreError> {
    let (saga, step) = (at.saga, at.step);
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
    if at.past_deadline(now_unix_ms) {
        // Only the clock backs this refusal: every later copy meets a later clock.
        return Ok(Attempt::Ready(Step::reply(StepResult::Refused {
            reason: format!(
                "step {step} of saga {saga} arrived after the saga's deadline; it never runs"
            ),
        })));
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
    at: StepRef<'_>,
    participants: &[String],
    store: &dyn Store,
    now_unix_ms: u64,
) -> Result<CompensateStep, StoreError> {
    let (saga, step) = (at.saga, at.step);
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
        let margin = core.limits().barrier_margin_ms;
        if let Some(margin) = margin.filter(|_| at.deadline_unix_ms > 0)
            && now_unix_ms >= at.deadline_unix_ms.saturating_add(margin)
        {
            // So late that the saga's barriers may already have been swept here: no Execute
            // can apply any more (refused past the deadline), so the null compensation needs
            // no barrier, and one written now would never be swept.
            return Ok(Attempt::Ready(Step::reply(Compensation::Null)));
        }
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

/// The coordinator says `saga` has ended (no Compensate of it will come): indexes its
/// barriers for the sweeper, which drops them once `retention` has passed since the later of
/// now and the saga's deadline. Answered once durable: the coordinator forgets the notice on
/// the strength of it.
pub fn end_saga(saga: &TxnId, deadline_unix_ms: u64, now_unix_ms: u64) -> Step<()> {
    let mut batch = WriteBatch::default();
    batch.put(
        barrier_expiry_key(deadline_unix_ms.max(now_unix_ms), saga),
        Vec::new(),
    );
    Step::forced(batch, ())
}

/// One ended saga whose barriers are due, read by [`due_barriers`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueBarriers {
    index_key: Vec<u8>,
    barrier_keys: Vec<Vec<u8>>,
}

/// The ended sagas indexed before `cutoff_unix_ms`, at most `limit`, with their barrier keys;
/// and whether more may be due. Reads only: [`drop_barriers`] makes the batch.
pub fn due_barriers(
    store: &dyn Store,
    cutoff_unix_ms: u64,
    limit: usize,
) -> Result<(Vec<DueBarriers>, bool), StoreError> {
    let page = store.scan_page(BARRIER_EXPIRY_PREFIX, BARRIER_EXPIRY_PREFIX, limit)?;
    let full = page.len() == limit;
    let mut due = Vec::new();
    for (key, _) in page {
        let rest = &key[BARRIER_EXPIRY_PREFIX.len()..];
        let (at, saga) = rest
            .split_first_chunk::<8>()
            .ok_or_else(|| corrupt_key(&key, "barrier expiry key too short"))?;
        if u64::from_be_bytes(*at) >= cutoff_unix_ms {
            return Ok((due, false));
        }
        let saga = std::str::from_utf8(saga)
            .ok()
            .and_then(|t| TxnId::parse("saga", t).ok())
            .ok_or_else(|| corrupt_key(&key, "barrier expiry key names no valid saga id"))?;
        let barrier_keys = store
            .scan_prefix(&saga_barriers_prefix(&saga))?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        due.push(DueBarriers {
            index_key: key,
            barrier_keys,
        });
    }
    Ok((due, full))
}

/// The batch that drops `due` sagas' barriers with their index entries: every barrier of a
/// saga at once, so a step's execute and compensate barriers go together (a compensate
/// barrier without its execute barrier would let a duplicate Compensate undo twice).
pub fn drop_barriers(due: Vec<DueBarriers>) -> WriteBatch {
    let mut batch = WriteBatch::default();
    for d in due {
        for k in d.barrier_keys {
            batch.delete(k);
        }
        batch.delete(d.index_key);
    }
    batch
}

/// [`due_barriers`] and [`drop_barriers`] in one: the batch, and whether more may be due.
pub fn sweep_barriers(
    store: &dyn Store,
    cutoff_unix_ms: u64,
    limit: usize,
) -> Result<(WriteBatch, bool), StoreError> {
    let (due, more) = due_barriers(store, cutoff_unix_ms, limit)?;
    Ok((drop_barriers(due), more))
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

    fn at(saga: &TxnId, step: u32) -> StepRef<'_> {
        StepRef {
            saga,
            step,
            deadline_unix_ms: 0,
        }
    }

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
            execute(&mut core, at(&saga(), 0), &ops, &[], &store, 0).unwrap(),
        );
        let r2 = apply(
            &store,
            execute(&mut core, at(&saga(), 0), &ops, &[], &store, 0).unwrap(),
        );
        assert_eq!(r1, r2);
        assert!(matches!(r1, StepResult::Succeeded { .. }));
        assert_eq!(balance(&store, "a"), 7);
        // And the compensation, duplicated too, undoes it once.
        assert_eq!(
            apply_c(
                &store,
                compensate(&mut core, at(&saga(), 0), &[], &store, 0).unwrap()
            ),
            Compensation::Applied
        );
        assert_eq!(
            apply_c(
                &store,
                compensate(&mut core, at(&saga(), 0), &[], &store, 0).unwrap()
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
                compensate(&mut core, at(&saga(), 1), &[], &store, 0).unwrap()
            ),
            Compensation::Null
        );
        let late = apply(
            &store,
            execute(&mut core, at(&saga(), 1), &[add("a", 5)], &[], &store, 0).unwrap(),
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
            execute(&mut core, at(&saga(), 0), &[add("a", -5)], &[], &store, 0).unwrap(),
        );
        assert!(matches!(r, StepResult::Failed { .. }));
        assert_eq!(
            apply_c(
                &store,
                compensate(&mut core, at(&saga(), 0), &[], &store, 0).unwrap()
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
            execute(&mut core, at(&s1, 0), &[add("n", 10)], &[], &store, 0).unwrap(),
        );
        apply(
            &store,
            execute(&mut core, at(&s2, 0), &[add("n", 5)], &[], &store, 0).unwrap(),
        );
        apply_c(
            &store,
            compensate(&mut core, at(&s1, 0), &[], &store, 0).unwrap(),
        );
        assert_eq!(balance(&store, "n"), 5, "the other saga's add survives");

        let put = |v: &str| Op::Put {
            key: b"p".to_vec(),
            value: v.as_bytes().to_vec(),
        };
        apply(
            &store,
            execute(&mut core, at(&s1, 1), &[put("one")], &[], &store, 0).unwrap(),
        );
        apply(
            &store,
            execute(&mut core, at(&s2, 1), &[put("two")], &[], &store, 0).unwrap(),
        );
        apply_c(
            &store,
            compensate(&mut core, at(&s1, 1), &[], &store, 0).unwrap(),
        );
        assert_eq!(
            store.get(&data_key(b"p")).unwrap(),
            None,
            "before-image restored over s2's write"
        );
    }
}
