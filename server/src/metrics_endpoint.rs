//! The `--metrics-addr` endpoint: a minimal HTTP server that answers `GET /metrics` with the
//! text of [`txn_metrics::render`]. Bounded: a few scrapes at once, a small request head, a
//! short read timeout, so a misbehaving scraper cannot tie the service up.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;
use tracing::{debug, info};
use txn_metrics::{Refresh, Role, render};

/// Scrapes served at once; more wait for a slot.
const MAX_METRICS_CONNECTIONS: usize = 16;
/// Largest HTTP request head read from a scraper.
const MAX_REQUEST_HEAD_BYTES: usize = 8 * 1024;
/// A scraper that does not send its request within this time is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds `addr` and serves `GET /metrics` in the background until the process exits.
pub async fn serve(
    addr: std::net::SocketAddr,
    role: Role,
    refresh: Refresh,
) -> anyhow::Result<std::net::SocketAddr> {
    let listener = crate::listen(addr)
        .with_context(|| format!("--metrics-addr {addr}: cannot bind (port in use?)"))?;
    let local = listener.local_addr()?;
    info!(addr = %local, "metrics on http://{local}/metrics");
    let slots = Arc::new(Semaphore::new(MAX_METRICS_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let (conn, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    debug!(error = %e, "metrics accept failed");
                    continue;
                }
            };
            let refresh = refresh.clone();
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(e) = answer(conn, role, &refresh).await {
                    debug!(%peer, error = %e, "metrics request failed");
                }
            });
        }
    });
    Ok(local)
}

async fn answer(
    mut conn: tokio::net::TcpStream,
    role: Role,
    refresh: &Refresh,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let read_head = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST_HEAD_BYTES {
            let n = conn.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    if tokio::time::timeout(REQUEST_TIMEOUT, read_head)
        .await
        .is_err()
    {
        return Ok(());
    }
    let line = String::from_utf8_lossy(&head);
    let line = line.lines().next().unwrap_or("");
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, ctype, body) = if method != "GET" {
        (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_owned(),
        )
    } else if path == "/metrics" || path.starts_with("/metrics?") {
        (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            render(role, refresh),
        )
    } else {
        ("404 Not Found", "text/plain", "try /metrics\n".to_owned())
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(response.as_bytes()).await?;
    conn.shutdown().await
}
