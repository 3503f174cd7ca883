//! A control-plane stand-in serving the agent API over real HTTPS (rustls, HTTP/1.1 and
//! HTTP/2, client certificates optional and verified), backed by [`CaSource`]. It
//! implements the contract the agent relies on: single-use join tokens, renew and sync
//! only for the authenticated SVID, `ApiError` bodies on refusal.

use std::collections::HashSet;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use wardmesh_identity::keygen::generate_anonymous_csr;
use wardmesh_identity::svid::certs_from_pem;
use wardmesh_identity::tls::{Svid, TrustBundle, control_plane_server_config, peer_spiffe_id};
use wardmesh_identity::{SpiffeId, TrustDomain};
use wardmesh_proto::identity::{AttestRequest, Attestation, RenewRequest, SyncRequest};
use wardmesh_proto::{ApiError, paths};

use super::{CaSource, Call, WORKLOAD_ID};
use crate::clock::{Clock, SystemClock};

pub(crate) struct HttpsControlPlane {
    pub addr: SocketAddr,
    pub bundle_path: PathBuf,
    _dir: TempDir,
    shutdown: CancellationToken,
}

impl Drop for HttpsControlPlane {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

struct Api {
    source: CaSource,
    join_token: String,
    used_tokens: Mutex<HashSet<String>>,
}

impl HttpsControlPlane {
    /// Serves on an ephemeral port; `join_token` is accepted once.
    pub(crate) async fn start(source: CaSource, join_token: &str) -> Self {
        let now = SystemClock.now();
        let loaded = source.ca().load(now);
        let key = generate_anonymous_csr().unwrap().key;
        let id =
            SpiffeId::parse("spiffe://wardmesh.local/ns/wardmesh-system/sa/control-plane").unwrap();
        let issued = loaded
            .signer
            .sign_local_key(
                &key,
                &id,
                Duration::from_secs(24 * 3600),
                now,
                &["localhost".into(), "127.0.0.1".into()],
            )
            .unwrap();
        let svid = Svid::new(
            certs_from_pem(&issued.chain_pem).unwrap(),
            key.serialize_der(),
        )
        .unwrap();
        let bundle = TrustBundle {
            trust_domain: TrustDomain::default(),
            roots: loaded.bundle.clone(),
            revision: loaded.state.revision,
        };
        let tls = TlsAcceptor::from(Arc::new(
            control_plane_server_config(&svid, &bundle).unwrap(),
        ));

        let dir = tempfile::tempdir().unwrap();
        let bundle_path = dir.path().join("bundle.pem");
        std::fs::write(&bundle_path, &loaded.bundle_pem).unwrap();

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let api = Arc::new(Api {
            source,
            join_token: join_token.to_owned(),
            used_tokens: Mutex::default(),
        });
        tokio::spawn(accept_loop(listener, tls, api, shutdown.clone()));
        Self {
            addr,
            bundle_path,
            _dir: dir,
            shutdown,
        }
    }

    pub(crate) fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: TlsAcceptor,
    api: Arc<Api>,
    shutdown: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => return,
            r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
        };
        let tls = tls.clone();
        let api = Arc::clone(&api);
        tokio::spawn(async move {
            let Ok(stream) = tls.accept(stream).await else {
                return;
            };
            let peer = peer_spiffe_id(stream.get_ref().1.peer_certificates()).ok();
            let svc = service_fn(move |req| {
                let api = Arc::clone(&api);
                let peer = peer.clone();
                async move { Ok::<_, Infallible>(api.handle(req, peer).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn json<T: Serialize>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(serde_json::to_vec(body).unwrap())));
    *resp.status_mut() = status;
    resp
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    json(
        status,
        &ApiError {
            error: code.into(),
            message: message.into(),
        },
    )
}

impl Api {
    async fn handle(
        &self,
        req: Request<hyper::body::Incoming>,
        peer: Option<SpiffeId>,
    ) -> Response<Full<Bytes>> {
        if req.method() != Method::POST {
            return error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "POST");
        }
        let path = req.uri().path().to_owned();
        let Ok(body) = req.into_body().collect().await else {
            return error(StatusCode::BAD_REQUEST, "bad_request", "unreadable body");
        };
        let body = body.to_bytes();
        let authenticated = peer.as_ref().is_some_and(|p| p.to_string() == WORKLOAD_ID);
        match path.as_str() {
            paths::ATTEST => {
                let Ok(req) = serde_json::from_slice::<AttestRequest>(&body) else {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        "not an AttestRequest",
                    );
                };
                let ok = match &req.attestation {
                    Attestation::JoinToken { token } => {
                        *token == self.join_token
                            && self.used_tokens.lock().unwrap().insert(token.clone())
                    }
                    Attestation::K8sSaToken { .. } => false,
                };
                if !ok {
                    return error(
                        StatusCode::UNAUTHORIZED,
                        "attestation_failed",
                        "join token is unknown, expired or already used",
                    );
                }
                self.issue(Call::Attest, &req.csr_pem)
            }
            paths::RENEW if authenticated => {
                let Ok(req) = serde_json::from_slice::<RenewRequest>(&body) else {
                    return error(StatusCode::BAD_REQUEST, "bad_request", "not a RenewRequest");
                };
                self.issue(Call::Renew, &req.csr_pem)
            }
            paths::AGENT_SYNC if authenticated => {
                let Ok(req) = serde_json::from_slice::<SyncRequest>(&body) else {
                    return error(StatusCode::BAD_REQUEST, "bad_request", "not a SyncRequest");
                };
                match self.source.long_poll(&req).await {
                    Ok(resp) => json(StatusCode::OK, &resp),
                    Err(e) => error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        &e.to_string(),
                    ),
                }
            }
            paths::RENEW | paths::AGENT_SYNC => error(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "present the workload SVID as client certificate",
            ),
            _ => error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
        }
    }

    fn issue(&self, call: Call, csr_pem: &str) -> Response<Full<Bytes>> {
        match self.source.issue(call, csr_pem) {
            Ok(resp) => json(StatusCode::OK, &resp),
            Err(e) => error(StatusCode::BAD_REQUEST, "bad_csr", &e.to_string()),
        }
    }
}
