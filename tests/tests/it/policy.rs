//! Policy end to end (DESIGN.md §4): the clinic Rego policy built into a signed OPA
//! bundle, pushed to a real control plane, streamed to a real agent, compiled to wasm
//! and evaluated for every request that crosses the mesh — with end-user JWTs from a
//! test OIDC issuer, route templates, consent records and break-glass grants.
//!
//! One mesh serves the whole scenario (compiling the policy is the slow part), in steps
//! that each assert what an operator would check.

mod precompile;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use wardmesh_agent::jwt::{IssuerConfig, OidcConfig};
use wardmesh_agent::policy::{PolicyConfig, PolicyKeyConfig};
use wardmesh_agent::routes::RouteConfig;
use wardmesh_control_plane::config::PolicyKey;
use wardmesh_policy::{SignatureAlgorithm, SigningKey, build_bundle, sign_bundle};
use wardmesh_proto::paths;
use wardmesh_tests::agents::{EchoApp, TestAgent, service};
use wardmesh_tests::{TestCp, TestMesh};

use crate::dataplane::{A, B, NOTES_URL, eventually, id, proxy_client, send};

const ISSUER: &str = "https://idp.clinic.test";
const AUDIENCE: &str = "wardmesh";
pub(super) const KEY_ID: &str = "clinic-test";

/// The repository's `policies/clinic`.
pub(super) fn clinic_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/clinic")
}

/// A shared compiled-module cache: the first test run compiles, the rest map.
fn cache_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/wardmesh-test-policy-cache");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

struct Idp {
    key: EncodingKey,
    jwks_file: PathBuf,
}

impl Idp {
    fn new(dir: &Path) -> Self {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(kp.public_key_raw());
        let jwks = json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "idp-1", "alg": "EdDSA", "use": "sig"}]});
        let jwks_file = dir.join("idp-jwks.json");
        std::fs::write(&jwks_file, jwks.to_string()).unwrap();
        Self {
            key: EncodingKey::from_ed_der(&kp.serialize_der()),
            jwks_file,
        }
    }

    fn token(&self, sub: &str, roles: &[&str], amr: &[&str], aud: &str, exp_in: i64) -> String {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = Some("idp-1".into());
        let claims = json!({"iss": ISSUER, "aud": aud, "sub": sub, "roles": roles, "amr": amr,
                            "iat": now, "nbf": now - 5, "exp": now + exp_in});
        jsonwebtoken::encode(&h, &claims, &self.key).unwrap()
    }
}

fn signed_bundle(revision: &str, src: &Path, key: &SigningKey) -> Vec<u8> {
    sign_bundle(&build_bundle(src, revision).unwrap(), key).unwrap()
}

/// The clinic policy with one change: billing may also read notes (so a push visibly
/// flips a decision).
fn permissive_copy(dir: &Path) -> PathBuf {
    let out = dir.join("clinic-v2");
    std::fs::create_dir_all(&out).unwrap();
    for f in ["authz.rego", "data.json"] {
        std::fs::copy(clinic_dir().join(f), out.join(f)).unwrap();
    }
    let rego = std::fs::read_to_string(out.join("authz.rego")).unwrap();
    let from = "\t\"billing\" in input.user.roles\n\trecord_kind == \"billing\"\n";
    assert_eq!(
        rego.matches(from).count(),
        1,
        "the clinic policy changed shape"
    );
    let rego = rego.replace(from, "\t\"billing\" in input.user.roles\n");
    std::fs::write(out.join("authz.rego"), rego).unwrap();
    out
}

async fn push(cp: &TestCp, bundle: Vec<u8>, mode: &str) -> (u16, Value) {
    let resp = cp
        .client(None)
        .post(format!("{}{}?mode={mode}", cp.url, paths::POLICY))
        .bearer_auth(&cp.admin_token)
        .header("content-type", "application/gzip")
        .body(bundle)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn api(
    cp: &TestCp,
    method: reqwest::Method,
    path: &str,
    token: Option<&String>,
    body: Option<&Value>,
) -> (u16, Value) {
    let a = cp
        .call(
            &cp.client(None),
            method,
            path,
            token.map(String::as_str),
            body,
        )
        .await;
    (a.status, a.body)
}

fn running_revision(agent: &TestAgent) -> Option<String> {
    agent.agent.policy().status().revision
}

struct Scene {
    _mesh: TestMesh,
    cp: TestCp,
    _app: EchoApp,
    a: TestAgent,
    b: TestAgent,
    idp: Idp,
    key: SigningKey,
}

async fn scene() -> Scene {
    let mesh = TestMesh::new();
    let key = SigningKey::generate(SignatureAlgorithm::EdDsa, KEY_ID).unwrap();
    let pub_file = mesh.path().join("policy.pub.pem");
    std::fs::write(&pub_file, key.verifying_key().to_spki_pem()).unwrap();
    let mut cfg = mesh.config(None);
    cfg.policy_keys = vec![PolicyKey {
        key_id: KEY_ID.into(),
        file: pub_file.clone(),
    }];
    let cp = mesh.start_with(cfg).await;
    let idp = Idp::new(&mesh.path());
    let app = EchoApp::start().await;
    let app_addr = app.addr;
    let policy = PolicyConfig {
        public_keys: vec![PolicyKeyConfig {
            key_id: KEY_ID.into(),
            file: pub_file,
        }],
        cache_dir: Some(cache_dir()),
        ..PolicyConfig::default()
    };
    let oidc = OidcConfig {
        issuers: vec![IssuerConfig::with_file(
            ISSUER,
            AUDIENCE,
            idp.jwks_file.clone(),
        )],
        ..OidcConfig::default()
    };
    let b = TestAgent::start(&cp, B, |c| {
        let inbound = c.inbound.as_mut().unwrap();
        inbound.app = Some(app_addr);
        inbound.routes = vec![
            RouteConfig {
                template: "/patients/{patient}/notes".into(),
                subject: Some("patient".into()),
                phi: true,
            },
            RouteConfig {
                template: "/patients/{patient}/billing".into(),
                subject: Some("patient".into()),
                phi: true,
            },
        ];
        c.policy = policy;
        c.oidc = Some(oidc);
    })
    .await;
    let b_inbound = b.inbound();
    let a = TestAgent::start(&cp, A, |c| {
        c.outbound.as_mut().unwrap().services = vec![service(
            "notes.clinic",
            "notes.clinic:80",
            b_inbound,
            &id(B),
        )];
    })
    .await;
    Scene {
        _mesh: mesh,
        cp,
        _app: app,
        a,
        b,
        idp,
        key,
    }
}

impl Scene {
    async fn get(&self, path: &str, token: Option<&str>, purpose: &str) -> crate::dataplane::Reply {
        let mut req = proxy_client(&self.a)
            .get(format!("{NOTES_URL}{path}"))
            .header("x-purpose-of-use", purpose);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        send(req).await
    }

    fn clinician(&self) -> String {
        self.idp
            .token("dr-ada", &["clinician"], &["pwd", "otp"], AUDIENCE, 600)
    }

    fn billing(&self) -> String {
        self.idp
            .token("bill-bo", &["billing"], &["pwd"], AUDIENCE, 600)
    }

    async fn activate(&self, revision: &str) {
        let limit = Duration::from_secs(60);
        eventually(&format!("agent running {revision}"), limit, || {
            running_revision(&self.b).as_deref() == Some(revision)
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn signed_bundles_decide_live_traffic_and_bad_input_changes_nothing() {
    let s = scene().await;
    let work = tempfile::tempdir().unwrap();

    // Before any bundle: the allow-list (empty) decides — default deny.
    let r = s
        .get("/patients/p-1/notes", Some(&s.clinician()), "TREAT")
        .await;
    assert_eq!(r.status, 403, "{}", r.json);
    assert_eq!(r.json["rule"], "default-deny");

    // Push r1 (the clinic library) and wait for the agent to run it.
    let (status, body) = push(&s.cp, signed_bundle("r1", &clinic_dir(), &s.key), "enforce").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["revision"], "r1");
    s.activate("r1").await;
    assert_eq!(
        s.b.metric(
            "wardmesh_agent_policy_info",
            &[("revision", "r1"), ("mode", "enforce")]
        ),
        1.0
    );

    // The clinic rules, through both agents with real JWTs.
    let r = s
        .get("/patients/p-1/notes", Some(&s.clinician()), "TREAT")
        .await;
    assert_eq!(
        r.status, 200,
        "clinician with MFA reads notes for TREAT: {}",
        r.json
    );
    let r = s
        .get("/patients/p-1/notes", Some(&s.billing()), "HPAYMT")
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(
        (r.json["rule"].as_str(), r.json["policy_revision"].as_str()),
        (Some("default-deny"), Some("r1"))
    );
    let r = s
        .get("/patients/p-1/billing", Some(&s.billing()), "HPAYMT")
        .await;
    assert_eq!(r.status, 200, "billing reads billing: {}", r.json);
    let no_mfa = s
        .idp
        .token("dr-ada", &["clinician"], &["pwd"], AUDIENCE, 600);
    let r = s.get("/patients/p-1/notes", Some(&no_mfa), "TREAT").await;
    assert_eq!(
        (r.status, r.json["rule"].as_str()),
        (403, Some("step-up-mfa"))
    );
    let r = s.get("/patients/p-1/notes", None, "TREAT").await;
    assert_eq!(r.status, 403, "no user: default deny");

    // Invalid tokens are a 401 with the reason, never a policy input.
    for (token, reason) in [
        (
            s.idp
                .token("dr-ada", &["clinician"], &["otp"], "other-aud", 600),
            "wrong_audience",
        ),
        (
            s.idp
                .token("dr-ada", &["clinician"], &["otp"], AUDIENCE, -120),
            "token_expired",
        ),
        (
            "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.".to_owned(),
            "alg_not_allowed",
        ),
    ] {
        let r = s.get("/patients/p-1/notes", Some(&token), "TREAT").await;
        assert_eq!(r.status, 401, "{reason}: {}", r.json);
        assert_eq!(r.json["reason"], reason, "{}", r.json);
    }

    // Consent: a Part 2 record without consent for TREAT is refused; consent opens it.
    let gen_before = s.b.agent.policy().status().context_generation;
    let (code, v) = api(
        &s.cp,
        reqwest::Method::PUT,
        paths::CONSENTS,
        Some(&s.cp.admin_token),
        Some(&json!({"subject": "p-2", "purpose": "HPAYMT", "allow": true, "part2": true})),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    eventually("consent reaches the agent", Duration::from_secs(20), || {
        s.b.agent.policy().status().context_generation != gen_before
    })
    .await;
    let r = s
        .get("/patients/p-2/notes", Some(&s.clinician()), "TREAT")
        .await;
    assert_eq!(
        (r.status, r.json["rule"].as_str()),
        (403, Some("part2-consent-required"))
    );

    // Break-glass: ETREAT is refused without a grant and allowed with one.
    let r = s
        .get("/patients/p-2/notes", Some(&s.clinician()), "ETREAT")
        .await;
    assert_eq!(r.status, 403);
    let (code, grant) = api(&s.cp, reqwest::Method::POST, paths::BREAKGLASS, Some(&s.cp.admin_token),
              Some(&json!({"user": "dr-ada", "reason": "unconscious patient in the ER", "ttl_seconds": 600})))
        .await;
    assert_eq!(code, 200, "{grant}");
    let mut allowed = None;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        let r = s
            .get("/patients/p-2/notes", Some(&s.clinician()), "ETREAT")
            .await;
        if r.status == 200 {
            allowed = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(allowed.is_some(), "break-glass grant honoured within 20 s");
    let grant_id = grant["grant_id"].as_str().unwrap().to_owned();
    let (code, pending) = api(
        &s.cp,
        reqwest::Method::GET,
        &format!("{}?pending=true", paths::BREAKGLASS),
        Some(&s.cp.admin_token),
        None,
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(
        pending[0]["grant"]["grant_id"],
        grant_id.as_str(),
        "{pending}"
    );
    assert_eq!(pending[0]["active"], true);
    let review = paths::BREAKGLASS_REVIEW.replace("{grant_id}", &grant_id);
    let note = json!({"note": "ER admission confirmed"});
    let (code, v) = api(
        &s.cp,
        reqwest::Method::POST,
        &review,
        Some(&s.cp.admin_token),
        Some(&note),
    )
    .await;
    assert_eq!(
        (code, v["review"]["note"].as_str()),
        (200, Some("ER admission confirmed")),
        "{v}"
    );
    let (code, v) = api(
        &s.cp,
        reqwest::Method::POST,
        &review,
        Some(&s.cp.admin_token),
        Some(&note),
    )
    .await;
    assert_eq!(
        (code, v["error"].as_str()),
        (409, Some("already_reviewed")),
        "{v}"
    );
    let (_, pending) = api(
        &s.cp,
        reqwest::Method::GET,
        &format!("{}?pending=true", paths::BREAKGLASS),
        Some(&s.cp.admin_token),
        None,
    )
    .await;
    assert_eq!(pending, json!([]), "a reviewed grant leaves the queue");
    let short = json!({"user": "dr-ada", "reason": "because", "ttl_seconds": 600});
    let (code, v) = api(
        &s.cp,
        reqwest::Method::POST,
        paths::BREAKGLASS,
        Some(&s.cp.admin_token),
        Some(&short),
    )
    .await;
    assert_eq!(
        (code, v["error"].as_str()),
        (400, Some("invalid_reason")),
        "{v}"
    );
    let long = json!({"user": "dr-ada", "reason": "unconscious patient in the ER", "ttl_seconds": 200_000});
    let (code, v) = api(
        &s.cp,
        reqwest::Method::POST,
        paths::BREAKGLASS,
        Some(&s.cp.admin_token),
        Some(&long),
    )
    .await;
    assert_eq!(
        (code, v["error"].as_str()),
        (400, Some("invalid_ttl")),
        "{v}"
    );
    assert!(s.b.metric("wardmesh_inbound_break_glass_uses_total", &[]) >= 1.0);

    // Bad bundles: refused with a reason; the agent keeps running r1.
    let unsigned = build_bundle(&clinic_dir(), "r-unsigned").unwrap();
    let (status, body) = push(&s.cp, unsigned, "enforce").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_bundle")),
        "{body}"
    );
    assert!(
        body["message"].as_str().unwrap().contains("not signed"),
        "{body}"
    );
    let stranger = SigningKey::generate(SignatureAlgorithm::EdDsa, "stranger").unwrap();
    let (status, body) = push(
        &s.cp,
        signed_bundle("r-x", &clinic_dir(), &stranger),
        "enforce",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("not a configured verification key"),
        "{body}"
    );
    let (status, body) = push(&s.cp, b"\x1f\x8bnot a bundle".to_vec(), "enforce").await;
    assert_eq!(status, 400, "{body}");
    let (code, st) = api(
        &s.cp,
        reqwest::Method::GET,
        paths::POLICY,
        Some(&s.cp.admin_token),
        None,
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(st["active"]["revision"], "r1");
    assert_eq!(running_revision(&s.b).as_deref(), Some("r1"));

    // A live swap: traffic flows the whole time; r2 flips billing's access to notes.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let client = proxy_client(&s.a);
        let token = s.clinician();
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(90);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let r = client
                    .get(format!("{NOTES_URL}/patients/p-1/notes"))
                    .header("x-purpose-of-use", "TREAT")
                    .bearer_auth(&token)
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pushed = Instant::now();
    let (status, body) = push(
        &s.cp,
        signed_bundle("r2", &permissive_copy(work.path()), &s.key),
        "enforce",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    loop {
        let r = s
            .get("/patients/p-1/notes", Some(&s.billing()), "HPAYMT")
            .await;
        if r.status == 200 {
            break;
        }
        assert_eq!(r.json["policy_revision"], "r1");
        assert!(
            pushed.elapsed() < Duration::from_secs(60),
            "r2 not in force after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let flip = pushed.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    eprintln!(
        "policy swap: decision flipped {flip:?} after the push; {} requests ok, {} failed during the swap",
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no failed requests during the swap"
    );
    assert!(ok.load(Ordering::Relaxed) > 10);

    // Dry-run: r1 back, not enforced — its denies are counted, the request goes through.
    let (code, v) = api(
        &s.cp,
        reqwest::Method::POST,
        paths::POLICY_ACTIVATE,
        Some(&s.cp.admin_token),
        Some(&json!({"revision": "r1", "mode": "dry-run"})),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    s.activate("r1").await;
    eventually("dry-run mode", Duration::from_secs(20), || {
        s.b.agent.policy().status().mode == Some(wardmesh_proto::policy::PolicyMode::DryRun)
    })
    .await;
    let r = s
        .get("/patients/p-1/notes", Some(&s.billing()), "HPAYMT")
        .await;
    assert_eq!(r.status, 200, "dry-run does not block: {}", r.json);
    assert!(
        s.b.metric(
            "wardmesh_inbound_dry_run_denies_total",
            &[("rule", "default-deny")]
        ) >= 1.0
    );

    // Rollback to enforce: the deny is back.
    let (code, _) = api(
        &s.cp,
        reqwest::Method::POST,
        paths::POLICY_ACTIVATE,
        Some(&s.cp.admin_token),
        Some(&json!({"revision": "r1", "mode": "enforce"})),
    )
    .await;
    assert_eq!(code, 200);
    eventually("enforce mode", Duration::from_secs(20), || {
        s.b.agent.policy().status().mode == Some(wardmesh_proto::policy::PolicyMode::Enforce)
    })
    .await;
    let r = s
        .get("/patients/p-1/notes", Some(&s.billing()), "HPAYMT")
        .await;
    assert_eq!(r.status, 403);

    // Every push, activation, consent and grant is in the audit log.
    let (code, entries) = api(
        &s.cp,
        reqwest::Method::GET,
        &format!("{}?kind=policy.*&limit=100", paths::AUDIT_ENTRIES),
        Some(&s.cp.admin_token),
        None,
    )
    .await;
    assert_eq!(code, 200);
    let kinds: Vec<&str> = entries
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert_eq!(
        kinds,
        [
            "policy.push",
            "policy.push",
            "policy.activate",
            "policy.activate"
        ],
        "{entries}"
    );

    s.a.shutdown().await;
    s.b.shutdown().await;
    s.cp.cp.shutdown().await;
}
