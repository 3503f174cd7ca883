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

#[cfg(test)]
mod tests {
    use rcgen::PublicKeyData;
    use x509_parser::certification_request::X509CertificationRequest;
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
    use x509_parser::prelude::FromDer;

    use super::*;
    use crate::testutil::{openssl, stderr, write};

    /// Parses a CSR PEM, checks its signature and P-256 key, returns its requested SANs.
    fn check_csr(kc: &KeyAndCsr) -> Option<Vec<String>> {
        let mut rd = kc.csr_pem.as_bytes();
        let der = match rustls_pemfile::read_one(&mut rd).unwrap() {
            Some(rustls_pemfile::Item::Csr(der)) => der,
            other => panic!("not a CSR: {other:?}"),
        };
        let (rest, req) = X509CertificationRequest::from_der(der.as_ref()).unwrap();
        assert!(rest.is_empty());
        req.verify_signature().unwrap();
        let spki = &req.certification_request_info.subject_pki;
        assert_eq!(spki.algorithm.algorithm, OID_KEY_TYPE_EC_PUBLIC_KEY);
        assert_eq!(
            spki.algorithm
                .parameters
                .as_ref()
                .unwrap()
                .as_oid()
                .unwrap(),
            OID_EC_P256
        );
        assert_eq!(spki.raw, kc.key.subject_public_key_info().as_slice());
        assert_eq!(req.certification_request_info.subject.iter().count(), 0);
        req.requested_extensions().and_then(|mut exts| {
            exts.find_map(|e| match e {
                ParsedExtension::SubjectAlternativeName(san) => Some(
                    san.general_names
                        .iter()
                        .map(|n| match n {
                            GeneralName::URI(u) => format!("URI:{u}"),
                            other => other.to_string(),
                        })
                        .collect(),
                ),
                _ => None,
            })
        })
    }

    #[test]
    fn csr_names_exactly_the_spiffe_id_with_a_fresh_p256_key() {
        let id = SpiffeId::parse("spiffe://wardmesh.local/ns/clinic/sa/notes-api").unwrap();
        let a = generate_csr(&id).unwrap();
        assert_eq!(
            check_csr(&a),
            Some(vec![
                "URI:spiffe://wardmesh.local/ns/clinic/sa/notes-api".to_owned()
            ])
        );
        assert!(a.csr_pem.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        let b = generate_csr(&id).unwrap();
        assert_ne!(a.key.public_key_raw(), b.key.public_key_raw());

        // openssl agrees the request is well-formed and self-signed by its key.
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), "req.pem", &a.csr_pem);
        let out = openssl(tmp.path(), &["req", "-in", "req.pem", "-noout", "-verify"]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(stderr(&out).contains("verify OK"), "{}", stderr(&out));
    }

    #[test]
    fn anonymous_csr_has_no_san() {
        let a = generate_anonymous_csr().unwrap();
        assert_eq!(check_csr(&a), None);
        let b = generate_anonymous_csr().unwrap();
        assert_ne!(a.key.public_key_raw(), b.key.public_key_raw());
    }
}
