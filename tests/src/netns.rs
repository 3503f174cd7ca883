//! Test hosts in network namespaces: two namespaces joined by a veth pair, for the
//! transparent-interception tests (real iptables, real sockets, real `curl`).
//!
//! Addresses: namespace A is `10.213.<k>.1/24` and B `10.213.<k>.2/24` on `veth0`.
//! That network exists only inside the two namespaces (nothing is added to the host's
//! namespace), so test traffic never leaves them; tests target only these addresses and
//! each namespace's own loopback.
//!
//! Cleanup: dropping a [`NetnsPair`] kills whatever still runs inside and deletes both
//! namespaces (which removes the veth pair); every [`NsChild`] is killed when dropped.
//! Namespaces left by a test process that died (SIGKILL) are swept by the next
//! [`NetnsPair::create`]: names carry the creating pid. Every wait has a deadline.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

use crate::prereq;

/// The UID the agents run as in these tests (`init-iptables --proxy-uid`'s default).
pub const PROXY_UID: u32 = 1337;
/// What a command run with [`NsCommand::output`] may take by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Namespace names start with this, then `-<pid>-`.
const NAME_PREFIX: &str = "wmt";

static NEXT_PAIR: AtomicU32 = AtomicU32::new(0);

/// Whether this host can run the namespace tests: root, `ip`, `iptables`, `curl` and
/// `setpriv`. On a laptop a missing one prints SKIPPING and returns `false`; under
/// `CI=true` it panics.
pub fn prerequisites(test: &str) -> bool {
    if !is_root() {
        return missing(
            test,
            "network namespaces and iptables need root (CI runs as root)",
        );
    }
    ["ip", "iptables", "curl", "setpriv"]
        .iter()
        .all(|cmd| prereq::command(test, cmd))
}

fn missing(test: &str, why: &str) -> bool {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test}: {why}; under CI=true this prerequisite is required");
    }
    eprintln!("SKIPPING {test}: {why}");
    false
}

/// Effective UID 0, read from `/proc/self/status` (no libc call needed).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1).map(|euid| euid == "0"))
            .unwrap_or(false)
    })
}

/// A binary of this workspace, built next to the running test executable
/// (`target/<profile>/NAME`). Integration tests cannot name other packages' binaries
/// with `CARGO_BIN_EXE_*`, so `scripts/test` builds every binary before testing.
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current test executable");
    // target/<profile>/deps/<test>-<hash> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in target/<profile>/deps");
    let bin = dir.join(name);
    assert!(
        bin.is_file(),
        "{name} is not built at {}: run `cargo build --workspace --bins` first \
         (scripts/test does)",
        bin.display()
    );
    bin
}

/// Two namespaces, `a` (`10.213.<k>.1`) and `b` (`10.213.<k>.2`), joined by a veth pair.
#[derive(Debug)]
pub struct NetnsPair {
    pub a: Netns,
    pub b: Netns,
}

/// One namespace and its address on the veth link.
#[derive(Debug, Clone)]
pub struct Netns {
    pub name: String,
    pub addr: Ipv4Addr,
}

impl NetnsPair {
    /// Creates the pair. `label` (lowercase letters and digits, ≤ 12) names it in
    /// `ip netns list`: `wmt-<pid>-<n>-<label>-a|b`.
    pub async fn create(label: &str) -> Self {
        assert!(
            !label.is_empty()
                && label.len() <= 12
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()),
            "netns label {label:?}: use 1-12 lowercase letters or digits"
        );
        sweep_stale().await;
        let n = NEXT_PAIR.fetch_add(1, Ordering::Relaxed);
        let k = u8::try_from(1 + n % 250).expect("k fits in an octet");
        let pid = std::process::id();
        let name = |side: &str| format!("{NAME_PREFIX}-{pid}-{n}-{label}-{side}");
        let pair = Self {
            a: Netns {
                name: name("a"),
                addr: Ipv4Addr::new(10, 213, k, 1),
            },
            b: Netns {
                name: name("b"),
                addr: Ipv4Addr::new(10, 213, k, 2),
            },
        };
        // From here on, Drop cleans up whatever was created.
        for ns in [&pair.a, &pair.b] {
            ip(&["netns", "add", &ns.name]).await;
        }
        ip(&[
            "link",
            "add",
            "veth0",
            "netns",
            &pair.a.name,
            "type",
            "veth",
            "peer",
            "name",
            "veth0",
            "netns",
            &pair.b.name,
        ])
        .await;
        for ns in [&pair.a, &pair.b] {
            ip(&[
                "-n",
                &ns.name,
                "addr",
                "add",
                &format!("{}/24", ns.addr),
                "dev",
                "veth0",
            ])
            .await;
            ip(&["-n", &ns.name, "link", "set", "lo", "up"]).await;
            ip(&["-n", &ns.name, "link", "set", "veth0", "up"]).await;
        }
        for ns in [&pair.a, &pair.b] {
            ns.wait_link_up().await;
        }
        pair
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            delete_namespace_blocking(&ns.name);
        }
    }
}

/// Kills every process inside `name`, then deletes it (synchronous: used from Drop).
fn delete_namespace_blocking(name: &str) {
    let pids = std::process::Command::new("ip")
        .args(["netns", "pids", name])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for pid in pids
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let deleted = std::process::Command::new("ip")
        .args(["netns", "del", name])
        .output();
    match deleted {
        Ok(o) if o.status.success() => {}
        Ok(o) => eprintln!(
            "warning: `ip netns del {name}` failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => eprintln!("warning: cannot run `ip netns del {name}`: {e}"),
    }
}

/// Deletes `wmt-<pid>-…` namespaces whose creating process is gone.
async fn sweep_stale() {
    let list = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .await
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
        let Some(pid) = name
            .strip_prefix(NAME_PREFIX)
            .and_then(|rest| rest.strip_prefix('-'))
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("removing stale test namespace {name} (pid {pid} is gone)");
            let name = name.to_owned();
            let _ = tokio::task::spawn_blocking(move || delete_namespace_blocking(&name)).await;
        }
    }
}

/// Runs `ip ARGS`, panicking with its stderr on failure.
async fn ip(args: &[&str]) -> Output {
    let out = run_with_timeout(Command::new("ip").args(args), DEFAULT_TIMEOUT, "ip").await;
    assert!(
        out.status.success(),
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    out
}

async fn run_with_timeout(cmd: &mut Command, timeout: Duration, what: &str) -> Output {
    cmd.kill_on_drop(true).stdin(Stdio::null());
    match tokio::time::timeout(timeout, cmd.output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("cannot run {what}: {e}"),
        Err(_) => panic!("{what} did not finish within {timeout:?}"),
    }
}

impl Netns {
    /// A command to run inside this namespace (`ip netns exec`).
    pub fn command(&self, program: impl Into<OsString>) -> NsCommand {
        NsCommand {
            ns: self.name.clone(),
            program: program.into(),
            args: Vec::new(),
            envs: Vec::new(),
            uid: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// `iptables -t nat -S` inside this namespace.
    pub async fn nat_rules(&self, iptables: &str) -> String {
        // `-w`: iptables-legacy shares one lock file across namespaces.
        let out = self
            .command(iptables)
            .args(["-w", "5", "-t", "nat", "-S"])
            .output()
            .await;
        out.success(&format!("{iptables} -t nat -S"));
        out.stdout()
    }

    /// Adds another address to `veth0` (`10.213.<k>.<host>/24`) and returns it.
    pub async fn add_address(&self, host: u8) -> Ipv4Addr {
        let [a, b, c, _] = self.addr.octets();
        let addr = Ipv4Addr::new(a, b, c, host);
        ip(&[
            "-n",
            &self.name,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "veth0",
        ])
        .await;
        addr
    }

    async fn wait_link_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = ip(&["-n", &self.name, "-br", "link", "show", "dev", "veth0"]).await;
            let line = String::from_utf8_lossy(&out.stdout).into_owned();
            if line.split_whitespace().nth(1) == Some("UP") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "veth0 in {} did not come up within 10 s: {line}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A command bound for a namespace, optionally as another UID (via `setpriv`).
#[derive(Debug, Clone)]
pub struct NsCommand {
    ns: String,
    program: OsString,
    args: Vec<OsString>,
    envs: Vec<(String, String)>,
    uid: Option<u32>,
    timeout: Duration,
}

impl NsCommand {
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.envs.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Runs as `uid` (same gid, no supplementary groups): how a test makes traffic
    /// that `iptables -m owner --uid-owner` matches.
    pub fn as_uid(mut self, uid: u32) -> Self {
        self.uid = Some(uid);
        self
    }

    /// How long [`NsCommand::output`] may take (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// A readable form for messages.
    pub fn describe(&self) -> String {
        let mut s = format!("[{}", self.ns);
        if let Some(uid) = self.uid {
            s.push_str(&format!(" uid {uid}"));
        }
        s.push_str("] ");
        s.push_str(&self.program.to_string_lossy());
        for a in &self.args {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    }

    fn build(&self) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns]);
        if let Some(uid) = self.uid {
            cmd.args([
                "setpriv".to_owned(),
                format!("--reuid={uid}"),
                format!("--regid={uid}"),
                "--clear-groups".to_owned(),
                "--".to_owned(),
            ]);
        }
        cmd.arg(&self.program).args(&self.args);
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs to completion within the timeout (panics past it) and returns the output.
    pub async fn output(&self) -> NsOutput {
        let out = run_with_timeout(&mut self.build(), self.timeout, &self.describe()).await;
        NsOutput {
            what: self.describe(),
            out,
        }
    }

    /// Starts it in the background; stdout and stderr lines are collected. The process
    /// is killed when the returned [`NsChild`] is dropped.
    pub fn spawn(&self) -> NsChild {
        let mut cmd = self.build();
        cmd.kill_on_drop(true)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.describe()));
        let lines = Arc::new(Mutex::new(Vec::new()));
        if let Some(out) = child.stdout.take() {
            collect(out, "", Arc::clone(&lines));
        }
        if let Some(err) = child.stderr.take() {
            collect(err, "stderr: ", Arc::clone(&lines));
        }
        NsChild {
            what: self.describe(),
            child,
            lines,
        }
    }
}

fn collect(
    stream: impl AsyncRead + Unpin + Send + 'static,
    tag: &'static str,
    into: Arc<Mutex<Vec<String>>>,
) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            into.lock().unwrap().push(format!("{tag}{line}"));
        }
    });
}

/// The output of a finished [`NsCommand`].
#[derive(Debug)]
pub struct NsOutput {
    pub what: String,
    pub out: Output,
}

impl NsOutput {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.out.stderr).into_owned()
    }

    /// Panics (with stdout and stderr) unless it exited 0.
    pub fn success(&self, context: &str) -> &Self {
        assert!(
            self.out.status.success(),
            "{context}: `{}` failed ({}):\nstdout: {}\nstderr: {}",
            self.what,
            self.out.status,
            self.stdout().trim(),
            self.stderr().trim()
        );
        self
    }
}

/// A background process inside a namespace; killed on drop.
#[derive(Debug)]
pub struct NsChild {
    what: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl NsChild {
    /// Everything it printed so far (stderr lines prefixed `stderr: `).
    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits until it prints a line containing `needle`; panics (with its output) if it
    /// exits first or the deadline passes.
    pub async fn wait_for_line(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self
                .lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains(needle))
            {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // Let the readers drain what it printed last.
                tokio::time::sleep(Duration::from_millis(100)).await;
                panic!(
                    "{} exited ({status}) before printing {needle:?}:\n{}",
                    self.what,
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not print {needle:?} within {timeout:?}:\n{}",
                self.what,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Asks it to stop (SIGTERM) and waits up to `grace`, then kills it.
    pub async fn stop(mut self, grace: Duration) {
        if let Some(pid) = self.child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// `iptables -S` output grouped for comparison: the chains it declares (`-N`) and each
/// chain's rules (`-A`) in order. Policies (`-P`) are kept too.
pub fn rules_by_chain(save: &str) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in save.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let mut words = line.split_whitespace();
        let key = match (words.next(), words.next()) {
            (Some("-A"), Some(chain)) => chain.to_owned(),
            (Some("-N"), _) => "-N".to_owned(),
            (Some("-P"), _) => "-P".to_owned(),
            _ => "other".to_owned(),
        };
        map.entry(key).or_default().push(line.to_owned());
    }
    if let Some(chains) = map.get_mut("-N") {
        chains.sort();
    }
    map
}
