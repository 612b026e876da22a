//! The bench's PostgreSQL peer: the same transfer between two accounts on two servers, run
//! with PostgreSQL's own two-phase commit (PREPARE TRANSACTION / COMMIT PREPARED) by a thin
//! async client that plays coordinator and forces its decision to a local file before it
//! commits. Three throwaway servers, fsync and synchronous_commit on, are started from the
//! PostgreSQL server binaries on this machine and removed afterwards.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{Client, NoTls};

/// Servers in the peer cluster: as many as our bench's participants.
pub const PG_SERVERS: usize = 3;
/// Prepared txns a server may hold at once: above the most clients a bench runs, each of which
/// has at most one txn prepared per server.
const MAX_PREPARED_TXNS: usize = 512;
/// How long a row lock is waited for, the same as a participant's default lock wait, so that a
/// deadlock between two transfers on two servers (which PostgreSQL cannot see) costs the same.
const LOCK_TIMEOUT_MS: u64 = 50;
/// How long a starting server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Decisions waiting to be forced at once; a client waits for room beyond this.
const DECISION_QUEUE: usize = 1_024;
/// Largest amount moved by one transfer (as in the bank's workload).
const MAX_AMOUNT: i64 = 10;

/// Where the server binaries are: PATH first, then the newest /usr/lib/postgresql/N/bin.
fn find_bin(name: &str) -> Option<PathBuf> {
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e.file_name().to_str()?.parse().ok()?;
            Some((version, e.path().join("bin").join(name)))
        })
        .filter(|(_, p)| p.is_file())
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p)
}

/// The uid and gid of the `postgres` account, for running the servers when we are root
/// (PostgreSQL refuses to run as root).
fn postgres_account() -> anyhow::Result<(u32, u32)> {
    let id = |flag: &str| -> anyhow::Result<u32> {
        let out = Command::new("id").args([flag, "postgres"]).output()?;
        anyhow::ensure!(
            out.status.success(),
            "running as root and there is no `postgres` account to run the servers as"
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
    };
    Ok((id("-u")?, id("-g")?))
}

struct Server {
    child: Child,
    port: u16,
}

/// Three running servers in a temporary directory, stopped and removed on drop.
pub struct PgCluster {
    servers: Vec<Server>,
    dir: tempfile::TempDir,
    /// Where the client-side coordinator keeps its decision log.
    pub log_path: PathBuf,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl PgCluster {
    pub async fn start() -> anyhow::Result<Self> {
        let (Some(initdb), Some(postgres)) = (find_bin("initdb"), find_bin("postgres")) else {
            bail!(
                "--peer postgres: no PostgreSQL server binaries (initdb, postgres) on PATH or under /usr/lib/postgresql/*/bin; install them with `apt-get install postgresql` (Debian's postgresql package)"
            );
        };
        let account = if unsafe { libc::geteuid() } == 0 {
            Some(postgres_account()?)
        } else {
            None
        };
        let dir = tempfile::Builder::new().prefix("txn-pgpeer-").tempdir()?;
        // The servers may run as another user: they must reach their own directories.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
        let run = |bin: &Path| {
            let mut cmd = Command::new(bin);
            if let Some((uid, gid)) = account {
                cmd.uid(uid).gid(gid);
            }
            cmd
        };
        let mut servers = Vec::new();
        for i in 0..PG_SERVERS {
            let data = dir.path().join(format!("pg{i}"));
            std::fs::create_dir(&data)?;
            if let Some((uid, gid)) = account {
                std::os::unix::fs::chown(&data, Some(uid), Some(gid))?;
            }
            let out = run(&initdb)
                .arg("-D")
                .arg(&data)
                .args(["-U", "bench", "-A", "trust", "-E", "UTF8", "--locale=C"])
                // Only the set-up is not synced; the server runs with fsync on.
                .arg("--no-sync")
                .output()
                .with_context(|| format!("running {}", initdb.display()))?;
            if !out.status.success() {
                bail!(
                    "initdb of peer server {i} failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            let port = free_port()?;
            let log = std::fs::File::create(dir.path().join(format!("pg{i}.log")))?;
            let child = run(&postgres)
                .arg("-D")
                .arg(&data)
                .arg("-p")
                .arg(port.to_string())
                .arg("-k")
                .arg(&data)
                .args(["-c", "listen_addresses=127.0.0.1"])
                .args(["-c", "fsync=on", "-c", "synchronous_commit=on"])
                .args([
                    "-c",
                    "full_page_writes=on",
                    "-c",
                    "wal_sync_method=fdatasync",
                ])
                .args([
                    "-c",
                    &format!("max_prepared_transactions={MAX_PREPARED_TXNS}"),
                ])
                .args(["-c", &format!("max_connections={}", MAX_PREPARED_TXNS + 16)])
                .args(["-c", &format!("lock_timeout={LOCK_TIMEOUT_MS}ms")])
                .args(["-c", "shared_buffers=128MB"])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting {}", postgres.display()))?;
            servers.push(Server { child, port });
        }
        let log_path = dir.path().join("decisions.log");
        let mut cluster = Self {
            servers,
            dir,
            log_path,
        };
        for i in 0..PG_SERVERS {
            cluster.wait_ready(i).await?;
        }
        Ok(cluster)
    }

    fn conninfo(&self, i: usize) -> String {
        format!(
            "host=127.0.0.1 port={} user=bench dbname=postgres",
            self.servers[i].port
        )
    }

    async fn wait_ready(&mut self, i: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok((client, conn)) = tokio_postgres::connect(&self.conninfo(i), NoTls).await {
                tokio::spawn(conn);
                client.simple_query("SELECT 1").await?;
                return Ok(());
            }
            if let Some(status) = self.servers[i].child.try_wait()? {
                let log = std::fs::read_to_string(self.dir.path().join(format!("pg{i}.log")))
                    .unwrap_or_default();
                bail!(
                    "peer server {i} exited ({status}): {}",
                    log.lines().last().unwrap_or("")
                );
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "peer server {i} did not accept connections within {READY_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn connect(&self, i: usize) -> anyhow::Result<Client> {
        let (client, conn) = tokio_postgres::connect(&self.conninfo(i), NoTls)
            .await
            .with_context(|| format!("connecting to peer server {i}"))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                eprintln!("peer connection: {e}");
            }
        });
        Ok(client)
    }

    /// Creates the accounts table on every server and deals `accounts` accounts over them
    /// (account `k` on server `k % PG_SERVERS`). A debit below zero fails the statement, so
    /// the branch votes NO, as a participant's `min: 0` does.
    pub async fn seed(&self, accounts: usize, balance: i64) -> anyhow::Result<()> {
        for i in 0..PG_SERVERS {
            let c = self.connect(i).await?;
            c.batch_execute(&format!(
                "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0));
                 INSERT INTO accounts SELECT g, {balance} FROM generate_series(0, {last}) g WHERE g % {PG_SERVERS} = {i};
                 CHECKPOINT;",
                last = accounts - 1
            ))
            .await
            .with_context(|| format!("seeding peer server {i}"))?;
        }
        Ok(())
    }

    /// WAL syncs so far, summed over the servers (pg_stat_wal).
    pub async fn wal_syncs(&self) -> anyhow::Result<u64> {
        let mut total = 0;
        for i in 0..PG_SERVERS {
            let c = self.connect(i).await?;
            let row = c.query_one("SELECT wal_sync FROM pg_stat_wal", &[]).await?;
            total += row.get::<_, i64>(0) as u64;
        }
        Ok(total)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        for s in &mut self.servers {
            // SIGINT is PostgreSQL's fast shutdown: it rolls back sessions and stops.
            unsafe {
                libc::kill(s.child.id() as i32, libc::SIGINT);
            }
        }
        for s in &mut self.servers {
            let _ = s.child.wait();
        }
    }
}

/// The client-side coordinator's decision log: commit decisions appended and fdatasynced,
/// many per sync (group commit, as our coordinator does), each answered once durable.
#[derive(Clone)]
pub struct DecisionLog {
    tx: mpsc::Sender<Pending>,
}

type Pending = (String, oneshot::Sender<std::io::Result<()>>);

impl DecisionLog {
    /// Starts the log's writer thread; it ends when every handle is dropped. Returns the log
    /// and a counter of its syncs.
    pub fn open(
        path: &Path,
    ) -> anyhow::Result<(Self, std::sync::Arc<std::sync::atomic::AtomicU64>)> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let (tx, mut rx) = mpsc::channel::<Pending>(DECISION_QUEUE);
        let syncs = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = syncs.clone();
        std::thread::spawn(move || {
            while let Some(first) = rx.blocking_recv() {
                let mut batch = vec![first];
                while batch.len() < DECISION_QUEUE {
                    match rx.try_recv() {
                        Ok(p) => batch.push(p),
                        Err(_) => break,
                    }
                }
                let mut text = String::new();
                for (line, _) in &batch {
                    text.push_str(line);
                    text.push('\n');
                }
                let result = file
                    .write_all(text.as_bytes())
                    .and_then(|_| file.sync_data());
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                for (_, reply) in batch {
                    let r = match &result {
                        Ok(()) => Ok(()),
                        Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
                    };
                    let _ = reply.send(r);
                }
            }
        });
        Ok((Self { tx }, syncs))
    }

    /// Returns once the decision is durable.
    async fn force(&self, line: String) -> anyhow::Result<()> {
        let (reply, done) = oneshot::channel();
        self.tx
            .send((line, reply))
            .await
            .map_err(|_| anyhow::anyhow!("the decision log's writer stopped"))?;
        done.await??;
        Ok(())
    }
}

/// What one client did.
#[derive(Default)]
pub struct ClientResult {
    pub latencies_us: Vec<u64>,
    pub committed: usize,
    pub aborted: usize,
}

/// One closed-loop client: transfers between two accounts on two different servers until
/// `duration` is over, each a 2PC txn of PostgreSQL's with this client as coordinator.
pub async fn run_client(
    conns: Vec<Client>,
    accounts: usize,
    id: usize,
    seed: u64,
    duration: Duration,
    log: DecisionLog,
) -> anyhow::Result<ClientResult> {
    let mut rng = StdRng::seed_from_u64(seed ^ (id as u64).wrapping_mul(0x9e37_79b9));
    let mut out = ClientResult::default();
    let started = Instant::now();
    let mut seq = 0u64;
    while started.elapsed() < duration {
        seq += 1;
        let from = rng.random_range(0..accounts);
        let to = loop {
            let to = rng.random_range(0..accounts);
            if to % PG_SERVERS != from % PG_SERVERS {
                break to;
            }
        };
        let amount = rng.random_range(1..=MAX_AMOUNT);
        let gid = format!("bench_{id}_{seq}");
        let (a, b) = (&conns[from % PG_SERVERS], &conns[to % PG_SERVERS]);
        let t0 = Instant::now();
        let debit = format!(
            "BEGIN; UPDATE accounts SET balance = balance - {amount} WHERE id = {from}; PREPARE TRANSACTION '{gid}'"
        );
        let credit = format!(
            "BEGIN; UPDATE accounts SET balance = balance + {amount} WHERE id = {to}; PREPARE TRANSACTION '{gid}'"
        );
        let (va, vb) = tokio::join!(a.batch_execute(&debit), b.batch_execute(&credit));
        if va.is_ok() && vb.is_ok() {
            log.force(format!("{gid} commit")).await?;
            let commit = format!("COMMIT PREPARED '{gid}'");
            let (ca, cb) = tokio::join!(a.batch_execute(&commit), b.batch_execute(&commit));
            ca.context("COMMIT PREPARED at the debit's server")?;
            cb.context("COMMIT PREPARED at the credit's server")?;
            out.committed += 1;
            out.latencies_us
                .push(t0.elapsed().as_micros().max(1) as u64);
        } else {
            // Presumed abort: nothing to log. A branch that prepared is rolled back; one
            // that failed ends its aborted block.
            for (conn, vote) in [(a, &va), (b, &vb)] {
                let undo = if vote.is_ok() {
                    format!("ROLLBACK PREPARED '{gid}'")
                } else {
                    "ROLLBACK".to_owned()
                };
                conn.batch_execute(&undo)
                    .await
                    .with_context(|| format!("{undo} after a NO"))?;
            }
            out.aborted += 1;
        }
    }
    Ok(out)
}
