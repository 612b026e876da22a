//! What every service process does the same way: logging setup, and deciding when to stop
//! (SIGTERM, ctrl-c, or a fatal storage error) with a bounded graceful shutdown.

use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

/// How long a stopping server waits for clients to close their connections. Every
/// acknowledged write is already durable, so leaving after it loses nothing.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Resolves on SIGTERM or ctrl-c.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}

/// Resolves when the service should stop: on a signal (after which the process exits by
/// itself if open connections hold graceful shutdown up for longer than [`SHUTDOWN_GRACE`]),
/// or when `fatal` reports an error the service must not continue after.
pub async fn stop_requested(mut fatal: watch::Receiver<Option<String>>) {
    // Long-lived calls (feed subscriptions) end on this, so graceful shutdown need not wait
    // for them.
    let _stopping = StopGuard;
    tokio::select! {
        _ = shutdown_signal() => {
            info!("shutting down");
            tokio::spawn(async {
                tokio::time::sleep(SHUTDOWN_GRACE).await;
                warn!("connections still open after {SHUTDOWN_GRACE:?}; exiting anyway");
                std::process::exit(0);
            });
        }
        _ = fatal.wait_for(|f| f.is_some()) => {}
    }
}

fn stopping_tx() -> &'static watch::Sender<bool> {
    static STOPPING: std::sync::OnceLock<watch::Sender<bool>> = std::sync::OnceLock::new();
    STOPPING.get_or_init(|| watch::channel(false).0)
}

/// Becomes true once the service has been asked to stop (see [`stop_requested`]): streams
/// that would otherwise never end (a feed subscription) end on it, so that graceful shutdown
/// does not wait for them.
pub fn stopping() -> watch::Receiver<bool> {
    stopping_tx().subscribe()
}

/// Sets [`stopping`] when [`stop_requested`] returns (or is dropped while the server stops).
struct StopGuard;

impl Drop for StopGuard {
    fn drop(&mut self) {
        stopping_tx().send_replace(true);
    }
}

/// How a service writes its log lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, with the span fields (txn id and so on) included.
    Json,
}

/// Logs to stderr, filtered by RUST_LOG (default: info).
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .init(),
    }
}

/// The async runtime of a service: `worker_threads` threads, or one per core when 0.
pub fn runtime(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if worker_threads > 0 {
        b.worker_threads(worker_threads);
    }
    b.enable_all().build()
}
