//! The control plane's identity API over real HTTPS: attestation, issuance, renewal,
//! quarantine and operator authorisation, with every bad input refused and nothing
//! changed.

use reqwest::Method;
use serde_json::json;
use wardmesh_identity::SpiffeId;
use wardmesh_identity::keygen::{generate_anonymous_csr, generate_csr};
use wardmesh_identity::svid::{certs_from_pem, inspect_leaf};
use wardmesh_proto::identity::{AttestRequest, Attestation, RenewRequest, SvidResponse};
use wardmesh_proto::operator::{IssuanceInfo, QuarantineRequest};
use wardmesh_proto::paths;
use wardmesh_store::OperatorToken;
use wardmesh_tests::cp::{TestCp, svid_from};
use wardmesh_tests::{TestMesh, prereq};

const ID: &str = "spiffe://wardmesh.local/ns/clinic/sa/notes-api";

fn attest_body(csr_pem: &str, token: &str) -> AttestRequest {
    AttestRequest {
        csr_pem: csr_pem.into(),
        attestation: Attestation::JoinToken {
            token: token.into(),
        },
    }
}

async fn attest(cp: &TestCp, csr_pem: &str, token: &str) -> wardmesh_tests::cp::Answer {
    cp.call(
        &cp.client(None),
        Method::POST,
        paths::ATTEST,
        None,
        Some(&attest_body(csr_pem, token)),
    )
    .await
}

/// The main identity flow; run on SQLite and on PostgreSQL.
async fn issuance_flow(cp: &TestCp) {
    let token = cp.join_token(ID).await;
    let key = generate_anonymous_csr().unwrap();
    let svid: SvidResponse = attest(cp, &key.csr_pem, &token).await.ok();
    assert_eq!(svid.spiffe_id, ID);
    let chain = certs_from_pem(&svid.chain_pem).unwrap();
    assert_eq!(chain.len(), 2, "leaf + intermediate");
    let info = inspect_leaf(&chain[0]).unwrap();
    assert_eq!(info.spiffe_id.to_string(), ID);
    let lifetime = info.not_after - info.not_before;
    assert!(
        lifetime <= time::Duration::minutes(61) && lifetime >= time::Duration::minutes(59),
        "default ttl 1h (+60 s backdate), got {lifetime}"
    );

    // The token is single-use.
    let again = attest(cp, &key.csr_pem, &token).await;
    assert_eq!(again.status, 401);
    assert!(
        again.err().message.contains("already used"),
        "{:?}",
        again.err()
    );

    // Renewal over mTLS with the SVID, for the same identity.
    let s = svid_from(&key, &svid.chain_pem);
    let key2 = generate_csr(&SpiffeId::parse(ID).unwrap()).unwrap();
    let renewed: SvidResponse = cp
        .call(
            &cp.client(Some(&s)),
            Method::POST,
            paths::RENEW,
            None,
            Some(&RenewRequest {
                csr_pem: key2.csr_pem.clone(),
            }),
        )
        .await
        .ok();
    assert_eq!(renewed.spiffe_id, ID);
    assert_ne!(renewed.chain_pem, svid.chain_pem);

    // Both issuances are on record, newest first.
    let hist: Vec<IssuanceInfo> = cp
        .call::<()>(
            &cp.client(None),
            Method::GET,
            &format!("{}?spiffe_id={ID}", paths::ISSUANCES),
            Some(&cp.admin_token),
            None,
        )
        .await
        .ok();
    let via: Vec<&str> = hist.iter().map(|i| i.attestation.as_str()).collect();
    assert_eq!(via, ["renewal", "join_token"]);
}

#[tokio::test]
async fn issuance_flow_on_sqlite() {
    let mesh = TestMesh::new();
    let cp = mesh.start().await;
    issuance_flow(&cp).await;
    cp.cp.shutdown().await;
}

#[tokio::test]
async fn issuance_flow_on_postgres() {
    let Some(admin) = prereq::postgres_url("issuance_flow_on_postgres") else {
        return;
    };
    let url = prereq::fresh_postgres_db(&admin).await;
    let mesh = TestMesh::new();
    let cp = mesh.start_with(mesh.config(Some(url))).await;
    assert_eq!(cp.cp.store.backend_name(), "postgres");
    issuance_flow(&cp).await;
    cp.cp.shutdown().await;
}

#[tokio::test]
async fn issued_leaf_verifies_with_openssl() {
    if !prereq::command("issued_leaf_verifies_with_openssl", "openssl") {
        return;
    }
    let mesh = TestMesh::new();
    let cp = mesh.start().await;
    let token = cp.join_token(ID).await;
    let key = generate_anonymous_csr().unwrap();
    let svid: SvidResponse = attest(&cp, &key.csr_pem, &token).await.ok();
    let dir = tempfile::tempdir().unwrap();
    let pems: Vec<String> = svid
        .chain_pem
        .split_inclusive("-----END CERTIFICATE-----\n")
        .map(str::to_owned)
        .collect();
    std::fs::write(dir.path().join("leaf.pem"), &pems[0]).unwrap();
    std::fs::write(dir.path().join("int.pem"), &pems[1]).unwrap();
    std::fs::write(dir.path().join("bundle.pem"), &svid.trust_bundle_pem).unwrap();
    let out = std::process::Command::new("openssl")
        .current_dir(dir.path())
        .args([
            "verify",
            "-CAfile",
            "bundle.pem",
            "-untrusted",
            "int.pem",
            "leaf.pem",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "leaf.pem: OK");
    let text = std::process::Command::new("openssl")
        .current_dir(dir.path())
        .args(["x509", "-in", "leaf.pem", "-noout", "-text"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert_eq!(text.matches("URI:").count(), 1, "{text}");
    assert!(text.contains(&format!("URI:{ID}")));
    assert!(text.contains("CA:FALSE"));
    assert!(text.contains("TLS Web Server Authentication, TLS Web Client Authentication"));
    cp.cp.shutdown().await;
}

#[tokio::test]
async fn bad_csr_is_refused_and_does_not_spend_the_token() {
    let mesh = TestMesh::new();
    let cp = mesh.start().await;
    let token = cp.join_token(ID).await;

    let malformed = attest(
        &cp,
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        &token,
    )
    .await;
    assert_eq!(
        (malformed.status, malformed.code().as_str()),
        (400, "bad_csr")
    );

    let other =
        generate_csr(&SpiffeId::parse("spiffe://wardmesh.local/ns/clinic/sa/admin").unwrap())
            .unwrap();
    let mismatch = attest(&cp, &other.csr_pem, &token).await;
    assert_eq!(mismatch.status, 400);
    assert!(
        mismatch.err().message.contains("attestation proves"),
        "{:?}",
        mismatch.err()
    );

    let big = "A".repeat(100 * 1024);
    let too_big = attest(&cp, &big, &token).await;
    assert_eq!(
        (too_big.status, too_big.code().as_str()),
        (413, "body_too_large")
    );

    // Nothing was issued and the token still works.
    let hist: Vec<IssuanceInfo> = cp
        .call::<()>(
            &cp.client(None),
            Method::GET,
            paths::ISSUANCES,
            Some(&cp.admin_token),
            None,
        )
        .await
        .ok();
    assert!(hist.is_empty());
    let good = generate_anonymous_csr().unwrap();
    let svid: SvidResponse = attest(&cp, &good.csr_pem, &token).await.ok();
    assert_eq!(svid.spiffe_id, ID);
    cp.cp.shutdown().await;
}

#[tokio::test]
async fn bad_attestations_are_refused() {
    let mesh = TestMesh::new();
    let cp = mesh.start().await;
    let csr = generate_anonymous_csr().unwrap();
    let unknown = attest(
        &cp,
        &csr.csr_pem,
        "wmjt_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    )
    .await;
    assert_eq!(
        (unknown.status, unknown.code().as_str()),
        (401, "attestation_failed")
    );
    let junk = attest(&cp, &csr.csr_pem, "hello").await;
    assert_eq!(junk.status, 401);
    assert!(junk.err().message.contains("malformed"));

    // SA tokens are refused when no Kubernetes issuer is configured.
    let sa = cp
        .call(
            &cp.client(None),
            Method::POST,
            paths::ATTEST,
            None,
            Some(&AttestRequest {
                csr_pem: csr.csr_pem.clone(),
                attestation: Attestation::K8sSaToken {
                    token: "x.y.z".into(),
                },
            }),
        )
        .await;
    assert_eq!(
        (sa.status, sa.code().as_str()),
        (400, "attestation_unsupported")
    );

    // Unknown fields are a clear error, not silently ignored.
    let typo = cp
        .call(
            &cp.client(None),
            Method::POST,
            paths::ATTEST,
            None,
            Some(&json!({"csr_pem": csr.csr_pem, "attestation": {"type": "join_token", "token": "t"}, "ttl": 5})),
        )
        .await;
    assert_eq!(typo.status, 422);
    assert!(
        typo.err().message.contains("unknown field"),
        "{:?}",
        typo.err()
    );

    // Renewal needs a client certificate.
    let renew = cp
        .call(
            &cp.client(None),
            Method::POST,
            paths::RENEW,
            None,
            Some(&RenewRequest {
                csr_pem: csr.csr_pem,
            }),
        )
        .await;
    assert_eq!(
        (renew.status, renew.code().as_str()),
        (401, "client_certificate_required")
    );
    cp.cp.shutdown().await;
}

#[tokio::test]
async fn expired_join_token_is_refused() {
    let mesh = TestMesh::new();
    let cp = mesh.start().await;
    let (token, hash) = wardmesh_identity::attest::new_join_token();
    let now = time::OffsetDateTime::now_utc();
    cp.cp
        .store
        .insert_join_token(&wardmesh_store::JoinToken {
            token_hash: hash,
            spiffe_id: ID.into(),
            created_at: now - time::Duration::hours(2),
            expires_at: now - time::Duration::hours(1),
            created_by: "test".into(),
        })
        .await
        .unwrap();
    let csr = generate_anonymous_csr().unwrap();
    let r = attest(&cp, &csr.csr_pem, &token).await;
    assert_eq!(r.status, 401);
    assert!(r.err().message.contains("expired"), "{:?}", r.err());
    cp.cp.shutdown().await;
}

#[tokio::test]
async fn quarantine_stops_issuance_and_renewal() {
    let mesh = TestMesh::new();
    let cp = mesh.start().await;
    let token = cp.join_token(ID).await;
    let key = generate_anonymous_csr().unwrap();
    let svid: SvidResponse = attest(&cp, &key.csr_pem, &token).await.ok();

    let c = cp.client(None);
    let q = cp
        .call(
            &c,
            Method::POST,
            paths::QUARANTINE,
            Some(&cp.admin_token),
            Some(&QuarantineRequest {
                spiffe_id: ID.into(),
                reason: "lost laptop".into(),
            }),
        )
        .await;
    assert_eq!(q.status, 200, "{}", q.body);
    assert_eq!(q.body["changed"], true);

    // New tokens for the ID still can be made, but attestation is refused.
    let token2 = cp.join_token(ID).await;
    let refused = attest(&cp, &generate_anonymous_csr().unwrap().csr_pem, &token2).await;
    assert_eq!(
        (refused.status, refused.code().as_str()),
        (403, "quarantined")
    );

    let s = svid_from(&key, &svid.chain_pem);
    let renew = cp
        .call(
            &cp.client(Some(&s)),
            Method::POST,
            paths::RENEW,
            None,
            Some(&RenewRequest {
                csr_pem: generate_csr(&SpiffeId::parse(ID).unwrap()).unwrap().csr_pem,
            }),
        )
        .await;
    assert_eq!((renew.status, renew.code().as_str()), (403, "quarantined"));

    // Lifting it restores issuance; the unused token2 still works.
    let u = cp
        .call::<()>(
            &c,
            Method::DELETE,
            &format!("{}?spiffe_id={ID}", paths::QUARANTINE),
            Some(&cp.admin_token),
            None,
        )
        .await;
    assert_eq!(u.body["changed"], true, "{}", u.body);
    let ok: SvidResponse = attest(&cp, &generate_anonymous_csr().unwrap().csr_pem, &token2)
        .await
        .ok();
    assert_eq!(ok.spiffe_id, ID);
    cp.cp.shutdown().await;
}

#[tokio::test]
async fn operator_endpoints_enforce_tokens_and_roles() {
    let mesh = TestMesh::new();
    let cp = mesh.start().await;
    let c = cp.client(None);
    let body = json!({"spiffe_id": ID});
    let none = cp
        .call(&c, Method::POST, paths::JOIN_TOKENS, None, Some(&body))
        .await;
    assert_eq!(
        (none.status, none.code().as_str()),
        (401, "operator_token_required")
    );
    let wrong = cp
        .call(
            &c,
            Method::POST,
            paths::JOIN_TOKENS,
            Some("wmop_nope"),
            Some(&body),
        )
        .await;
    assert_eq!(
        (wrong.status, wrong.code().as_str()),
        (401, "invalid_operator_token")
    );

    let viewer = "wmop_viewer-token-for-tests";
    cp.cp
        .store
        .insert_operator_token(&OperatorToken {
            token_hash: wardmesh_identity::attest::hash_secret(viewer),
            name: "alice".into(),
            role: "viewer".into(),
            created_at: time::OffsetDateTime::now_utc(),
        })
        .await
        .unwrap();
    let denied = cp
        .call(
            &c,
            Method::POST,
            paths::JOIN_TOKENS,
            Some(viewer),
            Some(&body),
        )
        .await;
    assert_eq!(
        (denied.status, denied.code().as_str()),
        (403, "insufficient_role")
    );
    let audit = cp
        .call::<()>(&c, Method::GET, paths::EVENTS, Some(viewer), None)
        .await;
    assert_eq!(audit.status, 403, "viewers may not read events");
    let agents = cp
        .call::<()>(&c, Method::GET, paths::AGENTS, Some(viewer), None)
        .await;
    assert_eq!(agents.status, 200);

    // Another trust domain, or a malformed ID, never gets a token.
    let other_td = cp
        .call(
            &c,
            Method::POST,
            paths::JOIN_TOKENS,
            Some(&cp.admin_token),
            Some(&json!({"spiffe_id": "spiffe://evil.example/ns/a/sa/b"})),
        )
        .await;
    assert_eq!(
        (other_td.status, other_td.code().as_str()),
        (400, "unknown_trust_domain")
    );
    let bad_id = cp
        .call(
            &c,
            Method::POST,
            paths::JOIN_TOKENS,
            Some(&cp.admin_token),
            Some(&json!({"spiffe_id": "spiffe://wardmesh.local/ns/../x"})),
        )
        .await;
    assert_eq!(
        (bad_id.status, bad_id.code().as_str()),
        (400, "invalid_spiffe_id")
    );

    // Operator writes are recorded with the operator's name.
    cp.join_token(ID).await;
    let events = cp
        .call::<()>(&c, Method::GET, paths::EVENTS, Some(&cp.admin_token), None)
        .await;
    let kinds: Vec<(String, String)> = events
        .body
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_owned(),
                e["actor"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [(
            "operator.join_token.created".to_owned(),
            "operator:bootstrap-admin".to_owned()
        )]
    );
    assert!(
        !events.body.to_string().contains("wmjt_"),
        "tokens never appear in events"
    );
    cp.cp.shutdown().await;
}
