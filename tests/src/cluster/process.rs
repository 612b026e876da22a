//! One process of a test cluster, as an operator sees it: started from its binary with its
//! own log file, ready once it answers its health check, and stopped the ways a real process
//! stops (SIGKILL like a crash, SIGTERM for a clean exit, SIGSTOP and SIGCONT for a pause).
//! A [`Proc`] kills its process when dropped, and on Linux the process also dies with the
//! test that started it, so no cluster outlives its test.

use std::fs::OpenOptions;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use txn_server::net::ClientTls;

/// How long a started process may take to answer its health check.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Pause between health probes while waiting for a process.
const READY_POLL: Duration = Duration::from_millis(20);

/// One process of the cluster.
pub struct Proc {
    pub name: String,
    pub addr: SocketAddr,
    pub(super) bin: PathBuf,
    pub(super) args: Vec<String>,
    pub(super) env: Vec<(String, String)>,
    pub(super) log: PathBuf,
    pub(super) child: Option<Child>,
    /// TLS settings of the health probe.
    pub(super) tls: ClientTls,
    /// Where the node serves Prometheus metrics, when the cluster was started with them.
    pub metrics_addr: Option<SocketAddr>,
}

impl Proc {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Sets an environment variable for the next start.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.into(), value.into()));
    }

    pub fn clear_env(&mut self, key: &str) {
        self.env.retain(|(k, _)| k != key);
    }

    /// Starts the process and waits until it answers its health check.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        self.spawn()?;
        self.wait_ready().await
    }

    /// Starts the process without waiting for it (see [`Proc::wait_ready`]): for members of a
    /// group that answers only once enough of them run.
    pub fn spawn(&mut self) -> anyhow::Result<()> {
        if self.is_running() {
            bail!("{} is already running", self.name);
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let mut cmd = Command::new(&self.bin);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        // If the test or harness dies without cleaning up (ctrl-c, a timeout's SIGKILL), its
        // cluster must not outlive it.
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl with PR_SET_PDEATHSIG only sets a flag on the child; it is
            // async-signal-safe, as pre_exec requires.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until the process answers its health check.
    pub async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            if !self.is_running() {
                bail!(
                    "{} exited during start; log:\n{}",
                    self.name,
                    self.log_tail(20)
                );
            }
            if health_ok(&self.url(), &self.tls).await {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "{} did not pass its health check within {:?}; log:\n{}",
                    self.name,
                    READY_TIMEOUT,
                    self.log_tail(20)
                );
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// SIGSTOP: the process stays alive but answers nothing.
    ///
    /// Returns once every thread of the process is stopped: the signal is delivered
    /// asynchronously, and on a loaded machine a thread may otherwise still answer a call sent
    /// after this returns.
    pub fn pause(&mut self) -> anyhow::Result<()> {
        let pid = self.pid().context("process is not running")?;
        signal(pid, "STOP")?;
        let started = std::time::Instant::now();
        while !all_threads_stopped(pid) {
            if started.elapsed() > STOP_TIMEOUT {
                bail!("process {pid} not stopped {STOP_TIMEOUT:?} after SIGSTOP");
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        Ok(())
    }

    /// SIGCONT after [`Proc::pause`].
    pub fn resume(&mut self) -> anyhow::Result<()> {
        signal(self.pid().context("process is not running")?, "CONT")
    }

    /// SIGKILL, like a crash: nothing is flushed, nothing cleaned up.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait for a clean exit; returns the exit status.
    pub fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let mut c = self.child.take().context("process is not running")?;
        signal(c.id(), "TERM")?;
        Ok(c.wait()?)
    }

    /// Waits for the process to exit on its own (e.g. after a crash failpoint).
    pub async fn wait_exit(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(c) = &mut self.child
                && let Some(status) = c.try_wait()?
            {
                self.child = None;
                return Ok(status);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{} still running after {timeout:?}", self.name);
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.start().await
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How long a SIGSTOP may take to stop every thread of a process.
const STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether every thread of `pid` is stopped (state `T` in /proc/PID/task/TID/stat).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
            // The state follows the command name, which is in parentheses.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next())
                .is_some_and(|c| c == 'T' || c == 't')
        })
    })
}

fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -{sig} {pid} failed");
    }
    Ok(())
}

async fn health_ok(url: &str, tls: &ClientTls) -> bool {
    let Ok(ep) = tls.endpoint("url", url, Duration::from_millis(200)) else {
        return false;
    };
    let Ok(channel) = ep.connect().await else {
        return false;
    };
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    let req = tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    };
    matches!(
        client.check(req).await.map(|r| r.into_inner().status),
        Ok(s) if s == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    )
}
