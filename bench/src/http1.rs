//! A minimal HTTP/1.1 client for the harness's own checks (smoke requests, idle
//! keep-alive connections, one request per TLS connection): the request line and headers
//! it sends are fixed, and it reads exactly one response (headers + `Content-Length`
//! body). Not a general client: enough to tell 200 from anything else, bounded in size.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Host every path routes on (the wardmesh client agent resolves it to the server agent).
pub const HOST: &str = "backend.bench";
/// The request path: a clinic-style record read.
pub const PATH: &str = "/patients/p-1001/notes";
/// Purpose of use sent with every request (the clinic policy reads it).
pub const PURPOSE: &str = "TREAT";
/// Largest response head accepted.
const MAX_HEAD: usize = 16 * 1024;
/// Largest response body accepted.
const MAX_BODY: usize = 1024 * 1024;

/// The request, keep-alive or `Connection: close`.
pub fn request(close: bool) -> String {
    format!(
        "GET {PATH} HTTP/1.1\r\nHost: {HOST}\r\nX-Purpose-Of-Use: {PURPOSE}\r\nAccept: application/json\r\n{}\r\n",
        if close { "Connection: close\r\n" } else { "" }
    )
}

/// Sends one request and reads one response; returns its status code.
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    close: bool,
    timeout: Duration,
) -> Result<u16, String> {
    match tokio::time::timeout(timeout, exchange_inner(io, close)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no complete response within {timeout:?}")),
    }
}

async fn exchange_inner<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    close: bool,
) -> Result<u16, String> {
    io.write_all(request(close).as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    io.flush().await.map_err(|e| format!("flush: {e}"))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err("response head too large".into());
        }
        let n = io
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed before the response head".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line: {:?}", head.lines().next()))?;
    let length = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .ok_or("response without content-length")?;
    if length > MAX_BODY {
        return Err(format!("response body of {length} bytes is too large"));
    }
    let mut have = buf.len() - head_end;
    while have < length {
        let n = io
            .read(&mut chunk)
            .await
            .map_err(|e| format!("read body: {e}"))?;
        if n == 0 {
            return Err("connection closed inside the body".into());
        }
        have += n;
    }
    Ok(status)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
