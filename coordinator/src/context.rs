//! What every component of the coordinator shares: the 2PC core (behind one lock, held only
//! for in-memory steps), the log with group commit (its own sled database, or etcd shared with
//! other coordinators: [`crate::log`]), the links to the participants, the configuration, the
//! counters, and the one fail-stop switch for storage errors.
//!
//! The components ([`crate::node::Coordinator`], [`crate::dedup::ClientKeys`],
//! [`crate::saga_driver::SagaDriver`], [`crate::admin::AdminService`]) each own their state
//! and hold this context; none of them reaches into another's state.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};

use tonic::transport::Channel;
use txn_coordinator_core::core::CoordinatorCore;
use txn_coordinator_core::saga::saga_key;
use txn_proto::pb::v1 as pb;
use txn_proto::pb::v1::participant_client::ParticipantClient;
use txn_server::net::{AuthChannel, BearerToken, ClientTls};
use txn_storage::FailStop;
use txn_types::backoff::Backoff;
use txn_types::rec::SagaRecord;
use txn_types::record;
use txn_types::store::StoreError;
use txn_types::types::{MAX_MESSAGE_BYTES, ParticipantId, TxnId};

use crate::commit_batch::CommitQueue;
use crate::error::CoordError;
use crate::log::CoordLog;
use crate::node::CoordConfig;
use crate::prepare_batch::PrepareQueue;

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) committed: AtomicU64,
    pub(crate) aborted: AtomicU64,
    pub(crate) sagas_completed: AtomicU64,
    pub(crate) sagas_compensated: AtomicU64,
    /// Decisions and sagas taken over from coordinators whose lease expired (etcd log).
    pub(crate) adopted: AtomicU64,
}

pub struct Context {
    core: Mutex<CoordinatorCore>,
    /// The log, behind its group commit (named for it: every write goes through it).
    pub(crate) gc: Arc<dyn CoordLog>,
    pub(crate) config: CoordConfig,
    pub(crate) counters: Counters,
    fail_stop: FailStop,
    pub(crate) started: std::time::Instant,
    /// A client of each participant's protocol service.
    pub(crate) participants: HashMap<ParticipantId, ParticipantClient<Channel>>,
    /// Each participant's URL, for operators, and a channel for admin calls.
    pub(crate) participant_urls: HashMap<ParticipantId, String>,
    pub(crate) channels: HashMap<ParticipantId, Channel>,
    /// One Commit batching queue per participant.
    pub(crate) commit_queues: HashMap<ParticipantId, CommitQueue>,
    /// One Prepare batching queue per participant.
    pub(crate) prepare_queues: HashMap<ParticipantId, PrepareQueue>,
    /// Sent with the coordinator's calls to the participants' admin service.
    admin_token: std::sync::OnceLock<BearerToken>,
    /// How this coordinator reaches other coordinator instances (a shared log's Resolve
    /// forwarding), and a channel to each it has reached.
    client_tls: std::sync::OnceLock<ClientTls>,
    pub(crate) peers: Mutex<HashMap<String, Channel>>,
}

impl Context {
    pub(crate) fn new(
        core: CoordinatorCore,
        gc: Arc<dyn CoordLog>,
        participants: HashMap<ParticipantId, (String, Channel)>,
        config: CoordConfig,
    ) -> Self {
        let client = |ch: &Channel| {
            ParticipantClient::new(ch.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES)
        };
        Self {
            core: Mutex::new(core),
            gc,
            counters: Counters::default(),
            fail_stop: FailStop::new(),
            started: std::time::Instant::now(),
            participants: participants
                .iter()
                .map(|(id, (_, ch))| (id.clone(), client(ch)))
                .collect(),
            participant_urls: participants
                .iter()
                .map(|(id, (url, _))| (id.clone(), url.clone()))
                .collect(),
            channels: participants
                .iter()
                .map(|(id, (_, ch))| (id.clone(), ch.clone()))
                .collect(),
            commit_queues: participants
                .iter()
                .map(|(id, (_, ch))| {
                    let queue = CommitQueue::start(id.to_string(), client(ch), config.rpc_timeout);
                    (id.clone(), queue)
                })
                .collect(),
            prepare_queues: participants
                .iter()
                .map(|(id, (_, ch))| (id.clone(), PrepareQueue::start(id.to_string(), client(ch))))
                .collect(),
            admin_token: std::sync::OnceLock::new(),
            client_tls: std::sync::OnceLock::new(),
            peers: Mutex::new(HashMap::new()),
            config,
        }
    }

    pub(crate) fn core(&self) -> MutexGuard<'_, CoordinatorCore> {
        self.core.lock().expect("coordinator core lock poisoned")
    }

    pub fn fatal(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.fail_stop.subscribe()
    }

    /// Passes a storage result through the fail-stop policy (see [`FailStop`]). A log that
    /// could not be reached (etcd) is no failure of the log: the call is refused as not
    /// started (only reads and guarded claims can fail so; queued writes wait for etcd) and
    /// nothing stops.
    pub(crate) fn check<T>(&self, r: Result<T, StoreError>) -> Result<T, CoordError> {
        match r {
            Err(StoreError::Unavailable(why)) => Err(CoordError::NotStarted(format!(
                "the coordinator's log is unreachable: {why}"
            ))),
            r => Ok(self.fail_stop.check(r)?),
        }
    }

    /// Stops the service for `why` (the etcd log lost this instance's membership).
    pub(crate) fn stop(&self, why: String) {
        self.fail_stop.trip(why);
    }

    /// Milliseconds on the monotonic clock since this coordinator started: the clock of the
    /// core's prepare deadlines.
    pub(crate) fn clock_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The retry schedule of Commits and settling calls.
    pub(crate) fn commit_backoff(&self) -> Backoff {
        Backoff::new(self.config.commit_retry_base, self.config.commit_retry_max)
    }

    pub fn participant_ids(&self) -> Vec<ParticipantId> {
        let mut ids: Vec<_> = self.participants.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Reads a saga's log record.
    pub async fn saga(&self, id: &TxnId) -> Result<Option<SagaRecord>, CoordError> {
        let key = saga_key(id);
        match self.check(self.gc.get(&key).await)? {
            Some(bytes) => Ok(Some(
                self.check(record::decode(&key, &bytes).map_err(Into::into))?,
            )),
            None => Ok(None),
        }
    }

    /// Sets the bearer token sent to the participants' admin service (once, at startup).
    pub fn set_admin_token(&self, token: BearerToken) {
        let _ = self.admin_token.set(token);
    }

    /// Sets how other coordinator instances are reached (once, at startup; plaintext if
    /// never set).
    pub fn set_client_tls(&self, tls: ClientTls) {
        let _ = self.client_tls.set(tls);
    }

    pub(crate) fn peer_tls(&self) -> ClientTls {
        self.client_tls.get().cloned().unwrap_or_default()
    }

    /// A client of a participant's admin service, carrying the admin token.
    pub(crate) fn participant_admin(
        &self,
        ch: Channel,
    ) -> pb::participant_admin_client::ParticipantAdminClient<AuthChannel> {
        pb::participant_admin_client::ParticipantAdminClient::with_interceptor(
            ch,
            self.admin_token.get().cloned().unwrap_or_default(),
        )
    }
}
