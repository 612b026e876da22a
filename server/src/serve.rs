//! The serving loop both binaries share: the services every server has (health, reflection,
//! statistics, failpoints behind the admin token), the listener with TCP_NODELAY, shutdown on a
//! signal or on a fatal storage error, and the periodic sweepers of records past their
//! retention. Each binary adds its own protocol services and nothing else.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tonic::transport::Server;
use tonic::transport::server::Router;
use tonic::{Request, Response, Status};
use tower::layer::util::{Identity, Stack};
use txn_proto::pb::v1 as pb;

use crate::failpoint::FailpointService;
use crate::net::{AdminAuth, SizeLimitStatus};
use crate::trace::TraceLayer;

/// The layers every server has: trace context, then size-limit statuses.
type Layers = Stack<TraceLayer, Stack<SizeLimitStatus, Identity>>;
/// The server builder of [`crate::net::TlsArgs::server`].
pub type Builder = Server<Layers>;
pub type ServiceRouter = Router<Layers>;

/// Reads a service's statistics for the `Stats` service.
pub type ReadStats = Arc<dyn Fn() -> pb::StatsResponse + Send + Sync>;
/// Counts a service's records by key prefix (prefix, records), by scanning its store.
pub type CountRecords = Arc<dyn Fn() -> Result<Vec<(String, u64)>, String> + Send + Sync>;

/// The `Stats` gRPC service of either binary. Counting records scans the store, so it is an
/// operator's call (behind the admin token, like the other operator services) and runs one
/// at a time.
#[derive(Clone)]
pub struct StatsService {
    read: ReadStats,
    count: CountRecords,
    auth: AdminAuth,
    counting: Arc<tokio::sync::Semaphore>,
}

impl StatsService {
    pub fn new(read: ReadStats, count: CountRecords, auth: AdminAuth) -> Self {
        Self {
            read,
            count,
            auth,
            counting: Arc::new(tokio::sync::Semaphore::new(1)),
        }
    }
}

#[tonic::async_trait]
impl pb::stats_server::Stats for StatsService {
    async fn get_stats(
        &self,
        _request: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        Ok(Response::new((self.read)()))
    }

    async fn get_record_counts(
        &self,
        request: Request<pb::RecordCountsRequest>,
    ) -> Result<Response<pb::RecordCountsResponse>, Status> {
        self.auth.check(Request::from_parts(
            request.metadata().clone(),
            Default::default(),
            (),
        ))?;
        let _one_at_a_time = self
            .counting
            .acquire()
            .await
            .map_err(|_| Status::unavailable("shutting down"))?;
        // A scan: off the runtime's workers, so it cannot stall protocol calls.
        let count = self.count.clone();
        let counts = tokio::task::spawn_blocking(move || count())
            .await
            .map_err(|e| Status::internal(format!("counting records: {e}")))?
            .map_err(Status::unavailable)?;
        Ok(Response::new(pb::RecordCountsResponse {
            counts: counts
                .into_iter()
                .map(|(prefix, records)| pb::PrefixCount { prefix, records })
                .collect(),
        }))
    }
}

/// Counts the records under each of `prefixes` in `store` (for [`CountRecords`]).
pub fn count_records(
    store: &dyn txn_types::store::Store,
    prefixes: &[&[u8]],
) -> Result<Vec<(String, u64)>, String> {
    prefixes
        .iter()
        .map(|p| {
            let n = store.count_prefix(p).map_err(|e| e.to_string())?;
            Ok((String::from_utf8_lossy(p).into_owned(), n as u64))
        })
        .collect()
}

/// The services every server has, before the binary's own: health (reported serving once the
/// binary's services are added, see [`serve`]), reflection, statistics and the failpoints.
pub fn base(
    builder: &mut Builder,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    stats: StatsService,
    failpoints: &'static [&'static str],
    auth: AdminAuth,
) -> anyhow::Result<ServiceRouter> {
    let (reflection_v1, reflection_v1alpha) = crate::net::reflection()?;
    Ok(builder
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(pb::stats_server::StatsServer::new(stats))
        .add_service(pb::failpoints_server::FailpointsServer::with_interceptor(
            FailpointService::new(failpoints),
            auth,
        )))
}

/// Serves `router` on `listener` until SIGTERM or ctrl-c, or until `fatal` says the storage
/// failed. Then fails if it was the storage.
pub async fn serve(
    router: ServiceRouter,
    listener: tokio::net::TcpListener,
    fatal: watch::Receiver<Option<String>>,
) -> anyhow::Result<()> {
    let shutdown = crate::process::stop_requested(fatal.clone());
    router
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
        .context("serving gRPC")?;
    if let Some(reason) = fatal.borrow().clone() {
        tracing::error!(%reason, "stopped on a fatal storage error");
        anyhow::bail!("fatal storage error: {reason}");
    }
    Ok(())
}

/// How often a sweeper of records kept for `retention` runs: every half retention, between
/// 100 ms and `longest`.
pub fn sweep_every(retention: Duration, longest: Duration) -> Duration {
    (retention / 2).clamp(Duration::from_millis(100), longest)
}

/// One step of a sweep: how many records it dropped, and whether more may be due now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    pub dropped: usize,
    pub more: bool,
}

/// Runs a sweep every `every` until the process stops. A sweep is a series of small steps
/// (`step`, each bounded by its page), with a yield to the runtime between them, so a large
/// backlog never holds a worker or a lock for long. A failure is logged and tried again at
/// the next sweep.
pub async fn run_sweeper<
    E: std::fmt::Display,
    F: std::future::Future<Output = Result<Swept, E>>,
>(
    what: &'static str,
    every: Duration,
    mut step: impl FnMut() -> F,
) {
    loop {
        tokio::time::sleep(every).await;
        let mut dropped = 0;
        loop {
            match step().await {
                Ok(s) => {
                    dropped += s.dropped;
                    if !s.more {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "{what} failed; will retry");
                    break;
                }
            }
        }
        if dropped > 0 {
            tracing::debug!(
                records = dropped,
                "{what}: dropped records past their retention"
            );
        }
    }
}
