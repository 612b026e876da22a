//! Drives sagas: runs each step at its participant, forces the saga log after every
//! transition, compensates in reverse on failure, resumes unfinished sagas after a restart,
//! and parks compensations that keep failing until an operator retries them. The states of
//! unfinished sagas are kept in memory too, so status and metrics never scan the log; what
//! happens after a saga ends is in [`crate::saga_end`].

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use txn_metrics::{OutcomeLabel, ProtocolLabel, RetryKind};
use txn_proto::convert::ToWire;
use txn_types::backoff::Backoff;

use tracing::{Instrument, debug, info, info_span, warn};
use txn_proto::pb::v1 as pb;
use txn_server::failpoint;
use txn_types::rec::{SagaRecord, SagaState};
use txn_types::record;
use txn_types::store::WriteBatch;
use txn_types::types::{KeyValue, ParticipantId, TxnId, TxnRequest};
use txn_types::unix_ms;

use crate::context::Context;
use crate::dedup::{ClientKeys, ClientTag};
use crate::error::CoordError;
use crate::outcome::{TxnOutcome, call_failure, count_txn};
use crate::saga_end::EndNotices;
use txn_coordinator_core::saga::{Next, SAGA_PREFIX, Saga, saga_key};

/// Crash points of the saga orchestrator.
pub mod failpoints {
    /// A step's Execute returned; the saga log does not record it yet.
    pub const AFTER_STEP_EXECUTED: &str = "coordinator::saga_after_step_executed";
    /// The saga log records the step's outcome; the next call is not made yet.
    pub const AFTER_STEP_LOGGED: &str = "coordinator::saga_after_step_logged";
    /// A Compensate returned; the saga log does not record it yet.
    pub const MID_COMPENSATION: &str = "coordinator::saga_mid_compensation";
    pub const ALL: &[&str] = &[AFTER_STEP_EXECUTED, AFTER_STEP_LOGGED, MID_COMPENSATION];
}

/// The forward outcome of one step, once the retries are over.
enum Executed {
    Succeeded(Vec<KeyValue>),
    /// The participant ran the step's checks and they failed: nothing applied.
    Failed(String),
    /// The outcome is unknown (deadline passed) or the step was refused: compensate it too.
    Abandoned(String),
}

/// Every step's participant, in step order: each step's event names them.
fn saga_members(saga: &Saga) -> Vec<String> {
    saga.record()
        .branches
        .iter()
        .map(|b| b.participant.clone())
        .collect()
}

/// Whether a failed call may succeed if sent again.
fn transient(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Unavailable | DeadlineExceeded | Aborted | ResourceExhausted | Unknown | Cancelled
    )
}

/// The saga component: which sagas a task drives right now, and the driving.
pub struct SagaDriver {
    pub(crate) ctx: Arc<Context>,
    /// Sagas a task is driving right now, so a retry never drives one twice.
    active: Mutex<HashSet<TxnId>>,
    /// The state of every unfinished saga in the log (running, compensating, parked):
    /// bounded by the sagas in flight and those parked.
    unfinished: Mutex<HashMap<TxnId, SagaState>>,
    /// The end notices on their way to the participants.
    pub(crate) notices: Arc<EndNotices>,
}

/// How many sagas of the log are in each unfinished state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SagaCounts {
    pub running: u64,
    pub compensating: u64,
    pub parked: u64,
}

impl std::ops::Deref for SagaDriver {
    type Target = Context;

    fn deref(&self) -> &Context {
        &self.ctx
    }
}

impl SagaDriver {
    pub(crate) fn new(ctx: Arc<Context>) -> Self {
        let notices = EndNotices::start(
            ctx.gc.clone(),
            &ctx.participants,
            ctx.config.rpc_timeout,
            ctx.commit_backoff(),
        );
        tokio::spawn(notices.clone().run_rescans());
        Self {
            ctx,
            active: Mutex::new(HashSet::new()),
            unfinished: Mutex::new(HashMap::new()),
            notices,
        }
    }

    /// The unfinished sagas in the log, by state.
    pub fn counts(&self) -> SagaCounts {
        let mut c = SagaCounts::default();
        for state in self.unfinished.lock().expect("unfinished sagas").values() {
            match state {
                SagaState::Running => c.running += 1,
                SagaState::Compensating => c.compensating += 1,
                SagaState::Parked => c.parked += 1,
                _ => {}
            }
        }
        c
    }

    /// Counts `saga`, just taken over from a gone coordinator, among the unfinished ones.
    pub(crate) fn track(&self, id: &TxnId, state: SagaState) {
        self.unfinished
            .lock()
            .expect("unfinished sagas")
            .insert(id.clone(), state);
    }

    /// Keeps the in-memory view in step with a log write of `saga`, and sends the end
    /// notice of a saga that has ended (once the write that records it is durable).
    fn logged(&self, id: &TxnId, saga: &Saga) {
        let mut unfinished = self.unfinished.lock().expect("unfinished sagas");
        if saga.ended() {
            unfinished.remove(id);
            drop(unfinished);
            self.notices.notify(
                id,
                &txn_types::rec::SagaEndNotice {
                    participants: saga.participants(),
                    deadline_unix_ms: saga.deadline_unix_ms(),
                },
            );
        } else {
            unfinished.insert(id.clone(), saga.state());
        }
    }

    /// Sagas running or compensating under a driver now.
    pub fn active(&self) -> usize {
        self.active.lock().expect("active sagas").len()
    }

    /// The retry schedule of one saga's Execute and Compensate calls.
    fn saga_backoff(&self) -> Backoff {
        Backoff::new(self.config.saga_retry_base, self.config.saga_retry_max)
    }

    pub(crate) async fn transact(
        self: &Arc<Self>,
        req: TxnRequest,
        tag: Option<ClientTag>,
    ) -> Result<TxnOutcome, CoordError> {
        let id = self.core().next_id();
        let timeout = req
            .prepare_timeout_ms
            .map(|ms| Duration::from_millis(ms.into()))
            .unwrap_or(self.config.saga_timeout);
        let branches = req
            .branches
            .iter()
            .map(txn_types::rec::Branch::from)
            .collect();
        let now = unix_ms();
        let mut saga = Saga::new(&id, branches, now + timeout.as_millis() as u64, now);
        if let Some(tag) = &tag {
            saga = saga.with_client_key(&tag.id);
        }
        let size = prost::Message::encoded_len(saga.record());
        if size > txn_types::types::MAX_RECORD_BYTES {
            return Err(txn_types::types::InvalidInput::new(
                "branches",
                format!(
                    "the saga's log record would be {size} bytes, the limit is {}",
                    txn_types::types::MAX_RECORD_BYTES
                ),
            )
            .into());
        }
        let span = info_span!("saga", saga = %id);
        async {
            // The saga exists durably before its first step runs, so a crash resumes it; the
            // client key is durable with it, so a retry finds the saga instead of starting
            // another.
            let mut batch = saga.log_write(&id, unix_ms());
            if let Some(tag) = &tag {
                ClientKeys::put_record(&mut batch, tag, &id, pb::Protocol::Saga, None);
            }
            self.check(self.gc.write_durable(batch).await)?;
            self.logged(&id, &saga);
            self.active.lock().expect("active sagas").insert(id.clone());
            let result = self.drive_saga(saga).await;
            self.active.lock().expect("active sagas").remove(&id);
            let (saga, reads) = result?;
            let outcome = self.saga_outcome(&id, &saga, reads);
            self.finish(&saga, tag.as_ref().map(|t| (t, outcome.to_pb())))
                .await?;
            Ok(outcome)
        }
        .instrument(span)
        .await
    }

    fn saga_outcome(&self, id: &TxnId, saga: &Saga, reads: Vec<Vec<KeyValue>>) -> TxnOutcome {
        let rec = saga.record();
        let committed = saga.next() == Next::Completed;
        let mut reason = rec.reason.clone();
        if saga.next() == Next::Parked {
            reason = format!(
                "{reason}; compensation parked after {} failed attempts (last error: {}); retry it with txnctl saga retry {id}",
                rec.compensation_attempts, rec.last_error
            );
        }
        TxnOutcome {
            txn: id.clone(),
            committed,
            accepted: false,
            reason: if committed { String::new() } else { reason },
            failed_branch: rec.failed_step.map(|s| s as usize),
            reads: if committed {
                rec.branches
                    .iter()
                    .zip(reads)
                    .filter_map(|(b, r)| {
                        ParticipantId::parse("participant", &b.participant)
                            .ok()
                            .map(|p| (p, r))
                    })
                    .collect()
            } else {
                Vec::new()
            },
        }
    }

    /// Logs `saga` as it stands; `durable` waits until the write is durable (always so for
    /// the write that ends it, which its end notice and the client's answer wait for).
    pub(crate) async fn persist_saga(&self, saga: &Saga, durable: bool) -> Result<(), CoordError> {
        let id = TxnId::parse("saga_id", saga.id())?;
        let batch = saga.log_write(&id, unix_ms());
        if durable || saga.ended() {
            self.check(self.gc.write_durable(batch).await)?;
        } else {
            self.check(self.gc.write_lazy(batch))?;
        }
        self.logged(&id, saga);
        Ok(())
    }

    /// Runs `saga` until it completes, is compensated, or is parked.
    async fn drive_saga(
        self: &Arc<Self>,
        mut saga: Saga,
    ) -> Result<(Saga, Vec<Vec<KeyValue>>), CoordError> {
        let mut reads = vec![Vec::new(); saga.steps()];
        let mut backoff = self.saga_backoff();
        loop {
            match saga.next() {
                Next::Execute(step) => {
                    let executed = self.execute_step(&saga, step).await;
                    failpoint::hit(failpoints::AFTER_STEP_EXECUTED);
                    let participant = saga.branch(step).participant.clone();
                    match executed {
                        Executed::Succeeded(r) => {
                            reads[step as usize] = r;
                            saga.on_executed(step, unix_ms());
                        }
                        Executed::Failed(reason) => saga.on_execute_failed(
                            step,
                            format!("step {step} at {participant} failed: {reason}"),
                            unix_ms(),
                        ),
                        Executed::Abandoned(reason) => saga.on_execute_abandoned(
                            step,
                            format!("step {step} at {participant} abandoned: {reason}"),
                            unix_ms(),
                        ),
                    }
                    self.persist_saga(&saga, true).await?;
                    failpoint::hit(failpoints::AFTER_STEP_LOGGED);
                }
                Next::Compensate(step) => match self.compensate_step(&saga, step).await {
                    Ok(()) => {
                        failpoint::hit(failpoints::MID_COMPENSATION);
                        saga.on_compensated(step, unix_ms());
                        self.persist_saga(&saga, true).await?;
                        backoff = self.saga_backoff();
                    }
                    Err(error) => {
                        let parked = saga.on_compensate_failed(
                            error.clone(),
                            self.config.compensation_budget,
                            unix_ms(),
                        );
                        self.persist_saga(&saga, parked).await?;
                        if parked {
                            warn!(step, %error, "compensation out of retries: saga parked");
                        } else {
                            debug!(step, %error, "compensation failed; retrying");
                            txn_metrics::retried(RetryKind::SagaCompensate);
                            tokio::time::sleep(backoff.failed(rand::random())).await;
                        }
                    }
                },
                Next::Completed => {
                    self.counters
                        .sagas_completed
                        .fetch_add(1, Ordering::Relaxed);
                    count_txn(ProtocolLabel::Saga, OutcomeLabel::Completed);
                    debug!("saga completed");
                    return Ok((saga, reads));
                }
                Next::Compensated => {
                    self.counters
                        .sagas_compensated
                        .fetch_add(1, Ordering::Relaxed);
                    count_txn(ProtocolLabel::Saga, OutcomeLabel::Compensated);
                    debug!(reason = %saga.record().reason, "saga compensated");
                    return Ok((saga, reads));
                }
                Next::Parked => return Ok((saga, reads)),
            }
        }
    }

    /// Sends Execute until it answers or the saga's deadline passes.
    async fn execute_step(&self, saga: &Saga, step: u32) -> Executed {
        let branch = saga.branch(step);
        let Some(client) = ParticipantId::parse("participant", &branch.participant)
            .ok()
            .and_then(|p| self.participants.get(&p).cloned())
        else {
            return Executed::Abandoned(format!("unknown participant {}", branch.participant));
        };
        let ops: Result<Vec<pb::Op>, _> = branch
            .ops
            .iter()
            .map(|op| txn_types::types::Op::try_from(op.clone()).map(|op| op.to_pb()))
            .collect();
        let ops = match ops {
            Ok(ops) => ops,
            Err(e) => return Executed::Abandoned(format!("the saga log's step is damaged: {e}")),
        };
        let mut backoff = self.saga_backoff();
        let mut last_error = String::from("no attempt made");
        loop {
            let remaining = saga.deadline_unix_ms().saturating_sub(unix_ms());
            if remaining == 0 {
                return Executed::Abandoned(format!("deadline passed; last error: {last_error}"));
            }
            let mut request = txn_server::trace::request(pb::ExecuteRequest {
                saga_id: saga.id().to_owned(),
                step,
                ops: ops.clone(),
                deadline_unix_ms: saga.deadline_unix_ms(),
                participants: saga_members(saga),
            });
            let timeout = self
                .config
                .rpc_timeout
                .min(Duration::from_millis(remaining));
            request.set_timeout(timeout);
            match client.clone().execute(request).await {
                Ok(resp) => {
                    let resp = resp.into_inner();
                    return match pb::StepResult::try_from(resp.result) {
                        Ok(pb::StepResult::Succeeded) => {
                            Executed::Succeeded(resp.reads.into_iter().map(Into::into).collect())
                        }
                        Ok(pb::StepResult::Failed) => Executed::Failed(resp.reason),
                        Ok(pb::StepResult::Refused) => {
                            Executed::Abandoned(format!("refused: {}", resp.reason))
                        }
                        _ => Executed::Abandoned(format!("unknown step result {}", resp.result)),
                    };
                }
                Err(status) if transient(status.code()) => {
                    last_error = call_failure(&branch.participant, &status, timeout);
                    txn_metrics::retried(RetryKind::SagaExecute);
                    let wait = backoff
                        .failed(rand::random())
                        .min(Duration::from_millis(remaining));
                    tokio::time::sleep(wait).await;
                }
                Err(status) => {
                    return Executed::Abandoned(call_failure(
                        &branch.participant,
                        &status,
                        timeout,
                    ));
                }
            }
        }
    }

    async fn compensate_step(&self, saga: &Saga, step: u32) -> Result<(), String> {
        let branch = saga.branch(step);
        let client = ParticipantId::parse("participant", &branch.participant)
            .ok()
            .and_then(|p| self.participants.get(&p).cloned())
            .ok_or_else(|| format!("unknown participant {}", branch.participant))?;
        let mut request = txn_server::trace::request(pb::CompensateRequest {
            saga_id: saga.id().to_owned(),
            step,
            deadline_unix_ms: saga.deadline_unix_ms(),
            participants: saga_members(saga),
        });
        request.set_timeout(self.config.rpc_timeout);
        client
            .clone()
            .compensate(request)
            .await
            .map(|_| ())
            .map_err(|s| call_failure(&branch.participant, &s, self.config.rpc_timeout))
    }

    /// Resumes every saga that was running or compensating when the coordinator stopped, and
    /// sends the end notices not yet acked. Reads only the unfinished sagas (and the pending
    /// notices), never the ended ones kept for the retention. A log of an older version keeps
    /// ended sagas with the unfinished ones: they are moved out once, here.
    pub(crate) async fn resume(self: &Arc<Self>) -> Result<(), CoordError> {
        let mut resumed = 0;
        let mut moved = WriteBatch::default();
        for (key, bytes) in self.check(self.gc.scan_prefix(SAGA_PREFIX).await)? {
            let rec: SagaRecord = self.check(record::decode(&key, &bytes).map_err(Into::into))?;
            let saga = self.check(Saga::from_record(&key, rec).map_err(Into::into))?;
            let id = TxnId::parse("saga_id", saga.id())?;
            if saga.ended() {
                moved.append(saga.log_write(&id, saga.record().updated_at_unix_ms));
                continue;
            }
            self.unfinished
                .lock()
                .expect("unfinished sagas")
                .insert(id, saga.state());
            if matches!(saga.state(), SagaState::Running | SagaState::Compensating) {
                resumed += 1;
                self.spawn_saga(saga)?;
            }
        }
        if !moved.is_empty() {
            info!(
                sagas = moved.ops.len() / 4,
                "moved ended sagas out of the unfinished log"
            );
            self.check(self.gc.write_durable(moved).await)?;
        }
        if resumed > 0 {
            info!(resumed, "resuming unfinished sagas");
        }
        let pending = self.check(self.notices.rescan().await)?;
        if pending > 0 {
            info!(pending, "sending the end notices of ended sagas");
        }
        Ok(())
    }

    pub(crate) fn spawn_saga(self: &Arc<Self>, saga: Saga) -> Result<(), CoordError> {
        let id = TxnId::parse("saga_id", saga.id())?;
        if !self.claim_saga(&id) {
            // Resumed at start: nothing else can be driving it yet.
            return Ok(());
        }
        self.drive_claimed(id, saga);
        Ok(())
    }

    fn claim_saga(&self, id: &TxnId) -> bool {
        self.active.lock().expect("active sagas").insert(id.clone())
    }

    fn release_saga(&self, id: &TxnId) {
        self.active.lock().expect("active sagas").remove(id);
    }

    /// Drives `saga`, whose id the caller has already claimed in `active_sagas`.
    fn drive_claimed(self: &Arc<Self>, id: TxnId, saga: Saga) {
        let node = self.clone();
        let span = info_span!("saga", saga = %id);
        tokio::spawn(
            async move {
                match node.drive_saga(saga).await {
                    Ok((saga, _)) => {
                        if let Err(e) = node.finish(&saga, None).await {
                            warn!(error = %e, "could not record the saga's end");
                        }
                    }
                    Err(e) => warn!(error = %e, "saga stopped"),
                }
                node.release_saga(&id);
            }
            .instrument(span),
        );
    }

    /// An operator's retry of a parked saga: compensation resumes now with a fresh budget.
    pub async fn retry(self: &Arc<Self>, id: &TxnId) -> Result<(), CoordError> {
        let rec = self
            .saga(id)
            .await?
            .ok_or_else(|| CoordError::NotFound(format!("saga_id {id}: no such saga")))?;
        let mut saga = self.check(Saga::from_record(&saga_key(id), rec).map_err(Into::into))?;
        self.owned_here(&saga)?;
        // Claim the saga first: its previous driver may still be finishing (it writes the
        // parked state before it lets go), and two drivers must never run one saga.
        if !self.claim_saga(id) {
            return Err(CoordError::Precondition(format!(
                "saga_id {id}: a driver is still finishing with it; retry in a moment"
            )));
        }
        if !saga.retry(unix_ms()) {
            self.release_saga(id);
            return Err(CoordError::Precondition(format!(
                "saga_id {id}: is {:?}, only a parked saga can be retried",
                saga.state()
            )));
        }
        if let Err(e) = self.persist_saga(&saga, true).await {
            self.release_saga(id);
            return Err(e);
        }
        self.drive_claimed(id.clone(), saga);
        Ok(())
    }
}
