//! X509-SVID inspection and PEM handling, against certificates from the real CA and
//! hand-built ones that break the SVID rules.

use rcgen::{KeyPair, SanType};

use super::*;
use crate::spiffe::SpiffeIdError;
use crate::testutil::{TestCa, id, openssl, pem_cert, plain_leaf_params, stdout, write};

const WL: &str = "spiffe://wardmesh.local/ns/clinic/sa/notes-api";

fn leaf_with(ca: &TestCa, sans: Vec<SanType>) -> CertificateDer<'static> {
    let key = KeyPair::generate().expect("key");
    plain_leaf_params(sans)
        .signed_by(&key, &ca.intermediate_issuer())
        .expect("sign")
        .der()
        .clone()
}

fn uri(s: &str) -> SanType {
    SanType::URI(s.try_into().expect("ia5"))
}

#[test]
fn inspects_an_issued_leaf() {
    let ca = TestCa::new("wardmesh.local");
    let t = ca.issue(WL);
    let info = inspect_leaf(&t.issued.leaf).expect("svid");
    assert_eq!(info.spiffe_id, id(WL));
    assert_eq!(info.serial_hex, t.issued.serial_hex);
    assert_eq!(info.not_before, t.issued.not_before);
    assert_eq!(info.not_after, t.issued.not_after);
    let (_, int) = X509Certificate::from_der(ca.signer.intermediate_der().as_ref()).expect("int");
    assert_eq!(info.issuer, int.subject().to_string());
    assert!(
        info.issuer
            .starts_with("O=wardmesh, OU=wardmesh.local, CN=wardmesh intermediate")
    );
}

#[test]
fn refuses_certificates_that_break_the_svid_rules() {
    let ca = TestCa::new("wardmesh.local");
    assert!(matches!(inspect_leaf(&ca.root_der), Err(SvidError::IsCa)));
    assert!(matches!(
        inspect_leaf(ca.signer.intermediate_der()),
        Err(SvidError::IsCa)
    ));
    assert!(matches!(
        inspect_leaf(&leaf_with(&ca, Vec::new())),
        Err(SvidError::UriSanCount(0))
    ));
    assert!(matches!(
        inspect_leaf(&leaf_with(
            &ca,
            vec![SanType::DnsName(
                "notes.clinic.svc".try_into().expect("ia5")
            )]
        )),
        Err(SvidError::UriSanCount(0))
    ));
    assert!(matches!(
        inspect_leaf(&leaf_with(
            &ca,
            vec![uri(WL), uri("spiffe://wardmesh.local/ns/clinic/sa/admin")]
        )),
        Err(SvidError::UriSanCount(2))
    ));
    assert!(matches!(
        inspect_leaf(&leaf_with(&ca, vec![uri("https://notes.clinic.example/")])),
        Err(SvidError::BadId(SpiffeIdError::Scheme(_)))
    ));
    assert!(matches!(
        inspect_leaf(&leaf_with(&ca, vec![uri("spiffe://wardmesh.local/")])),
        Err(SvidError::BadId(SpiffeIdError::TrailingSlash))
    ));
    // A DNS name beside the one URI is allowed (the control plane's own certificate).
    let both = leaf_with(
        &ca,
        vec![
            uri(WL),
            SanType::DnsName("localhost".try_into().expect("ia5")),
        ],
    );
    assert_eq!(inspect_leaf(&both).expect("svid").spiffe_id, id(WL));

    assert!(matches!(
        inspect_leaf(&CertificateDer::from(b"not der".to_vec())),
        Err(SvidError::Parse(_))
    ));
}

#[test]
fn pem_round_trips_and_openssl_agrees_on_the_fingerprint() {
    let ca = TestCa::new("wardmesh.local");
    let t = ca.issue(WL);
    let chain = certs_from_pem(&t.issued.chain_pem).expect("chain");
    assert_eq!(chain.len(), 2);
    assert_eq!(chain[0], t.issued.leaf);

    let pem = certs_to_pem(chain.iter());
    assert_eq!(pem, t.issued.chain_pem);
    assert_eq!(certs_from_pem(&pem).expect("again"), chain);
    assert!(pem.lines().all(|l| l.len() <= 64), "PEM lines wrap at 64");
    assert_eq!(pem.matches("-----BEGIN CERTIFICATE-----").count(), 2);

    // Other PEM blocks around the certificates are skipped.
    let mixed = format!("{}{}", t.key.serialize_pem(), pem);
    assert_eq!(certs_from_pem(&mixed).expect("mixed"), chain);

    assert!(matches!(certs_from_pem(""), Err(SvidError::Empty)));
    assert!(matches!(
        certs_from_pem(&t.key.serialize_pem()),
        Err(SvidError::Empty)
    ));
    assert!(matches!(
        certs_from_pem("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n"),
        Err(SvidError::Parse(_))
    ));

    let tmp = tempfile::tempdir().expect("tempdir");
    write(tmp.path(), "root.pem", &ca.root_pem);
    let out = openssl(
        tmp.path(),
        &[
            "x509",
            "-in",
            "root.pem",
            "-noout",
            "-fingerprint",
            "-sha256",
        ],
    );
    assert!(out.status.success());
    let printed = stdout(&out);
    let hex_from_openssl = printed
        .trim()
        .rsplit('=')
        .next()
        .expect("fingerprint")
        .replace(':', "")
        .to_lowercase();
    assert_eq!(fingerprint(&pem_cert(&ca.root_pem)), hex_from_openssl);
}
