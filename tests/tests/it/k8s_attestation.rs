//! Kubernetes service-account token attestation through the real API: a test issuer
//! signs projected-style tokens; the control plane verifies them against its JWKS and
//! issues `spiffe://<td>/ns/<ns>/sa/<sa>` from the verified claims only.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::json;
use wardmesh_control_plane::config::K8sAttestation;
use wardmesh_identity::SpiffeId;
use wardmesh_identity::keygen::{generate_anonymous_csr, generate_csr};
use wardmesh_proto::identity::{AttestRequest, Attestation, SvidResponse};
use wardmesh_proto::paths;
use wardmesh_tests::{TestCp, TestMesh};

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

struct Issuer {
    key: EncodingKey,
    jwks: serde_json::Value,
}

fn issuer(kid: &str) -> Issuer {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let raw = kp.public_key_raw();
    assert_eq!(raw[0], 4, "uncompressed point");
    let jwks = json!({"keys": [{
        "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": kid,
        "x": URL_SAFE_NO_PAD.encode(&raw[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&raw[33..65]),
    }]});
    Issuer {
        key: EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap(),
        jwks,
    }
}

fn token(iss: &Issuer, kid: &str, claims: serde_json::Value) -> String {
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some(kid.into());
    jsonwebtoken::encode(&h, &claims, &iss.key).unwrap()
}

fn claims(ns: &str, sa: &str, aud: &str, iss: &str, exp_in: i64) -> serde_json::Value {
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    json!({
        "iss": iss, "aud": [aud], "sub": format!("system:serviceaccount:{ns}:{sa}"),
        "iat": now, "nbf": now, "exp": now + exp_in,
        "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": sa, "uid": "u-1"},
                          "pod": {"name": "notes-7d9f", "uid": "p-1"}},
    })
}

async fn attest(cp: &TestCp, csr: &str, tok: String) -> wardmesh_tests::cp::Answer {
    cp.call(
        &cp.client(None),
        Method::POST,
        paths::ATTEST,
        None,
        Some(&AttestRequest {
            csr_pem: csr.into(),
            attestation: Attestation::K8sSaToken { token: tok },
        }),
    )
    .await
}

#[tokio::test]
async fn sa_tokens_prove_namespace_and_service_account() {
    let iss = issuer("k1");
    let mesh = TestMesh::new();
    let jwks_file = mesh.path().join("jwks.json");
    std::fs::write(&jwks_file, iss.jwks.to_string()).unwrap();
    let mut cfg = mesh.config(None);
    cfg.k8s = Some(K8sAttestation {
        issuer: ISSUER.into(),
        jwks_file,
    });
    let cp = mesh.start_with(cfg).await;
    let csr = generate_anonymous_csr().unwrap();

    let ok: SvidResponse = attest(
        &cp,
        &csr.csr_pem,
        token(
            &iss,
            "k1",
            claims("clinic", "notes-api", "wardmesh", ISSUER, 600),
        ),
    )
    .await
    .ok();
    assert_eq!(
        ok.spiffe_id,
        "spiffe://wardmesh.local/ns/clinic/sa/notes-api"
    );

    // A CSR naming another workload is refused even with a valid token.
    let other =
        generate_csr(&SpiffeId::parse("spiffe://wardmesh.local/ns/clinic/sa/admin").unwrap())
            .unwrap();
    let r = attest(
        &cp,
        &other.csr_pem,
        token(
            &iss,
            "k1",
            claims("clinic", "notes-api", "wardmesh", ISSUER, 600),
        ),
    )
    .await;
    assert_eq!((r.status, r.code().as_str()), (400, "bad_csr"));

    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            token(
                &iss,
                "k1",
                claims("clinic", "notes-api", "wardmesh", ISSUER, -3600),
            ),
            "expired",
        ),
        (
            "wrong audience",
            token(
                &iss,
                "k1",
                claims("clinic", "notes-api", "vault", ISSUER, 600),
            ),
            "audience",
        ),
        (
            "wrong issuer",
            token(
                &iss,
                "k1",
                claims("clinic", "notes-api", "wardmesh", "https://evil", 600),
            ),
            "issuer",
        ),
        (
            "unknown key",
            token(
                &issuer("k2"),
                "k2",
                claims("clinic", "notes-api", "wardmesh", ISSUER, 600),
            ),
            "not in the configured JWKS",
        ),
        (
            "forged signature",
            token(
                &issuer("k1"),
                "k1",
                claims("clinic", "notes-api", "wardmesh", ISSUER, 600),
            ),
            "signature",
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
                URL_SAFE_NO_PAD.encode(claims("clinic", "x", "wardmesh", ISSUER, 600).to_string())
            ),
            "algorithm",
        ),
        ("garbage", "not-a-jwt".into(), "well-formed"),
    ];
    for (what, tok, expect) in cases {
        let r = attest(&cp, &csr.csr_pem, tok).await;
        assert_eq!(r.status, 401, "{what}: {}", r.body);
        assert_eq!(r.code(), "attestation_failed", "{what}");
        assert!(r.err().message.contains(expect), "{what}: {:?}", r.err());
    }

    // Only the one good token produced a certificate.
    let hist = cp
        .call::<()>(
            &cp.client(None),
            Method::GET,
            paths::ISSUANCES,
            Some(&cp.admin_token),
            None,
        )
        .await;
    assert_eq!(hist.body.as_array().unwrap().len(), 1, "{}", hist.body);
    cp.cp.shutdown().await;
}
