//! Shared fixtures: the clinic policy directory, keys, a runtime with a module cache so
//! repeated loads of one module compile once per test run.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::{Value, json};
use wardmesh_policy::{
    BundleFiles, PolicyEngine, PolicyRuntime, RuntimeConfig, SignatureAlgorithm, SigningKey,
    VerifiedBundle, build_bundle, sign_bundle, verify_bundle,
};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn clinic_dir() -> PathBuf {
    repo_root().join("policies/clinic")
}

pub fn cache_dir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap()).path()
}

pub fn runtime_with(config: RuntimeConfig) -> PolicyRuntime {
    PolicyRuntime::new(RuntimeConfig {
        module_cache_dir: Some(cache_dir().to_path_buf()),
        ..config
    })
    .unwrap()
}

pub fn runtime() -> PolicyRuntime {
    runtime_with(RuntimeConfig::default())
}

pub fn signing_key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| SigningKey::generate(SignatureAlgorithm::Es256, "clinic-2025").unwrap())
}

/// The clinic policy: built, signed with [`signing_key`], verified.
pub fn clinic_bundle() -> &'static VerifiedBundle {
    static BUNDLE: OnceLock<VerifiedBundle> = OnceLock::new();
    BUNDLE.get_or_init(|| {
        let built = build_bundle(&clinic_dir(), "clinic-v1").unwrap();
        let signed = sign_bundle(&built, signing_key()).unwrap();
        verify_bundle(&signed, &[signing_key().verifying_key()]).unwrap()
    })
}

/// One loaded clinic engine shared by the tests that only evaluate.
pub fn clinic_engine() -> &'static PolicyEngine {
    static ENGINE: OnceLock<PolicyEngine> = OnceLock::new();
    ENGINE.get_or_init(|| runtime().load(clinic_bundle()).unwrap())
}

/// A bundle around a bare module, as `opa build -t wasm -e <entrypoint>` would lay it out.
pub fn bundle_around(wasm: Vec<u8>, entrypoint: &str, data: &Value) -> Vec<u8> {
    let mut files = BundleFiles::new();
    files.insert("policy.wasm", wasm);
    files.insert("data.json", serde_json::to_vec(data).unwrap());
    files.insert(
        ".manifest",
        serde_json::to_vec(&json!({
            "revision": "test",
            "roots": [""],
            "wasm": [{"entrypoint": entrypoint, "module": "/policy.wasm"}],
        }))
        .unwrap(),
    );
    files.to_tar_gz().unwrap()
}

/// Writes `files` into a fresh policy directory.
pub fn policy_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, content) in files {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    dir
}

pub struct Req<'a> {
    pub user: Value,
    pub method: &'a str,
    pub path: &'a str,
    pub purpose: &'a str,
    pub break_glass: Value,
    pub consent: Value,
    pub risk_flagged: bool,
}

pub fn clinician(mfa: bool) -> Value {
    json!({
        "sub": "dr-ada", "roles": ["clinician"],
        "amr": if mfa { json!(["pwd", "otp"]) } else { json!(["pwd"]) },
        "mfa": mfa, "iss": "https://idp.clinic.example"
    })
}

pub fn biller() -> Value {
    json!({"sub": "bill-bo", "roles": ["billing"], "amr": ["pwd"], "mfa": false, "iss": "https://idp.clinic.example"})
}

impl<'a> Req<'a> {
    pub fn new(user: Value, method: &'a str, path: &'a str, purpose: &'a str) -> Self {
        Self {
            user,
            method,
            path,
            purpose,
            break_glass: Value::Null,
            consent: Value::Null,
            risk_flagged: false,
        }
    }

    /// The input document of DESIGN.md §4.
    pub fn input(&self) -> Value {
        json!({
            "source": {
                "spiffe_id": "spiffe://wardmesh.local/ns/clinic/sa/frontend",
                "namespace": "clinic",
                "service_account": "frontend"
            },
            "destination": {"spiffe_id": "spiffe://wardmesh.local/ns/clinic/sa/records", "port": 8080},
            "request": {
                "method": self.method,
                "path": self.path,
                "route": null,
                "headers": {"x-purpose-of-use": self.purpose, "accept": "application/json"},
                "protocol": "http1"
            },
            "user": self.user,
            "context": {
                "purpose_of_use": self.purpose,
                "break_glass": self.break_glass,
                "consent": self.consent,
                "time": "2025-06-01T12:00:00Z",
                "risk": {"flagged": self.risk_flagged, "score": if self.risk_flagged { 0.9 } else { 0.1 }}
            }
        })
    }
}
