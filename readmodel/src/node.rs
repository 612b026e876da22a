//! The read model's driver: runs the projection ([`View`]) against its sled database. For each
//! batch of a participant's feed it hands every event to the core under the view's lock,
//! applies the batch the core returns (the view's changes with the feed's cursor), makes them
//! durable once for the whole batch through group commit, and only then acknowledges the feed.
//! Queries read under the same lock, so an answer never sees half an event's batch.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::BoxFuture;
use tonic::transport::Channel;
use tracing::{info, warn};
use txn_proto::events::event_from_pb;
use txn_proto::pb::v1 as pb;
use txn_readmodel_core::query::{self, Reflects};
use txn_readmodel_core::view::{MAX_HELD_EVENTS, Received, View};
use txn_server::feed::{ApplyError, FeedSink, Follow, Links, follow};
use txn_storage::{FailStop, GroupCommit};
use txn_types::store::{Store, StoreError};

/// Deadline of a call a rebuild makes to a participant.
const REBUILD_RPC_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ReadModelError {
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Precondition(String),
    #[error("{0}")]
    Unavailable(String),
}

impl From<ReadModelError> for tonic::Status {
    fn from(e: ReadModelError) -> Self {
        let msg = e.to_string();
        match e {
            ReadModelError::Store(StoreError::Corrupt(_)) => tonic::Status::data_loss(msg),
            ReadModelError::Store(_) | ReadModelError::Unavailable(_) => {
                tonic::Status::unavailable(msg)
            }
            ReadModelError::Precondition(_) => tonic::Status::failed_precondition(msg),
        }
    }
}

pub struct ReadModel {
    gc: GroupCommit,
    view: Mutex<View>,
    /// The participants followed, with a channel to each (no call deadline: subscriptions).
    feeds: Vec<(String, Channel)>,
    /// The name this read model registers under at every feed.
    consumer: String,
    links: Links,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    fail_stop: FailStop,
    /// One rebuild at a time.
    rebuilding: tokio::sync::Mutex<()>,
}

impl ReadModel {
    /// Opens the view on `store`: finishes a rebuild a crash interrupted, then reloads the
    /// events held back from the consistent view.
    pub async fn open(
        store: Arc<dyn Store>,
        feeds: Vec<(String, Channel)>,
        consumer: String,
    ) -> Result<Arc<Self>, StoreError> {
        store.sync()?;
        let gc = GroupCommit::start(store.clone());
        if txn_readmodel_core::keys::read_meta(store.as_ref())?.rebuilding {
            info!("finishing a rebuild that a restart interrupted");
            clear(&gc).await?;
        }
        let names: Vec<String> = feeds.iter().map(|(n, _)| n.clone()).collect();
        let view = View::recover(store.as_ref(), &names)?;
        info!(
            held = view.held(),
            rebuilds = view.meta().rebuilds,
            "read model recovered"
        );
        Ok(Arc::new(Self {
            gc,
            view: Mutex::new(view),
            feeds,
            consumer,
            links: Links::default(),
            tasks: Mutex::new(Vec::new()),
            fail_stop: FailStop::new(),
            rebuilding: tokio::sync::Mutex::new(()),
        }))
    }

    pub fn fatal(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.fail_stop.subscribe()
    }

    fn store(&self) -> &dyn Store {
        self.gc.store().as_ref()
    }

    /// The store, for queries (read under [`ReadModel::view`]'s lock).
    pub(crate) fn store_handle(&self) -> Arc<dyn Store> {
        self.gc.store().clone()
    }

    fn check<T>(&self, r: Result<T, StoreError>) -> Result<T, ReadModelError> {
        Ok(self.fail_stop.check(r)?)
    }

    /// The view, locked: for queries, and for applying one event.
    pub(crate) fn view(&self) -> MutexGuard<'_, View> {
        self.view.lock().expect("view lock poisoned")
    }

    /// Starts following every feed.
    pub fn start(self: &Arc<Self>) {
        let mut tasks = self.tasks.lock().expect("tasks lock");
        for (source, channel) in &self.feeds {
            let f = Follow {
                source: source.clone(),
                channel: channel.clone(),
                consumer: self.consumer.clone(),
                filter: None,
                links: self.links.clone(),
            };
            let sink: Arc<dyn FeedSink> = Arc::new(Sink(self.clone()));
            tasks.push(tokio::spawn(follow(f, sink)));
        }
    }

    /// Stops following (for a rebuild, or at shutdown).
    pub fn stop(&self) {
        for t in self.tasks.lock().expect("tasks lock").drain(..) {
            t.abort();
        }
    }

    /// Applies one batch of `source`'s feed; returns the durable cursor (what to acknowledge).
    async fn apply_batch(&self, source: &str, batch: pb::EventBatch) -> Result<u64, ApplyError> {
        let retry = |e: ReadModelError| ApplyError::Retry(e.to_string());
        if batch.participant != source {
            return Err(ApplyError::Retry(format!(
                "a batch of {:?} on the link to {source}",
                batch.participant
            )));
        }
        let cursor = self
            .check(txn_readmodel_core::keys::read_cursor(self.store(), source))
            .map_err(retry)?;
        if batch.from_offset > cursor.next_offset {
            // The feed holds this read model further on than its view is (a rebuild).
            return Err(ApplyError::Gap {
                expected: cursor.next_offset,
            });
        }
        let mut wrote = false;
        for ev in &batch.events {
            let rec = event_from_pb(ev);
            let full = self.view().held() >= MAX_HELD_EVENTS;
            if full {
                let _ = self.gc.wait(self.gc.current()).await;
                return Err(ApplyError::Retry(format!(
                    "{MAX_HELD_EVENTS} events are held back waiting for the rest of their txns"
                )));
            }
            let received = {
                let mut view = self.view();
                let (write, received) = self
                    .check(view.receive(self.store(), source, &rec))
                    .map_err(retry)?;
                if !write.is_empty() {
                    self.check(self.gc.write_lazy(write)).map_err(retry)?;
                    wrote = true;
                }
                received
            };
            if let Received::Gap { expected } = received {
                return Err(ApplyError::Gap { expected });
            }
        }
        if wrote {
            self.check(self.gc.wait(self.gc.current()).await)
                .map_err(retry)?;
        }
        let cursor = self
            .check(txn_readmodel_core::keys::read_cursor(self.store(), source))
            .map_err(retry)?;
        Ok(cursor.next_offset)
    }

    /// Each followed feed: what an answer reflects of it, and its link's state.
    pub fn progress(
        &self,
        view: &View,
        consistent: bool,
    ) -> Result<Vec<pb::FeedProgress>, ReadModelError> {
        let links = self.links.lock().expect("links lock").clone();
        self.feeds
            .iter()
            .map(|(name, _)| {
                let r: Reflects =
                    self.check(query::reflects(view, self.store(), name, consistent))?;
                let link = links.get(name).cloned().unwrap_or_default();
                let head = link.head.max(r.cursor.next_offset);
                Ok(pb::FeedProgress {
                    participant: name.clone(),
                    offset: r.offset,
                    head,
                    lag: head.saturating_sub(r.offset),
                    held: r.held,
                    as_of_unix_ms: r.as_of_unix_ms,
                    connected: link.connected,
                    last_error: link.last_error,
                    applied: r.cursor.applied,
                    duplicates: r.cursor.duplicates,
                })
            })
            .collect()
    }

    /// Drops the view and replays every feed from offset 0. Refused, with nothing dropped, if
    /// some feed no longer keeps offset 0 (it was pruned: the history is gone).
    pub async fn rebuild(self: &Arc<Self>) -> Result<(), ReadModelError> {
        let _one = self.rebuilding.lock().await;
        let mut pruned = Vec::new();
        for (name, channel) in &self.feeds {
            let mut req = tonic::Request::new(pb::FeedStatusRequest {});
            req.set_timeout(REBUILD_RPC_TIMEOUT);
            let s = pb::event_feed_client::EventFeedClient::new(channel.clone())
                .feed_status(req)
                .await
                .map_err(|s| {
                    ReadModelError::Unavailable(format!(
                        "cannot ask {name} where its feed starts: {}",
                        s.message()
                    ))
                })?
                .into_inner();
            if s.floor > 0 {
                pruned.push(format!("{name} keeps offsets {}..{} only", s.floor, s.head));
            }
        }
        if !pruned.is_empty() {
            return Err(ReadModelError::Precondition(format!(
                "cannot rebuild from offset 0: {} (events before were pruned; run the \
                 participants with a longer --event-retention-secs to keep history for rebuilds)",
                pruned.join("; ")
            )));
        }
        self.stop();
        info!("rebuilding the view from offset 0 of every feed");
        {
            // Queries wait meanwhile rather than see a half-cleared view.
            let mut view = self.view();
            let names: Vec<String> = self.feeds.iter().map(|(n, _)| n.clone()).collect();
            let batch = self.check(query::begin_rebuild(self.store()))?;
            self.check(self.gc.write_lazy(batch))?;
            loop {
                let (batch, more) = self.check(query::clear_page(self.store()))?;
                self.check(self.gc.write_lazy(batch))?;
                if !more {
                    break;
                }
            }
            let batch = self.check(query::finish_rebuild(self.store()))?;
            self.check(self.gc.write_lazy(batch))?;
            *view = self.check(View::recover(self.store(), &names))?;
        }
        self.check(self.gc.sync_all().await)?;
        self.links.lock().expect("links lock").clear();
        self.start();
        Ok(())
    }

    pub async fn sync(&self) -> Result<(), ReadModelError> {
        self.check(self.gc.sync_all().await)
    }
}

/// Clears the view for a rebuild a crash interrupted (see [`query::clear_page`]).
async fn clear(gc: &GroupCommit) -> Result<(), StoreError> {
    let store = gc.store().clone();
    loop {
        let (batch, more) = query::clear_page(store.as_ref())?;
        gc.write_lazy(batch)?;
        if !more {
            break;
        }
    }
    gc.write_lazy(query::finish_rebuild(store.as_ref())?)?;
    gc.sync_all().await
}

/// The read model as a consumer of the feeds.
struct Sink(Arc<ReadModel>);

impl FeedSink for Sink {
    fn position(&self, source: &str) -> Result<u64, String> {
        txn_readmodel_core::keys::read_cursor(self.0.store(), source)
            .map(|c| c.next_offset)
            .map_err(|e| e.to_string())
    }

    fn apply<'a>(
        &'a self,
        source: &'a str,
        batch: pb::EventBatch,
    ) -> BoxFuture<'a, Result<u64, ApplyError>> {
        Box::pin(async move {
            let r = self.0.apply_batch(source, batch).await;
            if let Err(ApplyError::Retry(e)) = &r {
                warn!(source, error = %e, "applying a feed batch failed; will retry");
            }
            r
        })
    }
}
