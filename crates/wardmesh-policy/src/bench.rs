//! Evaluation latency measurement, for `bench/` and the crate's ignored benchmark test.

use std::time::{Duration, Instant};

use crate::engine::{Decision, PolicyEngine};

/// Latency distribution of `n` evaluations on one thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalLatency {
    pub evaluations: usize,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub p999: Duration,
    pub max: Duration,
    pub mean: Duration,
}

/// Evaluates each of `inputs` in turn, `n` times in total (after a short warm-up), and
/// reports the latency distribution. Panics-free; an empty `inputs` measures nothing.
pub fn bench_eval(engine: &PolicyEngine, inputs: &[serde_json::Value], n: usize) -> EvalLatency {
    let mut samples = Vec::with_capacity(n);
    if !inputs.is_empty() {
        for input in inputs.iter().cycle().take(1_000) {
            std::hint::black_box(engine.evaluate(input));
        }
        for input in inputs.iter().cycle().take(n) {
            let start = Instant::now();
            let d: Decision = engine.evaluate(input);
            samples.push(start.elapsed());
            std::hint::black_box(d);
        }
    }
    samples.sort_unstable();
    let pick = |q: f64| {
        samples
            .get(((samples.len() as f64 * q) as usize).min(samples.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let total: Duration = samples.iter().sum();
    EvalLatency {
        evaluations: samples.len(),
        p50: pick(0.50),
        p90: pick(0.90),
        p99: pick(0.99),
        p999: pick(0.999),
        max: samples.last().copied().unwrap_or_default(),
        mean: total
            .checked_div(samples.len().max(1) as u32)
            .unwrap_or_default(),
    }
}
