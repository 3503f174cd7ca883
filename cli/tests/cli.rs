//! `wardctl` as an operator runs it: the real binary, real files, real sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

fn wardctl(home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wardctl"))
        .args(args)
        .env("WARDMESH_HOME", home)
        .env_remove("WARDMESH_CA_SEAL_KEY")
        .env_remove("WARDMESH_TOKEN")
        .env_remove("WARDMESH_CONTROL_PLANE")
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn up_once(home: &Path) -> Output {
    wardctl(
        home,
        &[
            "up",
            "--once",
            "--listen",
            "127.0.0.1:0",
            "--admin-port",
            "0",
        ],
    )
}

#[test]
fn every_command_has_help_with_an_example() {
    let home = tempfile::tempdir().unwrap();
    let commands: &[&[&str]] = &[
        &[],
        &["up"],
        &["ca", "init"],
        &["ca", "status"],
        &["ca", "rotate"],
        &["token", "create"],
        &["identity", "quarantine"],
        &["identity", "unquarantine"],
        &["identity", "quarantined"],
        &["identity", "issuances"],
        &["identity", "events"],
        &["audit", "log"],
        &["audit", "verify"],
        &["agents"],
        &["install"],
        &["inject"],
        &["check"],
    ];
    for cmd in commands {
        let mut args = cmd.to_vec();
        args.push("--help");
        let o = wardctl(home.path(), &args);
        let (out, _) = text(&o);
        assert!(o.status.success(), "{cmd:?} --help failed");
        assert!(
            out.contains("Example"),
            "{cmd:?} --help has no example:\n{out}"
        );
    }
}

#[test]
fn up_once_runs_the_demo_mesh_with_real_traffic() {
    let home = tempfile::tempdir().unwrap();
    let o = up_once(home.path());
    let (out, err) = text(&o);
    assert!(o.status.success(), "wardctl up failed:\n{out}\n{err}");
    assert!(
        out.contains("spiffe://wardmesh.local/ns/clinic/sa/frontend"),
        "{out}"
    );
    assert!(
        out.contains("spiffe://wardmesh.local/ns/clinic/sa/notes-api"),
        "{out}"
    );
    assert!(out.contains("CERT EXPIRES"), "{out}");
    // Real traffic crossed the agents: the allowed caller got every answer, the other
    // caller was denied by notes-api's agent with a named rule and policy revision.
    let tally = |caller: &str| -> Vec<String> {
        out.lines()
            .rfind(|l| l.starts_with(caller) && !l.contains("->"))
            .unwrap_or_else(|| panic!("no tally for {caller}:\n{out}"))
            .split_whitespace()
            .skip(1)
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(tally("clinic/frontend"), ["5", "0", "0"], "{out}");
    assert_eq!(tally("billing/api"), ["0", "5", "0"], "{out}");
    assert!(
        out.contains("403 denied (rule default-deny, policy clinic-"),
        "{out}"
    );
    // The store, the sealed CA and the operator token persist in the home directory.
    assert!(home.path().join("wardmesh.db").exists());
    assert!(home.path().join("admin.token").exists());
    let key_files: Vec<_> = std::fs::read_dir(home.path().join("ca/authorities"))
        .unwrap()
        .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
        .map(|f| f.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".sealed"))
        .collect();
    assert_eq!(key_files.len(), 2, "root and intermediate keys are sealed");
    for f in key_files {
        let body = std::fs::read_to_string(&f).unwrap();
        assert!(
            !body.contains("PRIVATE KEY"),
            "{} holds a plaintext key",
            f.display()
        );
    }
    // A second run reuses the CA and works again.
    let again = up_once(home.path());
    assert!(again.status.success(), "{:?}", text(&again));
}

#[test]
fn ca_init_refuses_to_overwrite() {
    let home = tempfile::tempdir().unwrap();
    assert!(wardctl(home.path(), &["ca", "init"]).status.success());
    let o = wardctl(home.path(), &["ca", "init"]);
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(err.contains("already holds a CA"), "{err}");
    let status = wardctl(home.path(), &["ca", "status", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["state"]["trust_domain"], "wardmesh.local");
    assert_eq!(v["authorities"].as_array().unwrap().len(), 1);
}

#[test]
fn broken_or_wrong_sealing_key_is_a_clear_error() {
    let home = tempfile::tempdir().unwrap();
    assert!(wardctl(home.path(), &["ca", "init"]).status.success());
    let key = home.path().join("seal.key");
    let good = std::fs::read_to_string(&key).unwrap();

    std::fs::write(&key, "not hex at all\n").unwrap();
    let (_, err) = text(&up_once(home.path()));
    assert!(
        err.contains("sealing key") && err.contains("invalid"),
        "{err}"
    );

    std::fs::write(&key, "ab".repeat(32)).unwrap();
    let (_, err) = text(&up_once(home.path()));
    assert!(err.contains("wrong sealing key"), "{err}");

    // A corrupted sealed key file names the file.
    std::fs::write(&key, good).unwrap();
    let sealed = std::fs::read_dir(home.path().join("ca/authorities"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("intermediate.key.sealed");
    std::fs::write(&sealed, "{\"format\": \"garbage\"").unwrap();
    let (_, err) = text(&up_once(home.path()));
    assert!(
        err.contains("intermediate.key.sealed") && err.contains("corrupted"),
        "{err}"
    );
}

#[test]
fn operator_commands_without_a_control_plane_say_what_to_do() {
    let home = tempfile::tempdir().unwrap();
    assert!(wardctl(home.path(), &["ca", "init"]).status.success());
    let o = wardctl(
        home.path(),
        &["--control-plane", "https://127.0.0.1:1", "agents"],
    );
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(err.contains("cannot reach the control plane"), "{err}");
}

/// An external root made with openssl, imported with `ca init --from`: the agents' leaves
/// chain to it (each agent verifies its chain against the bundle before using it), and
/// the root's key never enters wardmesh.
#[test]
fn external_root_import_runs_the_mesh() {
    if Command::new("openssl").arg("version").output().is_err() {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "openssl is required under CI"
        );
        eprintln!("SKIPPING external_root_import_runs_the_mesh: openssl missing");
        return;
    }
    let ext = tempfile::tempdir().unwrap();
    let sh = |script: &str| {
        let o = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(ext.path())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    sh("openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out root.key");
    sh(
        "openssl req -x509 -new -key root.key -subj '/O=Example Health/CN=Example Root' -days 3650 \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign -out root.pem",
    );
    sh("openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out intermediate.key");
    sh(
        "openssl req -new -key intermediate.key -subj '/O=Example Health/CN=wardmesh intermediate' -out int.csr",
    );
    sh(
        "printf 'basicConstraints=critical,CA:TRUE,pathlen:0\\nkeyUsage=critical,keyCertSign,cRLSign,digitalSignature\\n' > ext.cnf",
    );
    sh(
        "openssl x509 -req -in int.csr -CA root.pem -CAkey root.key -CAcreateserial -days 365 -extfile ext.cnf -out intermediate.pem",
    );
    std::fs::remove_file(ext.path().join("root.key")).unwrap();

    let home = tempfile::tempdir().unwrap();
    let from = ext.path().to_str().unwrap();
    let o = wardctl(home.path(), &["ca", "init", "--from", from]);
    assert!(o.status.success(), "{:?}", text(&o));
    let (status, _) = text(&wardctl(home.path(), &["ca", "status"]));
    assert!(status.contains("Example Root"), "{status}");
    let o = up_once(home.path());
    assert!(o.status.success(), "{:?}", text(&o));
}
