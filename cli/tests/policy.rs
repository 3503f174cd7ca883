//! `wardctl policy` as a policy author runs it: the real binary on the clinic library in
//! policies/clinic — test, build, keygen, sign, eval — and the mistakes it must catch.
//! Compiled modules go to one cache directory shared by these tests, so only the first
//! eval of a bundle pays for Cranelift.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

fn clinic() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/clinic")
}

fn cache_dir() -> String {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("wardctl-policy-cache")
        .display()
        .to_string()
}

fn wardctl(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wardctl"))
        .args(args)
        .env("WARDMESH_HOME", home)
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn ok(home: &Path, args: &[&str]) -> (String, String) {
    let o = wardctl(home, args);
    let t = text(&o);
    assert!(
        o.status.success(),
        "wardctl {args:?} failed:\n{}\n{}",
        t.0,
        t.1
    );
    t
}

fn fails(home: &Path, args: &[&str]) -> String {
    let o = wardctl(home, args);
    let (out, err) = text(&o);
    assert!(
        !o.status.success(),
        "wardctl {args:?} succeeded:\n{out}\n{err}"
    );
    err
}

fn input(roles: &[&str], mfa: bool, path: &str, purpose: &str) -> Value {
    json!({
        "source": {"spiffe_id": "spiffe://wardmesh.local/ns/clinic/sa/frontend",
                   "namespace": "clinic", "service_account": "frontend"},
        "destination": {"spiffe_id": "spiffe://wardmesh.local/ns/clinic/sa/records", "port": 8080},
        "request": {"method": "GET", "path": path, "route": null,
                    "headers": {"x-purpose-of-use": purpose}, "protocol": "http1"},
        "user": {"sub": "dr-ada", "roles": roles, "amr": if mfa { json!(["pwd", "otp"]) } else { json!(["pwd"]) },
                 "mfa": mfa, "iss": "https://idp.clinic.example"},
        "context": {"purpose_of_use": purpose, "break_glass": null, "consent": null,
                    "time": "2025-06-01T12:00:00Z", "risk": {"flagged": false}},
    })
}

fn write(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p.display().to_string()
}

#[test]
fn clinic_tests_pass_and_a_failing_test_fails_the_run() {
    let home = tempfile::tempdir().unwrap();
    let dir = clinic().display().to_string();
    let (out, _) = ok(home.path(), &["policy", "test", &dir]);
    assert!(
        out.contains(
            "data.wardmesh.authz_test.test_clinician_with_mfa_reads_notes_for_treatment: PASS"
        ),
        "{out}"
    );
    assert!(!out.contains("FAIL"), "{out}");
    let summary = out.lines().rfind(|l| l.starts_with("PASS: ")).unwrap();
    let (n, total) = summary["PASS: ".len()..].split_once('/').unwrap();
    assert_eq!(n, total, "{out}");
    assert!(n.parse::<usize>().unwrap() >= 5, "{out}");

    // A copy of the library with one wrong expectation: FAIL with its location, exit 1.
    let copy = tempfile::tempdir().unwrap();
    for f in ["authz.rego", "authz_test.rego", "data.json"] {
        std::fs::copy(clinic().join(f), copy.path().join(f)).unwrap();
    }
    write(
        copy.path(),
        "wrong_test.rego",
        "package wardmesh.wrong_test\n\nimport data.wardmesh.authz\n\n\
         test_billing_reads_notes if {\n\tauthz.decision.allow with input as {}\n}\n",
    );
    let o = wardctl(
        home.path(),
        &["policy", "test", &copy.path().display().to_string()],
    );
    let (out, err) = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.contains("data.wardmesh.wrong_test.test_billing_reads_notes: FAIL (at ")
            && out.contains("wrong_test.rego:5)"),
        "{out}"
    );
    assert!(out.contains("FAIL: 1/"), "{out}");
    assert!(
        err.contains("1 of") && err.contains("policy tests failed"),
        "{err}"
    );

    // JSON for CI.
    let (out, _) = ok(
        home.path(),
        &["policy", "test", &dir, "-o", "json", "--run", "billing"],
    );
    let rows: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert!(!rows.is_empty());
    assert!(
        rows.iter()
            .all(|r| r["outcome"] == "pass" && r["rule"].as_str().unwrap().contains("billing"))
    );
}

#[test]
fn build_sign_and_eval_the_clinic_policy() {
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let w = |name: &str| work.path().join(name).display().to_string();
    let (bundle, key, public) = (
        w("clinic.tar.gz"),
        w("clinic-2025.pem"),
        w("clinic-2025.pub.pem"),
    );
    let cache = cache_dir();

    ok(
        home.path(),
        &[
            "policy",
            "build",
            &clinic().display().to_string(),
            "--out",
            &bundle,
        ],
    );
    // Same sources, same revision: the default revision is a content hash.
    let again = w("again.tar.gz");
    ok(
        home.path(),
        &[
            "policy",
            "build",
            &clinic().display().to_string(),
            "--out",
            &again,
        ],
    );
    let err = fails(
        home.path(),
        &[
            "policy",
            "build",
            &clinic().display().to_string(),
            "--out",
            &again,
        ],
    );
    assert!(err.contains("already exists"), "{err}");

    let (out, _) = ok(
        home.path(),
        &["policy", "keygen", "--alg", "ed25519", "--out", &key],
    );
    assert!(out.contains(&public), "{out}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "private key mode");
    }
    assert!(
        std::fs::read_to_string(&public)
            .unwrap()
            .contains("BEGIN PUBLIC KEY")
    );
    let err = fails(home.path(), &["policy", "keygen", "--out", &key]);
    assert!(err.contains("already exists"), "{err}");

    let (_, err) = ok(home.path(), &["policy", "sign", &bundle, "--key", &key]);
    assert!(
        err.contains("clinic-2025") && err.contains("EdDSA"),
        "{err}"
    );

    let allow = write(
        work.path(),
        "allow.json",
        &input(&["clinician"], true, "/patients/p-1001/notes", "TREAT").to_string(),
    );
    let deny = write(
        work.path(),
        "deny.json",
        &input(&["billing"], false, "/patients/p-1001/notes", "TREAT").to_string(),
    );
    let (out, _) = ok(
        home.path(),
        &[
            "policy",
            "eval",
            &bundle,
            "--input",
            &allow,
            "--public-key",
            &public,
            "--cache-dir",
            &cache,
        ],
    );
    assert!(out.contains("DECISION     allow"), "{out}");
    assert!(out.contains("clinician-notes-treat"), "{out}");
    assert!(out.contains("SIGNED BY    clinic-2025"), "{out}");
    let revision = out
        .lines()
        .find(|l| l.starts_with("REVISION"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned();
    assert!(revision.starts_with("sha256:"), "{out}");

    let (out, _) = ok(
        home.path(),
        &[
            "policy",
            "eval",
            &bundle,
            "--input",
            &deny,
            "--public-key",
            &public,
            "--cache-dir",
            &cache,
            "-o",
            "json",
        ],
    );
    let d: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(d["allow"], false, "{out}");
    assert_eq!(d["rule"], "default-deny", "{out}");
    assert_eq!(d["policy_revision"], revision.as_str());
    assert!(
        std::fs::read_dir(&cache).unwrap().any(|e| e
            .unwrap()
            .path()
            .extension()
            .is_some_and(|x| x == "cwasm")),
        "the compiled module is cached"
    );

    // The identical rebuild (content-hash revision) evaluates to the same revision.
    let (out, _) = ok(
        home.path(),
        &[
            "policy",
            "eval",
            &again,
            "--input",
            &deny,
            "--unsigned",
            "--cache-dir",
            &cache,
            "-o",
            "json",
        ],
    );
    let d: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(d["policy_revision"], revision.as_str());

    // ES256 keys work the same way; an explicit --key-id must match on both sides.
    let ec_key = w("ec.pem");
    ok(
        home.path(),
        &["policy", "keygen", "--alg", "es256", "--out", &ec_key],
    );
    let ec_bundle = w("ec.tar.gz");
    ok(
        home.path(),
        &[
            "policy",
            "sign",
            &bundle,
            "--key",
            &ec_key,
            "--key-id",
            "clinic-ec",
            "--out",
            &ec_bundle,
        ],
    );
    let (out, _) = ok(
        home.path(),
        &[
            "policy",
            "eval",
            &ec_bundle,
            "--input",
            &allow,
            "--public-key",
            &w("ec.pub.pem"),
            "--key-id",
            "clinic-ec",
            "--cache-dir",
            &cache,
            "-o",
            "json",
        ],
    );
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["allow"],
        true,
        "{out}"
    );
    let err = fails(
        home.path(),
        &[
            "policy",
            "eval",
            &ec_bundle,
            "--input",
            &allow,
            "--public-key",
            &w("ec.pub.pem"),
            "--cache-dir",
            &cache,
        ],
    );
    assert!(
        err.contains("not a configured verification key") && err.contains("--key-id"),
        "{err}"
    );
}

#[test]
fn build_errors_name_the_file_and_line() {
    let home = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "authz.rego",
        "package wardmesh.authz\n\ndefault decision := {\"allow\": false, \"rule\": \"default-deny\"}\n\ndecision := {\"allow\": true if {\n",
    );
    let out = dir.path().join("b.tar.gz").display().to_string();
    let err = fails(
        home.path(),
        &[
            "policy",
            "build",
            &dir.path().display().to_string(),
            "--out",
            &out,
        ],
    );
    let want = format!("{}:5:", dir.path().join("authz.rego").display());
    assert!(err.contains(&want), "wanted {want} in:\n{err}");
    assert!(!Path::new(&out).exists(), "no bundle is written");

    // A test file is checked too, with its own location.
    write(
        dir.path(),
        "authz.rego",
        "package wardmesh.authz\n\ndefault decision := {\"allow\": false, \"rule\": \"default-deny\"}\n",
    );
    write(
        dir.path(),
        "authz_test.rego",
        "package wardmesh.authz_test\n\ntest_x if {\n\t1 ==\n}\n",
    );
    let err = fails(
        home.path(),
        &[
            "policy",
            "build",
            &dir.path().display().to_string(),
            "--out",
            &out,
        ],
    );
    assert!(err.contains("authz_test.rego:"), "{err}");
}

#[test]
fn eval_refuses_unsigned_tampered_bundles_and_bad_input() {
    let home = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let w = |name: &str| work.path().join(name).display().to_string();
    let cache = cache_dir();
    let (bundle, key, public) = (w("clinic.tar.gz"), w("k.pem"), w("k.pub.pem"));
    ok(
        home.path(),
        &[
            "policy",
            "build",
            &clinic().display().to_string(),
            "--out",
            &bundle,
            "--revision",
            "v-test",
        ],
    );
    ok(home.path(), &["policy", "keygen", "--out", &key]);
    let allow = write(
        work.path(),
        "allow.json",
        &input(&["clinician"], true, "/patients/p-1001/notes", "TREAT").to_string(),
    );

    // Unsigned: refused with a key, and neither flag is a usage error.
    let err = fails(
        home.path(),
        &[
            "policy",
            "eval",
            &bundle,
            "--input",
            &allow,
            "--public-key",
            &public,
        ],
    );
    assert!(
        err.contains("not signed") && err.contains("--unsigned"),
        "{err}"
    );
    let err = fails(home.path(), &["policy", "eval", &bundle, "--input", &allow]);
    assert!(
        err.contains("--public-key") && err.contains("--unsigned"),
        "{err}"
    );
    // --unsigned evaluates, loudly.
    let o = wardctl(
        home.path(),
        &[
            "policy",
            "eval",
            &bundle,
            "--input",
            &allow,
            "--unsigned",
            "--cache-dir",
            &cache,
        ],
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(out.contains("allow") && out.contains("v-test"), "{out}");
    assert!(
        err.contains("WARNING") && err.contains("NOT verified"),
        "{err}"
    );

    // Tampered after signing: data.json edited inside the signed archive.
    let signed = w("signed.tar.gz");
    ok(
        home.path(),
        &["policy", "sign", &bundle, "--key", &key, "--out", &signed],
    );
    let mut files =
        wardmesh_policy::BundleFiles::read_tar_gz(&std::fs::read(&signed).unwrap()).unwrap();
    files.insert("data.json", br#"{"consent": {}}"#.to_vec());
    let tampered = w("tampered.tar.gz");
    std::fs::write(&tampered, files.to_tar_gz().unwrap()).unwrap();
    let err = fails(
        home.path(),
        &[
            "policy",
            "eval",
            &tampered,
            "--input",
            &allow,
            "--public-key",
            &public,
        ],
    );
    assert!(
        err.contains("data.json") && err.contains("modified after signing"),
        "{err}"
    );
    // Signed by someone else's key.
    ok(home.path(), &["policy", "keygen", "--out", &w("other.pem")]);
    let err = fails(
        home.path(),
        &[
            "policy",
            "eval",
            &signed,
            "--input",
            &allow,
            "--public-key",
            &w("other.pub.pem"),
            "--key-id",
            "k",
        ],
    );
    assert!(err.contains("does not verify"), "{err}");

    // Malformed input: the file, line and column.
    let bad = write(
        work.path(),
        "bad.json",
        "{\n  \"source\": {\"spiffe_id\": \"x\",}\n}\n",
    );
    let err = fails(
        home.path(),
        &[
            "policy",
            "eval",
            &signed,
            "--input",
            &bad,
            "--public-key",
            &public,
        ],
    );
    assert!(
        err.contains(&format!("{bad}:2:")) && err.contains("not valid JSON"),
        "{err}"
    );
    let array = write(work.path(), "array.json", "[1, 2]");
    let err = fails(
        home.path(),
        &[
            "policy",
            "eval",
            &signed,
            "--input",
            &array,
            "--public-key",
            &public,
        ],
    );
    assert!(err.contains("must be a JSON object"), "{err}");
    let err = fails(
        home.path(),
        &[
            "policy",
            "eval",
            &signed,
            "--input",
            &w("missing.json"),
            "--public-key",
            &public,
        ],
    );
    assert!(err.contains("missing.json"), "{err}");
}

#[test]
fn every_policy_command_has_help_with_an_example() {
    let home = tempfile::tempdir().unwrap();
    for cmd in ["build", "test", "eval", "sign", "keygen", ""] {
        let args: Vec<&str> = ["policy", cmd, "--help"]
            .into_iter()
            .filter(|a| !a.is_empty())
            .collect();
        let (out, _) = ok(home.path(), &args);
        assert!(out.contains("Example"), "{args:?}:\n{out}");
    }
}
