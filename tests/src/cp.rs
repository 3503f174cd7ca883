//! An in-process control plane with a real CA, real TLS and a real store.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tempfile::TempDir;
use time::OffsetDateTime;
use wardmesh_control_plane::{ControlPlaneConfig, RunningControlPlane};
use wardmesh_identity::TrustDomain;
use wardmesh_identity::ca::{CaDir, CaLifetimes};
use wardmesh_identity::keygen::KeyAndCsr;
use wardmesh_identity::seal::{SealKey, write_private};
use wardmesh_identity::svid::certs_from_pem;
use wardmesh_identity::tls::{Svid, TrustBundle, control_plane_client_config};
use wardmesh_proto::operator::{CreateJoinTokenRequest, CreateJoinTokenResponse};
use wardmesh_proto::{ApiError, paths};

/// A home directory with an initialised CA and sealing key.
#[derive(Debug)]
pub struct TestMesh {
    pub home: TempDir,
    pub seal: SealKey,
}

impl TestMesh {
    pub fn new() -> Self {
        Self::with_trust_domain("wardmesh.local")
    }

    pub fn with_trust_domain(td: &str) -> Self {
        let home = tempfile::tempdir().unwrap();
        let seal = SealKey::generate();
        write_private(&home.path().join("seal.key"), seal.to_hex().as_bytes()).unwrap();
        CaDir::new(home.path().join("ca"))
            .init(
                &TrustDomain::new(td).unwrap(),
                &seal,
                OffsetDateTime::now_utc(),
                CaLifetimes::default(),
            )
            .unwrap();
        Self { home, seal }
    }

    pub fn ca_dir(&self) -> CaDir {
        CaDir::new(self.home.path().join("ca"))
    }

    pub fn path(&self) -> PathBuf {
        self.home.path().to_owned()
    }

    pub fn config(&self, store_url: Option<String>) -> ControlPlaneConfig {
        let mut cfg = ControlPlaneConfig::local(self.home.path(), "127.0.0.1:0".parse().unwrap());
        cfg.ca_poll_interval = std::time::Duration::from_millis(200);
        if let Some(u) = store_url {
            cfg.store_url = u;
        }
        cfg
    }

    pub async fn start(&self) -> TestCp {
        self.start_with(self.config(None)).await
    }

    pub async fn start_with(&self, cfg: ControlPlaneConfig) -> TestCp {
        let registry = Arc::new(prometheus::Registry::new());
        let cp = wardmesh_control_plane::start(&cfg, registry).await.unwrap();
        let admin_token = std::fs::read_to_string(self.home.path().join("admin.token"))
            .unwrap()
            .trim()
            .to_owned();
        TestCp {
            url: format!("https://127.0.0.1:{}", cp.addr.port()),
            cp,
            admin_token,
            home: self.home.path().to_owned(),
        }
    }
}

impl Default for TestMesh {
    fn default() -> Self {
        Self::new()
    }
}

/// A running control plane plus what a client needs to talk to it.
#[derive(Debug)]
pub struct TestCp {
    pub cp: RunningControlPlane,
    pub url: String,
    pub admin_token: String,
    pub home: PathBuf,
}

/// A raw API answer: status and JSON body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: serde_json::Value,
}

impl Answer {
    pub fn ok<T: DeserializeOwned>(self) -> T {
        assert!(
            (200..300).contains(&self.status),
            "expected success, got {} {}",
            self.status,
            self.body
        );
        serde_json::from_value(self.body).unwrap()
    }

    pub fn err(&self) -> ApiError {
        serde_json::from_value(self.body.clone())
            .unwrap_or_else(|_| panic!("not an ApiError: {}", self.body))
    }

    pub fn code(&self) -> String {
        self.err().error
    }
}

impl TestCp {
    pub fn bundle(&self) -> TrustBundle {
        let snap = self.cp.ca.current();
        snap.bundle.clone()
    }

    pub fn bundle_pem(&self) -> String {
        self.cp.ca.current().ca.bundle_pem.clone()
    }

    /// An HTTPS client verifying the control plane, optionally presenting an SVID.
    pub fn client(&self, svid: Option<&Svid>) -> reqwest::Client {
        let tls = control_plane_client_config(&self.bundle(), svid).unwrap();
        reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(std::time::Duration::from_secs(70))
            .build()
            .unwrap()
    }

    pub async fn call<B: Serialize>(
        &self,
        client: &reqwest::Client,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<&B>,
    ) -> Answer {
        let mut req = client.request(method, format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap();
        let body = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        Answer { status, body }
    }

    pub async fn join_token(&self, id: &str) -> String {
        let c = self.client(None);
        let r: CreateJoinTokenResponse = self
            .call(
                &c,
                reqwest::Method::POST,
                paths::JOIN_TOKENS,
                Some(&self.admin_token),
                Some(&CreateJoinTokenRequest {
                    spiffe_id: id.into(),
                    ttl_seconds: None,
                }),
            )
            .await
            .ok();
        r.token
    }
}

/// Builds an [`Svid`] from a key and the chain PEM the control plane returned.
pub fn svid_from(key: &KeyAndCsr, chain_pem: &str) -> Svid {
    Svid::new(certs_from_pem(chain_pem).unwrap(), key.key.serialize_der()).unwrap()
}
