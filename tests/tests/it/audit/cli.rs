//! `wardctl audit` as an operator runs it: the real binary against a real control plane.

use std::process::{Command, Output};

use wardmesh_proto::audit::AuditEntry;
use wardmesh_tests::netns::workspace_bin;

use super::{Backend, Fixture};

fn wardctl(f: &Fixture, args: &[&str]) -> Output {
    Command::new(workspace_bin("wardctl"))
        .arg("--home")
        .arg(f.mesh.path())
        .args(["--control-plane", &f.cp.url])
        .args(args)
        .env_remove("WARDMESH_TOKEN")
        .env_remove("WARDMESH_TRUST_BUNDLE")
        .output()
        .unwrap()
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wardctl_audit_log_and_verify() {
    let f = Fixture::start(Backend::Sqlite, "wardctl_audit_log_and_verify")
        .await
        .unwrap();
    f.populate().await;

    // First use pins the key; the log verifies.
    let pinned = f.mesh.path().join("audit-key.pub");
    assert!(!pinned.exists());
    let o = wardctl(&f, &["audit", "verify"]);
    let (out, err) = text(&o);
    assert!(o.status.success(), "{out}\n{err}");
    assert!(out.starts_with("audit log OK: "), "{out}");
    assert!(err.contains("pinned audit key"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&pinned).unwrap(),
        std::fs::read_to_string(f.mesh.path().join("audit-signing.pub")).unwrap()
    );

    // The log, newest entries, as JSON and as a table; filters by kind.
    let o = wardctl(&f, &["audit", "log", "--last", "3", "-o", "json"]);
    let rows: Vec<AuditEntry> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rows.len(), 3);
    assert!(
        rows.windows(2).all(|w| w[0].seq + 1 == w[1].seq),
        "{rows:?}"
    );
    let o = wardctl(
        &f,
        &[
            "audit",
            "log",
            "--kind",
            "operator.join_token.*",
            "--since",
            "1h",
        ],
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "header + 4 join tokens: {out}");
    assert!(lines[0].starts_with("SEQ  AT"), "{out}");
    assert!(
        lines[1..]
            .iter()
            .all(|l| l.contains("operator.join_token.created")),
        "{out}"
    );
    let o = wardctl(&f, &["audit", "log", "--since", "last tuesday"]);
    assert!(!o.status.success());
    assert!(text(&o).1.contains("RFC 3339"), "{:?}", text(&o));
    // The legacy command keeps working.
    let o = wardctl(&f, &["identity", "events", "--limit", "2"]);
    assert!(o.status.success(), "{:?}", text(&o));

    // Edited content: non-zero exit, first bad entry and kind named.
    f.tamper(r#"UPDATE events SET detail = '{"ttl_seconds":1}' WHERE id = 6"#)
        .await;
    let o = wardctl(&f, &["audit", "verify"]);
    let (out, err) = text(&o);
    assert!(!o.status.success(), "{out}");
    assert!(out.contains("hash mismatch at seq 6"), "{out}");
    assert!(out.contains("first bad entry: seq 6"), "{out}");
    assert!(err.contains("audit log verification failed"), "{err}");
    let o = wardctl(&f, &["audit", "verify", "-o", "json"]);
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["ok"], false);
    assert_eq!(
        report["damage"],
        serde_json::json!({"kind": "hash_mismatch", "seq": 6})
    );

    // Another key than the one that signed: every checkpoint is refused.
    let other = wardmesh_control_plane::audit::AuditSigner::generate().unwrap();
    let other_file = f.mesh.path().join("other.pub");
    std::fs::write(&other_file, other.public().to_text()).unwrap();
    f.tamper(r#"UPDATE events SET detail = '{"ttl_seconds":600}' WHERE id = 6"#)
        .await;
    let o = wardctl(&f, &["audit", "verify"]);
    assert!(o.status.success(), "restored: {:?}", text(&o));
    let o = wardctl(
        &f,
        &["audit", "verify", "--key", other_file.to_str().unwrap()],
    );
    let (out, _) = text(&o);
    assert!(!o.status.success());
    assert!(out.contains("not the pinned key"), "{out}");
    f.stop().await;
}
