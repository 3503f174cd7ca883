//! Wall-clock time, passed in so rotation and readiness can be tested with paused tokio
//! time. Deadlines (sleeps) always use tokio's monotonic clock; a [`Clock`] only answers
//! "what time is it" for comparisons with certificate validity.

use std::fmt;

use time::OffsetDateTime;

/// The current wall-clock time.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> OffsetDateTime;
}

/// The system clock, for production.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A wall clock that follows tokio's clock: `base_wall + (tokio::time::Instant::now() -
/// base_instant)`. Under `#[tokio::test(start_paused = true)]` it advances exactly as far
/// as tokio's paused time does, so certificate lifetimes and sleeps agree.
#[derive(Clone, Copy)]
pub struct TokioClock {
    base_wall: OffsetDateTime,
    base_instant: tokio::time::Instant,
}

impl TokioClock {
    /// Anchors the clock at the system time now. Call inside a tokio runtime.
    pub fn new() -> Self {
        Self::starting_at(OffsetDateTime::now_utc())
    }

    /// Anchors the clock at `base_wall`. Call inside a tokio runtime.
    pub fn starting_at(base_wall: OffsetDateTime) -> Self {
        Self {
            base_wall,
            base_instant: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for TokioClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokioClock")
            .field("base_wall", &self.base_wall)
            .finish_non_exhaustive()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> OffsetDateTime {
        let elapsed = tokio::time::Instant::now().saturating_duration_since(self.base_instant);
        self.base_wall + elapsed
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let base = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let clock = TokioClock::starting_at(base);
        assert_eq!(clock.now(), base);
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(clock.now(), base + time::Duration::hours(1));
    }
}
