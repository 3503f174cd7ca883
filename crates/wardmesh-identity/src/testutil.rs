//! Fixtures shared by the crate's tests: an in-memory CA, issued SVIDs, files in a
//! temporary directory and the real `openssl` binary.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use rcgen::{CertificateParams, DistinguishedName, DnType, Issuer, KeyPair};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::ca::{CaLifetimes, IssuedSvid, Signer, generate_authority};
use crate::keygen::generate_csr;
use crate::spiffe::{SpiffeId, TrustDomain};
use crate::svid::certs_from_pem;
use crate::tls::{Svid, TrustBundle};

pub(crate) const HOUR: Duration = Duration::from_secs(3600);

/// The current time truncated to whole seconds, the precision of X.509 times.
pub(crate) fn now() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(OffsetDateTime::now_utc().unix_timestamp())
        .expect("current time is representable")
}

pub(crate) fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).expect("test spiffe id")
}

pub(crate) fn td(s: &str) -> TrustDomain {
    TrustDomain::new(s).expect("test trust domain")
}

/// A root and intermediate held in memory with a [`Signer`] for the intermediate.
pub(crate) struct TestCa {
    pub td: TrustDomain,
    pub root_pem: String,
    pub root_der: CertificateDer<'static>,
    pub intermediate_pem: String,
    pub intermediate_key_pem: String,
    pub signer: Signer,
}

impl TestCa {
    pub fn new(trust_domain: &str) -> Self {
        Self::with(trust_domain, now(), CaLifetimes::default())
    }

    pub fn with(trust_domain: &str, at: OffsetDateTime, lifetimes: CaLifetimes) -> Self {
        let td = td(trust_domain);
        let g = generate_authority(&td, at, lifetimes).expect("generate authority");
        let root_der = pem_cert(&g.root_pem);
        let int_der = pem_cert(&g.intermediate_pem);
        let not_after = not_after(&int_der);
        let intermediate_key_pem = g.intermediate_key.serialize_pem();
        let signer = Signer::new(
            "test-authority".into(),
            td.clone(),
            int_der,
            g.intermediate_key,
            not_after,
        )
        .expect("signer");
        Self {
            td,
            root_pem: g.root_pem,
            root_der,
            intermediate_pem: g.intermediate_pem,
            intermediate_key_pem,
            signer,
        }
    }

    /// A bundle holding only this CA's root.
    pub fn bundle(&self) -> TrustBundle {
        bundle(&self.td, &[&self.root_der])
    }

    /// A leaf for `spiffe_id` through the real CSR path, valid `ttl` from `at`.
    pub fn issue_at(&self, spiffe_id: &str, ttl: Duration, at: OffsetDateTime) -> TestSvid {
        issue_with(&self.signer, spiffe_id, ttl, at)
    }

    pub fn issue(&self, spiffe_id: &str) -> TestSvid {
        self.issue_at(spiffe_id, HOUR, now())
    }

    /// An issuer for hand-built certificates (not SVIDs) under this intermediate.
    pub fn intermediate_issuer(&self) -> Issuer<'static, KeyPair> {
        let key = KeyPair::from_pem(&self.intermediate_key_pem).expect("intermediate key");
        Issuer::from_ca_cert_der(self.signer.intermediate_der(), key).expect("issuer")
    }
}

pub(crate) fn issue_with(
    signer: &Signer,
    spiffe_id: &str,
    ttl: Duration,
    at: OffsetDateTime,
) -> TestSvid {
    let kc = generate_csr(&id(spiffe_id)).expect("csr");
    let issued = signer
        .sign_csr(kc.csr_pem.as_bytes(), &id(spiffe_id), ttl, at)
        .expect("issue leaf");
    TestSvid {
        key: kc.key,
        issued,
    }
}

/// An issued leaf and the private key it was issued for.
pub(crate) struct TestSvid {
    pub key: KeyPair,
    pub issued: IssuedSvid,
}

impl TestSvid {
    pub fn svid(&self) -> Svid {
        Svid::new(
            certs_from_pem(&self.issued.chain_pem).expect("chain"),
            self.key.serialize_der(),
        )
        .expect("svid")
    }

    pub fn leaf_pem(&self) -> String {
        crate::svid::certs_to_pem([&self.issued.leaf])
    }
}

pub(crate) fn bundle(
    trust_domain: &TrustDomain,
    roots: &[&CertificateDer<'static>],
) -> TrustBundle {
    TrustBundle {
        trust_domain: trust_domain.clone(),
        roots: roots.iter().map(|r| (*r).clone()).collect(),
        revision: 1,
    }
}

pub(crate) fn pem_cert(pem: &str) -> CertificateDer<'static> {
    certs_from_pem(pem).expect("pem certificate").remove(0)
}

pub(crate) fn not_after(der: &CertificateDer<'_>) -> OffsetDateTime {
    let (_, cert) = X509Certificate::from_der(der.as_ref()).expect("parse certificate");
    cert.validity().not_after.to_datetime()
}

/// Leaf-style params with a plain subject and the given SANs; no SPIFFE rules applied.
pub(crate) fn plain_leaf_params(sans: Vec<rcgen::SanType>) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "not an svid");
    p.distinguished_name = dn;
    p.subject_alt_names = sans;
    p.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.not_before = now() - time::Duration::minutes(1);
    p.not_after = now() + time::Duration::hours(1);
    p
}

pub(crate) fn write(dir: &Path, name: &str, contents: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, contents).expect("write test file");
    path.to_str().expect("utf-8 path").to_owned()
}

/// Runs the real `openssl` binary in `dir`.
pub(crate) fn openssl(dir: &Path, args: &[&str]) -> Output {
    Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (is it installed?)")
}

pub(crate) fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub(crate) fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
