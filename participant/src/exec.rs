//! How the participant driver carries out a core's [`Step`]: the only place where a write is
//! applied, durability is waited for, and lock waiters are woken. Every protocol entry point
//! of [`Participant`] goes through [`Participant::run`] or [`Participant::run_unblocked`], so
//! none of them can answer before the durability its step asks for.

use std::time::Duration;
use txn_participant_core::core::ParticipantCore;

use txn_participant_core::keys::DATA_PREFIX;
use txn_participant_core::step::{Attempt, Durability, LockWait, Step};
use txn_server::failpoint;
use txn_storage::Ticket;
use txn_types::store::{Store, StoreError, WriteBatch, WriteOp};
use txn_types::types::TxnId;

use crate::error::ParticipantError;
use crate::node::Participant;

/// Crash points around the durable wait of one step, for the answers they are named after
/// (`on`: a YES vote, an applied commit), not for every answer the same call can give.
pub(crate) struct CrashPoints<A> {
    pub(crate) before_durable: Option<&'static str>,
    pub(crate) after_durable: Option<&'static str>,
    pub(crate) on: fn(&A) -> bool,
}

impl<A> Default for CrashPoints<A> {
    fn default() -> Self {
        Self {
            before_durable: None,
            after_durable: None,
            on: |_| false,
        }
    }
}

/// How long a patient step's answer (a commit's ack) waits for another writer's sync to cover
/// its write before it asks for a sync of its own. Under load a sync comes every millisecond
/// or two; at one client the next txn's Prepare comes within about one round trip. Nobody
/// waits on the answer urgently (see `Durability::Patient`), so a few milliseconds when idle
/// cost only the coordinator's bookkeeping; the sync they spare would otherwise run while the
/// next YES vote waits behind it.
pub const COMMIT_ACK_PATIENCE: Duration = Duration::from_millis(5);

/// A step whose write is applied; what is left is waiting and answering.
pub(crate) struct Applied<A> {
    pub(crate) wait_for: Option<Ticket>,
    /// Whether the wait may ride on other writers' syncs (see [`COMMIT_ACK_PATIENCE`]).
    pub(crate) patient: bool,
    pub(crate) released: bool,
    pub(crate) answer: A,
}

impl Participant {
    /// Applies a step's write; the caller holds the core's lock (`core`). A step that
    /// appended events is noted for the feed, which sends them once they are durable.
    pub(crate) fn apply<A>(
        &self,
        core: &ParticipantCore,
        step: Step<A>,
    ) -> Result<Applied<A>, ParticipantError> {
        let written = if step.write.is_empty() {
            None
        } else {
            let data = writes_data(&step.write);
            let ticket = self.check(self.gc.write_lazy(step.write))?;
            if data {
                *self.last_data_write.lock().expect("last data write") = Some(ticket);
            }
            Some(ticket)
        };
        let head = core.outbox().head();
        if let Some(ticket) = written
            && head > self.feed.applied_head()
        {
            debug_assert!(
                step.durability.waits(),
                "an event rides only in a step that waits for durability"
            );
            self.feed.note_applied(ticket, head);
        }
        // Everything applied so far: a step with no write of its own answers on the strength
        // of earlier ones (a duplicate, a status).
        let wait_for = step
            .durability
            .waits()
            .then(|| written.unwrap_or_else(|| self.gc.current()));
        Ok(Applied {
            wait_for,
            patient: step.durability == Durability::Patient,
            released: step.released,
            answer: step.answer,
        })
    }

    /// Wakes whoever waits for locks, waits for durability, and returns the answer.
    async fn finish<A>(
        &self,
        applied: Applied<A>,
        crash: CrashPoints<A>,
    ) -> Result<A, ParticipantError> {
        let mut answers = self.finish_group(vec![applied], crash).await?;
        Ok(answers.pop().expect("one answer per step"))
    }

    /// [`Participant::finish`] for several steps applied together: one wake-up of the lock
    /// waiters, one durable wait covering every write (patient only if every step is), and the
    /// crash points armed if any answer is one they name.
    async fn finish_group<A>(
        &self,
        group: Vec<Applied<A>>,
        crash: CrashPoints<A>,
    ) -> Result<Vec<A>, ParticipantError> {
        if group.iter().any(|a| a.released) {
            self.released.notify_waiters();
        }
        if let Some(ticket) = group.iter().filter_map(|a| a.wait_for).max() {
            let patient = group.iter().all(|a| a.patient || a.wait_for.is_none());
            let armed = group.iter().any(|a| (crash.on)(&a.answer));
            if armed {
                crash.before_durable.map(failpoint::hit);
            }
            let durable = if patient {
                self.gc.wait_patiently(ticket, COMMIT_ACK_PATIENCE).await
            } else {
                self.gc.wait(ticket).await
            };
            self.check(durable)?;
            self.feed.note_durable(ticket);
            if armed {
                crash.after_durable.map(failpoint::hit);
            }
        }
        Ok(group.into_iter().map(|a| a.answer).collect())
    }

    /// Several requests at once, under one hold of the core's lock: each is tried in turn;
    /// those that are ready are applied, and answered together after one durable wait. Those
    /// blocked by locks go to `blocked` at once, before any wait, which must hand each to
    /// [`Participant::run_unblocked`]: this try has taken their place in the lock queue, and
    /// only that (or its drop guard) gives the place up.
    pub(crate) async fn run_group<R, A>(
        &self,
        requests: Vec<R>,
        crash: CrashPoints<A>,
        mut attempt: impl FnMut(
            &R,
            &mut ParticipantCore,
            &dyn Store,
        ) -> Result<Attempt<Step<A>>, StoreError>,
        blocked: impl FnOnce(Vec<R>),
    ) -> Result<Vec<(R, A)>, ParticipantError> {
        let mut ready = Vec::new();
        let mut applied = Vec::new();
        let mut waiting = Vec::new();
        let tried = {
            let mut core = self.core();
            requests.into_iter().try_for_each(|r| {
                match self.check(attempt(&r, &mut core, self.store()))? {
                    Attempt::Ready(step) => {
                        applied.push(self.apply(&core, step)?);
                        ready.push(r);
                    }
                    Attempt::Blocked { .. } => waiting.push(r),
                }
                Ok::<_, ParticipantError>(())
            })
        };
        // Even after an error: the blocked ones hold places in the lock queue.
        blocked(waiting);
        tried?;
        let answers = self.finish_group(applied, crash).await?;
        Ok(ready.into_iter().zip(answers).collect())
    }

    /// One step with no lock wait: computed and applied under the core's lock, then finished.
    pub(crate) async fn run<A>(
        &self,
        crash: CrashPoints<A>,
        step: impl FnOnce(&mut ParticipantCore, &dyn Store) -> Result<Step<A>, StoreError>,
    ) -> Result<A, ParticipantError> {
        let applied = {
            let mut core = self.core();
            let step = self.check(step(&mut core, self.store()))?;
            self.apply(&core, step)?
        };
        self.finish(applied, crash).await
    }

    /// A request that may meet prepared txns' locks: tries `attempt` until it is not blocked,
    /// waiting for lock releases up to the wait its blocker allows (the lock wait, or the
    /// shorter reader yield for a write queued behind a reader); then `wait_over` (a protocol
    /// rule of the core, or a busy error) says what the request gets, given how long it
    /// waited. `wait_over` returning None means "look again" (the outcome changed meanwhile).
    /// However this ends, even when the caller goes away mid-wait, `txn` leaves the lock
    /// queue, so a cancelled request never holds up those behind it.
    pub(crate) async fn run_unblocked<A>(
        &self,
        txn: &TxnId,
        crash: CrashPoints<A>,
        mut attempt: impl FnMut(
            &mut ParticipantCore,
            &dyn Store,
        ) -> Result<Attempt<Step<A>>, StoreError>,
        mut wait_over: impl FnMut(
            &mut ParticipantCore,
            &dyn Store,
            &TxnId,
            u64,
        ) -> Result<Option<Step<A>>, ParticipantError>,
    ) -> Result<A, ParticipantError> {
        let _queued = LeavesQueue { node: self, txn };
        let started = tokio::time::Instant::now();
        loop {
            // Register for the wake-up before looking, so a release between the look and the
            // wait is not missed.
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let applied = {
                let mut core = self.core();
                match self.check(attempt(&mut core, self.store()))? {
                    Attempt::Ready(step) => Ok(self.apply(&core, step)?),
                    Attempt::Blocked { holder, wait } => Err((holder, wait)),
                }
            };
            let (holder, wait) = match applied {
                Ok(applied) => return self.finish(applied, crash).await,
                Err(blocked) => blocked,
            };
            let bound = match wait {
                LockWait::Full => self.config.lock_wait,
                LockWait::Reader => self.config.reader_wait,
                LockWait::BehindReader => self.config.reader_yield.min(self.config.lock_wait),
                LockWait::None => Duration::ZERO,
            };
            if tokio::time::timeout_at(started + bound, released)
                .await
                .is_ok()
            {
                continue;
            }
            let waited_ms = started.elapsed().as_millis() as u64;
            let applied = {
                let mut core = self.core();
                match wait_over(&mut core, self.store(), &holder, waited_ms)? {
                    Some(step) => {
                        let step = core.leave_lock_queue(txn, step);
                        self.apply(&core, step)?
                    }
                    None => continue,
                }
            };
            return self.finish(applied, crash).await;
        }
    }
}

/// Whether `batch` changes committed data, which a Read may return.
fn writes_data(batch: &WriteBatch) -> bool {
    batch.ops.iter().any(|op| match op {
        WriteOp::Put(k, _) | WriteOp::Delete(k) => k.starts_with(DATA_PREFIX),
    })
}

/// Takes a request's txn out of the lock queue when the request ends, however it ends: a
/// caller that goes away drops the wait mid-way, and its place must not block the queue.
struct LeavesQueue<'a> {
    node: &'a Participant,
    txn: &'a TxnId,
}

impl Drop for LeavesQueue<'_> {
    fn drop(&mut self) {
        // Not through `core()`: a poisoned lock must not turn a drop into a second panic.
        let left = match self.node.core.lock() {
            Ok(mut core) => core.leave_lock_queue(self.txn, Step::reply(())).released,
            Err(_) => false,
        };
        if left {
            self.node.released.notify_waiters();
        }
    }
}

/// A saga step still blocked when its lock wait is over fails with a retryable error: the
/// orchestrator retries it within the saga's deadline.
pub(crate) fn busy<A>(
    _: &mut ParticipantCore,
    _: &dyn Store,
    holder: &TxnId,
    _waited_ms: u64,
) -> Result<Option<Step<A>>, ParticipantError> {
    Err(ParticipantError::Busy {
        holder: holder.clone(),
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use txn_participant_core::core::PrepareRequest;
    use txn_types::store::MemStore;
    use txn_types::types::{Op, ParticipantId, TxnId, Vote};

    use crate::node::{NodeConfig, Participant};

    fn txn(s: &str) -> TxnId {
        TxnId::parse("t", s).unwrap()
    }

    fn prepare(t: &str, ops: Vec<Op>) -> PrepareRequest {
        PrepareRequest {
            txn: txn(t),
            coordinator_epoch: 1,
            participants: vec![ParticipantId::parse("p", "p1").unwrap()],
            writers: Vec::new(),
            read_only: ops.iter().all(|op| !op.writes()),
            commit_point: Default::default(),
            ops,
        }
    }

    fn write(key: &str) -> Op {
        Op::Put {
            key: key.into(),
            value: b"1".to_vec(),
        }
    }

    fn read(key: &str) -> Op {
        Op::Read { key: key.into() }
    }

    fn node(config: NodeConfig) -> Arc<Participant> {
        Participant::open(Arc::new(MemStore::new()), config).unwrap()
    }

    /// Waits until `n` requests are queued for locks (by yielding to them, not by sleeping).
    async fn queued(node: &Participant, n: usize) {
        while node.core().lock_waiters() != n {
            tokio::task::yield_now().await;
        }
    }

    /// A Prepare whose caller goes away while it waits for locks leaves the queue: the writer
    /// behind it is not held up by a reader that is no longer there.
    #[tokio::test]
    async fn a_cancelled_wait_leaves_the_queue() {
        let p = node(NodeConfig {
            lock_wait: Duration::from_secs(60),
            reader_wait: Duration::from_secs(60),
            reader_yield: Duration::from_secs(60),
            ..NodeConfig::default()
        });
        let vote = p.prepare(prepare("w1", vec![write("a")])).await.unwrap();
        assert!(matches!(vote, Vote::Yes { .. }));
        let reader = tokio::spawn({
            let p = p.clone();
            async move { p.prepare(prepare("r", vec![read("a"), read("b")])).await }
        });
        queued(&p, 1).await;
        let writer = tokio::spawn({
            let p = p.clone();
            async move { p.prepare(prepare("w2", vec![write("b")])).await }
        });
        queued(&p, 2).await;
        reader.abort();
        assert!(reader.await.unwrap_err().is_cancelled());
        // w2 was queued behind the reader only: with the reader gone it is granted at once.
        let vote = writer.await.unwrap().unwrap();
        assert!(matches!(vote, Vote::Yes { .. }), "{vote:?}");
        assert_eq!(p.core().lock_waiters(), 0);
    }

    /// A write queued behind a reader gives way after the reader yield, not the lock wait,
    /// and its NO names the reader.
    #[tokio::test(start_paused = true)]
    async fn a_writer_behind_a_reader_gives_way_after_the_reader_yield() {
        let p = node(NodeConfig {
            lock_wait: Duration::from_secs(3600),
            reader_yield: Duration::from_millis(30),
            ..NodeConfig::default()
        });
        let vote = p.prepare(prepare("r", vec![read("a")])).await.unwrap();
        assert!(matches!(vote, Vote::Yes { .. }));
        let started = tokio::time::Instant::now();
        let Vote::No { reason } = p.prepare(prepare("w", vec![write("a")])).await.unwrap() else {
            panic!("a writer behind a reader that stays gives way");
        };
        assert!(reason.contains("lock conflict with txn r"), "{reason}");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(30) && waited < Duration::from_secs(3600),
            "waited {waited:?}"
        );
        assert_eq!(p.core().lock_waiters(), 0);
    }
}
