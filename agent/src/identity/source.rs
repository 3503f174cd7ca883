//! Where certificates come from. The identity manager only knows this trait; the
//! production implementation is [`super::ControlPlaneClient`], tests use an in-process
//! CA.

use std::future::Future;

use wardmesh_proto::identity::{SvidResponse, SyncRequest, SyncResponse};

use super::WorkloadState;

/// A failed call to the certificate source, classified once here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// The control plane answered with an API error (4xx/5xx with an `ApiError` body).
    #[error("control plane refused the request ({status} {code}): {message}")]
    Rejected {
        status: u16,
        code: String,
        message: String,
    },
    /// No answer: connection refused, TLS failure, timeout.
    #[error("control plane unreachable: {0}")]
    Unavailable(String),
    /// An answer that is not what the API promises.
    #[error("control plane sent an invalid response: {0}")]
    InvalidResponse(String),
    /// The attestation credential could not be read (e.g. the token file is missing).
    #[error("attestation credential unavailable: {0}")]
    Credential(String),
    /// The client's own TLS configuration could not be built.
    #[error("cannot build the control-plane client: {0}")]
    Client(String),
}

impl SourceError {
    /// A short, bounded label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Rejected { .. } => "rejected",
            Self::Unavailable(_) => "unavailable",
            Self::InvalidResponse(_) => "invalid_response",
            Self::Credential(_) => "credential",
            Self::Client(_) => "client",
        }
    }
}

/// Issues and renews the workload's certificate and reports trust-bundle, authority and
/// deny-list changes.
pub trait CertificateSource: Send + Sync + 'static {
    /// First certificate: `csr_pem` has no identity; the attestation proves it.
    fn attest(
        &self,
        csr_pem: &str,
    ) -> impl Future<Output = Result<SvidResponse, SourceError>> + Send;

    /// A new leaf for the same identity, authenticated with the current one. `current`
    /// carries the SVID (client certificate) and the trust bundle (server roots).
    fn renew(
        &self,
        current: &WorkloadState,
        csr_pem: &str,
    ) -> impl Future<Output = Result<SvidResponse, SourceError>> + Send;

    /// Long poll: answers at once when `req`'s revisions are behind, else after at most
    /// `req.wait_seconds`.
    fn sync(
        &self,
        current: &WorkloadState,
        req: &SyncRequest,
    ) -> impl Future<Output = Result<SyncResponse, SourceError>> + Send;
}
