//! CA tests: the CA directory (layout, sealing, import, rotation) here; CSR issuance in
//! `tests/issue.rs`. Everything runs real crypto on real files in a temporary directory.

mod issue;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use x509_parser::prelude::FromDer;

use super::*;
use crate::keygen::generate_csr;
use crate::seal::{SealError, SealKey};
use crate::svid::{certs_from_pem, fingerprint};
use crate::testutil::{HOUR, id, now, openssl, stderr, stdout, td, write};

const TD: &str = "wardmesh.local";

fn ca_dir() -> (tempfile::TempDir, CaDir) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = CaDir::new(tmp.path().join("ca"));
    (tmp, dir)
}

fn init(dir: &CaDir, seal: &SealKey) -> CaState {
    dir.init(&td(TD), seal, now(), CaLifetimes::default())
        .expect("init")
}

fn files_under(path: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(path).expect("read_dir") {
        let p = entry.expect("entry").path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn relative(dir: &CaDir, files: &[PathBuf]) -> Vec<String> {
    files
        .iter()
        .map(|f| {
            f.strip_prefix(dir.path())
                .expect("under dir")
                .display()
                .to_string()
        })
        .collect()
}

fn sealed_int_key(dir: &CaDir, state: &CaState) -> PathBuf {
    dir.path()
        .join("authorities")
        .join(&state.active)
        .join("intermediate.key.sealed")
}

// ---------------------------------------------------------------- init / load / status

#[test]
fn init_writes_the_layout_with_sealed_keys() {
    let (_tmp, dir) = ca_dir();
    let seal = SealKey::generate();
    assert!(!dir.is_initialised());
    let state = init(&dir, &seal);
    assert!(dir.is_initialised());
    assert_eq!(state.trust_domain, td(TD));
    assert_eq!(state.trusted, vec![state.active.clone()]);
    assert_eq!(state.revision, 1);
    assert_eq!(state.active.len(), 16, "authority id is 16 hex chars");
    assert!(state.active.bytes().all(|b| b.is_ascii_hexdigit()));

    let files = files_under(dir.path());
    let a = format!("authorities/{}", state.active);
    assert_eq!(
        relative(&dir, &files),
        vec![
            format!("{a}/intermediate.key.sealed"),
            format!("{a}/intermediate.pem"),
            format!("{a}/root.key.sealed"),
            format!("{a}/root.pem"),
            "ca.json".to_owned(),
        ],
        "no temp files left behind either"
    );

    // No private key in clear anywhere; the sealed files are the wardmesh envelope.
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read");
        assert!(
            !text.contains("PRIVATE KEY"),
            "{} holds a clear key",
            f.display()
        );
        if f.extension().is_some_and(|e| e == "sealed") {
            let v: serde_json::Value = serde_json::from_str(&text).expect("sealed json");
            assert_eq!(v["format"], "wardmesh-sealed-v1");
            assert_eq!(v["alg"], "AES-256-GCM");
            let mode = std::fs::metadata(f).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{} mode", f.display());
        }
    }

    // ca.json on disk is exactly the returned state.
    let on_disk: CaState =
        serde_json::from_slice(&std::fs::read(dir.path().join("ca.json")).expect("read"))
            .expect("ca.json");
    assert_eq!(on_disk, state);

    // The authority id is derived from the intermediate's fingerprint.
    let int_pem =
        std::fs::read_to_string(dir.path().join(&a).join("intermediate.pem")).expect("read");
    let int_der = certs_from_pem(&int_pem).expect("pem").remove(0);
    assert_eq!(state.active, fingerprint(&int_der)[..16]);
}

#[test]
fn load_with_the_right_key_gives_a_working_signer() {
    let (_tmp, dir) = ca_dir();
    let seal = SealKey::generate();
    let state = init(&dir, &seal);
    let loaded = dir.load(&seal, now()).expect("load");
    assert_eq!(loaded.state, state);
    assert_eq!(loaded.signer.authority_id(), state.active);
    assert_eq!(loaded.signer.trust_domain(), &td(TD));
    assert_eq!(loaded.bundle.len(), 1);
    let root_pem = std::fs::read_to_string(
        dir.path()
            .join("authorities")
            .join(&state.active)
            .join("root.pem"),
    )
    .expect("root");
    assert_eq!(
        loaded.bundle[0],
        certs_from_pem(&root_pem).expect("pem").remove(0)
    );
    assert_eq!(
        certs_from_pem(&loaded.bundle_pem).expect("bundle pem"),
        loaded.bundle
    );
    assert_eq!(loaded.authorities.len(), 1);
    assert!(loaded.authorities[0].active && loaded.authorities[0].root_key_held);

    // The loaded signer issues leaves that chain to the root on disk.
    let wl = id("spiffe://wardmesh.local/ns/clinic/sa/notes");
    let kc = generate_csr(&wl).expect("csr");
    let issued = loaded
        .signer
        .sign_csr(kc.csr_pem.as_bytes(), &wl, HOUR, now())
        .expect("issue");
    assert_eq!(issued.authority_id, state.active);
    let tmp = tempfile::tempdir().expect("tempdir");
    let chain = certs_from_pem(&issued.chain_pem).expect("chain");
    write(tmp.path(), "root.pem", &root_pem);
    write(
        tmp.path(),
        "int.pem",
        &crate::svid::certs_to_pem([&chain[1]]),
    );
    write(
        tmp.path(),
        "leaf.pem",
        &crate::svid::certs_to_pem([&chain[0]]),
    );
    let out = openssl(
        tmp.path(),
        &[
            "verify",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "int.pem",
            "leaf.pem",
        ],
    );
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
}

#[test]
fn load_with_the_wrong_key_is_wrong_key() {
    let (_tmp, dir) = ca_dir();
    let state = init(&dir, &SealKey::generate());
    let err = dir.load(&SealKey::generate(), now()).unwrap_err();
    match err {
        CaDirError::Seal(SealError::WrongKey { path }) => {
            assert_eq!(path, sealed_int_key(&dir, &state));
        }
        other => panic!("expected WrongKey, got {other:?}"),
    }
}

#[test]
fn truncated_or_garbage_sealed_key_is_corrupt() {
    let (_tmp, dir) = ca_dir();
    let seal = SealKey::generate();
    let state = init(&dir, &seal);
    let key_path = sealed_int_key(&dir, &state);
    let original = std::fs::read(&key_path).expect("read");

    std::fs::write(&key_path, &original[..original.len() / 2]).expect("truncate");
    assert!(matches!(
        dir.load(&seal, now()),
        Err(CaDirError::Seal(SealError::Corrupt { ref path, .. })) if *path == key_path
    ));

    std::fs::write(&key_path, b"\x00\x01garbage\xff").expect("garbage");
    assert!(matches!(
        dir.load(&seal, now()),
        Err(CaDirError::Seal(SealError::Corrupt { .. }))
    ));

    std::fs::write(&key_path, b"").expect("empty");
    assert!(matches!(
        dir.load(&seal, now()),
        Err(CaDirError::Seal(SealError::Corrupt { .. }))
    ));

    // The sealed root key is bound to its purpose: swapped in for the intermediate's
    // key it is refused, not decrypted and tried.
    let root_sealed = key_path.with_file_name("root.key.sealed");
    std::fs::copy(&root_sealed, &key_path).expect("swap");
    match dir.load(&seal, now()) {
        Err(CaDirError::Seal(SealError::Corrupt { reason, .. })) => {
            assert!(reason.contains("wardmesh-root-key"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }

    std::fs::write(&key_path, &original).expect("restore");
    assert!(dir.load(&seal, now()).is_ok());

    std::fs::remove_file(&key_path).expect("remove");
    assert!(matches!(
        dir.load(&seal, now()),
        Err(CaDirError::Seal(SealError::Read { .. }))
    ));
}

#[test]
fn corrupted_state_file_is_bad_state() {
    let (_tmp, dir) = ca_dir();
    let seal = SealKey::generate();
    let state = init(&dir, &seal);
    let state_path = dir.path().join("ca.json");

    std::fs::write(&state_path, b"{\"trust_domain\": \"wardmesh.local\", ").expect("write");
    for result in [
        dir.read_state().map(|_| ()),
        dir.status().map(|_| ()),
        dir.load(&seal, now()).map(|_| ()),
    ] {
        assert!(
            matches!(result, Err(CaDirError::BadState { ref path, .. }) if *path == state_path),
            "{result:?}"
        );
    }

    // Well-formed JSON that breaks an invariant is refused too.
    let mut broken = state.clone();
    broken.active = "0123456789abcdef".into();
    std::fs::write(&state_path, serde_json::to_vec(&broken).expect("json")).expect("write");
    match dir.read_state() {
        Err(CaDirError::BadState { reason, .. }) => assert!(reason.contains("not trusted")),
        other => panic!("expected BadState, got {other:?}"),
    }

    let mut bad_td = serde_json::to_value(&state).expect("json");
    bad_td["trust_domain"] = "Not A Domain".into();
    std::fs::write(&state_path, serde_json::to_vec(&bad_td).expect("json")).expect("write");
    assert!(matches!(dir.read_state(), Err(CaDirError::BadState { .. })));
}

#[test]
fn init_twice_is_already_initialised_and_changes_nothing() {
    let (_tmp, dir) = ca_dir();
    let seal = SealKey::generate();
    init(&dir, &seal);
    let before = files_under(dir.path());
    let state_before = std::fs::read(dir.path().join("ca.json")).expect("read");
    let err = dir
        .init(&td(TD), &seal, now(), CaLifetimes::default())
        .unwrap_err();
    assert!(matches!(err, CaDirError::AlreadyInitialised(ref p) if p == dir.path()));
    assert_eq!(files_under(dir.path()), before);
    assert_eq!(
        std::fs::read(dir.path().join("ca.json")).expect("read"),
        state_before
    );
}

#[test]
fn uninitialised_dir_is_not_initialised() {
    let (_tmp, dir) = ca_dir();
    assert!(matches!(
        dir.read_state(),
        Err(CaDirError::NotInitialised(_))
    ));
    assert!(matches!(dir.status(), Err(CaDirError::NotInitialised(_))));
    assert!(matches!(
        dir.load(&SealKey::generate(), now()),
        Err(CaDirError::NotInitialised(_))
    ));
    assert!(matches!(
        dir.rotate_prepare(&SealKey::generate(), now(), CaLifetimes::default()),
        Err(CaDirError::NotInitialised(_))
    ));
    assert!(matches!(
        dir.rotate_activate(),
        Err(CaDirError::NotInitialised(_))
    ));
    assert!(matches!(
        dir.rotate_retire(),
        Err(CaDirError::NotInitialised(_))
    ));
}

#[test]
fn status_needs_no_key_and_reports_public_facts() {
    let (_tmp, dir) = ca_dir();
    let seal = SealKey::generate();
    let state = init(&dir, &seal);
    // Destroy both sealed keys: status reads public material only.
    let a = dir.path().join("authorities").join(&state.active);
    std::fs::write(a.join("intermediate.key.sealed"), b"gone").expect("write");
    std::fs::write(a.join("root.key.sealed"), b"gone").expect("write");

    let (st, infos) = dir.status().expect("status");
    assert_eq!(st, state);
    assert_eq!(infos.len(), 1);
    let info = &infos[0];
    assert_eq!(info.id, state.active);
    assert!(info.active);
    assert!(info.root_key_held);
    let root_der = certs_from_pem(&std::fs::read_to_string(a.join("root.pem")).expect("read"))
        .expect("pem")
        .remove(0);
    let int_der =
        certs_from_pem(&std::fs::read_to_string(a.join("intermediate.pem")).expect("read"))
            .expect("pem")
            .remove(0);
    assert_eq!(info.root_fingerprint, fingerprint(&root_der));
    assert_eq!(info.intermediate_fingerprint, fingerprint(&int_der));
    assert!(
        info.root_subject.contains("wardmesh root"),
        "{}",
        info.root_subject
    );
    assert!(info.root_subject.contains("wardmesh.local"));
    assert!(
        info.intermediate_subject.contains("wardmesh intermediate"),
        "{}",
        info.intermediate_subject
    );
    let root_na = OffsetDateTime::parse(
        &info.root_not_after,
        &time::format_description::well_known::Rfc3339,
    )
    .expect("rfc3339");
    let int_na = OffsetDateTime::parse(
        &info.intermediate_not_after,
        &time::format_description::well_known::Rfc3339,
    )
    .expect("rfc3339");
    assert!(root_na > int_na, "root outlives the intermediate");
    assert!(int_na > now() + time::Duration::days(364));
}

#[test]
fn load_refuses_an_expired_intermediate() {
    let (_tmp, dir) = ca_dir();
    let seal = SealKey::generate();
    let lifetimes = CaLifetimes {
        root: Duration::from_secs(86_400),
        intermediate: Duration::from_secs(600),
    };
    dir.init(&td(TD), &seal, now(), lifetimes).expect("init");
    assert!(dir.load(&seal, now()).is_ok());
    match dir.load(&seal, now() + time::Duration::hours(1)) {
        Err(CaDirError::BadCert { reason, .. }) => {
            assert!(reason.contains("expired"), "{reason}");
        }
        other => panic!("expected BadCert, got {other:?}"),
    }
}

#[test]
fn authorities_created_in_the_same_second_have_distinct_names() {
    // Path building matches issuer names first; two roots named alike in one bundle
    // make verifiers try the wrong one (webpki then reports BadSignature, not
    // UnknownIssuer). A rotation prepared right after init must not collide.
    let at = now();
    let a = generate_authority(&td(TD), at, CaLifetimes::default()).expect("a");
    let b = generate_authority(&td(TD), at, CaLifetimes::default()).expect("b");
    let subject = |pem: &str| {
        let der = certs_from_pem(pem).expect("pem").remove(0);
        let (_, c) = x509_parser::prelude::X509Certificate::from_der(der.as_ref()).expect("x509");
        (c.subject().to_string(), c.issuer().to_string())
    };
    let (ra, ra_issuer) = subject(&a.root_pem);
    let (rb, _) = subject(&b.root_pem);
    let (ia, ia_issuer) = subject(&a.intermediate_pem);
    let (ib, _) = subject(&b.intermediate_pem);
    assert_ne!(ra, rb);
    assert_ne!(ia, ib);
    assert_eq!(ra, ra_issuer, "root is self-issued");
    assert_eq!(ia_issuer, ra, "intermediate names its root");

    let (_tmp, dir) = ca_dir();
    let seal = SealKey::generate();
    dir.init(&td(TD), &seal, at, CaLifetimes::default())
        .expect("init");
    dir.rotate_prepare(&seal, at, CaLifetimes::default())
        .expect("prepare");
    let (_, infos) = dir.status().expect("status");
    assert_ne!(infos[0].root_subject, infos[1].root_subject);
    assert_ne!(infos[0].intermediate_subject, infos[1].intermediate_subject);
}

// ---------------------------------------------------------------- rotation

#[test]
fn rotation_prepare_activate_retire() {
    let (_tmp, dir) = ca_dir();
    let seal = SealKey::generate();
    let s1 = init(&dir, &seal);
    let old = s1.active.clone();
    let before = dir.load(&seal, now()).expect("load");

    // prepare: two roots, old still signs.
    let s2 = dir
        .rotate_prepare(&seal, now(), CaLifetimes::default())
        .expect("prepare");
    assert_eq!(s2.revision, s1.revision + 1);
    assert_eq!(s2.active, old);
    assert_eq!(s2.trusted.len(), 2);
    assert_eq!(s2.trusted[0], old);
    let new = s2.trusted[1].clone();
    assert_ne!(new, old);
    let prepared = dir.load(&seal, now()).expect("load");
    assert_eq!(prepared.bundle.len(), 2);
    assert_eq!(prepared.bundle[0], before.bundle[0], "old root stays first");
    assert_ne!(prepared.bundle[1], before.bundle[0]);
    assert_eq!(prepared.signer.authority_id(), old);
    assert_eq!(
        prepared.signer.intermediate_der(),
        before.signer.intermediate_der()
    );
    assert_eq!(dir.status().expect("status").1.len(), 2);

    // activate: the new authority signs, both roots still trusted.
    let s3 = dir.rotate_activate().expect("activate");
    assert_eq!(s3.revision, s2.revision + 1);
    assert_eq!(s3.active, new);
    assert_eq!(s3.trusted, s2.trusted);
    let active = dir.load(&seal, now()).expect("load");
    assert_eq!(active.signer.authority_id(), new);
    assert_eq!(active.bundle, prepared.bundle);
    let wl = id("spiffe://wardmesh.local/ns/a/sa/b");
    let kc = generate_csr(&wl).expect("csr");
    let issued = active
        .signer
        .sign_csr(kc.csr_pem.as_bytes(), &wl, HOUR, now())
        .expect("issue");
    assert_eq!(issued.authority_id, new);
    let (_, infos) = dir.status().expect("status");
    assert_eq!(
        infos
            .iter()
            .filter(|i| i.active)
            .map(|i| &i.id)
            .collect::<Vec<_>>(),
        vec![&new]
    );

    // retire: only the new root is left.
    let s4 = dir.rotate_retire().expect("retire");
    assert_eq!(s4.revision, s3.revision + 1);
    assert_eq!(s4.trusted, vec![new.clone()]);
    assert_eq!(s4.active, new);
    let retired = dir.load(&seal, now()).expect("load");
    assert_eq!(retired.bundle, vec![prepared.bundle[1].clone()]);
    assert_eq!(retired.signer.authority_id(), new);
    assert_eq!(dir.read_state().expect("state"), s4);
}

#[test]
fn rotation_steps_out_of_order_are_refused() {
    let (_tmp, dir) = ca_dir();
    let seal = SealKey::generate();
    let s1 = init(&dir, &seal);

    let err = dir.rotate_activate().unwrap_err();
    assert!(
        matches!(&err, CaDirError::Rotation(m) if m.contains("prepare")),
        "{err}"
    );
    let err = dir.rotate_retire().unwrap_err();
    assert!(
        matches!(&err, CaDirError::Rotation(m) if m.contains("only one authority")),
        "{err}"
    );
    assert_eq!(
        dir.read_state().expect("state"),
        s1,
        "refusals change nothing"
    );

    let s2 = dir
        .rotate_prepare(&seal, now(), CaLifetimes::default())
        .expect("prepare");
    let err = dir
        .rotate_prepare(&seal, now(), CaLifetimes::default())
        .unwrap_err();
    assert!(
        matches!(&err, CaDirError::Rotation(m) if m.contains("already in progress")),
        "{err}"
    );
    assert_eq!(dir.read_state().expect("state"), s2);

    let s3 = dir.rotate_activate().expect("activate");
    let err = dir.rotate_activate().unwrap_err();
    assert!(matches!(err, CaDirError::Rotation(_)), "{err}");
    assert_eq!(dir.read_state().expect("state"), s3);

    let s4 = dir.rotate_retire().expect("retire");
    assert!(matches!(dir.rotate_retire(), Err(CaDirError::Rotation(_))));
    assert_eq!(s4.revision, 4);

    // A second full rotation works from the retired state.
    let s5 = dir
        .rotate_prepare(&seal, now(), CaLifetimes::default())
        .expect("prepare again");
    assert_eq!(s5.revision, 5);
    assert_eq!(s5.trusted.len(), 2);
}

#[test]
fn rotation_prepare_with_the_wrong_key_still_needs_the_right_key_to_load() {
    // prepare seals the new keys with whatever key it is given; load then uses the
    // active authority only, so a mismatch surfaces at activate-then-load time.
    let (_tmp, dir) = ca_dir();
    let seal = SealKey::generate();
    init(&dir, &seal);
    let other = SealKey::generate();
    dir.rotate_prepare(&other, now(), CaLifetimes::default())
        .expect("prepare");
    assert!(dir.load(&seal, now()).is_ok(), "old authority still active");
    dir.rotate_activate().expect("activate");
    assert!(matches!(
        dir.load(&seal, now()),
        Err(CaDirError::Seal(SealError::WrongKey { .. }))
    ));
    assert!(dir.load(&other, now()).is_ok());
}

// ---------------------------------------------------------------- import (--from)

struct External {
    root_pem: String,
    root_key: KeyPair,
    root_params: CertificateParams,
}

fn external_ca_params(cn: &str, ca: bool) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Acme Health");
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    if ca {
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    } else {
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    }
    p.not_before = now() - time::Duration::days(1);
    p.not_after = now() + time::Duration::days(3650);
    p
}

fn external_root(cn: &str) -> External {
    let root_key = KeyPair::generate().expect("key");
    let root_params = external_ca_params(cn, true);
    let root_pem = root_params.self_signed(&root_key).expect("root").pem();
    External {
        root_pem,
        root_key,
        root_params,
    }
}

impl External {
    fn sign(&self, params: &CertificateParams, key: &KeyPair) -> String {
        let issuer = Issuer::new(self.root_params.clone(), &self.root_key);
        params.signed_by(key, &issuer).expect("sign").pem()
    }

    /// A valid intermediate and its key, as an enterprise PKI would hand them over.
    fn intermediate(&self) -> (String, KeyPair) {
        let key = KeyPair::generate().expect("key");
        let pem = self.sign(
            &external_ca_params("Acme wardmesh intermediate", true),
            &key,
        );
        (pem, key)
    }
}

fn assert_untouched(dir: &CaDir) {
    assert!(!dir.is_initialised());
    assert!(
        !dir.path().join("authorities").exists(),
        "a refused import must write nothing"
    );
}

fn import_err(dir: &CaDir, src: &ImportSource) -> String {
    match dir.import(&td(TD), &SealKey::generate(), src, now()) {
        Err(CaDirError::BadCert { reason, .. }) => {
            assert_untouched(dir);
            reason
        }
        other => panic!("expected BadCert, got {other:?}"),
    }
}

#[test]
fn import_from_an_external_root() {
    let ext = external_root("Acme Root CA");
    let (int_pem, int_key) = ext.intermediate();
    let (tmp, dir) = ca_dir();
    let seal = SealKey::generate();
    let src = ImportSource {
        root_pem: ext.root_pem.clone(),
        intermediate_pem: int_pem.clone(),
        intermediate_key_pem: int_key.serialize_pem(),
    };
    let state = dir.import(&td(TD), &seal, &src, now()).expect("import");
    assert_eq!(state.revision, 1);
    assert_eq!(state.trusted, vec![state.active.clone()]);

    let a = format!("authorities/{}", state.active);
    let files = files_under(dir.path());
    assert_eq!(
        relative(&dir, &files),
        vec![
            format!("{a}/intermediate.key.sealed"),
            format!("{a}/intermediate.pem"),
            format!("{a}/root.pem"),
            "ca.json".to_owned(),
        ],
        "no root key for an external root"
    );
    for f in &files {
        let text = std::fs::read_to_string(f).expect("read");
        assert!(!text.contains("PRIVATE KEY"), "{}", f.display());
    }

    let (_, infos) = dir.status().expect("status");
    assert!(!infos[0].root_key_held);
    assert!(infos[0].root_subject.contains("Acme Root CA"));

    // Importing again is refused.
    assert!(matches!(
        dir.import(&td(TD), &seal, &src, now()),
        Err(CaDirError::AlreadyInitialised(_))
    ));

    // The imported intermediate issues SVIDs that chain to the external root.
    let loaded = dir.load(&seal, now()).expect("load");
    assert_eq!(loaded.bundle, certs_from_pem(&ext.root_pem).expect("pem"));
    let wl = id("spiffe://wardmesh.local/ns/billing/sa/api");
    let kc = generate_csr(&wl).expect("csr");
    let issued = loaded
        .signer
        .sign_csr(kc.csr_pem.as_bytes(), &wl, HOUR, now())
        .expect("issue");
    write(tmp.path(), "root.pem", &ext.root_pem);
    write(tmp.path(), "int.pem", &int_pem);
    write(
        tmp.path(),
        "leaf.pem",
        &crate::svid::certs_to_pem([&issued.leaf]),
    );
    let out = openssl(
        tmp.path(),
        &[
            "verify",
            "-CAfile",
            "root.pem",
            "-untrusted",
            "int.pem",
            "leaf.pem",
        ],
    );
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
}

#[test]
fn import_with_a_mismatched_key_writes_nothing() {
    let ext = external_root("Acme Root CA");
    let (int_pem, _) = ext.intermediate();
    let (_tmp, dir) = ca_dir();
    let reason = import_err(
        &dir,
        &ImportSource {
            root_pem: ext.root_pem.clone(),
            intermediate_pem: int_pem,
            intermediate_key_pem: KeyPair::generate().expect("key").serialize_pem(),
        },
    );
    assert!(reason.contains("does not match"), "{reason}");
}

#[test]
fn import_of_an_intermediate_from_another_root_writes_nothing() {
    let ext = external_root("Acme Root CA");
    let stranger = external_root("Acme Root CA"); // same name, different key
    let (int_pem, int_key) = stranger.intermediate();
    let (_tmp, dir) = ca_dir();
    let reason = import_err(
        &dir,
        &ImportSource {
            root_pem: ext.root_pem.clone(),
            intermediate_pem: int_pem,
            intermediate_key_pem: int_key.serialize_pem(),
        },
    );
    assert!(reason.contains("not signed by the root"), "{reason}");
}

#[test]
fn import_of_a_non_ca_intermediate_writes_nothing() {
    let ext = external_root("Acme Root CA");
    let key = KeyPair::generate().expect("key");
    let leaf_pem = ext.sign(&external_ca_params("not a ca", false), &key);
    let (_tmp, dir) = ca_dir();
    let reason = import_err(
        &dir,
        &ImportSource {
            root_pem: ext.root_pem.clone(),
            intermediate_pem: leaf_pem,
            intermediate_key_pem: key.serialize_pem(),
        },
    );
    assert!(reason.contains("CA certificates"), "{reason}");

    // A non-CA "root" is refused the same way.
    let (int_pem, int_key) = ext.intermediate();
    let not_root_key = KeyPair::generate().expect("key");
    let not_root = external_ca_params("leaf posing as root", false)
        .self_signed(&not_root_key)
        .expect("self-signed")
        .pem();
    let reason = import_err(
        &dir,
        &ImportSource {
            root_pem: not_root,
            intermediate_pem: int_pem,
            intermediate_key_pem: int_key.serialize_pem(),
        },
    );
    assert!(reason.contains("CA certificates"), "{reason}");
}

#[test]
fn import_of_an_expired_or_future_intermediate_writes_nothing() {
    let ext = external_root("Acme Root CA");
    let key = KeyPair::generate().expect("key");
    let mut params = external_ca_params("expired intermediate", true);
    params.not_before = now() - time::Duration::days(30);
    params.not_after = now() - time::Duration::days(1);
    let expired = ext.sign(&params, &key);
    let (_tmp, dir) = ca_dir();
    let reason = import_err(
        &dir,
        &ImportSource {
            root_pem: ext.root_pem.clone(),
            intermediate_pem: expired,
            intermediate_key_pem: key.serialize_pem(),
        },
    );
    assert!(reason.contains("expired"), "{reason}");

    params.not_before = now() + time::Duration::days(1);
    params.not_after = now() + time::Duration::days(30);
    let future = ext.sign(&params, &key);
    let reason = import_err(
        &dir,
        &ImportSource {
            root_pem: ext.root_pem.clone(),
            intermediate_pem: future,
            intermediate_key_pem: key.serialize_pem(),
        },
    );
    assert!(reason.contains("not valid yet"), "{reason}");
}

#[test]
fn import_of_unparsable_input_writes_nothing() {
    let ext = external_root("Acme Root CA");
    let (int_pem, int_key) = ext.intermediate();
    let (_tmp, dir) = ca_dir();
    let good = ImportSource {
        root_pem: ext.root_pem.clone(),
        intermediate_pem: int_pem.clone(),
        intermediate_key_pem: int_key.serialize_pem(),
    };

    let mut src = good.clone();
    src.intermediate_key_pem = "not a key".into();
    let reason = import_err(&dir, &src);
    assert!(reason.contains("PKCS#8"), "{reason}");

    let mut src = good.clone();
    src.root_pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into();
    import_err(&dir, &src);

    let mut src = good.clone();
    src.intermediate_pem = String::new();
    let reason = import_err(&dir, &src);
    assert!(reason.starts_with("intermediate:"), "{reason}");

    // Root and intermediate swapped: the "intermediate" (the root) is not signed by
    // the "root" (the intermediate).
    let mut src = good.clone();
    src.root_pem = int_pem;
    src.intermediate_pem = ext.root_pem.clone();
    import_err(&dir, &src);

    // Untouched by all of the above, the good source still imports.
    dir.import(&td(TD), &SealKey::generate(), &good, now())
        .expect("import");
}
