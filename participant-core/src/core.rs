//! Two-phase commit at a participant: prepare and vote, commit, abort, holds for operators.
//!
//! [`ParticipantCore`] owns the lock table and the in-memory image of the prepared records. It
//! reads committed data through [`Store`] but never writes: every change comes back in a
//! [`Step`], together with the durability its answer needs. The invariants it protects:
//! - a YES vote goes out only once its prepared record is durable ([`Durability::Forced`]),
//!   and only if the txn is still prepared then ([`ParticipantCore::confirm_vote`]);
//! - after YES, only a decision moves the txn on: there is no unilateral abort here, and a txn
//!   an operator holds yields only to an operator;
//! - every message is idempotent: a duplicate Prepare, Commit or Abort gets the same answer
//!   and changes nothing;
//! - an answer that promises something about the future ("committed here", "never prepared
//!   here, and never will be") goes out only once the record behind it is durable.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message;

use txn_types::rec::{EventKind, OutcomeKind, PreparedRecord};
use txn_types::record;
use txn_types::store::{Store, StoreError, WriteBatch};
use txn_types::types::{CommitPoint, KeyValue, MAX_RECORD_BYTES, Op, ParticipantId, TxnId, Vote};

use crate::eval::{evaluate, lock_sets};
use crate::keys::{
    OutcomeFacts, PREPARED_PREFIX, data_key, prepared_key, put_abort, put_outcome, read_outcome,
    read_outcome_facts,
};
use crate::limits::{Limits, Overload};
use crate::locks::LockTable;
use crate::outbox::{self, Outbox};
use crate::step::{Attempt, Durability, Step};

/// A Prepare, validated.
#[derive(Debug, Clone)]
pub struct PrepareRequest {
    pub txn: TxnId,
    pub coordinator_epoch: u64,
    pub participants: Vec<ParticipantId>,
    /// The participants whose branches write (the coordinator says so): the commit's event
    /// names them, so that a consumer knows which events make up the txn.
    pub writers: Vec<ParticipantId>,
    pub ops: Vec<Op>,
    /// No branch of the txn writes (the coordinator says so).
    pub read_only: bool,
    /// Where the txn commits. At its votes, every NO is durable before it is sent: it is the
    /// fence that lets the coordinator abort (see [`CommitPoint::Votes`]).
    pub commit_point: CommitPoint,
}

/// The answer to a Prepare, before [`ParticipantCore::confirm_vote`] turns it into a vote.
#[derive(Debug, Clone, PartialEq)]
pub enum PrepareAnswer {
    /// Freshly prepared: YES, if the txn is still prepared once its record is durable.
    Yes {
        reads: Vec<KeyValue>,
    },
    /// A duplicate of a Prepare already voted YES (or already committed): YES again.
    Revote {
        reads: Vec<KeyValue>,
    },
    No {
        reason: String,
    },
    /// Refused before anything was locked or written: the participant is at one of its
    /// bounds ([`crate::limits`]). The driver answers RESOURCE_EXHAUSTED.
    Overloaded(Overload),
}

/// The answer to a Commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitAnswer {
    Committed,
    AlreadyCommitted,
    Refused(Refusal),
}

/// The answer to a CommitBatch: the txns committed now (with when each was prepared, for the
/// in-doubt figures) and those refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchAnswer {
    pub committed: Vec<(TxnId, u64)>,
    pub refused: Vec<(TxnId, Refusal)>,
}

/// Who asks for an abort. A txn an operator holds yields only to an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AbortSource {
    /// This participant's own resolver, on the coordinator's or a peer's word.
    Resolver,
    /// The coordinator's Abort call.
    Coordinator,
    /// An operator's forced Abort.
    Operator,
}

/// The answer to an Abort.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AbortAnswer {
    Aborted,
    AlreadyAborted,
    /// The resolver left a held txn alone: only an operator's outcome moves it.
    LeftHeld,
    Refused(Refusal),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No record of the txn at all.
    Unknown,
    /// The txn reached the other outcome, or an operator holds it: answering would break
    /// atomicity.
    Conflict(String),
}

/// What this participant knows about a txn, for Resolve answers and operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TxnStatus {
    Prepared,
    Committed,
    Aborted,
    Unknown,
}

/// What the abort of one txn changes, whoever asked.
pub(crate) enum AbortRecord {
    /// Discarded a prepared state (locks released) or wrote a tombstone for a txn never
    /// prepared here.
    Written {
        batch: WriteBatch,
        was_prepared: bool,
    },
    AlreadyAborted,
    Committed,
}

/// Ordered collections only, so that cloning, comparing and hashing a core is deterministic
/// (the model checker explores cores as states).
#[derive(Default, Debug, Clone, PartialEq)]
pub struct ParticipantCore {
    pub(crate) locks: LockTable,
    prepared: BTreeMap<TxnId, PreparedRecord>,
    /// Prepared txns an operator pinned for a forced outcome: only an explicit Commit or
    /// Abort moves them, never this participant's own resolver.
    held: BTreeSet<TxnId>,
    pub(crate) limits: Limits,
    /// Where the next event of the outbox goes (see [`crate::outbox`]).
    pub(crate) outbox: Outbox,
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
        self.limits.hash(state);
        self.outbox.hash(state);
    }
}

impl ParticipantCore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds the in-memory state from the durable prepared records, re-taking their locks,
    /// and the outbox's position. Must run before any request is served: a prepared txn's keys
    /// may not be read or written by anyone until its decision is known.
    pub fn recover(&mut self, store: &dyn Store) -> Result<Vec<TxnId>, StoreError> {
        self.outbox = Outbox::recover(store)?;
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
                .try_lock_all(&txn, &rec.exclusive_keys, &rec.shared_keys, false)
                .expect("prepared txns held their locks together before the restart");
            self.prepared.insert(txn.clone(), rec);
            txns.push(txn);
        }
        Ok(txns)
    }

    /// A Prepare: lock, evaluate, and write the prepared record (forced), or vote NO.
    pub fn prepare(
        &mut self,
        req: &PrepareRequest,
        store: &dyn Store,
        now_unix_ms: u64,
    ) -> Result<Attempt<Step<PrepareAnswer>>, StoreError> {
        if let Some(rec) = self.prepared.get(&req.txn) {
            // The first vote may still be on its way to the disk: answer once it is there.
            let reads = rec.reads.iter().cloned().map(Into::into).collect();
            return Ok(Attempt::Ready(Step::forced(
                WriteBatch::default(),
                PrepareAnswer::Revote { reads },
            )));
        }
        match read_outcome(store, &req.txn)? {
            Some(OutcomeKind::Aborted) => {
                let no = PrepareAnswer::No {
                    reason: "txn was already aborted here".into(),
                };
                // At its votes, the NO is a fence: the abort it names may still be queued.
                return Ok(Attempt::Ready(match req.commit_point {
                    CommitPoint::Votes => Step::forced(WriteBatch::default(), no),
                    CommitPoint::Decision => Step::reply(no),
                }));
            }
            Some(OutcomeKind::Committed) => {
                // A duplicate Prepare that arrives after the commit: the vote was YES.
                return Ok(Attempt::Ready(Step::forced(
                    WriteBatch::default(),
                    PrepareAnswer::Revote { reads: Vec::new() },
                )));
            }
            _ => {}
        }
        let (exclusive, shared) = lock_sets(&req.ops);
        // A Prepare that was queued and now votes NO leaves the queue and its locks at once:
        // its answer must wake those queued behind it.
        let was_queued = self.locks.is_waiting(&req.txn);
        let wake = |step: Step<PrepareAnswer>| if was_queued { step.releasing() } else { step };
        if let Some(overload) = self.overload(&exclusive, &shared) {
            let refused = Step::reply(PrepareAnswer::Overloaded(overload));
            return Ok(Attempt::Ready(self.leave_lock_queue(&req.txn, refused)));
        }
        if let Err(blocked) = self
            .locks
            .try_lock_all(&req.txn, &exclusive, &shared, req.read_only)
        {
            return Ok(Attempt::Blocked {
                holder: blocked.by,
                wait: blocked.wait,
            });
        }
        let (writes, reads) = match evaluate(&req.ops, store)? {
            Ok(evaluated) => evaluated,
            Err(reason) => {
                self.locks.release_all(&req.txn, &exclusive, &shared);
                // Remember the NO, so a peer asking during cooperative termination learns that
                // this txn can only abort. With a logged decision, lazily: the coordinator's
                // abort is final whatever this participant says later, so losing the tombstone
                // is harmless. At the votes, forced: the NO is the abort's fence.
                let mut batch = WriteBatch::default();
                let facts = OutcomeFacts {
                    participants: req.participants.iter().map(|p| p.to_string()).collect(),
                    ..OutcomeFacts::unknown()
                };
                put_abort(&mut batch, &req.txn, now_unix_ms, facts);
                let no = PrepareAnswer::No { reason };
                return Ok(Attempt::Ready(wake(match req.commit_point {
                    CommitPoint::Votes => Step::forced(batch, no),
                    CommitPoint::Decision => Step::lazy(batch, no),
                })));
            }
        };
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
            commit_at_votes: req.commit_point == CommitPoint::Votes,
            writers: req.writers.iter().map(|p| p.as_str().to_owned()).collect(),
        };
        if rec.encoded_len() > MAX_RECORD_BYTES {
            self.locks
                .release_all(&req.txn, &rec.exclusive_keys, &rec.shared_keys);
            let no = PrepareAnswer::No {
                reason: format!(
                    "the prepared record would be {} bytes, the limit is {MAX_RECORD_BYTES}",
                    rec.encoded_len()
                ),
            };
            return Ok(Attempt::Ready(wake(self.no_vote(
                &req.txn,
                req.commit_point,
                now_unix_ms,
                no,
            ))));
        }
        let mut batch = WriteBatch::default();
        batch.put(prepared_key(&req.txn), record::encode(&rec));
        self.prepared.insert(req.txn.clone(), rec);
        Ok(Attempt::Ready(Step::forced(
            batch,
            PrepareAnswer::Yes { reads },
        )))
    }

    /// The vote to send for `answer`, once its step's write is durable. A txn aborted while
    /// its record was being made durable (an Abort that overtook this vote, or cooperative
    /// termination) gets NO: never say YES for a txn this participant has already given up.
    pub fn confirm_vote(&self, txn: &TxnId, answer: PrepareAnswer) -> Vote {
        match answer {
            PrepareAnswer::Yes { reads } if self.is_prepared(txn) => Vote::Yes { reads },
            PrepareAnswer::Yes { .. } => Vote::No {
                reason: "txn was aborted here while it prepared".into(),
            },
            PrepareAnswer::Revote { reads } => Vote::Yes { reads },
            PrepareAnswer::No { reason } => Vote::No { reason },
            PrepareAnswer::Overloaded(o) => Vote::No {
                reason: format!("refused: the participant {o}"),
            },
        }
    }

    /// A Prepare still blocked when its lock wait is over votes NO, naming the holder, with
    /// nothing written: the wait is bounded so that a distributed deadlock costs at most this
    /// long, and the coordinator's abort is final whatever this participant says later.
    ///
    /// At the votes, a NO must fence the txn off: a tombstone is written, and the NO waits
    /// for it to be durable.
    pub fn prepare_lock_wait_over(
        &mut self,
        req: &PrepareRequest,
        holder: &TxnId,
        waited_ms: u64,
        now_unix_ms: u64,
    ) -> Step<PrepareAnswer> {
        let no = PrepareAnswer::No {
            reason: format!("lock conflict with txn {holder} (waited {waited_ms} ms)"),
        };
        let step = self.no_vote(&req.txn, req.commit_point, now_unix_ms, no);
        self.leave_lock_queue(&req.txn, step)
    }

    /// A NO for a txn this participant holds nothing of: just the answer with a logged
    /// decision; a durable tombstone first at the votes (a fence).
    fn no_vote(
        &self,
        txn: &TxnId,
        commit_point: CommitPoint,
        now_unix_ms: u64,
        no: PrepareAnswer,
    ) -> Step<PrepareAnswer> {
        match commit_point {
            CommitPoint::Decision => Step::reply(no),
            CommitPoint::Votes => {
                let mut batch = WriteBatch::default();
                put_abort(&mut batch, txn, now_unix_ms, OutcomeFacts::unknown());
                Step::forced(batch, no)
            }
        }
    }

    /// A request of `txn` that waited for locks has gone (its wait is over, its caller went
    /// away): it leaves the queue, and `step` wakes those behind it if it was there.
    pub fn leave_lock_queue<A>(&mut self, txn: &TxnId, step: Step<A>) -> Step<A> {
        if self.locks.abandon(txn) {
            step.releasing()
        } else {
            step
        }
    }

    /// Requests waiting for locks here.
    pub fn lock_waiters(&self) -> usize {
        self.locks.waiting()
    }

    /// A Commit. The locks go with the write, before the fsync (early lock release): the
    /// decision is already durable at the coordinator, and a txn that reads these values
    /// becomes durable after them.
    pub fn commit(
        &mut self,
        txn: &TxnId,
        store: &dyn Store,
        now_unix_ms: u64,
    ) -> Result<Step<CommitAnswer>, StoreError> {
        if let Some(rec) = self.prepared.remove(txn) {
            self.held.remove(txn);
            self.locks
                .release_all(txn, &rec.exclusive_keys, &rec.shared_keys);
            let facts = OutcomeFacts::of_prepared(&rec);
            let mut batch = WriteBatch::default();
            if !rec.writes.is_empty() {
                // The event rides in the commit's own batch: durable exactly when it is.
                let members = if rec.writers.is_empty() {
                    rec.participants.clone()
                } else {
                    rec.writers.clone()
                };
                let ev = outbox::event(
                    EventKind::TwoPhaseCommit,
                    txn.as_str(),
                    members,
                    rec.writes.clone(),
                    now_unix_ms,
                );
                self.outbox.append(&mut batch, ev);
            }
            for w in rec.writes {
                match w.value {
                    Some(v) => batch.put(data_key(&w.key), v),
                    None => batch.delete(data_key(&w.key)),
                };
            }
            batch.delete(prepared_key(txn));
            // Kept until the coordinator says the txn has ended (see `forget`): a peer in doubt
            // may still ask, and must hear "committed".
            put_outcome(
                &mut batch,
                txn,
                OutcomeKind::Committed,
                now_unix_ms,
                false,
                facts,
            );
            return Ok(Step::patient(batch, CommitAnswer::Committed).releasing());
        }
        Ok(match read_outcome(store, txn)? {
            // The first commit may still be on its way to the disk.
            Some(OutcomeKind::Committed) => {
                Step::patient(WriteBatch::default(), CommitAnswer::AlreadyCommitted)
            }
            Some(OutcomeKind::Aborted) => Step::reply(CommitAnswer::Refused(Refusal::Conflict(
                format!("txn {txn} was aborted here and cannot commit"),
            ))),
            _ => Step::reply(CommitAnswer::Refused(Refusal::Unknown)),
        })
    }

    /// Commits many txns in one write and one durable wait (the coordinator's CommitBatch),
    /// and makes the outcomes of `forget` expire (see [`ParticipantCore::forget`]) when
    /// `obey_forget` (a participant that keeps every outcome ignores them).
    pub fn commit_batch(
        &mut self,
        txns: &[TxnId],
        forget: &[TxnId],
        obey_forget: bool,
        store: &dyn Store,
        now_unix_ms: u64,
    ) -> Result<Step<BatchAnswer>, StoreError> {
        let mut merged = WriteBatch::default();
        let mut answer = BatchAnswer::default();
        let mut seen = BTreeSet::new();
        for txn in txns {
            // A txn twice in one batch: the second would look for an outcome record that is
            // not written yet.
            if !seen.insert(txn) {
                continue;
            }
            let prepared_at = self.prepared_at_unix_ms(txn);
            let step = self.commit(txn, store, now_unix_ms)?;
            merged.append(step.write);
            match step.answer {
                CommitAnswer::Committed => answer
                    .committed
                    .push((txn.clone(), prepared_at.unwrap_or(now_unix_ms))),
                CommitAnswer::AlreadyCommitted => {}
                CommitAnswer::Refused(r) => answer.refused.push((txn.clone(), r)),
            }
        }
        if obey_forget {
            for txn in forget {
                if let Some(batch) = self.forget(txn, store, now_unix_ms)? {
                    merged.append(batch);
                }
            }
        }
        let released = !answer.committed.is_empty();
        let step = Step::patient(merged, answer);
        Ok(if released { step.releasing() } else { step })
    }

    /// An Abort from `source`. Presumed abort: discarding a prepared state needs nothing
    /// durable. But two answers promise something and go out only once durable:
    /// - a tombstone for a txn never prepared here, asked by the coordinator or an operator:
    ///   it promises that a late Prepare votes NO, and the coordinator may tell its client
    ///   ABORTED on the strength of it (a settled one-phase commit);
    /// - a refusal because the txn committed here: the coordinator acts on it (it settles a
    ///   lost one-phase commit as committed).
    pub fn abort(
        &mut self,
        txn: &TxnId,
        source: AbortSource,
        store: &dyn Store,
        now_unix_ms: u64,
    ) -> Result<Step<AbortAnswer>, StoreError> {
        let rpc = source != AbortSource::Resolver;
        if self.is_held(txn) {
            match source {
                AbortSource::Resolver => return Ok(Step::reply(AbortAnswer::LeftHeld)),
                AbortSource::Coordinator => {
                    return Ok(Step::forced(
                        WriteBatch::default(),
                        AbortAnswer::Refused(Refusal::Conflict(format!(
                            "txn {txn} is held by an operator; only a forced outcome moves it"
                        ))),
                    ));
                }
                AbortSource::Operator => {}
            }
        }
        let step = match self.abort_record(txn, store, now_unix_ms)? {
            AbortRecord::Written {
                batch,
                was_prepared: true,
            } => Step::lazy(batch, AbortAnswer::Aborted).releasing(),
            AbortRecord::Written { batch, .. } if rpc => Step::forced(batch, AbortAnswer::Aborted),
            AbortRecord::Written { batch, .. } => Step::lazy(batch, AbortAnswer::Aborted),
            AbortRecord::AlreadyAborted => Step {
                durability: if rpc {
                    Durability::Forced
                } else {
                    Durability::Lazy
                },
                ..Step::reply(AbortAnswer::AlreadyAborted)
            },
            AbortRecord::Committed => Step::forced(
                WriteBatch::default(),
                AbortAnswer::Refused(Refusal::Conflict(format!(
                    "txn {txn} was committed here and cannot abort"
                ))),
            ),
        };
        // An Abort that overtakes its own Prepare, still queued for locks, takes it out of the
        // queue so that the requests behind it need not wait for it to notice.
        Ok(self.leave_lock_queue(txn, step))
    }

    /// The record side of an abort: drop the prepared state, or leave a tombstone so that a
    /// Prepare arriving late votes NO.
    pub(crate) fn abort_record(
        &mut self,
        txn: &TxnId,
        store: &dyn Store,
        now_unix_ms: u64,
    ) -> Result<AbortRecord, StoreError> {
        let mut batch = WriteBatch::default();
        if let Some(rec) = self.prepared.remove(txn) {
            self.held.remove(txn);
            self.locks
                .release_all(txn, &rec.exclusive_keys, &rec.shared_keys);
            batch.delete(prepared_key(txn));
            let facts = OutcomeFacts::of_prepared(&rec);
            put_abort(&mut batch, txn, now_unix_ms, facts);
            return Ok(AbortRecord::Written {
                batch,
                was_prepared: true,
            });
        }
        Ok(match read_outcome(store, txn)? {
            Some(OutcomeKind::Aborted) => AbortRecord::AlreadyAborted,
            Some(OutcomeKind::Committed) => AbortRecord::Committed,
            _ => {
                let facts = OutcomeFacts::unknown();
                put_abort(&mut batch, txn, now_unix_ms, facts);
                AbortRecord::Written {
                    batch,
                    was_prepared: false,
                }
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
        Ok(match read_outcome_facts(store, txn)? {
            Some((OutcomeKind::Committed, facts)) => {
                let mut batch = WriteBatch::default();
                put_outcome(
                    &mut batch,
                    txn,
                    OutcomeKind::Committed,
                    now_unix_ms,
                    true,
                    facts,
                );
                Some(batch)
            }
            _ => None,
        })
    }

    /// Pins a prepared txn for an operator: from now on only an explicit (forced) outcome
    /// moves it. Answered once everything written so far is durable, so a prepared record
    /// still on its way to the disk is never reported as a YES vote.
    pub fn hold(&mut self, txn: &TxnId, store: &dyn Store) -> Result<Step<TxnStatus>, StoreError> {
        let status = self.status(txn, store)?;
        if status == TxnStatus::Prepared {
            self.held.insert(txn.clone());
        }
        Ok(Step::forced(WriteBatch::default(), status))
    }

    /// Undoes [`ParticipantCore::hold`]; returns the txn's status.
    pub fn release(&mut self, txn: &TxnId, store: &dyn Store) -> Result<TxnStatus, StoreError> {
        self.held.remove(txn);
        self.status(txn, store)
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

    /// Prepared txns with ids after `after` (all of them if None), in id order: one page of
    /// an operator's listing at a time.
    pub fn prepared_after(
        &self,
        after: Option<&TxnId>,
    ) -> impl Iterator<Item = (&TxnId, &PreparedRecord)> {
        use std::ops::Bound;
        let lower = after.map_or(Bound::Unbounded, |t| Bound::Excluded(t.clone()));
        self.prepared.range((lower, Bound::Unbounded))
    }

    pub fn prepared_at_unix_ms(&self, txn: &TxnId) -> Option<u64> {
        self.prepared.get(txn).map(|r| r.prepared_at_unix_ms)
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

    /// A 2PC txn holding a lock that conflicts with running `ops` now (for saga steps and
    /// one-phase commits, which apply in one atomic batch under the core's lock and so need
    /// no locks of their own).
    pub fn lock_conflict(&self, ops: &[Op]) -> Option<TxnId> {
        let (exclusive, shared) = lock_sets(ops);
        self.locks.conflict(None, &exclusive, &shared)
    }

    pub fn lock_conflict_keys(&self, keys: &[Vec<u8>]) -> Option<TxnId> {
        self.locks.conflict(None, keys, &[])
    }

    /// The outbox: the offset the next event gets, and the first one kept.
    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// The outbox, for the feed's pruning (see [`outbox::prune`]).
    pub fn outbox_mut(&mut self) -> &mut Outbox {
        &mut self.outbox
    }
}
