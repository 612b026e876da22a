//! Shared by the coordinator and the participants: the wire protocol (generated from
//! `proto/txn/v1/*.proto`), the domain types with checked conversions from it, the durable
//! record format, and the storage layer with group commit.
//!
//! Layout:
//! - [`pb`]: generated protobuf messages and tonic clients/servers.
//! - [`types`]: validated domain types (txn id, participant id, operations, votes, decisions)
//!   and the size limits that bound them.
//! - [`record`]: checksummed encoding of durable records.
//! - [`store`]: the [`store::Store`] trait with a sled implementation and an in-memory one
//!   that can simulate a crash.
//! - [`failpoint`]: named crash points for fault-injection tests.
//! - [`net`]: TLS / mutual TLS, the admin bearer token, gRPC reflection.
//! - [`metrics`]: the Prometheus endpoint.
//! - [`durable`]: the group-commit flusher that turns "written" into "fsynced" for many
//!   writers at once.

pub mod durable;
pub mod failpoint;
pub mod metrics;
pub mod net;
pub mod process;
pub mod record;
pub mod store;
pub mod types;

/// Generated protobuf code.
pub mod pb {
    /// Wire messages and services.
    pub mod v1 {
        tonic::include_proto!("txn.v1");
    }
    /// Durable record formats.
    pub mod records {
        pub mod v1 {
            tonic::include_proto!("txn.records.v1");
        }
    }
    pub use records::v1 as rec;
}

/// Milliseconds since the Unix epoch, for timestamps shown to operators. Never used for
/// timeouts, which run on the monotonic clock.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

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
