//! When to renew, pure: the agent's renewal loop asks these functions and only sleeps.

use std::time::Duration;

use time::OffsetDateTime;

/// Renew at this fraction of the lifetime…
pub const RENEW_FRACTION: f64 = 0.5;
/// …plus or minus this fraction of the lifetime, so a fleet issued together does not
/// renew together.
pub const JITTER_FRACTION: f64 = 0.1;
/// Retry backoff after a failed renewal.
pub const BACKOFF_MIN: Duration = Duration::from_secs(1);
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Delay from `now` until renewal for a leaf valid `[not_before, not_after)`.
/// `jitter` is a sample in `[-1.0, 1.0]`; callers draw it from their RNG so this stays
/// deterministic under test.
pub fn renewal_delay(
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    now: OffsetDateTime,
    jitter: f64,
) -> Duration {
    let lifetime = (not_after - not_before).as_seconds_f64().max(0.0);
    let jitter = if jitter.is_finite() {
        jitter.clamp(-1.0, 1.0)
    } else {
        0.0
    };
    let fraction = RENEW_FRACTION + JITTER_FRACTION * jitter;
    let renew_at = not_before + time::Duration::seconds_f64(lifetime * fraction);
    let wait = (renew_at - now).as_seconds_f64();
    if wait <= 0.0 {
        Duration::ZERO
    } else {
        Duration::from_secs_f64(wait)
    }
}

/// Backoff before retry number `attempt` (0-based) after a failed renewal: doubling from
/// [`BACKOFF_MIN`], capped at [`BACKOFF_MAX`] and at a quarter of the time left, so the
/// agent keeps trying often as expiry nears.
pub fn retry_delay(attempt: u32, now: OffsetDateTime, not_after: OffsetDateTime) -> Duration {
    let exp = BACKOFF_MIN.saturating_mul(1u32 << attempt.min(16));
    let capped = exp.min(BACKOFF_MAX);
    let left = (not_after - now).as_seconds_f64();
    if left <= 0.0 {
        return capped;
    }
    capped
        .min(Duration::from_secs_f64(left / 4.0))
        .max(BACKOFF_MIN)
}

/// Seconds until expiry (negative once expired), for `/ready` and the expiry metric.
pub fn seconds_to_expiry(not_after: OffsetDateTime, now: OffsetDateTime) -> f64 {
    (not_after - now).as_seconds_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    #[test]
    fn renews_at_half_life_within_jitter() {
        let nb = t0();
        let na = nb + time::Duration::hours(1);
        assert_eq!(renewal_delay(nb, na, nb, 0.0), Duration::from_secs(1800));
        assert_eq!(renewal_delay(nb, na, nb, 1.0), Duration::from_secs(2160));
        assert_eq!(renewal_delay(nb, na, nb, -1.0), Duration::from_secs(1440));
        assert_eq!(
            renewal_delay(nb, na, nb, 7.0),
            Duration::from_secs(2160),
            "clamped"
        );
        let later = nb + time::Duration::minutes(40);
        assert_eq!(
            renewal_delay(nb, na, later, 0.0),
            Duration::ZERO,
            "overdue renews now"
        );
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let now = t0();
        let far = now + time::Duration::hours(1);
        let got: Vec<u64> = (0..8).map(|a| retry_delay(a, now, far).as_secs()).collect();
        assert_eq!(got, vec![1, 2, 4, 8, 16, 32, 60, 60]);
        let near = now + time::Duration::seconds(20);
        assert_eq!(
            retry_delay(6, now, near),
            Duration::from_secs(5),
            "quarter of time left"
        );
        assert_eq!(
            retry_delay(6, far, now),
            Duration::from_secs(60),
            "expired: keep trying"
        );
    }
}
