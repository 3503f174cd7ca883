//! The data plane (DESIGN.md §3): the inbound listener (mesh mTLS from other agents to
//! the local app, every request authorized) and the outbound listener (the app's calls,
//! carried over mTLS to the destination's agent with its identity checked).
//!
//! | module      | owns                                                                 |
//! |-------------|----------------------------------------------------------------------|
//! | `config`    | `[inbound]`, `[outbound]`, `allow` (TOML file, `/config_dump`)         |
//! | `inbound`   | accept → sniff → TLS → peer ID → quarantine check → HTTP/TCP to app  |
//! | `outbound`  | accept → original dst → sniff → route → pooled h2 / TCP tunnel       |
//! | `http`      | pure request/response rewriting and the agent's JSON answers         |
//! | `tls`       | per-identity configs, client connect + identity check, error classes |
//! | `pool`      | pooled HTTP/2 connections per (agent, expected ID)                   |
//! | `detect`    | protocol detection from the first bytes                              |
//! | `deny`      | closing connections of peers that become quarantined                 |
//! | `lifecycle` | accept loop with drain; per-connection supervision                   |
//! | `tcp`       | opaque byte copying                                                  |
//!
//! [`bind`] binds both listeners (so a taken port fails start), [`spawn`] starts them;
//! both stop accepting on the shutdown token and drain within their deadline.

pub mod config;
mod deny;
mod detect;
mod http;
mod inbound;
mod lifecycle;
mod outbound;
mod pool;
mod tcp;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use self::config::{DataPlaneConfigError, DataPlaneFile, InboundConfig, OutboundConfig};
pub use self::http::{ERROR_HEADER, PEER_ID_HEADER, REQUEST_ID_HEADER};
use self::inbound::Inbound;
use self::outbound::Outbound;
pub use self::tls::ALPN_TCP;
use self::tls::TlsCache;
use crate::authz::{AuthzHandle, Gate};
use crate::clock::Clock;
use crate::discovery::Discovery;
use crate::identity::IdentityHandle;
use crate::metrics::ProxyMetrics;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot listen on the {what} address {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Config(#[from] DataPlaneConfigError),
    #[error("cannot register data-plane metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Bound, not yet serving, listeners.
#[derive(Debug)]
pub struct Listeners {
    inbound: Option<(TcpListener, InboundConfig)>,
    outbound: Option<(TcpListener, OutboundConfig, Discovery)>,
}

/// Validates the sections that are present and binds their listeners.
pub async fn bind(
    inbound: Option<&InboundConfig>,
    outbound: Option<&OutboundConfig>,
) -> Result<Listeners, ProxyError> {
    let listen = |what: &'static str, addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| ProxyError::Bind { what, addr, source })
    };
    let inbound = match inbound {
        Some(cfg) => {
            cfg.validate()?;
            Some((listen("inbound", cfg.listen).await?, cfg.clone()))
        }
        None => None,
    };
    let outbound = match outbound {
        Some(cfg) => {
            let discovery = cfg.discovery()?;
            Some((
                listen("outbound", cfg.listen).await?,
                cfg.clone(),
                discovery,
            ))
        }
        None => None,
    };
    Ok(Listeners { inbound, outbound })
}

/// A running data plane.
#[derive(Debug)]
pub struct DataPlane {
    inbound_addr: Option<SocketAddr>,
    outbound_addr: Option<SocketAddr>,
    authz: AuthzHandle,
    tasks: Vec<JoinHandle<()>>,
}

impl DataPlane {
    /// The inbound listener's bound address (resolves port 0).
    pub fn inbound_addr(&self) -> Option<SocketAddr> {
        self.inbound_addr
    }

    /// The outbound listener's bound address (resolves port 0).
    pub fn outbound_addr(&self) -> Option<SocketAddr> {
        self.outbound_addr
    }

    /// The authorizer in force; [`AuthzHandle::set`] swaps it for the next request.
    pub fn authorizer(&self) -> &AuthzHandle {
        &self.authz
    }

    /// Waits for both listeners to finish draining (after the shutdown token fired).
    pub async fn join(self) {
        for task in self.tasks {
            if let Err(e) = task.await
                && e.is_panic()
            {
                tracing::error!("data-plane listener panicked");
            }
        }
    }
}

/// Starts serving `listeners`. Connections use the identity `identity` publishes at the
/// time they start; requests use the authorizer `authz` holds when they arrive.
pub fn spawn(
    listeners: Listeners,
    identity: IdentityHandle,
    gate: Gate,
    registry: &Registry,
    clock: Arc<dyn Clock>,
    telemetry: Option<crate::telemetry::Telemetry>,
    shutdown: CancellationToken,
) -> Result<DataPlane, ProxyError> {
    let metrics = ProxyMetrics::register(registry)?;
    let tls = Arc::new(TlsCache::new(identity));
    let mut plane = DataPlane {
        inbound_addr: None,
        outbound_addr: None,
        authz: gate.authz.clone(),
        tasks: Vec::new(),
    };
    if let Some((listener, cfg)) = listeners.inbound {
        let addr = listener.local_addr().ok();
        plane.inbound_addr = addr;
        let permissive = cfg.permissive;
        let inbound = Arc::new(Inbound::new(
            cfg,
            Arc::clone(&tls),
            gate,
            metrics.clone(),
            clock,
            telemetry,
        ));
        plane
            .tasks
            .push(tokio::spawn(inbound.serve(listener, shutdown.clone())));
        info!(addr = ?addr, permissive, "inbound listener started");
    }
    if let Some((listener, cfg, discovery)) = listeners.outbound {
        let addr = listener.local_addr().ok();
        plane.outbound_addr = addr;
        let services = discovery.entries().len();
        let outbound = Arc::new(Outbound::new(cfg, discovery, tls, metrics));
        plane
            .tasks
            .push(tokio::spawn(outbound.serve(listener, shutdown)));
        info!(addr = ?addr, services, "outbound listener started");
    }
    Ok(plane)
}
