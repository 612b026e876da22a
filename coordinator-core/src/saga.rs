//! A saga's orchestration as a state machine with no I/O, over its durable log record.
//!
//! Forward: steps run in order; each success moves `next_step` on. A business failure (the
//! participant answered FAILED) starts compensation from the step before the failed one; a
//! step whose outcome is unknown when the deadline passes, or that was refused, is compensated
//! too (a null compensation if it never ran). Compensation runs in reverse order and is retried
//! until it succeeds; after its retry budget the saga is parked, never dropped.
//!
//! The driver makes the record durable after every transition, before the next call, so a
//! restarted coordinator resumes exactly where the log says.

use txn_types::rec;
use txn_types::rec::{SagaRecord, SagaState};
use txn_types::record::CorruptRecord;
use txn_types::types::TxnId;

pub const SAGA_PREFIX: &[u8] = b"s/";

pub fn saga_key(id: &TxnId) -> Vec<u8> {
    [SAGA_PREFIX, id.as_str().as_bytes()].concat()
}

/// What the driver must do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Execute(u32),
    Compensate(u32),
    /// Every step executed.
    Completed,
    /// Every executed step was undone.
    Compensated,
    /// Compensation is out of retries: waits for an operator's retry.
    Parked,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Saga {
    rec: SagaRecord,
}

impl Saga {
    pub fn new(
        id: &TxnId,
        branches: Vec<rec::Branch>,
        deadline_unix_ms: u64,
        now_unix_ms: u64,
    ) -> Self {
        Self {
            rec: SagaRecord {
                saga_id: id.as_str().to_owned(),
                branches,
                state: SagaState::Running as i32,
                next_step: 0,
                failed_step: None,
                reason: String::new(),
                deadline_unix_ms,
                created_at_unix_ms: now_unix_ms,
                updated_at_unix_ms: now_unix_ms,
                compensation_attempts: 0,
                last_error: String::new(),
                owner_epoch: 0,
                client_txn_id: String::new(),
            },
        }
    }

    /// Rebuilds a saga from its log record; a record that breaks the saga's own rules is
    /// corruption.
    pub fn from_record(key: &[u8], rec: SagaRecord) -> Result<Self, CorruptRecord> {
        let corrupt = |problem: String| CorruptRecord {
            key: String::from_utf8_lossy(key).into_owned(),
            problem,
        };
        let state = SagaState::try_from(rec.state)
            .ok()
            .filter(|s| *s != SagaState::Unspecified)
            .ok_or_else(|| corrupt(format!("saga state {} is unknown", rec.state)))?;
        if rec.next_step as usize > rec.branches.len() {
            return Err(corrupt(format!(
                "next_step {} is beyond its {} steps",
                rec.next_step,
                rec.branches.len()
            )));
        }
        if state == SagaState::Running && rec.branches.is_empty() {
            return Err(corrupt("a running saga without steps".into()));
        }
        Ok(Self { rec })
    }

    pub fn id(&self) -> &str {
        &self.rec.saga_id
    }

    pub fn record(&self) -> &SagaRecord {
        &self.rec
    }

    pub fn state(&self) -> SagaState {
        SagaState::try_from(self.rec.state).unwrap_or(SagaState::Unspecified)
    }

    pub fn steps(&self) -> usize {
        self.rec.branches.len()
    }

    pub fn branch(&self, step: u32) -> &rec::Branch {
        &self.rec.branches[step as usize]
    }

    /// Names the client's idempotency key of the request, so that whoever ends the saga can
    /// record the answer under it.
    pub fn with_client_key(mut self, key: &TxnId) -> Self {
        self.rec.client_txn_id = key.to_string();
        self
    }

    /// Whether the saga has ended (completed or compensated); a parked one has not.
    pub fn ended(&self) -> bool {
        matches!(self.next(), Next::Completed | Next::Compensated)
    }

    /// The epoch of the instance that drives the saga (see [`crate::ha::owner_of`]).
    pub fn owner(&self) -> Option<u64> {
        let id = TxnId::parse("saga_id", &self.rec.saga_id).ok()?;
        crate::ha::owner_of(self.rec.owner_epoch, &id)
    }

    /// Instance `epoch` takes the saga over from an owner that is gone; from its next write
    /// on, the log names the new owner (the takeover itself is guarded, see
    /// [`crate::ha::adoptions`]).
    pub fn adopt(&mut self, epoch: u64, now: u64) {
        self.rec.owner_epoch = epoch;
        self.touch(now);
    }

    pub fn deadline_unix_ms(&self) -> u64 {
        self.rec.deadline_unix_ms
    }

    pub fn next(&self) -> Next {
        match self.state() {
            SagaState::Running if (self.rec.next_step as usize) < self.steps() => {
                Next::Execute(self.rec.next_step)
            }
            SagaState::Running | SagaState::Completed => Next::Completed,
            SagaState::Compensating if self.rec.next_step > 0 => {
                Next::Compensate(self.rec.next_step - 1)
            }
            SagaState::Compensating | SagaState::Compensated => Next::Compensated,
            SagaState::Parked | SagaState::Unspecified => Next::Parked,
        }
    }

    fn touch(&mut self, now: u64) {
        self.rec.updated_at_unix_ms = now;
    }

    /// Step `step` executed.
    pub fn on_executed(&mut self, step: u32, now: u64) {
        if self.next() != Next::Execute(step) {
            return;
        }
        self.rec.next_step = step + 1;
        if self.rec.next_step as usize == self.steps() {
            self.rec.state = SagaState::Completed as i32;
        }
        self.touch(now);
    }

    /// Step `step` failed its checks: nothing applied there, so compensation starts with the
    /// step before it.
    pub fn on_execute_failed(&mut self, step: u32, reason: String, now: u64) {
        if self.next() != Next::Execute(step) {
            return;
        }
        self.start_compensation(step, step, reason, now);
    }

    /// Step `step` may or may not have run (deadline passed, or the participant refused it):
    /// it is compensated too, which is a null compensation if it never ran.
    pub fn on_execute_abandoned(&mut self, step: u32, reason: String, now: u64) {
        if self.next() != Next::Execute(step) {
            return;
        }
        self.start_compensation(step, step + 1, reason, now);
    }

    fn start_compensation(&mut self, failed: u32, from: u32, reason: String, now: u64) {
        self.rec.state = if from == 0 {
            SagaState::Compensated as i32
        } else {
            SagaState::Compensating as i32
        };
        self.rec.next_step = from;
        self.rec.failed_step = Some(failed);
        self.rec.reason = reason;
        self.touch(now);
    }

    /// Step `step` was compensated.
    pub fn on_compensated(&mut self, step: u32, now: u64) {
        if self.next() != Next::Compensate(step) {
            return;
        }
        self.rec.next_step = step;
        self.rec.compensation_attempts = 0;
        self.rec.last_error.clear();
        if step == 0 {
            self.rec.state = SagaState::Compensated as i32;
        }
        self.touch(now);
    }

    /// A Compensate call failed. Returns true when the saga is now parked (out of budget).
    pub fn on_compensate_failed(&mut self, error: String, budget: u32, now: u64) -> bool {
        if !matches!(self.next(), Next::Compensate(_)) {
            return false;
        }
        self.rec.compensation_attempts += 1;
        self.rec.last_error = error;
        self.touch(now);
        if self.rec.compensation_attempts >= budget {
            self.rec.state = SagaState::Parked as i32;
            return true;
        }
        false
    }

    /// An operator asked to retry a parked saga: compensation resumes with a fresh budget.
    pub fn retry(&mut self, now: u64) -> bool {
        if self.state() != SagaState::Parked {
            return false;
        }
        self.rec.state = SagaState::Compensating as i32;
        self.rec.compensation_attempts = 0;
        self.touch(now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn saga(n: usize) -> Saga {
        let branches = (0..n)
            .map(|i| rec::Branch {
                participant: format!("p{}", i + 1),
                ops: vec![],
            })
            .collect();
        Saga::new(&TxnId::generated(1, 1), branches, 0, 0)
    }

    #[test]
    fn all_steps_succeed() {
        let mut s = saga(2);
        assert_eq!(s.next(), Next::Execute(0));
        s.on_executed(0, 1);
        s.on_executed(0, 1); // a duplicate report changes nothing
        assert_eq!(s.next(), Next::Execute(1));
        s.on_executed(1, 2);
        assert_eq!(s.next(), Next::Completed);
    }

    #[test]
    fn business_failure_compensates_earlier_steps_in_reverse() {
        let mut s = saga(3);
        s.on_executed(0, 0);
        s.on_executed(1, 0);
        s.on_execute_failed(2, "below the minimum".into(), 0);
        assert_eq!(s.next(), Next::Compensate(1));
        s.on_compensated(1, 0);
        assert_eq!(s.next(), Next::Compensate(0));
        s.on_compensated(0, 0);
        assert_eq!(s.next(), Next::Compensated);
        assert_eq!(s.record().failed_step, Some(2));
    }

    #[test]
    fn first_step_failing_needs_no_compensation() {
        let mut s = saga(2);
        s.on_execute_failed(0, "no".into(), 0);
        assert_eq!(s.next(), Next::Compensated);
    }

    #[test]
    fn abandoned_step_is_compensated_itself() {
        let mut s = saga(2);
        s.on_executed(0, 0);
        s.on_execute_abandoned(1, "deadline".into(), 0);
        assert_eq!(s.next(), Next::Compensate(1));
    }

    #[test]
    fn compensation_parks_after_its_budget_and_resumes_on_retry() {
        let mut s = saga(1);
        s.on_execute_abandoned(0, "deadline".into(), 0);
        assert!(!s.on_compensate_failed("down".into(), 3, 0));
        assert!(!s.on_compensate_failed("down".into(), 3, 0));
        assert!(s.on_compensate_failed("down".into(), 3, 0));
        assert_eq!(s.next(), Next::Parked);
        assert!(s.retry(0));
        assert_eq!(s.next(), Next::Compensate(0));
        s.on_compensated(0, 0);
        assert_eq!(s.next(), Next::Compensated);
    }

    #[test]
    fn corrupt_records_are_refused() {
        let mut rec = saga(1).record().clone();
        rec.next_step = 5;
        assert!(Saga::from_record(b"s/x", rec).is_err());
        let mut rec = saga(1).record().clone();
        rec.state = 99;
        assert!(Saga::from_record(b"s/x", rec).is_err());
        let mut rec = saga(1).record().clone();
        rec.state = SagaState::Unspecified as i32;
        assert!(Saga::from_record(b"s/x", rec).is_err());
        // next_step may reach the number of steps (every step done), not pass it.
        let mut rec = saga(2).record().clone();
        rec.next_step = 2;
        assert!(Saga::from_record(b"s/x", rec).is_ok());
        let mut rec = saga(0).record().clone();
        assert!(
            Saga::from_record(b"s/x", rec.clone()).is_err(),
            "running without steps"
        );
        rec.state = SagaState::Completed as i32;
        assert!(Saga::from_record(b"s/x", rec).is_ok());
        // A sound record comes back as it was written.
        let s = saga(2);
        let back = Saga::from_record(b"s/x", s.record().clone()).unwrap();
        assert_eq!(
            (back.id(), back.deadline_unix_ms()),
            (s.id(), s.deadline_unix_ms())
        );
    }

    #[test]
    fn an_adopted_saga_names_its_new_owner() {
        let mut s = saga(2);
        assert_eq!(s.owner(), Some(1), "the epoch of its id");
        s.adopt(4, 9);
        assert_eq!(s.owner(), Some(4));
        assert_eq!(s.record().updated_at_unix_ms, 9);
        let back = Saga::from_record(b"s/x", s.record().clone()).unwrap();
        assert_eq!(back.owner(), Some(4));
    }

    #[test]
    fn saga_keys_are_per_saga_and_transitions_are_stamped() {
        assert_ne!(
            saga_key(&TxnId::generated(1, 1)),
            saga_key(&TxnId::generated(1, 2))
        );
        let mut s = saga(2);
        s.on_executed(0, 42);
        assert_eq!(s.record().updated_at_unix_ms, 42);
        assert_eq!(s.branch(1).participant, "p2");
    }
}
