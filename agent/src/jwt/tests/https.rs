//! The refresher against a real JWKS server: HTTPS (rustls, a test CA from rcgen given
//! as `ca_file`), keys rotated at the IdP, an IdP outage.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::clock::SystemClock;

/// What the IdP serves at `/jwks.json`.
struct Idp {
    status: StatusCode,
    body: String,
}

struct JwksServer {
    url: String,
    ca_pem: String,
    idp: Arc<Mutex<Idp>>,
    hits: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl JwksServer {
    async fn start(body: String) -> Self {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(leaf.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
            )
            .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let idp = Arc::new(Mutex::new(Idp {
            status: StatusCode::OK,
            body,
        }));
        let hits = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        tokio::spawn(serve(
            listener,
            acceptor,
            Arc::clone(&idp),
            Arc::clone(&hits),
            stop.clone(),
        ));
        Self {
            url: format!("https://127.0.0.1:{port}/jwks.json"),
            ca_pem: ca.pem(),
            idp,
            hits,
            stop,
        }
    }

    fn set(&self, status: StatusCode, body: String) {
        *self.idp.lock().unwrap() = Idp { status, body };
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    idp: Arc<Mutex<Idp>>,
    hits: Arc<AtomicUsize>,
    stop: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => return,
            r = listener.accept() => match r { Ok((s, _)) => s, Err(_) => continue },
        };
        let (acceptor, idp, hits) = (acceptor.clone(), Arc::clone(&idp), Arc::clone(&hits));
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(stream).await else {
                return;
            };
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let idp = Arc::clone(&idp);
                let hits = Arc::clone(&hits);
                async move {
                    hits.fetch_add(1, Ordering::SeqCst);
                    let (status, body) = {
                        let idp = idp.lock().unwrap();
                        (idp.status, idp.body.clone())
                    };
                    let status = if req.uri().path() == "/jwks.json" {
                        status
                    } else {
                        StatusCode::NOT_FOUND
                    };
                    let mut resp = Response::new(Full::new(Bytes::from(body)));
                    *resp.status_mut() = status;
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Polls `f` every 50 ms until it holds, for at most `secs` seconds.
async fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f()
}

fn wall_now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// Claims valid at the real time (the refresher runs on real time here).
fn live_claims() -> Value {
    let t = wall_now().unix_timestamp();
    let mut c = claims();
    c["nbf"] = json!(t - 10);
    c["iat"] = json!(t - 10);
    c["exp"] = json!(t + 300);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresher_fetches_over_https_follows_rotation_and_survives_outages() {
    let (old, new) = (es256("2026-01"), eddsa("2026-02"));
    let server = JwksServer::start(jwks(&[&old])).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("idp-ca.pem");
    std::fs::write(&ca_file, &server.ca_pem).unwrap();
    let mut ic = IssuerConfig::with_url(ISSUER, AUDIENCE, &server.url);
    ic.ca_file = Some(ca_file);
    ic.refresh_seconds = 3600;
    ic.min_refresh_seconds = 1;
    let v = JwtValidator::new(&OidcConfig {
        issuers: vec![ic],
        ..OidcConfig::default()
    })
    .unwrap();

    // Before the first fetch, tokens cannot be checked: refused, not waved through.
    let old_token = sign(&old, &live_claims());
    assert_eq!(
        v.validate(&old_token, wall_now()),
        Err(JwtError::KeysUnavailable)
    );
    let stop = CancellationToken::new();
    let tasks = v.spawn_refresh(Arc::new(SystemClock), stop.clone());
    assert!(
        eventually(5, || v.validate(&old_token, wall_now()).is_ok()).await,
        "first fetch: {:?}",
        v.status()
    );
    assert_eq!(server.hits(), 1);
    let status = &v.status()[0];
    assert_eq!(status.key_ids, ["2026-01"]);
    assert!(status.last_refresh.is_some() && status.last_error.is_none());

    // The IdP rotates: a token with the new kid is refused once, wakes the refresher,
    // and is accepted after the reload (min_refresh_seconds = 1 after the first fetch).
    server.set(StatusCode::OK, jwks(&[&new]));
    let new_token = sign(&new, &live_claims());
    assert_eq!(
        v.validate(&new_token, wall_now()),
        Err(JwtError::UnknownKey)
    );
    // A burst of unknown kids costs one fetch, not one per token.
    for _ in 0..50 {
        let _ = v.validate(&new_token, wall_now());
    }
    assert!(
        eventually(5, || v.validate(&new_token, wall_now()).is_ok()).await,
        "{:?}",
        v.status()
    );
    assert_eq!(server.hits(), 2, "one reload for the whole burst");
    assert_eq!(
        v.validate(&old_token, wall_now()),
        Err(JwtError::UnknownKey),
        "the retired key is gone"
    );

    // The IdP fails (500, then garbage): the last good keys stay in force.
    server.set(StatusCode::INTERNAL_SERVER_ERROR, "oops".into());
    let _ = v.validate(&sign(&es256("2026-03"), &live_claims()), wall_now());
    assert!(
        eventually(5, || v.status()[0].last_error.is_some()).await,
        "{:?}",
        v.status()
    );
    assert!(v.status()[0].last_error.as_deref().unwrap().contains("500"));
    assert!(v.validate(&new_token, wall_now()).is_ok());
    server.set(StatusCode::OK, "{\"keys\": []}".into());
    let hits = server.hits();
    let _ = v.validate(&sign(&es256("2026-04"), &live_claims()), wall_now());
    assert!(eventually(5, || server.hits() > hits).await);
    assert!(
        eventually(2, || v.status()[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("no usable signing key")))
        .await
    );
    assert!(v.validate(&new_token, wall_now()).is_ok());
    assert_eq!(v.status()[0].key_ids, ["2026-02"]);

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), tasks.join())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_jwks_server_with_an_untrusted_certificate_gives_no_keys() {
    let key = es256("k1");
    let server = JwksServer::start(jwks(&[&key])).await;
    let other = JwksServer::start(jwks(&[&key])).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("other-ca.pem");
    std::fs::write(&ca_file, &other.ca_pem).unwrap();
    let mut ic = IssuerConfig::with_url(ISSUER, AUDIENCE, &server.url);
    ic.ca_file = Some(ca_file);
    let v = JwtValidator::new(&OidcConfig {
        issuers: vec![ic],
        ..OidcConfig::default()
    })
    .unwrap();
    let stop = CancellationToken::new();
    let tasks = v.spawn_refresh(Arc::new(SystemClock), stop.clone());
    assert!(eventually(5, || v.status()[0].last_error.is_some()).await);
    let err = v.status()[0].last_error.clone().unwrap();
    assert!(
        err.contains("certificate") || err.contains("Unknown"),
        "{err}"
    );
    assert_eq!(
        v.validate(&sign(&key, &live_claims()), wall_now()),
        Err(JwtError::KeysUnavailable)
    );
    assert_eq!(server.hits(), 0, "no request crossed the failed handshake");
    stop.cancel();
    tasks.join().await;
}
