//! Batches the Prepares bound for one participant into PrepareBatch calls.
//!
//! Under load many txns prepare at once, and a unary Prepare per txn and participant costs a
//! call's worth of CPU at both ends. One task per participant takes every Prepare waiting in
//! its queue (up to [`MAX_PREPARE_BATCH`] and [`MAX_PREPARE_BATCH_BYTES`]) and sends them in
//! one call, whose votes stream back as each is ready; the participant applies the ones that
//! need no lock wait under one lock and makes their records durable with one wait. A lone
//! Prepare goes out at once, so nothing waits for a batch to fill. Up to
//! [`MAX_PREPARE_BATCHES_IN_FLIGHT`] calls are out at once; a call frees its slot at its first
//! vote (the participant has then handled every Prepare that did not meet a lock), and
//! Prepares that come while every slot is busy make up the next batch.
//!
//! What a Prepare gets is exactly what a unary Prepare would have got: its vote, its error
//! (as a status), or the call's error when the call fails before its vote came. A participant
//! without PrepareBatch (UNIMPLEMENTED) gets unary Prepares from then on.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tonic::transport::Channel;
use tracing::{debug, info};
use txn_proto::pb::v1 as pb;
use txn_proto::pb::v1::participant_client::ParticipantClient;
use txn_types::types::{MAX_PREPARE_BATCH, MAX_PREPARE_BATCH_BYTES};

/// Prepares waiting for their participant's batch task; a full queue makes `prepare` wait.
pub const MAX_PREPARE_QUEUE: usize = 8 * MAX_PREPARE_BATCH;
/// PrepareBatch calls to one participant whose first vote has not come yet. While one batch
/// waits for the participant's disk, the next one gathers; more slots would only split
/// batches into more calls.
pub const MAX_PREPARE_BATCHES_IN_FLIGHT: usize = 2;

type Answer = Result<pb::PrepareResponse, tonic::Status>;

struct Waiter {
    req: pb::PrepareRequest,
    timeout: Duration,
    reply: oneshot::Sender<Answer>,
}

/// The queue of one participant's Prepares.
#[derive(Clone)]
pub struct PrepareQueue {
    tx: mpsc::Sender<Waiter>,
    link: Link,
}

/// What the queue's users and its task share about one participant.
#[derive(Clone)]
struct Link {
    name: String,
    client: ParticipantClient<Channel>,
    /// Batch calls whose first vote has not come yet.
    slots: Arc<Semaphore>,
    /// False once the participant answered UNIMPLEMENTED.
    batch_supported: Arc<AtomicBool>,
}

impl PrepareQueue {
    /// Starts the batch task of one participant.
    pub fn start(name: String, client: ParticipantClient<Channel>) -> Self {
        let (tx, rx) = mpsc::channel(MAX_PREPARE_QUEUE);
        let link = Link {
            name,
            client,
            slots: Arc::new(Semaphore::new(MAX_PREPARE_BATCHES_IN_FLIGHT)),
            batch_supported: Arc::new(AtomicBool::new(true)),
        };
        tokio::spawn(run(link.clone(), rx));
        Self { tx, link }
    }

    /// Sends `req` to the participant; the answer a unary Prepare with this timeout would have
    /// got.
    pub async fn prepare(&self, req: pb::PrepareRequest, timeout: Duration) -> Answer {
        let (reply, answer) = oneshot::channel();
        let w = Waiter {
            req,
            timeout,
            reply,
        };
        // Nothing queued and a slot free (light load): the call goes out from here, sparing
        // the hand-offs to the queue's task.
        let idle = self.tx.capacity() == self.tx.max_capacity()
            && self.link.batch_supported.load(Ordering::Relaxed);
        match idle
            .then(|| self.link.slots.clone().try_acquire_owned().ok())
            .flatten()
        {
            Some(permit) => self.link.send(vec![w], permit).await,
            None => self
                .tx
                .send(w)
                .await
                .map_err(|_| tonic::Status::unavailable("the prepare queue is closed"))?,
        }
        answer
            .await
            .map_err(|_| tonic::Status::unavailable("the prepare batch task stopped"))?
    }
}

impl Link {
    /// Sends a batch; if the participant has no PrepareBatch, its Prepares go one by one.
    async fn send(&self, batch: Vec<Waiter>, permit: OwnedSemaphorePermit) {
        if let Some(batch) = send_batch(&self.name, self.client.clone(), batch, permit).await {
            info!(participant = %self.name, "participant has no PrepareBatch; sending Prepares one by one");
            self.batch_supported.store(false, Ordering::Relaxed);
            for w in batch {
                send_alone(self.client.clone(), w);
            }
        }
    }
}

async fn run(link: Link, mut rx: mpsc::Receiver<Waiter>) {
    let Link {
        client,
        slots,
        batch_supported,
        ..
    } = link.clone();
    // A Prepare taken from the queue that did not fit the last batch's bytes.
    let mut carried: Option<Waiter> = None;
    loop {
        let first = match carried.take() {
            Some(w) => w,
            None => match rx.recv().await {
                Some(w) => w,
                None => return,
            },
        };
        if !batch_supported.load(Ordering::Relaxed) {
            send_alone(client.clone(), first);
            continue;
        }
        // Prepares that come while every slot is busy join this batch.
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = first.req.encoded_len();
        let mut batch = vec![first];
        while batch.len() < MAX_PREPARE_BATCH {
            let Ok(w) = rx.try_recv() else { break };
            bytes += w.req.encoded_len();
            if bytes > MAX_PREPARE_BATCH_BYTES {
                carried = Some(w);
                break;
            }
            batch.push(w);
        }
        let link = link.clone();
        tokio::spawn(async move { link.send(batch, permit).await });
    }
}

/// Sends one batch and hands each vote to its waiter. Returns the batch unanswered if the
/// participant has no PrepareBatch.
async fn send_batch(
    name: &str,
    mut client: ParticipantClient<Channel>,
    batch: Vec<Waiter>,
    permit: OwnedSemaphorePermit,
) -> Option<Vec<Waiter>> {
    let longest = batch.iter().map(|w| w.timeout).max().unwrap_or_default();
    let request = pb::PrepareBatchRequest {
        prepares: batch
            .iter()
            .map(|w| pb::BatchedPrepare {
                prepare: Some(w.req.clone()),
                timeout_ms: w.timeout.as_millis().min(u32::MAX as u128) as u32,
            })
            .collect(),
    };
    let mut request = tonic::Request::new(request);
    request.set_timeout(longest);
    let mut permit = Some(permit);
    let mut waiting: HashMap<String, oneshot::Sender<Answer>> = HashMap::new();
    let n = batch.len();
    let call = client.prepare_batch(request).await;
    let mut votes = match call {
        Ok(stream) => stream.into_inner(),
        Err(status) if status.code() == tonic::Code::Unimplemented => return Some(batch),
        Err(status) => {
            for w in batch {
                let _ = w.reply.send(Err(status.clone()));
            }
            return None;
        }
    };
    for w in batch {
        waiting.insert(w.req.txn_id, w.reply);
    }
    let ended = loop {
        match votes.next().await {
            Some(Ok(v)) => {
                // The participant has handled every Prepare that met no lock.
                permit.take();
                let answer = match v.vote {
                    Some(vote) if v.code == 0 => Ok(vote),
                    _ => Err(tonic::Status::new(v.code.into(), v.message)),
                };
                if let Some(reply) = waiting.remove(&v.txn_id) {
                    let _ = reply.send(answer);
                }
                if waiting.is_empty() {
                    break None;
                }
            }
            Some(Err(status)) => break Some(status),
            None => {
                break Some(tonic::Status::unavailable(
                    "the PrepareBatch call ended without a vote for this txn",
                ));
            }
        }
    };
    debug!(participant = %name, txns = n, unanswered = waiting.len(), "prepare batch answered");
    if let Some(status) = ended {
        for (_, reply) in waiting {
            let _ = reply.send(Err(status.clone()));
        }
    }
    None
}

/// A unary Prepare (a participant without PrepareBatch).
fn send_alone(mut client: ParticipantClient<Channel>, w: Waiter) {
    tokio::spawn(async move {
        let mut request = tonic::Request::new(w.req);
        request.set_timeout(w.timeout);
        let _ = w
            .reply
            .send(client.prepare(request).await.map(|r| r.into_inner()));
    });
}
