//! Prometheus metrics: one set per process, rendered as Prometheus text (the
//! endpoint that serves it on `--metrics-addr` is `txn_server::metrics_endpoint`).
//!
//! The counters and histograms live in process-wide statics so the hot paths (group commit,
//! prepare, commit) record with one atomic add and no plumbing. Gauges that describe state
//! (txns in doubt, sagas parked) are not tracked incrementally: the service refreshes them from
//! its own tables right before each scrape, so they can never drift.

use std::sync::{Arc, LazyLock};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum ProtocolLabel {
    TwoPhase,
    /// A single-branch txn the coordinator ran in one phase.
    OnePhase,
    Saga,
    /// A transfer of the events protocol (the coordinator runs its first step only).
    Events,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum OutcomeLabel {
    Committed,
    Aborted,
    Completed,
    Compensated,
    /// Events protocol: the first step committed; the rest follows from the feeds.
    Accepted,
}

/// Label values in snake_case, as Prometheus users expect.
macro_rules! label_values {
    ($t:ty { $($variant:ident => $text:literal),* $(,)? }) => {
        impl EncodeLabelValue for $t {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                use std::fmt::Write;
                encoder.write_str(match self {
                    $(Self::$variant => $text,)*
                })
            }
        }
    };
}

label_values!(ProtocolLabel {
    TwoPhase => "two_phase",
    OnePhase => "one_phase",
    Saga => "saga",
    Events => "events",
});
label_values!(OutcomeLabel {
    Committed => "committed",
    Aborted => "aborted",
    Completed => "completed",
    Compensated => "compensated",
    Accepted => "accepted",
});
label_values!(RetryKind {
    Commit => "commit",
    Resolve => "resolve",
    SagaExecute => "saga_execute",
    SagaCompensate => "saga_compensate",
    OnePhaseSettle => "one_phase_settle",
    SagaEnd => "saga_end",
});
label_values!(RefusalReason {
    DiskFull => "disk_full",
    ReadOnly => "read_only",
    MaxPrepared => "max_prepared",
    MaxLockedKeys => "max_locked_keys",
});

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TxnLabels {
    pub protocol: ProtocolLabel,
    pub outcome: OutcomeLabel,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum RetryKind {
    /// The coordinator re-sent a Commit.
    Commit,
    /// A participant asked the coordinator (or a peer) again about an in-doubt txn.
    Resolve,
    /// A saga step's Execute was retried.
    SagaExecute,
    /// A saga step's Compensate was retried.
    SagaCompensate,
    /// The coordinator re-sent the Abort that settles a one-phase commit whose answer it lost.
    OnePhaseSettle,
    /// The coordinator re-sent a saga's end notice (EndSagas) to a participant.
    SagaEnd,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabels {
    pub kind: RetryKind,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum RefusalReason {
    DiskFull,
    ReadOnly,
    /// The participant holds `--max-prepared-txns` prepared txns.
    MaxPrepared,
    /// The txn's locks would take the lock table past `--max-locked-keys`.
    MaxLockedKeys,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    pub reason: RefusalReason,
}

/// Which service a process runs: decides which metrics it exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Coordinator,
    Participant,
}

fn latency_histogram() -> Histogram {
    // 50 us to about 3.3 s.
    Histogram::new(exponential_buckets(0.00005, 2.0, 17))
}

pub struct Metrics {
    /// Coordinator: txns finished, by protocol and outcome.
    pub txns: Family<TxnLabels, Counter>,
    /// Coordinator: begin to decision (2PC prepare phase). Participant: one Prepare, from
    /// request to durable vote.
    pub prepare_seconds: Histogram,
    /// Coordinator: durable decision to the last Commit ack. Participant: one Commit.
    pub commit_seconds: Histogram,
    /// Writes made durable by one fsync of the group-commit flusher.
    pub group_commit_batch: Histogram,
    /// fsyncs made by the group-commit flusher.
    pub fsyncs: Counter,
    /// The two halves of one durable sync of the sled store: sled's own flush (its buffers
    /// written out with sync_file_range), then fdatasync of its log file.
    pub sled_flush_seconds: Histogram,
    pub fdatasync_seconds: Histogram,
    /// Retries, by kind.
    pub retries: Family<RetryLabels, Counter>,
    /// Participant: Prepares (and saga Executes) refused because of the disk.
    pub refused: Family<RefusalLabels, Counter>,
    /// Txns in doubt: prepared here and undecided (participant); decided commit but not yet
    /// acknowledged by every participant (coordinator).
    pub in_doubt: Gauge,
    /// Coordinator: sagas parked for an operator after their compensation budget ran out.
    pub sagas_parked: Gauge,
    /// Coordinator: sagas running or compensating.
    pub sagas_active: Gauge,
    /// Participant: 1 while new Prepares are refused for lack of disk (full or read-only).
    pub disk_degraded: Gauge,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    txns: Family::default(),
    prepare_seconds: latency_histogram(),
    commit_seconds: latency_histogram(),
    group_commit_batch: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
    fsyncs: Counter::default(),
    sled_flush_seconds: latency_histogram(),
    fdatasync_seconds: latency_histogram(),
    retries: Family::default(),
    refused: Family::default(),
    in_doubt: Gauge::default(),
    sagas_parked: Gauge::default(),
    sagas_active: Gauge::default(),
    disk_degraded: Gauge::default(),
});

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// Counts one retry of `kind`.
pub fn retried(kind: RetryKind) {
    METRICS.retries.get_or_create(&RetryLabels { kind }).inc();
}

fn registry(role: Role) -> Registry {
    let m = metrics();
    let mut r = Registry::with_prefix("txn");
    let (prepare_help, commit_help, in_doubt_help) = match role {
        Role::Coordinator => (
            "Seconds from a 2PC txn's start to its decision",
            "Seconds from a durable commit decision to the last participant's ack",
            "Txns decided commit and not yet acknowledged by every participant",
        ),
        Role::Participant => (
            "Seconds to handle one Prepare, up to the durable vote",
            "Seconds to handle one Commit, up to the durable ack",
            "Txns prepared here whose decision is not known yet",
        ),
    };
    r.register("prepare_seconds", prepare_help, m.prepare_seconds.clone());
    r.register("commit_seconds", commit_help, m.commit_seconds.clone());
    r.register(
        "group_commit_batch_writes",
        "Writes made durable by one fsync",
        m.group_commit_batch.clone(),
    );
    r.register("fsyncs", "fsyncs of the database", m.fsyncs.clone());
    r.register(
        "sled_flush_seconds",
        "Seconds of sled's flush in one durable sync",
        m.sled_flush_seconds.clone(),
    );
    r.register(
        "fdatasync_seconds",
        "Seconds of the fdatasync in one durable sync",
        m.fdatasync_seconds.clone(),
    );
    r.register("retries", "Retried calls, by kind", m.retries.clone());
    r.register("in_doubt_txns", in_doubt_help, m.in_doubt.clone());
    match role {
        Role::Coordinator => {
            r.register(
                "txns",
                "Finished txns by protocol and outcome",
                m.txns.clone(),
            );
            r.register(
                "sagas_parked",
                "Sagas parked for an operator",
                m.sagas_parked.clone(),
            );
            r.register(
                "sagas_active",
                "Sagas running or compensating",
                m.sagas_active.clone(),
            );
        }
        Role::Participant => {
            r.register(
                "prepares_refused",
                "Prepares refused because the disk is full or read-only, or a bound is reached",
                m.refused.clone(),
            );
            r.register(
                "disk_degraded",
                "1 while new Prepares are refused for lack of disk",
                m.disk_degraded.clone(),
            );
        }
    }
    r
}

/// Refreshes state gauges right before a scrape.
pub type Refresh = Arc<dyn Fn() + Send + Sync>;

/// The metrics text, after `refresh`.
pub fn render(role: Role, refresh: &Refresh) -> String {
    refresh();
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry(role))
        .expect("writing to a String cannot fail");
    out
}
