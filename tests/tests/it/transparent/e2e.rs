//! The whole transparent path with real processes: `curl` in namespace A calls the
//! backend in namespace B by its plain address, and the call crosses A's agent, mTLS on
//! the veth, and B's agent.
//!
//! Layout (every address is inside the two namespaces or their loopback):
//!
//! ```text
//!  namespace A (10.213.k.1)                       namespace B (10.213.k.2)
//!  control plane  10.213.k.1:7443  <-------------  agent B (uid 1337): control-plane calls
//!  agent A (uid 1337) 127.0.0.1:7140, :7143         agent B 0.0.0.0:7143, 127.0.0.1:7140
//!  curl (uid 0) -> 10.213.k.2:8080                  backend app 127.0.0.1:8080
//!    └ OUTPUT redirect -> agent A outbound ──mTLS──> PREROUTING redirect -> agent B inbound
//!                                                     └ 127.0.0.1:8080 (x-wardmesh-peer-id)
//! ```
//!
//! A excludes inbound port 7443 so B's agent reaches the control plane; both agents run
//! as the proxy UID, so their own connections are not redirected.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use time::OffsetDateTime;
use wardmesh_tests::TestMesh;
use wardmesh_tests::netns::{self, Netns, NetnsPair, NsChild, PROXY_UID};

use super::{agent_bin, init_iptables, listeners};

const CLIENT_ID: &str = "spiffe://wardmesh.local/ns/demo/sa/client";
const BACKEND_ID: &str = "spiffe://wardmesh.local/ns/demo/sa/backend";
const STARTUP: Duration = Duration::from_secs(45);

/// A directory the proxy UID can read (the test's temp dirs are root-only).
fn shared_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

fn write_readable(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644)).unwrap();
}

/// Polls `url` with curl inside `ns` until it answers 2xx; panics with `child`'s log if
/// the deadline passes or the child dies.
async fn wait_http_ok(ns: &Netns, url: &str, extra: &[&str], child: &mut NsChild) {
    let deadline = Instant::now() + STARTUP;
    loop {
        let out = ns
            .command("curl")
            .args(["-sf", "--noproxy", "*", "-m", "2", "-o", "/dev/null"])
            .args(extra)
            .arg(url)
            .timeout(Duration::from_secs(10))
            .output()
            .await;
        if out.out.status.success() {
            return;
        }
        assert!(
            child.is_running(),
            "process behind {url} exited:\n{}",
            child.log()
        );
        assert!(
            Instant::now() < deadline,
            "{url} not ready within {STARTUP:?}:\n{}",
            child.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A single-use join token for `id`, made with `wardctl` inside `ns`.
async fn join_token(ns: &Netns, home: &Path, cp_url: &str, id: &str) -> String {
    let out = ns
        .command(netns::workspace_bin("wardctl"))
        .arg("--home")
        .arg(home)
        .args([
            "--control-plane",
            cp_url,
            "-o",
            "json",
            "token",
            "create",
            "--id",
            id,
        ])
        .output()
        .await;
    out.success("wardctl token create");
    let resp: Value = serde_json::from_str(&out.stdout()).unwrap();
    resp["token"].as_str().unwrap().to_owned()
}

fn spawn_agent(ns: &Netns, cp_url: &str, bundle: &Path, token: &str, extra: &[&str]) -> NsChild {
    ns.command(agent_bin())
        .args(["run", "--control-plane", cp_url, "--trust-bundle"])
        .arg(bundle)
        .args([
            "--admin-addr",
            "127.0.0.1:7191",
            "--sync-wait-seconds",
            "5",
            "--instance-id",
            &ns.name,
        ])
        .args(extra)
        .env("WARDMESH_JOIN_TOKEN", token)
        .env("RUST_LOG", "info")
        .as_uid(PROXY_UID)
        .spawn()
}

fn dump(children: &[(&str, &NsChild)]) -> String {
    children
        .iter()
        .map(|(name, c)| format!("--- {name}:\n{}", c.log()))
        .collect::<Vec<_>>()
        .join("\n")
}

async fn curl_json(ns: &Netns, uid: Option<u32>, args: &[&str]) -> (bool, String) {
    let mut cmd = ns
        .command("curl")
        .args([
            "-sS",
            "--noproxy",
            "*",
            "--connect-timeout",
            "3",
            "-m",
            "10",
        ])
        .args(args)
        .timeout(Duration::from_secs(20));
    if let Some(uid) = uid {
        cmd = cmd.as_uid(uid);
    }
    let out = cmd.output().await;
    (out.out.status.success(), out.stdout() + &out.stderr())
}

#[tokio::test]
async fn curl_reaches_the_backend_by_its_plain_address_through_both_agents() {
    let test =
        "transparent::e2e::curl_reaches_the_backend_by_its_plain_address_through_both_agents";
    if !netns::prerequisites(test) {
        return;
    }
    let pair = NetnsPair::create("e2e").await;
    let (a, b) = (&pair.a, &pair.b);
    let mesh = TestMesh::new();
    let home: PathBuf = mesh.path();
    let shared = shared_dir();
    let bundle = shared.path().join("bundle.pem");
    let bundle_pem = mesh
        .ca_dir()
        .load(&mesh.seal, OffsetDateTime::now_utc())
        .unwrap()
        .bundle_pem;
    write_readable(&bundle, &bundle_pem);

    // The control plane, inside A, on A's veth address (B reaches it over the link).
    let cp_addr = format!("{}:7443", a.addr);
    let cp_url = format!("https://{cp_addr}");
    let mut cp = a
        .command(netns::workspace_bin("wardmesh-control-plane"))
        .arg("--home")
        .arg(&home)
        .args(["--listen", &cp_addr, "--server-name", &a.addr.to_string()])
        .env("RUST_LOG", "warn")
        .spawn();
    let bundle_arg = bundle.to_string_lossy().into_owned();
    wait_http_ok(
        a,
        &format!("{cp_url}/live"),
        &["--cacert", &bundle_arg],
        &mut cp,
    )
    .await;
    let client_token = join_token(a, &home, &cp_url, CLIENT_ID).await;
    let backend_token = join_token(a, &home, &cp_url, BACKEND_ID).await;

    // Interception: A leaves the control-plane port alone (B's agent calls it).
    init_iptables(a, &["--exclude-inbound-ports", "7443"])
        .await
        .success("init-iptables in A");
    init_iptables(b, &[]).await.success("init-iptables in B");

    // B: the backend app on loopback, and its agent allowing the client.
    let backend = listeners(b, &["b-app=127.0.0.1:8080"]).await;
    let mut agent_b = spawn_agent(b, &cp_url, &bundle, &backend_token, &["--allow", CLIENT_ID]);

    // A: the client's agent knows the backend's address and identity.
    let a_config = shared.path().join("agent-a.toml");
    write_readable(
        &a_config,
        &format!(
            "[[outbound.services]]\nname = \"backend\"\naddress = \"{}:8080\"\n\
             spiffe_id = \"{BACKEND_ID}\"\n",
            b.addr
        ),
    );
    let config_arg = a_config.to_string_lossy().into_owned();
    let mut agent_a = spawn_agent(
        a,
        &cp_url,
        &bundle,
        &client_token,
        &["--config", &config_arg],
    );

    let ready = "http://127.0.0.1:7191/ready";
    wait_http_ok(a, ready, &[], &mut agent_a).await;
    wait_http_ok(b, ready, &[], &mut agent_b).await;
    macro_rules! logs {
        () => {
            dump(&[
                ("agent A", &agent_a),
                ("agent B", &agent_b),
                ("backend", &backend),
                ("control plane", &cp),
            ])
        };
    }

    // The app in A calls the backend by its plain address, forging the peer header.
    let url = format!("http://{}:8080/notes/1", b.addr);
    let (ok, body) = curl_json(
        a,
        None,
        &[
            "-H",
            "x-wardmesh-peer-id: spiffe://wardmesh.local/ns/evil/sa/forged",
            &url,
        ],
    )
    .await;
    assert!(ok, "curl in A failed: {body}\n{}", logs!());
    let report: Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("backend answer {body:?}: {e}\n{}", logs!()));
    assert_eq!(report["listener"], "b-app", "{report}");
    assert_eq!(report["request"]["path"], "/notes/1", "{report}");
    assert_eq!(
        report["request"]["headers"]["x-wardmesh-peer-id"],
        serde_json::json!([CLIENT_ID]),
        "the backend sees the caller's verified identity, never the forged one: {report}"
    );
    assert!(
        report["peer"]
            .as_str()
            .unwrap_or_default()
            .starts_with("127.0.0.1:"),
        "the backend's peer is its own agent on loopback: {report}"
    );

    // Plaintext that skips A's agent (sent as the proxy uid) is refused by B's agent:
    // the backend never sees it.
    let (ok, body) = curl_json(a, Some(PROXY_UID), &[&url]).await;
    assert!(
        !ok || !body.contains("\"b-app\""),
        "plaintext reached the backend around the mesh: {body}"
    );

    // Everything the backend ever accepted came from its agent over loopback.
    let accepted: Vec<Value> = backend
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(
        accepted.len(),
        1,
        "exactly the one meshed call:\n{}",
        logs!()
    );
    for r in &accepted {
        assert!(
            r["peer"]
                .as_str()
                .unwrap_or_default()
                .starts_with("127.0.0.1:"),
            "backend saw a non-agent peer: {r}"
        );
    }
    let alive = (agent_a.is_running(), agent_b.is_running());
    assert_eq!(
        alive,
        (true, true),
        "both agents keep running:\n{}",
        logs!()
    );
}
