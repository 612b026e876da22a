//! One-phase commit of a txn whose only participant is this one: the branch is checked and
//! applied with its committed outcome in one batch, so there is never a prepared state to be
//! in doubt about.
//!
//! It takes no locks (the driver applies the batch under the core's lock, as it does saga
//! steps); it only waits for prepared txns whose locks it conflicts with. If the coordinator
//! loses the answer, it settles the txn with an Abort: an abort tombstone makes every later
//! copy of the call refuse. So every answer here, a refusal included, goes out only once
//! durable: the client will be told ABORTED on the strength of a refusal, and a crash must
//! not let a redelivered copy of the call commit afterwards.

use txn_types::rec::{EventKind, OutcomeKind};
use txn_types::store::{Store, StoreError, WriteBatch};
use txn_types::types::{KeyValue, Op, TxnId};

use crate::core::{AbortRecord, ParticipantCore};
use crate::eval::{evaluate, lock_sets};
use crate::keys::{OutcomeFacts, data_key, put_abort, put_outcome, read_outcome};
use crate::outbox;
use crate::step::{Attempt, LockWait, Step};

/// The answer to a one-phase commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnePhaseAnswer {
    /// Committed now; `reads` are the branch's reads.
    Committed { reads: Vec<KeyValue> },
    /// An earlier copy of the call committed it (its reads went with its answer).
    AlreadyCommitted,
    /// Not committed, and it never will be: nothing changed.
    Refused { reason: String },
}

impl ParticipantCore {
    pub fn commit_one_phase(
        &mut self,
        txn: &TxnId,
        ops: &[Op],
        store: &dyn Store,
        now_unix_ms: u64,
    ) -> Result<Attempt<Step<OnePhaseAnswer>>, StoreError> {
        let refuse = |reason: &str| {
            Attempt::Ready(Step::forced(
                WriteBatch::default(),
                OnePhaseAnswer::Refused {
                    reason: reason.into(),
                },
            ))
        };
        if self.is_prepared(txn) {
            return Ok(refuse(
                "txn is prepared here for two-phase commit; it cannot also commit in one phase",
            ));
        }
        match read_outcome(store, txn)? {
            Some(OutcomeKind::Committed) => {
                return Ok(Attempt::Ready(Step::forced(
                    WriteBatch::default(),
                    OnePhaseAnswer::AlreadyCommitted,
                )));
            }
            Some(OutcomeKind::Aborted) => return Ok(refuse("txn was already aborted here")),
            _ => {}
        }
        let (exclusive, shared) = lock_sets(ops);
        if let Some(holder) = self.locks.conflict(None, &exclusive, &shared) {
            return Ok(Attempt::Blocked {
                holder,
                wait: LockWait::Full,
            });
        }
        let mut batch = WriteBatch::default();
        Ok(Attempt::Ready(match evaluate(ops, store)? {
            Err(reason) => {
                let facts = OutcomeFacts::unknown();
                put_abort(&mut batch, txn, now_unix_ms, facts);
                Step::forced(batch, OnePhaseAnswer::Refused { reason })
            }
            Ok((writes, reads)) => {
                // This participant is the txn's only one: an empty member list says so.
                let facts = OutcomeFacts {
                    writes: writes.len() as u32,
                    ..OutcomeFacts::unknown()
                };
                if !writes.is_empty() {
                    // This participant alone: the event names no members.
                    let ev = outbox::event(
                        EventKind::OnePhaseCommit,
                        txn.as_str(),
                        Vec::new(),
                        writes.clone(),
                        now_unix_ms,
                    );
                    self.outbox.append(&mut batch, ev);
                }
                for w in writes {
                    match w.value {
                        Some(v) => batch.put(data_key(&w.key), v),
                        None => batch.delete(data_key(&w.key)),
                    };
                }
                // Needed only while the coordinator may still settle the call.
                put_outcome(
                    &mut batch,
                    txn,
                    OutcomeKind::Committed,
                    now_unix_ms,
                    true,
                    facts,
                );
                Step::forced(batch, OnePhaseAnswer::Committed { reads })
            }
        }))
    }

    /// A one-phase commit still blocked when its lock wait is over: it refuses, with an abort
    /// tombstone made durable first, so the call cannot still commit if it is delivered again.
    /// None when a duplicate of the call committed meanwhile: look again, and answer as it did.
    pub fn one_phase_lock_wait_over(
        &mut self,
        txn: &TxnId,
        holder: &TxnId,
        waited_ms: u64,
        store: &dyn Store,
        now_unix_ms: u64,
    ) -> Result<Option<Step<OnePhaseAnswer>>, StoreError> {
        let answer = OnePhaseAnswer::Refused {
            reason: format!("lock conflict with txn {holder} (waited {waited_ms} ms)"),
        };
        Ok(match self.abort_record(txn, store, now_unix_ms)? {
            AbortRecord::Written { batch, .. } => Some(Step::forced(batch, answer)),
            AbortRecord::AlreadyAborted => Some(Step::forced(WriteBatch::default(), answer)),
            AbortRecord::Committed => None,
        })
    }
}
