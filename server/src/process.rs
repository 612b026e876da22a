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

/// Logs to stderr, filtered by RUST_LOG (default: info); with `otlp` (the collector's
/// endpoint and this service's name), also exports spans there (see [`crate::trace`]). Must be
/// called inside the service's runtime. Returns the span exporter, to flush at exit.
pub fn init_tracing(
    format: LogFormat,
    otlp: Option<(&str, &str)>,
) -> anyhow::Result<Option<opentelemetry_sdk::trace::SdkTracerProvider>> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let lines = match format {
        LogFormat::Text => lines.boxed(),
        LogFormat::Json => lines
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .boxed(),
    };
    let logs = tracing_subscriber::registry().with(filter).with(lines);
    match otlp {
        None => {
            logs.init();
            Ok(None)
        }
        Some((endpoint, service)) => {
            let (spans, provider) = crate::trace::otlp_layer(endpoint, service)?;
            logs.with(spans).init();
            Ok(Some(provider))
        }
    }
}

/// A service's `main`: its runtime, its logging (and span export, with `otlp_endpoint`), then
/// `run` until it returns; exits 1 with one line on stderr if anything fails.
pub fn run_service<F>(
    binary: &str,
    service: &str,
    worker_threads: usize,
    format: LogFormat,
    otlp_endpoint: Option<&str>,
    run: impl FnOnce() -> F,
) where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    let fail = |what: String| -> ! {
        eprintln!("{binary}: {what}");
        std::process::exit(1);
    };
    let runtime = runtime(worker_threads)
        .unwrap_or_else(|e| fail(format!("starting the async runtime: {e}")));
    let exporter = {
        let _inside = runtime.enter();
        init_tracing(format, otlp_endpoint.map(|e| (e, service)))
            .unwrap_or_else(|e| fail(format!("{e:#}")))
    };
    let result = runtime.block_on(run());
    if let Some(exporter) = exporter
        && let Err(e) = exporter.shutdown()
    {
        eprintln!("{binary}: exporting the last spans: {e}");
    }
    if let Err(e) = result {
        fail(format!("{e:#}"));
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
