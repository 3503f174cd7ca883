//! Kubernetes attestation through the API server's TokenReview API: the control plane
//! POSTs the agent's projected token (audience `wardmesh`) to
//! `/apis/authentication.k8s.io/v1/tokenreviews`, authenticated with its own service
//! account token, over TLS verified against the cluster CA. Unlike verifying against the
//! issuer's JWKS this also catches tokens whose pod or service account was deleted.
//!
//! It is one JSON POST, so it uses reqwest (already in the build for wardctl) and serde
//! structs rather than kube-rs, which would add minutes of compile time on small CI hosts.
//! [`SaAttestor`] lets the identity service use either method.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use wardmesh_identity::attest::{MAX_TOKEN_BYTES, SA_TOKEN_AUDIENCE, SaTokenVerifier};
use wardmesh_identity::{SpiffeId, TrustDomain};

/// Where a pod finds its own service-account credentials and the cluster CA.
pub const IN_CLUSTER_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
pub const TOKEN_REVIEW_PATH: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_CREDENTIAL_BYTES: u64 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TokenReviewError {
    #[error("service-account token is larger than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    #[error("the API server did not authenticate the service-account token: {0}")]
    Unauthenticated(String),
    #[error("the service-account token is not valid for audience {SA_TOKEN_AUDIENCE:?}")]
    Audience,
    #[error("the token belongs to {0:?}, not to a service account")]
    NotServiceAccount(String),
    #[error("service account {0:?} is not a valid SPIFFE path segment")]
    BadName(String),
    #[error(
        "the API server refused the TokenReview ({status}): {message}; the control plane's \
         service account needs `create` on tokenreviews.authentication.k8s.io"
    )]
    Refused { status: u16, message: String },
    #[error("cannot reach the Kubernetes API server at {url}: {reason}")]
    Transport { url: String, reason: String },
    #[error("the API server's TokenReview answer is not the expected JSON: {0}")]
    BadAnswer(String),
    #[error("not running in a Kubernetes pod: {0} is not set")]
    NotInCluster(&'static str),
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("cluster CA {path}: {reason}")]
    BadCa { path: PathBuf, reason: String },
}

/// Where the API server is and how the control plane authenticates to it.
#[derive(Debug, Clone, Serialize)]
pub struct TokenReviewConfig {
    /// `https://host:port` of the API server.
    pub api_server: String,
    /// PEM bundle that verifies the API server.
    pub ca_file: PathBuf,
    /// The control plane's own service-account token; re-read per review because the
    /// kubelet rotates it.
    pub token_file: PathBuf,
}

impl TokenReviewConfig {
    /// The settings every pod has: `KUBERNETES_SERVICE_HOST`/`_PORT` and the mounted
    /// service-account directory.
    pub fn in_cluster() -> Result<Self, TokenReviewError> {
        let host = std::env::var("KUBERNETES_SERVICE_HOST")
            .map_err(|_| TokenReviewError::NotInCluster("KUBERNETES_SERVICE_HOST"))?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT")
            .map_err(|_| TokenReviewError::NotInCluster("KUBERNETES_SERVICE_PORT"))?;
        // An IPv6 service address needs brackets in a URL.
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        let dir = Path::new(IN_CLUSTER_DIR);
        Ok(Self {
            api_server: format!("https://{host}:{port}"),
            ca_file: dir.join("ca.crt"),
            token_file: dir.join("token"),
        })
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct TokenReviewRequest<'a> {
    api_version: &'static str,
    kind: &'static str,
    spec: ReviewSpec<'a>,
}

#[derive(Debug, Serialize)]
struct ReviewSpec<'a> {
    token: &'a str,
    audiences: [&'static str; 1],
}

/// The part of a TokenReview answer the decision reads.
#[derive(Debug, Default, Deserialize)]
pub struct TokenReviewStatus {
    #[serde(default)]
    pub authenticated: bool,
    #[serde(default)]
    pub user: Option<UserInfo>,
    #[serde(default)]
    pub audiences: Option<Vec<String>>,
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct UserInfo {
    #[serde(default)]
    pub username: String,
}

#[derive(Debug, Deserialize)]
struct TokenReviewAnswer {
    #[serde(default)]
    status: TokenReviewStatus,
}

/// The SPIFFE ID a TokenReview status proves. Pure: the API server said who it is; this
/// checks that it is a service account and that the audience is ours.
pub fn decide(status: &TokenReviewStatus, td: &TrustDomain) -> Result<SpiffeId, TokenReviewError> {
    if !status.authenticated {
        return Err(TokenReviewError::Unauthenticated(
            status
                .error
                .clone()
                .unwrap_or_else(|| "token is invalid or expired".into()),
        ));
    }
    // An API server that ignores spec.audiences would answer for its own audience; only
    // an explicit echo of ours counts.
    if !status
        .audiences
        .as_ref()
        .is_some_and(|a| a.iter().any(|a| a == SA_TOKEN_AUDIENCE))
    {
        return Err(TokenReviewError::Audience);
    }
    let username = status
        .user
        .as_ref()
        .map(|u| u.username.as_str())
        .unwrap_or("");
    let (ns, sa) = username
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .filter(|(ns, sa)| !ns.is_empty() && !sa.is_empty() && !sa.contains(':'))
        .ok_or_else(|| TokenReviewError::NotServiceAccount(username.to_owned()))?;
    SpiffeId::workload(td, ns, sa).map_err(|_| TokenReviewError::BadName(username.to_owned()))
}

/// Reviews tokens against one API server.
#[derive(Debug, Clone)]
pub struct TokenReviewer {
    url: String,
    http: reqwest::Client,
    token_file: PathBuf,
    trust_domain: TrustDomain,
}

impl TokenReviewer {
    pub fn new(
        cfg: &TokenReviewConfig,
        trust_domain: TrustDomain,
    ) -> Result<Self, TokenReviewError> {
        let pem = read_small(&cfg.ca_file)?;
        let bad_ca = |reason: String| TokenReviewError::BadCa {
            path: cfg.ca_file.clone(),
            reason,
        };
        let certs =
            wardmesh_identity::svid::certs_from_pem(&pem).map_err(|e| bad_ca(e.to_string()))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in certs {
            roots.add(c).map_err(|e| bad_ca(e.to_string()))?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(wardmesh_identity::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| bad_ca(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| bad_ca(e.to_string()))?;
        Ok(Self {
            url: format!(
                "{}{TOKEN_REVIEW_PATH}",
                cfg.api_server.trim_end_matches('/')
            ),
            http,
            token_file: cfg.token_file.clone(),
            trust_domain,
        })
    }

    /// The workload ID `token` proves, according to the API server.
    pub async fn verify(&self, token: &str) -> Result<SpiffeId, TokenReviewError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenReviewError::TooLarge);
        }
        let own = read_small(&self.token_file)?;
        let body = TokenReviewRequest {
            api_version: "authentication.k8s.io/v1",
            kind: "TokenReview",
            spec: ReviewSpec {
                token,
                audiences: [SA_TOKEN_AUDIENCE],
            },
        };
        let transport = |e: reqwest::Error| TokenReviewError::Transport {
            url: self.url.clone(),
            reason: error_chain(&e),
        };
        let resp = self
            .http
            .post(&self.url)
            .bearer_auth(own.trim())
            .json(&body)
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(transport)?;
        if !status.is_success() {
            // Kubernetes answers errors with a Status object; its message says why.
            let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("message")?.as_str().map(str::to_owned))
                .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned());
            return Err(TokenReviewError::Refused {
                status: status.as_u16(),
                message,
            });
        }
        let answer: TokenReviewAnswer = serde_json::from_slice(&bytes)
            .map_err(|e| TokenReviewError::BadAnswer(e.to_string()))?;
        decide(&answer.status, &self.trust_domain)
    }
}

fn read_small(path: &Path) -> Result<String, TokenReviewError> {
    let err = |reason: String| TokenReviewError::Read {
        path: path.to_owned(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if meta.len() > MAX_CREDENTIAL_BYTES {
        return Err(err(format!("larger than {MAX_CREDENTIAL_BYTES} bytes")));
    }
    std::fs::read_to_string(path).map_err(|e| err(e.to_string()))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(cause) = src {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        src = cause.source();
    }
    s
}

/// How the control plane checks Kubernetes service-account tokens.
#[derive(Debug, Clone)]
pub enum SaAttestor {
    /// Offline, against the issuer's JWKS.
    Jwks(Arc<SaTokenVerifier>),
    /// Online, by asking the API server.
    TokenReview(TokenReviewer),
}

impl SaAttestor {
    /// The workload ID `token` proves, or why not (shown to the agent).
    pub async fn verify(&self, token: &str) -> Result<SpiffeId, String> {
        match self {
            Self::Jwks(v) => v.verify(token).map_err(|e| e.to_string()),
            Self::TokenReview(r) => r.verify(token).await.map_err(|e| {
                // The agent sees why its token was refused, not the API server's address.
                if matches!(e, TokenReviewError::Transport { .. } | TokenReviewError::Read { .. }) {
                    tracing::error!(error = %e, "token review failed");
                    "the control plane could not reach the Kubernetes API server to review the token".into()
                } else {
                    e.to_string()
                }
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(
        authenticated: bool,
        username: &str,
        audiences: Option<&[&str]>,
    ) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated,
            user: Some(UserInfo {
                username: username.into(),
            }),
            audiences: audiences.map(|a| a.iter().map(|s| s.to_string()).collect()),
            error: (!authenticated).then(|| "token has expired".into()),
        }
    }

    #[test]
    fn maps_service_accounts_and_refuses_the_rest() {
        let td = TrustDomain::new("clinic.example").unwrap();
        let ok = decide(
            &status(
                true,
                "system:serviceaccount:clinic:notes-api",
                Some(&["wardmesh"]),
            ),
            &td,
        )
        .unwrap();
        assert_eq!(
            ok.to_string(),
            "spiffe://clinic.example/ns/clinic/sa/notes-api"
        );
        let cases = [
            (status(false, "", None), "expired"),
            (
                status(
                    true,
                    "system:serviceaccount:clinic:notes-api",
                    Some(&["https://kubernetes.default.svc"]),
                ),
                "audience",
            ),
            (
                status(true, "system:serviceaccount:clinic:notes-api", None),
                "audience",
            ),
            (
                status(true, "system:node:worker-1", Some(&["wardmesh"])),
                "not to a service account",
            ),
            (
                status(true, "system:serviceaccount:clinic", Some(&["wardmesh"])),
                "not to a service account",
            ),
            (
                status(
                    true,
                    "system:serviceaccount:clinic:a:b",
                    Some(&["wardmesh"]),
                ),
                "not to a service account",
            ),
        ];
        for (s, expect) in cases {
            let e = decide(&s, &td).unwrap_err().to_string();
            assert!(e.contains(expect), "{s:?}: {e}");
        }
    }
}
