//! Traces across services. With `--otlp-endpoint`, a service exports its spans through
//! OpenTelemetry's OTLP exporter (gRPC), and every call it makes carries the W3C trace context
//! of the span it is made from (`traceparent` in the gRPC metadata), so one client request is
//! one trace from the client through the coordinator to every participant call: Prepares,
//! Commits and their retries, saga steps, recovery, each span named after its txn. Every call
//! it serves continues the trace it carries ([`TraceLayer`]). Without the flag nothing is
//! installed: no exporter, no propagation, no span bookkeeping beyond the log's.
//!
//! Prepares and Commits are batched per participant, so one PrepareBatch or CommitBatch call
//! serves many txns: its span is linked to each of their traces ([`batch_span`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Whether this process exports spans (and so propagates their context).
static ENABLED: AtomicBool = AtomicBool::new(false);

/// How long finished spans wait to be exported together: short, so a trace shows up at the
/// collector soon after its txn, and one export per interval carries many spans.
pub const EXPORT_INTERVAL: Duration = Duration::from_millis(500);
/// Finished spans waiting for export; beyond it new ones are dropped (a collector that does
/// not keep up must not grow the service's memory).
pub const MAX_QUEUED_SPANS: usize = 8_192;
/// Deadline of one export call to the collector.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether spans are exported.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The exporter of `service`'s spans to the OTLP/gRPC collector at `endpoint`, as a tracing
/// layer, and its provider (to flush at exit). Must be called inside the service's tokio
/// runtime: the exporter's calls run on it.
pub fn otlp_layer<S>(
    endpoint: &str,
    service: &str,
) -> anyhow::Result<(
    tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>,
    SdkTracerProvider,
)>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| anyhow::anyhow!("--otlp-endpoint {endpoint}: {e}"))?;
    let exporter = OnRuntime {
        inner: exporter,
        runtime: tokio::runtime::Handle::current(),
    };
    let batch = BatchConfigBuilder::default()
        .with_scheduled_delay(EXPORT_INTERVAL)
        .with_max_queue_size(MAX_QUEUED_SPANS)
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(
            BatchSpanProcessor::builder(exporter)
                .with_batch_config(batch)
                .build(),
        )
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name(service.to_owned())
                .build(),
        )
        .build();
    let tracer = provider.tracer("txnkit");
    ENABLED.store(true, Ordering::Relaxed);
    Ok((tracing_opentelemetry::layer().with_tracer(tracer), provider))
}

/// The OTLP exporter, run on the service's runtime. The batch processor exports from a thread
/// of its own, which has no tokio runtime, and tonic needs one.
#[derive(Debug)]
struct OnRuntime {
    inner: opentelemetry_otlp::SpanExporter,
    runtime: tokio::runtime::Handle,
}

impl opentelemetry_sdk::trace::SpanExporter for OnRuntime {
    async fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        self.runtime.block_on(self.inner.export(batch))
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
            value.parse(),
        ) {
            self.0.insert(k, v);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Adds the current span's trace context to a call's metadata (nothing when not exporting).
pub fn inject(metadata: &mut tonic::metadata::MetadataMap) {
    if !enabled() {
        return;
    }
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut MetadataInjector(metadata));
}

/// A request carrying the trace context of the current span.
pub fn request<T>(message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    inject(r.metadata_mut());
    r
}

/// The span of one batched call (`call`: "prepare_batch", "commit_batch"), which serves many
/// txns: the child of the one txn it carries, or, for many, linked to each of theirs.
pub fn batch_span(call: &'static str, participant: &str, txns: &[&tracing::Span]) -> tracing::Span {
    let span = match txns {
        [one] => {
            tracing::info_span!(parent: *one, "batch", otel.name = call, participant, txns = 1)
        }
        _ => tracing::info_span!(
            parent: None,
            "batch",
            otel.name = call,
            participant,
            txns = txns.len()
        ),
    };
    if enabled() && txns.len() > 1 {
        for t in txns {
            let cx = t.context();
            let sc = cx.span().span_context().clone();
            if sc.is_valid() {
                span.add_link(sc);
            }
        }
    }
    span
}

/// Server layer: each call is served in a span that continues the trace the call carries.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceLayer;

impl<S> tower::Layer<S> for TraceLayer {
    type Service = TraceService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TraceService(inner)
    }
}

#[derive(Debug, Clone)]
pub struct TraceService<S>(S);

impl<S, B> tower::Service<http::Request<B>> for TraceService<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::Either<S::Future, tracing::instrument::Instrumented<S::Future>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if !enabled() {
            return futures::future::Either::Left(self.0.call(req));
        }
        let parent = TraceContextPropagator::new().extract(&HeaderExtractor(req.headers()));
        let path = req.uri().path().to_owned();
        let span = tracing::info_span!("rpc", otel.name = %path, otel.kind = "server");
        // Only fails for a span already closed, which this one is not.
        let _ = span.set_parent(parent);
        let fut = span.in_scope(|| self.0.call(req));
        futures::future::Either::Right(fut.instrument(span))
    }
}
