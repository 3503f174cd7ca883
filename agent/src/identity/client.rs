//! The production [`CertificateSource`]: the control plane's HTTPS API via reqwest.
//!
//! Attestation uses a client built from the bootstrap trust bundle and no client
//! certificate. Renew and sync use mTLS with the current SVID and the current bundle;
//! that client is cached and rebuilt whenever the SVID (serial) or the bundle (revision)
//! changes. Every call has a timeout; sync's is its long-poll wait plus a grace period.

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use wardmesh_identity::tls::{Svid, TrustBundle, control_plane_client_config};
use wardmesh_proto::identity::{
    AttestRequest, RenewRequest, SvidResponse, SyncRequest, SyncResponse,
};
use wardmesh_proto::{ApiError, paths};

use super::{CertificateSource, SourceError, WorkloadState};
use crate::config::{AgentConfig, AttestationConfig, DEFAULT_REQUEST_TIMEOUT, SYNC_GRACE};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_MESSAGE_CHARS: usize = 300;

/// The control plane's identity API.
pub struct ControlPlaneClient {
    base: String,
    attestation: AttestationConfig,
    bootstrap: reqwest::Client,
    timeout: Duration,
    cached: Mutex<Option<CachedClient>>,
}

struct CachedClient {
    serial: String,
    bundle_revision: u64,
    client: reqwest::Client,
}

impl fmt::Debug for ControlPlaneClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ControlPlaneClient")
            .field("base", &self.base)
            .field("attestation", &self.attestation)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl ControlPlaneClient {
    /// `base` is the API's base URL (https); `bootstrap` the roots to trust before the
    /// first certificate.
    pub fn new(
        base: &reqwest::Url,
        bootstrap: &TrustBundle,
        attestation: AttestationConfig,
    ) -> Result<Self, SourceError> {
        Ok(Self {
            base: base.as_str().trim_end_matches('/').to_owned(),
            attestation,
            bootstrap: build_client(bootstrap, None)?,
            timeout: DEFAULT_REQUEST_TIMEOUT,
            cached: Mutex::new(None),
        })
    }

    /// From the agent's configuration and its loaded bootstrap bundle.
    pub fn from_config(config: &AgentConfig, bootstrap: &TrustBundle) -> anyhow::Result<Self> {
        let base = config.base_url()?;
        Ok(Self::new(&base, bootstrap, config.attestation.clone())?)
    }

    /// Overrides the attest/renew timeout (default 10 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub(crate) fn client_for(&self, state: &WorkloadState) -> Result<reqwest::Client, SourceError> {
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cached.as_ref()
            && c.serial == state.serial_hex()
            && c.bundle_revision == state.bundle.revision
        {
            return Ok(c.client.clone());
        }
        let client = build_client(&state.bundle, Some(&state.svid))?;
        *cached = Some(CachedClient {
            serial: state.serial_hex().to_owned(),
            bundle_revision: state.bundle.revision,
            client: client.clone(),
        });
        Ok(client)
    }

    pub(crate) async fn post<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        client: &reqwest::Client,
        path: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, SourceError> {
        let url = format!("{}{}", self.base, path);
        let resp = client
            .post(&url)
            .timeout(timeout)
            .json(body)
            .send()
            .await
            .map_err(|e| transport_error(&e, timeout))?;
        let status = resp.status();
        if status.is_success() {
            return resp
                .json::<Resp>()
                .await
                .map_err(|e| SourceError::InvalidResponse(format!("{path}: {}", chain(&e))));
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| transport_error(&e, timeout))?;
        Err(rejected(status.as_u16(), &bytes))
    }
}

impl ControlPlaneClient {
    /// A `GET` whose answer is raw bytes (a policy bundle).
    pub(crate) async fn get_bytes(
        &self,
        client: &reqwest::Client,
        path: &str,
        query: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<Vec<u8>, SourceError> {
        let url = format!("{}{}", self.base, path);
        let resp = client
            .get(&url)
            .query(query)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| transport_error(&e, timeout))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| transport_error(&e, timeout))?;
        if status.is_success() {
            Ok(bytes.to_vec())
        } else {
            Err(rejected(status.as_u16(), &bytes))
        }
    }
}

impl CertificateSource for ControlPlaneClient {
    async fn attest(&self, csr_pem: &str) -> Result<SvidResponse, SourceError> {
        let attestation = self
            .attestation
            .read()
            .map_err(|e| SourceError::Credential(e.to_string()))?;
        let body = AttestRequest {
            csr_pem: csr_pem.to_owned(),
            attestation,
        };
        self.post(&self.bootstrap, paths::ATTEST, &body, self.timeout)
            .await
    }

    async fn renew(
        &self,
        current: &WorkloadState,
        csr_pem: &str,
    ) -> Result<SvidResponse, SourceError> {
        let client = self.client_for(current)?;
        let body = RenewRequest {
            csr_pem: csr_pem.to_owned(),
        };
        self.post(&client, paths::RENEW, &body, self.timeout).await
    }

    async fn sync(
        &self,
        current: &WorkloadState,
        req: &SyncRequest,
    ) -> Result<SyncResponse, SourceError> {
        let client = self.client_for(current)?;
        let timeout = Duration::from_secs(u64::from(req.wait_seconds)) + SYNC_GRACE;
        self.post(&client, paths::AGENT_SYNC, req, timeout).await
    }
}

fn build_client(bundle: &TrustBundle, svid: Option<&Svid>) -> Result<reqwest::Client, SourceError> {
    let tls = control_plane_client_config(bundle, svid)
        .map_err(|e| SourceError::Client(e.to_string()))?;
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .https_only(true)
        .connect_timeout(CONNECT_TIMEOUT)
        .build()
        .map_err(|e| SourceError::Client(chain(&e)))
}

fn transport_error(e: &reqwest::Error, timeout: Duration) -> SourceError {
    if e.is_timeout() {
        SourceError::Unavailable(format!("no answer within {}s", timeout.as_secs()))
    } else {
        SourceError::Unavailable(chain(e))
    }
}

/// An error and its sources on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    sanitize(&out)
}

/// Maps an error answer to [`SourceError::Rejected`], preferring the `ApiError` body.
pub(crate) fn rejected(status: u16, body: &[u8]) -> SourceError {
    match serde_json::from_slice::<ApiError>(body) {
        Ok(api) => SourceError::Rejected {
            status,
            code: sanitize(&api.error),
            message: sanitize(&api.message),
        },
        Err(_) => SourceError::Rejected {
            status,
            code: format!("http_{status}"),
            message: sanitize(&String::from_utf8_lossy(body)),
        },
    }
}

/// One bounded line: text from the network goes into logs and `/ready`.
fn sanitize(s: &str) -> String {
    s.chars()
        .take(MAX_MESSAGE_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_are_classified_and_bounded() {
        let body = br#"{"error":"quarantined","message":"identity is quarantined:\nask security"}"#;
        assert_eq!(
            rejected(403, body),
            SourceError::Rejected {
                status: 403,
                code: "quarantined".into(),
                message: "identity is quarantined: ask security".into(),
            }
        );
        let long = "x".repeat(5000);
        match rejected(502, long.as_bytes()) {
            SourceError::Rejected {
                status,
                code,
                message,
            } => {
                assert_eq!((status, code.as_str()), (502, "http_502"));
                assert_eq!(message.len(), MAX_MESSAGE_CHARS);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
