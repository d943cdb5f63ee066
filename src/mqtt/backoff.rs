//! Reconnect delays: capped exponential backoff with jitter, pure.
//!
//! After a broker outage every device of a site reconnects at once; jitter spreads them out so the
//! broker is not hit by a synchronized wave. The randomness comes in as an argument (a fraction
//! in `0..1`) so the sequence is testable without a clock or an RNG.

use std::time::Duration;

/// Delay `n` (0-based) is `min(base * 2^n, max)`, then scaled into `[1 - jitter, 1]` of itself.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    jitter: f64,
    attempt: u32,
}

impl Backoff {
    /// `jitter` is the fraction of each delay that may be taken off (clamped to `0..=1`).
    pub fn new(base: Duration, max: Duration, jitter: f64) -> Backoff {
        Backoff {
            base,
            max: max.max(base),
            jitter: if jitter.is_finite() {
                jitter.clamp(0.0, 1.0)
            } else {
                0.0
            },
            attempt: 0,
        }
    }

    /// The delay before the next attempt; `random` is a uniform sample from `0..1`.
    pub fn next_delay(&mut self, random: f64) -> Duration {
        // 2^20 * base is far beyond any sane cap; stopping the exponent there avoids overflow.
        let factor = 1u32 << self.attempt.min(20);
        self.attempt = self.attempt.saturating_add(1);
        let full = self.base.saturating_mul(factor).min(self.max);
        let random = if random.is_finite() {
            random.clamp(0.0, 1.0)
        } else {
            0.0
        };
        full.mul_f64(1.0 - self.jitter * random)
    }

    /// Starts over from `base`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// A connection that had been established ended after `lasted`. Only one that stayed up for
    /// `stable` resets the backoff: a broker that accepts and then drops us at once (a storm)
    /// must not be retried at the base rate forever.
    pub fn connection_ended(&mut self, lasted: Duration, stable: Duration) {
        if lasted >= stable {
            self.reset();
        }
    }

    /// Consecutive failed attempts since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn doubles_up_to_the_cap() {
        let mut b = Backoff::new(ms(100), ms(1_000), 0.0);
        let delays: Vec<_> = (0..7).map(|_| b.next_delay(0.5)).collect();
        assert_eq!(
            delays,
            vec![
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1_000),
                ms(1_000),
                ms(1_000)
            ]
        );
        assert_eq!(b.attempts(), 7);
    }

    #[test]
    fn jitter_only_shortens_within_its_fraction() {
        let mut b = Backoff::new(ms(1_000), ms(1_000), 0.5);
        assert_eq!(b.next_delay(0.0), ms(1_000));
        assert_eq!(b.next_delay(1.0), ms(500));
        assert_eq!(b.next_delay(0.5), ms(750));
        // Out-of-range samples are clamped, not trusted.
        assert_eq!(b.next_delay(7.0), ms(500));
        assert_eq!(b.next_delay(f64::NAN), ms(1_000));
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new(ms(100), ms(10_000), 0.0);
        b.next_delay(0.0);
        b.next_delay(0.0);
        b.reset();
        assert_eq!(b.next_delay(0.0), ms(100));
    }

    #[test]
    fn only_a_stable_connection_resets() {
        let stable = Duration::from_secs(10);
        let mut b = Backoff::new(ms(100), ms(10_000), 0.0);
        let storm: Vec<_> = (0..4)
            .map(|_| {
                let delay = b.next_delay(0.0);
                b.connection_ended(ms(50), stable);
                delay
            })
            .collect();
        assert_eq!(storm, vec![ms(100), ms(200), ms(400), ms(800)]);
        b.connection_ended(stable, stable);
        assert_eq!(b.next_delay(0.0), ms(100));
    }

    #[test]
    fn never_overflows_after_many_attempts() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30), 0.0);
        for _ in 0..1_000 {
            assert!(b.next_delay(0.0) <= Duration::from_secs(30));
        }
        assert_eq!(b.next_delay(0.0), Duration::from_secs(30));
    }

    #[test]
    fn cap_below_base_is_raised_to_base() {
        let mut b = Backoff::new(ms(500), ms(100), 0.0);
        assert_eq!(b.next_delay(0.0), ms(500));
    }
}
