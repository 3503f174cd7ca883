//! `idle-conns`: many concurrent, idle, keep-alive HTTP/1.1 connections through a proxy.
//! Opens `--count` connections, sends one request on each, prints `HOLDING <open>` and
//! keeps them all open and idle for `--hold-seconds` (the `mesh` parent samples the
//! proxies' memory meanwhile), then sends a second request on every connection and
//! prints one `RESULT {json}` line. Every step has a deadline.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::http1;

const STEP_TIMEOUT: Duration = Duration::from_secs(15);
/// Connections opened at the same time (the rest wait for a slot).
const OPEN_PARALLEL: usize = 64;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The proxy's client-facing listener (wardmesh: the outbound port).
    #[arg(long)]
    pub target: SocketAddr,
    #[arg(long, default_value_t = 1000)]
    pub count: usize,
    #[arg(long, default_value_t = 5)]
    pub hold_seconds: u64,
}

pub fn run(args: &Args) -> anyhow::Result<usize> {
    anyhow::ensure!(
        args.target.ip().is_loopback(),
        "loopback targets only (got {})",
        args.target
    );
    anyhow::ensure!(args.count <= 20_000, "--count is at most 20000");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async {
        let t0 = Instant::now();
        let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(OPEN_PARALLEL));
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..args.count {
            let sem = sem.clone();
            let target = args.target;
            set.spawn(async move {
                let _permit = sem.acquire_owned().await.map_err(|e| e.to_string())?;
                let mut s = tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(target))
                    .await
                    .map_err(|_| "connect timed out".to_string())?
                    .map_err(|e| format!("connect: {e}"))?;
                let _ = s.set_nodelay(true);
                match http1::exchange(&mut s, false, STEP_TIMEOUT).await? {
                    200 => Ok(s),
                    st => Err(format!("first request: status {st}")),
                }
            });
        }
        let mut open = Vec::with_capacity(args.count);
        let mut errors: Vec<String> = Vec::new();
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Ok(s)) => open.push(s),
                Ok(Err(e)) => errors.push(e),
                Err(e) => errors.push(format!("task: {e}")),
            }
        }
        let open_secs = t0.elapsed().as_secs_f64();
        let opened = open.len();
        println!("HOLDING {opened}");
        tokio::time::sleep(Duration::from_secs(args.hold_seconds)).await;
        let mut set = tokio::task::JoinSet::new();
        for mut s in open {
            let sem = sem.clone();
            set.spawn(async move {
                let _permit = sem.acquire_owned().await.map_err(|e| e.to_string())?;
                let r = http1::exchange(&mut s, false, STEP_TIMEOUT).await;
                let _ = s.shutdown().await;
                match r? {
                    200 => Ok(()),
                    st => Err(format!("second request after idling: status {st}")),
                }
            });
        }
        let mut second_ok = 0usize;
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Ok(())) => second_ok += 1,
                Ok(Err(e)) => errors.push(e),
                Err(e) => errors.push(format!("task: {e}")),
            }
        }
        let first: Vec<&String> = errors.iter().take(5).collect();
        println!(
            "RESULT {}",
            json!({
                "requested": args.count,
                "opened": opened,
                "open_secs": open_secs,
                "second_ok": second_ok,
                "errors": errors.len(),
                "first_errors": first,
            })
        );
        Ok(errors.len())
    })
}
