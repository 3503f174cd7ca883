//! A stand-in for an agent's listeners in the transparent-interception tests.
//!
//! `wardmesh-test-listener NAME=ADDR...` listens on each ADDR; prints `ready` once all
//! are bound. Every accepted connection gets one HTTP/1.1 response whose JSON body says
//! which listener took it, the peer, the local address and the original destination
//! recovered with `SO_ORIGINAL_DST` (`null` when the connection was not redirected):
//!
//! ```text
//! {"listener":"b-inbound","peer":"10.213.1.1:40000","local":"10.213.1.2:7143",
//!  "original_dst":"10.213.1.2:8080","request":{"method":"GET","path":"/",
//!  "headers":{"host":["10.213.1.2:8080"],…}}}
//! ```
//!
//! (`request` is `null` when the client sent no HTTP head within 5 s.) It doubles as the
//! backend app behind an agent in the end-to-end test.
//!
//! It exits by itself after 5 minutes, so a leaked process cannot outlive a test run.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wardmesh_agent::original_dst::original_dst;

const LIFETIME: Duration = Duration::from_secs(300);
const READ_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_HEAD: usize = 16 * 1024;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut listeners = Vec::new();
    for spec in std::env::args().skip(1) {
        let Some((name, addr)) = spec.split_once('=') else {
            bail!("expected NAME=ADDR, got {spec:?}");
        };
        let addr: SocketAddr = addr
            .parse()
            .with_context(|| format!("bad address in {spec:?}"))?;
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        listeners.push((name.to_owned(), listener));
    }
    if listeners.is_empty() {
        bail!("usage: wardmesh-test-listener NAME=ADDR...");
    }
    for (name, listener) in listeners {
        tokio::spawn(serve(name, listener));
    }
    println!("ready");
    tokio::time::sleep(LIFETIME).await;
    eprintln!("lifetime over; exiting");
    Ok(())
}

async fn serve(name: String, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tokio::spawn(answer(name.clone(), stream, peer));
            }
            Err(e) => eprintln!("{name}: accept failed: {e}"),
        }
    }
}

async fn answer(name: String, mut stream: TcpStream, peer: SocketAddr) {
    let local = stream
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let original = match original_dst(&stream) {
        Ok(Some(addr)) => serde_json::Value::String(addr.to_string()),
        Ok(None) => serde_json::Value::Null,
        Err(e) => serde_json::Value::String(format!("error: {e}")),
    };
    // Read the request head (bounded in size and time), then answer and close.
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    let _ = tokio::time::timeout(READ_TIMEOUT, async {
        while head.len() < MAX_HEAD && !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let report = serde_json::json!({
        "listener": name,
        "peer": peer.to_string(),
        "local": local,
        "original_dst": original,
        "request": parse_head(&head),
    })
    .to_string();
    println!("{report}");
    let response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{report}",
        report.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// `{method, path, headers: {lower-case name: [values]}}`, or `null` without a head.
fn parse_head(head: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let Some((method, path)) = lines.next().and_then(|l| {
        let mut words = l.split(' ');
        Some((words.next()?.to_owned(), words.next()?.to_owned()))
    }) else {
        return serde_json::Value::Null;
    };
    let mut headers = serde_json::Map::new();
    for line in lines.take_while(|l| !l.is_empty()) {
        if let Some((k, v)) = line.split_once(':') {
            let values = headers
                .entry(k.trim().to_ascii_lowercase())
                .or_insert_with(|| serde_json::Value::Array(Vec::new()));
            if let serde_json::Value::Array(values) = values {
                values.push(v.trim().into());
            }
        }
    }
    serde_json::json!({ "method": method, "path": path, "headers": headers })
}
