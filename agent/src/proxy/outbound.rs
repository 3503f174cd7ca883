//! The outbound listener: the local app's calls to other services.
//!
//! Per connection: the original destination (`SO_ORIGINAL_DST`) says whether the
//! connection was transparently redirected. Its first bytes decide the protocol: HTTP/1
//! or HTTP/2 are served by hyper and routed per request (explicit mode: absolute-form
//! proxy requests and `CONNECT`); anything else in transparent mode is opaque TCP.
//! Mesh destinations get mTLS to their agent with the expected SPIFFE ID checked; HTTP
//! rides a pooled HTTP/2 connection.

mod route;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use self::route::{Route, route};
use super::config::OutboundConfig;
use super::detect::{self, Detected, Sniffed};
use super::http::{self as h, ProxyBody};
use super::inbound::error_chain;
use super::lifecycle::{self, Limits, Stops};
use super::pool::{Pool, PoolError};
use super::tcp;
use super::tls::{self, ConnectError, TlsCache};
use crate::discovery::{Discovery, HostPort, ServiceEntry};
use crate::metrics::{Direction, Outcome, Protocol, ProxyMetrics};

const DIR: Direction = Direction::Outbound;

/// Everything the outbound listener shares between connections.
pub(crate) struct Outbound {
    pub(crate) cfg: OutboundConfig,
    pub(crate) discovery: Discovery,
    pub(crate) tls: Arc<TlsCache>,
    pub(crate) pool: Pool,
    /// Passthrough HTTP to non-mesh destinations.
    pub(crate) direct: Client<HttpConnector, Incoming>,
    pub(crate) metrics: ProxyMetrics,
    pub(crate) h1: hyper::server::conn::http1::Builder,
    pub(crate) h2: hyper::server::conn::http2::Builder<TokioExecutor>,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("listen", &self.cfg.listen)
            .field("services", &self.discovery.entries().len())
            .finish_non_exhaustive()
    }
}

/// What one app connection carries into each of its requests.
#[derive(Debug)]
struct Conn {
    original_dst: Option<SocketAddr>,
    stops: Stops,
}

impl Outbound {
    pub(crate) fn new(
        cfg: OutboundConfig,
        discovery: Discovery,
        tls: Arc<TlsCache>,
        metrics: ProxyMetrics,
    ) -> Self {
        let pool = Pool::new(
            Arc::clone(&tls),
            cfg.connect_timeout(),
            cfg.max_header_bytes,
            metrics.clone(),
        );
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(cfg.connect_timeout()));
        connector.set_nodelay(true);
        let direct = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(30))
            .pool_timer(TokioTimer::new())
            .build(connector);
        let mut h1 = hyper::server::conn::http1::Builder::new();
        h1.timer(TokioTimer::new())
            .header_read_timeout(cfg.header_read_timeout())
            .max_header_size(cfg.max_header_bytes);
        let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX));
        Self {
            cfg,
            discovery,
            tls,
            pool,
            direct,
            metrics,
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
        let original_dst = crate::original_dst::original_dst(&stream).unwrap_or_else(|e| {
            debug!(error = %e, "cannot read the original destination");
            None
        });
        // Explicit mode: the app must speak the HTTP proxy protocol, so it gets the
        // header timeout to start; transparent mode waits briefly, then assumes TCP.
        let sniff_for = match original_dst {
            Some(_) => self.cfg.detect_timeout(),
            None => self.cfg.header_read_timeout(),
        };
        let sniffed = detect::sniff(&stream, sniff_for).await;
        let limits = Limits {
            drain: self.cfg.drain_timeout(),
            ..Limits::default()
        };
        let conn = Arc::new(Conn {
            original_dst,
            stops: stops.clone(),
        });
        let io = TokioIo::new(stream);
        match (sniffed, original_dst) {
            (Sniffed::Is(Detected::Http1), _) => {
                let svc = Svc::new(&self, &conn);
                let c = self.h1.serve_connection(io, svc).with_upgrades();
                let r = lifecycle::supervise(
                    c,
                    |c| c.graceful_shutdown(),
                    &stops,
                    limits,
                    &self.metrics,
                    DIR,
                )
                .await;
                self.http_ended(Protocol::Http1, r);
            }
            (Sniffed::Is(Detected::Http2), _) => {
                let svc = Svc::new(&self, &conn);
                let c = self.h2.serve_connection(io, svc);
                let r = lifecycle::supervise(
                    c,
                    |c| c.graceful_shutdown(),
                    &stops,
                    limits,
                    &self.metrics,
                    DIR,
                )
                .await;
                self.http_ended(Protocol::Http2, r);
            }
            (Sniffed::Is(_) | Sniffed::Silent, Some(dst)) => {
                self.transparent_tcp(io.into_inner(), dst, &stops).await;
            }
            (Sniffed::Is(_), None) => {
                debug!("explicit-mode connection that is not HTTP; closing");
                self.metrics.request(
                    DIR,
                    Protocol::Tcp,
                    Outcome::BadRequest,
                    std::time::Duration::ZERO,
                );
            }
            (Sniffed::Silent | Sniffed::Closed, _) => {}
        }
    }

    async fn request(&self, conn: &Conn, req: Request<Incoming>) -> Response<ProxyBody> {
        let started = Instant::now();
        let version = req.version();
        let is_connect = req.method() == Method::CONNECT;
        let protocol = match (is_connect, version) {
            (true, _) => Protocol::Tcp,
            (false, Version::HTTP_2) => Protocol::Http2,
            (false, _) => Protocol::Http1,
        };
        let (parts, body) = req.into_parts();
        let request_id = h::request_id(&parts.headers);
        let authority = h::request_authority(&parts);
        let deny = self.tls.identity().deny_list();
        let decided = route(
            &self.discovery,
            &deny,
            self.cfg.passthrough_unknown,
            conn.original_dst,
            authority.as_ref(),
        );
        let (resp, outcome) = match (decided, is_connect) {
            (Route::Refuse(outcome, reason), _) => {
                debug!(outcome = outcome.as_str(), %reason, "outbound request refused");
                (h::failure_response(outcome, &reason, &request_id), outcome)
            }
            (route, true) => {
                self.connect(
                    route,
                    Request::from_parts(parts, body),
                    &conn.stops,
                    &request_id,
                )
                .await
            }
            (Route::Mesh(service), false) => {
                let fallback = authority.unwrap_or_else(|| host_port_of(service));
                self.mesh_http(service, &fallback, parts, body, version, &request_id)
                    .await
            }
            (Route::Direct(target), false) => {
                self.direct_http(&target, parts, body, version, &request_id)
                    .await
            }
        };
        self.metrics
            .request(DIR, protocol, outcome, started.elapsed());
        resp
    }

    /// HTTP to a mesh service over the pooled HTTP/2 connection to its agent.
    async fn mesh_http(
        &self,
        service: &ServiceEntry,
        authority: &HostPort,
        mut parts: Parts,
        body: Incoming,
        version: Version,
        request_id: &str,
    ) -> (Response<ProxyBody>, Outcome) {
        if let Err(e) = h::to_mesh_request(&mut parts, authority, request_id) {
            let reason = format!("cannot forward this request: {e}");
            return (
                h::failure_response(Outcome::BadRequest, &reason, request_id),
                Outcome::BadRequest,
            );
        }
        let req = Request::from_parts(parts, body);
        let send = self
            .pool
            .send(service.agent_address(), &service.spiffe_id, req);
        let (outcome, reason) = match tokio::time::timeout(self.cfg.upstream_timeout(), send).await
        {
            Ok(Ok(mut resp)) => {
                h::fix_response(&mut resp, version, request_id);
                let outcome = h::peer_outcome(resp.headers());
                return (resp.map(|b| b.map_err(Into::into).boxed_unsync()), outcome);
            }
            Ok(Err(PoolError::Connect(e))) => (connect_outcome(&e), e.to_string()),
            Ok(Err(PoolError::Http(e))) => (
                Outcome::UpstreamError,
                format!(
                    "{} ({}): {}",
                    service.name,
                    service.agent_address(),
                    error_chain(&e)
                ),
            ),
            Err(_) => (
                Outcome::UpstreamTimeout,
                format!(
                    "{} sent no response within {:?}",
                    service.name,
                    self.cfg.upstream_timeout()
                ),
            ),
        };
        info!(service = %service.name, outcome = outcome.as_str(), %reason, request_id, "outbound request failed");
        (h::failure_response(outcome, &reason, request_id), outcome)
    }

    /// Passthrough HTTP to a destination outside the mesh.
    async fn direct_http(
        &self,
        target: &HostPort,
        mut parts: Parts,
        body: Incoming,
        version: Version,
        request_id: &str,
    ) -> (Response<ProxyBody>, Outcome) {
        if let Err(e) = h::to_passthrough_request(&mut parts, target) {
            let reason = format!("cannot forward this request: {e}");
            return (
                h::failure_response(Outcome::BadRequest, &reason, request_id),
                Outcome::BadRequest,
            );
        }
        let req = Request::from_parts(parts, body);
        let sent = tokio::time::timeout(self.cfg.upstream_timeout(), self.direct.request(req));
        let (outcome, reason) = match sent.await {
            Ok(Ok(mut resp)) => {
                h::fix_response(&mut resp, version, request_id);
                return (
                    resp.map(|b| b.map_err(Into::into).boxed_unsync()),
                    Outcome::Passthrough,
                );
            }
            Ok(Err(e)) if e.is_connect() => (
                Outcome::UpstreamUnavailable,
                format!("cannot connect to {target}"),
            ),
            Ok(Err(e)) => (
                Outcome::UpstreamError,
                format!("{target}: {}", error_chain(&e)),
            ),
            Err(_) => (
                Outcome::UpstreamTimeout,
                format!("{target} sent no response in time"),
            ),
        };
        (h::failure_response(outcome, &reason, request_id), outcome)
    }

    /// Explicit-mode `CONNECT host:port`: open the upstream first (so failures are
    /// proper HTTP answers), then answer 200 and tunnel the upgraded connection.
    async fn connect(
        &self,
        route: Route<'_>,
        req: Request<Incoming>,
        stops: &Stops,
        request_id: &str,
    ) -> (Response<ProxyBody>, Outcome) {
        let fail = |o: Outcome, reason: &str| (h::failure_response(o, reason, request_id), o);
        let outcome = if matches!(route, Route::Direct(_)) {
            Outcome::Passthrough
        } else {
            Outcome::Allowed
        };
        let upstream: Box<dyn Tunnel> = match route {
            Route::Mesh(service) => match self.mesh_tcp(service).await {
                Ok(s) => Box::new(s),
                Err(e) => return fail(connect_outcome(&e), &e.to_string()),
            },
            Route::Direct(target) => {
                match tcp::connect(&target.to_string(), self.cfg.connect_timeout()).await {
                    Ok(s) => Box::new(s),
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                        return fail(Outcome::UpstreamTimeout, &e.to_string());
                    }
                    Err(e) => return fail(Outcome::UpstreamUnavailable, &format!("{target}: {e}")),
                }
            }
            Route::Refuse(o, reason) => return fail(o, &reason),
        };
        let stops_for_task = stops.clone();
        let metrics = self.metrics.clone();
        stops.tracker.spawn(async move {
            let upgraded = match hyper::upgrade::on(req).await {
                Ok(u) => u,
                Err(e) => return debug!(error = %e, "CONNECT upgrade failed"),
            };
            let copy = tcp::splice(TokioIo::new(upgraded), upstream);
            let limits = Limits::default();
            log_end(
                lifecycle::supervise(copy, |_| {}, &stops_for_task, limits, &metrics, DIR).await,
            );
        });
        let mut resp = Response::new(h::empty());
        *resp.status_mut() = StatusCode::OK;
        (resp, outcome)
    }

    /// Logs how an app connection ended and counts the request failures hyper answered
    /// itself (431, header timeout).
    fn http_ended(&self, protocol: Protocol, r: Option<Result<(), hyper::Error>>) {
        let Some(Err(e)) = r else { return };
        match h::connection_error_outcome(&e) {
            Some(outcome) => {
                self.metrics
                    .request(DIR, protocol, outcome, std::time::Duration::ZERO)
            }
            None => debug!(error = %e, "app connection ended with an error"),
        }
    }

    /// mTLS with `wardmesh-tcp` to a mesh service's agent.
    async fn mesh_tcp(
        &self,
        service: &ServiceEntry,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ConnectError> {
        let mesh = self.tls.current().ok_or(ConnectError::NoIdentity)?;
        tls::connect(
            service.agent_address(),
            &service.spiffe_id,
            Arc::clone(&mesh.client_tcp),
            self.cfg.connect_timeout(),
        )
        .await
        .inspect_err(|e| {
            if let Some(reason) = e.handshake_reason() {
                self.metrics.handshake_error(DIR, reason);
            }
        })
    }

    /// Transparent mode, not HTTP: opaque TCP to the original destination's service.
    async fn transparent_tcp(&self, client: TcpStream, dst: SocketAddr, stops: &Stops) {
        let started = Instant::now();
        let deny = self.tls.identity().deny_list();
        let decided = route(
            &self.discovery,
            &deny,
            self.cfg.passthrough_unknown,
            Some(dst),
            None,
        );
        let record = |o: Outcome| {
            self.metrics
                .request(DIR, Protocol::Tcp, o, started.elapsed())
        };
        let connected = if matches!(decided, Route::Direct(_)) {
            Outcome::Passthrough
        } else {
            Outcome::Allowed
        };
        let upstream: Box<dyn Tunnel> = match decided {
            Route::Mesh(service) => match self.mesh_tcp(service).await {
                Ok(s) => Box::new(s),
                Err(e) => {
                    info!(service = %service.name, error = %e, "outbound TCP failed");
                    return record(connect_outcome(&e));
                }
            },
            Route::Direct(target) => {
                match tcp::connect(&target.to_string(), self.cfg.connect_timeout()).await {
                    Ok(s) => Box::new(s),
                    Err(e) => {
                        debug!(%target, error = %e, "passthrough TCP failed");
                        return record(Outcome::UpstreamUnavailable);
                    }
                }
            }
            Route::Refuse(o, reason) => {
                debug!(%reason, "outbound TCP refused");
                return record(o);
            }
        };
        record(connected);
        let limits = Limits {
            drain: self.cfg.drain_timeout(),
            ..Limits::default()
        };
        let copy = tcp::splice(client, upstream);
        log_end(lifecycle::supervise(copy, |_| {}, stops, limits, &self.metrics, DIR).await);
    }
}

/// Either upstream of a tunnel: a mesh TLS stream or a plain TCP stream.
trait Tunnel: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Tunnel for T {}

/// The metric outcome of a failed mesh connect. Pure.
fn connect_outcome(e: &ConnectError) -> Outcome {
    match e {
        ConnectError::NoIdentity | ConnectError::Unavailable { .. } => Outcome::UpstreamUnavailable,
        ConnectError::Timeout { .. } => Outcome::UpstreamTimeout,
        ConnectError::WrongIdentity { .. } => Outcome::WrongServerIdentity,
        ConnectError::Handshake { .. } => Outcome::UpstreamError,
    }
}

fn host_port_of(service: &ServiceEntry) -> HostPort {
    HostPort::parse(&service.address, None).unwrap_or(HostPort {
        host: service.name.clone(),
        port: 80,
    })
}

fn log_end<E: std::fmt::Display>(r: Option<Result<(), E>>) {
    if let Some(Err(e)) = r {
        debug!(error = %e, "outbound connection ended with an error");
    }
}

/// The per-connection hyper service: every request goes through [`Outbound::request`].
#[derive(Debug, Clone)]
struct Svc {
    outbound: Arc<Outbound>,
    conn: Arc<Conn>,
}

impl Svc {
    fn new(outbound: &Arc<Outbound>, conn: &Arc<Conn>) -> Self {
        Self {
            outbound: Arc::clone(outbound),
            conn: Arc::clone(conn),
        }
    }
}

impl hyper::service::Service<Request<Incoming>> for Svc {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { Ok(this.outbound.request(&this.conn, req).await) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_outcome_table() {
        use crate::metrics::HandshakeFailure;
        let io = || std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let id = wardmesh_identity::SpiffeId::parse("spiffe://wardmesh.local/ns/a/sa/b").unwrap();
        let cases = [
            (ConnectError::NoIdentity, Outcome::UpstreamUnavailable),
            (
                ConnectError::Unavailable {
                    addr: "a".into(),
                    source: io(),
                },
                Outcome::UpstreamUnavailable,
            ),
            (
                ConnectError::Timeout {
                    addr: "a".into(),
                    timeout: std::time::Duration::from_secs(1),
                },
                Outcome::UpstreamTimeout,
            ),
            (
                ConnectError::WrongIdentity {
                    addr: "a".into(),
                    expected: id,
                    got: "x".into(),
                },
                Outcome::WrongServerIdentity,
            ),
            (
                ConnectError::Handshake {
                    addr: "a".into(),
                    reason: HandshakeFailure::UnknownCa,
                    detail: "d".into(),
                },
                Outcome::UpstreamError,
            ),
        ];
        for (e, want) in cases {
            assert_eq!(connect_outcome(&e), want, "{e}");
        }
    }
}
