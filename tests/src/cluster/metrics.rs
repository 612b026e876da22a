//! Reading a node's Prometheus metrics: one plain HTTP GET of the text exposition, and the
//! value of one sample in it. Enough for the harness's figures and for tests that count a
//! node's writes or fsyncs; it is not a general Prometheus client.

use std::net::SocketAddr;

use anyhow::{Context, bail};

/// Fetches the Prometheus text of a node started with metrics.
pub async fn scrape_metrics(addr: SocketAddr) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to the metrics endpoint {addr}"))?;
    conn.write_all(b"GET /metrics HTTP/1.1\r\nhost: harness\r\n\r\n")
        .await?;
    let mut text = String::new();
    conn.read_to_string(&mut text).await?;
    if !text.starts_with("HTTP/1.1 200") {
        bail!(
            "metrics endpoint {addr} answered: {}",
            text.lines().next().unwrap_or("")
        );
    }
    Ok(text)
}

/// The value of one sample (name with labels, exactly as exposed) in Prometheus text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|v| v.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}
