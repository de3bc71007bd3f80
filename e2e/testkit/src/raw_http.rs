//! HTTP/1.1 spoken by hand over TCP, for what a well-behaved client library never does: send a
//! request and half-close, send a head or a body slowly, hold connections open. Used by the
//! listener tests of the router and the cell.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// How long a read may wait for the peer before the helpers give up.
pub const READ_WAIT: Duration = Duration::from_secs(10);

/// A `GET path` request head with `headers` (name, value), ready to write.
pub fn get(path: &str, headers: &[(&str, &str)]) -> String {
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: cellstack.test\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    head
}

/// Writes `request`, shuts down the write side (a half-close: HTTP/1.1 allows it), and reads
/// until the server closes. The server's whole answer (empty when it sent nothing).
pub async fn half_closed(addr: SocketAddr, request: &str) -> anyhow::Result<String> {
    let mut tcp = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    tcp.write_all(request.as_bytes()).await?;
    tcp.shutdown().await?;
    let mut answer = Vec::new();
    tokio::time::timeout(READ_WAIT, tcp.read_to_end(&mut answer))
        .await
        .with_context(|| format!("{addr} neither answered nor closed within {READ_WAIT:?}"))??;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// The status code of a raw HTTP/1.1 answer (`HTTP/1.1 200 OK...`).
pub fn status(answer: &str) -> Option<u16> {
    answer.split(' ').nth(1)?.parse().ok()
}

/// Waits until the server closes `tcp` (a read returns 0 bytes or fails), up to `within`;
/// the time it took, and what the server sent before closing.
pub async fn until_closed(
    tcp: &mut TcpStream,
    within: Duration,
) -> anyhow::Result<(Duration, String)> {
    let started = Instant::now();
    let mut sent = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = within.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, tcp.read(&mut buf)).await {
            Err(_) => bail!("the connection was still open after {within:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => {
                return Ok((
                    started.elapsed(),
                    String::from_utf8_lossy(&sent).into_owned(),
                ));
            }
            Ok(Ok(n)) => sent.extend_from_slice(&buf[..n]),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_get_head_ends_with_an_empty_line_and_carries_its_headers() {
        let head = super::get("/v1/whoami", &[("x-a", "1")]);
        assert!(head.starts_with("GET /v1/whoami HTTP/1.1\r\n"));
        assert!(head.contains("\r\nx-a: 1\r\n"));
        assert!(head.ends_with("\r\n\r\n"));
        assert_eq!(super::status("HTTP/1.1 404 Not Found\r\n"), Some(404));
        assert_eq!(super::status(""), None);
    }
}
