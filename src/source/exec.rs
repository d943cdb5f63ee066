//! `exec:` sources: runs `sh -c <command>` and reads an MJPEG stream from its stdout. This is how
//! glimpse reads cameras nokhwa cannot (Jetson CSI sensors through `gst-launch-1.0
//! -q nvarguscamerasrc ! jpegenc ! fdsink`; `-q` keeps its progress lines off stdout, though the
//! splitter would skip them), network streams through ffmpeg, and test patterns.
//!
//! The child runs in its own process group so a pipeline (`a | b`) is stopped as a whole, first
//! with SIGTERM (gstreamer's camera daemon wants a chance to release the sensor), then SIGKILL.
//! When the child exits or closes stdout, the source logs it and starts it again after a backoff
//! that resets once a child has run fine for a while; its stderr goes to the log, line by line.
//!
//! At shutdown the daemon does not wait for the capture thread (a child that writes nothing
//! blocks its read forever): it calls the source's [`Interrupt`], which signals the child's
//! group from the stopping thread and forbids restarts, so no child outlives the daemon.

use super::mjpeg::MjpegSplitter;
use super::{
    Backoff, Frame, FrameData, FrameSource, FrameStamper, HealthProbe, HealthState, Interrupt,
    Sleeper, SourceError,
};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// A child that ran at least this long before failing resets the backoff.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);
/// How long a child gets between SIGTERM and SIGKILL.
const TERM_GRACE: Duration = Duration::from_millis(1000);
/// How long a dead child's stderr reader gets to finish.
const STDERR_DRAIN: Duration = Duration::from_millis(500);
/// Warn once per child when this much output held no JPEG.
const GARBAGE_WARN_BYTES: u64 = 1 << 20;

/// One running child.
struct Running {
    child: Child,
    stdout: ChildStdout,
    started: Instant,
    frames: u64,
    warned_garbage: bool,
    /// Disconnects when the stderr reader has seen EOF (every line is in the log by then).
    stderr_done: Option<mpsc::Receiver<()>>,
}

/// An MJPEG stream read from a shell command's stdout.
pub struct ExecSource {
    label: String,
    command: String,
    running: Option<Running>,
    spawned_once: bool,
    splitter: MjpegSplitter,
    pending: VecDeque<Vec<u8>>,
    backoff: Backoff,
    stable_after: Duration,
    stamper: FrameStamper,
    probe: HealthProbe,
    sleeper: Sleeper,
    /// The child's last stderr line, quoted in health when it dies.
    last_stderr: Arc<Mutex<String>>,
    read_buf: Vec<u8>,
    /// What another thread needs to stop the child (see [`ExecInterrupt`]).
    shared: Arc<ExecInterrupt>,
}

/// Stops an [`ExecSource`] from another thread: marks it stopping (no more restarts) and signals
/// the running child's process group.
#[derive(Default)]
pub struct ExecInterrupt {
    /// The running child's group id. Cleared, under this lock, before the child is reaped, so a
    /// signal sent while holding it can never reach a reused pid.
    group: Mutex<Option<libc::pid_t>>,
    stopping: AtomicBool,
}

impl Interrupt for ExecInterrupt {
    fn interrupt(&self, force: bool) {
        self.stopping.store(true, Ordering::SeqCst);
        let group = self.group.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pgid) = *group {
            signal_group(pgid, if force { libc::SIGKILL } else { libc::SIGTERM });
        }
    }
}

impl ExecInterrupt {
    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    fn set_group(&self, pid: Option<u32>) {
        let mut group = self.group.lock().unwrap_or_else(|p| p.into_inner());
        *group = pid.and_then(|p| libc::pid_t::try_from(p).ok());
    }
}

impl ExecSource {
    /// Starts the command. Fails only when `sh` itself cannot be started; a command that exits
    /// is restarted by `next_frame`.
    pub fn spawn(command: &str, backoff: Backoff) -> Result<Self, SourceError> {
        let mut source = Self {
            label: format!("exec:{command}"),
            command: command.to_string(),
            running: None,
            spawned_once: false,
            splitter: MjpegSplitter::default(),
            pending: VecDeque::new(),
            backoff,
            stable_after: STABLE_AFTER,
            stamper: FrameStamper::default(),
            probe: HealthProbe::default(),
            sleeper: super::real_sleeper(),
            last_stderr: Arc::new(Mutex::new(String::new())),
            read_buf: vec![0; 64 * 1024],
            shared: Arc::new(ExecInterrupt::default()),
        };
        source.start_child().map_err(|source| SourceError::Spawn {
            command: command.to_string(),
            source,
        })?;
        Ok(source)
    }

    /// Overrides how long a child must run before a failure resets the backoff.
    pub fn with_stable_after(mut self, stable_after: Duration) -> Self {
        self.stable_after = stable_after;
        self
    }

    /// The child's pid, while one runs.
    pub fn pid(&self) -> Option<u32> {
        self.running.as_ref().map(|r| r.child.id())
    }

    fn start_child(&mut self) -> std::io::Result<()> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&self.command)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()?;
        let (Some(stdout), stderr) = (child.stdout.take(), child.stderr.take()) else {
            // Cannot happen with Stdio::piped; do not leave the child behind if it does.
            stop_group(&mut child);
            return Err(std::io::Error::other("child has no stdout pipe"));
        };
        self.shared.set_group(Some(child.id()));
        let stderr_done = stderr.and_then(|e| self.forward_stderr(e, child.id()));
        if self.spawned_once {
            self.probe.update(|h| h.restarts += 1);
        }
        self.spawned_once = true;
        log::info!("{}: started (pid {})", self.label, child.id());
        self.splitter.reset();
        self.running = Some(Running {
            child,
            stdout,
            started: Instant::now(),
            frames: 0,
            warned_garbage: false,
            stderr_done,
        });
        Ok(())
    }

    /// A thread per child copies its stderr to the log; it ends when the pipe closes. The
    /// returned receiver disconnects when it has.
    fn forward_stderr(
        &self,
        stderr: std::process::ChildStderr,
        pid: u32,
    ) -> Option<mpsc::Receiver<()>> {
        let label = self.label.clone();
        let last = Arc::clone(&self.last_stderr);
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name(format!("exec-stderr-{pid}"))
            .spawn(move || {
                let _done = done_tx;
                let mut reader = BufReader::new(stderr);
                let mut line = Vec::new();
                // read_until + lossy: a child may print anything, not only UTF-8.
                while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                    let text = String::from_utf8_lossy(&line).trim_end().to_string();
                    if !text.is_empty() {
                        log::warn!("{label} [pid {pid}]: {text}");
                        if let Ok(mut l) = last.lock() {
                            *l = text;
                        }
                    }
                    line.clear();
                }
            });
        match spawned {
            Ok(_) => Some(done_rx),
            Err(e) => {
                log::warn!("{}: cannot start the stderr reader: {e}", self.label);
                None
            }
        }
    }

    /// The child ended (EOF or read error): reap it, record why, wait out the backoff.
    fn child_ended(&mut self, why: &str) {
        let Some(mut run) = self.running.take() else {
            return;
        };
        drop(run.stdout);
        self.shared.set_group(None);
        let status = stop_group(&mut run.child);
        if self.shared.stopping() {
            log::info!("{}: stopped, child {}", self.label, describe_status(status));
            return;
        }
        let ran = run.started.elapsed();
        // The group is gone, so stderr is at EOF: let the reader log the last lines first (bounded,
        // in case something outside the group inherited the pipe).
        if let Some(done) = run.stderr_done.take() {
            let _ = done.recv_timeout(STDERR_DRAIN);
        }
        let stderr = self
            .last_stderr
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default();
        let mut error = format!(
            "{why}; child {} after {:.1}s and {} frames",
            describe_status(status),
            ran.as_secs_f64(),
            run.frames
        );
        if !stderr.is_empty() {
            error.push_str(&format!("; last stderr: {stderr}"));
        }
        if run.frames > 0 && ran >= self.stable_after {
            self.backoff.reset();
        }
        self.splitter.reset();
        let delay = self.backoff.next_delay();
        log::warn!(
            "{}: {error}; restarting in {:.1}s",
            self.label,
            delay.as_secs_f64()
        );
        self.probe.set_state(HealthState::Reconnecting {
            attempt: self.backoff.attempt(),
            last_error: error,
        });
        (self.sleeper)(delay);
    }
}

impl FrameSource for ExecSource {
    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        loop {
            if self.shared.stopping() {
                // Shutdown: the child was signalled from the stopping thread; end, do not restart.
                if let Some(mut run) = self.running.take() {
                    self.shared.set_group(None);
                    stop_group(&mut run.child);
                }
                return Ok(None);
            }
            if let Some(jpeg) = self.pending.pop_front() {
                return Ok(Some(
                    self.stamper.stamp(FrameData::Encoded(jpeg), &self.probe),
                ));
            }
            let Some(run) = self.running.as_mut() else {
                if let Err(e) = self.start_child() {
                    let delay = self.backoff.next_delay();
                    log::warn!("{}: cannot start: {e}", self.label);
                    self.probe.set_state(HealthState::Reconnecting {
                        attempt: self.backoff.attempt(),
                        last_error: format!("cannot start `sh -c`: {e}"),
                    });
                    (self.sleeper)(delay);
                }
                continue;
            };
            match run.stdout.read(&mut self.read_buf) {
                Ok(0) => self.child_ended("stdout closed"),
                Ok(n) => {
                    let frames = self.splitter.push(&self.read_buf[..n]);
                    run.frames += frames.len() as u64;
                    self.pending.extend(frames);
                    let stats = self.splitter.stats();
                    if stats.frames == 0
                        && stats.garbage_bytes >= GARBAGE_WARN_BYTES
                        && !run.warned_garbage
                    {
                        run.warned_garbage = true;
                        log::warn!(
                            "{}: {} bytes of output and no JPEG frame yet: does the command \
                             write MJPEG to stdout (e.g. ffmpeg `-f mjpeg -`)?",
                            self.label,
                            stats.garbage_bytes
                        );
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => self.child_ended(&format!("reading stdout failed: {e}")),
            }
        }
    }

    fn describe(&self) -> String {
        let restarts = self.probe.get().restarts;
        match self.pid() {
            Some(pid) => format!("{} (pid {pid}, {restarts} restarts)", self.label),
            None => format!("{} (not running, {restarts} restarts)", self.label),
        }
    }

    fn health_probe(&self) -> HealthProbe {
        self.probe.clone()
    }

    fn interrupter(&self) -> Option<Arc<dyn Interrupt>> {
        Some(self.shared.clone())
    }
}

impl Drop for ExecSource {
    fn drop(&mut self) {
        if let Some(mut run) = self.running.take() {
            drop(run.stdout);
            self.shared.set_group(None);
            let status = stop_group(&mut run.child);
            log::info!("{}: stopped, child {}", self.label, describe_status(status));
        }
    }
}

/// Stops the child's whole process group (SIGTERM, grace, SIGKILL) and reaps the child.
/// Signals go out before the reap on purpose: until it is reaped the child's pid, which is the
/// group id, cannot be reused, so the signals cannot hit a stranger.
fn stop_group(child: &mut Child) -> Option<ExitStatus> {
    let Ok(pgid) = libc::pid_t::try_from(child.id()) else {
        return child.kill().ok().and_then(|()| child.wait().ok());
    };
    signal_group(pgid, libc::SIGTERM);
    let deadline = Instant::now() + TERM_GRACE;
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(status)) => {
                // The leader is gone; stragglers in its group get no grace.
                signal_group(pgid, libc::SIGKILL);
                return Some(status);
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => break,
        }
    }
    signal_group(pgid, libc::SIGKILL);
    child.wait().ok()
}

fn signal_group(pgid: libc::pid_t, signal: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions; a negative pid names a process group.
    // ESRCH (group already empty) is the expected outcome once everything exited.
    unsafe {
        libc::kill(-pgid, signal);
    }
}

/// "exited with status 1", "killed by signal 15", "status unknown".
fn describe_status(status: Option<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            _ => "ended".into(),
        },
        None => "status unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast_backoff() -> Backoff {
        Backoff::with_seed(Duration::from_millis(1), Duration::from_millis(4), 0.0, 1)
    }

    /// A tiny but structurally complete JPEG (enough for the splitter, not for a decoder).
    const TINY: &str = r"\377\330\377\340\000\004AB\377\332\000\002\001\002\377\331";

    #[test]
    fn splits_frames_from_a_shell_command() {
        let cmd = format!("printf '{TINY}{TINY}'; sleep 30");
        let mut s = ExecSource::spawn(&cmd, fast_backoff()).unwrap_or_else(|e| panic!("{e}"));
        let a = s.next_frame().ok().flatten();
        let b = s.next_frame().ok().flatten();
        assert_eq!(a.map(|f| f.id), Some(0));
        assert_eq!(b.as_ref().map(|f| f.id), Some(1));
        let expect = b"\xFF\xD8\xFF\xE0\x00\x04AB\xFF\xDA\x00\x02\x01\x02\xFF\xD9".to_vec();
        assert_eq!(b.map(|f| f.data), Some(FrameData::Encoded(expect)));
        assert!(s.describe().contains("pid"), "{}", s.describe());
    }

    #[test]
    fn exiting_child_is_restarted_and_health_says_why() {
        let cmd = format!("printf '{TINY}'; echo bye >&2; exit 3");
        let mut s = ExecSource::spawn(&cmd, fast_backoff()).unwrap_or_else(|e| panic!("{e}"));
        let probe = s.health_probe();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        s.sleeper = Box::new(move |_| {
            if let Ok(mut v) = log.lock() {
                v.push(probe.get());
            }
        });
        let ids: Vec<u64> = (0..3)
            .filter_map(|_| s.next_frame().ok().flatten().map(|f| f.id))
            .collect();
        assert_eq!(ids, [0, 1, 2]);
        let h = s.health();
        assert_eq!(h.restarts, 2);
        assert_eq!(h.state, HealthState::Ok);
        let seen = seen.lock().map(|v| v.clone()).unwrap_or_default();
        let Some(HealthState::Reconnecting {
            attempt,
            last_error,
        }) = seen.first().map(|h| h.state.clone())
        else {
            panic!("no reconnect seen: {seen:?}");
        };
        assert_eq!(attempt, 1);
        assert!(last_error.contains("exited with status 3"), "{last_error}");
        assert!(last_error.contains("last stderr: bye"), "{last_error}");
    }

    #[test]
    fn drop_kills_the_whole_process_group() {
        let s = ExecSource::spawn("sleep 60 | sleep 60", fast_backoff())
            .unwrap_or_else(|e| panic!("{e}"));
        let Some(pid) = s.pid() else {
            panic!("no child");
        };
        let members = wait_for(|| live_group_members(pid), |m| m.len() == 3);
        assert_eq!(members.len(), 3, "sh and two sleeps: {members:?}");
        drop(s);
        // SIGKILL is delivered asynchronously, and killed members linger as zombies until
        // init reaps them: wait (bounded) for the group to hold no live process.
        let alive = wait_for(|| live_group_members(pid), Vec::is_empty);
        assert!(alive.is_empty(), "group {pid} survived the drop: {alive:?}");
    }

    #[test]
    fn interrupt_ends_a_blocked_read_and_prevents_a_restart() {
        // A child that never writes: `next_frame` blocks in read(2) until the group is signalled.
        let mut s = ExecSource::spawn("sleep 60 | sleep 60", fast_backoff())
            .unwrap_or_else(|e| panic!("{e}"));
        let Some(pid) = s.pid() else {
            panic!("no child");
        };
        let members = wait_for(|| live_group_members(pid), |m| m.len() == 3);
        assert_eq!(members.len(), 3, "sh and two sleeps: {members:?}");
        let Some(interrupter) = s.interrupter() else {
            panic!("an exec source must be interruptible");
        };
        let reader = std::thread::spawn(move || {
            let frame = s.next_frame().map(|f| f.map(|f| f.id));
            (frame, s.pid(), s.health().restarts)
        });
        std::thread::sleep(Duration::from_millis(100));
        interrupter.interrupt(false);
        let alive = wait_for(|| live_group_members(pid), Vec::is_empty);
        assert!(
            alive.is_empty(),
            "group {pid} survived the interrupt: {alive:?}"
        );
        let Ok((frame, running, restarts)) = reader.join() else {
            panic!("the reader thread panicked");
        };
        assert!(matches!(frame, Ok(None)), "{frame:?}");
        assert_eq!(running, None, "no child may run after an interrupt");
        assert_eq!(restarts, 0, "no restart after an interrupt");
    }

    /// Polls `get` until `done` holds or 5 s pass; returns the last value.
    fn wait_for<T>(get: impl Fn() -> T, done: impl Fn(&T) -> bool) -> T {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let v = get();
            if done(&v) || Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Pids of processes in group `pgid` that are not zombies, from /proc/<pid>/stat.
    fn live_group_members(pgid: u32) -> Vec<u32> {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            panic!("/proc is not readable");
        };
        entries
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                    return false;
                };
                // Fields after the parenthesised command: state ppid pgrp ...
                let Some((_, rest)) = stat.rsplit_once(") ") else {
                    return false;
                };
                let fields: Vec<&str> = rest.split_whitespace().collect();
                fields.first() != Some(&"Z") && fields.get(2) == Some(&pgid.to_string().as_str())
            })
            .collect()
    }

    #[test]
    fn status_descriptions() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            describe_status(Some(ExitStatus::from_raw(3 << 8))),
            "exited with status 3"
        );
        assert_eq!(
            describe_status(Some(ExitStatus::from_raw(9))),
            "killed by signal 9"
        );
        assert_eq!(describe_status(None), "status unknown");
    }
}
