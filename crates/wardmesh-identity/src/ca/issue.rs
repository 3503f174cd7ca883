//! CSR validation and leaf issuance. The attested SPIFFE ID is the only identity that
//! goes into a leaf: the CSR contributes its public key and nothing else, and a CSR that
//! asks for anything else is refused rather than silently trimmed.

use std::time::Duration;

use rand::RngCore;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber, SubjectPublicKeyInfo,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_SIG_ED25519};
use x509_parser::prelude::FromDer;

use super::Signer;
use crate::spiffe::SpiffeId;
use crate::svid::certs_to_pem;

/// CSRs larger than this are refused before parsing.
pub const MAX_CSR_BYTES: usize = 8 * 1024;
/// Backdating absorbs small clock skew between control plane and agents.
const BACKDATE: time::Duration = time::Duration::seconds(60);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IssueError {
    #[error("csr is larger than {MAX_CSR_BYTES} bytes")]
    CsrTooLarge,
    #[error("csr is not a valid PEM or DER PKCS#10 request: {0}")]
    CsrMalformed(String),
    #[error("csr signature does not verify: the request was altered or not signed by its key")]
    CsrSignature,
    #[error("csr key must be ECDSA P-256 or Ed25519 (got {0})")]
    CsrKeyType(String),
    #[error("csr asks for {requested} but the attestation proves {attested}")]
    CsrIdentityMismatch { requested: String, attested: String },
    #[error(
        "csr asks for extra subject alternative names ({0}); an X509-SVID carries exactly one URI SAN"
    )]
    CsrExtraSans(String),
    #[error("csr asks for a CA certificate; workloads only get leaf certificates")]
    CsrRequestsCa,
    #[error("spiffe id {id} is not in trust domain {trust_domain}")]
    WrongTrustDomain { id: String, trust_domain: String },
    #[error("the intermediate CA expired at {0}; rotate the CA with `wardctl ca rotate`")]
    IntermediateExpired(OffsetDateTime),
    #[error("certificate generation failed: {0}")]
    Generate(String),
}

/// A signed leaf and its chain, ready to hand to the workload.
#[derive(Debug, Clone)]
pub struct IssuedSvid {
    pub spiffe_id: SpiffeId,
    pub serial_hex: String,
    pub leaf: CertificateDer<'static>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub authority_id: String,
    /// Leaf then intermediate, PEM.
    pub chain_pem: String,
}

pub(crate) fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    // Positive INTEGER, never zero-led to a shorter encoding than intended.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

fn parse_csr_input(csr: &[u8]) -> Result<Vec<u8>, IssueError> {
    if csr.len() > MAX_CSR_BYTES {
        return Err(IssueError::CsrTooLarge);
    }
    if csr.starts_with(b"-----BEGIN") {
        let mut rd = csr;
        match rustls_pemfile::read_one(&mut rd) {
            Ok(Some(rustls_pemfile::Item::Csr(der))) => Ok(der.as_ref().to_vec()),
            Ok(_) => Err(IssueError::CsrMalformed(
                "PEM block is not a CERTIFICATE REQUEST".into(),
            )),
            Err(e) => Err(IssueError::CsrMalformed(e.to_string())),
        }
    } else {
        Ok(csr.to_vec())
    }
}

/// Checks a CSR against the attested identity. Returns the requested key for signing,
/// taken from the request's SubjectPublicKeyInfo as is (not guessed from the algorithm
/// that signed the request, which for ECDSA names the hash, not the curve).
fn validate_csr(csr: &[u8], attested: &SpiffeId) -> Result<SubjectPublicKeyInfo, IssueError> {
    let der = parse_csr_input(csr)?;
    let (rest, req) = X509CertificationRequest::from_der(&der)
        .map_err(|e| IssueError::CsrMalformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(IssueError::CsrMalformed(
            "trailing bytes after the request".into(),
        ));
    }
    req.verify_signature()
        .map_err(|_| IssueError::CsrSignature)?;

    let spki = &req.certification_request_info.subject_pki;
    let alg = &spki.algorithm.algorithm;
    let key_ok = if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        spki.algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .is_some_and(|curve| curve == OID_EC_P256)
    } else {
        *alg == OID_SIG_ED25519
    };
    if !key_ok {
        return Err(IssueError::CsrKeyType(alg.to_id_string()));
    }

    for ext in req.requested_extensions().into_iter().flatten() {
        match ext {
            ParsedExtension::SubjectAlternativeName(san) => {
                let mut uris = Vec::new();
                let mut extra = Vec::new();
                for name in &san.general_names {
                    match name {
                        GeneralName::URI(u) => uris.push(*u),
                        other => extra.push(other.to_string()),
                    }
                }
                if uris.len() > 1 {
                    extra.extend(uris[1..].iter().map(|u| format!("URI:{u}")));
                }
                if !extra.is_empty() {
                    return Err(IssueError::CsrExtraSans(extra.join(", ")));
                }
                if let Some(uri) = uris.first()
                    && *uri != attested.to_string()
                {
                    return Err(IssueError::CsrIdentityMismatch {
                        requested: (*uri).chars().take(256).collect(),
                        attested: attested.to_string(),
                    });
                }
            }
            ParsedExtension::BasicConstraints(bc) if bc.ca => {
                return Err(IssueError::CsrRequestsCa);
            }
            _ => {}
        }
    }
    SubjectPublicKeyInfo::from_der(spki.raw).map_err(|e| IssueError::CsrKeyType(e.to_string()))
}

impl Signer {
    pub(crate) fn new(
        authority_id: String,
        trust_domain: crate::spiffe::TrustDomain,
        intermediate_der: CertificateDer<'static>,
        key: KeyPair,
        intermediate_not_after: OffsetDateTime,
    ) -> Result<Self, IssueError> {
        let issuer = rcgen::Issuer::from_ca_cert_der(&intermediate_der, key)
            .map_err(|e| IssueError::Generate(e.to_string()))?;
        Ok(Self {
            authority_id,
            trust_domain,
            issuer,
            intermediate_der,
            intermediate_not_after,
        })
    }

    /// Issues a leaf for `id` from `csr` (PEM or DER). The leaf never outlives the
    /// intermediate.
    pub fn sign_csr(
        &self,
        csr: &[u8],
        id: &SpiffeId,
        ttl: Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedSvid, IssueError> {
        self.check_id(id, now)?;
        let public_key = validate_csr(csr, id)?;
        let params = self.leaf_params(id, ttl, now, Vec::new())?;
        let cert = params
            .signed_by(&public_key, &self.issuer)
            .map_err(|e| IssueError::Generate(e.to_string()))?;
        Ok(self.issued(id, &params, cert.der().clone()))
    }

    /// Issues a leaf for a key held by the caller itself (the control plane's own serving
    /// certificate). `dns_names` are added beside the URI SAN so standard TLS clients can
    /// verify the server by host name.
    pub fn sign_local_key(
        &self,
        key: &KeyPair,
        id: &SpiffeId,
        ttl: Duration,
        now: OffsetDateTime,
        dns_names: &[String],
    ) -> Result<IssuedSvid, IssueError> {
        self.check_id(id, now)?;
        let mut extra = Vec::new();
        for name in dns_names {
            let san = match name.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    name.clone()
                        .try_into()
                        .map_err(|_| IssueError::Generate(format!("bad dns name {name:?}")))?,
                ),
            };
            extra.push(san);
        }
        let params = self.leaf_params(id, ttl, now, extra)?;
        let cert = params
            .signed_by(key, &self.issuer)
            .map_err(|e| IssueError::Generate(e.to_string()))?;
        Ok(self.issued(id, &params, cert.der().clone()))
    }

    fn check_id(&self, id: &SpiffeId, now: OffsetDateTime) -> Result<(), IssueError> {
        if id.trust_domain() != &self.trust_domain {
            return Err(IssueError::WrongTrustDomain {
                id: id.to_string(),
                trust_domain: self.trust_domain.to_string(),
            });
        }
        if now >= self.intermediate_not_after {
            return Err(IssueError::IntermediateExpired(self.intermediate_not_after));
        }
        Ok(())
    }

    fn leaf_params(
        &self,
        id: &SpiffeId,
        ttl: Duration,
        now: OffsetDateTime,
        extra_sans: Vec<SanType>,
    ) -> Result<CertificateParams, IssueError> {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "wardmesh");
        dn.push(DnType::OrganizationalUnitName, self.trust_domain.as_str());
        p.distinguished_name = dn;
        let uri = id
            .to_string()
            .try_into()
            .map_err(|_| IssueError::Generate("spiffe id is not an IA5 string".into()))?;
        p.subject_alt_names = vec![SanType::URI(uri)];
        p.subject_alt_names.extend(extra_sans);
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyAgreement,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.use_authority_key_identifier_extension = true;
        p.serial_number = Some(random_serial());
        p.not_before = now - BACKDATE;
        p.not_after = (now + ttl).min(self.intermediate_not_after);
        Ok(p)
    }

    fn issued(
        &self,
        id: &SpiffeId,
        params: &CertificateParams,
        leaf: CertificateDer<'static>,
    ) -> IssuedSvid {
        let serial_hex = params
            .serial_number
            .as_ref()
            .map(|s| hex::encode(s.to_bytes()))
            .unwrap_or_default();
        let chain_pem = certs_to_pem([&leaf, &self.intermediate_der]);
        IssuedSvid {
            spiffe_id: id.clone(),
            serial_hex,
            leaf,
            not_before: params.not_before,
            not_after: params.not_after,
            authority_id: self.authority_id.clone(),
            chain_pem,
        }
    }
}
