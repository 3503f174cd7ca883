//! Transparent interception with real iptables in network namespaces (DESIGN.md §3).
//!
//! Needs root, `ip`, `iptables`, `curl` and `setpriv`: a laptop without them skips with
//! a printed reason, CI (`CI=true`, root) never skips. Every address used is inside the
//! test's own namespaces (`10.213.<k>.0/24` on their veth pair) or their loopback.

mod e2e;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use wardmesh_agent::iptables::{InterceptConfig, Iptables, Rule, install_steps, plan};
use wardmesh_tests::netns::{self, Netns, NetnsPair, NsChild, NsOutput, PROXY_UID};

const LISTENER: &str = env!("CARGO_BIN_EXE_wardmesh-test-listener");
const READY_TIMEOUT: Duration = Duration::from_secs(15);

fn agent_bin() -> PathBuf {
    netns::workspace_bin("wardmesh-agent")
}

async fn init_iptables(ns: &Netns, args: &[&str]) -> NsOutput {
    ns.command(agent_bin())
        .arg("init-iptables")
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .await
}

/// What `iptables -t nat -S` must show after installing `cfg` on top of `before`.
fn expected_rules(before: &str, cfg: &InterceptConfig) -> String {
    let mut lines: Vec<String> = before.lines().map(str::to_owned).collect();
    lines.push("-N WARDMESH_INBOUND".into());
    lines.push("-N WARDMESH_OUTPUT".into());
    lines.extend(plan(cfg).iter().map(Rule::to_string));
    lines.join("\n")
}

fn assert_same_rules(actual: &str, expected: &str, context: &str) {
    assert_eq!(
        netns::rules_by_chain(actual),
        netns::rules_by_chain(expected),
        "{context}\n--- actual:\n{actual}\n--- expected:\n{expected}"
    );
}

#[tokio::test]
async fn init_iptables_installs_exactly_the_plan_idempotently_and_removes_it() {
    let test = "transparent::init_iptables_installs_exactly_the_plan_idempotently_and_removes_it";
    if !netns::prerequisites(test) {
        return;
    }
    let pair = NetnsPair::create("rules").await;
    // Both iptables backends Debian ships, one per namespace.
    for (ns, backend) in [(&pair.a, "iptables-nft"), (&pair.b, "iptables-legacy")] {
        let before = ns.nat_rules(backend).await;
        assert!(
            !before.contains("WARDMESH"),
            "{backend}: fresh namespace:\n{before}"
        );

        let flags = [
            "--iptables",
            backend,
            "--exclude-inbound-ports",
            "9090,9000-9010",
            "--exclude-outbound-ports",
            "5432",
            "--exclude-outbound-cidrs",
            "169.254.169.254",
        ];
        let cfg = InterceptConfig {
            exclude_inbound_ports: vec!["9090".parse().unwrap(), "9000-9010".parse().unwrap()],
            exclude_outbound_ports: vec!["5432".parse().unwrap()],
            exclude_outbound_cidrs: vec!["169.254.169.254/32".parse().unwrap()],
            ..InterceptConfig::default()
        };

        // --dry-run prints the steps and changes nothing.
        let dry = init_iptables(ns, &[&flags[..], &["--dry-run"]].concat()).await;
        dry.success("dry run");
        assert_eq!(
            dry.stdout(),
            Iptables::new(backend).script(&install_steps(&cfg))
        );
        assert_eq!(
            ns.nat_rules(backend).await,
            before,
            "{backend}: dry run changed rules"
        );

        init_iptables(ns, &flags).await.success("first install");
        let installed = ns.nat_rules(backend).await;
        assert_same_rules(&installed, &expected_rules(&before, &cfg), backend);

        init_iptables(ns, &flags).await.success("second install");
        assert_eq!(
            ns.nat_rules(backend).await,
            installed,
            "{backend}: running init-iptables twice must give the same ruleset"
        );

        // New settings converge: old exclusions go, nothing is duplicated.
        let changed = InterceptConfig {
            exclude_inbound_ports: vec!["9191".parse().unwrap()],
            ..InterceptConfig::default()
        };
        init_iptables(
            ns,
            &["--iptables", backend, "--exclude-inbound-ports", "9191"],
        )
        .await
        .success("reconfigure");
        assert_same_rules(
            &ns.nat_rules(backend).await,
            &expected_rules(&before, &changed),
            &format!("{backend}: after reconfiguring"),
        );

        for round in ["remove", "remove again (nothing left)"] {
            init_iptables(ns, &["--iptables", backend, "--remove"])
                .await
                .success(round);
            assert_eq!(
                ns.nat_rules(backend).await,
                before,
                "{backend}: {round} must restore the empty nat table"
            );
        }
    }
}

#[tokio::test]
async fn init_iptables_fails_clearly_without_iptables() {
    let test = "transparent::init_iptables_fails_clearly_without_iptables";
    if !netns::prerequisites(test) {
        return;
    }
    let pair = NetnsPair::create("noipt").await;
    let out = init_iptables(&pair.a, &["--iptables", "/nonexistent/iptables"]).await;
    assert!(!out.out.status.success());
    assert!(
        out.stderr().contains(
            "/nonexistent/iptables not found; install iptables (apt-get install iptables)"
        ),
        "{}",
        out.stderr()
    );
}

/// Starts the stand-in listener inside `ns` and waits until it is bound.
async fn listeners(ns: &Netns, specs: &[&str]) -> NsChild {
    let mut child = ns.command(LISTENER).args(specs).spawn();
    child.wait_for_line("ready", READY_TIMEOUT).await;
    child
}

/// `curl` inside `ns` (optionally as `uid`); returns the listener's JSON report.
async fn curl(ns: &Netns, uid: Option<u32>, url: &str, server_logs: &[&NsChild]) -> Value {
    let mut cmd = ns
        .command("curl")
        .args([
            "-sS",
            "--noproxy",
            "*",
            "--connect-timeout",
            "3",
            "-m",
            "5",
            url,
        ])
        .timeout(Duration::from_secs(15));
    if let Some(uid) = uid {
        cmd = cmd.as_uid(uid);
    }
    let out = cmd.output().await;
    let logs = || {
        server_logs
            .iter()
            .map(|c| c.log())
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    assert!(
        out.out.status.success(),
        "`{}` failed: {}\nlisteners:\n{}",
        out.what,
        out.stderr(),
        logs()
    );
    serde_json::from_str(&out.stdout())
        .unwrap_or_else(|e| panic!("`{}` returned {:?}: {e}", out.what, out.stdout()))
}

#[tokio::test]
async fn redirect_recovers_the_original_destination_and_spares_the_proxy_uid() {
    let test = "transparent::redirect_recovers_the_original_destination_and_spares_the_proxy_uid";
    if !netns::prerequisites(test) {
        return;
    }
    let pair = NetnsPair::create("redirect").await;
    let (a, b) = (&pair.a, &pair.b);
    let b_alias = b.add_address(3).await;

    // B: the server pod. Inbound TCP goes to the inbound port, except 9090.
    init_iptables(b, &["--exclude-inbound-ports", "9090"])
        .await
        .success("init-iptables in B");
    let b_listeners = listeners(
        b,
        &[
            "b-inbound=0.0.0.0:7143",
            "b-app=0.0.0.0:8080",
            "b-direct=0.0.0.0:9090",
        ],
    )
    .await;

    // A: the client pod. Outbound TCP goes to the outbound port, except port 9090 and
    // B's second address; loopback and the proxy uid are never redirected.
    let alias_cidr = format!("{b_alias}/32");
    init_iptables(
        a,
        &[
            "--exclude-outbound-ports",
            "9090",
            "--exclude-outbound-cidrs",
            &alias_cidr,
        ],
    )
    .await
    .success("init-iptables in A");
    let a_listeners = listeners(a, &["a-outbound=127.0.0.1:7140", "a-app=0.0.0.0:8080"]).await;
    let logs = [&a_listeners, &b_listeners];

    let b_app = format!("{}:8080", b.addr);
    struct Case {
        what: &'static str,
        uid: Option<u32>,
        url: String,
        listener: &'static str,
        original_dst: Option<String>,
    }
    let cases = [
        Case {
            what: "the app's call leaves through A's outbound port",
            uid: None,
            url: format!("http://{b_app}/"),
            listener: "a-outbound",
            original_dst: Some(b_app.clone()),
        },
        Case {
            what: "the proxy uid's call is not redirected in A and lands on B's inbound port",
            uid: Some(PROXY_UID),
            url: format!("http://{b_app}/"),
            listener: "b-inbound",
            original_dst: Some(b_app.clone()),
        },
        Case {
            what: "a direct connection to B's inbound port is not a redirect",
            uid: Some(PROXY_UID),
            url: format!("http://{}:7143/", b.addr),
            listener: "b-inbound",
            original_dst: None,
        },
        Case {
            what: "an excluded port bypasses both agents",
            uid: None,
            url: format!("http://{}:9090/", b.addr),
            listener: "b-direct",
            original_dst: None,
        },
        Case {
            what: "an excluded CIDR bypasses A's agent; B still intercepts",
            uid: None,
            url: format!("http://{b_alias}:8080/"),
            listener: "b-inbound",
            original_dst: Some(format!("{b_alias}:8080")),
        },
        Case {
            what: "loopback stays in the pod",
            uid: None,
            url: "http://127.0.0.1:8080/".into(),
            listener: "a-app",
            original_dst: None,
        },
        Case {
            what: "the pod's own address stays in the pod (out through lo)",
            uid: None,
            url: format!("http://{}:8080/", a.addr),
            listener: "a-app",
            original_dst: None,
        },
    ];
    for case in cases {
        let report = curl(a, case.uid, &case.url, &logs).await;
        assert_eq!(report["listener"], case.listener, "{}: {report}", case.what);
        let want = case.original_dst.map_or(Value::Null, Value::String);
        assert_eq!(report["original_dst"], want, "{}: {report}", case.what);
        if case.listener == "b-inbound" {
            let peer = report["peer"].as_str().unwrap_or_default();
            assert!(
                peer.starts_with(&format!("{}:", a.addr)),
                "{}: {report}",
                case.what
            );
            assert_eq!(
                report["local"],
                format!("{}:7143", b.addr),
                "{}: {report}",
                case.what
            );
        }
        if case.listener == "a-outbound" {
            assert_eq!(report["local"], "127.0.0.1:7140", "{}: {report}", case.what);
        }
    }
    assert!(
        !b_listeners.log().contains("\"b-app\""),
        "B's app port must only be reachable through B's inbound port:\n{}",
        b_listeners.log()
    );
}
