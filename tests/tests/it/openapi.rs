//! The OpenAPI document (api/openapi.yaml) and the served routes agree: every documented
//! path is served, and every API path constant is documented.

use reqwest::Method;
use wardmesh_proto::paths;
use wardmesh_tests::TestMesh;

fn documented_paths() -> Vec<String> {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../api/openapi.yaml"))
        .unwrap();
    let body = doc.split_once("\npaths:\n").expect("a paths section").1;
    body.lines()
        .filter(|l| l.starts_with("  /") && l.ends_with(':'))
        .map(|l| l.trim().trim_end_matches(':').to_owned())
        .collect()
}

#[tokio::test]
async fn openapi_document_matches_the_served_routes() {
    let documented = documented_paths();
    let constants = [
        paths::ATTEST,
        paths::RENEW,
        paths::AGENT_SYNC,
        paths::JOIN_TOKENS,
        paths::QUARANTINE,
        paths::AGENTS,
        paths::ISSUANCES,
        paths::EVENTS,
        paths::CA,
        paths::CA_RELOAD,
        paths::AUDIT_ENTRIES,
        paths::AUDIT_CHECKPOINTS,
        paths::AUDIT_KEY,
        paths::AUDIT_DISCLOSURES,
        paths::FLOWS,
        paths::POLICY,
        paths::POLICY_ACTIVATE,
        paths::AGENT_POLICY_BUNDLE,
        paths::AGENT_POLICY_CONTEXT,
        paths::CONSENTS,
        paths::BREAKGLASS,
        paths::BREAKGLASS_REVIEW,
        paths::LIVE,
        paths::READY,
        paths::METRICS,
    ];
    for c in constants {
        assert!(
            documented.iter().any(|d| d == c),
            "{c} is served but not in api/openapi.yaml"
        );
    }
    let mesh = TestMesh::new();
    let cp = mesh.start().await;
    let client = cp.client(None);
    for path in &documented {
        let r = cp.call::<()>(&client, Method::GET, path, None, None).await;
        assert_ne!(r.status, 404, "{path} is documented but not served");
    }
    let missing = cp
        .call::<()>(&client, Method::GET, "/v1/nope", None, None)
        .await;
    assert_eq!(
        (missing.status, missing.code().as_str()),
        (404, "not_found")
    );
    cp.cp.shutdown().await;
}
