//! Rolling measurements for the stats topic: per-stage latency windows (median, p95) and event
//! rates (frames per second in and out), bounded in memory whatever the uptime.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The last `capacity` durations of one stage.
#[derive(Debug, Clone)]
pub struct LatencyWindow {
    samples: VecDeque<f32>,
    capacity: usize,
}

impl LatencyWindow {
    pub fn new(capacity: usize) -> Self {
        Self {
            samples: VecDeque::with_capacity(capacity),
            capacity: capacity.max(1),
        }
    }

    pub fn record(&mut self, duration: Duration) {
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
        }
        self.samples.push_back(duration.as_secs_f32() * 1e3);
    }

    /// (median, p95) in milliseconds; `None` before the first sample.
    pub fn median_p95_ms(&self) -> Option<(f32, f32)> {
        if self.samples.is_empty() {
            return None;
        }
        let mut sorted: Vec<f32> = self.samples.iter().copied().collect();
        sorted.sort_by(f32::total_cmp);
        let at = |q: f32| sorted[((sorted.len() - 1) as f32 * q).round() as usize];
        Some((at(0.5), at(0.95)))
    }
}

/// Events per second over the interval since the last `rate` call.
#[derive(Debug, Clone)]
pub struct RateMeter {
    count: u64,
    since: Instant,
}

impl RateMeter {
    pub fn new(now: Instant) -> Self {
        Self {
            count: 0,
            since: now,
        }
    }

    pub fn tick(&mut self) {
        self.count += 1;
    }

    /// Rate since the previous call, then starts a new interval.
    pub fn rate(&mut self, now: Instant) -> f32 {
        let secs = now.saturating_duration_since(self.since).as_secs_f32();
        let rate = if secs > 0.0 {
            self.count as f32 / secs
        } else {
            0.0
        };
        self.count = 0;
        self.since = now;
        rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_is_bounded_and_reports_median_and_p95() {
        let mut w = LatencyWindow::new(100);
        assert_eq!(w.median_p95_ms(), None);
        for ms in 1..=300 {
            w.record(Duration::from_millis(ms));
        }
        let (median, p95) = w.median_p95_ms().unwrap();
        assert!((median - 250.0).abs() <= 1.0, "{median}");
        assert!((p95 - 296.0).abs() <= 1.0, "{p95}");
        assert_eq!(w.samples.len(), 100);
    }

    #[test]
    fn rate_meter_counts_per_interval() {
        let start = Instant::now();
        let mut m = RateMeter::new(start);
        for _ in 0..30 {
            m.tick();
        }
        let rate = m.rate(start + Duration::from_secs(2));
        assert!((rate - 15.0).abs() < 1e-3);
        assert_eq!(m.rate(start + Duration::from_secs(3)), 0.0);
    }
}
