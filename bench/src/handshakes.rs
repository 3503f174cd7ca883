//! `handshakes`: new mTLS connections per second at an agent's inbound port. Every
//! connection is a full TLS 1.3 handshake (ECDSA P-256, client certificate verified by
//! the agent against the trust bundle and SPIFFE rules; session resumption off) followed
//! by one HTTP/1.1 request with `Connection: close`, so the agent has done all of its
//! handshake work (including verifying our certificate) before the answer counts.
//! `mesh` runs this as a child process pinned beside the load generator; it prints one
//! `RESULT {json}` line.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use rustls::pki_types::ServerName;
use serde_json::json;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use wardmesh_identity::TrustDomain;
use wardmesh_identity::svid::certs_from_pem;
use wardmesh_identity::tls::{Svid, TrustBundle, mesh_client_config};

use crate::http1;
use crate::stats::{Errors, Summary};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The agent's inbound (mesh mTLS) listener.
    #[arg(long)]
    pub target: std::net::SocketAddr,
    /// PEM roots of the mesh (the control plane's trust bundle).
    #[arg(long)]
    pub bundle: PathBuf,
    /// PEM chain of our SVID (leaf first).
    #[arg(long)]
    pub chain: PathBuf,
    /// PKCS#8 DER private key of our SVID.
    #[arg(long)]
    pub key: PathBuf,
    #[arg(long, default_value = "wardmesh.local")]
    pub trust_domain: String,
    /// Measured seconds (after 1 s of warm-up).
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Connections in flight at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Upper bound on connections, whatever the time.
    #[arg(long, default_value_t = 1_000_000)]
    pub max_ops: usize,
}

pub fn run(args: &Args) -> anyhow::Result<usize> {
    anyhow::ensure!(
        args.target.ip().is_loopback(),
        "loopback targets only (got {})",
        args.target
    );
    let bundle = TrustBundle {
        trust_domain: TrustDomain::new(&args.trust_domain)?,
        roots: certs_from_pem(&std::fs::read_to_string(&args.bundle)?)?,
        revision: 0,
    };
    let chain = certs_from_pem(&std::fs::read_to_string(&args.chain)?)?;
    let svid = Svid::new(chain, std::fs::read(&args.key)?)?;
    let mut cfg = mesh_client_config(&svid, &bundle)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg.resumption = rustls::client::Resumption::disabled();
    let connector = TlsConnector::from(Arc::new(cfg));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(async {
        let warm = drive(&connector, args, Duration::from_secs(1), 1_000).await;
        let errors = Arc::new(Errors::default());
        let started = Instant::now();
        let (hs, total, errs) = drive(
            &connector,
            args,
            Duration::from_secs(args.seconds),
            args.max_ops,
        )
        .await;
        let elapsed = started.elapsed();
        for e in &errs {
            errors.record(e.clone());
        }
        let hs = Summary::new(hs, elapsed);
        let total = Summary::new(total, elapsed);
        let first: Vec<&String> = errs.iter().take(5).collect();
        println!(
            "RESULT {}",
            json!({
                "conns": total.ops,
                "secs": elapsed.as_secs_f64(),
                "per_sec": total.per_second(),
                "handshake_p50_us": hs.p50.as_secs_f64() * 1e6,
                "handshake_p99_us": hs.p99.as_secs_f64() * 1e6,
                "conn_p50_us": total.p50.as_secs_f64() * 1e6,
                "conn_p99_us": total.p99.as_secs_f64() * 1e6,
                "errors": errs.len(),
                "warmup_errors": warm.2.len(),
                "first_errors": first,
            })
        );
        Ok(errors.count())
    })
}

/// Runs `concurrency` loops of connect + handshake + one request for `length`.
async fn drive(
    connector: &TlsConnector,
    args: &Args,
    length: Duration,
    max_ops: usize,
) -> (Vec<Duration>, Vec<Duration>, Vec<String>) {
    let deadline = Instant::now() + length;
    let per_task = max_ops.div_ceil(args.concurrency.max(1));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency.max(1) {
        let connector = connector.clone();
        let target = args.target;
        set.spawn(async move {
            let (mut hs, mut total, mut errs) = (Vec::new(), Vec::new(), Vec::new());
            let mut n = 0;
            while Instant::now() < deadline && n < per_task {
                n += 1;
                let t0 = Instant::now();
                match one(&connector, target).await {
                    Ok(h) => {
                        hs.push(h);
                        total.push(t0.elapsed());
                    }
                    Err(e) => errs.push(e),
                }
            }
            (hs, total, errs)
        });
    }
    let (mut hs, mut total, mut errs) = (Vec::new(), Vec::new(), Vec::new());
    while let Some(r) = set.join_next().await {
        match r {
            Ok((h, t, e)) => {
                hs.extend(h);
                total.extend(t);
                errs.extend(e);
            }
            Err(e) => errs.push(format!("worker failed: {e}")),
        }
    }
    (hs, total, errs)
}

/// One connection; returns the handshake time.
async fn one(connector: &TlsConnector, target: std::net::SocketAddr) -> Result<Duration, String> {
    let t0 = Instant::now();
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(http1::HOST).map_err(|e| e.to_string())?;
    let mut tls = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name.to_owned(), tcp))
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| format!("handshake: {e}"))?;
    let hs = t0.elapsed();
    match http1::exchange(&mut tls, true, CONNECT_TIMEOUT).await? {
        200 => Ok(hs),
        s => Err(format!("status {s}")),
    }
}
