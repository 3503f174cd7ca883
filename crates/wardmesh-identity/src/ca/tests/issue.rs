//! Leaf issuance from CSRs: what goes into a leaf, what openssl thinks of it, and every
//! way a CSR is refused.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, IsCa, KeyPair, PublicKeyData, SanType,
};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::ca::{CaLifetimes, IssueError, IssuedSvid, MAX_CSR_BYTES, Signer};
use crate::keygen::{generate_anonymous_csr, generate_csr};
use crate::svid::{certs_from_pem, certs_to_pem, inspect_leaf};
use crate::testutil::{HOUR, TestCa, id, now, openssl, pem_cert, stderr, stdout, write};

const WL: &str = "spiffe://wardmesh.local/ns/clinic/sa/notes-api";

fn ca() -> TestCa {
    TestCa::new("wardmesh.local")
}

fn sign(signer: &Signer, csr: &[u8], spiffe_id: &str) -> Result<IssuedSvid, IssueError> {
    signer.sign_csr(csr, &id(spiffe_id), HOUR, now())
}

/// A CSR built by hand with rcgen, for requests `keygen` would never make.
fn custom_csr(key: &KeyPair, edit: impl FnOnce(&mut CertificateParams)) -> String {
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.subject_alt_names = vec![SanType::URI(WL.try_into().expect("ia5"))];
    edit(&mut p);
    p.serialize_request(key)
        .expect("csr")
        .pem()
        .expect("csr pem")
}

fn csr_der(pem: &str) -> Vec<u8> {
    let mut rd = pem.as_bytes();
    match rustls_pemfile::read_one(&mut rd) {
        Ok(Some(rustls_pemfile::Item::Csr(der))) => der.as_ref().to_vec(),
        other => panic!("not a csr pem: {other:?}"),
    }
}

/// Checks every X509-SVID leaf rule on `issued`, issued for `key` by `ca`.
fn assert_svid_leaf(ca: &TestCa, issued: &IssuedSvid, key_spki_der: &[u8], spiffe_id: &str) {
    let (rest, cert) = X509Certificate::from_der(issued.leaf.as_ref()).expect("parse leaf");
    assert!(rest.is_empty());
    assert_eq!(issued.spiffe_id, id(spiffe_id));

    // Exactly one SAN, the attested URI.
    let san = cert
        .subject_alternative_name()
        .expect("san parses")
        .expect("san present");
    assert_eq!(
        san.value.general_names,
        vec![GeneralName::URI(spiffe_id)],
        "exactly one URI SAN and nothing else"
    );

    // cA=false, explicitly.
    let bc = cert
        .basic_constraints()
        .expect("bc parses")
        .expect("basicConstraints present");
    assert!(!bc.value.ca);
    assert!(!cert.is_ca());

    let ku = cert
        .key_usage()
        .expect("ku parses")
        .expect("keyUsage present");
    assert!(ku.value.digital_signature());
    assert!(!ku.value.key_cert_sign());
    assert!(!ku.value.crl_sign());

    let eku = cert
        .extended_key_usage()
        .expect("eku parses")
        .expect("extendedKeyUsage present");
    assert!(eku.value.server_auth && eku.value.client_auth);
    assert!(!eku.value.any && !eku.value.code_signing);

    // The leaf carries the CSR's key.
    assert_eq!(cert.public_key().raw, key_spki_der);

    // Issued by the intermediate, chained leaf-then-intermediate.
    let (_, int) =
        X509Certificate::from_der(ca.signer.intermediate_der().as_ref()).expect("parse int");
    assert_eq!(cert.issuer(), int.subject());
    cert.verify_signature(Some(int.public_key()))
        .expect("leaf signed by the intermediate");
    let aki = cert
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => a.key_identifier.clone(),
            _ => None,
        })
        .expect("authorityKeyIdentifier");
    let ski = int
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(s) => Some(s.clone()),
            _ => None,
        })
        .expect("intermediate subjectKeyIdentifier");
    assert_eq!(aki.0, ski.0);
    assert_eq!(
        certs_from_pem(&issued.chain_pem).expect("chain"),
        vec![issued.leaf.clone(), ca.signer.intermediate_der().clone()]
    );

    // What the caller is told matches the certificate.
    assert_eq!(cert.validity().not_before.to_datetime(), issued.not_before);
    assert_eq!(cert.validity().not_after.to_datetime(), issued.not_after);
    assert_eq!(hex::encode(cert.raw_serial()), issued.serial_hex);
    assert_eq!(issued.serial_hex.len(), 32, "128-bit serial");
    assert_eq!(issued.authority_id, ca.signer.authority_id());
    assert_eq!(
        inspect_leaf(&issued.leaf).expect("svid").spiffe_id,
        id(spiffe_id)
    );
}

/// `openssl verify` against the root, plus the TLS purposes, plus the SAN as openssl
/// prints it.
fn assert_openssl_accepts(ca: &TestCa, issued: &IssuedSvid, spiffe_id: &str) {
    let tmp = tempfile::tempdir().expect("tempdir");
    write(tmp.path(), "root.pem", &ca.root_pem);
    write(tmp.path(), "intermediate.pem", &ca.intermediate_pem);
    write(tmp.path(), "leaf.pem", &certs_to_pem([&issued.leaf]));
    let base = [
        "verify",
        "-CAfile",
        "root.pem",
        "-untrusted",
        "intermediate.pem",
    ];
    for extra in [
        &[][..],
        &["-purpose", "sslclient"],
        &["-purpose", "sslserver"],
    ] {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        args.push("leaf.pem");
        let out = openssl(tmp.path(), &args);
        assert!(
            out.status.success() && stdout(&out).trim() == "leaf.pem: OK",
            "openssl {args:?}: {}{}",
            stdout(&out),
            stderr(&out)
        );
    }

    // Without the intermediate the chain cannot be built.
    let out = openssl(tmp.path(), &["verify", "-CAfile", "root.pem", "leaf.pem"]);
    assert!(!out.status.success());

    let out = openssl(
        tmp.path(),
        &[
            "x509",
            "-in",
            "leaf.pem",
            "-noout",
            "-ext",
            "subjectAltName",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(text.matches("URI:").count(), 1, "{text}");
    assert!(text.contains(&format!("URI:{spiffe_id}")), "{text}");
    assert!(
        !text.contains("DNS:") && !text.contains("IP Address:"),
        "{text}"
    );

    let out = openssl(
        tmp.path(),
        &[
            "x509",
            "-in",
            "leaf.pem",
            "-noout",
            "-ext",
            "basicConstraints",
        ],
    );
    assert!(stdout(&out).contains("CA:FALSE"), "{}", stdout(&out));
}

#[test]
fn issues_an_svid_from_a_keygen_csr() {
    let ca = ca();
    let kc = generate_csr(&id(WL)).expect("csr");
    let at = now();
    let issued = ca
        .signer
        .sign_csr(kc.csr_pem.as_bytes(), &id(WL), HOUR, at)
        .expect("issue");
    assert_eq!(
        issued.not_before,
        at - time::Duration::seconds(60),
        "backdated"
    );
    assert_eq!(
        issued.not_after,
        at + time::Duration::hours(1),
        "ttl honoured"
    );
    assert_svid_leaf(&ca, &issued, &kc.key.subject_public_key_info(), WL);
    assert_openssl_accepts(&ca, &issued, WL);
}

#[test]
fn issues_an_svid_from_an_anonymous_csr() {
    let ca = ca();
    let kc = generate_anonymous_csr().expect("csr");
    let at = now();
    let ttl = Duration::from_secs(5 * 60);
    let issued = ca
        .signer
        .sign_csr(kc.csr_pem.as_bytes(), &id(WL), ttl, at)
        .expect("issue");
    assert_eq!(issued.not_after, at + time::Duration::minutes(5));
    assert_svid_leaf(&ca, &issued, &kc.key.subject_public_key_info(), WL);
    assert_openssl_accepts(&ca, &issued, WL);
}

#[test]
fn accepts_der_csrs_and_ed25519_keys() {
    let ca = ca();
    let kc = generate_csr(&id(WL)).expect("csr");
    let der = csr_der(&kc.csr_pem);
    let issued = sign(&ca.signer, &der, WL).expect("DER csr");
    assert_svid_leaf(&ca, &issued, &kc.key.subject_public_key_info(), WL);

    let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("ed25519");
    let csr = custom_csr(&ed, |_| {});
    let issued = sign(&ca.signer, csr.as_bytes(), WL).expect("ed25519 csr");
    assert_svid_leaf(&ca, &issued, &ed.subject_public_key_info(), WL);
    assert_openssl_accepts(&ca, &issued, WL);
}

#[test]
fn leaf_never_outlives_the_intermediate() {
    let at = now();
    let ca = TestCa::with(
        "wardmesh.local",
        at,
        CaLifetimes {
            root: Duration::from_secs(86_400),
            intermediate: Duration::from_secs(10 * 60),
        },
    );
    assert_eq!(
        ca.signer.intermediate_not_after(),
        at + time::Duration::minutes(10)
    );
    let kc = generate_csr(&id(WL)).expect("csr");
    let issued = ca
        .signer
        .sign_csr(kc.csr_pem.as_bytes(), &id(WL), HOUR, at)
        .expect("issue");
    assert_eq!(issued.not_after, ca.signer.intermediate_not_after());
    assert_svid_leaf(&ca, &issued, &kc.key.subject_public_key_info(), WL);

    // A ttl inside the intermediate's life is left alone.
    let issued = ca
        .signer
        .sign_csr(kc.csr_pem.as_bytes(), &id(WL), Duration::from_secs(60), at)
        .expect("issue");
    assert_eq!(issued.not_after, at + time::Duration::minutes(1));

    // Once the intermediate has expired nothing is issued.
    let later = at + time::Duration::minutes(11);
    assert_eq!(
        ca.signer
            .sign_csr(kc.csr_pem.as_bytes(), &id(WL), HOUR, later)
            .unwrap_err(),
        IssueError::IntermediateExpired(ca.signer.intermediate_not_after())
    );
    let exactly = ca.signer.intermediate_not_after();
    assert!(matches!(
        ca.signer
            .sign_csr(kc.csr_pem.as_bytes(), &id(WL), HOUR, exactly),
        Err(IssueError::IntermediateExpired(_))
    ));
}

#[test]
fn openssl_generated_csrs_are_issued_with_their_own_key() {
    // What an operator does by hand: a P-256 key and a CSR from the openssl CLI, once
    // with the usual SHA-256 signature and once with SHA-384. The leaf must carry the
    // CSR's P-256 key either way, whatever hash signed the request.
    let ca = ca();
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = openssl(
        tmp.path(),
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "key.pem",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let key = KeyPair::from_pem(&std::fs::read_to_string(tmp.path().join("key.pem")).expect("key"))
        .expect("p256 key");
    for digest in ["-sha256", "-sha384"] {
        let out = openssl(
            tmp.path(),
            &[
                "req",
                "-new",
                "-key",
                "key.pem",
                digest,
                "-subj",
                "/O=acme/CN=notes",
                "-addext",
                &format!("subjectAltName=URI:{WL}"),
                "-out",
                "req.pem",
            ],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let csr = std::fs::read(tmp.path().join("req.pem")).expect("csr");
        let issued = sign(&ca.signer, &csr, WL).unwrap_or_else(|e| panic!("{digest}: {e}"));
        assert_svid_leaf(&ca, &issued, &key.subject_public_key_info(), WL);
        let (_, cert) = X509Certificate::from_der(issued.leaf.as_ref()).expect("parse");
        let alg = &cert.public_key().algorithm;
        assert_eq!(alg.algorithm, OID_KEY_TYPE_EC_PUBLIC_KEY);
        assert_eq!(
            alg.parameters.as_ref().and_then(|p| p.as_oid().ok()),
            Some(OID_EC_P256),
            "{digest}: leaf must name the key's real curve"
        );
        assert_openssl_accepts(&ca, &issued, WL);
    }
}

// ---------------------------------------------------------------- refusals

#[test]
fn refuses_malformed_and_wrong_type_input() {
    let ca = ca();
    for junk in [
        &b""[..],
        b"hello, I am a csr",
        b"\x30\x03\x02\x01\x00",
        b"-----BEGIN CERTIFICATE REQUEST-----\n!!!!\n-----END CERTIFICATE REQUEST-----\n",
    ] {
        assert!(
            matches!(sign(&ca.signer, junk, WL), Err(IssueError::CsrMalformed(_))),
            "{:?}",
            String::from_utf8_lossy(junk)
        );
    }

    // A PEM certificate (or key) is not a request.
    let err = sign(&ca.signer, ca.root_pem.as_bytes(), WL).unwrap_err();
    assert_eq!(
        err,
        IssueError::CsrMalformed("PEM block is not a CERTIFICATE REQUEST".into())
    );
    let kc = generate_csr(&id(WL)).expect("csr");
    let err = sign(&ca.signer, kc.key.serialize_pem().as_bytes(), WL).unwrap_err();
    assert_eq!(
        err,
        IssueError::CsrMalformed("PEM block is not a CERTIFICATE REQUEST".into())
    );

    // A certificate's DER is not a request either.
    assert!(matches!(
        sign(&ca.signer, pem_cert(&ca.root_pem).as_ref(), WL),
        Err(IssueError::CsrMalformed(_))
    ));

    // Trailing bytes after a valid DER request.
    let mut der = csr_der(&kc.csr_pem);
    der.push(0);
    assert_eq!(
        sign(&ca.signer, &der, WL).unwrap_err(),
        IssueError::CsrMalformed("trailing bytes after the request".into())
    );
}

#[test]
fn refuses_oversize_csrs_before_parsing() {
    let ca = ca();
    let big = vec![b'A'; MAX_CSR_BYTES + 1];
    assert_eq!(
        sign(&ca.signer, &big, WL).unwrap_err(),
        IssueError::CsrTooLarge
    );
    // A valid request padded past the limit is refused too.
    let kc = generate_csr(&id(WL)).expect("csr");
    let mut padded = kc.csr_pem.into_bytes();
    padded.resize(MAX_CSR_BYTES + 1, b'\n');
    assert_eq!(
        sign(&ca.signer, &padded, WL).unwrap_err(),
        IssueError::CsrTooLarge
    );
}

#[test]
fn refuses_tampered_csrs() {
    let ca = ca();
    let kc = generate_csr(&id(WL)).expect("csr");
    let der = csr_der(&kc.csr_pem);

    // One bit of the signature value flipped.
    let mut bad_sig = der.clone();
    let last = bad_sig.len() - 1;
    bad_sig[last] ^= 0x01;
    assert_eq!(
        sign(&ca.signer, &bad_sig, WL).unwrap_err(),
        IssueError::CsrSignature
    );

    // The requested identity rewritten after signing (same length, so the DER stays
    // well-formed): the signature no longer covers it.
    let forged_id = WL.replace("notes-api", "admin-api");
    let pos = der
        .windows(WL.len())
        .position(|w| w == WL.as_bytes())
        .expect("uri in csr");
    let mut forged = der.clone();
    forged[pos..pos + WL.len()].copy_from_slice(forged_id.as_bytes());
    assert_eq!(
        sign(&ca.signer, &forged, &forged_id).unwrap_err(),
        IssueError::CsrSignature
    );
}

#[test]
fn refuses_a_csr_for_another_identity() {
    let ca = ca();
    let kc = generate_csr(&id("spiffe://wardmesh.local/ns/clinic/sa/admin")).expect("csr");
    assert_eq!(
        sign(&ca.signer, kc.csr_pem.as_bytes(), WL).unwrap_err(),
        IssueError::CsrIdentityMismatch {
            requested: "spiffe://wardmesh.local/ns/clinic/sa/admin".into(),
            attested: WL.into(),
        }
    );
}

#[test]
fn refuses_extra_sans() {
    let ca = ca();
    let key = KeyPair::generate().expect("key");

    let csr = custom_csr(&key, |p| {
        p.subject_alt_names
            .push(SanType::DnsName("evil.example".try_into().expect("ia5")));
    });
    match sign(&ca.signer, csr.as_bytes(), WL) {
        Err(IssueError::CsrExtraSans(s)) => assert!(s.contains("evil.example"), "{s}"),
        other => panic!("expected CsrExtraSans, got {other:?}"),
    }

    let csr = custom_csr(&key, |p| {
        p.subject_alt_names.push(SanType::URI(
            "spiffe://wardmesh.local/ns/clinic/sa/admin"
                .try_into()
                .expect("ia5"),
        ));
    });
    assert_eq!(
        sign(&ca.signer, csr.as_bytes(), WL).unwrap_err(),
        IssueError::CsrExtraSans("URI:spiffe://wardmesh.local/ns/clinic/sa/admin".into())
    );

    let csr = custom_csr(&key, |p| {
        p.subject_alt_names
            .push(SanType::IpAddress("10.0.0.1".parse().expect("ip")));
    });
    assert!(matches!(
        sign(&ca.signer, csr.as_bytes(), WL),
        Err(IssueError::CsrExtraSans(_))
    ));

    // A DNS name alone (no URI) is refused too, not silently dropped.
    let csr = custom_csr(&key, |p| {
        p.subject_alt_names = vec![SanType::DnsName("notes.clinic".try_into().expect("ia5"))];
    });
    assert!(matches!(
        sign(&ca.signer, csr.as_bytes(), WL),
        Err(IssueError::CsrExtraSans(_))
    ));
}

#[test]
fn refuses_a_csr_asking_for_a_ca() {
    let ca = ca();
    let key = KeyPair::generate().expect("key");
    for bc in [
        IsCa::Ca(BasicConstraints::Unconstrained),
        IsCa::Ca(BasicConstraints::Constrained(0)),
    ] {
        let csr = custom_csr(&key, |p| p.is_ca = bc);
        assert_eq!(
            sign(&ca.signer, csr.as_bytes(), WL).unwrap_err(),
            IssueError::CsrRequestsCa
        );
    }
    // Asking explicitly for cA=false is fine.
    let csr = custom_csr(&key, |p| p.is_ca = IsCa::ExplicitNoCa);
    let issued = sign(&ca.signer, csr.as_bytes(), WL).expect("explicit no-ca");
    assert_svid_leaf(&ca, &issued, &key.subject_public_key_info(), WL);
}

#[test]
fn refuses_rsa_and_p384_keys() {
    let ca = ca();
    let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("p384");
    let csr = custom_csr(&p384, |_| {});
    assert_eq!(
        sign(&ca.signer, csr.as_bytes(), WL).unwrap_err(),
        IssueError::CsrKeyType("1.2.840.10045.2.1".into())
    );

    let tmp = tempfile::tempdir().expect("tempdir");
    let out = openssl(
        tmp.path(),
        &[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "rsa.key",
            "-subj",
            "/O=acme",
            "-addext",
            &format!("subjectAltName=URI:{WL}"),
            "-out",
            "rsa.csr",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let csr = std::fs::read(tmp.path().join("rsa.csr")).expect("csr");
    assert_eq!(
        sign(&ca.signer, &csr, WL).unwrap_err(),
        IssueError::CsrKeyType("1.2.840.113549.1.1.1".into())
    );
}

#[test]
fn refuses_ids_outside_the_trust_domain() {
    let ca = ca();
    let other = "spiffe://other.example/ns/clinic/sa/notes-api";
    let kc = generate_csr(&id(other)).expect("csr");
    assert_eq!(
        sign(&ca.signer, kc.csr_pem.as_bytes(), other).unwrap_err(),
        IssueError::WrongTrustDomain {
            id: other.into(),
            trust_domain: "wardmesh.local".into(),
        }
    );
    let local = KeyPair::generate().expect("key");
    assert!(matches!(
        ca.signer
            .sign_local_key(&local, &id(other), HOUR, now(), &[]),
        Err(IssueError::WrongTrustDomain { .. })
    ));
}

#[test]
fn local_key_leaves_carry_dns_and_ip_sans_beside_the_uri() {
    let ca = ca();
    let key = KeyPair::generate().expect("key");
    let cp = "spiffe://wardmesh.local/control-plane";
    let issued = ca
        .signer
        .sign_local_key(
            &key,
            &id(cp),
            HOUR,
            now(),
            &["localhost".into(), "127.0.0.1".into()],
        )
        .expect("issue");
    let (_, cert) = X509Certificate::from_der(issued.leaf.as_ref()).expect("parse");
    let names = cert
        .subject_alternative_name()
        .expect("san")
        .expect("san present")
        .value
        .general_names
        .clone();
    assert_eq!(
        names,
        vec![
            GeneralName::URI(cp),
            GeneralName::DNSName("localhost"),
            GeneralName::IPAddress(&[127, 0, 0, 1]),
        ]
    );
    assert!(!cert.is_ca());
    assert_eq!(
        cert.public_key().raw,
        key.subject_public_key_info().as_slice()
    );
    assert_eq!(inspect_leaf(&issued.leaf).expect("svid").spiffe_id, id(cp));

    assert!(matches!(
        ca.signer
            .sign_local_key(&key, &id(cp), HOUR, now(), &["bücher.example".into()]),
        Err(IssueError::Generate(_))
    ));
}
