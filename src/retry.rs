//! The retry policy: exponential backoff with full jitter, as a small pure type.
//!
//! We do not use the `backoff` crate: it is unmaintained (RUSTSEC-2025-0012). The policy is a
//! few lines of arithmetic, and keeping it pure (the random draw is an argument) makes it
//! testable without clocks or seeds.

use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Ceiling of the first delay.
    pub base: Duration,
    /// No delay exceeds this.
    pub max_delay: Duration,
    /// A server's `Retry-After` is honoured up to this.
    pub retry_after_cap: Duration,
}

impl RetryPolicy {
    /// Short retries inside one claim (a blip should not cost a durable reschedule).
    pub const IN_PROCESS: RetryPolicy = RetryPolicy {
        base: Duration::from_millis(100),
        max_delay: Duration::from_secs(2),
        retry_after_cap: Duration::from_secs(5),
    };

    /// Durable reschedules through `run_at`, between claims.
    pub const DURABLE: RetryPolicy = RetryPolicy {
        base: Duration::from_secs(1),
        max_delay: Duration::from_secs(300),
        retry_after_cap: Duration::from_secs(300),
    };

    /// Delay before retry number `retry` (0 = the first retry), given a uniform draw in [0, 1).
    ///
    /// Full jitter: uniform in `[0, min(max_delay, base * 2^retry)]`, which spreads a crowd
    /// of failing requests instead of moving them in synchronized waves. A `Retry-After`
    /// from the server is a floor (capped), because asking earlier is pointless.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>, draw: f64) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(2u32.saturating_pow(retry.min(31)))
            .min(self.max_delay);
        let jittered = ceiling.mul_f64(draw.clamp(0.0, 1.0));
        match retry_after {
            Some(wait) => jittered.max(wait.min(self.retry_after_cap)),
            None => jittered,
        }
    }

    /// `delay` with a fresh random draw.
    pub fn delay_now(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        self.delay(retry, retry_after, rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: RetryPolicy = RetryPolicy {
        base: Duration::from_millis(100),
        max_delay: Duration::from_secs(10),
        retry_after_cap: Duration::from_secs(30),
    };

    #[test]
    fn ceiling_doubles_each_retry() {
        assert_eq!(P.delay(0, None, 1.0), Duration::from_millis(100));
        assert_eq!(P.delay(1, None, 1.0), Duration::from_millis(200));
        assert_eq!(P.delay(3, None, 1.0), Duration::from_millis(800));
    }

    #[test]
    fn ceiling_is_capped_at_max_delay() {
        assert_eq!(P.delay(20, None, 1.0), Duration::from_secs(10));
        assert_eq!(P.delay(u32::MAX, None, 1.0), Duration::from_secs(10));
    }

    #[test]
    fn jitter_is_full_range() {
        assert_eq!(P.delay(3, None, 0.0), Duration::ZERO);
        assert_eq!(P.delay(3, None, 0.5), Duration::from_millis(400));
    }

    #[test]
    fn retry_after_is_a_floor() {
        assert_eq!(
            P.delay(0, Some(Duration::from_secs(3)), 0.0),
            Duration::from_secs(3)
        );
    }

    #[test]
    fn retry_after_is_capped() {
        assert_eq!(
            P.delay(0, Some(Duration::from_secs(3600)), 0.0),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn draws_outside_unit_range_are_clamped() {
        assert_eq!(P.delay(0, None, 7.0), Duration::from_millis(100));
        assert_eq!(P.delay(0, None, -1.0), Duration::ZERO);
    }

    #[test]
    fn random_delays_stay_within_the_ceiling() {
        for retry in 0..10 {
            let d = P.delay_now(retry, None);
            assert!(d <= P.delay(retry, None, 1.0));
        }
    }
}
