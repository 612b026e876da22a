//! Following another service's change feed, for every consumer (a participant running the
//! events protocol, the read model): subscribe, hand each batch to the consumer, acknowledge
//! what it made durable, and subscribe again after any failure. A subscription resumes where
//! the feed holds the consumer (its last acknowledgement, as a broker resumes a consumer
//! group), so whatever the consumer applied after that comes again: delivery is at least
//! once. The consumer's inbox (its position, stored in the same batch as its effects)
//! suppresses those duplicates, so effects are exactly once; a batch that would skip events
//! past the inbox is refused, and the consumer then subscribes from its own position.
//!
//! A consumer whose position the feed no longer keeps is refused with OUT_OF_RANGE: that is
//! reported (the link's status says so) and retried slowly, never skipped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tonic::transport::Channel;
use txn_proto::pb::v1 as pb;
use txn_types::backoff::Backoff;
use txn_types::types::MAX_MESSAGE_BYTES;

/// First and largest pause between two attempts to follow a feed after a failure.
pub const FOLLOW_RETRY_BASE: Duration = Duration::from_millis(50);
pub const FOLLOW_RETRY_MAX: Duration = Duration::from_secs(2);
/// Consecutive failures to apply the same batch (a lock that stays held, a full disk) after
/// which the link is reported parked and retried only every [`PARKED_RETRY`]: the events
/// cannot be skipped, so they wait, visibly, for an operator or for the cause to clear.
pub const MAX_APPLY_ATTEMPTS: u32 = 50;
pub const PARKED_RETRY: Duration = Duration::from_secs(10);
/// Deadline of one Ack call.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// How one feed link is doing, for operators (txnctl events, the read model's status).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkStatus {
    /// A subscription is open now.
    pub connected: bool,
    /// The last failure, if the link is not healthy now.
    pub last_error: String,
    /// The feed's durable head as last seen.
    pub head: u64,
    /// The feed no longer keeps this consumer's position: it must be rebuilt.
    pub out_of_range: bool,
    /// Consecutive failures to apply; at [`MAX_APPLY_ATTEMPTS`] the link is parked.
    pub failed_applies: u32,
}

/// Every link a consumer follows, by source.
pub type Links = Arc<Mutex<HashMap<String, LinkStatus>>>;

/// Why a batch was not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyError {
    /// The batch starts past the consumer's position: subscribe again from there.
    Gap { expected: u64 },
    /// Try the same events again later (a lock held, a storage hiccup).
    Retry(String),
}

/// The consumer's side of a link.
pub trait FeedSink: Send + Sync + 'static {
    /// Where to subscribe from: the consumer's durable position in `source`'s feed.
    fn position(&self, source: &str) -> Result<u64, String>;
    /// Applies `batch` from `source` and returns, once what it wrote is durable, the offset
    /// below which every event of the feed is processed (what to acknowledge).
    fn apply<'a>(
        &'a self,
        source: &'a str,
        batch: pb::EventBatch,
    ) -> BoxFuture<'a, Result<u64, ApplyError>>;
}

/// One feed to follow.
#[derive(Clone)]
pub struct Follow {
    pub source: String,
    pub channel: Channel,
    /// The consumer's name at the source.
    pub consumer: String,
    /// Only the events addressed to this participant (see `SubscribeRequest.for_participant`).
    pub filter: Option<String>,
    pub links: Links,
}

impl Follow {
    fn update(&self, f: impl FnOnce(&mut LinkStatus)) {
        let mut links = self.links.lock().expect("links lock");
        f(links.entry(self.source.clone()).or_default());
    }
}

/// Follows `f.source`'s feed into `sink` until the task is dropped.
pub async fn follow(f: Follow, sink: Arc<dyn FeedSink>) {
    let mut backoff = Backoff::new(FOLLOW_RETRY_BASE, FOLLOW_RETRY_MAX);
    let mut resume = true;
    loop {
        let outcome = follow_once(&f, sink.as_ref(), &mut backoff, &mut resume).await;
        f.update(|s| {
            s.connected = false;
            if let Err(e) = &outcome {
                s.last_error = e.clone();
            }
        });
        let parked = f
            .links
            .lock()
            .expect("links lock")
            .get(&f.source)
            .is_some_and(|s| s.out_of_range || s.failed_applies >= MAX_APPLY_ATTEMPTS);
        let pause = if parked {
            PARKED_RETRY
        } else {
            backoff.failed(rand::random())
        };
        if let Err(e) = &outcome {
            tracing::debug!(source = %f.source, error = %e, ?pause, "feed link interrupted");
        }
        tokio::time::sleep(pause).await;
    }
}

/// One subscription, until it fails. Err says why.
async fn follow_once(
    f: &Follow,
    sink: &dyn FeedSink,
    backoff: &mut Backoff,
    resume: &mut bool,
) -> Result<(), String> {
    let from = sink.position(&f.source)?;
    let mut client = pb::event_feed_client::EventFeedClient::new(f.channel.clone())
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let mut stream = match client
        .subscribe(pb::SubscribeRequest {
            consumer: f.consumer.clone(),
            from_offset: from,
            for_participant: f.filter.clone().unwrap_or_default(),
            max_batch: 0,
            resume: *resume,
        })
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => {
            let out_of_range = s.code() == tonic::Code::OutOfRange;
            if out_of_range {
                tracing::error!(source = %f.source, error = %s.message(), "feed no longer keeps this consumer's position");
            }
            f.update(|l| l.out_of_range = out_of_range);
            return Err(format!("subscribe: {:?}: {}", s.code(), s.message()));
        }
    };
    f.update(|l| {
        l.connected = true;
        l.out_of_range = false;
    });
    // Acknowledgements go out from their own task, the latest offset each time, so that the
    // next batch is applied while the last one's acknowledgement travels.
    let (acks, acked) = tokio::sync::watch::channel(0u64);
    let _acker = AbortOnDrop(tokio::spawn(send_acks(
        client.clone(),
        f.consumer.clone(),
        f.source.clone(),
        acked,
    )));
    loop {
        let batch = match stream.message().await {
            Ok(Some(b)) => b,
            Ok(None) => return Err("the feed closed the stream".into()),
            Err(s) => {
                let out_of_range = s.code() == tonic::Code::OutOfRange;
                f.update(|l| l.out_of_range = out_of_range);
                return Err(format!("stream: {:?}: {}", s.code(), s.message()));
            }
        };
        let head = batch.head;
        match sink.apply(&f.source, batch).await {
            Ok(acked) => {
                *backoff = Backoff::new(FOLLOW_RETRY_BASE, FOLLOW_RETRY_MAX);
                f.update(|l| {
                    l.head = head;
                    l.failed_applies = 0;
                    l.last_error.clear();
                });
                acks.send_replace(acked);
            }
            Err(ApplyError::Gap { expected }) => {
                // The feed holds this consumer further on than it is (its database was
                // restored, or rebuilt): from its own position, then.
                *resume = false;
                return Err(format!(
                    "a batch started past this consumer's position {expected}; subscribing again"
                ));
            }
            Err(ApplyError::Retry(e)) => {
                f.update(|l| {
                    l.head = head;
                    l.failed_applies += 1;
                });
                return Err(format!("applying a batch: {e}"));
            }
        }
    }
}

/// Aborts a task when dropped (the acknowledging task of a subscription that ended).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends the latest acknowledged offset whenever it moves. A lost acknowledgement only keeps
/// events longer; the next one covers it.
async fn send_acks(
    mut client: pb::event_feed_client::EventFeedClient<Channel>,
    consumer: String,
    source: String,
    mut acked: tokio::sync::watch::Receiver<u64>,
) {
    let mut sent = 0;
    while acked.changed().await.is_ok() {
        let offset = *acked.borrow_and_update();
        if offset <= sent {
            continue;
        }
        let mut req = tonic::Request::new(pb::AckRequest {
            consumer: consumer.clone(),
            offset,
        });
        req.set_timeout(ACK_TIMEOUT);
        match client.ack(req).await {
            Ok(_) => sent = offset,
            Err(s) => tracing::debug!(source = %source, error = %s.message(), "ack failed"),
        }
    }
}
