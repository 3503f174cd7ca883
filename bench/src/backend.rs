//! `backend`: the plain HTTP/1.1 server at the end of every path `mesh` measures
//! (direct, HAProxy pair, wardmesh pair). One thread (a current-thread tokio runtime),
//! keep-alive, a fixed small JSON body; it knows nothing of the mesh.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// A synthetic record (no real patient data), 100-odd bytes like a small API answer.
pub const BODY: &[u8] = b"{\"patient\":\"p-1001\",\"notes\":[{\"date\":\"2026-11-20\",\"text\":\"synthetic session note\"}],\"served_by\":\"bench-backend\"}\n";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to listen (loopback only).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Stop after this many seconds even if nobody stops the process.
    #[arg(long, default_value_t = 1800)]
    pub max_seconds: u64,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.listen.ip().is_loopback(),
        "the backend listens on loopback only (got {})",
        args.listen
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(serve(args.listen, Duration::from_secs(args.max_seconds)))
}

async fn serve(listen: SocketAddr, max: Duration) -> anyhow::Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    println!("backend listening on {}", listener.local_addr()?);
    let deadline = tokio::time::sleep(max);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => return Ok(()),
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    // Out of file descriptors or similar: back off instead of spinning.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                tokio::spawn(async move {
                    let svc = service_fn(|_req: Request<Incoming>| async {
                        let mut resp = Response::new(Full::new(Bytes::from_static(BODY)));
                        resp.headers_mut()
                            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                        Ok::<_, Infallible>(resp)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        }
    }
}
