//! Processes the harness starts (each optionally pinned with `taskset`), stopped by id
//! when the harness ends (also on error, through `Drop`), and what `/proc` says about
//! them and about everything else on the machine.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::machine::{machine_ticks, pid_ticks};

/// How long a process gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// Started processes, stopped in reverse order.
#[derive(Debug, Default)]
pub struct Procs {
    children: Vec<(String, Child)>,
}

/// What to start.
#[derive(Debug)]
pub struct Spec<'a> {
    pub name: &'a str,
    /// `taskset -c <cpus>`; `None`: not pinned.
    pub cpus: Option<&'a str>,
    pub program: &'a Path,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// stdout and stderr go here (appended); `None`: stdout is piped to the caller.
    pub log: Option<&'a Path>,
}

impl Procs {
    /// Starts `spec`; returns its pid (taskset execs the program, so it is the program's).
    pub fn spawn(&mut self, spec: Spec<'_>) -> anyhow::Result<u32> {
        let mut cmd = match spec.cpus {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpus).arg(spec.program);
                c
            }
            None => Command::new(spec.program),
        };
        cmd.args(&spec.args).stdin(Stdio::null());
        for (k, v) in &spec.env {
            cmd.env(k, v);
        }
        match spec.log {
            Some(log) => {
                let f = File::options().create(true).append(true).open(log)?;
                cmd.stdout(f.try_clone()?).stderr(f);
            }
            None => {
                cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
            }
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {} ({})", spec.name, spec.program.display()))?;
        let pid = child.id();
        self.children.push((spec.name.to_owned(), child));
        Ok(pid)
    }

    /// The piped stdout of the child with `pid` (only for specs without a log).
    pub fn take_stdout(&mut self, pid: u32) -> Option<ChildStdout> {
        self.children
            .iter_mut()
            .find(|(_, c)| c.id() == pid)
            .and_then(|(_, c)| c.stdout.take())
    }

    /// Whether the child with `pid` is still running.
    pub fn alive(&mut self, pid: u32) -> bool {
        self.children
            .iter_mut()
            .find(|(_, c)| c.id() == pid)
            .is_some_and(|(_, c)| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits for the child with `pid` to exit by itself, at most `limit`, then stops it.
    /// Returns whether it exited successfully in time.
    pub fn wait(&mut self, pid: u32, limit: Duration) -> bool {
        let Some(i) = self.children.iter().position(|(_, c)| c.id() == pid) else {
            return false;
        };
        let (_, mut child) = self.children.remove(i);
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        stop(&mut child);
        false
    }

    /// Stops every child: SIGTERM by pid, SIGKILL after a grace period.
    pub fn stop_all(&mut self) {
        while let Some((_, mut child)) = self.children.pop() {
            stop(&mut child);
        }
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        self.stop_all();
    }
}

fn stop(child: &mut Child) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Reads lines of `stdout` until one starts with `prefix`, for at most `limit`.
pub fn read_line_with(
    stdout: &mut BufReader<ChildStdout>,
    prefix: &str,
    limit: Duration,
) -> anyhow::Result<String> {
    // The read blocks; a helper thread would be needed to time it out exactly. The
    // children that print these lines have their own deadlines, so a bounded number of
    // lines is enough here.
    let started = Instant::now();
    let mut line = String::new();
    for _ in 0..10_000 {
        line.clear();
        if stdout.read_line(&mut line)? == 0 {
            anyhow::bail!("the child exited without printing {prefix:?}");
        }
        if let Some(rest) = line.trim_end().strip_prefix(prefix) {
            return Ok(rest.trim().to_owned());
        }
        if started.elapsed() > limit {
            break;
        }
    }
    anyhow::bail!("no {prefix:?} line from the child within {limit:?}")
}

/// A `/proc/<pid>/status` value in KiB (`VmRSS`, `VmHWM`); 0 if absent.
pub fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// `n` distinct free loopback ports (bound together, then released).
pub fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("finding free loopback ports")?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Waits until something accepts TCP connections on `addr`, at most `limit`.
pub fn wait_listening(addr: SocketAddr, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    anyhow::bail!("nothing listens on {addr} after {limit:?}")
}

/// Machine-wide CPU and the CPU of a set of our processes, at one instant.
#[derive(Debug, Clone)]
pub struct CpuMark {
    at: Instant,
    busy: u64,
    total: u64,
    ours: HashMap<u32, u64>,
}

impl CpuMark {
    pub fn now(pids: &[u32]) -> Self {
        let (busy, _steal, total) = machine_ticks();
        Self {
            at: Instant::now(),
            busy,
            total,
            ours: pids.iter().map(|&p| (p, pid_ticks(p))).collect(),
        }
    }

    /// Ticks `pid` used since `start`.
    pub fn ticks_of(&self, start: &CpuMark, pid: u32) -> u64 {
        let now = self.ours.get(&pid).copied().unwrap_or(0);
        let then = start.ours.get(&pid).copied().unwrap_or(0);
        now.saturating_sub(then)
    }

    /// CPU (100 = one core) used by processes *not* in the marks since `start`.
    pub fn others_percent(&self, start: &CpuMark) -> f64 {
        let secs = self.at.duration_since(start.at).as_secs_f64();
        let total = self.total.saturating_sub(start.total) as f64;
        if secs <= 0.0 || total <= 0.0 {
            return 0.0;
        }
        let cores = crate::machine::nproc() as f64;
        let busy = self.busy.saturating_sub(start.busy) as f64 / total * cores * 100.0;
        let ours: u64 = self.ours.keys().map(|&p| self.ticks_of(start, p)).sum();
        let ours = ours as f64 / 100.0 / secs * 100.0;
        (busy - ours).max(0.0)
    }
}

/// The busiest processes other than `ours` over `window`: (CPU %, pid, name).
pub fn top_others(ours: &[u32], window: Duration) -> Vec<(f64, u32, String)> {
    let sample = || -> HashMap<u32, (u64, String)> {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return HashMap::new();
        };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .take(100_000)
            .map(|pid| {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .unwrap_or_default()
                    .trim()
                    .to_owned();
                (pid, (pid_ticks(pid), comm))
            })
            .collect()
    };
    let before = sample();
    std::thread::sleep(window);
    let after = sample();
    let mut top: Vec<(f64, u32, String)> = after
        .into_iter()
        .filter(|(pid, _)| !ours.contains(pid) && *pid != std::process::id())
        .filter_map(|(pid, (t, comm))| {
            let (t0, _) = before.get(&pid)?;
            let pct = t.saturating_sub(*t0) as f64 / window.as_secs_f64();
            (pct >= 1.0).then_some((pct, pid, comm))
        })
        .collect();
    top.sort_by(|a, b| b.0.total_cmp(&a.0));
    top.truncate(5);
    top
}
