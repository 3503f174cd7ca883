//! The TLS listener: each accepted connection takes the serving config current at that
//! moment (so CA rotation needs no restart), records the client's verified SPIFFE ID,
//! and is served by hyper (HTTP/1.1 or HTTP/2).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::{Extension, Router};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use wardmesh_identity::tls::peer_spiffe_id;

use crate::api::PeerIdentity;
use crate::ca_state::CaSnapshot;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HEADER_BUF: usize = 32 * 1024;

pub async fn serve(
    listener: TcpListener,
    ca: watch::Receiver<Arc<CaSnapshot>>,
    router: Router,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            res = listener.accept() => match res {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let acceptor = TlsAcceptor::from(ca.borrow().serving.clone());
        let router = router.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%remote, error = %e, "tls handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%remote, "tls handshake timed out");
                    return;
                }
            };
            let peer = peer_spiffe_id(tls.get_ref().1.peer_certificates()).ok();
            let svc = TowerToHyperService::new(router.layer(Extension(PeerIdentity(peer))));
            let mut builder = Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .max_buf_size(MAX_HEADER_BUF);
            builder.http2().max_header_list_size(MAX_HEADER_BUF as u32);
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), svc);
            if let Err(e) = watcher.watch(conn.into_owned()).await {
                tracing::debug!(%remote, error = %e, "connection ended with error");
            }
        });
    }
    // Refuse new connections at once (not leave them in the kernel's backlog while the
    // open ones drain). Long polls end at their own deadline (≤ 60 s); don't wait for it.
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
}
