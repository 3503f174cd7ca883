//! Workload key generation: keys live in memory only; the CSR names the SPIFFE ID.

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};

use crate::spiffe::SpiffeId;

#[derive(Debug, thiserror::Error)]
#[error("key or csr generation failed: {0}")]
pub struct KeygenError(String);

/// A fresh ECDSA P-256 key and a CSR for `id`.
#[derive(Debug)]
pub struct KeyAndCsr {
    pub key: KeyPair,
    pub csr_pem: String,
}

pub fn generate_csr(id: &SpiffeId) -> Result<KeyAndCsr, KeygenError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| KeygenError(e.to_string()))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let uri = id
        .to_string()
        .try_into()
        .map_err(|_| KeygenError("spiffe id is not IA5".into()))?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    let csr = params
        .serialize_request(&key)
        .map_err(|e| KeygenError(e.to_string()))?;
    let csr_pem = csr.pem().map_err(|e| KeygenError(e.to_string()))?;
    Ok(KeyAndCsr { key, csr_pem })
}

/// A CSR with no SAN at all, for agents that learn their identity from the attestation.
pub fn generate_anonymous_csr() -> Result<KeyAndCsr, KeygenError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| KeygenError(e.to_string()))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .map_err(|e| KeygenError(e.to_string()))?;
    let csr_pem = csr.pem().map_err(|e| KeygenError(e.to_string()))?;
    Ok(KeyAndCsr { key, csr_pem })
}
