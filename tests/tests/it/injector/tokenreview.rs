//! TokenReview attestation against a fake Kubernetes API server serving real TLS: the
//! control plane authenticates with its own token, trusts only the cluster CA, and maps
//! the reviewed service account to `spiffe://<td>/ns/<ns>/sa/<sa>`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use reqwest::Method;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use wardmesh_control_plane::tokenreview::{TOKEN_REVIEW_PATH, TokenReviewConfig, TokenReviewer};
use wardmesh_identity::TrustDomain;
use wardmesh_identity::keygen::generate_anonymous_csr;
use wardmesh_proto::identity::{AttestRequest, Attestation, SvidResponse};
use wardmesh_proto::paths;
use wardmesh_tests::TestMesh;

const REVIEWER_TOKEN: &str = "control-plane-own-token";

/// What the fake API server says about each test token, like a real one would.
async fn token_review(
    headers: HeaderMap,
    body: axum::Json<Value>,
) -> (StatusCode, axum::Json<Value>) {
    if headers.get("authorization").and_then(|v| v.to_str().ok())
        != Some(&format!("Bearer {REVIEWER_TOKEN}"))
    {
        return (
            StatusCode::FORBIDDEN,
            axum::Json(
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "Forbidden", "code": 403,
                "message": "tokenreviews.authentication.k8s.io is forbidden: User \"system:serviceaccount:wardmesh-system:default\" cannot create resource \"tokenreviews\""}),
            ),
        );
    }
    assert_eq!(body["kind"], "TokenReview");
    assert_eq!(body["apiVersion"], "authentication.k8s.io/v1");
    let audiences = body["spec"]["audiences"].clone();
    assert_eq!(
        audiences,
        json!(["wardmesh"]),
        "the control plane asks for its audience"
    );
    let user = |name: &str| {
        json!({"username": name, "uid": "u-1", "groups": ["system:serviceaccounts"],
        "extra": {"authentication.kubernetes.io/pod-name": ["notes-api-5c7d8b9f6-x2x7q"]}})
    };
    let status = match body["spec"]["token"].as_str().unwrap_or("") {
        "good" => {
            json!({"authenticated": true, "user": user("system:serviceaccount:clinic:notes-api"), "audiences": audiences})
        }
        "expired" => {
            json!({"authenticated": false, "error": "[invalid bearer token, service account token has expired]"})
        }
        "other-audience" => {
            json!({"authenticated": true, "user": user("system:serviceaccount:clinic:notes-api"), "audiences": ["https://kubernetes.default.svc"]})
        }
        "node" => {
            json!({"authenticated": true, "user": user("system:node:worker-1"), "audiences": audiences})
        }
        _ => {
            json!({"authenticated": false, "error": "[invalid bearer token, token lookup failed]"})
        }
    };
    (
        StatusCode::CREATED,
        axum::Json(
            json!({"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1", "spec": body["spec"], "status": status}),
        ),
    )
}

/// Starts the fake API server; returns its address and its CA (PEM).
async fn fake_api_server() -> (SocketAddr, String) {
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let cert = CertificateDer::from(ck.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
    let tls = rustls::ServerConfig::builder_with_provider(wardmesh_identity::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route(TOKEN_REVIEW_PATH, post(token_review));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let _ = Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), TowerToHyperService::new(app))
                    .await;
            });
        }
    });
    (addr, ck.cert.pem())
}

fn config(dir: &Path, addr: SocketAddr, ca_pem: &str, own_token: &str) -> TokenReviewConfig {
    std::fs::write(dir.join("ca.crt"), ca_pem).unwrap();
    std::fs::write(dir.join("token"), own_token).unwrap();
    TokenReviewConfig {
        api_server: format!("https://{addr}"),
        ca_file: dir.join("ca.crt"),
        token_file: dir.join("token"),
    }
}

#[tokio::test]
async fn token_review_maps_service_accounts_and_refuses_bad_tokens() {
    let (addr, ca) = fake_api_server().await;
    let dir = tempfile::tempdir().unwrap();
    let td = TrustDomain::new("wardmesh.local").unwrap();
    let r = TokenReviewer::new(&config(dir.path(), addr, &ca, REVIEWER_TOKEN), td.clone()).unwrap();
    assert_eq!(
        r.verify("good").await.unwrap().to_string(),
        "spiffe://wardmesh.local/ns/clinic/sa/notes-api"
    );
    for (token, expect) in [
        ("expired", "has expired"),
        ("other-audience", "audience \"wardmesh\""),
        ("node", "not to a service account"),
        ("unknown-key", "token lookup failed"),
    ] {
        let e = r.verify(token).await.unwrap_err().to_string();
        assert!(e.contains(expect), "{token}: {e}");
    }

    // Without RBAC for tokenreviews the error says which permission is missing.
    let other = tempfile::tempdir().unwrap();
    let r = TokenReviewer::new(
        &config(other.path(), addr, &ca, "not-the-token"),
        td.clone(),
    )
    .unwrap();
    let e = r.verify("good").await.unwrap_err().to_string();
    assert!(
        e.contains("403") && e.contains("`create` on tokenreviews"),
        "{e}"
    );

    // An API server whose certificate the cluster CA does not vouch for is not trusted.
    let (_, stranger_ca) = fake_api_server().await;
    let third = tempfile::tempdir().unwrap();
    let r = TokenReviewer::new(
        &config(third.path(), addr, &stranger_ca, REVIEWER_TOKEN),
        td,
    )
    .unwrap();
    let e = r.verify("good").await.unwrap_err().to_string();
    assert!(e.contains("cannot reach the Kubernetes API server"), "{e}");
}

#[tokio::test]
async fn control_plane_attests_agents_through_token_review() {
    let (addr, ca) = fake_api_server().await;
    let mesh = TestMesh::new();
    let mut cfg = mesh.config(None);
    cfg.token_review = Some(config(&mesh.path(), addr, &ca, REVIEWER_TOKEN));
    let cp = mesh.start_with(cfg).await;
    let csr = generate_anonymous_csr().unwrap();
    let attest = |token: &str| AttestRequest {
        csr_pem: csr.csr_pem.clone(),
        attestation: Attestation::K8sSaToken {
            token: token.into(),
        },
    };
    let client = cp.client(None);
    let ok: SvidResponse = cp
        .call(
            &client,
            Method::POST,
            paths::ATTEST,
            None,
            Some(&attest("good")),
        )
        .await
        .ok();
    assert_eq!(
        ok.spiffe_id,
        "spiffe://wardmesh.local/ns/clinic/sa/notes-api"
    );
    for (token, expect) in [
        ("expired", "expired"),
        ("other-audience", "audience"),
        ("node", "service account"),
    ] {
        let r = cp
            .call(
                &client,
                Method::POST,
                paths::ATTEST,
                None,
                Some(&attest(token)),
            )
            .await;
        assert_eq!(
            (r.status, r.code().as_str()),
            (401, "attestation_failed"),
            "{token}"
        );
        assert!(r.err().message.contains(expect), "{token}: {:?}", r.err());
    }
    cp.cp.shutdown().await;
}
