//! Connection lifecycles shared by both listeners: the accept loop with graceful drain,
//! and the per-connection supervisor that ends a connection on shutdown (gracefully,
//! then by deadline), when its peer is quarantined, or when its peer's certificate
//! expires.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};
use wardmesh_identity::SpiffeId;

use super::deny;
use crate::identity::DenyList;
use crate::metrics::{Direction, ProxyMetrics, Termination};

/// What a connection task listens to, handed out by [`accept_loop`].
#[derive(Debug, Clone)]
pub(crate) struct Stops {
    /// Shutdown began: finish in-flight work, take no new requests.
    pub(crate) shutdown: CancellationToken,
    /// The drain deadline passed: drop everything now.
    pub(crate) hard: CancellationToken,
    /// Tasks a connection spawns (tunnels after `CONNECT`) join the drain.
    pub(crate) tracker: TaskTracker,
}

/// Per-connection reasons to end early.
#[derive(Debug, Default)]
pub(crate) struct Limits<'a> {
    /// Close at once when this peer appears on the deny-list.
    pub(crate) quarantine: Option<(watch::Receiver<Arc<DenyList>>, &'a SpiffeId)>,
    /// Drain gracefully when the peer's certificate expires.
    pub(crate) peer_expires_in: Option<Duration>,
    /// How long a graceful drain (expiry) may take before the connection is dropped.
    pub(crate) drain: Duration,
}

/// Runs `conn` to completion unless something ends it first. `graceful` starts the
/// connection's own graceful shutdown (hyper: finish in-flight requests, accept no new
/// ones; opaque TCP: nothing, it runs until the deadline). Returns `None` when the
/// connection was dropped rather than finished.
pub(crate) async fn supervise<C, E>(
    conn: C,
    graceful: impl Fn(Pin<&mut C>),
    stops: &Stops,
    limits: Limits<'_>,
    metrics: &ProxyMetrics,
    dir: Direction,
) -> Option<Result<(), E>>
where
    C: Future<Output = Result<(), E>>,
{
    let mut conn = pin!(conn);
    // Far enough to never fire; the branch guards below make it unused anyway.
    let never = Instant::now() + Duration::from_secs(365 * 24 * 3600);
    let expiry = limits.peer_expires_in.map(|d| Instant::now() + d);
    let quarantined = async {
        match limits.quarantine {
            Some((rx, peer)) => deny::quarantined(rx, peer).await,
            None => std::future::pending().await,
        }
    };
    let mut quarantined = pin!(quarantined);
    let mut draining = false;
    let mut drain_deadline: Option<Instant> = None;
    loop {
        tokio::select! {
            r = conn.as_mut() => return Some(r),
            () = stops.shutdown.cancelled(), if !draining => {
                graceful(conn.as_mut());
                draining = true;
            }
            () = tokio::time::sleep_until(expiry.unwrap_or(never)), if !draining && expiry.is_some() => {
                info!(direction = dir.as_str(), "peer certificate expired; draining its connection");
                metrics.terminated(dir, Termination::PeerCertExpired);
                graceful(conn.as_mut());
                draining = true;
                drain_deadline = Some(Instant::now() + limits.drain);
            }
            () = tokio::time::sleep_until(drain_deadline.unwrap_or(never)), if drain_deadline.is_some() => {
                return None;
            }
            () = quarantined.as_mut() => {
                info!(direction = dir.as_str(), "peer quarantined; closing its connection");
                metrics.terminated(dir, Termination::Quarantined);
                return None;
            }
            () = stops.hard.cancelled() => {
                metrics.terminated(dir, Termination::DrainDeadline);
                return None;
            }
        }
    }
}

/// Accepts on `listener` until `shutdown`, handing each connection to `handle` on its
/// own task. Then stops accepting (the socket closes), lets connections finish for up to
/// `drain`, and drops the rest.
pub(crate) async fn accept_loop<F, Fut>(
    listener: TcpListener,
    shutdown: CancellationToken,
    drain: Duration,
    dir: Direction,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr, Stops) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let stops = Stops {
        shutdown: shutdown.clone(),
        hard: CancellationToken::new(),
        tracker: TaskTracker::new(),
    };
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    warn!(direction = dir.as_str(), error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        stops.tracker.spawn(handle(stream, peer, stops.clone()));
    }
    drop(listener);
    stops.tracker.close();
    debug!(
        direction = dir.as_str(),
        open = stops.tracker.len(),
        "listener closed; draining"
    );
    if tokio::time::timeout(drain, stops.tracker.wait())
        .await
        .is_err()
    {
        warn!(
            direction = dir.as_str(),
            open = stops.tracker.len(),
            "connections still open after the drain deadline; closing them"
        );
        stops.hard.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(1), stops.tracker.wait()).await;
    }
}
