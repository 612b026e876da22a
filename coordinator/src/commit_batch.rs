//! Batches the Commits bound for one participant into CommitBatch calls.
//!
//! Under load many txns commit at once, and each Commit is a round trip plus a durable write at
//! the participant. One task per participant takes every Commit waiting in its queue (up to
//! [`MAX_COMMIT_BATCH`]) and sends them in one call; the participant commits them under one
//! lock and one fsync. A lone Commit goes out at once, so nothing waits for a batch to fill.
//! The retry logic stays in the caller (`drive_commit`): a failed batch fails each of its
//! Commits, and each is retried on its own schedule through the queue again.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;
use tracing::{debug, info};
use txn_proto::pb::v1 as pb;
use txn_proto::pb::v1::participant_client::ParticipantClient;
use txn_proto::types::{MAX_COMMIT_BATCH, TxnId};

/// Commits waiting for their participant's batch task; a full queue makes `commit` wait.
pub const MAX_COMMIT_QUEUE: usize = 8 * MAX_COMMIT_BATCH;

type Waiter = (TxnId, oneshot::Sender<Result<(), tonic::Status>>);

/// The queue of one participant's Commits.
#[derive(Clone)]
pub struct CommitQueue {
    tx: mpsc::Sender<Waiter>,
}

impl CommitQueue {
    /// Starts the batch task of one participant.
    pub fn start(name: String, client: ParticipantClient<Channel>, rpc_timeout: Duration) -> Self {
        let (tx, rx) = mpsc::channel(MAX_COMMIT_QUEUE);
        tokio::spawn(run(name, client, rpc_timeout, rx));
        Self { tx }
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
    mut client: ParticipantClient<Channel>,
    rpc_timeout: Duration,
    mut rx: mpsc::Receiver<Waiter>,
) {
    // Participants of an older version answer CommitBatch with UNIMPLEMENTED: then every
    // Commit goes out on its own.
    let mut batch_supported = true;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_COMMIT_BATCH {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        if batch_supported {
            let mut request = tonic::Request::new(pb::CommitBatchRequest {
                txn_ids: batch.iter().map(|(t, _)| t.to_string()).collect(),
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
                    continue;
                }
                Err(status) if status.code() == tonic::Code::Unimplemented => {
                    info!(participant = %name, "participant has no CommitBatch; sending Commits one by one");
                    batch_supported = false;
                }
                Err(status) => {
                    for (_, reply) in batch {
                        let _ = reply.send(Err(status.clone()));
                    }
                    continue;
                }
            }
        }
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
}
