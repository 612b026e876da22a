//! Phase one at the participant: a Prepare on its own, or many at once (the coordinator's
//! PrepareBatch). Both run the core's `prepare` and answer exactly alike; a batch only shares
//! the work that can be shared: one hold of the core's lock for every Prepare that needs no
//! lock wait, one durable wait for all their records, one lock hold to confirm their votes.
//! A Prepare of a batch that meets a lock waits on its own, so it holds up no other.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::{Instrument, Span, debug, info_span};
use txn_participant_core::core::{PrepareAnswer, PrepareRequest};
use txn_types::types::{TxnId, Vote};
use txn_types::unix_ms;

use crate::error::ParticipantError;
use crate::exec::CrashPoints;
use crate::node::{Participant, failpoints};

/// One Prepare of a batch, with how long it may take from when the batch arrived.
#[derive(Debug)]
pub struct BatchedPrepare {
    pub req: PrepareRequest,
    pub timeout: Option<Duration>,
}

/// The answer to one Prepare of a batch.
pub type BatchedVote = (TxnId, Result<Vote, ParticipantError>);

fn crash_points() -> CrashPoints<PrepareAnswer> {
    CrashPoints {
        before_durable: Some(failpoints::BEFORE_PREPARE_DURABLE),
        after_durable: Some(failpoints::AFTER_PREPARE_DURABLE),
        on: |a| matches!(a, PrepareAnswer::Yes { .. }),
    }
}

impl Participant {
    pub async fn prepare(&self, req: PrepareRequest) -> Result<Vote, ParticipantError> {
        let span = info_span!("prepare", txn = %req.txn);
        self.refuse_if_disk_degraded()?;
        let started = Instant::now();
        let answer = self.prepare_waiting(&req).instrument(span.clone()).await;
        let (_, vote) = self
            .votes(started, vec![(req.txn, answer, span)])
            .pop()
            .expect("one vote per answer");
        vote
    }

    /// Many Prepares at once; each vote goes to `out` as soon as it is ready. An error of the
    /// whole batch (a refusal before any was tried, a storage failure) is returned instead.
    pub async fn prepare_batch(
        self: &Arc<Self>,
        batch: Vec<BatchedPrepare>,
        out: mpsc::Sender<BatchedVote>,
    ) -> Result<(), ParticipantError> {
        self.refuse_if_disk_degraded()?;
        let started = Instant::now();
        let now = unix_ms();
        let ready = self
            .run_group(
                batch,
                crash_points(),
                |p, core, store| core.prepare(&p.req, store, now),
                |blocked| {
                    for p in blocked {
                        self.spawn_waiting(p, started, out.clone());
                    }
                },
            )
            .await?;
        let answers = ready
            .into_iter()
            .map(|(p, answer)| {
                let span = info_span!("prepare", txn = %p.req.txn);
                (p.req.txn, Ok(answer), span)
            })
            .collect();
        for vote in self.votes(started, answers) {
            if out.send(vote).await.is_err() {
                // The caller went away; the votes it would have got do not matter any more.
                break;
            }
        }
        Ok(())
    }

    /// A Prepare of a batch that met a lock: it waits on its own, within its timeout.
    fn spawn_waiting(
        self: &Arc<Self>,
        p: BatchedPrepare,
        started: Instant,
        out: mpsc::Sender<BatchedVote>,
    ) {
        let node = self.clone();
        let span = info_span!("prepare", txn = %p.req.txn);
        tokio::spawn(
            async move {
                let waiting = node.prepare_waiting(&p.req);
                let answer = match p.timeout {
                    Some(t) => {
                        match tokio::time::timeout(t.saturating_sub(started.elapsed()), waiting)
                            .await
                        {
                            Ok(answer) => answer,
                            Err(_) => Err(ParticipantError::DeadlineExceeded {
                                waited_ms: started.elapsed().as_millis() as u64,
                            }),
                        }
                    }
                    None => waiting.await,
                };
                let vote = node.votes(started, vec![(p.req.txn, answer, Span::current())]);
                for v in vote {
                    let _ = out.send(v).await;
                }
            }
            .instrument(span),
        );
    }

    /// Runs one Prepare to its answer, waiting for locks as long as its blocker allows.
    async fn prepare_waiting(
        &self,
        req: &PrepareRequest,
    ) -> Result<PrepareAnswer, ParticipantError> {
        self.run_unblocked(
            &req.txn,
            crash_points(),
            |core, store| core.prepare(req, store, unix_ms()),
            |core, _, holder, waited_ms| {
                Ok(Some(core.prepare_lock_wait_over(
                    req,
                    holder,
                    waited_ms,
                    unix_ms(),
                )))
            },
        )
        .await
    }

    /// Turns answers into the votes sent, under one hold of the core's lock: a YES for a txn
    /// aborted meanwhile is withdrawn (the core's `confirm_vote`); counts and logs each.
    fn votes(
        &self,
        started: Instant,
        answers: Vec<(TxnId, Result<PrepareAnswer, ParticipantError>, Span)>,
    ) -> Vec<BatchedVote> {
        let m = txn_metrics::metrics();
        let elapsed = started.elapsed().as_secs_f64();
        let core = self.core();
        answers
            .into_iter()
            .map(|(txn, answer, span)| {
                m.prepare_seconds.observe(elapsed);
                let vote = answer.and_then(|answer| {
                    // Refused at a bound: RESOURCE_EXHAUSTED, nothing was prepared.
                    if let PrepareAnswer::Overloaded(overload) = answer {
                        return Err(self.overloaded(overload));
                    }
                    // A NO of its own counts as an abort here; a YES withdrawn because the txn
                    // was aborted meanwhile was counted by that abort.
                    if matches!(answer, PrepareAnswer::No { .. }) {
                        self.counters.aborted.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(core.confirm_vote(&txn, answer))
                });
                span.in_scope(|| match &vote {
                    Ok(Vote::Yes { .. }) => debug!("voted YES"),
                    Ok(Vote::No { reason }) => debug!(%reason, "voted NO"),
                    Err(e) => debug!(error = %e, "no vote"),
                });
                (txn, vote)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::mpsc;
    use txn_participant_core::core::PrepareRequest;
    use txn_types::store::MemStore;
    use txn_types::types::{Op, ParticipantId, TxnId, Vote};

    use super::{BatchedPrepare, BatchedVote};
    use crate::error::ParticipantError;
    use crate::node::{NodeConfig, Participant};

    fn txn(s: &str) -> TxnId {
        TxnId::parse("t", s).unwrap()
    }

    fn put(t: &str, key: &str, timeout: Option<Duration>) -> BatchedPrepare {
        BatchedPrepare {
            req: PrepareRequest {
                txn: txn(t),
                coordinator_epoch: 1,
                participants: vec![ParticipantId::parse("p", "p1").unwrap()],
                writers: Vec::new(),
                read_only: false,
                commit_point: Default::default(),
                ops: vec![Op::Put {
                    key: key.into(),
                    value: b"1".to_vec(),
                }],
            },
            timeout,
        }
    }

    fn node() -> Arc<Participant> {
        Participant::open(
            Arc::new(MemStore::new()),
            NodeConfig {
                lock_wait: Duration::from_secs(60),
                ..NodeConfig::default()
            },
        )
        .unwrap()
    }

    async fn next(
        rx: &mut mpsc::Receiver<BatchedVote>,
    ) -> (String, Result<Vote, ParticipantError>) {
        let (t, v) = rx.recv().await.expect("a vote");
        (t.as_str().to_owned(), v)
    }

    /// The Prepares of a batch that meet no lock are answered at once; one that waits for a
    /// lock is answered once the lock comes free, and held up no other.
    #[tokio::test]
    async fn a_blocked_prepare_is_answered_later_and_holds_up_no_other() {
        let p = node();
        let holder = p.prepare(put("h", "a", None).req).await.unwrap();
        assert!(matches!(holder, Vote::Yes { .. }));
        let (tx, mut rx) = mpsc::channel(8);
        let batch = vec![
            put("1", "x", None),
            put("2", "a", None),
            put("3", "y", None),
        ];
        p.prepare_batch(batch, tx).await.unwrap();
        let mut first: Vec<String> = Vec::new();
        for _ in 0..2 {
            let (t, v) = next(&mut rx).await;
            assert!(matches!(v, Ok(Vote::Yes { .. })), "{t}: {v:?}");
            first.push(t);
        }
        first.sort();
        assert_eq!(first, ["1", "3"].map(String::from));
        assert_eq!(p.core().lock_waiters(), 1, "txn 2 waits for h's lock");
        p.commit(&txn("h")).await.unwrap();
        let (t, v) = next(&mut rx).await;
        assert_eq!(t, "2");
        assert!(matches!(v, Ok(Vote::Yes { .. })), "{v:?}");
        assert!(
            rx.recv().await.is_none(),
            "every vote sent, the stream ends"
        );
    }

    /// A Prepare of a batch still waiting when its own timeout runs out gets DEADLINE_EXCEEDED
    /// and leaves the lock queue.
    #[tokio::test]
    async fn a_batched_prepare_past_its_timeout_gets_deadline_exceeded() {
        let p = node();
        let holder = p.prepare(put("h", "a", None).req).await.unwrap();
        assert!(matches!(holder, Vote::Yes { .. }));
        let (tx, mut rx) = mpsc::channel(8);
        p.prepare_batch(vec![put("2", "a", Some(Duration::from_millis(20)))], tx)
            .await
            .unwrap();
        let (t, v) = next(&mut rx).await;
        assert_eq!(t, "2");
        let err = v.unwrap_err();
        assert!(
            matches!(err, ParticipantError::DeadlineExceeded { .. }),
            "{err}"
        );
        assert_eq!(
            tonic::Status::from(err).code(),
            tonic::Code::DeadlineExceeded
        );
        assert_eq!(p.core().lock_waiters(), 0);
    }
}
