//! One `wrk --latency` run: 1 thread, `-c N`, fixed duration, the harness's request
//! (Host, purpose-of-use and bearer-token headers: [`super::wardmesh::request_headers`]),
//! and a Lua `done` hook that prints what `--latency`
//! leaves out (p99.9) and the error counters in one machine-readable line.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::http1;
use crate::machine::pid_ticks;

/// The Lua hook: one line, latencies in microseconds.
const SCRIPT: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WMBENCH %d %d %d %d %d %d %d %d %d %d %d\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9), latency.max))
end
"#;

/// What one run measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct WrkResult {
    pub requests: u64,
    pub secs: f64,
    pub errors: u64,
    /// Non-2xx/3xx answers (part of `errors`).
    pub status_errors: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// wrk's own CPU (USER_HZ ticks), sampled every 50 ms while it ran.
    pub cpu_ticks: u64,
}

impl WrkResult {
    pub fn rps(&self) -> f64 {
        if self.secs > 0.0 {
            self.requests as f64 / self.secs
        } else {
            0.0
        }
    }
}

#[derive(Debug)]
pub struct Wrk {
    pub program: PathBuf,
    pub cpus: String,
    script: PathBuf,
    /// `-H` headers of every request.
    headers: Vec<String>,
}

impl Wrk {
    pub fn new(
        program: PathBuf,
        cpus: String,
        dir: &Path,
        headers: Vec<String>,
    ) -> anyhow::Result<Self> {
        let script = dir.join("wmbench.lua");
        std::fs::write(&script, SCRIPT).context("writing the wrk script")?;
        Ok(Self {
            program,
            cpus,
            script,
            headers,
        })
    }

    /// `wrk -t1 -cN -d<secs> --latency` against `port` on loopback.
    pub fn run(&self, port: u16, conns: u32, secs: u64) -> anyhow::Result<WrkResult> {
        let url = format!("http://127.0.0.1:{port}{}", http1::PATH);
        // taskset execs wrk, so the child's pid is wrk's: its CPU is sampled while it
        // runs, to keep it out of the "other processes" figure.
        let mut cmd = Command::new("taskset");
        cmd.arg("-c")
            .arg(&self.cpus)
            .arg(&self.program)
            .args(["-t1", &format!("-c{conns}"), &format!("-d{secs}s")])
            .args(["--latency", "--timeout", "5s", "-s"])
            .arg(&self.script);
        for h in &self.headers {
            cmd.arg("-H").arg(h);
        }
        let mut child = cmd
            .arg(&url)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running wrk")?;
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(secs + 20);
        let mut ticks = 0;
        loop {
            if child.try_wait()?.is_some() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            ticks = pid_ticks(pid).max(ticks);
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().context("reading wrk's output")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix("WMBENCH "))
            .with_context(|| {
                format!(
                    "wrk printed no result (status {}): {}{}",
                    out.status,
                    stdout.trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )
            })?;
        let v: Vec<f64> = line
            .split_whitespace()
            .map(|x| x.parse::<f64>().unwrap_or(f64::NAN))
            .collect();
        anyhow::ensure!(
            v.len() == 11 && v.iter().all(|x| x.is_finite()),
            "unexpected wrk result line {line:?}"
        );
        Ok(WrkResult {
            requests: v[0] as u64,
            secs: v[1] / 1e6,
            errors: (v[2] + v[3] + v[4] + v[5] + v[6]) as u64,
            status_errors: v[5] as u64,
            p50_us: v[7],
            p99_us: v[8],
            p999_us: v[9],
            max_us: v[10],
            cpu_ticks: ticks,
        })
    }
}

/// `wrk` answers at all (and is the Debian build with Lua).
pub fn check(program: &Path) -> anyhow::Result<String> {
    let out = Command::new(program)
        .arg("-v")
        .output()
        .with_context(|| format!("cannot run {} (apt-get install -y wrk)", program.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(text.lines().next().unwrap_or("wrk").trim().to_owned())
}
