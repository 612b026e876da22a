//! How the participant driver carries out a core's [`Step`]: the only place where a write is
//! applied, durability is waited for, and lock waiters are woken. Every protocol entry point
//! of [`Participant`] goes through [`Participant::run`] or [`Participant::run_unblocked`], so
//! none of them can answer before the durability its step asks for.

use txn_participant_core::core::ParticipantCore;
use txn_participant_core::step::{Attempt, Durability, Step};
use txn_server::failpoint;
use txn_storage::Ticket;
use txn_types::store::{Store, StoreError};
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

/// A step whose write is applied; what is left is waiting and answering.
struct Applied<A> {
    wait_for: Option<Ticket>,
    released: bool,
    answer: A,
}

impl Participant {
    /// Applies a step's write; the caller holds the core's lock.
    fn apply<A>(&self, step: Step<A>) -> Result<Applied<A>, ParticipantError> {
        let written = if step.write.is_empty() {
            None
        } else {
            Some(self.check(self.gc.write_lazy(step.write))?)
        };
        let wait_for = match step.durability {
            Durability::Lazy => None,
            // Everything applied so far: a step with no write of its own answers on the
            // strength of earlier ones (a duplicate, a status).
            Durability::Forced => Some(written.unwrap_or_else(|| self.gc.current())),
        };
        Ok(Applied {
            wait_for,
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
        if applied.released {
            self.released.notify_waiters();
        }
        if let Some(ticket) = applied.wait_for {
            let armed = (crash.on)(&applied.answer);
            if armed {
                crash.before_durable.map(failpoint::hit);
            }
            self.check(self.gc.wait(ticket).await)?;
            if armed {
                crash.after_durable.map(failpoint::hit);
            }
        }
        Ok(applied.answer)
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
            self.apply(step)?
        };
        self.finish(applied, crash).await
    }

    /// A request that may meet prepared txns' locks: tries `attempt` until it is not blocked,
    /// waiting for lock releases up to the lock wait; then `wait_over` (a protocol rule of the
    /// core, or a busy error) says what the request gets. `wait_over` returning None means
    /// "look again" (the outcome changed meanwhile).
    pub(crate) async fn run_unblocked<A>(
        &self,
        crash: CrashPoints<A>,
        mut attempt: impl FnMut(
            &mut ParticipantCore,
            &dyn Store,
        ) -> Result<Attempt<Step<A>>, StoreError>,
        mut wait_over: impl FnMut(
            &mut ParticipantCore,
            &dyn Store,
            &TxnId,
        ) -> Result<Option<Step<A>>, ParticipantError>,
    ) -> Result<A, ParticipantError> {
        let deadline = tokio::time::Instant::now() + self.config.lock_wait;
        loop {
            // Register for the wake-up before looking, so a release between the look and the
            // wait is not missed.
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            let applied = {
                let mut core = self.core();
                match self.check(attempt(&mut core, self.store()))? {
                    Attempt::Ready(step) => Ok(self.apply(step)?),
                    Attempt::Blocked { holder } => Err(holder),
                }
            };
            let holder = match applied {
                Ok(applied) => return self.finish(applied, crash).await,
                Err(holder) => holder,
            };
            if tokio::time::timeout_at(deadline, released).await.is_ok() {
                continue;
            }
            let applied = {
                let mut core = self.core();
                match wait_over(&mut core, self.store(), &holder)? {
                    Some(step) => self.apply(step)?,
                    None => continue,
                }
            };
            return self.finish(applied, crash).await;
        }
    }
}

/// A saga step still blocked when its lock wait is over fails with a retryable error: the
/// orchestrator retries it within the saga's deadline.
pub(crate) fn busy<A>(
    _: &mut ParticipantCore,
    _: &dyn Store,
    holder: &TxnId,
) -> Result<Option<Step<A>>, ParticipantError> {
    Err(ParticipantError::Busy {
        holder: holder.clone(),
    })
}
