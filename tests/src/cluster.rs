//! A local cluster of real processes: one coordinator (or several over a real etcd cluster)
//! and N participants started from the built binaries, each on its own loopback port with its
//! own data directory and log file.
//! Tests and the harness use it to kill, restart and inspect processes the way an operator
//! would.
//!
//! Layout: this file starts a [`Cluster`] and reaches its nodes. Each node is a [`Proc`]
//! (`process`: start, health check, signals, logs); `binaries` finds or builds the service
//! binaries, and `metrics` reads a node's Prometheus endpoint.

mod binaries;
pub mod etcd;
mod metrics;
mod process;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use tonic::transport::{Channel, Endpoint};
use txn_proto::pb::v1 as pb;
use txn_server::net::{BearerToken, ClientTls, TlsArgs};

pub use binaries::{bin_dir, ensure_binaries};
pub use etcd::EtcdCluster;
pub use metrics::{metric, scrape_metrics};
pub use process::{Proc, READY_TIMEOUT};

use binaries::binary;

/// A loopback port that was free a moment ago, drawn at random below the kernel's ephemeral
/// range (see [`BLOCK_PORTS`]): a port the kernel handed out (port 0) could be taken by some
/// outgoing connection's local end between this check and the node's bind, which a CI run
/// hit ("Address already in use" at a coordinator's start).
pub fn free_port() -> anyhow::Result<u16> {
    free_port_block(1)
}

/// Lowest and highest first port of [`free_port_block`]: below Linux's default ephemeral range
/// (32768 and up), where the kernel picks outgoing connections' local ports, so that no client
/// socket of another process takes a port of the block between the check and the bind.
const BLOCK_PORTS: std::ops::Range<u16> = 20000..32000;

/// The first of `span` consecutive loopback ports that were all free a moment ago, for a
/// script that numbers its nodes' ports from one base (`cluster.sh --base-port`). The base is
/// drawn at random so that tests running side by side rarely draw overlapping blocks.
pub fn free_port_block(span: u16) -> anyhow::Result<u16> {
    use rand::Rng;
    const TRIES: usize = 100;
    let mut rng = rand::rng();
    for _ in 0..TRIES {
        let base = rng.random_range(BLOCK_PORTS.start..BLOCK_PORTS.end - span);
        if (base..base + span).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return Ok(base);
        }
    }
    anyhow::bail!("no block of {span} free loopback ports in {BLOCK_PORTS:?} after {TRIES} tries")
}

/// Options for [`Cluster::start`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub participants: usize,
    /// Extra flags for the coordinator and for every participant.
    pub coordinator_args: Vec<String>,
    pub participant_args: Vec<String>,
    /// Keep the data and logs in this directory instead of a temporary one.
    pub dir: Option<PathBuf>,
    /// Participants served elsewhere (NAME, URL), e.g. a test's in-process fake.
    pub external_participants: Vec<(String, String)>,
    /// Route the link between the coordinator and this participant (both directions)
    /// through fault-injecting proxies (see [`Cluster::proxies`]).
    pub proxy: Option<String>,
    /// Run every node with mutual TLS, using the certificates in this directory (ca.pem and
    /// NAME.pem/NAME.key for coordinator, p1.., and client, as `txnctl certs` writes them).
    pub tls_dir: Option<PathBuf>,
    /// Require this bearer token on the operator services (TXN_ADMIN_TOKEN).
    pub admin_token: Option<String>,
    /// Serve Prometheus metrics from every node, each on a free port (see [`Proc::metrics_addr`]).
    pub metrics: bool,
    /// Environment variables for every node.
    pub env: Vec<(String, String)>,
    /// Participants' `--outcome-retention-secs`. 0 (the default here) keeps every outcome, so
    /// the checkers can audit each txn after a run; the services' own default drops them.
    /// Values below the services' minimum (120 s) go through their hidden test-only flag.
    pub outcome_retention_secs: u64,
    /// Start the read model too, following every participant's feed.
    pub readmodel: bool,
    /// Coordinators to run (more than one needs `etcd`).
    pub coordinators: usize,
    /// Start a three-member etcd cluster and keep the coordinators' log there.
    pub etcd: bool,
    /// The coordinators' `--lease-ttl-secs` over etcd.
    pub lease_ttl_secs: u64,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            participants: 3,
            coordinator_args: Vec::new(),
            participant_args: Vec::new(),
            dir: None,
            external_participants: Vec::new(),
            proxy: None,
            tls_dir: None,
            admin_token: None,
            metrics: false,
            env: Vec::new(),
            outcome_retention_secs: 0,
            readmodel: false,
            coordinators: 1,
            etcd: false,
            lease_ttl_secs: 2,
        }
    }
}

/// Members of the etcd cluster a cluster with `etcd` starts.
pub const ETCD_MEMBERS: usize = 3;

pub struct Cluster {
    /// The first coordinator (`coordinator`, or `c1` of several).
    pub coordinator: Proc,
    /// The other coordinators (`c2`, `c3`, ...), over the same etcd log.
    pub more_coordinators: Vec<Proc>,
    /// The etcd cluster of the coordinators' log, when they keep it there.
    pub etcd: Option<EtcdCluster>,
    pub participants: Vec<Proc>,
    /// The read model, when the options asked for it.
    pub readmodel: Option<Proc>,
    /// The proxies of the proxied link: coordinator -> participant, participant -> coordinator.
    pub proxies: Vec<crate::proxy::Proxy>,
    /// How the test process reaches the nodes.
    tls: ClientTls,
    token: BearerToken,
    dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl Cluster {
    /// Starts N participants (p1..pN) and a coordinator that knows them, each on a free port.
    pub async fn start(opts: ClusterOptions) -> anyhow::Result<Self> {
        let (temp, dir) = match &opts.dir {
            Some(d) => {
                std::fs::create_dir_all(d)?;
                (None, d.clone())
            }
            None => {
                let t = tempfile::Builder::new().prefix("txn-cluster-").tempdir()?;
                let d = t.path().to_path_buf();
                // TXN_KEEP_CLUSTER=1 keeps the data and logs of every cluster, for a post-mortem.
                if std::env::var_os("TXN_KEEP_CLUSTER").is_some() {
                    eprintln!("keeping the cluster in {}", t.keep().display());
                    (None, d)
                } else {
                    (Some(t), d)
                }
            }
        };
        anyhow::ensure!(
            opts.coordinators >= 1 && (opts.coordinators == 1 || opts.etcd),
            "several coordinators need a shared log (etcd)"
        );
        let etcd = match opts.etcd {
            true => Some(EtcdCluster::start(&dir, ETCD_MEMBERS).await?),
            false => None,
        };
        let coord_addrs: Vec<SocketAddr> = (0..opts.coordinators)
            .map(|_| Ok(format!("127.0.0.1:{}", free_port()?).parse()?))
            .collect::<anyhow::Result<_>>()?;
        let coord_addr = coord_addrs[0];
        let all_coordinators = coord_addrs
            .iter()
            .map(|a| format!("http://{a}"))
            .collect::<Vec<_>>()
            .join(",");
        let addrs: Vec<SocketAddr> = (0..opts.participants)
            .map(|_| Ok(format!("127.0.0.1:{}", free_port()?).parse()?))
            .collect::<anyhow::Result<_>>()?;
        let mut proxies = Vec::new();
        let mut proxied: Option<usize> = None;
        if let Some(name) = &opts.proxy {
            let i = (1..=opts.participants)
                .find(|i| format!("p{i}") == *name)
                .with_context(|| format!("cannot proxy unknown participant {name}"))?;
            proxies.push(crate::proxy::Proxy::start(addrs[i - 1]).await?);
            proxies.push(crate::proxy::Proxy::start(coord_addr).await?);
            proxied = Some(i);
        }
        // Mutual TLS: every node presents its own certificate and trusts the cluster CA; the
        // test process itself connects as "client".
        let tls_flags = |name: &str| -> Vec<String> {
            match &opts.tls_dir {
                Some(d) => vec![
                    "--tls-cert".into(),
                    d.join(format!("{name}.pem")).display().to_string(),
                    "--tls-key".into(),
                    d.join(format!("{name}.key")).display().to_string(),
                    "--tls-ca".into(),
                    d.join("ca.pem").display().to_string(),
                ],
                None => Vec::new(),
            }
        };
        let tls = match &opts.tls_dir {
            Some(d) => ClientTls::load(&TlsArgs {
                tls_cert: Some(d.join("client.pem")),
                tls_key: Some(d.join("client.key")),
                tls_ca: Some(d.join("ca.pem")),
            })?,
            None => ClientTls::default(),
        };
        let mut env: Vec<(String, String)> = opts
            .admin_token
            .iter()
            .map(|t| ("TXN_ADMIN_TOKEN".to_owned(), t.clone()))
            .collect();
        env.extend(opts.env.iter().cloned());
        let metrics_flags = || -> anyhow::Result<(Option<SocketAddr>, Vec<String>)> {
            if !opts.metrics {
                return Ok((None, Vec::new()));
            }
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
            Ok((Some(addr), vec!["--metrics-addr".into(), addr.to_string()]))
        };
        let mut participants = Vec::new();
        for i in 1..=opts.participants {
            let name = format!("p{i}");
            let addr = addrs[i - 1];
            let coordinator_url = match proxied {
                Some(j) if j == i => proxies[1].url(),
                _ => all_coordinators.clone(),
            };
            let mut args = vec![
                "--name".into(),
                name.clone(),
                "--listen".into(),
                addr.to_string(),
                "--data-dir".into(),
                dir.join(&name).display().to_string(),
                "--coordinator".into(),
                coordinator_url,
            ];
            for (j, peer) in addrs.iter().enumerate() {
                if j + 1 != i {
                    args.push("--peer".into());
                    args.push(format!("p{}=http://{peer}", j + 1));
                }
            }
            args.extend(tls_flags(&name));
            let (metrics_addr, flags) = metrics_flags()?;
            args.extend(flags);
            match opts.outcome_retention_secs {
                // Shorter than the services allow: the hidden test flag.
                secs @ 1..120 => {
                    args.push("--unsafe-outcome-retention-ms".into());
                    args.push((secs * 1000).to_string());
                }
                secs => {
                    args.push("--outcome-retention-secs".into());
                    args.push(secs.to_string());
                }
            }
            args.extend(opts.participant_args.iter().cloned());
            participants.push(Proc {
                log: dir.join(format!("{name}.log")),
                name,
                addr,
                bin: binary("participant")?,
                args,
                env: env.clone(),
                child: None,
                tls: tls.clone(),
                metrics_addr,
            });
        }
        let mut coordinators = Vec::new();
        for (k, addr) in coord_addrs.iter().enumerate() {
            let name = if opts.coordinators == 1 && etcd.is_none() {
                "coordinator".to_string()
            } else {
                format!("c{}", k + 1)
            };
            let mut args = vec![
                "--listen".into(),
                addr.to_string(),
                "--data-dir".into(),
                dir.join(&name).display().to_string(),
            ];
            for (i, p) in participants.iter().enumerate() {
                let url = match proxied {
                    Some(j) if j == i + 1 => proxies[0].url(),
                    _ => p.url(),
                };
                args.push("--participant".into());
                args.push(format!("{}={url}", p.name));
            }
            for (name, url) in &opts.external_participants {
                args.push("--participant".into());
                args.push(format!("{name}={url}"));
            }
            if let Some(e) = &etcd {
                args.extend([
                    "--log".into(),
                    e.log_spec(),
                    "--lease-ttl-secs".into(),
                    opts.lease_ttl_secs.to_string(),
                ]);
            }
            args.extend(tls_flags(if k == 0 { "coordinator" } else { &name }));
            let (metrics_addr, flags) = metrics_flags()?;
            args.extend(flags);
            args.extend(opts.coordinator_args.iter().cloned());
            coordinators.push(Proc {
                log: dir.join(format!("{name}.log")),
                name,
                addr: *addr,
                bin: binary("coordinator")?,
                args,
                env: env.clone(),
                child: None,
                tls: tls.clone(),
                metrics_addr,
            });
        }
        let readmodel = if opts.readmodel {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
            let mut args = vec![
                "--listen".into(),
                addr.to_string(),
                "--data-dir".into(),
                dir.join("readmodel").display().to_string(),
            ];
            for p in &participants {
                args.push("--participant".into());
                args.push(format!("{}={}", p.name, p.url()));
            }
            args.extend(tls_flags("readmodel"));
            Some(Proc {
                name: "readmodel".into(),
                addr,
                bin: binary("readmodel")?,
                args,
                env: env.clone(),
                log: dir.join("readmodel.log"),
                child: None,
                tls: tls.clone(),
                metrics_addr: None,
            })
        } else {
            None
        };
        let coordinator = coordinators.remove(0);
        let mut cluster = Self {
            coordinator,
            readmodel,
            more_coordinators: coordinators,
            etcd,
            participants,
            proxies,
            tls,
            token: BearerToken::new(opts.admin_token.as_deref()).map_err(anyhow::Error::msg)?,
            dir,
            _temp: temp,
        };
        for p in &mut cluster.participants {
            p.start().await?;
        }
        for c in cluster.coordinators_mut() {
            c.start().await?;
        }
        if let Some(rm) = &mut cluster.readmodel {
            rm.start().await?;
        }
        Ok(cluster)
    }

    /// A lazily connecting channel to one of the nodes, with the cluster's TLS settings.
    pub fn channel(&self, url: &str) -> anyhow::Result<Channel> {
        Ok(self
            .tls
            .endpoint("url", url, Duration::from_secs(1))?
            .connect_lazy())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn participant(&mut self, name: &str) -> &mut Proc {
        self.participants
            .iter_mut()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no participant {name}"))
    }

    /// Every coordinator, the first one first.
    pub fn coordinators_mut(&mut self) -> impl Iterator<Item = &mut Proc> {
        std::iter::once(&mut self.coordinator).chain(self.more_coordinators.iter_mut())
    }

    pub fn coordinator_names(&self) -> Vec<String> {
        std::iter::once(&self.coordinator)
            .chain(&self.more_coordinators)
            .map(|c| c.name.clone())
            .collect()
    }

    /// Clients of every coordinator, failing over from one to the next (see
    /// [`crate::coordinators::Coordinators`]).
    pub fn coordinators(&self) -> anyhow::Result<crate::coordinators::Coordinators> {
        let mut clients = Vec::new();
        for c in std::iter::once(&self.coordinator).chain(&self.more_coordinators) {
            clients.push(pb::coordinator_client::CoordinatorClient::new(
                self.channel(&c.url())?,
            ));
        }
        Ok(crate::coordinators::Coordinators::new(clients))
    }

    pub async fn coordinator_client(
        &self,
    ) -> anyhow::Result<pb::coordinator_client::CoordinatorClient<Channel>> {
        let ch = self.channel(&self.coordinator.url())?;
        Ok(pb::coordinator_client::CoordinatorClient::new(ch))
    }

    pub async fn participant_client(
        &self,
        name: &str,
    ) -> anyhow::Result<pb::participant_client::ParticipantClient<Channel>> {
        let p = self
            .participants
            .iter()
            .find(|p| p.name == name)
            .with_context(|| format!("no participant {name}"))?;
        Ok(pb::participant_client::ParticipantClient::new(
            self.channel(&p.url())?,
        ))
    }

    /// A client of the read model's query service.
    pub fn readmodel_client(
        &self,
    ) -> anyhow::Result<pb::read_model_client::ReadModelClient<Channel>> {
        Ok(pb::read_model_client::ReadModelClient::new(
            self.channel(&self.url_of("readmodel")?)?,
        ))
    }

    /// A client of a participant's change feed.
    pub fn feed_client(
        &self,
        name: &str,
    ) -> anyhow::Result<pb::event_feed_client::EventFeedClient<Channel>> {
        Ok(
            pb::event_feed_client::EventFeedClient::new(self.channel(&self.url_of(name)?)?)
                .max_decoding_message_size(txn_types::types::MAX_MESSAGE_BYTES),
        )
    }

    pub async fn stats_client(
        &self,
        name: &str,
    ) -> anyhow::Result<pb::stats_client::StatsClient<Channel>> {
        let url = self.url_of(name)?;
        Ok(pb::stats_client::StatsClient::new(self.channel(&url)?))
    }

    /// The records `node` (coordinator, p1, ...) holds, by key prefix (Stats.GetRecordCounts).
    pub async fn record_counts(
        &self,
        node: &str,
    ) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
        let url = self.url_of(node)?;
        let counts = pb::stats_client::StatsClient::with_interceptor(
            self.channel(&url)?,
            self.token.clone(),
        )
        .get_record_counts(pb::RecordCountsRequest {})
        .await
        .with_context(|| format!("counting the records of {node}"))?
        .into_inner()
        .counts;
        Ok(counts.into_iter().map(|c| (c.prefix, c.records)).collect())
    }

    /// Arms failpoint `name` on `node` (coordinator, p1, ...) with `action`, e.g. "crash".
    /// A crash point can fire before the answer to this call is sent (work in flight reaches
    /// it at once); the call then fails, but the node is gone, and that counts as armed.
    pub async fn set_failpoint(
        &mut self,
        node: &str,
        name: &str,
        action: &str,
    ) -> anyhow::Result<()> {
        let url = self.url_of(node)?;
        let mut c = pb::failpoints_client::FailpointsClient::with_interceptor(
            self.channel(&url)?,
            self.token.clone(),
        );
        let result = c
            .set_failpoint(pb::SetFailpointRequest {
                name: name.into(),
                action: action.into(),
            })
            .await;
        if let Err(status) = result {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if self.node(node).is_running() {
                return Err(anyhow::Error::new(status).context(format!("arming {name} on {node}")));
            }
        }
        Ok(())
    }

    pub fn url_of(&self, node: &str) -> anyhow::Result<String> {
        if node == "coordinator" {
            return Ok(self.coordinator.url());
        }
        if node == "readmodel" {
            return Ok(self
                .readmodel
                .as_ref()
                .context("this cluster has no read model")?
                .url());
        }
        Ok(std::iter::once(&self.coordinator)
            .chain(&self.more_coordinators)
            .chain(&self.participants)
            .chain(self.etcd.iter().flat_map(|e| &e.members))
            .find(|p| p.name == node)
            .with_context(|| format!("no node {node}"))?
            .url())
    }

    /// A node by name: `coordinator` (the first), `c1`.., `p1`.., or an etcd member `e1`..
    pub fn node(&mut self, node: &str) -> &mut Proc {
        if node == "coordinator" {
            return &mut self.coordinator;
        }
        if node == "readmodel" {
            return self
                .readmodel
                .as_mut()
                .expect("this cluster has no read model");
        }
        let found = std::iter::once(&mut self.coordinator)
            .chain(self.more_coordinators.iter_mut())
            .chain(self.participants.iter_mut())
            .chain(self.etcd.iter_mut().flat_map(|e| e.members.iter_mut()))
            .find(|p| p.name == node);
        found.unwrap_or_else(|| panic!("no node {node}"))
    }

    /// Stops every process with SIGTERM and checks each exited cleanly.
    pub fn shutdown(&mut self) -> anyhow::Result<()> {
        let mut failures = Vec::new();
        for p in self
            .readmodel
            .iter_mut()
            .chain(std::iter::once(&mut self.coordinator))
            .chain(self.more_coordinators.iter_mut())
            .chain(self.participants.iter_mut())
        {
            if p.is_running() {
                let status = p.terminate()?;
                if !status.success() {
                    failures.push(format!("{} exited with {status}", p.name));
                }
            }
        }
        if !failures.is_empty() {
            bail!("unclean shutdown: {}", failures.join("; "));
        }
        Ok(())
    }
}

/// A lazily connecting channel to `url`, shared by clones.
pub async fn connect(url: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(url.to_owned())?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .connect_lazy())
}

/// The value `read` gives once it has stayed the same for `quiet_for` (polled every 100 ms,
/// for at most 10 s): a way to wait until background writes of earlier work have settled
/// before counting the writes of the work under test.
pub async fn when_still<T, F, Fut>(mut read: F, quiet_for: Duration) -> anyhow::Result<T>
where
    T: PartialEq + std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    const POLL: Duration = Duration::from_millis(100);
    let mut last = read().await?;
    let mut still = Duration::ZERO;
    for _ in 0..100 {
        tokio::time::sleep(POLL).await;
        let now = read().await?;
        if now == last {
            still += POLL;
            if still >= quiet_for {
                return Ok(now);
            }
        } else {
            still = Duration::ZERO;
            last = now;
        }
    }
    bail!("still changing after 10 s: {last:?}")
}
