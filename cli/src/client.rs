//! The control-plane API client `wardctl` uses: TLS verified against the mesh's roots,
//! operator token as bearer, API errors turned into sentences.

use anyhow::{Context, anyhow};
use serde::Serialize;
use serde::de::DeserializeOwned;
use wardmesh_identity::TrustDomain;
use wardmesh_identity::ca::CaDir;
use wardmesh_identity::svid::certs_from_pem;
use wardmesh_identity::tls::{TrustBundle, control_plane_client_config};
use wardmesh_proto::ApiError;

use crate::args::Global;

#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    /// The mesh's trust domain when known locally (from the CA directory); a
    /// `--trust-bundle` PEM does not say.
    trust_domain: Option<TrustDomain>,
}

/// The roots that verify the control plane: `--trust-bundle`, else the local CA dir.
pub fn trust_bundle(g: &Global) -> anyhow::Result<TrustBundle> {
    let (pem, td) = match &g.trust_bundle {
        Some(p) => (
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            TrustDomain::default(),
        ),
        None => {
            let dir = CaDir::new(g.home.join("ca"));
            let (state, _) = dir.status().with_context(|| {
                format!(
                    "no --trust-bundle given and no CA in {}; pass the mesh's root bundle",
                    g.home.join("ca").display()
                )
            })?;
            let mut pem = String::new();
            for id in &state.trusted {
                let path = dir.path().join("authorities").join(id).join("root.pem");
                pem.push_str(
                    &std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?,
                );
            }
            (pem, state.trust_domain)
        }
    };
    Ok(TrustBundle {
        trust_domain: td,
        roots: certs_from_pem(&pem).context("parsing the trust bundle")?,
        revision: 0,
    })
}

fn read_token(g: &Global) -> Option<String> {
    g.token.clone().or_else(|| {
        std::fs::read_to_string(g.home.join("admin.token"))
            .ok()
            .map(|t| t.trim().to_owned())
    })
}

impl Client {
    pub fn new(g: &Global) -> anyhow::Result<Self> {
        let bundle = trust_bundle(g)?;
        let tls = control_plane_client_config(&bundle, None)?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            http,
            base: g.control_plane.trim_end_matches('/').to_owned(),
            token: read_token(g),
            trust_domain: g
                .trust_bundle
                .is_none()
                .then(|| bundle.trust_domain.clone()),
        })
    }

    /// The mesh's trust domain: from the local CA directory, else as the control plane
    /// reports it (`GET /v1/ca`, viewer). `None` when neither can tell; callers then show
    /// full SPIFFE IDs.
    pub async fn trust_domain(&self) -> Option<TrustDomain> {
        if let Some(td) = &self.trust_domain {
            return Some(td.clone());
        }
        let ca: wardmesh_proto::operator::CaStatus =
            self.get(wardmesh_proto::paths::CA, &[]).await.ok()?;
        TrustDomain::new(&ca.trust_domain).ok()
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut r = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        r
    }

    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> anyhow::Result<T> {
        self.send(self.req(reqwest::Method::GET, path).query(query))
            .await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.send(self.req(reqwest::Method::POST, path).json(body))
            .await
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> anyhow::Result<T> {
        self.send(self.req(reqwest::Method::PUT, path).json(body))
            .await
    }

    /// `POST` of raw bytes (a policy bundle) with a query string.
    pub async fn post_bytes<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
        content_type: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<T> {
        let req = self
            .req(reqwest::Method::POST, path)
            .query(query)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        self.send(req).await
    }

    pub async fn delete<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> anyhow::Result<T> {
        self.send(self.req(reqwest::Method::DELETE, path).query(query))
            .await
    }

    async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> anyhow::Result<T> {
        let resp = req.send().await.map_err(|e| {
            anyhow!(
                "cannot reach the control plane at {}: {e}; is it running (wardctl up / wardmesh-control-plane)?",
                self.base
            )
        })?;
        let status = resp.status();
        let bytes = resp.bytes().await.context("reading the response")?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<ApiError>(&bytes) {
                Ok(e) => anyhow!("{} ({}): {}", e.error, status.as_u16(), e.message),
                Err(_) => anyhow!("control plane answered {status}"),
            });
        }
        serde_json::from_slice(&bytes)
            .context("the control plane's answer is not the expected JSON")
    }
}
