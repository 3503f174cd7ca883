//! The work budget of one evaluation (or one instantiation): wasmtime epoch interruption
//! with a CPU-time check.
//!
//! Fuel metering instruments every basic block of the guest and cost the clinic policy a
//! large share of its evaluation time; epoch interruption only compares a counter at
//! function entries and loop headers. A ticker thread advances the engine's epoch every
//! [`TICK`]. When a store's deadline passes, [`Budget::on_deadline`] decides: once the
//! evaluation has had its budget in wall-clock time *and* then burnt the budget again in
//! CPU time of its thread, it is interrupted (a trap: a `policy_error` deny). So a policy
//! that loops forever stops after one to two budgets, while a thread that was merely
//! preempted (a busy node, a CPU-throttled container) is not mistaken for one.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use wasmtime::{Engine, UpdateDeadline};

/// How often the ticker advances the epoch. Budgets are rounded up to whole ticks. The
/// thread wakes this often for as long as the agent runs, idle or not: 100 wake-ups a
/// second cost next to nothing, while an endless loop still stops within a few ticks.
pub(super) const TICK: Duration = Duration::from_millis(10);

/// Keeps the ticker thread running; it stops within a tick of the last clone's drop.
#[derive(Debug)]
pub(super) struct Ticker {
    _alive: Arc<()>,
}

impl Ticker {
    pub(super) fn start(engine: &Engine) -> std::io::Result<Arc<Self>> {
        let alive = Arc::new(());
        let token: Weak<()> = Arc::downgrade(&alive);
        let engine = engine.weak();
        std::thread::Builder::new()
            .name("wardmesh-policy-epoch".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(TICK);
                    let (Some(_), Some(engine)) = (token.upgrade(), engine.upgrade()) else {
                        return;
                    };
                    engine.increment_epoch();
                }
            })?;
        Ok(Arc::new(Self { _alive: alive }))
    }
}

/// Epoch ticks that cover `d` however far the current tick has progressed (none for a
/// zero budget: the first epoch check calls [`Budget::on_deadline`]).
pub(super) fn ticks(d: Duration) -> u64 {
    if d.is_zero() {
        return 0;
    }
    let tick = TICK.as_nanos().max(1);
    u64::try_from(d.as_nanos().div_ceil(tick))
        .unwrap_or(u64::MAX / 2)
        .saturating_add(1)
}

/// Budget bookkeeping for one store, reset by [`Budget::start`] before each call.
#[derive(Debug)]
pub(super) struct Budget {
    limit: Duration,
    started: Instant,
    /// The thread's CPU time when the wall-clock budget first ran out.
    cpu_mark: Option<Duration>,
}

impl Budget {
    pub(super) fn new() -> Self {
        Self {
            limit: Duration::ZERO,
            started: Instant::now(),
            cpu_mark: None,
        }
    }

    /// Starts a budget of `limit`; returns the epoch deadline (in ticks from now).
    pub(super) fn start(&mut self, limit: Duration) -> u64 {
        self.limit = limit;
        self.started = Instant::now();
        self.cpu_mark = None;
        ticks(limit)
    }

    /// Called by wasmtime when the store's epoch deadline has passed.
    pub(super) fn on_deadline(&mut self) -> UpdateDeadline {
        let wall = self.started.elapsed();
        if wall < self.limit {
            return UpdateDeadline::Continue(ticks(self.limit - wall));
        }
        // Without a per-thread CPU clock, wall-clock time is the budget.
        let Some(cpu) = thread_cpu_time() else {
            return UpdateDeadline::Interrupt;
        };
        match self.cpu_mark {
            None => {
                self.cpu_mark = Some(cpu);
                UpdateDeadline::Continue(ticks(self.limit))
            }
            Some(mark) => {
                let used = cpu.saturating_sub(mark);
                if used >= self.limit {
                    UpdateDeadline::Interrupt
                } else {
                    UpdateDeadline::Continue(ticks(self.limit - used))
                }
            }
        }
    }
}

/// CPU time of the calling thread (Linux: `/proc/thread-self/schedstat`, in ns). Read
/// only when a deadline passes, never on the evaluation path.
fn thread_cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = stat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_round_up_to_whole_ticks_plus_one() {
        assert_eq!(ticks(Duration::ZERO), 0);
        assert_eq!(ticks(Duration::from_nanos(1)), 2);
        assert_eq!(ticks(TICK), 2);
        assert_eq!(ticks(TICK + Duration::from_nanos(1)), 3);
        assert!(ticks(Duration::MAX) > 1_000_000);
    }

    #[test]
    fn a_spinning_thread_is_interrupted_after_its_cpu_budget() {
        let mut b = Budget::new();
        b.start(Duration::from_millis(5));
        // Too early: keep going.
        assert!(matches!(b.on_deadline(), UpdateDeadline::Continue(_)));
        // Wall-clock budget gone while the thread slept (not spinning): one more budget.
        std::thread::sleep(Duration::from_millis(6));
        assert!(matches!(b.on_deadline(), UpdateDeadline::Continue(_)));
        std::thread::sleep(Duration::from_millis(6));
        if let Some(cpu0) = thread_cpu_time() {
            // Sleeping used no CPU: still not interrupted.
            assert!(matches!(b.on_deadline(), UpdateDeadline::Continue(_)));
            // Burn the budget in CPU time (however long a busy machine makes that take).
            while thread_cpu_time().is_some_and(|c| c < cpu0 + Duration::from_millis(6)) {
                std::hint::black_box(Instant::now());
            }
        }
        assert!(matches!(b.on_deadline(), UpdateDeadline::Interrupt));
    }
}
