//! The admin server (HTTP/1, default `127.0.0.1:7191`):
//!
//! | path           | answer                                                              |
//! |----------------|---------------------------------------------------------------------|
//! | `/live`        | 200 while the process runs                                          |
//! | `/ready`       | 200 with a valid certificate, else 503 and a one-line reason        |
//! | `/metrics`     | Prometheus text format from the registry passed in                  |
//! | `/config_dump` | JSON: effective config (no secrets) and the current identity state  |
//!
//! Anything else is 404; methods other than GET and HEAD are 405. Routing is a plain
//! function of the request line ([`respond`]); [`serve`] only does the I/O.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{Encoder, Registry, TextEncoder};
use serde::Serialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::clock::Clock;
use crate::identity::{IdentityHandle, NotReady, rfc3339};

/// How long open admin connections may take to finish after shutdown.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything the admin endpoints read.
pub struct AdminState {
    config: serde_json::Value,
    identity: IdentityHandle,
    registry: Registry,
    clock: Arc<dyn Clock>,
    policy: Option<crate::policy::PolicyHandle>,
    jwt: Option<crate::jwt::JwtValidator>,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl AdminState {
    /// `config` is serialized once, now: it must not contain secrets in its `Serialize`
    /// form (the agent's config redacts them).
    pub fn new(
        config: &impl Serialize,
        identity: IdentityHandle,
        registry: Registry,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, serde_json::Error> {
        Ok(Self {
            config: serde_json::to_value(config)?,
            identity,
            registry,
            clock,
            policy: None,
            jwt: None,
        })
    }

    /// Reports the running policy and the OIDC issuers' key status on `/config_dump`.
    pub fn with_policy(
        mut self,
        policy: crate::policy::PolicyHandle,
        jwt: Option<crate::jwt::JwtValidator>,
    ) -> Self {
        self.policy = Some(policy);
        self.jwt = jwt;
        self
    }

    fn ready_line(&self) -> Result<(), String> {
        match self.identity.readiness(self.clock.now()) {
            Ok(()) => Ok(()),
            Err(NotReady::NoIdentity) => match self.identity.last_error() {
                Some(e) => Err(format!("{} (last error: {e})", NotReady::NoIdentity)),
                None => Err(NotReady::NoIdentity.to_string()),
            },
            Err(other) => Err(other.to_string()),
        }
    }

    fn config_dump(&self) -> serde_json::Value {
        let now = self.clock.now();
        let identity = self.identity.current().map(|s| {
            json!({
                "spiffe_id": s.spiffe_id.to_string(),
                "trust_domain": s.trust_domain().to_string(),
                "serial": s.serial_hex(),
                "not_before": rfc3339(s.not_before),
                "not_after": rfc3339(s.not_after),
                "seconds_to_expiry": wardmesh_identity::rotation::seconds_to_expiry(s.not_after, now).floor(),
                "authority_id": s.authority_id,
                "bundle_revision": s.bundle.revision,
                "bundle_roots": s.bundle.roots.len(),
            })
        });
        let deny = self.identity.deny_list();
        let ready = self.ready_line();
        json!({
            "config": self.config,
            "identity": identity,
            "deny_list": { "revision": deny.revision, "size": deny.len() },
            "ready": ready.is_ok(),
            "not_ready_reason": ready.err(),
            "last_error": self.identity.last_error(),
            "last_sync_error": self.identity.last_sync_error(),
            "policy": self.policy.as_ref().map(|p| p.status()),
            "oidc": self.jwt.as_ref().map(|j| j.status()),
        })
    }
}

/// The answer to `method path`. Pure apart from reading the state.
pub fn respond(state: &AdminState, method: &Method, path: &str) -> Response<Full<Bytes>> {
    if !matches!(path, "/live" | "/ready" | "/metrics" | "/config_dump") {
        return text(
            StatusCode::NOT_FOUND,
            "not found: the admin server serves /live, /ready, /metrics and /config_dump\n".into(),
        );
    }
    if method != Method::GET && method != Method::HEAD {
        let mut resp = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed: use GET\n".into(),
        );
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    match path {
        "/live" => text(StatusCode::OK, "live\n".into()),
        "/ready" => match state.ready_line() {
            Ok(()) => text(StatusCode::OK, "ready\n".into()),
            Err(reason) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {}\n", reason.replace(['\n', '\r'], " ")),
            ),
        },
        "/metrics" => metrics(&state.registry),
        _ => match serde_json::to_vec_pretty(&state.config_dump()) {
            Ok(mut body) => {
                body.push(b'\n');
                with_type(StatusCode::OK, body, "application/json")
            }
            Err(e) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot encode config dump: {e}\n"),
            ),
        },
    }
}

fn metrics(registry: &Registry) -> Response<Full<Bytes>> {
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    match encoder.encode(&registry.gather(), &mut body) {
        Ok(()) => with_type(StatusCode::OK, body, prometheus::TEXT_FORMAT),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode metrics: {e}\n"),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    with_type(status, body.into_bytes(), "text/plain; charset=utf-8")
}

fn with_type(status: StatusCode, body: Vec<u8>, content_type: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(CONTENT_TYPE, v);
    }
    resp
}

/// Serves the admin endpoints on `listener` until `shutdown`, then lets open
/// connections finish (up to 5 s).
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, shutdown: CancellationToken) {
    let tracker = TaskTracker::new();
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    warn!(error = %e, "admin server accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let state = Arc::clone(&state);
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let resp = respond(&state, req.method(), req.uri().path());
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), svc);
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                () = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
    tracker.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, tracker.wait())
        .await
        .is_err()
    {
        warn!("admin connections still open after shutdown; dropping them");
    }
}

#[cfg(test)]
mod tests;
