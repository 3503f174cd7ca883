//! Bundles that must be refused, each with its own clear error, and Rego that must not
//! build.

use serde_json::json;
use wardmesh_policy::rego::RegoError;
use wardmesh_policy::{
    BuildError, BuildOptions, BundleFiles, LoadError, SignatureAlgorithm, SigningKey, VerifyError,
    VerifyingKey, build_bundle, build_bundle_with, sign_bundle, verify_bundle,
};

use super::support::{clinic_dir, policy_dir, runtime, signing_key};

fn signed_clinic() -> Vec<u8> {
    sign_bundle(&build_bundle(&clinic_dir(), "v1").unwrap(), signing_key()).unwrap()
}

fn keys() -> Vec<VerifyingKey> {
    vec![signing_key().verifying_key()]
}

fn edit(bundle: &[u8], f: impl FnOnce(&mut BundleFiles)) -> Vec<u8> {
    let mut files = BundleFiles::read_tar_gz(bundle).unwrap();
    f(&mut files);
    files.to_tar_gz().unwrap()
}

#[test]
fn a_signed_bundle_verifies_and_names_its_signer() {
    let bundle = signed_clinic();
    let v = verify_bundle(&bundle, &keys()).unwrap();
    assert_eq!(v.revision(), "v1");
    assert_eq!(v.signer(), Some("clinic-2025"));
    assert_eq!(v.digest().len(), 64);
    assert!(v.wasm().starts_with(b"\0asm"));
    // The signature lists every other file, OPA style.
    let files = BundleFiles::read_tar_gz(&bundle).unwrap();
    let sigs: serde_json::Value =
        serde_json::from_slice(files.get(".signatures.json").unwrap()).unwrap();
    let jwt = sigs["signatures"][0].as_str().unwrap();
    let payload = jwt.split('.').nth(1).unwrap();
    use base64::Engine as _;
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    let names: Vec<&str> = claims["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [".manifest", "authz.rego", "data.json", "policy.wasm"]
    );
    assert!(
        claims["files"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["algorithm"] == "SHA-256")
    );
    assert_eq!(claims["keyid"], "clinic-2025");
}

#[test]
fn eddsa_keys_sign_and_round_trip_through_pem() {
    let key = SigningKey::generate(SignatureAlgorithm::EdDsa, "ed-1").unwrap();
    let reloaded = SigningKey::from_pkcs8_pem(&key.to_pkcs8_pem(), "ed-1").unwrap();
    let public = VerifyingKey::from_spki_pem(&key.verifying_key().to_spki_pem(), "ed-1").unwrap();
    assert_eq!(public, key.verifying_key());
    let bundle = sign_bundle(&build_bundle(&clinic_dir(), "v2").unwrap(), &reloaded).unwrap();
    assert_eq!(
        verify_bundle(&bundle, &[public]).unwrap().signer(),
        Some("ed-1")
    );
    let p256 = SigningKey::generate(SignatureAlgorithm::Es256, "ec-1").unwrap();
    let again = SigningKey::from_pkcs8_pem(&p256.to_pkcs8_pem(), "ec-1").unwrap();
    assert_eq!(again.verifying_key(), p256.verifying_key());
    assert!(VerifyingKey::from_spki_pem("nope", "x").is_err());
}

#[test]
fn unsigned_bundle_is_refused() {
    let err = verify_bundle(&build_bundle(&clinic_dir(), "v1").unwrap(), &keys()).unwrap_err();
    assert!(matches!(err, VerifyError::Unsigned), "{err}");
    assert!(err.to_string().contains("not signed"));
}

#[test]
fn tampered_files_are_refused_by_name() {
    let bundle = signed_clinic();
    let data = edit(&bundle, |f| {
        f.insert(
            "data.json",
            serde_json::to_vec(&json!({"consent": {}})).unwrap(),
        );
    });
    assert!(
        matches!(verify_bundle(&data, &keys()), Err(VerifyError::Tampered(n)) if n == "data.json")
    );
    let wasm = edit(&bundle, |f| {
        let mut w = f.get("policy.wasm").unwrap().to_vec();
        let last = w.len() - 1;
        w[last] ^= 1;
        f.insert("policy.wasm", w);
    });
    assert!(
        matches!(verify_bundle(&wasm, &keys()), Err(VerifyError::Tampered(n)) if n == "policy.wasm")
    );
    // Reformatting JSON is not tampering (OPA hashes structured files canonically).
    let pretty = edit(&bundle, |f| {
        let v: serde_json::Value = serde_json::from_slice(f.get("data.json").unwrap()).unwrap();
        f.insert("data.json", serde_json::to_vec_pretty(&v).unwrap());
    });
    verify_bundle(&pretty, &keys()).unwrap();
}

#[test]
fn extra_and_missing_files_are_refused() {
    let bundle = signed_clinic();
    let extra = edit(&bundle, |f| {
        f.insert("backdoor.rego", b"package x".to_vec())
    });
    assert!(
        matches!(verify_bundle(&extra, &keys()), Err(VerifyError::UnsignedFile(n)) if n == "backdoor.rego")
    );
    let missing = edit(&bundle, |f| {
        f.remove("authz.rego");
    });
    assert!(
        matches!(verify_bundle(&missing, &keys()), Err(VerifyError::MissingFile(n)) if n == "authz.rego")
    );
}

#[test]
fn unknown_key_bad_signature_and_wrong_algorithm_are_distinct() {
    let bundle = signed_clinic();
    let stranger = SigningKey::generate(SignatureAlgorithm::Es256, "someone-else").unwrap();
    let err = verify_bundle(&bundle, &[stranger.verifying_key()]).unwrap_err();
    assert!(
        matches!(&err, VerifyError::UnknownKey(k) if k == "clinic-2025"),
        "{err}"
    );

    // Same key id, different key: the signature does not verify.
    let impostor = SigningKey::generate(SignatureAlgorithm::Es256, "clinic-2025").unwrap();
    let err = verify_bundle(&bundle, &[impostor.verifying_key()]).unwrap_err();
    assert!(
        matches!(&err, VerifyError::BadSignature(k) if k == "clinic-2025"),
        "{err}"
    );

    // The configured key is Ed25519, the token says ES256.
    let ed = SigningKey::generate(SignatureAlgorithm::EdDsa, "clinic-2025").unwrap();
    let err = verify_bundle(&bundle, &[ed.verifying_key()]).unwrap_err();
    assert!(
        matches!(&err, VerifyError::AlgorithmMismatch { found, .. } if found == "ES256"),
        "{err}"
    );
}

#[test]
fn alg_none_and_garbage_signatures_are_refused() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let bundle = signed_clinic();
    let files = BundleFiles::read_tar_gz(&bundle).unwrap();
    let sigs: serde_json::Value =
        serde_json::from_slice(files.get(".signatures.json").unwrap()).unwrap();
    let jwt = sigs["signatures"][0].as_str().unwrap();
    let payload = jwt.split('.').nth(1).unwrap();
    let none = format!(
        "{}.{payload}.",
        b64.encode(br#"{"alg":"none","kid":"clinic-2025"}"#)
    );
    let forged = edit(&bundle, |f| {
        f.insert(
            ".signatures.json",
            serde_json::to_vec(&json!({"signatures": [none]})).unwrap(),
        );
    });
    assert!(
        matches!(verify_bundle(&forged, &keys()), Err(VerifyError::UnsupportedAlgorithm(a)) if a == "none")
    );
    let garbage = edit(&bundle, |f| {
        f.insert(".signatures.json", b"{\"signatures\": [\"x.y\"]}".to_vec())
    });
    assert!(matches!(
        verify_bundle(&garbage, &keys()),
        Err(VerifyError::MalformedSignatures(_))
    ));
    let two = edit(&bundle, |f| {
        f.insert(
            ".signatures.json",
            serde_json::to_vec(&json!({"signatures": [jwt, jwt]})).unwrap(),
        );
    });
    assert!(matches!(
        verify_bundle(&two, &keys()),
        Err(VerifyError::SignatureCount(2))
    ));
    assert!(matches!(
        verify_bundle(b"not a tarball", &keys()),
        Err(VerifyError::Bundle(_))
    ));
}

#[test]
fn rego_syntax_error_names_file_and_line() {
    let dir = policy_dir(&[
        (
            "ok.rego",
            "package wardmesh.authz\n\ndecision := {\"allow\": false, \"rule\": \"x\"}\n",
        ),
        (
            "lib/broken.rego",
            "package wardmesh.lib\n\nhelper if {\n    input.x ==\n}\n",
        ),
    ]);
    let err = build_bundle(dir.path(), "v1").unwrap_err();
    let BuildError::Rego(RegoError::Syntax { file, line, .. }) = &err else {
        panic!("expected a syntax error, got {err:?}");
    };
    assert_eq!(file, "lib/broken.rego");
    assert!((4..=5).contains(line), "{err}");
    assert!(err.to_string().starts_with("lib/broken.rego:"), "{err}");
}

#[test]
fn calls_to_functions_the_guest_lacks_fail_the_build() {
    for (call, name) in [
        ("time.now_ns() > 0", "time.now_ns"),
        ("starts_with(input.path, \"/a\")", "starts_with"),
    ] {
        let rego = format!(
            "package wardmesh.authz\n\nok(x) := x\n\ndecision := {{\"allow\": ok(true), \"rule\": \"r\"}} if {{\n    {call}\n}}\n"
        );
        let dir = policy_dir(&[("authz.rego", rego.as_str())]);
        let Err(err) = build_bundle(dir.path(), "v1") else {
            panic!("{call} should not build");
        };
        let BuildError::Rego(RegoError::Syntax {
            file,
            line,
            message,
            ..
        }) = &err
        else {
            panic!("expected a located error, got {err:?}");
        };
        assert_eq!((file.as_str(), *line), ("authz.rego", 6), "{err}");
        assert!(message.contains(name), "{err}");
    }
    // No decision rule at all: the entrypoint is missing at build time.
    let dir = policy_dir(&[("authz.rego", "package wardmesh.other\n\nallow := true\n")]);
    let Err(err) = build_bundle(dir.path(), "v1") else {
        panic!("a bundle without its entrypoint should not build");
    };
    assert!(
        matches!(err, BuildError::Rego(RegoError::Entrypoint { .. })),
        "{err}"
    );
}

#[test]
fn bundle_without_the_entrypoint_does_not_load() {
    let dir = policy_dir(&[(
        "other.rego",
        "package wardmesh.other\n\ndecision := {\"allow\": true, \"rule\": \"r\"}\n",
    )]);
    let mut options = BuildOptions::new("v1");
    options.entrypoints = vec!["wardmesh/other/decision".into()];
    let bundle = sign_bundle(
        &build_bundle_with(dir.path(), &options).unwrap(),
        signing_key(),
    )
    .unwrap();
    let verified = verify_bundle(&bundle, &keys()).unwrap();
    let err = runtime().load(&verified).unwrap_err();
    match &err {
        LoadError::MissingEntrypoint {
            entrypoint,
            available,
        } => {
            assert_eq!(entrypoint, "wardmesh/authz/decision");
            assert_eq!(available, &["wardmesh/other/decision"]);
        }
        other => panic!("expected MissingEntrypoint, got {other}"),
    }
}

#[test]
fn yaml_data_and_nested_data_files_are_mounted() {
    let dir = policy_dir(&[
        (
            "authz.rego",
            "package wardmesh.authz\n\ndecision := {\"allow\": data.flags.open, \"rule\": data.names.rule}\n",
        ),
        ("data.yaml", "flags:\n  open: true\n"),
        ("names/data.json", "{\"rule\": \"from-nested-data\"}"),
    ]);
    let bundle = sign_bundle(&build_bundle(dir.path(), "v1").unwrap(), signing_key()).unwrap();
    let engine = runtime()
        .load(&verify_bundle(&bundle, &keys()).unwrap())
        .unwrap();
    let d = engine.evaluate(&json!({}));
    assert!(d.allow);
    assert_eq!(d.rule, "from-nested-data");
}
