//! Capped exponential backoff with jitter, used by every source that reconnects (camera reopen,
//! exec child restart). Pure: it only computes delays; the caller sleeps. The random jitter comes
//! from a seeded generator so tests are deterministic.
//!
//! Why jitter at all: several daemons on one host (or one daemon with several sources) that lose
//! the same USB hub would otherwise all retry in lock step.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Duration;

/// Delays `base, 2*base, 4*base, ...` capped at `max`, each shortened by a random fraction of at
/// most `jitter` (so a delay never exceeds the cap, and the envelope still grows).
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    jitter: f64,
    attempt: u32,
    rng: ChaCha8Rng,
}

impl Backoff {
    /// Default jitter fraction: delays fall in `[0.8, 1.0] * nominal`.
    pub const DEFAULT_JITTER: f64 = 0.2;

    /// A backoff seeded from the OS entropy source. `base` is clamped to `max`.
    pub fn new(base: Duration, max: Duration) -> Self {
        Self::with_seed(base, max, Self::DEFAULT_JITTER, rand::random())
    }

    /// A reproducible backoff (tests). `jitter` is clamped to `[0, 1]`.
    pub fn with_seed(base: Duration, max: Duration, jitter: f64, seed: u64) -> Self {
        let jitter = if jitter.is_finite() {
            jitter.clamp(0.0, 1.0)
        } else {
            0.0
        };
        Self {
            base: base.min(max),
            max,
            jitter,
            attempt: 0,
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// The delay to wait before the next attempt; each call doubles the nominal delay up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let nominal = self.nominal(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        if self.jitter == 0.0 {
            return nominal;
        }
        let cut: f64 = self.rng.gen_range(0.0..=self.jitter);
        nominal.mul_f64(1.0 - cut)
    }

    /// Forget past failures: the next delay is `base` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// How many delays were handed out since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The cap.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// `base * 2^attempt`, capped, without overflow (the shift saturates long before 2^32).
    fn nominal(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.base
            .checked_mul(factor)
            .map_or(self.max, |d| d.min(self.max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn doubles_then_caps_without_jitter() {
        let mut b = Backoff::with_seed(ms(100), ms(1000), 0.0, 1);
        let got: Vec<_> = (0..7).map(|_| b.next_delay()).collect();
        assert_eq!(
            got,
            vec![
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1000),
                ms(1000),
                ms(1000)
            ]
        );
        assert_eq!(b.attempt(), 7);
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::with_seed(ms(50), ms(10_000), 0.0, 1);
        for _ in 0..5 {
            b.next_delay();
        }
        b.reset();
        assert_eq!(b.attempt(), 0);
        assert_eq!(b.next_delay(), ms(50));
    }

    #[test]
    fn jitter_stays_within_bounds_and_below_cap() {
        let mut b = Backoff::with_seed(ms(100), ms(3000), 0.5, 42);
        for attempt in 0..40u32 {
            let nominal = ms(100)
                .checked_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
                .map_or(ms(3000), |d| d.min(ms(3000)));
            let d = b.next_delay();
            assert!(d <= nominal, "attempt {attempt}: {d:?} > {nominal:?}");
            assert!(
                d >= nominal.mul_f64(0.5),
                "attempt {attempt}: {d:?} < half of {nominal:?}"
            );
        }
    }

    #[test]
    fn jitter_actually_varies_and_is_seeded() {
        let run = |seed| {
            let mut b = Backoff::with_seed(ms(1000), ms(1000), 0.5, seed);
            (0..8).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        let a = run(7);
        assert_eq!(a, run(7), "same seed, same delays");
        assert!(a.windows(2).any(|w| w[0] != w[1]), "jitter produced {a:?}");
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let mut b = Backoff::with_seed(Duration::from_secs(1), Duration::from_secs(30), 0.0, 1);
        for _ in 0..200 {
            b.next_delay();
        }
        assert_eq!(b.next_delay(), Duration::from_secs(30));
    }

    #[test]
    fn base_above_cap_is_clamped() {
        let mut b = Backoff::with_seed(ms(500), ms(200), 0.0, 1);
        assert_eq!(b.next_delay(), ms(200));
    }
}
