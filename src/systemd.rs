//! Living under systemd: readiness and watchdog notifications (`sd_notify`), the decision whether
//! the pipeline deserves a watchdog ping, and logging to the journal when stderr is the journal.
//!
//! The daemon wires it like this:
//!
//! ```text
//! init_logging(&config.log.level)?;
//! let notifier = Notifier::from_env()?;              // a no-op outside systemd
//! ... load the model, open the source ...
//! notifier.ready()?;
//! if let Some(interval) = watchdog_interval()? {
//!     let mut gate = WatchdogGate::new(interval, Instant::now());
//!     // every frame: gate.frame_processed(Instant::now())
//!     // every gate.ping_period(): if gate.should_ping(Instant::now()) { notifier.watchdog()? }
//! }
//! notifier.stopping()?;                               // on SIGTERM, before draining
//! ```
//!
//! Decisions are pure (`journal_stream_matches`, `parse_watchdog`, `filter_spec`, `WatchdogGate`)
//! and tested without systemd; the I/O is one datagram per notification. Notifications are sent
//! to a socket path the caller can choose (`Notifier::connect`), so tests bind their own socket
//! instead of touching the process-global `NOTIFY_SOCKET`.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsFd;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

use log::{Log, Metadata, Record};
use sd_notify::NotifyState;
use systemd_journal_logger::JournalLog;

/// The identifier journal entries carry (`journalctl -t glimpse`), whatever the binary is called.
const SYSLOG_IDENTIFIER: &str = "glimpse";

#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("NOTIFY_SOCKET {socket}: cannot connect: {source}")]
    NotifyConnect { socket: String, source: io::Error },
    #[error("NOTIFY_SOCKET {socket}: cannot send {message:?}: {source}")]
    NotifySend {
        socket: String,
        message: String,
        source: io::Error,
    },
    #[error("environment variable {var}: {value:?} is not {expected}")]
    BadEnv {
        var: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("journald: cannot open the journal socket: {0}")]
    Journal(io::Error),
    #[error("logging: a logger is already installed in this process")]
    LoggerAlreadySet,
}

// ---------------------------------------------------------------------------------------------
// Journal detection and logging

/// True when `JOURNAL_STREAM` ("DEV:INODE", set by systemd for services whose output goes to the
/// journal) names the very file stderr is. Checking the inode, as systemd.exec(5) asks, keeps a
/// child that inherited the variable but had its stderr redirected from logging into the void.
pub fn under_systemd_journal() -> bool {
    let Some(journal_stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    // A dup of stderr is a safe way to fstat(2) it without unsafe code; it is closed at once.
    let Ok(stderr) = io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    let Ok(meta) = std::fs::File::from(stderr).metadata() else {
        return false;
    };
    journal_stream_matches(&journal_stream.to_string_lossy(), meta.dev(), meta.ino())
}

/// Whether a `JOURNAL_STREAM` value ("DEV:INODE", both decimal) names the file (`dev`, `ino`).
pub fn journal_stream_matches(journal_stream: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = journal_stream.split_once(':') else {
        return false;
    };
    matches!((d.parse::<u64>(), i.parse::<u64>()), (Ok(d), Ok(i)) if d == dev && i == ino)
}

/// The filter directives to log with: `RUST_LOG` when set and not empty (an operator debugging
/// one module, e.g. `RUST_LOG=glimpse::mqtt=trace`), else the configured level.
pub fn filter_spec(level: &str, rust_log: Option<&str>) -> String {
    match rust_log.map(str::trim) {
        Some(spec) if !spec.is_empty() => spec.to_string(),
        _ => level.trim().to_string(),
    }
}

/// Where `init_logging` sent the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    /// Native journal entries: priority, module, file and line as fields, no timestamps of ours.
    Journal,
    /// env_logger lines on stderr (a terminal, or a supervisor other than systemd).
    Stderr,
}

/// Installs the process logger: the journal's native protocol when stderr is the journal, else
/// env_logger on stderr. `level` is `log.level` from the config ("info", or env_logger
/// directives); `RUST_LOG` wins over it on both paths, with env_logger's syntax.
pub fn init_logging(level: &str) -> Result<LogTarget, SystemdError> {
    let spec = filter_spec(level, std::env::var("RUST_LOG").ok().as_deref());
    let mut builder = env_logger::Builder::new();
    builder.parse_filters(&spec);
    if under_systemd_journal() {
        // env_logger's Logger doubles as the filter, so both paths read directives the same way.
        let filter = builder.build();
        let journal = JournalLog::new()
            .map_err(SystemdError::Journal)?
            .with_syslog_identifier(SYSLOG_IDENTIFIER.to_string());
        let max_level = filter.filter();
        log::set_boxed_logger(Box::new(Filtered {
            filter,
            inner: journal,
        }))
        .map_err(|_| SystemdError::LoggerAlreadySet)?;
        log::set_max_level(max_level);
        Ok(LogTarget::Journal)
    } else {
        builder
            .try_init()
            .map_err(|_| SystemdError::LoggerAlreadySet)?;
        Ok(LogTarget::Stderr)
    }
}

/// A logger that passes on only the records an env_logger filter accepts (the journal logger
/// itself accepts everything).
struct Filtered<L> {
    filter: env_logger::Logger,
    inner: L,
}

impl<L: Log> Log for Filtered<L> {
    fn enabled(&self, metadata: &Metadata) -> bool {
        self.filter.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        if self.filter.matches(record) {
            self.inner.log(record);
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

// ---------------------------------------------------------------------------------------------
// sd_notify

/// Sends state changes to the service manager: `READY=1` once the model is loaded and the source
/// opened, `WATCHDOG=1` while frames flow, `STOPPING=1` on shutdown, `STATUS=` for
/// `systemctl status`. A disabled notifier (no `NOTIFY_SOCKET`: run from a shell) does nothing.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, String)>,
}

impl Notifier {
    /// The notifier systemd asks for through `NOTIFY_SOCKET`, or a disabled one when the variable
    /// is unset or empty. The variable is left in place: with `NotifyAccess=main` systemd ignores
    /// anything an `exec:` source's child might send.
    pub fn from_env() -> Result<Self, SystemdError> {
        match std::env::var("NOTIFY_SOCKET") {
            Ok(socket) if !socket.is_empty() => Self::connect(&socket),
            _ => Ok(Self::disabled()),
        }
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Self {
        Self { target: None }
    }

    /// A notifier for the datagram socket `socket`: a path, or `@name` for an abstract socket, as
    /// in `NOTIFY_SOCKET`.
    pub fn connect(socket: &str) -> Result<Self, SystemdError> {
        let connect_error = |source| SystemdError::NotifyConnect {
            socket: socket.to_string(),
            source,
        };
        let datagram = UnixDatagram::unbound().map_err(connect_error)?;
        match socket.strip_prefix('@') {
            Some(name) => {
                let addr =
                    SocketAddr::from_abstract_name(name.as_bytes()).map_err(connect_error)?;
                datagram.connect_addr(&addr).map_err(connect_error)?;
            }
            None => datagram.connect(socket).map_err(connect_error)?,
        }
        Ok(Self {
            target: Some((datagram, socket.to_string())),
        })
    }

    /// Whether notifications go anywhere.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// `READY=1`: startup is complete (Type=notify holds dependents until then).
    pub fn ready(&self) -> Result<(), SystemdError> {
        self.send(&[NotifyState::Ready])
    }

    /// `STATUS=...`: one line for `systemctl status`; control characters become spaces, so text
    /// that carries outside data (a label, a file name) cannot inject another assignment.
    pub fn status(&self, text: &str) -> Result<(), SystemdError> {
        let line = one_line(text);
        self.send(&[NotifyState::Status(&line)])
    }

    /// `WATCHDOG=1`: the pipeline is alive (ask `WatchdogGate::should_ping` first).
    pub fn watchdog(&self) -> Result<(), SystemdError> {
        self.send(&[NotifyState::Watchdog])
    }

    /// `STOPPING=1`: shutdown has begun; systemd stops expecting watchdog pings.
    pub fn stopping(&self) -> Result<(), SystemdError> {
        self.send(&[NotifyState::Stopping])
    }

    fn send(&self, states: &[NotifyState]) -> Result<(), SystemdError> {
        let Some((datagram, socket)) = &self.target else {
            return Ok(());
        };
        let message: String = states.iter().map(|s| format!("{s}\n")).collect();
        let send_error = |source| SystemdError::NotifySend {
            socket: socket.clone(),
            message: message.trim_end().to_string(),
            source,
        };
        let sent = datagram.send(message.as_bytes()).map_err(send_error)?;
        if sent != message.len() {
            return Err(send_error(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("only {sent} of {} bytes sent", message.len()),
            )));
        }
        Ok(())
    }
}

/// Text with every control character (newlines above all) replaced by a space.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Watchdog

/// The watchdog interval systemd expects pings within (`WatchdogSec=`), from `WATCHDOG_USEC`, or
/// None when there is no watchdog for this process.
pub fn watchdog_interval() -> Result<Option<Duration>, SystemdError> {
    parse_watchdog(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

/// `WATCHDOG_USEC` and `WATCHDOG_PID` as sd_watchdog_enabled(3) reads them: no interval (or 0)
/// means no watchdog; a `WATCHDOG_PID` naming another process (we are its child, e.g. a shell
/// wrapper in ExecStart) means the watchdog is not ours; an absent `WATCHDOG_PID` means it is.
pub fn parse_watchdog(
    usec: Option<&str>,
    pid: Option<&str>,
    own_pid: u32,
) -> Result<Option<Duration>, SystemdError> {
    let Some(usec) = usec else {
        return Ok(None);
    };
    let micros: u64 = usec.trim().parse().map_err(|_| SystemdError::BadEnv {
        var: "WATCHDOG_USEC",
        value: usec.to_string(),
        expected: "a number of microseconds",
    })?;
    if let Some(pid) = pid {
        let pid: u32 = pid.trim().parse().map_err(|_| SystemdError::BadEnv {
            var: "WATCHDOG_PID",
            value: pid.to_string(),
            expected: "a process id",
        })?;
        if pid != own_pid {
            return Ok(None);
        }
    }
    Ok((micros > 0).then(|| Duration::from_micros(micros)))
}

/// Decides whether the daemon deserves a watchdog ping: only if a frame went all the way through
/// the pipeline within the stall window. A process that is alive but stuck (camera gone quiet, a
/// wedged inference thread, a child that stopped writing) stops pinging, and systemd restarts it.
///
/// The window is half the watchdog interval, the same fraction systemd recommends for the ping
/// period: with `WatchdogSec=30s` a frame every 15 s is required (any camera delivers far more;
/// skipped "unchanged" frames count as processed), and a stall is acted on within
/// window + interval = 45 s of the last frame. Start-up counts as progress, so the source gets one
/// window to deliver its first frame after `READY=1`.
#[derive(Debug, Clone)]
pub struct WatchdogGate {
    interval: Duration,
    window: Duration,
    last_progress: Instant,
}

impl WatchdogGate {
    /// A gate for a watchdog `interval`, armed at `now`.
    pub fn new(interval: Duration, now: Instant) -> Self {
        Self {
            interval,
            window: interval / 2,
            last_progress: now,
        }
    }

    /// How often the daemon should ask `should_ping` (half the interval, as systemd advises).
    pub fn ping_period(&self) -> Duration {
        self.interval / 2
    }

    /// The stall window: how long without a processed frame before pings stop.
    pub fn stall_window(&self) -> Duration {
        self.window
    }

    /// Records that a frame was processed at `at`. Out-of-order events never move time back.
    pub fn frame_processed(&mut self, at: Instant) {
        self.last_progress = self.last_progress.max(at);
    }

    /// Whether to send `WATCHDOG=1` at `now`.
    pub fn should_ping(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_progress) <= self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn journal_stream_must_name_the_same_file() {
        assert!(journal_stream_matches("64769:12345", 64769, 12345));
        assert!(!journal_stream_matches("64769:12345", 64769, 12346));
        assert!(!journal_stream_matches("64769:12345", 1, 12345));
        assert!(!journal_stream_matches("", 0, 0));
        assert!(!journal_stream_matches("64769", 64769, 0));
        assert!(!journal_stream_matches("a:b", 0, 0));
        assert!(!journal_stream_matches("1:2:3", 1, 2));
    }

    #[test]
    fn a_redirected_stderr_is_not_the_journal() {
        // This test's stderr is cargo's pipe (or a terminal); a made-up JOURNAL_STREAM cannot match
        // it, and the decision must come from the inode, not from the variable being set.
        let meta = std::fs::File::from(io::stderr().as_fd().try_clone_to_owned().unwrap())
            .metadata()
            .unwrap();
        let wrong = format!("{}:{}", meta.dev(), meta.ino() + 1);
        assert!(!journal_stream_matches(&wrong, meta.dev(), meta.ino()));
        let right = format!("{}:{}", meta.dev(), meta.ino());
        assert!(journal_stream_matches(&right, meta.dev(), meta.ino()));
    }

    #[test]
    fn rust_log_wins_over_the_configured_level() {
        assert_eq!(filter_spec("info", None), "info");
        assert_eq!(filter_spec("warn", Some("glimpse=trace")), "glimpse=trace");
        assert_eq!(filter_spec("warn", Some("  ")), "warn");
        assert_eq!(filter_spec(" debug ", Some("")), "debug");
    }

    /// Records what reaches it, to test the filter in front of the journal logger.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl Log for Recorder {
        fn enabled(&self, _: &Metadata) -> bool {
            true
        }
        fn log(&self, record: &Record) {
            self.0.lock().unwrap().push(format!("{}", record.args()));
        }
        fn flush(&self) {}
    }

    #[test]
    fn the_journal_path_filters_like_env_logger() {
        let filtered = Filtered {
            filter: env_logger::Builder::new()
                .parse_filters("warn,glimpse::mqtt=debug")
                .build(),
            inner: Recorder::default(),
        };
        let emit = |level, target: &str, text: &str| {
            filtered.log(
                &Record::builder()
                    .level(level)
                    .target(target)
                    .args(format_args!("{text}"))
                    .build(),
            )
        };
        emit(
            log::Level::Info,
            "glimpse::daemon",
            "dropped: info elsewhere",
        );
        emit(log::Level::Warn, "glimpse::daemon", "kept: warn");
        emit(log::Level::Debug, "glimpse::mqtt::link", "kept: mqtt debug");
        emit(log::Level::Trace, "glimpse::mqtt", "dropped: mqtt trace");
        assert_eq!(
            *filtered.inner.0.lock().unwrap(),
            vec!["kept: warn", "kept: mqtt debug"]
        );
        assert_eq!(filtered.filter.filter(), log::LevelFilter::Debug);
    }

    fn bound_socket() -> (tempfile::TempDir, UnixDatagram, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        (dir, socket, path.to_string_lossy().into_owned())
    }

    fn receive(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = socket.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn notifier_sends_each_state_as_one_datagram() {
        let (_dir, socket, path) = bound_socket();
        let notifier = Notifier::connect(&path).unwrap();
        assert!(notifier.is_enabled());
        notifier.ready().unwrap();
        assert_eq!(receive(&socket), "READY=1\n");
        notifier.status("classifying camera:0").unwrap();
        assert_eq!(receive(&socket), "STATUS=classifying camera:0\n");
        notifier.watchdog().unwrap();
        assert_eq!(receive(&socket), "WATCHDOG=1\n");
        notifier.stopping().unwrap();
        assert_eq!(receive(&socket), "STOPPING=1\n");
    }

    #[test]
    fn status_text_cannot_inject_assignments() {
        let (_dir, socket, path) = bound_socket();
        let notifier = Notifier::connect(&path).unwrap();
        notifier.status("label cat\nREADY=1\r\tx").unwrap();
        assert_eq!(receive(&socket), "STATUS=label cat READY=1  x\n");
    }

    #[test]
    fn notifier_reaches_abstract_sockets() {
        let name = format!("glimpse-test-notify-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        Notifier::connect(&format!("@{name}"))
            .unwrap()
            .ready()
            .unwrap();
        assert_eq!(receive(&socket), "READY=1\n");
    }

    #[test]
    fn a_missing_socket_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent");
        let err = Notifier::connect(&path.to_string_lossy()).unwrap_err();
        assert!(
            err.to_string().contains("absent") && err.to_string().contains("NOTIFY_SOCKET"),
            "{err}"
        );
    }

    #[test]
    fn a_disabled_notifier_does_nothing() {
        let notifier = Notifier::disabled();
        assert!(!notifier.is_enabled());
        notifier.ready().unwrap();
        notifier.status("x").unwrap();
        notifier.watchdog().unwrap();
        notifier.stopping().unwrap();
    }

    #[test]
    fn watchdog_interval_follows_sd_watchdog_enabled() {
        let thirty = Some(Duration::from_secs(30));
        assert_eq!(parse_watchdog(None, None, 7).unwrap(), None);
        assert_eq!(parse_watchdog(Some("30000000"), None, 7).unwrap(), thirty);
        assert_eq!(
            parse_watchdog(Some("30000000"), Some("7"), 7).unwrap(),
            thirty
        );
        assert_eq!(
            parse_watchdog(Some("30000000"), Some("8"), 7).unwrap(),
            None
        );
        assert_eq!(parse_watchdog(Some("0"), Some("7"), 7).unwrap(), None);
        let err = parse_watchdog(Some("30s"), None, 7).unwrap_err();
        assert!(err.to_string().contains("WATCHDOG_USEC"), "{err}");
        let err = parse_watchdog(Some("1"), Some("x"), 7).unwrap_err();
        assert!(err.to_string().contains("WATCHDOG_PID"), "{err}");
    }

    #[test]
    fn gate_pings_while_frames_flow_and_stops_on_a_stall() {
        let start = Instant::now();
        let secs = Duration::from_secs;
        let mut gate = WatchdogGate::new(secs(30), start);
        assert_eq!(gate.ping_period(), secs(15));
        assert_eq!(gate.stall_window(), secs(15));
        // Start-up grace: one window for the first frame.
        assert!(gate.should_ping(start + secs(15)));
        assert!(!gate.should_ping(start + secs(16)));
        // Frames flowing: pings resume.
        gate.frame_processed(start + secs(20));
        assert!(gate.should_ping(start + secs(21)));
        assert!(gate.should_ping(start + secs(35)));
        // The pipeline stalls after its last frame at 20 s.
        assert!(!gate.should_ping(start + secs(36)));
        assert!(!gate.should_ping(start + secs(300)));
    }

    #[test]
    fn gate_ignores_time_going_backwards() {
        let start = Instant::now();
        let secs = Duration::from_secs;
        let mut gate = WatchdogGate::new(secs(10), start);
        gate.frame_processed(start + secs(8));
        gate.frame_processed(start + secs(2)); // a late report from another worker
        assert!(gate.should_ping(start + secs(13)));
        assert!(!gate.should_ping(start + secs(14)));
        // A `now` before the last frame (clock read before the frame's report) still pings.
        assert!(gate.should_ping(start + secs(1)));
    }
}
