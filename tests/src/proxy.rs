//! A fault-injecting TCP proxy for one link between two processes. The harness routes the
//! coordinator's traffic to one participant (and that participant's traffic back to the
//! coordinator) through a pair of these, then partitions the link or makes it lossy.
//!
//! gRPC multiplexes every call of a link over one HTTP/2 connection, so "losing messages" here
//! means cutting connections: every call in flight on a cut connection fails, and the client
//! reconnects. That is how a real lossy network looks to gRPC.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How often a lossy link decides whether to cut its live connections.
const LOSS_TICK: Duration = Duration::from_millis(100);

#[derive(Default)]
struct State {
    partitioned: AtomicBool,
    /// Share of connections to cut (per new connection, and per live one each tick), in
    /// thousandths.
    loss_permille: AtomicU32,
    /// Bumped to cut every live connection.
    generation: AtomicU64,
    cut: AtomicU64,
}

/// A running proxy; stops when dropped.
pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<State>,
    cut_tx: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
    ticker: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let (cut_tx, cut_rx) = watch::channel(0u64);
        let task = {
            let state = state.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((inbound, _)) = listener.accept().await else {
                        continue;
                    };
                    let loss = state.loss_permille.load(Ordering::Relaxed);
                    if state.partitioned.load(Ordering::Relaxed)
                        || (loss > 0 && rand::rng().random_range(0..1000) < loss)
                    {
                        state.cut.fetch_add(1, Ordering::Relaxed);
                        drop(inbound);
                        continue;
                    }
                    let cut_rx = cut_rx.clone();
                    tokio::spawn(pipe(inbound, upstream, cut_rx));
                }
            })
        };
        let ticker = {
            let state = state.clone();
            let cut_tx = cut_tx.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(LOSS_TICK);
                loop {
                    tick.tick().await;
                    let loss = state.loss_permille.load(Ordering::Relaxed);
                    if loss > 0 && rand::rng().random_range(0..1000) < loss {
                        state.cut.fetch_add(1, Ordering::Relaxed);
                        let g = state.generation.fetch_add(1, Ordering::Relaxed) + 1;
                        let _ = cut_tx.send(g);
                    }
                }
            })
        };
        Ok(Self {
            addr,
            state,
            cut_tx,
            task,
            ticker,
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Drops the link: live connections are cut, new ones refused, until [`Proxy::heal`].
    pub fn partition(&self) {
        self.state.partitioned.store(true, Ordering::Relaxed);
        self.cut_all();
    }

    /// Cuts a share `loss` (0..=1) of connections: new ones at connect time, live ones at
    /// random moments.
    pub fn set_loss(&self, loss: f64) {
        let permille = (loss.clamp(0.0, 1.0) * 1000.0) as u32;
        self.state.loss_permille.store(permille, Ordering::Relaxed);
    }

    pub fn heal(&self) {
        self.state.partitioned.store(false, Ordering::Relaxed);
        self.state.loss_permille.store(0, Ordering::Relaxed);
    }

    /// Connections cut or refused so far.
    pub fn cuts(&self) -> u64 {
        self.state.cut.load(Ordering::Relaxed)
    }

    fn cut_all(&self) {
        let g = self.state.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let _ = self.cut_tx.send(g);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.ticker.abort();
        self.cut_all();
    }
}

async fn pipe(mut inbound: TcpStream, upstream: SocketAddr, mut cut: watch::Receiver<u64>) {
    let Ok(mut outbound) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    cut.borrow_and_update();
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
        _ = cut.changed() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn roundtrip(addr: SocketAddr) -> bool {
        let Ok(mut s) = TcpStream::connect(addr).await else {
            return false;
        };
        if s.write_all(b"ping").await.is_err() {
            return false;
        }
        let mut buf = [0u8; 4];
        matches!(
            tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf)).await,
            Ok(Ok(_))
        ) && &buf == b"ping"
    }

    #[tokio::test]
    async fn forwards_partitions_and_heals() {
        let proxy = Proxy::start(echo_server().await).await.unwrap();
        assert!(roundtrip(proxy.addr).await);
        proxy.partition();
        assert!(
            !roundtrip(proxy.addr).await,
            "a partitioned link carries nothing"
        );
        proxy.heal();
        assert!(roundtrip(proxy.addr).await);
        proxy.set_loss(1.0);
        assert!(
            !roundtrip(proxy.addr).await,
            "a fully lossy link carries nothing"
        );
        assert!(proxy.cuts() >= 2);
    }
}
