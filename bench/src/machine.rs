//! Facts about the machine a benchmark ran on, and how busy it was while it ran: a
//! number from a 2-core VM shared with compilers is not a number from a quiet server,
//! and the report has to say which one it is.

use std::time::Instant;

/// `/proc` reports process times in USER_HZ, which Linux fixes at 100 for userspace.
const USER_HZ: f64 = 100.0;

/// What is printed before any measurement.
#[derive(Debug, Clone)]
pub struct Facts {
    pub date: String,
    pub nproc: usize,
    pub cpu_model: String,
    pub virtualised: bool,
    pub kernel: String,
    pub mem_total: String,
    pub loadavg: String,
    pub profile: &'static str,
}

impl Facts {
    pub fn collect() -> Self {
        let cpuinfo = read("/proc/cpuinfo");
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == "model name").then(|| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let virtualised = cpuinfo
            .lines()
            .any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "hypervisor"));
        let mem_total = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().to_owned()))
            .unwrap_or_else(|| "unknown".into());
        Self {
            date: now_rfc3339(),
            nproc: nproc(),
            cpu_model,
            virtualised,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            mem_total,
            loadavg: loadavg(),
            profile: if cfg!(debug_assertions) {
                "debug (NOT representative: use --release)"
            } else {
                "release"
            },
        }
    }

    pub fn print(&self) {
        println!("machine");
        println!("  date          {}", self.date);
        println!("  nproc         {}", self.nproc);
        println!(
            "  cpu model     {}{}",
            self.cpu_model,
            if self.virtualised {
                " (virtual machine: hypervisor flag set)"
            } else {
                ""
            }
        );
        println!("  memory        {}", self.mem_total);
        println!("  kernel        {}", self.kernel);
        println!(
            "  load average  {}  (1, 5, 15 min; running/total)",
            self.loadavg
        );
        println!("  build         {}", self.profile);
    }
}

/// CPUs of the machine (from `/proc/stat`), not of this process's affinity mask: a
/// process pinned with `taskset` still measures the whole machine.
pub fn nproc() -> usize {
    let n = read("/proc/stat")
        .lines()
        .filter(|l| {
            l.strip_prefix("cpu")
                .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
        })
        .count();
    if n > 0 {
        n
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// `/proc/loadavg` without the last-pid field.
pub fn loadavg() -> String {
    let text = read("/proc/loadavg");
    let fields: Vec<&str> = text.split_whitespace().take(4).collect();
    if fields.is_empty() {
        "unknown".into()
    } else {
        fields.join(" ")
    }
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "unknown".into())
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// CPU counters at one instant: this process, and the whole machine.
#[derive(Debug, Clone, Copy)]
pub struct CpuSnapshot {
    at: Instant,
    process_ticks: u64,
    machine_busy_ticks: u64,
    machine_steal_ticks: u64,
    machine_total_ticks: u64,
}

/// CPU used over an interval, in percent of one core (200 % = both cores of a 2-core
/// machine fully busy).
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuUse {
    /// This benchmark process (load generator and system under test together).
    pub process: f64,
    /// Everything else on the machine over the same interval.
    pub others: f64,
    /// Time the hypervisor gave our vCPUs to someone else.
    pub steal: f64,
}

impl CpuSnapshot {
    pub fn now() -> Self {
        let (busy, steal, total) = machine_ticks();
        Self {
            at: Instant::now(),
            process_ticks: process_ticks(),
            machine_busy_ticks: busy,
            machine_steal_ticks: steal,
            machine_total_ticks: total,
        }
    }

    pub fn since(&self, start: &CpuSnapshot) -> CpuUse {
        let secs = self.at.duration_since(start.at).as_secs_f64();
        if secs <= 0.0 {
            return CpuUse::default();
        }
        let cores = nproc() as f64;
        let process =
            self.process_ticks.saturating_sub(start.process_ticks) as f64 / USER_HZ / secs * 100.0;
        let total = self
            .machine_total_ticks
            .saturating_sub(start.machine_total_ticks) as f64;
        let share = |now: u64, then: u64| {
            if total > 0.0 {
                now.saturating_sub(then) as f64 / total * cores * 100.0
            } else {
                0.0
            }
        };
        let busy = share(self.machine_busy_ticks, start.machine_busy_ticks);
        CpuUse {
            process,
            others: (busy - process).max(0.0),
            steal: share(self.machine_steal_ticks, start.machine_steal_ticks),
        }
    }
}

/// utime + stime of this process (all threads), from `/proc/self/stat`.
fn process_ticks() -> u64 {
    stat_ticks(&read("/proc/self/stat"))
}

/// utime + stime of process `pid` (all threads) in USER_HZ ticks; 0 once it is gone.
pub fn pid_ticks(pid: u32) -> u64 {
    stat_ticks(&read(&format!("/proc/{pid}/stat")))
}

/// Ticks to microseconds of CPU.
pub fn ticks_to_us(ticks: u64) -> f64 {
    ticks as f64 / USER_HZ * 1e6
}

/// utime + stime from the text of a `/proc/<pid>/stat` file.
fn stat_ticks(stat: &str) -> u64 {
    // The command name may contain spaces; fields are counted after its closing ')'.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ')' the first field is field 3 (state); utime is 14 and stime 15.
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(11) + get(12)
}

/// (busy, steal, total) jiffies over all CPUs, from the first line of `/proc/stat`.
pub fn machine_ticks() -> (u64, u64, u64) {
    let stat = read("/proc/stat");
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0, 0);
    };
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    let total: u64 = v.iter().sum();
    let idle = at(3) + at(4);
    let steal = at(7);
    (total.saturating_sub(idle + steal), steal, total)
}
