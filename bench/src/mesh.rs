//! `mesh`: the data-plane tax, measured against a peer in the same run on the same
//! machine. Three paths to one plain HTTP backend, all on loopback:
//!
//! 1. **direct**: wrk → backend;
//! 2. **peer**: wrk → HAProxy (plain in, mTLS out) → HAProxy (mTLS in, client cert
//!    required) → backend;
//! 3. **wardmesh**: wrk → agent (outbound) → agent (inbound; mTLS, authorization) →
//!    backend.
//!
//! Both sidecars of a pair share the same CPU (`--sidecar-cpus`, default core 1); wrk
//! and the backend share the other (`--load-cpus`, default core 0). Each measurement is
//! `wrk --latency -t1 -cN` for `--seconds` after `--warmup` seconds of the same load;
//! every (connections, path) cell is measured `--repeats` times, the paths interleaved,
//! and the medians reported. Then: TLS handshakes per second at the server agent's
//! inbound port, and 1,000 concurrent idle keep-alive connections through each pair.

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
use self::report::{IdleResult, Path, Quiet, Report, Sample};
pub use self::wardmesh::PolicyChoice;
use crate::machine::{self, Facts};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Measured seconds per wrk run.
    #[arg(long, default_value_t = 8)]
    pub seconds: u64,
    /// Warm-up seconds before each measured run (same path, same connections).
    #[arg(long, default_value_t = 2)]
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
    /// Authorization at the server agent.
    #[arg(long, value_enum, default_value_t = PolicyChoice::AllowList)]
    pub policy: PolicyChoice,
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
    #[arg(long, default_value_t = 200_000)]
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
    println!(
        "pinning       sidecars on cpu {}, wrk + backend + harness clients on cpu {}",
        args.sidecar_cpus, args.load_cpus
    );

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
    eprintln!("starting the control plane and two agents …");
    let mesh = wardmesh::Mesh::start(
        &mut procs,
        &agent,
        dir.path(),
        &args.sidecar_cpus,
        backend,
        args.policy,
    )?;
    println!(
        "wardmesh      policy: {}; telemetry: {}",
        mesh.features.policy, mesh.features.telemetry
    );

    let paths = [
        (Path::Direct, backend, Vec::new()),
        (Path::Peer, peer.front, vec![peer.front_pid, peer.back_pid]),
        (
            Path::Wardmesh,
            mesh.outbound,
            vec![mesh.client_pid, mesh.server_pid],
        ),
    ];
    for (path, addr, _) in &paths {
        smoke(*addr).with_context(|| format!("{} path does not answer 200", path.name()))?;
    }
    let all_pids: Vec<u32> = [backend_pid, peer.front_pid, peer.back_pid]
        .into_iter()
        .chain([mesh.client_pid, mesh.server_pid])
        .collect();

    let wrk = wrk::Wrk::new(args.wrk.clone(), args.load_cpus.clone(), dir.path())?;
    let mut report = Report::new(facts, command, tools, quiet, mesh.features.clone(), args);
    report.policy_eval = policy_eval;
    let total = args.repeats * args.connections.len() * paths.len();
    let mut n = 0;
    for repeat in 1..=args.repeats {
        for &conns in &args.connections {
            for (path, addr, sidecars) in &paths {
                n += 1;
                if args.warmup > 0 {
                    wrk.run(addr.port(), conns, args.warmup)?;
                }
                let mut pids = all_pids.clone();
                pids.push(std::process::id());
                let before = CpuMark::now(&pids);
                let r = wrk.run(addr.port(), conns, args.seconds)?;
                let after = CpuMark::now(&pids);
                let sidecar_ticks: Vec<u64> = sidecars
                    .iter()
                    .map(|&p| after.ticks_of(&before, p))
                    .collect();
                let sample = Sample {
                    path: *path,
                    conns,
                    repeat,
                    wrk: r,
                    sidecar_cpu_us: sidecar_ticks
                        .iter()
                        .map(|&t| machine::ticks_to_us(t) / r.requests.max(1) as f64)
                        .collect(),
                    backend_cpu_us: machine::ticks_to_us(after.ticks_of(&before, backend_pid))
                        / r.requests.max(1) as f64,
                    // wrk is ours too, but not in the marks (a new process per run).
                    others: (after.others_percent(&before)
                        - r.cpu_ticks as f64 / r.secs.max(0.001))
                    .max(0.0),
                };
                eprintln!(
                    "[{n}/{total}] {:<8} -c{conns:<3} run {repeat}: {:>8.0} req/s, p50 {:.3} ms, p99 {:.3} ms, errors {}, other cpu {:.0} %",
                    path.name(),
                    r.rps(),
                    r.p50_us / 1e3,
                    r.p99_us / 1e3,
                    r.errors,
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

    if args.handshake_seconds > 0 {
        report.handshakes = Some(handshakes(&mut procs, &me, args, &mesh)?);
    }
    if args.idle_conns > 0 {
        for (path, addr, sidecars) in paths.iter().skip(1) {
            let r = idle(&mut procs, &me, args, *addr, sidecars)?;
            report.idle.push((*path, r));
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

/// One request through `addr` must answer 200.
fn smoke(addr: SocketAddr) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        match crate::http1::exchange(&mut s, true, Duration::from_secs(10)).await {
            Ok(200) => Ok(()),
            Ok(s) => anyhow::bail!("status {s}"),
            Err(e) => anyhow::bail!("{e}"),
        }
    })
}

fn handshakes(
    procs: &mut Procs,
    me: &std::path::Path,
    args: &Args,
    mesh: &wardmesh::Mesh,
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
            mesh.inbound.to_string(),
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
    let pids = [mesh.server_pid, mesh.client_pid, pid];
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
        server_cpu_us: machine::ticks_to_us(after.ticks_of(&before, mesh.server_pid))
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
