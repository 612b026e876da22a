//! `harness bench`: throughput and latency of transfers at several client counts, measured
//! beside the floor the hardware sets in the same run (an fsync of a small append, a no-op
//! gRPC round trip), with the mean time of each protocol phase scraped from the nodes'
//! metrics, so a figure can be read against what it could at best be.

use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use txn_proto::pb::v1 as pb;
use txn_tests::bank::{self, Outcome, Workload};
use txn_tests::cluster::{self, Cluster, ClusterOptions};

use crate::{INITIAL_BALANCE, QUIET_TIMEOUT, total_fsyncs};
use crate::{pgpeer, scale};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// 2pc, saga, or both.
    #[arg(long, default_value = "both")]
    protocol: String,
    /// Client counts to run, comma-separated.
    #[arg(long, default_value = "1,8,32,64")]
    clients: String,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Number of participants (p1..pN).
    #[arg(long, default_value_t = 3)]
    participants: usize,
    /// Number of accounts, dealt over the participants. Fewer accounts means more lock
    /// conflicts between concurrent transfers (the 2PC locks are held from prepare to commit).
    #[arg(long, default_value_t = BENCH_ACCOUNTS)]
    accounts: usize,
    /// Participants' outcome retention (the services' default; 0 keeps every outcome and
    /// ignores the coordinator's forgets).
    #[arg(long, default_value_t = txn_participant::node::DEFAULT_OUTCOME_RETENTION.as_secs())]
    outcome_retention_secs: u64,
    /// Also measure single-participant transfers (one branch) as the local baseline.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    local_baseline: bool,
    /// Also run the same transfers, at each client count and in the same run, against this
    /// peer: `postgres` starts three throwaway PostgreSQL servers (fsync on) and runs each
    /// transfer with PREPARE TRANSACTION / COMMIT PREPARED, its client forcing the decision
    /// to a local file first.
    #[arg(long, value_enum)]
    peer: Option<Peer>,
    /// Write the results as JSON here: a list of rows with `system` (2pc, saga, local,
    /// postgres), `clients`, `tps`, `p50_ms`, `p99_ms`, `fsyncs_per_txn`, `fsync_p50_ms` and
    /// `rpc_p50_ms`.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Where 2PC txns commit, comma-separated; each is measured in the same run (set per
    /// request): `decision` (a logged decision, presumed abort) or `votes` (at the last
    /// durable YES, nothing logged).
    #[arg(long, default_value = "decision,votes")]
    commit_point: String,
    /// Tokio worker threads of every service (their --worker-threads; 0: one per core).
    #[arg(long, default_value_t = 0)]
    worker_threads: usize,
    /// Where the coordinators keep their log, comma-separated: `sled` (one coordinator, its
    /// own database) and/or `etcd` (a three-member etcd cluster shared by --coordinators).
    /// `--log etcd` measures sled's single coordinator beside it in the same run.
    #[arg(long, default_value = "sled")]
    log: String,
    /// Coordinator counts to measure over etcd, comma-separated (clients spread over them).
    #[arg(long, default_value = "1")]
    coordinators: String,
}

/// Parses `--commit-point`.
fn commit_points(list: &str) -> anyhow::Result<Vec<pb::CommitPoint>> {
    list.split(',')
        .map(|c| match c.trim() {
            "decision" => Ok(pb::CommitPoint::Decision),
            "votes" => Ok(pb::CommitPoint::Votes),
            other => anyhow::bail!("--commit-point: {other:?} is not decision or votes"),
        })
        .collect()
}

/// The name a commit point goes by in the table and the JSON.
fn commit_point_name(c: pb::CommitPoint) -> &'static str {
    match c {
        pb::CommitPoint::Votes => "votes",
        _ => "decision",
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Peer {
    Postgres,
}

/// Samples for each floor measurement.
const FLOOR_SAMPLES: usize = 500;

/// p50 of fsync (fdatasync) after a 100-byte append, in ms, on the cluster's disk.
fn fsync_floor(dir: &std::path::Path) -> anyhow::Result<f64> {
    use std::io::Write;
    let path = dir.join("fsync-floor.tmp");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    let mut samples = Vec::with_capacity(FLOOR_SAMPLES);
    for _ in 0..FLOOR_SAMPLES {
        f.write_all(&[7u8; 100])?;
        let t = Instant::now();
        f.sync_data()?;
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    std::fs::remove_file(&path)?;
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}

/// p50 of a no-op unary gRPC call (a health check) to a participant, in ms.
async fn rpc_floor(url: &str) -> anyhow::Result<f64> {
    let ch = cluster::connect(url).await?;
    let mut c = tonic_health::pb::health_client::HealthClient::new(ch);
    let mut samples = Vec::with_capacity(FLOOR_SAMPLES);
    for _ in 0..FLOOR_SAMPLES {
        let t = Instant::now();
        c.check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await?;
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}

#[derive(serde::Serialize)]
pub(crate) struct BenchRow {
    /// What ran: `2pc`, `saga`, `local` (one participant, one phase) or `postgres` (the peer).
    pub(crate) system: String,
    protocol: String,
    /// For `2pc` rows: `decision` or `votes`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) commit_point: Option<&'static str>,
    pub(crate) local: bool,
    pub(crate) clients: usize,
    pub(crate) tps: f64,
    pub(crate) p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    fsync_p50_ms: f64,
    rpc_p50_ms: f64,
    fsyncs_per_txn: f64,
    /// CPU time (user + system) per committed txn, in microseconds, of the coordinator, of
    /// every participant together, and of the harness's own clients (not for the peer).
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu_us_per_txn: Option<CpuPerTxn>,
    committed: usize,
    aborted: usize,
    /// Where the coordinators kept their log (`sled`, `etcd`; `postgres` for the peer), and
    /// how many coordinators shared the clients.
    pub(crate) log: String,
    pub(crate) coordinators: usize,
}

#[derive(serde::Serialize, Clone, Copy, Debug)]
struct CpuPerTxn {
    coordinator: f64,
    participants: f64,
    client: f64,
}

/// CPU seconds (user + system) used so far by the coordinator, the participants together, and
/// this process, from /proc (zero where it cannot be read).
fn cpu_seconds(cluster: &Cluster) -> [f64; 3] {
    // The kernel reports clock ticks; 100 per second on every Linux this runs on.
    const TICKS_PER_SECOND: f64 = 100.0;
    let read = |path: String| -> f64 {
        let Ok(stat) = std::fs::read_to_string(path) else {
            return 0.0;
        };
        // Fields after the command name, which is in parentheses and may hold spaces:
        // utime and stime are the 12th and 13th of them.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            return 0.0;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        (tick(11) + tick(12)) / TICKS_PER_SECOND
    };
    let of = |p: Option<u32>| p.map_or(0.0, |pid| read(format!("/proc/{pid}/stat")));
    [
        std::iter::once(&cluster.coordinator)
            .chain(&cluster.more_coordinators)
            .map(|c| of(c.pid()))
            .sum(),
        cluster.participants.iter().map(|p| of(p.pid())).sum(),
        read("/proc/self/stat".into()),
    ]
}

/// Mean time per phase and writes per fsync, from the nodes' metrics (coordinator and p1).
#[derive(Debug, Clone, Copy, Default)]
struct Phases {
    /// (sum seconds, count) of: coordinator prepare phase, coordinator commit phase,
    /// p1 Prepare, p1 Commit; and (writes, fsyncs) of the coordinator and p1.
    coord_prepare: (f64, f64),
    coord_commit: (f64, f64),
    p1_prepare: (f64, f64),
    p1_commit: (f64, f64),
    coord_batch: (f64, f64),
    p1_batch: (f64, f64),
    p1_flush: (f64, f64),
    p1_fdatasync: (f64, f64),
}

impl Phases {
    async fn scrape(cluster: &Cluster) -> anyhow::Result<Self> {
        let get = |text: &str, name: &str| {
            (
                cluster::metric(text, &format!("{name}_sum")).unwrap_or(0.0),
                cluster::metric(text, &format!("{name}_count")).unwrap_or(0.0),
            )
        };
        let coord = match cluster.coordinator.metrics_addr {
            Some(a) => cluster::scrape_metrics(a).await?,
            None => String::new(),
        };
        let p1 = match cluster.participants[0].metrics_addr {
            Some(a) => cluster::scrape_metrics(a).await?,
            None => String::new(),
        };
        Ok(Self {
            coord_prepare: get(&coord, "txn_prepare_seconds"),
            coord_commit: get(&coord, "txn_commit_seconds"),
            p1_prepare: get(&p1, "txn_prepare_seconds"),
            p1_commit: get(&p1, "txn_commit_seconds"),
            coord_batch: get(&coord, "txn_group_commit_batch_writes"),
            p1_batch: get(&p1, "txn_group_commit_batch_writes"),
            p1_flush: get(&p1, "txn_sled_flush_seconds"),
            p1_fdatasync: get(&p1, "txn_fdatasync_seconds"),
        })
    }

    fn since(&self, before: &Self) -> Self {
        let d = |a: (f64, f64), b: (f64, f64)| (a.0 - b.0, a.1 - b.1);
        Self {
            coord_prepare: d(self.coord_prepare, before.coord_prepare),
            coord_commit: d(self.coord_commit, before.coord_commit),
            p1_prepare: d(self.p1_prepare, before.p1_prepare),
            p1_commit: d(self.p1_commit, before.p1_commit),
            coord_batch: d(self.coord_batch, before.coord_batch),
            p1_batch: d(self.p1_batch, before.p1_batch),
            p1_flush: d(self.p1_flush, before.p1_flush),
            p1_fdatasync: d(self.p1_fdatasync, before.p1_fdatasync),
        }
    }
}

impl std::fmt::Display for Phases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |(sum, n): (f64, f64)| if n > 0.0 { sum / n * 1000.0 } else { 0.0 };
        let per = |(sum, n): (f64, f64)| if n > 0.0 { sum / n } else { 0.0 };
        write!(
            f,
            "mean ms: coordinator prepare phase {:.2}, commit phase {:.2}; p1 Prepare {:.2}, Commit {:.2}, sync = sled flush {:.2} + fdatasync {:.2}; writes per fsync: coordinator {:.1}, p1 {:.1}",
            ms(self.coord_prepare),
            ms(self.coord_commit),
            ms(self.p1_prepare),
            ms(self.p1_commit),
            ms(self.p1_flush),
            ms(self.p1_fdatasync),
            per(self.coord_batch),
            per(self.p1_batch)
        )
    }
}

/// Default accounts of `harness bench`: enough that 64 clients rarely want the same account,
/// so the figures measure the transaction manager rather than the workload's lock conflicts.
const BENCH_ACCOUNTS: usize = 10_000;
/// Most accounts `harness bench` seeds.
const MAX_BENCH_ACCOUNTS: usize = 1_000_000;

pub async fn bench(args: BenchArgs) -> anyhow::Result<bool> {
    let protocols = match args.protocol.as_str() {
        "2pc" => vec![bank::Protocol::TwoPhase],
        "saga" => vec![bank::Protocol::Saga],
        "both" => vec![bank::Protocol::TwoPhase, bank::Protocol::Saga],
        other => anyhow::bail!("--protocol: {other:?} is not 2pc, saga or both"),
    };
    let clients: Vec<usize> = args
        .clients
        .split(',')
        .map(|c| c.trim().parse::<usize>().ok().filter(|n| *n > 0))
        .collect::<Option<_>>()
        .with_context(|| {
            format!(
                "--clients: {:?} is not a comma-separated list of positive counts",
                args.clients
            )
        })?;
    anyhow::ensure!(
        args.participants >= 2,
        "--participants: transfers need at least 2"
    );
    if cfg!(debug_assertions) {
        eprintln!(
            "harness bench: this is a debug build; run it with cargo run --release for real figures"
        );
    }
    cluster::ensure_binaries()?;
    anyhow::ensure!(
        (args.participants..=MAX_BENCH_ACCOUNTS).contains(&args.accounts),
        "--accounts: must be between {} and {MAX_BENCH_ACCOUNTS}",
        args.participants
    );
    let points = commit_points(&args.commit_point)?;
    let setups = scale::setups(&args.log, &args.coordinators)?;
    let mut rows = Vec::new();
    let mut peer = None;
    for (i, setup) in setups.iter().enumerate() {
        if setups.len() > 1 {
            println!("--- {setup}");
        }
        // The peer runs beside the first setup only: it has no coordinators to count.
        let with_peer = i == 0 && args.peer.is_some();
        rows.extend(
            bench_setup(
                &args, &clients, &protocols, &points, *setup, with_peer, &mut peer,
            )
            .await?,
        );
    }
    if peer.is_some() {
        print_against_peer(&rows);
    }
    if setups.len() > 1 {
        scale::print_scale_out(&rows);
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&rows)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(true)
}

/// Measures one setup (a log and a number of coordinators) on a cluster of its own.
async fn bench_setup(
    args: &BenchArgs,
    clients: &[usize],
    protocols: &[bank::Protocol],
    points: &[pb::CommitPoint],
    setup: scale::Setup,
    with_peer: bool,
    peer: &mut Option<pgpeer::PgCluster>,
) -> anyhow::Result<Vec<BenchRow>> {
    let mut cluster = Cluster::start(ClusterOptions {
        participants: args.participants,
        metrics: true,
        // By default as in production: outcomes are forgotten and swept (the bench audits
        // nothing per txn).
        outcome_retention_secs: args.outcome_retention_secs,
        coordinator_args: vec!["--worker-threads".into(), args.worker_threads.to_string()],
        participant_args: vec!["--worker-threads".into(), args.worker_threads.to_string()],
        coordinators: setup.coordinators,
        etcd: setup.etcd,
        ..Default::default()
    })
    .await
    .context("starting the cluster")?;
    let mut client = cluster.coordinators()?;
    let accounts = bank::accounts(args.participants, args.accounts);
    bank::seed(&mut client, &accounts, INITIAL_BALANCE).await?;
    let fsync_p50_ms = fsync_floor(cluster.dir())?;
    let rpc_p50_ms = rpc_floor(&cluster.participants[0].url()).await?;
    println!("floor: fsync p50 {fsync_p50_ms:.3} ms, no-op gRPC round trip p50 {rpc_p50_ms:.3} ms");
    if with_peer {
        let pg = pgpeer::PgCluster::start().await?;
        pg.seed(args.accounts, INITIAL_BALANCE).await?;
        println!("peer: {} PostgreSQL servers seeded", pgpeer::PG_SERVERS);
        *peer = Some(pg);
    }
    let mut rows = Vec::new();
    // (protocol, local, commit point): 2PC once per commit point.
    let mut runs: Vec<(bank::Protocol, bool, pb::CommitPoint)> = Vec::new();
    for &p in protocols {
        match p {
            bank::Protocol::TwoPhase => runs.extend(points.iter().map(|c| (p, false, *c))),
            _ => runs.push((p, false, pb::CommitPoint::Unspecified)),
        }
    }
    if args.local_baseline {
        runs.push((bank::Protocol::TwoPhase, true, pb::CommitPoint::Unspecified));
    }
    // Each client count runs every system before the next count, so that the machine's
    // drift over the run falls on all of them alike.
    for &n in clients {
        for &(protocol, local, commit_point) in &runs {
            let before = total_fsyncs(&cluster).await?;
            let phases_before = Phases::scrape(&cluster).await?;
            let cpu_before = cpu_seconds(&cluster);
            let w = Workload {
                clients: n,
                transfers: usize::MAX,
                duration: Duration::from_secs(args.duration),
                overdraft_share: 0.0,
                refusal_share: 0.0,
                seed: n as u64,
                protocol,
                local,
                commit_point,
            };
            let started = Instant::now();
            let history = bank::run(&client, &accounts, INITIAL_BALANCE, &w).await;
            let elapsed = started.elapsed();
            let cpu_after = cpu_seconds(&cluster);
            bank::wait_quiet(&cluster, QUIET_TIMEOUT).await?;
            let fsyncs = total_fsyncs(&cluster).await? - before;
            let phases = Phases::scrape(&cluster).await?.since(&phases_before);
            let tally = bank::tally(&history);
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            for r in history
                .iter()
                .filter(|r| matches!(r.outcome, Outcome::Committed { .. }))
            {
                hist.record(r.latency.as_micros().max(1) as u64)?;
            }
            let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
            let row = BenchRow {
                system: if local { "local" } else { protocol.name() }.into(),
                protocol: protocol.name().into(),
                commit_point: (protocol == bank::Protocol::TwoPhase && !local)
                    .then(|| commit_point_name(commit_point)),
                local,
                clients: n,
                tps: tally.committed as f64 / elapsed.as_secs_f64(),
                p50_ms: ms(0.5),
                p99_ms: ms(0.99),
                p999_ms: ms(0.999),
                fsync_p50_ms,
                rpc_p50_ms,
                fsyncs_per_txn: fsyncs as f64 / tally.committed.max(1) as f64,
                cpu_us_per_txn: {
                    let per = |i: usize| {
                        (cpu_after[i] - cpu_before[i]) * 1e6 / tally.committed.max(1) as f64
                    };
                    Some(CpuPerTxn {
                        coordinator: per(0),
                        participants: per(1),
                        client: per(2),
                    })
                },
                committed: tally.committed,
                aborted: tally.aborted,
                log: setup.log_name().into(),
                coordinators: setup.coordinators,
            };
            print_row(&row);
            println!("      {phases}");
            if let Some(c) = row.cpu_us_per_txn {
                println!(
                    "      CPU us per txn: coordinator {:.0}, participants {:.0}, clients {:.0}",
                    c.coordinator, c.participants, c.client
                );
            }
            rows.push(row);
        }
        if let (true, Some(pg)) = (with_peer, peer.as_ref()) {
            let mut row = peer_run(pg, n, args, fsync_p50_ms, rpc_p50_ms).await?;
            row.log = "postgres".into();
            print_row(&row);
            rows.push(row);
        }
    }
    cluster.shutdown()?;
    Ok(rows)
}

/// A row's name in the table: the system, and for 2PC its commit point.
pub(crate) fn label(row: &BenchRow) -> String {
    match row.commit_point {
        Some(c) => format!("{}/{c}", row.system),
        None => row.system.clone(),
    }
}

fn print_row(row: &BenchRow) {
    println!(
        "{:<13} {:<6} {:<6} x{} clients {:>3}: {:>7.0} txn/s  p50 {:>6.2} ms  p99 {:>6.2} ms  p999 {:>6.2} ms  syncs/txn {:.2}  ({} aborted)",
        label(row),
        if row.local { "local" } else { "2-part" },
        row.log,
        row.coordinators,
        row.clients,
        row.tps,
        row.p50_ms,
        row.p99_ms,
        row.p999_ms,
        row.fsyncs_per_txn,
        row.aborted
    );
}

/// The peer's transfers at `n` clients, as a row like ours.
async fn peer_run(
    pg: &pgpeer::PgCluster,
    n: usize,
    args: &BenchArgs,
    fsync_p50_ms: f64,
    rpc_p50_ms: f64,
) -> anyhow::Result<BenchRow> {
    let (log, log_syncs) = pgpeer::DecisionLog::open(&pg.log_path)?;
    let mut conns = Vec::new();
    for _ in 0..n {
        let mut per = Vec::new();
        for i in 0..pgpeer::PG_SERVERS {
            per.push(pg.connect(i).await?);
        }
        conns.push(per);
    }
    let wal_before = pg.wal_syncs().await?;
    let duration = Duration::from_secs(args.duration);
    let started = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(id, c)| {
            tokio::spawn(pgpeer::run_client(
                c,
                args.accounts,
                id,
                n as u64,
                duration,
                log.clone(),
            ))
        })
        .collect();
    drop(log);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let (mut committed, mut aborted) = (0, 0);
    for t in tasks {
        let r = t.await??;
        committed += r.committed;
        aborted += r.aborted;
        for us in r.latencies_us {
            hist.record(us)?;
        }
    }
    let elapsed = started.elapsed();
    let fsyncs =
        pg.wal_syncs().await? - wal_before + log_syncs.load(std::sync::atomic::Ordering::Relaxed);
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    Ok(BenchRow {
        system: "postgres".into(),
        protocol: "2pc".into(),
        commit_point: None,
        local: false,
        clients: n,
        tps: committed as f64 / elapsed.as_secs_f64(),
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        fsync_p50_ms,
        rpc_p50_ms,
        fsyncs_per_txn: fsyncs as f64 / committed.max(1) as f64,
        cpu_us_per_txn: None,
        committed,
        aborted,
        log: String::new(),
        coordinators: 0,
    })
}

/// Our 2PC against the peer at each client count, as ratios (the targets are: 3x the
/// peer's txn/s with a lower p99 at 64 clients, p50 at most 0.6x the peer's at one client,
/// and at most 0.5 fsyncs per txn at 64 clients), and our p50 in units of the floor.
fn print_against_peer(rows: &[BenchRow]) {
    println!("2pc against the postgres peer, same run:");
    for ours in rows.iter().filter(|r| r.system == "2pc") {
        let Some(peer) = rows
            .iter()
            .find(|r| r.system == "postgres" && r.clients == ours.clients)
        else {
            continue;
        };
        println!(
            "  {:<13} clients {:>3}: txn/s {:.2}x the peer's, p50 {:.2}x, p99 {:.2}x; fsyncs/txn {:.2} (peer {:.2}); p50 = {:.1} fsync floors = {:.1} RPC floors",
            label(ours),
            ours.clients,
            ours.tps / peer.tps.max(f64::MIN_POSITIVE),
            ours.p50_ms / peer.p50_ms.max(f64::MIN_POSITIVE),
            ours.p99_ms / peer.p99_ms.max(f64::MIN_POSITIVE),
            ours.fsyncs_per_txn,
            peer.fsyncs_per_txn,
            ours.p50_ms / ours.fsync_p50_ms.max(f64::MIN_POSITIVE),
            ours.p50_ms / ours.rpc_p50_ms.max(f64::MIN_POSITIVE),
        );
    }
}
