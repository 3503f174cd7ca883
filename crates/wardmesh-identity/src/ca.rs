//! The wardmesh certificate authority: an offline-capable root, an intermediate held by
//! the control plane, and the [`Signer`] that issues X509-SVIDs from CSRs.

mod dir;
mod issue;

use std::time::Duration;

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

pub use dir::{AuthorityInfo, CaDir, CaDirError, CaState, ImportSource, LoadedCa};
pub use issue::{IssueError, IssuedSvid, MAX_CSR_BYTES};

use crate::spiffe::TrustDomain;

/// Lifetimes for newly created CA certificates.
#[derive(Debug, Clone, Copy)]
pub struct CaLifetimes {
    pub root: Duration,
    pub intermediate: Duration,
}

impl Default for CaLifetimes {
    fn default() -> Self {
        Self {
            root: Duration::from_secs(10 * 365 * 24 * 3600),
            intermediate: Duration::from_secs(365 * 24 * 3600),
        }
    }
}

/// A freshly generated root and intermediate with their private keys.
#[derive(Debug)]
pub struct GeneratedAuthority {
    pub root_pem: String,
    pub root_key: KeyPair,
    pub intermediate_pem: String,
    pub intermediate_key: KeyPair,
}

fn ca_params(
    cn: String,
    td: &TrustDomain,
    now: OffsetDateTime,
    ttl: Duration,
    path_len: u8,
) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "wardmesh");
    dn.push(DnType::OrganizationalUnitName, td.as_str());
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = now - time::Duration::minutes(5);
    p.not_after = now + ttl;
    p.serial_number = Some(issue::random_serial());
    p.use_authority_key_identifier_extension = true;
    p
}

/// Generates a root (10 years by default) and an intermediate (1 year) for `td`.
pub fn generate_authority(
    td: &TrustDomain,
    now: OffsetDateTime,
    lifetimes: CaLifetimes,
) -> Result<GeneratedAuthority, rcgen::Error> {
    // Distinct authorities get distinct names even when created in the same second:
    // verifiers pick candidate issuers by name before they check signatures.
    let mut tag = [0u8; 4];
    rand::rngs::OsRng.fill_bytes(&mut tag);
    let stamp = format!("{} {}", now.unix_timestamp(), hex::encode(tag));
    let root_key = KeyPair::generate()?;
    let root_params = ca_params(format!("wardmesh root {stamp}"), td, now, lifetimes.root, 1);
    let root_cert = root_params.self_signed(&root_key)?;
    let root_issuer = Issuer::new(root_params, &root_key);
    let intermediate =
        generate_intermediate_with(td, now, &stamp, lifetimes.intermediate, &root_issuer)?;
    Ok(GeneratedAuthority {
        root_pem: root_cert.pem(),
        root_key,
        intermediate_pem: intermediate.0,
        intermediate_key: intermediate.1,
    })
}

fn generate_intermediate_with(
    td: &TrustDomain,
    now: OffsetDateTime,
    stamp: &str,
    ttl: Duration,
    root: &Issuer<'_, &KeyPair>,
) -> Result<(String, KeyPair), rcgen::Error> {
    let key = KeyPair::generate()?;
    let params = ca_params(format!("wardmesh intermediate {stamp}"), td, now, ttl, 0);
    let cert = params.signed_by(&key, root)?;
    Ok((cert.pem(), key))
}

/// Issues X509-SVIDs with one intermediate. Cheap to share behind an `Arc`.
pub struct Signer {
    authority_id: String,
    trust_domain: TrustDomain,
    issuer: Issuer<'static, KeyPair>,
    intermediate_der: CertificateDer<'static>,
    intermediate_not_after: OffsetDateTime,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("authority_id", &self.authority_id)
            .field("trust_domain", &self.trust_domain)
            .field("intermediate_not_after", &self.intermediate_not_after)
            .finish_non_exhaustive()
    }
}

impl Signer {
    pub fn authority_id(&self) -> &str {
        &self.authority_id
    }

    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    pub fn intermediate_der(&self) -> &CertificateDer<'static> {
        &self.intermediate_der
    }

    pub fn intermediate_not_after(&self) -> OffsetDateTime {
        self.intermediate_not_after
    }
}

#[cfg(test)]
mod tests;
