//! Server plumbing shared by the `coordinator` and `participant` binaries, with no protocol
//! logic in it: transport security, the admin token, the metrics endpoint, signals and logging,
//! and the failpoint service.
//!
//! Layout:
//! - [`net`]: TLS and mutual TLS, the admin bearer token, gRPC reflection, and the layer that
//!   reports an oversize message as RESOURCE_EXHAUSTED.
//! - [`metrics_endpoint`]: `GET /metrics` on `--metrics-addr`.
//! - [`process`]: shutdown signals, fail-stop on a fatal error, logging, the runtime.
//! - [`failpoint`]: named crash points, armed at start or over gRPC, for fault tests.
//! - [`serve`]: the services and serving loop both binaries share, and the sweeper loop.
//! - [`trace`]: W3C trace context on every call, and the OTLP export of spans.
//! - [`feed`]: following another service's change feed (the events protocol's participants
//!   and the read model are its consumers).

pub mod failpoint;
pub mod feed;
pub mod metrics_endpoint;
pub mod net;
pub mod process;
pub mod serve;
pub mod trace;

/// Most connections waiting to be accepted by a server.
const LISTEN_BACKLOG: u32 = 1024;

/// Binds a server socket with SO_REUSEADDR, so a restarted service gets its port back while
/// connections of its previous life linger in TIME_WAIT.
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}
