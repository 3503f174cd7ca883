//! Policy modules compiled outside the agent (agent/src/policy/precompile.rs): the
//! `wardmesh-agent precompile-policy` command an operator (or the agent itself) runs, and
//! the real agent binary activating a local bundle without ever holding the compiler's
//! memory.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;
use wardmesh_policy::{SignatureAlgorithm, SigningKey, build_bundle, sign_bundle};
use wardmesh_tests::TestMesh;
use wardmesh_tests::netns::workspace_bin;

use super::{KEY_ID, clinic_dir};
use crate::dataplane::B;

/// A signed clinic bundle and its public key, in `dir`.
fn signed_bundle(dir: &Path) -> (PathBuf, PathBuf) {
    let key = SigningKey::generate(SignatureAlgorithm::EdDsa, KEY_ID).unwrap();
    let pub_file = dir.join("policy.pub.pem");
    std::fs::write(&pub_file, key.verifying_key().to_spki_pem()).unwrap();
    let built = build_bundle(&clinic_dir(), "precompile-test").unwrap();
    let bundle = dir.join("clinic.tar.gz");
    std::fs::write(&bundle, sign_bundle(&built, &key).unwrap()).unwrap();
    (bundle, pub_file)
}

fn cache_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

async fn precompile(bundle: &Path, cache: &Path, pub_file: &Path) -> std::process::Output {
    Command::new(workspace_bin("wardmesh-agent"))
        .arg("precompile-policy")
        .arg("--bundle")
        .arg(bundle)
        .arg("--cache-dir")
        .arg(cache)
        .arg("--public-key")
        .arg(format!("{KEY_ID}={}", pub_file.display()))
        .output()
        .await
        .unwrap()
}

#[tokio::test]
async fn precompile_policy_fills_the_cache_only_for_a_verified_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let (bundle, pub_file) = signed_bundle(dir.path());
    let cache = dir.path().join("cache");

    // Tampered (one byte of the gzip stream flipped): refused, nothing cached.
    let mut bytes = std::fs::read(&bundle).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    let tampered = dir.path().join("tampered.tar.gz");
    std::fs::write(&tampered, &bytes).unwrap();
    let out = precompile(&tampered, &cache, &pub_file).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a tampered bundle compiled: {stderr}"
    );
    assert!(
        stderr.contains("bundle") && (stderr.contains("signature") || stderr.contains("gzip")),
        "{stderr}"
    );
    assert!(
        cache_entries(&cache).is_empty(),
        "{:?}",
        cache_entries(&cache)
    );

    // Signed by another key: refused, nothing cached.
    let other = SigningKey::generate(SignatureAlgorithm::EdDsa, KEY_ID).unwrap();
    let other_pub = dir.path().join("other.pub.pem");
    std::fs::write(&other_pub, other.verifying_key().to_spki_pem()).unwrap();
    let out = precompile(&bundle, &cache, &other_pub).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("signature"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(cache_entries(&cache).is_empty());

    // The good bundle: one native module in the cache; a second run maps it (no change).
    let out = precompile(&bundle, &cache, &pub_file).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let entries = cache_entries(&cache);
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(entries[0].ends_with(".cwasm"), "{entries:?}");
    let out = precompile(&bundle, &cache, &pub_file).await;
    assert!(out.status.success());
    assert_eq!(cache_entries(&cache), entries);

    // Without a key it does not start.
    let out = Command::new(workspace_bin("wardmesh-agent"))
        .arg("precompile-policy")
        .arg("--bundle")
        .arg(&bundle)
        .arg("--cache-dir")
        .arg(&cache)
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--public-key"));
}

/// Peak resident memory of `pid` in kB (VmHWM).
fn vm_hwm_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The agent compiles a local bundle's module in a child process: the module lands in
/// the cache and the agent's own peak memory stays far below a compile's (~90 MB of
/// compiler heap on top of the agent).
#[tokio::test]
async fn the_agent_never_holds_the_compilers_memory() {
    let mesh = TestMesh::new();
    let cp = mesh.start().await;
    let home = mesh.path();
    let (bundle, pub_file) = signed_bundle(&home);
    let cache = home.join("module-cache");
    let config = home.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[policy]\nbundle = {:?}\nmode = \"enforce\"\ncache_dir = {:?}\n\n\
             [[policy.public_keys]]\nkey_id = \"{KEY_ID}\"\nfile = {:?}\n",
            bundle.display().to_string(),
            cache.display().to_string(),
            pub_file.display().to_string()
        ),
    )
    .unwrap();
    let trust = home.join("trust.pem");
    std::fs::write(&trust, cp.bundle_pem()).unwrap();
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let log = home.join("agent.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let mut child = Command::new(workspace_bin("wardmesh-agent"))
        .args(["run", "--control-plane", &cp.url])
        .arg("--trust-bundle")
        .arg(&trust)
        .arg("--config")
        .arg(&config)
        .args(["--admin-addr", &admin.to_string()])
        .env("WARDMESH_JOIN_TOKEN", cp.join_token(B).await)
        .env("RUST_LOG", "info,wardmesh_agent::policy=debug")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let revision = loop {
        let dump = reqwest::get(format!("http://{admin}/config_dump")).await;
        if let Ok(r) = dump
            && let Ok(v) = r.json::<serde_json::Value>().await
            && let Some(rev) = v["policy"]["revision"].as_str()
        {
            break rev.to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent did not activate the bundle; see {}",
            log.display()
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "agent exited; see {}",
            log.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(revision, "precompile-test");
    let entries = cache_entries(&cache);
    assert_eq!(entries.len(), 1, "{entries:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("policy module compiled by a child process"),
        "{text}"
    );
    let hwm_mb = vm_hwm_kb(pid) / 1024;
    eprintln!("agent peak RSS after activating the policy: {hwm_mb} MB");
    assert!(
        hwm_mb < 60,
        "agent peak RSS {hwm_mb} MB: the compile ran in the agent? see {}",
        log.display()
    );
    child.kill().await.unwrap();
}
