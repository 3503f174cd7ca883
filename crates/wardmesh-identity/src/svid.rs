//! X509-SVID inspection: the SPIFFE ID and validity of a leaf certificate.

use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::spiffe::{SpiffeId, SpiffeIdError};

#[derive(Debug, thiserror::Error)]
pub enum SvidError {
    #[error("certificate is not valid DER X.509: {0}")]
    Parse(String),
    #[error("certificate has {0} URI SANs; an X509-SVID has exactly one")]
    UriSanCount(usize),
    #[error("certificate URI SAN is not a valid SPIFFE ID: {0}")]
    BadId(#[from] SpiffeIdError),
    #[error("leaf certificate is a CA certificate; an X509-SVID leaf must have cA=false")]
    IsCa,
    #[error("no certificate in chain")]
    Empty,
}

/// What the mesh needs to know about a verified leaf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SvidInfo {
    pub spiffe_id: SpiffeId,
    pub serial_hex: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    /// The issuer's distinguished name, e.g. `O=wardmesh, OU=wardmesh.local, CN=…`.
    pub issuer: String,
}

/// Extracts the SPIFFE ID and validity from a leaf, enforcing the X509-SVID leaf rules
/// (exactly one URI SAN, not a CA). Chain verification is the TLS layer's job.
pub fn inspect_leaf(der: &CertificateDer<'_>) -> Result<SvidInfo, SvidError> {
    let (_, cert) =
        X509Certificate::from_der(der.as_ref()).map_err(|e| SvidError::Parse(e.to_string()))?;
    if cert.is_ca() {
        return Err(SvidError::IsCa);
    }
    let uris: Vec<&str> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(*u),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(SvidError::Parse(e.to_string())),
    };
    if uris.len() != 1 {
        return Err(SvidError::UriSanCount(uris.len()));
    }
    let spiffe_id = SpiffeId::parse(uris[0])?;
    let issuer = cert.issuer().to_string();
    Ok(SvidInfo {
        spiffe_id,
        serial_hex: hex::encode(cert.raw_serial()),
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
        issuer,
    })
}

/// Parses every certificate in a PEM string.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, SvidError> {
    let mut rd = pem.as_bytes();
    let certs = rustls_pemfile::certs(&mut rd)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SvidError::Parse(e.to_string()))?;
    if certs.is_empty() {
        return Err(SvidError::Empty);
    }
    Ok(certs)
}

/// Encodes DER certificates as concatenated PEM blocks.
pub fn certs_to_pem<'a>(certs: impl IntoIterator<Item = &'a CertificateDer<'a>>) -> String {
    use base64::Engine;
    let mut out = String::new();
    for c in certs {
        let b64 = base64::engine::general_purpose::STANDARD.encode(c.as_ref());
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(&String::from_utf8_lossy(line));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

/// Hex SHA-256 of a DER certificate, the fingerprint operators see.
pub fn fingerprint(der: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(der))
}

#[cfg(test)]
mod tests;
