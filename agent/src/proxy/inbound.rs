//! The inbound listener: mesh mTLS from other agents to the local app.
//!
//! Per connection: sniff (TLS or, on a permissive port, plaintext) → TLS accept with the
//! identity published now → peer SPIFFE ID from the verified leaf → refuse quarantined
//! peers → by ALPN, HTTP (`h2`, `http/1.1`: every request authorized, then forwarded to
//! the app over a pooled HTTP/1.1 client) or opaque TCP (`wardmesh-tcp`: identity-only
//! authorization, then bytes). The connection ends when its peer is quarantined or its
//! certificate expires, and drains on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};
use wardmesh_identity::SpiffeId;
use wardmesh_identity::svid::inspect_leaf;

use super::config::InboundConfig;
use super::detect::{self, Detected, Sniffed};
use super::http::{self as h, ProxyBody};
use super::lifecycle::{self, Limits, Stops};
use super::tcp;
use super::tls::{ALPN_H2, ALPN_TCP, TlsCache, classify_io};
use crate::authz::{self, Gate, RequestExtras};
use crate::clock::Clock;
use crate::metrics::{Direction, HandshakeFailure, Outcome, Protocol, ProxyMetrics};
use crate::routes::RouteTable;
use crate::telemetry::Telemetry;
use crate::telemetry::record::{TcpFlow, tcp_verdict};

mod request;

const DIR: Direction = Direction::Inbound;

/// Everything the inbound listener shares between connections.
pub(crate) struct Inbound {
    pub(crate) cfg: InboundConfig,
    pub(crate) tls: Arc<TlsCache>,
    pub(crate) gate: Gate,
    pub(crate) routes: RouteTable,
    pub(crate) metrics: ProxyMetrics,
    pub(crate) clock: Arc<dyn Clock>,
    /// `None`: flow telemetry is off (no `[telemetry]` section).
    pub(crate) telemetry: Option<Telemetry>,
    pub(crate) app_client: Client<HttpConnector, Incoming>,
    pub(crate) h1: hyper::server::conn::http1::Builder,
    pub(crate) h2: hyper::server::conn::http2::Builder<TokioExecutor>,
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inbound")
            .field("listen", &self.cfg.listen)
            .finish_non_exhaustive()
    }
}

/// Who is calling, as far as one connection is concerned.
#[derive(Debug)]
struct Peer {
    /// `None` on a permissive port's plaintext connection: no identity, no authorization.
    id: Option<SpiffeId>,
    /// This workload's own ID (the policy input's destination).
    local: Option<SpiffeId>,
    /// Where the app listens; `None` when neither configured nor recoverable.
    app: Option<SocketAddr>,
    /// The destination port for the policy input.
    port: u16,
}

/// Where the app is: the configured address, else the port the peer originally dialled
/// (transparent mode) on loopback. Never the inbound listener itself. Pure.
pub(crate) fn app_address(
    configured: Option<SocketAddr>,
    original_dst: Option<SocketAddr>,
    listen_port: u16,
) -> Option<SocketAddr> {
    configured.or_else(|| {
        original_dst
            .filter(|d| d.port() != listen_port)
            .map(|d| SocketAddr::from((Ipv4Addr::LOCALHOST, d.port())))
    })
}

impl Inbound {
    pub(crate) fn new(
        cfg: InboundConfig,
        tls: Arc<TlsCache>,
        gate: Gate,
        metrics: ProxyMetrics,
        clock: Arc<dyn Clock>,
        telemetry: Option<Telemetry>,
    ) -> Self {
        // Validated with the config: a table that does not compile was refused there.
        let routes = RouteTable::new(&cfg.routes).unwrap_or_default();
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(cfg.upstream_timeout()));
        connector.set_nodelay(true);
        let app_client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(30))
            .pool_timer(TokioTimer::new())
            .build(connector);
        let mut h1 = hyper::server::conn::http1::Builder::new();
        h1.timer(TokioTimer::new())
            .header_read_timeout(cfg.header_read_timeout())
            .max_header_size(cfg.max_header_bytes);
        let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            // A peer agent that vanished (no FIN) must not pin its connection forever.
            .keep_alive_interval(std::time::Duration::from_secs(30))
            .keep_alive_timeout(std::time::Duration::from_secs(10))
            .max_header_list_size(u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX));
        Self {
            cfg,
            tls,
            gate,
            routes,
            metrics,
            clock,
            telemetry,
            app_client,
            h1,
            h2,
        }
    }

    pub(crate) async fn serve(self: Arc<Self>, listener: TcpListener, shutdown: CancellationToken) {
        let drain = self.cfg.drain_timeout();
        lifecycle::accept_loop(listener, shutdown, drain, DIR, move |stream, _, stops| {
            Arc::clone(&self).connection(stream, stops)
        })
        .await;
    }

    async fn connection(self: Arc<Self>, stream: TcpStream, stops: Stops) {
        let _open = self.metrics.open_connection(DIR);
        let original = crate::original_dst::original_dst(&stream).unwrap_or_else(|e| {
            debug!(error = %e, "cannot read the original destination");
            None
        });
        let app = app_address(self.cfg.app, original, self.cfg.listen.port());
        let port = original
            .map(|d| d.port())
            .or(app.map(|a| a.port()))
            .unwrap_or(self.cfg.listen.port());
        match detect::sniff(&stream, self.cfg.handshake_timeout()).await {
            Sniffed::Is(Detected::Tls) => {}
            Sniffed::Closed => return,
            sniffed if self.cfg.permissive => {
                let peer = Peer {
                    id: None,
                    local: None,
                    app,
                    port,
                };
                return self.plaintext(stream, sniffed, peer, &stops).await;
            }
            Sniffed::Silent => return self.metrics.handshake_error(DIR, HandshakeFailure::Timeout),
            Sniffed::Is(_) => {
                debug!("plaintext on the mesh port refused (inbound.permissive is off)");
                return self.metrics.handshake_error(DIR, HandshakeFailure::NotTls);
            }
        }
        let Some(mesh) = self.tls.current() else {
            debug!("no workload certificate yet; refusing the connection");
            return;
        };
        let accept = TlsAcceptor::from(Arc::clone(&mesh.server)).accept(stream);
        let tls = match tokio::time::timeout(self.cfg.handshake_timeout(), accept).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                let reason = classify_io(&e);
                debug!(reason = reason.as_str(), error = %e, "inbound TLS handshake failed");
                return self.metrics.handshake_error(DIR, reason);
            }
            Err(_) => return self.metrics.handshake_error(DIR, HandshakeFailure::Timeout),
        };
        let (_, conn) = tls.get_ref();
        let leaf = conn.peer_certificates().and_then(|c| c.first());
        let Some(info) = leaf.and_then(|l| inspect_leaf(l).ok()) else {
            // The verifier already required an SVID; this is defence in depth.
            return self
                .metrics
                .handshake_error(DIR, HandshakeFailure::BadIdentity);
        };
        let deny = self.tls.identity().subscribe_deny_list();
        if deny.borrow().contains(&info.spiffe_id) {
            info!(peer = %info.spiffe_id, "quarantined peer refused");
            return self
                .metrics
                .handshake_error(DIR, HandshakeFailure::Quarantined);
        }
        let alpn = conn.alpn_protocol().map(<[u8]>::to_vec);
        let expires_in = (info.not_after - self.clock.now())
            .try_into()
            .unwrap_or_default();
        let peer = Arc::new(Peer {
            id: Some(info.spiffe_id.clone()),
            local: Some(mesh.state.spiffe_id.clone()),
            app,
            port,
        });
        let limits = Limits {
            quarantine: Some((deny, &info.spiffe_id)),
            peer_expires_in: Some(expires_in),
            drain: self.cfg.drain_timeout(),
        };
        let io = TokioIo::new(tls);
        match alpn.as_deref() {
            Some(ALPN_TCP) => self.tcp(io.into_inner(), &peer, &stops, limits).await,
            Some(ALPN_H2) => {
                let conn = self.h2.serve_connection(io, self.service(&peer));
                let r = lifecycle::supervise(
                    conn,
                    |c| c.graceful_shutdown(),
                    &stops,
                    limits,
                    &self.metrics,
                    DIR,
                )
                .await;
                http_ended(&self.metrics, Protocol::Http2, r);
            }
            _ => {
                let conn = self.h1.serve_connection(io, self.service(&peer));
                let r = lifecycle::supervise(
                    conn,
                    |c| c.graceful_shutdown(),
                    &stops,
                    limits,
                    &self.metrics,
                    DIR,
                )
                .await;
                http_ended(&self.metrics, Protocol::Http1, r);
            }
        }
    }

    /// A permissive port's plaintext connection: HTTP is forwarded without identity (a
    /// forged peer header is still stripped); anything else is copied to the app.
    async fn plaintext(
        self: Arc<Self>,
        stream: TcpStream,
        sniffed: Sniffed,
        peer: Peer,
        stops: &Stops,
    ) {
        let peer = Arc::new(peer);
        let limits = Limits {
            drain: self.cfg.drain_timeout(),
            ..Limits::default()
        };
        let io = TokioIo::new(stream);
        match sniffed {
            Sniffed::Is(Detected::Http1) => {
                let conn = self.h1.serve_connection(io, self.service(&peer));
                let r = lifecycle::supervise(
                    conn,
                    |c| c.graceful_shutdown(),
                    stops,
                    limits,
                    &self.metrics,
                    DIR,
                )
                .await;
                http_ended(&self.metrics, Protocol::Http1, r);
            }
            Sniffed::Is(Detected::Http2) => {
                let conn = self.h2.serve_connection(io, self.service(&peer));
                let r = lifecycle::supervise(
                    conn,
                    |c| c.graceful_shutdown(),
                    stops,
                    limits,
                    &self.metrics,
                    DIR,
                )
                .await;
                http_ended(&self.metrics, Protocol::Http2, r);
            }
            _ => self.tcp(io.into_inner(), &peer, stops, limits).await,
        }
    }

    fn service(self: &Arc<Self>, peer: &Arc<Peer>) -> Svc {
        Svc {
            inbound: Arc::clone(self),
            peer: Arc::clone(peer),
        }
    }

    /// Opaque TCP: identity-only authorization (skipped without identity on a
    /// permissive port), then bytes both ways; one flow record when the connection ends.
    async fn tcp<S>(&self, client: S, peer: &Peer, stops: &Stops, limits: Limits<'_>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let started = Instant::now();
        let at = self.clock.now();
        let record = |o: Outcome| {
            self.metrics
                .request(DIR, Protocol::Tcp, o, started.elapsed())
        };
        let decision = match (&peer.id, &peer.local) {
            (Some(id), Some(local)) => {
                let input =
                    authz::build_input(id, local, peer.port, None, RequestExtras::default(), at);
                Some(self.gate.authz.decide(&input))
            }
            _ => None,
        };
        let flow = self.tcp_flow(peer, at, decision.as_ref());
        if let (Some(d), Some(id)) = (&decision, &peer.id)
            && d.blocks()
        {
            self.metrics.deny(&d.rule);
            info!(peer = %id, rule = %d.rule, policy_revision = %d.policy_revision, "tcp connection denied");
            self.tcp_record(flow, started, 0, 0).await;
            return record(Outcome::Denied);
        }
        let Some(app) = peer.app else {
            debug!("no application address for an opaque TCP connection");
            return record(Outcome::UpstreamUnavailable);
        };
        let upstream = match tcp::connect(&app.to_string(), self.cfg.upstream_timeout()).await {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                return record(Outcome::UpstreamTimeout);
            }
            Err(e) => {
                debug!(%app, error = %e, "cannot connect to the application");
                return record(Outcome::UpstreamUnavailable);
            }
        };
        record(if peer.id.is_some() {
            Outcome::Allowed
        } else {
            Outcome::Passthrough
        });
        let counted = tcp::Counted::new(client);
        let bytes = counted.counters();
        let copy = tcp::splice(counted, upstream);
        log_end(lifecycle::supervise(copy, |_| {}, stops, limits, &self.metrics, DIR).await);
        let (bytes_in, bytes_out) = bytes.get();
        self.tcp_record(flow, started, bytes_in, bytes_out).await;
    }

    fn tcp_flow(
        &self,
        peer: &Peer,
        at: time::OffsetDateTime,
        decision: Option<&authz::Decision>,
    ) -> Option<TcpFlow> {
        self.telemetry.as_ref()?;
        let destination = peer.local.clone().or_else(|| self.tls.local_id())?;
        let (verdict, policy_revision, rule) = tcp_verdict(decision);
        Some(TcpFlow {
            at,
            source: peer.id.as_ref().map(ToString::to_string),
            destination: destination.to_string(),
            verdict,
            policy_revision,
            rule,
        })
    }

    /// Connection records are fail-open: the bytes have already flowed.
    async fn tcp_record(
        &self,
        flow: Option<TcpFlow>,
        started: Instant,
        bytes_in: u64,
        bytes_out: u64,
    ) {
        if let (Some(t), Some(f)) = (&self.telemetry, flow) {
            let r = f.finish(rand::random(), started.elapsed(), bytes_in, bytes_out);
            if let Err(e) = t.record(&r, false).await {
                debug!(error = %e, "tcp flow record not written");
            }
        }
    }
}

/// The per-connection hyper service: every request goes through [`Inbound::request`].
#[derive(Debug, Clone)]
struct Svc {
    inbound: Arc<Inbound>,
    peer: Arc<Peer>,
}

impl hyper::service::Service<Request<Incoming>> for Svc {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.inbound.request(&this.peer, req).await) })
    }
}

fn log_end<E: std::fmt::Display>(r: Option<Result<(), E>>) {
    if let Some(Err(e)) = r {
        debug!(error = %e, "inbound connection ended with an error");
    }
}

/// Logs how an HTTP connection ended and counts the request failures hyper answered
/// itself (431 for oversized headers, closing on the header timeout).
pub(crate) fn http_ended(
    metrics: &ProxyMetrics,
    protocol: Protocol,
    r: Option<Result<(), hyper::Error>>,
) {
    let Some(Err(e)) = r else { return };
    match h::connection_error_outcome(&e) {
        Some(outcome) => {
            debug!(outcome = outcome.as_str(), error = %e, "HTTP connection refused a request");
            metrics.request(DIR, protocol, outcome, std::time::Duration::ZERO);
        }
        None => debug!(error = %e, "HTTP connection ended with an error"),
    }
}

/// An error with its sources, on one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_address_table() {
        let a = |s: &str| Some(s.parse::<SocketAddr>().unwrap());
        let cases = [
            // configured wins
            (
                a("127.0.0.1:18080"),
                a("10.0.0.5:8080"),
                a("127.0.0.1:18080"),
            ),
            // transparent: the original port on loopback
            (None, a("10.0.0.5:8080"), a("127.0.0.1:8080")),
            // a peer that dialled the inbound port itself is not an app
            (None, a("10.0.0.5:7143"), None),
            (None, None, None),
        ];
        for (configured, original, want) in cases {
            assert_eq!(
                app_address(configured, original, 7143),
                want,
                "{configured:?} {original:?}"
            );
        }
    }
}
