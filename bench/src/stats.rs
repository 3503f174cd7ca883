//! Latency summaries, error records and the result table every benchmark prints.

use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::machine::CpuUse;

/// How many failures are printed in full; the rest are only counted.
const PRINTED_ERRORS: usize = 20;

/// Latency and throughput of one measured phase.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub ops: usize,
    pub elapsed: Duration,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Summary {
    /// Summarises per-operation latencies of successful operations completed in `elapsed`.
    pub fn new(mut latencies: Vec<Duration>, elapsed: Duration) -> Self {
        latencies.sort_unstable();
        Self {
            ops: latencies.len(),
            elapsed,
            p50: percentile(&latencies, 50.0),
            p99: percentile(&latencies, 99.0),
            max: latencies.last().copied().unwrap_or_default(),
        }
    }

    pub fn per_second(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.ops as f64 / secs
        } else {
            0.0
        }
    }
}

/// Nearest-rank percentile of sorted latencies.
fn percentile(sorted: &[Duration], pct: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((pct / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Failures seen by concurrent workers: all counted, the first few kept verbatim.
#[derive(Debug, Default)]
pub struct Errors {
    count: AtomicUsize,
    first: Mutex<Vec<String>>,
}

impl Errors {
    pub fn record(&self, what: String) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first.lock().unwrap_or_else(|p| p.into_inner());
        if first.len() < PRINTED_ERRORS {
            first.push(what);
        }
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Prints the recorded failures under `phase`.
    pub fn print(&self, phase: &str) {
        let n = self.count();
        if n == 0 {
            return;
        }
        println!("ERRORS in {phase}: {n}");
        let first = self.first.lock().unwrap_or_else(|p| p.into_inner());
        for e in first.iter() {
            println!("  {e}");
        }
        if n > first.len() {
            println!("  … and {} more", n - first.len());
        }
    }
}

/// One line of the result table.
#[derive(Debug, Clone)]
pub struct Row {
    pub name: String,
    /// Threads or tasks driving the phase.
    pub concurrency: usize,
    pub summary: Summary,
    pub errors: usize,
    pub cpu: CpuUse,
    /// Whether this line counts towards the benchmark's target or is context (setup).
    pub timed: bool,
}

/// The result table: rows in the order they were measured.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Row>,
    /// Failures found outside any row (e.g. a cross-check after the phases).
    other_errors: usize,
}

impl Table {
    pub fn push(&mut self, row: Row) {
        self.rows.push(row);
    }

    pub fn mark_error(&mut self) {
        self.other_errors += 1;
    }

    pub fn errors(&self) -> usize {
        self.rows.iter().map(|r| r.errors).sum::<usize>() + self.other_errors
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "| {:<38} | {:>5} | {:>8} | {:>6} | {:>6} | {:>10} | {:>8} | {:>8} | {:>8} | {:>5} | {:>5} | {:>5} |",
            "phase",
            "conc",
            "ops",
            "errors",
            "secs",
            "ops/s",
            "p50 ms",
            "p99 ms",
            "max ms",
            "cpu%",
            "other",
            "steal"
        );
        let _ = writeln!(
            out,
            "|{:-<40}|{:->7}|{:->10}|{:->8}|{:->8}|{:->12}|{:->10}|{:->10}|{:->10}|{:->7}|{:->7}|{:->7}|",
            "", ":", ":", ":", ":", ":", ":", ":", ":", ":", ":", ":"
        );
        for r in &self.rows {
            let s = &r.summary;
            let name = if r.timed {
                r.name.clone()
            } else {
                format!("{} (untimed)", r.name)
            };
            let _ = writeln!(
                out,
                "| {:<38} | {:>5} | {:>8} | {:>6} | {:>6.2} | {:>10.1} | {:>8.3} | {:>8.3} | {:>8.3} | {:>5.0} | {:>5.0} | {:>5.0} |",
                name,
                r.concurrency,
                s.ops,
                r.errors,
                s.elapsed.as_secs_f64(),
                s.per_second(),
                ms(s.p50),
                ms(s.p99),
                ms(s.max),
                r.cpu.process,
                r.cpu.others,
                r.cpu.steal,
            );
        }
        out
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let lat: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let s = Summary::new(lat, Duration::from_secs(2));
        assert_eq!(s.ops, 100);
        assert_eq!(s.p50, Duration::from_millis(50));
        assert_eq!(s.p99, Duration::from_millis(99));
        assert_eq!(s.max, Duration::from_millis(100));
        assert!((s.per_second() - 50.0).abs() < 1e-9);
    }

    #[test]
    fn empty_summary_is_zero() {
        let s = Summary::new(Vec::new(), Duration::ZERO);
        assert_eq!(s.p99, Duration::ZERO);
        assert_eq!(s.per_second(), 0.0);
    }

    #[test]
    fn errors_are_all_counted_but_few_kept() {
        let e = Errors::default();
        for i in 0..(PRINTED_ERRORS + 5) {
            e.record(format!("failure {i}"));
        }
        assert_eq!(e.count(), PRINTED_ERRORS + 5);
        assert_eq!(e.first.lock().unwrap().len(), PRINTED_ERRORS);
    }
}
