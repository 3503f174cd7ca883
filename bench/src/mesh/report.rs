//! Medians, ratios and targets of a `mesh` run, as markdown (printed, and appended to
//! RESULTS.md with `--append-results`).

use std::fmt::Write as _;
use std::time::Duration;

use super::Args;
use super::wardmesh::{Features, FlowCount, SpoolVariant};
use super::wrk::WrkResult;
use crate::machine::Facts;

/// Agent RSS budget under load (DESIGN.md §3).
const RSS_TARGET_KIB: u64 = 20 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    Direct,
    Peer,
    Wardmesh,
    /// A wardmesh pair that differs from `Wardmesh` in one spool setting.
    Variant(SpoolVariant),
}

impl Path {
    pub fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Peer => "peer",
            Self::Wardmesh => "wardmesh",
            Self::Variant(v) => v.path_name(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Sample {
    pub path: Path,
    pub conns: u32,
    pub repeat: usize,
    pub wrk: WrkResult,
    /// CPU µs per request of each sidecar (client side first).
    pub sidecar_cpu_us: Vec<f64>,
    pub backend_cpu_us: f64,
    /// CPU µs per request of this process: the embedded control plane (flow ingest) and
    /// the harness's own sampling.
    pub harness_cpu_us: f64,
    /// CPU of other processes during the run (100 = one core).
    pub others: f64,
}

/// Flow records stored by the control plane for one pair against requests answered.
#[derive(Debug, Clone)]
pub struct FlowCheck {
    pub path: Path,
    /// Requests answered: measured + unmeasured.
    pub sent: u64,
    pub measured: u64,
    /// Warm-ups, the smoke request and the first 200 of the probes.
    pub unmeasured: u64,
    /// Non-200 answers of the probes before the first 200: recorded or not.
    pub maybe: u64,
    /// Connections that may have had a request in flight when a wrk run stopped (the
    /// agent may have recorded it, wrk did not count it).
    pub in_flight: u64,
    pub stored: FlowCount,
    pub settle_secs: f64,
}

impl FlowCheck {
    /// Nothing lost (stored ≥ answered), nothing invented (at most the in-flight ones
    /// more), and every record an allowed 200 on the route template, pseudonymised.
    pub fn ok(&self) -> bool {
        let s = &self.stored;
        let slack = self.in_flight + self.maybe;
        s.total >= self.sent
            && s.total <= self.sent + slack
            && s.on_route == s.total
            && s.pseudonymised == s.total
            && s.allowed_200 + slack >= s.total
    }

    pub fn line(&self) -> String {
        let s = &self.stored;
        format!(
            "flows stored ({}): **{}** for {} requests answered 200 ({} measured + {} warm-up/smoke/probe; up to {} more may have been in flight when a wrk run stopped, {} probes answered non-200 before the first 200): {} ({:+}); allowed 200: {}, on route `{}`: {}, pseudonymised subject: {}; store settled {:.1} s after the last run",
            self.path.name(),
            s.total,
            self.sent,
            self.measured,
            self.unmeasured,
            self.in_flight,
            self.maybe,
            if self.ok() { "ok" } else { "**MISMATCH**" },
            s.total as i64 - self.sent as i64,
            s.allowed_200,
            super::wardmesh::ROUTE,
            s.on_route,
            s.pseudonymised,
            self.settle_secs
        )
    }
}

#[derive(Debug, Clone)]
pub struct Quiet {
    pub others: f64,
    pub quiet: bool,
    pub waited_secs: u64,
    pub top: Vec<String>,
    pub loadavg: String,
}

#[derive(Debug, Clone)]
pub struct HandshakeResult {
    /// The pair whose server agent was measured.
    pub pair: &'static str,
    pub json: serde_json::Value,
    pub server_cpu_us: f64,
    pub others: f64,
}

#[derive(Debug, Clone)]
pub struct IdleResult {
    pub opened: usize,
    pub rss_before_kib: Vec<u64>,
    pub rss_idle_kib: Vec<u64>,
    pub hwm_kib: Vec<u64>,
    pub json: serde_json::Value,
}

#[derive(Debug)]
pub struct Report {
    facts: Facts,
    command: String,
    tools: String,
    quiet: Quiet,
    features: Features,
    /// One line per wardmesh pair: what it is for, what was asked, what it reported.
    pairs: Vec<String>,
    paths: Vec<Path>,
    settings: String,
    conns: Vec<u32>,
    samples: Vec<Sample>,
    hwm: Vec<(Path, Vec<u64>)>,
    /// VmHWM of each path's sidecars after start-up, before it was reset for the wrk runs.
    pub startup_hwm: Vec<(Path, Vec<u64>)>,
    pub flows: Vec<FlowCheck>,
    pub handshakes: Option<HandshakeResult>,
    /// The `policy-eval` summary and table (run pinned to the sidecar CPU).
    pub policy_eval: Option<String>,
    /// (pair or path name, result).
    pub idle: Vec<(&'static str, IdleResult)>,
    pub elapsed: Duration,
}

/// Medians of one (path, connections) cell.
#[derive(Debug, Clone, Copy, Default)]
struct Cell {
    rps: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    cpu: [f64; 2],
    cpu_total: f64,
    harness: f64,
    errors: u64,
    others_med: f64,
    others_max: f64,
    status_errors: u64,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn ratio(a: f64, b: f64) -> String {
    if b.abs() < 1e-12 {
        "–".into()
    } else {
        format!("{:.2}", a / b)
    }
}

fn mb(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        facts: Facts,
        command: String,
        tools: String,
        quiet: Quiet,
        features: Features,
        pairs: Vec<String>,
        paths: Vec<Path>,
        args: &Args,
    ) -> Self {
        let settings = format!(
            "wrk -t1 -c{{{}}} -d{}s --latency after {} s warm-up, {} repeat(s), paths interleaved; sidecars pinned to cpu {}, wrk + backend + the harness with the embedded control plane to cpu {}",
            args.connections
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(","),
            args.seconds,
            args.warmup,
            args.repeats,
            args.sidecar_cpus,
            args.load_cpus
        );
        Self {
            facts,
            command,
            tools,
            quiet,
            features,
            pairs,
            paths,
            settings,
            conns: args.connections.clone(),
            samples: Vec::new(),
            hwm: Vec::new(),
            startup_hwm: Vec::new(),
            flows: Vec::new(),
            handshakes: None,
            policy_eval: None,
            idle: Vec::new(),
            elapsed: Duration::ZERO,
        }
    }

    pub fn push(&mut self, s: Sample) {
        self.samples.push(s);
    }

    pub fn set_hwm(&mut self, path: Path, kib: Vec<u64>) {
        self.hwm.push((path, kib));
    }

    /// The measured samples of `path`.
    pub fn samples_of(&self, path: Path) -> impl Iterator<Item = &Sample> {
        self.samples.iter().filter(move |s| s.path == path)
    }

    /// Failed requests, failed handshakes, idle-connection errors and flow-count
    /// mismatches.
    pub fn errors(&self) -> usize {
        let wrk: u64 = self.samples.iter().map(|s| s.wrk.errors).sum();
        let hs = self
            .handshakes
            .as_ref()
            .and_then(|h| h.json["errors"].as_u64())
            .unwrap_or(0);
        let idle: u64 = self
            .idle
            .iter()
            .map(|(_, r)| r.json["errors"].as_u64().unwrap_or(1))
            .sum();
        let flows = self.flows.iter().filter(|f| !f.ok()).count() as u64;
        (wrk + hs + idle + flows) as usize
    }

    fn cell(&self, path: Path, conns: u32) -> Cell {
        let s: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.path == path && s.conns == conns)
            .collect();
        let col = |f: &dyn Fn(&Sample) -> f64| median(s.iter().map(|x| f(x)).collect());
        let cpu_i = |i: usize| col(&|x| x.sidecar_cpu_us.get(i).copied().unwrap_or(0.0));
        Cell {
            rps: col(&|x| x.wrk.rps()),
            p50: col(&|x| x.wrk.p50_us / 1e3),
            p99: col(&|x| x.wrk.p99_us / 1e3),
            p999: col(&|x| x.wrk.p999_us / 1e3),
            cpu: [cpu_i(0), cpu_i(1)],
            cpu_total: col(&|x| x.sidecar_cpu_us.iter().sum()),
            harness: col(&|x| x.harness_cpu_us),
            errors: s.iter().map(|x| x.wrk.errors).sum(),
            others_med: col(&|x| x.others),
            others_max: s.iter().map(|x| x.others).fold(0.0, f64::max),
            status_errors: s.iter().map(|x| x.wrk.status_errors).sum(),
        }
    }

    fn hwm_of(&self, path: Path) -> Vec<u64> {
        self.hwm
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }

    /// The comparison table, ratios, targets and the secondary checks.
    pub fn render(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "wardmesh pairs (all agents pinned to the sidecar CPU):\n"
        );
        for p in &self.pairs {
            let _ = writeln!(o, "- {p}");
        }
        let _ = writeln!(o);
        let _ = writeln!(o, "settings: {}", self.settings);
        let _ = writeln!(
            o,
            "machine before measuring: other processes {:.0} % of a core ({}; waited {} s){}; load average {}",
            self.quiet.others,
            if self.quiet.quiet {
                "quiet"
            } else {
                "NOT quiet"
            },
            self.quiet.waited_secs,
            if self.quiet.top.is_empty() {
                String::new()
            } else {
                format!("; busiest: {}", self.quiet.top.join(", "))
            },
            self.quiet.loadavg
        );
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "| path | conns | req/s | p50 ms | p99 ms | p99.9 ms | added p99 ms | sidecar CPU µs/req (client + server = total) | control plane + harness CPU µs/req | sidecar RSS HWM MB (client, server) | errors (non-2xx) | other CPU % (median / max) |"
        );
        let _ = writeln!(
            o,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for &c in &self.conns {
            let direct = self.cell(Path::Direct, c);
            for &path in &self.paths {
                let x = self.cell(path, c);
                let hwm = self.hwm_of(path);
                let (cpu, rss) = if path == Path::Direct {
                    ("–".to_owned(), "–".to_owned())
                } else {
                    (
                        format!("{:.1} + {:.1} = {:.1}", x.cpu[0], x.cpu[1], x.cpu_total),
                        hwm.iter().map(|&k| mb(k)).collect::<Vec<_>>().join(", "),
                    )
                };
                let _ = writeln!(
                    o,
                    "| {} | {c} | {:.0} | {:.3} | {:.3} | {:.3} | {} | {cpu} | {:.1} | {rss} | {} ({}) | {:.0} / {:.0} |",
                    path.name(),
                    x.rps,
                    x.p50,
                    x.p99,
                    x.p999,
                    if path == Path::Direct {
                        "–".to_owned()
                    } else {
                        format!("{:+.3}", x.p99 - direct.p99)
                    },
                    x.harness,
                    x.errors,
                    x.status_errors,
                    x.others_med,
                    x.others_max
                );
            }
        }
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "| wardmesh / peer | req/s | p50 | p99 | p99.9 | added p99 | sidecar CPU/req | max sidecar RSS HWM |"
        );
        let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|---:|");
        let max_hwm = |p: Path| self.hwm_of(p).into_iter().max().unwrap_or(0) as f64;
        for &c in &self.conns {
            let (d, p, w) = (
                self.cell(Path::Direct, c),
                self.cell(Path::Peer, c),
                self.cell(Path::Wardmesh, c),
            );
            let _ = writeln!(
                o,
                "| -c{c} | {} | {} | {} | {} | {} | {} | {} |",
                ratio(w.rps, p.rps),
                ratio(w.p50, p.p50),
                ratio(w.p99, p.p99),
                ratio(w.p999, p.p999),
                ratio(w.p99 - d.p99, p.p99 - d.p99),
                ratio(w.cpu_total, p.cpu_total),
                ratio(max_hwm(Path::Wardmesh), max_hwm(Path::Peer)),
            );
        }
        let _ = writeln!(
            o,
            "\nSidecar RSS HWM is the peak of the wrk runs (VmHWM reset with `clear_refs` before them). Peak of start-up, before the reset, MB (client, server): {}\n",
            self.startup_hwm
                .iter()
                .filter(|(p, _)| *p != Path::Direct)
                .map(|(p, v)| format!(
                    "{} {}",
                    p.name(),
                    v.iter().map(|&k| mb(k)).collect::<Vec<_>>().join(", ")
                ))
                .collect::<Vec<_>>()
                .join("; ")
        );
        self.render_spool_cost(&mut o);
        for f in &self.flows {
            let _ = writeln!(o, "{}\n", f.line());
        }
        self.render_targets(&mut o);
        self.render_secondary(&mut o);
        let _ = writeln!(o);
        let _ = writeln!(o, "<details><summary>every run</summary>\n");
        let _ = writeln!(
            o,
            "| run | path | conns | req/s | p50 ms | p99 ms | p99.9 ms | max ms | sidecar CPU µs/req | backend CPU µs/req | CP + harness CPU µs/req | errors | other CPU % |"
        );
        let _ = writeln!(
            o,
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        for s in &self.samples {
            let _ = writeln!(
                o,
                "| {} | {} | {} | {:.0} | {:.3} | {:.3} | {:.3} | {:.1} | {} | {:.1} | {:.1} | {} | {:.0} |",
                s.repeat,
                s.path.name(),
                s.conns,
                s.wrk.rps(),
                s.wrk.p50_us / 1e3,
                s.wrk.p99_us / 1e3,
                s.wrk.p999_us / 1e3,
                s.wrk.max_us / 1e3,
                s.sidecar_cpu_us
                    .iter()
                    .map(|v| format!("{v:.1}"))
                    .collect::<Vec<_>>()
                    .join(" + "),
                s.backend_cpu_us,
                s.harness_cpu_us,
                s.wrk.errors,
                s.others
            );
        }
        let _ = writeln!(o, "\n</details>");
        let _ = writeln!(
            o,
            "\nrun took {:.0} s; errors: {}",
            self.elapsed.as_secs_f64(),
            self.errors()
        );
        o
    }

    /// `wardmesh` minus each variant: what the spool setting it lacks costs per request.
    fn render_spool_cost(&self, o: &mut String) {
        let variants: Vec<Path> = self
            .paths
            .iter()
            .copied()
            .filter(|p| matches!(p, Path::Variant(_)))
            .collect();
        if variants.is_empty() {
            return;
        }
        let _ = writeln!(
            o,
            "Spool cost on the request path: `wardmesh` minus the variant (medians; positive = the spool setting costs this much):\n"
        );
        let _ = writeln!(
            o,
            "| wardmesh − variant | conns | req/s | p50 ms | p99 ms | p99.9 ms | sidecar CPU µs/req (client, server, total) | control plane + harness CPU µs/req |"
        );
        let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|---:|");
        for v in variants {
            for &c in &self.conns {
                let (w, x) = (self.cell(Path::Wardmesh, c), self.cell(v, c));
                let _ = writeln!(
                    o,
                    "| − {} | {c} | {:+.0} ({:+.1} %) | {:+.3} | {:+.3} | {:+.3} | {:+.1}, {:+.1}, **{:+.1}** | {:+.1} |",
                    v.name(),
                    w.rps - x.rps,
                    if x.rps > 0.0 {
                        (w.rps / x.rps - 1.0) * 100.0
                    } else {
                        0.0
                    },
                    w.p50 - x.p50,
                    w.p99 - x.p99,
                    w.p999 - x.p999,
                    w.cpu[0] - x.cpu[0],
                    w.cpu[1] - x.cpu[1],
                    w.cpu_total - x.cpu_total,
                    w.harness - x.harness,
                );
            }
        }
        let _ = writeln!(o);
    }

    fn render_targets(&self, o: &mut String) {
        let _ = writeln!(o, "| target | measured | met |");
        let _ = writeln!(o, "|---|---|---|");
        let yes = |b: bool| if b { "yes" } else { "**no**" };
        for &c in &self.conns {
            let (d, p, w) = (
                self.cell(Path::Direct, c),
                self.cell(Path::Peer, c),
                self.cell(Path::Wardmesh, c),
            );
            let (wa, pa) = (w.p99 - d.p99, p.p99 - d.p99);
            let _ = writeln!(
                o,
                "| added p99 ≤ peer's (-c{c}) | wardmesh {wa:+.3} ms, peer {pa:+.3} ms | {} |",
                yes(wa <= pa)
            );
        }
        if let Some(&c) = self.conns.iter().find(|&&c| c == 16).or(self.conns.last()) {
            let (p, w) = (self.cell(Path::Peer, c), self.cell(Path::Wardmesh, c));
            let _ = writeln!(
                o,
                "| req/s ≥ peer's (-c{c}) | wardmesh {:.0}, peer {:.0} | {} |",
                w.rps,
                p.rps,
                yes(w.rps >= p.rps)
            );
        }
        let hwm = self.hwm_of(Path::Wardmesh);
        let max = hwm.iter().copied().max().unwrap_or(0);
        let _ = writeln!(
            o,
            "| agent RSS ≤ 20 MB under load (VmHWM) | {} MB | {} |",
            hwm.iter().map(|&k| mb(k)).collect::<Vec<_>>().join(", "),
            yes(max > 0 && max <= RSS_TARGET_KIB)
        );
        let _ = writeln!(
            o,
            "| with policy and telemetry on | policy: {}; telemetry: {} | {} |",
            self.features.policy,
            self.features.telemetry,
            yes(self.features.policy_on && self.features.telemetry_on)
        );
        if let Some(f) = self.flows.iter().find(|f| f.path == Path::Wardmesh) {
            let _ = writeln!(
                o,
                "| every answered request has one flow record in the control plane | {} stored for {} answered (+ up to {} in flight) | {} |",
                f.stored.total,
                f.sent,
                f.in_flight,
                yes(f.ok())
            );
        }
        let _ = writeln!(o);
    }

    fn render_secondary(&self, o: &mut String) {
        if let Some(p) = &self.policy_eval {
            let _ = writeln!(o, "{p}\n");
        }
        if let Some(h) = &self.handshakes {
            let j = &h.json;
            let _ = writeln!(
                o,
                "TLS handshakes at the `{}` server agent's inbound port (new connection: full TLS 1.3 mTLS handshake, no resumption, + one HTTP/1.1 request; 4 in flight): **{:.0}/s**, handshake p50 {:.2} ms / p99 {:.2} ms, connection p50 {:.2} ms / p99 {:.2} ms, server agent CPU {:.0} µs per connection, errors {}, other CPU {:.0} %",
                h.pair,
                j["per_sec"].as_f64().unwrap_or(0.0),
                j["handshake_p50_us"].as_f64().unwrap_or(0.0) / 1e3,
                j["handshake_p99_us"].as_f64().unwrap_or(0.0) / 1e3,
                j["conn_p50_us"].as_f64().unwrap_or(0.0) / 1e3,
                j["conn_p99_us"].as_f64().unwrap_or(0.0) / 1e3,
                h.server_cpu_us,
                j["errors"],
                h.others
            );
            let _ = writeln!(o);
        }
        if !self.idle.is_empty() {
            let _ = writeln!(
                o,
                "| idle keep-alive check | opened | answered again after idling | errors | RSS before MB (client, server) | RSS while idle MB | VmHWM MB | first errors |"
            );
            let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|---:|---|");
            for (name, r) in &self.idle {
                let list = |v: &[u64]| v.iter().map(|&k| mb(k)).collect::<Vec<_>>().join(", ");
                let _ = writeln!(
                    o,
                    "| {} ({} requested) | {} | {} | {} | {} | {} | {} | {} |",
                    name,
                    r.json["requested"],
                    r.opened,
                    r.json["second_ok"],
                    r.json["errors"],
                    list(&r.rss_before_kib),
                    list(&r.rss_idle_kib),
                    list(&r.hwm_kib),
                    r.json["first_errors"]
                );
            }
        }
    }

    /// The section for RESULTS.md: heading, machine, command, then [`Report::render`].
    pub fn markdown_section(&self) -> String {
        let f = &self.facts;
        format!(
            "## `mesh` — {date}\n\n\
             - **Machine**: {nproc} vCPU {model}{virt}, {mem} RAM, kernel {kernel}; load average at start {load}; build {profile}\n\
             - **Tools**: {tools}\n\
             - **Command**: `{cmd}`\n\n{body}",
            date = f.date,
            nproc = f.nproc,
            model = f.cpu_model,
            virt = if f.virtualised { " (VM)" } else { "" },
            mem = f.mem_total,
            kernel = f.kernel,
            load = f.loadavg,
            profile = f.profile,
            tools = self.tools,
            cmd = self.command,
            body = self.render()
        )
    }
}
