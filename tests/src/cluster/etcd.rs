//! A real etcd cluster for the tests: members e1..eN from Debian's `etcd` binary (package
//! `etcd-server`), each on its own loopback ports with its own data directory and log, killed,
//! paused and restarted like any other node. Never a mock: the coordinators' leases, guards and
//! failover run against the real thing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use txn_etcd::EtcdClient;

use super::{Proc, free_port_block};

/// How long a fresh etcd cluster may take to elect a leader and take a write.
const FORM_TIMEOUT: Duration = Duration::from_secs(30);

/// How many times a cluster that did not form is started afresh before the test gives up: a
/// member that lost its port or stalled on a loaded machine should not fail a test of the
/// coordinators.
const FORM_ATTEMPTS: usize = 3;

/// The etcd binary: `ETCD_BIN`, else `etcd` on PATH or in /usr/bin.
pub fn etcd_binary() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("ETCD_BIN") {
        return Ok(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path).chain([PathBuf::from("/usr/bin")]) {
        let candidate = dir.join("etcd");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "etcd not found: install Debian's etcd-server (apt-get install etcd-server; scripts/test.sh does) \
         or set ETCD_BIN"
    )
}

/// An etcd cluster of real processes on loopback.
pub struct EtcdCluster {
    pub members: Vec<Proc>,
}

impl EtcdCluster {
    /// Starts `n` members in `dir` and waits until the cluster takes writes. The members' ports
    /// come from one block below the kernel's ephemeral range, so no outgoing connection of
    /// another process can take one between the check and etcd's bind. A cluster that does not
    /// form is stopped and started again on fresh ports and data directories, up to
    /// [`FORM_ATTEMPTS`] times; the error then carries every member's last log lines.
    pub async fn start(dir: &Path, n: usize) -> anyhow::Result<Self> {
        let mut failures = Vec::new();
        for attempt in 1..=FORM_ATTEMPTS {
            let cluster = Self::spawn_members(&dir.join(format!("etcd-{attempt}")), n)?;
            match cluster.wait_formed().await {
                Ok(()) => return Ok(cluster),
                Err(e) => {
                    let mut cluster = cluster;
                    let logs: Vec<String> = cluster
                        .members
                        .iter_mut()
                        .map(|m| {
                            let state = if m.is_running() { "running" } else { "exited" };
                            format!("{} ({state}): {}", m.name, m.log_tail(5))
                        })
                        .collect();
                    failures.push(format!("attempt {attempt}: {e:#}\n{}", logs.join("\n")));
                    drop(cluster);
                }
            }
        }
        bail!(
            "no etcd cluster of {n} formed in {FORM_ATTEMPTS} attempts:\n{}",
            failures.join("\n")
        )
    }

    fn spawn_members(dir: &Path, n: usize) -> anyhow::Result<Self> {
        let bin = etcd_binary()?;
        let base = free_port_block(2 * n as u16)?;
        let ports: Vec<(u16, u16)> = (0..n as u16)
            .map(|i| (base + 2 * i, base + 2 * i + 1))
            .collect();
        let initial: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("e{}=http://127.0.0.1:{peer}", i + 1))
            .collect();
        let token = format!("txnkit-{}", rand::random::<u64>());
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut members = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let name = format!("e{}", i + 1);
            let args = [
                "--name".to_string(),
                name.clone(),
                "--data-dir".into(),
                dir.join(&name).display().to_string(),
                "--listen-client-urls".into(),
                format!("http://127.0.0.1:{client}"),
                "--advertise-client-urls".into(),
                format!("http://127.0.0.1:{client}"),
                "--listen-peer-urls".into(),
                format!("http://127.0.0.1:{peer}"),
                "--initial-advertise-peer-urls".into(),
                format!("http://127.0.0.1:{peer}"),
                "--initial-cluster".into(),
                initial.join(","),
                "--initial-cluster-state".into(),
                "new".into(),
                "--initial-cluster-token".into(),
                token.clone(),
            ]
            .into_iter()
            .chain(member_flags())
            .collect();
            members.push(Proc {
                name: name.clone(),
                addr: format!("127.0.0.1:{client}").parse()?,
                bin: bin.clone(),
                args,
                env: Vec::new(),
                log: dir.join(format!("{name}.log")),
                child: None,
                tls: Default::default(),
                metrics_addr: None,
            });
        }
        // Every member must run before any can answer: a member alone has no quorum.
        for m in &mut members {
            m.spawn()?;
        }
        Ok(Self { members })
    }

    /// `etcd://HOST:PORT,...` of every member, as the coordinators' `--log` takes it.
    pub fn log_spec(&self) -> String {
        let hosts: Vec<String> = self.members.iter().map(|m| m.addr.to_string()).collect();
        format!("etcd://{}", hosts.join(","))
    }

    pub fn urls(&self) -> Vec<String> {
        self.members.iter().map(|m| m.url()).collect()
    }

    pub fn client(&self) -> anyhow::Result<EtcdClient> {
        Ok(EtcdClient::new(&self.urls(), Duration::from_secs(1))?)
    }

    pub fn member(&mut self, name: &str) -> Option<&mut Proc> {
        self.members.iter_mut().find(|m| m.name == name)
    }

    /// Waits until a write goes through (a leader is elected and a quorum answers).
    pub async fn wait_formed(&self) -> anyhow::Result<()> {
        let client = self.client()?;
        let deadline = tokio::time::Instant::now() + FORM_TIMEOUT;
        loop {
            let txn = txn_etcd::TxnRequest {
                compare: Vec::new(),
                success: vec![txn_etcd::op::put(b"_health".to_vec(), b"1".to_vec(), 0)],
                failure: Vec::new(),
            };
            match client.txn(txn).await {
                Ok(_) => return Ok(()),
                Err(e) if tokio::time::Instant::now() > deadline => {
                    bail!("etcd did not take a write within {FORM_TIMEOUT:?}: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// The index of the member that leads now, as the running members say.
    pub async fn leader(&mut self) -> anyhow::Result<usize> {
        let client = self.client()?;
        let mut ids = Vec::new();
        let mut leader = None;
        for m in &mut self.members {
            if !m.is_running() {
                ids.push(None);
                continue;
            }
            match client.member_status(&m.url()).await {
                Ok(s) => {
                    ids.push(s.header.map(|h| h.member_id));
                    if s.leader != 0 {
                        leader = Some(s.leader);
                    }
                }
                Err(_) => ids.push(None),
            }
        }
        let leader = leader.context("no running member knows a leader")?;
        ids.iter()
            .position(|id| *id == Some(leader))
            .context("the leader is not among the running members")
    }
}

/// Flags for every member: history compacted as it goes and a bounded database (see the
/// README on running etcd for the coordinators). Elections keep etcd's default timing: on a
/// loaded two-core machine shorter timeouts make leaders change for nothing, and every change
/// of leader renews every lease (which only delays a failover, but makes it vary).
fn member_flags() -> Vec<String> {
    [
        "--auto-compaction-mode",
        "revision",
        "--auto-compaction-retention",
        "10000",
        "--quota-backend-bytes",
        "1073741824",
        "--logger",
        "zap",
        "--log-level",
        "warn",
    ]
    .into_iter()
    .map(String::from)
    .collect()
}
