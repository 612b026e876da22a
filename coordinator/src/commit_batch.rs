//! Batches the Commits bound for one participant into CommitBatch calls.
//!
//! Under load many txns commit at once, and each Commit is a round trip plus a durable write at
//! the participant. One task per participant takes every Commit waiting in its queue (up to
//! [`MAX_COMMIT_BATCH`]) and sends them in one call; the participant commits them under one
//! lock and one fsync. A lone Commit goes out at once, so nothing waits for a batch to fill.
//! Up to [`MAX_COMMIT_BATCHES_IN_FLIGHT`] calls are out at once; Commits that come while they
//! are make up the next batch.
//! The retry logic stays in the caller (`drive_commit`): a failed batch fails each of its
//! Commits, and each is retried on its own schedule through the queue again.
//!
//! The same task tells the participant which committed txns have ended, so it can forget
//! their outcomes: the ids ride along with the next batch, or go alone after
//! [`FORGET_LINGER`] if no Commit comes.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot};
use tonic::transport::Channel;
use tracing::{debug, info};
use txn_proto::pb::v1 as pb;
use txn_proto::pb::v1::participant_client::ParticipantClient;
use txn_types::types::{MAX_COMMIT_BATCH, TxnId};

/// Commits waiting for their participant's batch task; a full queue makes `commit` wait.
pub const MAX_COMMIT_QUEUE: usize = 8 * MAX_COMMIT_BATCH;
/// Ended txns waiting to be sent as forgets; beyond it new ones are dropped, and their
/// outcome records stay at the participant (counted in the log, harmless otherwise).
pub const MAX_FORGET_QUEUE: usize = 8 * MAX_COMMIT_BATCH;
/// CommitBatch calls to one participant at once. A participant answers a batch once its commits
/// are durable, riding on other writers' syncs when it can (a commit's ack is patient), so
/// while one batch waits for the disk the next one is already applied and its locks released.
/// Two keep the disk busy; more would only split batches into more calls.
pub const MAX_COMMIT_BATCHES_IN_FLIGHT: usize = 2;
/// How long forgets wait for a Commit batch to ride with before they go out alone.
pub const FORGET_LINGER: Duration = Duration::from_millis(200);

type Waiter = (TxnId, oneshot::Sender<Result<(), tonic::Status>>);

/// The queue of one participant's Commits.
#[derive(Clone)]
pub struct CommitQueue {
    tx: mpsc::Sender<Waiter>,
    forget_tx: mpsc::Sender<TxnId>,
}

impl CommitQueue {
    /// Starts the batch task of one participant.
    pub fn start(name: String, client: ParticipantClient<Channel>, rpc_timeout: Duration) -> Self {
        let (tx, rx) = mpsc::channel(MAX_COMMIT_QUEUE);
        let (forget_tx, forget_rx) = mpsc::channel(MAX_FORGET_QUEUE);
        tokio::spawn(run(
            name,
            client,
            rpc_timeout,
            rx,
            forget_rx,
            forget_tx.clone(),
        ));
        Self { tx, forget_tx }
    }

    /// Tells the participant, with a coming batch, that `txn` has ended. Never waits; returns
    /// false if the queue is full and the forget was dropped.
    pub fn forget(&self, txn: TxnId) -> bool {
        self.forget_tx.try_send(txn).is_ok()
    }

    /// Commits `txn` at this participant; the answer a single Commit would have given.
    pub async fn commit(&self, txn: TxnId) -> Result<(), tonic::Status> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((txn, reply))
            .await
            .map_err(|_| tonic::Status::unavailable("the commit queue is closed"))?;
        answer
            .await
            .map_err(|_| tonic::Status::unavailable("the commit batch task stopped"))?
    }
}

async fn run(
    name: String,
    client: ParticipantClient<Channel>,
    rpc_timeout: Duration,
    mut rx: mpsc::Receiver<Waiter>,
    mut forget_rx: mpsc::Receiver<TxnId>,
    forget_tx: mpsc::Sender<TxnId>,
) {
    // Participants of an older version answer CommitBatch with UNIMPLEMENTED: then every
    // Commit goes out on its own, and forgets are dropped.
    let batch_supported = Arc::new(AtomicBool::new(true));
    let slots = Arc::new(Semaphore::new(MAX_COMMIT_BATCHES_IN_FLIGHT));
    let mut forgets: Vec<TxnId> = Vec::new();
    loop {
        let first = if forgets.is_empty() {
            tokio::select! {
                w = rx.recv() => match w {
                    Some(w) => Some(w),
                    None => return,
                },
                f = forget_rx.recv() => match f {
                    Some(t) => {
                        forgets.push(t);
                        continue;
                    }
                    None => return,
                },
            }
        } else {
            tokio::select! {
                w = rx.recv() => match w {
                    Some(w) => Some(w),
                    None => return,
                },
                _ = tokio::time::sleep(FORGET_LINGER) => None,
            }
        };
        // Commits that come while every slot is busy join this batch.
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch: Vec<Waiter> = first.into_iter().collect();
        while batch.len() < MAX_COMMIT_BATCH {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        while forgets.len() < MAX_FORGET_QUEUE {
            match forget_rx.try_recv() {
                Ok(t) => forgets.push(t),
                Err(_) => break,
            }
        }
        let supported = batch_supported.load(Ordering::Relaxed);
        let forget: Vec<TxnId> = if supported {
            forgets
                .drain(..forgets.len().min(MAX_COMMIT_BATCH))
                .collect()
        } else {
            forgets.clear();
            Vec::new()
        };
        if batch.is_empty() && forget.is_empty() {
            continue;
        }
        let (name, client) = (name.clone(), client.clone());
        let (batch_supported, forget_tx) = (batch_supported.clone(), forget_tx.clone());
        tokio::spawn(async move {
            let _permit = permit;
            if supported {
                match send_batch(&name, client.clone(), rpc_timeout, batch, forget).await {
                    Sent::Done => {}
                    Sent::Unimplemented(batch) => {
                        info!(participant = %name, "participant has no CommitBatch; sending Commits one by one");
                        batch_supported.store(false, Ordering::Relaxed);
                        send_singly(client, rpc_timeout, batch);
                    }
                    Sent::Failed(forget) => {
                        // Try the forgets again with a later batch; if the queue is full they
                        // stay at the participant (see MAX_FORGET_QUEUE).
                        for t in forget {
                            let _ = forget_tx.try_send(t);
                        }
                    }
                }
            } else {
                send_singly(client, rpc_timeout, batch);
            }
        });
    }
}

/// What became of one CommitBatch call.
enum Sent {
    /// Answered: every waiter has its answer.
    Done,
    /// The participant has no CommitBatch: the waiters are handed back unanswered.
    Unimplemented(Vec<Waiter>),
    /// Failed: every waiter was told; these forgets were not delivered.
    Failed(Vec<TxnId>),
}

async fn send_batch(
    name: &str,
    mut client: ParticipantClient<Channel>,
    rpc_timeout: Duration,
    batch: Vec<Waiter>,
    forget: Vec<TxnId>,
) -> Sent {
    let mut request = tonic::Request::new(pb::CommitBatchRequest {
        txn_ids: batch.iter().map(|(t, _)| t.to_string()).collect(),
        forget: forget.iter().map(|t| t.to_string()).collect(),
    });
    request.set_timeout(rpc_timeout);
    match client.commit_batch(request).await {
        Ok(resp) => {
            let mut failed: HashMap<String, tonic::Status> = resp
                .into_inner()
                .failed
                .into_iter()
                .map(|f| {
                    let status = tonic::Status::new(f.code.into(), f.message);
                    (f.txn_id, status)
                })
                .collect();
            debug!(participant = %name, txns = batch.len(), failed = failed.len(), "commit batch answered");
            for (txn, reply) in batch {
                let _ = reply.send(failed.remove(txn.as_str()).map_or(Ok(()), Err));
            }
            Sent::Done
        }
        Err(status) if status.code() == tonic::Code::Unimplemented => Sent::Unimplemented(batch),
        Err(status) => {
            for (_, reply) in batch {
                let _ = reply.send(Err(status.clone()));
            }
            Sent::Failed(forget)
        }
    }
}

/// Sends each Commit of `batch` on its own (a participant without CommitBatch).
fn send_singly(client: ParticipantClient<Channel>, rpc_timeout: Duration, batch: Vec<Waiter>) {
    for (txn, reply) in batch {
        let mut c = client.clone();
        tokio::spawn(async move {
            let mut request = tonic::Request::new(pb::CommitRequest {
                txn_id: txn.to_string(),
            });
            request.set_timeout(rpc_timeout);
            let _ = reply.send(c.commit(request).await.map(|_| ()));
        });
    }
}
