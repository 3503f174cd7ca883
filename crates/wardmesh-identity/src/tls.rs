//! rustls configurations for the mesh, built from a workload's SVID and trust bundle.
//!
//! Mesh connections are TLS 1.3 only, mutually authenticated, and verified against the
//! trust bundle by chain, then by SPIFFE rules (one URI SAN, our trust domain). Host names
//! play no part: the peer's identity is its SPIFFE ID, which callers read with
//! [`peer_spiffe_id`] and compare with what they expected.
//!
//! Configs are immutable; on renewal or a new bundle the agent builds new ones and
//! publishes them through a `watch`, so a connection keeps the material it started with
//! while new connections pick up the new certificate and bundle.

mod verifier;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use time::OffsetDateTime;

pub use verifier::{SpiffeClientVerifier, SpiffeServerVerifier};

use crate::spiffe::{SpiffeId, TrustDomain};
use crate::svid::{SvidError, SvidInfo, inspect_leaf};

/// ALPN protocol ids offered between agents.
pub const MESH_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("trust bundle is empty")]
    EmptyBundle,
    #[error("trust bundle holds a certificate rustls cannot use: {0}")]
    BadRoot(String),
    #[error("certificate or key rejected: {0}")]
    Config(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(String),
    #[error("leaf is not an X509-SVID: {0}")]
    Svid(#[from] SvidError),
    #[error("peer presented no certificate")]
    NoPeerCertificate,
}

/// The process-wide crypto provider; ring, so builds need no C toolchain beyond cc.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The roots a workload trusts, with the revision the control plane gave them.
#[derive(Debug, Clone)]
pub struct TrustBundle {
    pub trust_domain: TrustDomain,
    pub roots: Vec<CertificateDer<'static>>,
    pub revision: u64,
}

impl TrustBundle {
    pub fn root_store(&self) -> Result<Arc<RootCertStore>, TlsError> {
        if self.roots.is_empty() {
            return Err(TlsError::EmptyBundle);
        }
        let mut store = RootCertStore::empty();
        for root in &self.roots {
            store
                .add(root.clone())
                .map_err(|e| TlsError::BadRoot(e.to_string()))?;
        }
        Ok(Arc::new(store))
    }
}

/// A workload's certificate chain (leaf first) and private key.
pub struct Svid {
    pub info: SvidInfo,
    pub chain: Vec<CertificateDer<'static>>,
    key_der: Vec<u8>,
}

impl std::fmt::Debug for Svid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Svid")
            .field("info", &self.info)
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl Svid {
    /// `key_pkcs8` is the PKCS#8 DER of the leaf's private key.
    pub fn new(chain: Vec<CertificateDer<'static>>, key_pkcs8: Vec<u8>) -> Result<Self, TlsError> {
        let leaf = chain.first().ok_or(TlsError::Svid(SvidError::Empty))?;
        let info = inspect_leaf(leaf)?;
        Ok(Self {
            info,
            chain,
            key_der: key_pkcs8,
        })
    }

    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.info.spiffe_id
    }

    pub fn not_after(&self) -> OffsetDateTime {
        self.info.not_after
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

/// Server side of a mesh connection: client certificate required.
pub fn mesh_server_config(svid: &Svid, bundle: &TrustBundle) -> Result<ServerConfig, TlsError> {
    let verifier = SpiffeClientVerifier::new(bundle, false)?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(svid.chain.clone(), svid.key())?;
    cfg.alpn_protocols = MESH_ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

/// Client side of a mesh connection: presents the SVID, verifies the server's SVID.
pub fn mesh_client_config(svid: &Svid, bundle: &TrustBundle) -> Result<ClientConfig, TlsError> {
    let verifier = SpiffeServerVerifier::new(bundle)?;
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(svid.chain.clone(), svid.key())?;
    cfg.alpn_protocols = MESH_ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

/// A client config that verifies the server by host name against the bundle, with an
/// optional client SVID: how agents and `wardctl` reach the control plane.
pub fn control_plane_client_config(
    bundle: &TrustBundle,
    svid: Option<&Svid>,
) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(bundle.root_store()?);
    let mut cfg = match svid {
        Some(s) => builder.with_client_auth_cert(s.chain.clone(), s.key())?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// The control plane's API server: client certificates optional (agents present their
/// SVID, operators and bootstrapping agents do not).
pub fn control_plane_server_config(
    svid: &Svid,
    bundle: &TrustBundle,
) -> Result<ServerConfig, TlsError> {
    let verifier = SpiffeClientVerifier::new(bundle, true)?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(svid.chain.clone(), svid.key())?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// The SPIFFE ID of the peer of an established connection, from its verified leaf.
pub fn peer_spiffe_id(peer_certs: Option<&[CertificateDer<'_>]>) -> Result<SpiffeId, TlsError> {
    let leaf = peer_certs
        .and_then(|c| c.first())
        .ok_or(TlsError::NoPeerCertificate)?;
    Ok(inspect_leaf(leaf)?.spiffe_id)
}

#[cfg(test)]
mod tests;
