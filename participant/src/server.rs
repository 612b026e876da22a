//! Process wiring for the `participant` binary: flags, storage, gRPC servers, the resolver,
//! graceful shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use futures::future::BoxFuture;
use tonic::transport::Channel;
use tracing::info;
use txn_proto::convert::FromWire;
use txn_proto::pb::v1 as pb;
use txn_server::net::{AdminAuth, ClientTls};
use txn_server::serve::StatsService;
use txn_storage::SledStore;
use txn_types::types::{CommitPoint, MAX_MESSAGE_BYTES, ParticipantId, Resolution, TxnId};

use crate::node::{NodeConfig, Participant, failpoints};
use crate::resolver::{ResolveTransport, TransportError};
use crate::service::{ParticipantService, state_from_pb};
use txn_participant_core::core::TxnStatus;

#[derive(Debug, Parser)]
#[command(
    name = "participant",
    about = "A two-phase commit participant with its own sled database"
)]
pub struct Args {
    /// Threads of the async runtime (0 = one per core).
    #[arg(long, default_value_t = 0, env = "TXN_WORKER_THREADS")]
    pub worker_threads: usize,
    /// This participant's name, as the coordinator knows it.
    #[arg(long, default_value = "p1")]
    pub name: String,
    /// Address to serve gRPC on.
    #[arg(long, default_value = "127.0.0.1:50061")]
    pub listen: SocketAddr,
    /// Directory of this participant's database (default: ./data/NAME).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The coordinator, asked about txns whose decision is late; several coordinators over
    /// one etcd log as a comma-separated list (URL,URL,...): one that does not answer is
    /// passed over for the next.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub coordinator: String,
    /// How long a Prepare waits for a conflicting lock before voting NO.
    #[arg(long, env = "TXN_LOCK_WAIT_MS", default_value_t = 50)]
    pub lock_wait_ms: u64,
    /// How long a write queued behind a reader waits before voting NO, so that a reader and a
    /// writer waiting for each other at two participants cost little (at most --lock-wait-ms).
    #[arg(long, env = "TXN_READER_YIELD_MS", default_value_t = 30)]
    pub reader_yield_ms: u64,
    /// How long a read-only request waits for writers before voting NO (its wait cannot
    /// close a deadlock, so it may outlast --lock-wait-ms).
    #[arg(long, env = "TXN_READER_WAIT_MS", default_value_t = 150)]
    pub reader_wait_ms: u64,
    /// How long a prepared txn waits for its decision before the coordinator is asked.
    #[arg(long, default_value_t = 2000)]
    pub resolve_after_ms: u64,
    /// How often the resolver runs; also the first pause between Resolve attempts.
    #[arg(long, default_value_t = 200)]
    pub resolve_interval_ms: u64,
    /// Largest pause between Resolve attempts for one txn.
    #[arg(long, default_value_t = 2000)]
    pub resolve_backoff_max_ms: u64,
    /// Seconds to keep aborts, abort tombstones and one-phase commits; commits of two-phase
    /// txns are kept until the coordinator says they ended, and a saga's barriers until the
    /// coordinator says the saga ended and its deadline is this long past. 0 keeps every
    /// outcome and barrier forever (for audits: the test harness checks each txn's outcome
    /// after a run). At least 120 s: an abort must outlive the longest prepare deadline (60 s).
    #[arg(long, default_value_t = crate::node::DEFAULT_OUTCOME_RETENTION.as_secs(),
          value_parser = parse_retention)]
    pub outcome_retention_secs: u64,
    /// Tests only: a retention in milliseconds below the safe minimum (overrides
    /// --outcome-retention-secs). Unsafe: a Prepare may outlive the tombstone that must make
    /// it vote NO.
    #[arg(long, hide = true)]
    pub unsafe_outcome_retention_ms: Option<u64>,
    /// Seconds to keep events every registered consumer has acknowledged, so a read model can
    /// be rebuilt from the feed within that window; 0 prunes them as soon as every consumer is
    /// past them.
    #[arg(long, default_value_t = crate::feed::DEFAULT_EVENT_RETENTION.as_secs())]
    pub event_retention_secs: u64,
    /// Most events the feed keeps, whoever has not acknowledged them: beyond it the oldest go,
    /// and a consumer that still needed them is told OUT_OF_RANGE.
    #[arg(long, default_value_t = crate::feed::DEFAULT_MAX_RETAINED_EVENTS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_retained_events: u64,
    /// Another participant as NAME=URL, asked during cooperative termination while the
    /// coordinator is unreachable, and whose feed this one follows for the events protocol
    /// (repeat for each).
    #[arg(long = "peer", value_name = "NAME=URL")]
    pub peers: Vec<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics (off when not given).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Log line format.
    #[arg(long, value_enum, default_value_t = txn_server::process::LogFormat::Text)]
    pub log_format: txn_server::process::LogFormat,
    /// Export spans to this OpenTelemetry collector (OTLP over gRPC, e.g.
    /// http://127.0.0.1:4317), and carry the W3C trace context on every call, so one txn is
    /// one trace across the services. Off when not given.
    #[arg(long, value_name = "URL", env = "TXN_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Free space (MiB) kept in reserve on the data directory's file system: below it, new
    /// Prepares are refused so that prepared txns can always still commit.
    #[arg(long, default_value_t = 64)]
    pub min_free_mb: u64,
    /// Most txns prepared here at once: a Prepare beyond it is refused with
    /// RESOURCE_EXHAUSTED (the coordinator aborts the txn), since prepared txns and their
    /// locks are held in memory until their decision comes.
    #[arg(long, default_value_t = txn_participant_core::limits::DEFAULT_MAX_PREPARED_TXNS as u64,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_prepared_txns: u64,
    /// Most keys locked here at once by prepared txns: a Prepare that would lock more is
    /// refused with RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = txn_participant_core::limits::DEFAULT_MAX_LOCKED_KEYS as u64,
          value_parser = clap::value_parser!(u64).range(1..=16_777_216))]
    pub max_locked_keys: u64,
    #[command(flatten)]
    pub tls: txn_server::net::TlsArgs,
    #[command(flatten)]
    pub token: txn_server::net::TokenArgs,
}

/// Every failpoint of the participant: crash points and the read-only disk hook.
const KNOWN_FAILPOINTS: &[&str] = &[
    failpoints::BEFORE_PREPARE_DURABLE,
    failpoints::AFTER_PREPARE_DURABLE,
    failpoints::AFTER_COMMIT_APPLY,
    failpoints::BEFORE_ONE_PHASE_DURABLE,
    failpoints::AFTER_ONE_PHASE_DURABLE,
    failpoints::AFTER_STEP_EXECUTED,
    failpoints::AFTER_DEBIT_DURABLE,
    failpoints::AFTER_CREDIT_DURABLE,
    crate::disk::READ_ONLY_FAILPOINT,
];

/// Shortest outcome retention accepted: twice the longest prepare deadline a client may ask
/// for (`MAX_PREPARE_TIMEOUT_MS`, 60 s), so a tombstone outlives every Prepare that matters.
pub const MIN_OUTCOME_RETENTION_SECS: u64 = 120;
/// Longest outcome retention accepted (a year).
pub const MAX_OUTCOME_RETENTION_SECS: u64 = 365 * 24 * 3600;

fn parse_retention(raw: &str) -> Result<u64, String> {
    let secs: u64 = raw
        .parse()
        .map_err(|e| format!("{raw:?} is not a number of seconds: {e}"))?;
    if secs == 0 || (MIN_OUTCOME_RETENTION_SECS..=MAX_OUTCOME_RETENTION_SECS).contains(&secs) {
        Ok(secs)
    } else {
        Err(format!(
            "{secs} s: must be 0 (keep every outcome) or {MIN_OUTCOME_RETENTION_SECS} to \
             {MAX_OUTCOME_RETENTION_SECS}; an abort must outlive the longest prepare deadline (60 s)"
        ))
    }
}

/// Deadline of one Resolve call.
const RESOLVE_RPC_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn run(args: Args) -> anyhow::Result<()> {
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("data").join(&args.name));
    let store = SledStore::open(&data_dir)
        .with_context(|| format!("opening the database in {}", data_dir.display()))?;
    txn_server::failpoint::setup_from_env(KNOWN_FAILPOINTS).map_err(anyhow::Error::msg)?;
    let client_tls = ClientTls::load(&args.tls)?;
    let server = args.tls.server()?;
    let auth = AdminAuth::new(args.token.load()?);
    let mut peers = HashMap::new();
    let mut feeds = Vec::new();
    for entry in &args.peers {
        let (name, url) = entry
            .split_once('=')
            .with_context(|| format!("--peer {entry:?}: expected NAME=URL"))?;
        ParticipantId::parse("--peer NAME", name)?;
        let endpoint = client_tls.endpoint("--peer", url, RESOLVE_RPC_TIMEOUT)?;
        // A subscription lives as long as the link: no deadline on its calls (the feed's
        // heartbeats tell a dead link from a quiet one).
        feeds.push((name.to_owned(), endpoint.clone().connect_lazy()));
        let ch = endpoint.timeout(RESOLVE_RPC_TIMEOUT).connect_lazy();
        peers.insert(name.to_owned(), ch);
    }
    let config = NodeConfig {
        name: args.name.clone(),
        resolve_backoff_max: Duration::from_millis(args.resolve_backoff_max_ms.max(1)),
        lock_wait: Duration::from_millis(args.lock_wait_ms),
        reader_yield: Duration::from_millis(args.reader_yield_ms),
        reader_wait: Duration::from_millis(args.reader_wait_ms),
        resolve_after: Duration::from_millis(args.resolve_after_ms),
        resolve_interval: Duration::from_millis(args.resolve_interval_ms.max(1)),
        outcome_retention: match args.unsafe_outcome_retention_ms {
            Some(ms) => Some(Duration::from_millis(ms.max(1))),
            None => (args.outcome_retention_secs > 0)
                .then(|| Duration::from_secs(args.outcome_retention_secs)),
        },
        max_prepared: args.max_prepared_txns as usize,
        max_locked_keys: args.max_locked_keys as usize,
        event_retention: txn_participant_core::outbox::Retention {
            min_age_ms: args.event_retention_secs.saturating_mul(1000),
            max_events: args.max_retained_events,
        },
    };
    let node = Participant::open(Arc::new(store), config).context("recovering prepared txns")?;

    let reserve_bytes = args.min_free_mb.saturating_mul(1024 * 1024);
    if let Ok(reading) = crate::disk::read(&data_dir) {
        node.set_disk_state(crate::disk::verdict(&data_dir, reading, reserve_bytes));
    }
    tokio::spawn(node.clone().run_disk_guard(data_dir.clone(), reserve_bytes));
    tokio::spawn(node.clone().run_outcome_sweeper());
    tokio::spawn(node.clone().run_event_pruner());
    let followers = node.follow_peers(feeds);
    let mut coordinators = Vec::new();
    for url in args
        .coordinator
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
    {
        coordinators.push(
            client_tls
                .endpoint("--coordinator", url, RESOLVE_RPC_TIMEOUT)?
                .timeout(RESOLVE_RPC_TIMEOUT)
                .connect_lazy(),
        );
    }
    anyhow::ensure!(!coordinators.is_empty(), "--coordinator: no URL given");
    let transport = Arc::new(GrpcTransport {
        coordinators,
        current: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        peers,
    });
    let resolver = tokio::spawn(node.clone().run_resolver(transport));

    let svc = ParticipantService::new(node.clone());
    let (health, health_svc) = tonic_health::server::health_reporter();
    health
        .set_serving::<pb::participant_server::ParticipantServer<ParticipantService>>()
        .await;

    let listener = txn_server::listen(args.listen)
        .with_context(|| format!("binding {} (is the port already in use?)", args.listen))?;
    let local = listener.local_addr()?;
    info!(name = %args.name, addr = %local, data_dir = %data_dir.display(), "participant listening");
    println!("participant {} listening on {local}", args.name);

    if let Some(addr) = args.metrics_addr {
        let n = node.clone();
        let refresh: txn_metrics::Refresh = Arc::new(move || n.refresh_metrics());
        txn_server::metrics_endpoint::serve(addr, txn_metrics::Role::Participant, refresh).await?;
    }
    let stats = {
        let n = node.clone();
        let counted = n.clone();
        StatsService::new(
            Arc::new(move || crate::service::stats_to_pb(&n.stats())),
            Arc::new(move || counted.record_counts()),
            auth.clone(),
        )
    };
    let mut builder = server;
    let router = txn_server::serve::base(
        &mut builder,
        health_svc,
        stats,
        KNOWN_FAILPOINTS,
        auth.clone(),
    )?
    .add_service(
        pb::participant_server::ParticipantServer::new(svc.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
    )
    .add_service(
        pb::event_feed_server::EventFeedServer::new(crate::feed_service::FeedService::new(
            node.clone(),
        ))
        .max_decoding_message_size(MAX_MESSAGE_BYTES),
    )
    .add_service(pb::participant_admin_server::ParticipantAdminServer::with_interceptor(svc, auth));
    let served = txn_server::serve::serve(router, listener, node.fatal()).await;
    resolver.abort();
    for f in followers {
        f.abort();
    }
    served?;
    node.sync().await.context("final sync")?;
    Ok(())
}

/// Reaches the coordinators and the peers over gRPC.
struct GrpcTransport {
    /// Every coordinator (several over one etcd log); Resolve goes to `current` and moves on
    /// to the next while one does not answer.
    coordinators: Vec<Channel>,
    current: Arc<std::sync::atomic::AtomicUsize>,
    peers: HashMap<String, Channel>,
}

/// One Resolve at one coordinator.
async fn resolve_at(
    channel: Channel,
    txn: &TxnId,
    commit_point: CommitPoint,
) -> Result<Resolution, TransportError> {
    let resp = pb::coordinator_client::CoordinatorClient::new(channel)
        .resolve(txn_server::trace::request(pb::ResolveRequest {
            txn_id: txn.as_str().to_owned(),
            commit_point: txn_proto::convert::commit_point_to_pb(commit_point) as i32,
            from_coordinator: false,
        }))
        .await
        .map_err(|s| {
            let msg = format!("{:?}: {}", s.code(), s.message());
            match s.code() {
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
                    TransportError::Unreachable(msg)
                }
                _ => TransportError::Other(msg),
            }
        })?;
    Resolution::from_pb(resp.into_inner().decision)
        .map_err(|e| TransportError::Other(e.to_string()))
}

impl ResolveTransport for GrpcTransport {
    /// Asks the current coordinator, then each other one in turn while they are unreachable;
    /// unreachable only if none answers (then the resolver asks the txn's peers).
    fn resolve(
        &self,
        txn: TxnId,
        commit_point: CommitPoint,
    ) -> BoxFuture<'static, Result<Resolution, TransportError>> {
        use std::sync::atomic::Ordering;
        let n = self.coordinators.len();
        let first = self.current.load(Ordering::Relaxed) % n;
        let order: Vec<(usize, Channel)> = (0..n)
            .map(|k| ((first + k) % n, self.coordinators[(first + k) % n].clone()))
            .collect();
        let current = self.current.clone();
        Box::pin(async move {
            let mut last = None;
            for (i, channel) in order {
                match resolve_at(channel, &txn, commit_point).await {
                    Err(TransportError::Unreachable(e)) => last = Some(e),
                    answer => {
                        current.store(i, Ordering::Relaxed);
                        return answer;
                    }
                }
            }
            Err(TransportError::Unreachable(last.unwrap_or_default()))
        })
    }

    fn query_peer(
        &self,
        peer: String,
        txn: TxnId,
    ) -> BoxFuture<'static, Result<TxnStatus, String>> {
        let channel = self.peers.get(&peer).cloned();
        Box::pin(async move {
            let channel = channel.ok_or_else(|| format!("no --peer address for {peer}"))?;
            let mut client = pb::participant_client::ParticipantClient::new(channel);
            let resp = client
                .query_peer(txn_server::trace::request(pb::TxnStateRequest {
                    txn_id: txn.as_str().to_owned(),
                }))
                .await
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
            state_from_pb(resp.into_inner().state).map_err(|e| e.to_string())
        })
    }
}
