//! Which parts of the daemon are alive and making progress, so that a failure ends in a restart
//! rather than a silent stop: a thread that panics is reported to the daemon's loop, which logs
//! one line and exits 1 (systemd restarts it); a part that is alive but wedged stops the watchdog
//! pings (systemd kills and restarts it).
//!
//! Threads that must not die are started with [`spawn_watched`]; a long-running worker marks the
//! time it spends on one job with [`Busy::start`], and [`Busy::stalled`] says when one job has
//! taken longer than any job should.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

/// A watched part that ended unexpectedly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Death {
    /// The thread or task (`infer`, `learner`, ...).
    pub part: String,
    /// One line: the panic message and where it happened.
    pub reason: String,
}

/// Where deaths are reported; cloned into every watched thread.
pub type DeathReporter = mpsc::UnboundedSender<Death>;

/// Starts a named thread whose panic is reported as a [`Death`] (with the panic message) instead
/// of ending it silently. A normal return is not reported: each part ends normally only when the
/// daemon stops it, or says why through its own channel (a finite replay that ended).
pub fn spawn_watched<F>(
    name: &str,
    deaths: DeathReporter,
    body: F,
) -> std::io::Result<JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    let part = name.to_string();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            if let Err(payload) = std::panic::catch_unwind(AssertUnwindSafe(body)) {
                let _ = deaths.send(Death {
                    part,
                    reason: format!("panicked: {}", panic_message(payload.as_ref())),
                });
            }
        })
}

/// The text of a panic payload (`panic!("...")` carries a `&str` or a `String`).
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let text = if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    };
    one_line(&text)
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Logs every panic as one line (thread, message, file:line) instead of the default multi-line
/// text on stderr, so the journal shows why the daemon is about to exit.
pub fn log_panics_in_one_line() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let location = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        log::error!(
            "thread '{}' panicked{location}: {}",
            thread.name().unwrap_or("?"),
            panic_message(info.payload())
        );
    }));
}

/// Monotonic nanoseconds since the first call, never 0 (0 means idle below).
fn now_nanos(now: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    (now.saturating_duration_since(epoch).as_nanos() as u64).max(1)
}

/// When a worker started the job it is on (shared between the worker and the watchdog).
#[derive(Debug, Clone, Default)]
pub struct Busy(Arc<AtomicU64>);

/// Marks the worker busy until dropped.
pub struct BusyGuard(Arc<AtomicU64>);

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.store(0, Ordering::Relaxed);
    }
}

impl Busy {
    /// Marks the start of one job; the job ends when the guard is dropped.
    pub fn start(&self) -> BusyGuard {
        self.0.store(now_nanos(Instant::now()), Ordering::Relaxed);
        BusyGuard(self.0.clone())
    }

    /// How long the current job has run at `now`, if there is one.
    pub fn busy_for(&self, now: Instant) -> Option<Duration> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            since => Some(Duration::from_nanos(now_nanos(now).saturating_sub(since))),
        }
    }

    /// True when one job has run longer than `limit` at `now`.
    pub fn stalled(&self, now: Instant, limit: Duration) -> bool {
        self.busy_for(now).is_some_and(|d| d > limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_thread_is_reported_with_its_message() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let handle = spawn_watched("doomed", tx.clone(), || panic!("boom\nsecond line"))
            .unwrap_or_else(|e| panic!("{e}"));
        let _ = handle.join();
        let death = rx
            .try_recv()
            .unwrap_or_else(|e| panic!("no death reported: {e}"));
        assert_eq!(death.part, "doomed");
        assert_eq!(death.reason, "panicked: boom second line");
        // A thread that returns normally reports nothing.
        let handle = spawn_watched("fine", tx, || {}).unwrap_or_else(|e| panic!("{e}"));
        let _ = handle.join();
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn busy_measures_the_current_job_only() {
        let busy = Busy::default();
        let t0 = Instant::now();
        assert_eq!(busy.busy_for(t0), None);
        assert!(!busy.stalled(t0 + Duration::from_secs(3600), Duration::from_secs(1)));
        let guard = busy.start();
        let later = Instant::now() + Duration::from_secs(10);
        assert!(busy.stalled(later, Duration::from_secs(5)));
        assert!(!busy.stalled(later, Duration::from_secs(60)));
        drop(guard);
        assert!(!busy.stalled(later, Duration::from_secs(5)));
    }
}
