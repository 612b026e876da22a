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

/// The server builder of [`crate::net::TlsArgs::server`].
pub type Builder = Server<Stack<SizeLimitStatus, Identity>>;
pub type ServiceRouter = Router<Stack<SizeLimitStatus, Identity>>;

/// Reads a service's statistics for the `Stats` service.
pub type ReadStats = Arc<dyn Fn() -> pb::StatsResponse + Send + Sync>;

/// The `Stats` gRPC service of either binary.
#[derive(Clone)]
pub struct StatsService(ReadStats);

impl StatsService {
    pub fn new(read: ReadStats) -> Self {
        Self(read)
    }
}

#[tonic::async_trait]
impl pb::stats_server::Stats for StatsService {
    async fn get_stats(
        &self,
        _request: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        Ok(Response::new((self.0)()))
    }
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

/// Runs `sweep` every `every` until the process stops. `sweep` returns how many records it
/// dropped; a failure is logged and tried again next time.
pub async fn run_sweeper<E: std::fmt::Display>(
    what: &'static str,
    every: Duration,
    mut sweep: impl FnMut() -> Result<usize, E>,
) {
    loop {
        tokio::time::sleep(every).await;
        match sweep() {
            Ok(0) => {}
            Ok(n) => tracing::debug!(records = n, "{what}: dropped records past their retention"),
            Err(e) => tracing::warn!(error = %e, "{what} failed; will retry"),
        }
    }
}
