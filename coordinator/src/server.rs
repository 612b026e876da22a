//! Process wiring for the `coordinator` binary: flags, storage, participant channels, gRPC
//! servers, graceful shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use tonic::transport::Endpoint;
use tracing::info;
use txn_proto::pb::v1 as pb;
use txn_server::net::{AdminAuth, BearerToken, ClientTls};
use txn_server::serve::StatsService;
use txn_storage::SledStore;
use txn_types::types::{CommitPoint, MAX_MESSAGE_BYTES, ParticipantId, TxnId};

use crate::log::etcd::{EtcdConfig, EtcdLog};
use crate::log::local::SledLog;
use crate::log::{CoordLog, SharedLog};
use crate::node::{CoordConfig, Coordinator, failpoints};
use crate::service::CoordinatorService;
use txn_coordinator_core::core::{CoordinatorCore, Effect};

#[derive(Debug, Parser)]
#[command(
    name = "coordinator",
    about = "Two-phase commit coordinator with a durable decision log"
)]
pub struct Args {
    /// Threads of the async runtime (0 = one per core).
    #[arg(long, default_value_t = 0, env = "TXN_WORKER_THREADS")]
    pub worker_threads: usize,
    /// Address to serve gRPC on.
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Directory of the coordinator's database (the sled log).
    #[arg(long, default_value = "data/coordinator")]
    pub data_dir: PathBuf,
    /// Where the coordinator's durable state lives: `sled` (its own database in --data-dir,
    /// one coordinator) or `etcd://HOST:PORT,HOST:PORT,...` (an etcd cluster shared by every
    /// coordinator over it: each serves, and takes over the txns of any whose lease expires).
    #[arg(long, default_value = "sled", value_parser = parse_log)]
    pub log: LogSpec,
    /// Prefix of this cluster's keys in etcd (several clusters may share one etcd).
    #[arg(long, default_value = "txnkit/")]
    pub etcd_prefix: String,
    /// TTL of this coordinator's etcd lease: once it stops renewing it (crash, partition,
    /// pause), other coordinators take its txns over after this long (plus up to a second).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub lease_ttl_secs: u64,
    /// The URL other coordinators reach this one at (etcd log); default: http(s)://LISTEN.
    #[arg(long, value_name = "URL")]
    pub advertise_url: Option<String>,
    /// A participant as NAME=URL, e.g. p1=http://127.0.0.1:50061 (repeat for each).
    #[arg(long = "participant", value_name = "NAME=URL", required = true)]
    pub participants: Vec<String>,
    /// Default time to collect every vote before deciding ABORT.
    #[arg(long, default_value_t = 1000)]
    pub prepare_timeout_ms: u64,
    /// Deadline of one Commit or Abort RPC.
    #[arg(long, default_value_t = 2000)]
    pub rpc_timeout_ms: u64,
    /// Largest pause between Commit retries (and the settling calls of a one-phase commit).
    #[arg(long, default_value_t = 1000)]
    pub commit_retry_max_ms: u64,
    /// Largest pause between retries of a saga step's Execute or Compensate.
    #[arg(long, default_value_t = 1000)]
    pub saga_retry_max_ms: u64,
    /// Default deadline of a saga's forward phase; past it the saga compensates.
    #[arg(long, default_value_t = 5000)]
    pub saga_timeout_ms: u64,
    /// Failed Compensate calls before a saga is parked for an operator.
    #[arg(long, default_value_t = 20)]
    pub compensation_budget: u32,
    /// Most txns run at once; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = crate::node::MAX_IN_FLIGHT_TXNS as u64,
          value_parser = clap::value_parser!(u64).range(1..=crate::node::MAX_IN_FLIGHT_TXNS as u64))]
    pub max_in_flight_txns: u64,
    /// How long a client_txn_id is remembered; a request sent again with the key after that
    /// runs as a new one. 0 keeps keys forever.
    #[arg(long, default_value_t = crate::dedup::DEFAULT_CLIENT_KEY_RETENTION.as_secs())]
    pub client_key_retention_secs: u64,
    /// Run single-branch txns through both phases too (by default they commit in one phase,
    /// unless they carry a client_txn_id).
    #[arg(long)]
    pub no_one_phase: bool,
    /// Where a 2PC txn of two or more branches commits, unless its request says: `decision`
    /// (presumed abort, once the decision record is durable here) or `votes` (once every
    /// participant holds a durable YES; nothing is logged here, one forced write less on the
    /// critical path). A txn with a client_txn_id always commits at its decision.
    #[arg(long, default_value = "decision", value_parser = parse_commit_point)]
    pub commit_point: CommitPoint,
    /// Serve Prometheus metrics at http://ADDR/metrics (off when not given).
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Log line format.
    #[arg(long, value_enum, default_value_t = txn_server::process::LogFormat::Text)]
    pub log_format: txn_server::process::LogFormat,
    #[command(flatten)]
    pub tls: txn_server::net::TlsArgs,
    #[command(flatten)]
    pub token: txn_server::net::TokenArgs,
}

/// Every crash point of the coordinator: 2PC and saga.
const ALL_FAILPOINTS: &[&str] = &[
    failpoints::BEFORE_DECISION_DURABLE,
    failpoints::AFTER_DECISION_DURABLE,
    failpoints::AFTER_PARTIAL_COMMIT,
    crate::saga_driver::failpoints::AFTER_STEP_EXECUTED,
    crate::saga_driver::failpoints::AFTER_STEP_LOGGED,
    crate::saga_driver::failpoints::MID_COMPENSATION,
];

/// Time allowed to open a connection to a participant.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

fn parse_participants(
    raw: &[String],
    tls: &ClientTls,
) -> anyhow::Result<HashMap<ParticipantId, Endpoint>> {
    let mut out = HashMap::new();
    for entry in raw {
        let (name, url) = entry
            .split_once('=')
            .with_context(|| format!("--participant {entry:?}: expected NAME=URL"))?;
        let id = ParticipantId::parse("--participant NAME", name)?;
        let endpoint = tls.endpoint("--participant", url, CONNECT_TIMEOUT)?;
        if out.insert(id.clone(), endpoint).is_some() {
            bail!("--participant {name} is given twice");
        }
    }
    Ok(out)
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    txn_server::failpoint::setup_from_env(ALL_FAILPOINTS).map_err(anyhow::Error::msg)?;
    let client_tls = ClientTls::load(&args.tls)?;
    let server = args.tls.server()?;
    let token = args.token.load()?;
    let bearer = BearerToken::new(token.as_deref()).map_err(anyhow::Error::msg)?;
    let auth = AdminAuth::new(token);
    let endpoints = parse_participants(&args.participants, &client_tls)?;
    let listener = txn_server::listen(args.listen)
        .with_context(|| format!("binding {} (is the port already in use?)", args.listen))?;
    let local = listener.local_addr()?;
    let url = args.advertise_url.clone().unwrap_or_else(|| {
        let scheme = if args.tls.tls_cert.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{local}")
    });
    let (log, core, resend) = open_log(&args, url).await?;
    let config = CoordConfig {
        prepare_timeout: Duration::from_millis(args.prepare_timeout_ms),
        rpc_timeout: Duration::from_millis(args.rpc_timeout_ms),
        commit_retry_max: Duration::from_millis(args.commit_retry_max_ms.max(1)),
        saga_timeout: Duration::from_millis(args.saga_timeout_ms),
        saga_retry_max: Duration::from_millis(args.saga_retry_max_ms.max(1)),
        compensation_budget: args.compensation_budget.max(1),
        max_in_flight: args.max_in_flight_txns as usize,
        one_phase: !args.no_one_phase,
        commit_point: args.commit_point,
        ..CoordConfig::default()
    };
    let channels = endpoints
        .into_iter()
        .map(|(id, ep)| {
            let url = ep.uri().to_string().trim_end_matches('/').to_owned();
            (id, (url, ep.connect_lazy()))
        })
        .collect();
    let node = Coordinator::open(log, core, resend, channels, config)
        .await
        .context("recovering the decision log")?;
    node.set_admin_token(bearer);
    node.set_client_tls(client_tls.clone());
    if args.client_key_retention_secs > 0 {
        tokio::spawn(
            node.keys
                .clone()
                .run_client_key_sweeper(Duration::from_secs(args.client_key_retention_secs)),
        );
    }

    let svc = CoordinatorService::new(node.clone());
    let (health, health_svc) = tonic_health::server::health_reporter();
    health
        .set_serving::<pb::coordinator_server::CoordinatorServer<CoordinatorService>>()
        .await;
    info!(addr = %local, epoch = node.stats().epoch, "coordinator listening");
    println!("coordinator listening on {local}");

    if let Some(addr) = args.metrics_addr {
        let n = node.clone();
        let refresh: txn_metrics::Refresh = Arc::new(move || n.refresh_metrics());
        txn_server::metrics_endpoint::serve(addr, txn_metrics::Role::Coordinator, refresh).await?;
    }
    let stats = {
        let n = node.clone();
        StatsService::new(Arc::new(move || crate::service::stats_to_pb(&n.stats())))
    };
    let mut builder = server;
    let router = txn_server::serve::base(
        &mut builder,
        health_svc,
        stats,
        ALL_FAILPOINTS,
        auth.clone(),
    )?
    .add_service(
        pb::coordinator_server::CoordinatorServer::new(svc)
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
    )
    .add_service(pb::admin_server::AdminServer::with_interceptor(
        crate::admin::AdminService::new(node.clone()),
        auth,
    ));
    let served = txn_server::serve::serve(router, listener, node.fatal()).await;
    if served.is_ok() {
        node.sync().await.context("final sync")?;
    }
    if let Some(shared) = node.gc.shared() {
        // Leaving at once lets the others take over now instead of after the lease's TTL.
        if let Err(e) = shared.leave().await {
            tracing::warn!(error = %e, "could not end the etcd lease; it expires by itself");
        }
    }
    served?;
    Ok(())
}

/// Where the coordinator's durable state lives (`--log`).
#[derive(Debug, Clone)]
pub enum LogSpec {
    Sled,
    Etcd(Vec<String>),
}

fn parse_log(s: &str) -> Result<LogSpec, String> {
    if s == "sled" {
        return Ok(LogSpec::Sled);
    }
    if s.starts_with("etcd://") {
        return txn_etcd::parse_endpoints(s)
            .map(LogSpec::Etcd)
            .map_err(|e| e.to_string());
    }
    Err(format!(
        "{s:?}: expected sled or etcd://HOST:PORT,HOST:PORT,..."
    ))
}

/// Opens the log `args` name: the coordinator's core at its new epoch, and the Commits to
/// send again.
async fn open_log(
    args: &Args,
    url: String,
) -> anyhow::Result<(
    Arc<dyn CoordLog>,
    CoordinatorCore,
    Vec<(TxnId, Vec<Effect>)>,
)> {
    match &args.log {
        LogSpec::Sled => {
            let store = SledStore::open(&args.data_dir)
                .with_context(|| format!("opening the database in {}", args.data_dir.display()))?;
            let (log, opened) = SledLog::open(Arc::new(store))
                .await
                .context("recovering the decision log")?;
            Ok((log, opened.core, opened.resend))
        }
        LogSpec::Etcd(endpoints) => {
            let log = EtcdLog::open(EtcdConfig {
                endpoints: endpoints.clone(),
                prefix: args.etcd_prefix.clone(),
                lease_ttl: Duration::from_secs(args.lease_ttl_secs),
                url,
            })
            .await
            .with_context(|| format!("joining the etcd log at {}", endpoints.join(",")))?;
            let core = CoordinatorCore::new(log.epoch());
            Ok((log, core, Vec::new()))
        }
    }
}

fn parse_commit_point(s: &str) -> Result<CommitPoint, String> {
    CommitPoint::parse("--commit-point", s).map_err(|e| e.problem)
}
