//! `mesh`: the data-plane tax, measured against a peer in the same run on the same
//! machine. Paths to one plain HTTP backend, all on loopback:
//!
//! 1. **direct**: wrk → backend;
//! 2. **peer**: wrk → HAProxy (plain in, mTLS out) → HAProxy (mTLS in, client cert
//!    required) → backend;
//! 3. **wardmesh**: wrk → agent (outbound) → agent (inbound; mTLS, end-user JWT, the
//!    clinic policy on every request, a flow record per request fsynced to the spool
//!    before the response, shipped to the control plane) → backend;
//! 4. optionally, wardmesh pairs that differ from 3. in one setting (telemetry off, or
//!    the route not PHI): the spool's cost on the request path is the difference.
//!
//! All sidecars share the same CPU (`--sidecar-cpus`, default core 1); wrk, the backend
//! and this process — which embeds the control plane that ingests the flow records into
//! SQLite — share the other (`--load-cpus`). Each measurement is `wrk --latency -t1 -cN`
//! for `--seconds` after `--warmup` seconds of the same load; every (connections, path)
//! cell is measured `--repeats` times, the paths interleaved, and the medians reported.
//! Then: the flow records the control plane stored, TLS handshakes per second at a server
//! agent's inbound port, and 1,000 concurrent idle keep-alive connections through each pair.

mod peer;
mod procs;
mod report;
mod wardmesh;
mod wrk;

use std::io::BufReader;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;

use self::procs::{CpuMark, Procs, Spec, free_ports, loopback, status_kib, top_others};
use self::report::{FlowCheck, IdleResult, Path, Quiet, Report, Sample};
pub use self::wardmesh::{PairConfig, PolicyChoice, SpoolVariant, TelemetryChoice};
use crate::http1;
use crate::machine::{self, Facts};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Measured seconds per wrk run.
    #[arg(long, default_value_t = 6)]
    pub seconds: u64,
    /// Warm-up seconds before each measured run (same path, same connections).
    #[arg(long, default_value_t = 1)]
    pub warmup: u64,
    /// Measurements per (connections, path); medians are reported.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// wrk connection counts (one wrk thread each).
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    pub connections: Vec<u32>,
    /// CPUs (taskset list) of the sidecars: both proxies of a pair share them.
    #[arg(long, default_value = "1")]
    pub sidecar_cpus: String,
    /// CPUs of wrk, the backend and the harness's other clients.
    #[arg(long, default_value = "0")]
    pub load_cpus: String,
    /// Authorization at the server agent: the clinic policy with JWT end users, or the
    /// allow-list.
    #[arg(long, value_enum, default_value_t = PolicyChoice::Clinic)]
    pub policy: PolicyChoice,
    /// Flow telemetry of the wardmesh pair (on: spool on both agents, PHI route).
    #[arg(long, value_enum, default_value_t = TelemetryChoice::On)]
    pub telemetry: TelemetryChoice,
    /// Extra wardmesh pairs for the spool's cost on the request path (with --telemetry on):
    /// `no-telemetry`, `non-phi`, or `none`.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "no-telemetry"
    )]
    pub spool_variants: Vec<SpoolVariant>,
    /// The agent binary [default: wardmesh-agent next to this binary].
    #[arg(long)]
    pub agent: Option<PathBuf>,
    #[arg(long, default_value = "haproxy")]
    pub haproxy: PathBuf,
    #[arg(long, default_value = "wrk")]
    pub wrk: PathBuf,
    /// Idle keep-alive connections through each pair (0: skip the check).
    #[arg(long, default_value_t = 1000)]
    pub idle_conns: usize,
    #[arg(long, default_value_t = 5)]
    pub idle_seconds: u64,
    /// Seconds of the TLS-handshake benchmark (0: skip).
    #[arg(long, default_value_t = 5)]
    pub handshake_seconds: u64,
    /// Timed evaluations of the clinic policy, run first (0: skip).
    #[arg(long, default_value_t = 100_000)]
    pub policy_evaluations: usize,
    /// Before measuring, wait up to this long for the machine to be quiet.
    #[arg(long, default_value_t = 20)]
    pub quiet_wait: u64,
    /// "Quiet": other processes use less than this much CPU (100 = one core).
    #[arg(long, default_value_t = 20.0)]
    pub quiet_threshold: f64,
    /// Append the report (markdown) to this file, e.g. bench/RESULTS.md.
    #[arg(long)]
    pub append_results: Option<PathBuf>,
}

pub fn run(args: &Args) -> anyhow::Result<usize> {
    anyhow::ensure!((1..=120).contains(&args.seconds), "--seconds: 1-120");
    anyhow::ensure!(args.warmup <= 60, "--warmup: 0-60");
    anyhow::ensure!((1..=15).contains(&args.repeats), "--repeats: 1-15");
    anyhow::ensure!(args.idle_conns <= 10_000, "--idle-conns: at most 10000");
    anyhow::ensure!(args.handshake_seconds <= 60, "--handshake-seconds: 0-60");
    anyhow::ensure!(args.quiet_wait <= 600, "--quiet-wait: 0-600");
    anyhow::ensure!(
        !args.connections.is_empty() && args.connections.iter().all(|c| (1..=1024).contains(c)),
        "--connections: 1-1024 each"
    );
    let started = Instant::now();
    let facts = Facts::collect();
    facts.print();
    let command = std::env::args().collect::<Vec<_>>().join(" ");
    println!("command       {command}");
    let me = std::env::current_exe().context("locating this binary")?;
    let agent = args
        .agent
        .clone()
        .unwrap_or_else(|| me.with_file_name("wardmesh-agent"));
    anyhow::ensure!(
        agent.exists(),
        "{} not found: cargo build --release -p wardmesh-agent",
        agent.display()
    );
    let tools = format!(
        "{}; {}",
        wrk::check(&args.wrk)?,
        peer::version(&args.haproxy)?
    );
    println!("tools         {tools}");
    // This process embeds the control plane (flow ingest into SQLite): it goes on the
    // load CPUs with wrk and the backend, never on the sidecars' core. Threads started
    // from here on inherit the mask.
    pin_self(&args.load_cpus)?;
    println!(
        "pinning       sidecars on cpu {}; wrk + backend + this harness with the embedded control plane on cpu {}",
        args.sidecar_cpus, args.load_cpus
    );
    let pairs = pair_plan(args);

    let quiet = wait_for_quiet(args);
    let policy_eval = match args.policy_evaluations {
        0 => None,
        n => Some(policy_eval(&me, &args.sidecar_cpus, n)?),
    };
    let dir = tempfile::Builder::new()
        .prefix("wardmesh-bench-mesh-")
        .tempdir()?;
    let mut procs = Procs::default();
    let ports = free_ports(3)?;
    let (backend, front, back) = (loopback(ports[0]), loopback(ports[1]), loopback(ports[2]));

    let backend_pid = procs.spawn(Spec {
        name: "backend",
        cpus: Some(&args.load_cpus),
        program: &me,
        args: vec!["backend".into(), "--listen".into(), backend.to_string()],
        env: Vec::new(),
        log: Some(&dir.path().join("backend.log")),
    })?;
    procs::wait_listening(backend, Duration::from_secs(10))?;
    let peer = peer::start(
        &mut procs,
        &args.haproxy,
        dir.path(),
        &args.sidecar_cpus,
        front,
        back,
        backend,
    )?;
    procs::wait_listening(peer.front, Duration::from_secs(10))?;
    procs::wait_listening(peer.back, Duration::from_secs(10))?;
    eprintln!(
        "starting the control plane and {} agent pairs …",
        pairs.len()
    );
    let t = Instant::now();
    let mesh = wardmesh::Mesh::start(
        &mut procs,
        &agent,
        dir.path(),
        &args.sidecar_cpus,
        backend,
        &pairs.iter().map(|(n, c, _)| (*n, *c)).collect::<Vec<_>>(),
    )?;
    eprintln!(
        "agent pairs ready and answering 200 after {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let mut pair_lines = Vec::new();
    for (p, (_, _, role)) in mesh.pairs.iter().zip(&pairs) {
        let line = format!(
            "`{}` ({role}): asked {}; server `/config_dump`: {}",
            p.name,
            p.config.describe(),
            p.features.line()
        );
        println!("pair          {line}");
        pair_lines.push(line);
    }
    let main = mesh.pair("wardmesh").context("no main pair")?.clone();
    // Handshakes and idle connections send the harness's fixed request without a bearer
    // token (bench/src/http1.rs): with the clinic policy they run against the allow-list pair.
    let aux = mesh.pair(AUX_PAIR).unwrap_or(&main).clone();

    let mut paths = vec![
        (Path::Direct, backend, Vec::new()),
        (Path::Peer, peer.front, vec![peer.front_pid, peer.back_pid]),
        (
            Path::Wardmesh,
            main.outbound,
            vec![main.client_pid, main.server_pid],
        ),
    ];
    for p in &mesh.pairs {
        if let Some(v) = variant_of(p.name) {
            paths.push((
                Path::Variant(v),
                p.outbound,
                vec![p.client_pid, p.server_pid],
            ));
        }
    }
    let headers = wardmesh::request_headers(&mesh.bearer);
    for (path, addr, _) in &paths {
        let (status, body) = wardmesh::http_request(*addr, http1::PATH, &headers)
            .with_context(|| format!("{} path does not answer", path.name()))?;
        anyhow::ensure!(
            status == 200,
            "{} path answers {status}: {}",
            path.name(),
            body.trim()
        );
    }
    let all_pids: Vec<u32> = [backend_pid, peer.front_pid, peer.back_pid]
        .into_iter()
        .chain(mesh.pairs.iter().flat_map(|p| [p.client_pid, p.server_pid]))
        .collect();

    // The peak RSS of start-up (a clinic server compiles the policy with cranelift) is
    // not what "under load" means: note it, then reset every sidecar's VmHWM
    // (`clear_refs` 5) so that the table's VmHWM is the peak of the wrk runs.
    let startup_hwm: Vec<(Path, Vec<u64>)> = paths
        .iter()
        .map(|(p, _, sidecars)| {
            (
                *p,
                sidecars.iter().map(|&s| status_kib(s, "VmHWM")).collect(),
            )
        })
        .collect();
    for (_, _, sidecars) in &paths {
        for &pid in sidecars {
            std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
                .with_context(|| format!("resetting VmHWM of pid {pid}"))?;
        }
    }
    let wrk = wrk::Wrk::new(
        args.wrk.clone(),
        args.load_cpus.clone(),
        dir.path(),
        headers.clone(),
    )?;
    let mut report = Report::new(
        facts,
        command,
        tools,
        quiet,
        main.features.clone(),
        pair_lines,
        paths.iter().map(|(p, _, _)| *p).collect(),
        args,
    );
    report.policy_eval = policy_eval;
    report.startup_hwm = startup_hwm;
    // Requests each path answered outside the measured runs (smoke + warm-ups), and the
    // connections that may have had a request in flight when a wrk run stopped.
    let mut unmeasured: Vec<u64> = vec![1; paths.len()];
    let mut in_flight: Vec<u64> = vec![0; paths.len()];
    let total = args.repeats * args.connections.len() * paths.len();
    let mut n = 0;
    for repeat in 1..=args.repeats {
        for &conns in &args.connections {
            for (i, (path, addr, sidecars)) in paths.iter().enumerate() {
                n += 1;
                if args.warmup > 0 {
                    let w = wrk.run(addr.port(), conns, args.warmup)?;
                    unmeasured[i] += w.requests;
                    in_flight[i] += u64::from(conns);
                    if w.errors > 0 {
                        eprintln!("warm-up of {} -c{conns}: {} errors", path.name(), w.errors);
                    }
                }
                let mut pids = all_pids.clone();
                pids.push(std::process::id());
                let before = CpuMark::now(&pids);
                let r = wrk.run(addr.port(), conns, args.seconds)?;
                let after = CpuMark::now(&pids);
                in_flight[i] += u64::from(conns);
                let per_req = |ticks: u64| machine::ticks_to_us(ticks) / r.requests.max(1) as f64;
                let sample = Sample {
                    path: *path,
                    conns,
                    repeat,
                    wrk: r,
                    sidecar_cpu_us: sidecars
                        .iter()
                        .map(|&p| per_req(after.ticks_of(&before, p)))
                        .collect(),
                    backend_cpu_us: per_req(after.ticks_of(&before, backend_pid)),
                    harness_cpu_us: per_req(after.ticks_of(&before, std::process::id())),
                    // wrk is ours too, but not in the marks (a new process per run).
                    others: (after.others_percent(&before)
                        - r.cpu_ticks as f64 / r.secs.max(0.001))
                    .max(0.0),
                };
                eprintln!(
                    "[{n}/{total}] {:<15} -c{conns:<3} run {repeat}: {:>8.0} req/s, p50 {:.3} ms, p99 {:.3} ms, errors {}, cp+harness {:.1} µs/req, other cpu {:.0} %",
                    path.name(),
                    r.rps(),
                    r.p50_us / 1e3,
                    r.p99_us / 1e3,
                    r.errors,
                    sample.harness_cpu_us,
                    sample.others
                );
                report.push(sample);
            }
        }
    }
    // Peak RSS under load, before the connection-scale check inflates it.
    for (path, _, sidecars) in &paths {
        report.set_hwm(
            *path,
            sidecars.iter().map(|&p| status_kib(p, "VmHWM")).collect(),
        );
    }
    // Every answered request of a pair with telemetry must be one stored flow record.
    for (i, (path, _, _)) in paths.iter().enumerate() {
        let Some(pair) = mesh.pairs.iter().find(|p| p.name == path.name()) else {
            continue;
        };
        if !pair.config.telemetry {
            continue;
        }
        let measured: u64 = report.samples_of(*path).map(|s| s.wrk.requests).sum();
        // + the first 200 of the probes; its non-200 answers may have left records too.
        let sent = measured + unmeasured[i] + 1;
        let t = Instant::now();
        let stored = mesh.wait_flows(&pair.server_id, sent, Duration::from_secs(30))?;
        let check = FlowCheck {
            path: *path,
            sent,
            measured,
            unmeasured: unmeasured[i] + 1,
            maybe: pair.probe_errors,
            in_flight: in_flight[i],
            stored,
            settle_secs: t.elapsed().as_secs_f64(),
        };
        eprintln!("{}", check.line());
        report.flows.push(check);
    }

    if args.handshake_seconds > 0 {
        report.handshakes = Some(handshakes(&mut procs, &me, args, &mesh, &aux)?);
    }
    if args.idle_conns > 0 {
        let targets = [
            (Path::Peer, peer.front, vec![peer.front_pid, peer.back_pid]),
            (
                Path::Wardmesh,
                aux.outbound,
                vec![aux.client_pid, aux.server_pid],
            ),
        ];
        for (path, addr, sidecars) in &targets {
            let r = idle(&mut procs, &me, args, *addr, sidecars)?;
            let name = if *path == Path::Wardmesh {
                aux.name
            } else {
                path.name()
            };
            report.idle.push((name, r));
        }
    }
    procs.stop_all();
    mesh.shutdown();
    report.elapsed = started.elapsed();
    let text = report.render();
    println!("\n{text}");
    if let Some(file) = &args.append_results {
        use std::io::Write;
        let mut f = std::fs::File::options().append(true).open(file)?;
        writeln!(f, "\n{}", report.markdown_section())?;
        println!("appended to {}", file.display());
    }
    Ok(report.errors())
}

/// The allow-list pair for the checks whose requests carry no bearer token.
const AUX_PAIR: &str = "wm-allow-list";

/// The pairs to start: (name, configuration, what it is for). The first is the
/// measured wardmesh path.
fn pair_plan(args: &Args) -> Vec<(&'static str, PairConfig, &'static str)> {
    let telemetry = args.telemetry == TelemetryChoice::On;
    let main = PairConfig {
        policy: args.policy,
        telemetry,
        phi: telemetry,
    };
    let mut pairs = vec![("wardmesh", main, "the measured wardmesh path")];
    if telemetry {
        for v in &args.spool_variants {
            let (tel, role) = match v {
                SpoolVariant::NoTelemetry => (false, "spool cost: as `wardmesh` without telemetry"),
                SpoolVariant::NonPhi => (
                    true,
                    "spool cost: as `wardmesh` with the route not PHI (no fsync wait)",
                ),
                SpoolVariant::None => continue,
            };
            if pairs.iter().any(|(n, _, _)| *n == v.path_name()) {
                continue;
            }
            pairs.push((
                v.path_name(),
                PairConfig {
                    telemetry: tel,
                    phi: false,
                    ..main
                },
                role,
            ));
        }
    }
    if args.policy == PolicyChoice::Clinic && (args.handshake_seconds > 0 || args.idle_conns > 0) {
        pairs.push((
            AUX_PAIR,
            PairConfig {
                policy: PolicyChoice::AllowList,
                ..main
            },
            "handshakes and idle connections only (their requests carry no bearer token)",
        ));
    }
    pairs
}

fn variant_of(name: &str) -> Option<SpoolVariant> {
    [SpoolVariant::NoTelemetry, SpoolVariant::NonPhi]
        .into_iter()
        .find(|v| v.path_name() == name)
}

/// Pins every thread of this process (and so the threads it starts later) to `cpus`.
fn pin_self(cpus: &str) -> anyhow::Result<()> {
    let st = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &std::process::id().to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .context("running taskset")?;
    anyhow::ensure!(st.success(), "taskset -a -p -c {cpus} failed ({st})");
    Ok(())
}

/// Samples the machine until other processes use less than the threshold or the wait
/// is over; returns what it saw.
fn wait_for_quiet(args: &Args) -> Quiet {
    let deadline = Instant::now() + Duration::from_secs(args.quiet_wait);
    let mut waited = 0u64;
    loop {
        let t = Instant::now();
        let before = CpuMark::now(&[std::process::id()]);
        let top = top_others(&[], Duration::from_secs(2));
        let after = CpuMark::now(&[std::process::id()]);
        let others = after.others_percent(&before);
        let quiet = others < args.quiet_threshold;
        eprintln!(
            "quietness: other processes {:.0} % of a core over 2 s (threshold {:.0} %){}",
            others,
            args.quiet_threshold,
            top.iter()
                .map(|(p, pid, c)| format!("; {c}[{pid}] {p:.0} %"))
                .collect::<String>()
        );
        waited += t.elapsed().as_secs();
        if quiet || Instant::now() >= deadline {
            return Quiet {
                others,
                quiet,
                waited_secs: waited,
                top: top
                    .into_iter()
                    .map(|(p, _, c)| format!("{c} {p:.0} %"))
                    .collect(),
                loadavg: machine::loadavg(),
            };
        }
        std::thread::sleep(Duration::from_secs(3));
        waited += 3;
    }
}

/// `policy-eval` as a child pinned like a sidecar; its summary and table lines.
fn policy_eval(me: &std::path::Path, cpus: &str, n: usize) -> anyhow::Result<String> {
    eprintln!("policy-eval: building the clinic policy and timing {n} evaluations …");
    let out = std::process::Command::new("timeout")
        .args(["--kill-after=5", "300", "taskset", "-c", cpus])
        .arg(me)
        .args(["policy-eval", "--evaluations", &n.to_string()])
        .stdin(std::process::Stdio::null())
        .output()
        .context("running policy-eval")?;
    let text = String::from_utf8_lossy(&out.stdout);
    anyhow::ensure!(
        out.status.success(),
        "policy-eval failed ({}): {text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(text
        .lines()
        .filter(|l| l.starts_with('|') || l.starts_with("policy-eval:"))
        .collect::<Vec<_>>()
        .join("\n"))
}

fn handshakes(
    procs: &mut Procs,
    me: &std::path::Path,
    args: &Args,
    mesh: &wardmesh::Mesh,
    pair: &wardmesh::Pair,
) -> anyhow::Result<report::HandshakeResult> {
    eprintln!(
        "handshakes: {} s of new mTLS connections to the server agent's inbound port …",
        args.handshake_seconds
    );
    let pid = procs.spawn(Spec {
        name: "handshakes",
        cpus: Some(&args.load_cpus),
        program: me,
        args: vec![
            "handshakes".into(),
            "--target".into(),
            pair.inbound.to_string(),
            "--bundle".into(),
            mesh.bundle.display().to_string(),
            "--chain".into(),
            mesh.hs_chain.display().to_string(),
            "--key".into(),
            mesh.hs_key.display().to_string(),
            "--seconds".into(),
            args.handshake_seconds.to_string(),
        ],
        env: Vec::new(),
        log: None,
    })?;
    let stdout = procs
        .take_stdout(pid)
        .context("no stdout from handshakes")?;
    let pids = [pair.server_pid, pair.client_pid, pid];
    // The child warms up for 1 s first; CPU is counted over its whole life, and so is
    // its connection count (warm-up connections are not in its RESULT), hence only the
    // measured window is used: read the marks around the RESULT line.
    std::thread::sleep(Duration::from_secs(1));
    let before = CpuMark::now(&pids);
    let mut reader = BufReader::new(stdout);
    let line = procs::read_line_with(
        &mut reader,
        "RESULT",
        Duration::from_secs(args.handshake_seconds + 30),
    )?;
    let after = CpuMark::now(&pids);
    procs.wait(pid, Duration::from_secs(5));
    let v: serde_json::Value = serde_json::from_str(&line)?;
    let conns = v["conns"].as_u64().unwrap_or(0);
    Ok(report::HandshakeResult {
        json: v,
        pair: pair.name,
        server_cpu_us: machine::ticks_to_us(after.ticks_of(&before, pair.server_pid))
            / conns.max(1) as f64,
        others: after.others_percent(&before),
    })
}

fn idle(
    procs: &mut Procs,
    me: &std::path::Path,
    args: &Args,
    addr: SocketAddr,
    sidecars: &[u32],
) -> anyhow::Result<IdleResult> {
    eprintln!(
        "idle connections: {} keep-alive connections through {addr} for {} s …",
        args.idle_conns, args.idle_seconds
    );
    let before: Vec<u64> = sidecars.iter().map(|&p| status_kib(p, "VmRSS")).collect();
    let pid = procs.spawn(Spec {
        name: "idle-conns",
        cpus: Some(&args.load_cpus),
        program: me,
        args: vec![
            "idle-conns".into(),
            "--target".into(),
            addr.to_string(),
            "--count".into(),
            args.idle_conns.to_string(),
            "--hold-seconds".into(),
            args.idle_seconds.to_string(),
        ],
        env: Vec::new(),
        log: None,
    })?;
    let stdout = procs
        .take_stdout(pid)
        .context("no stdout from idle-conns")?;
    let mut reader = BufReader::new(stdout);
    let opened: usize = procs::read_line_with(&mut reader, "HOLDING", Duration::from_secs(60))?
        .parse()
        .unwrap_or(0);
    // Sample the sidecars' RSS while the connections are open and idle.
    let mut peak = vec![0u64; sidecars.len()];
    let hold_until = Instant::now() + Duration::from_secs(args.idle_seconds.saturating_sub(1));
    while Instant::now() < hold_until && procs.alive(pid) {
        for (i, &p) in sidecars.iter().enumerate() {
            peak[i] = peak[i].max(status_kib(p, "VmRSS"));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let line = procs::read_line_with(&mut reader, "RESULT", Duration::from_secs(60))?;
    procs.wait(pid, Duration::from_secs(5));
    let v: serde_json::Value = serde_json::from_str(&line)?;
    Ok(IdleResult {
        opened,
        rss_before_kib: before,
        rss_idle_kib: peak,
        hwm_kib: sidecars.iter().map(|&p| status_kib(p, "VmHWM")).collect(),
        json: v,
    })
}
