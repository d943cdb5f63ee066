//! Failures end in a restart, never in a silent stop (issue 11): the real `glimpse run` with a
//! real Mosquitto per test. A thread or task that dies (injected with `GLIMPSE_FAULT`, which
//! only debug builds honour: src/fault.rs) ends the process with exit code 1 and one log line
//! saying why; a wedged learner stops the watchdog pings; an `exec:` child does not outlive a
//! SIGTERM; a damaged store is set aside and rebuilt at start; and `check-config` refuses what
//! `run` refuses.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{Mosquitto, Subscriber, WAIT};

const GLIMPSE: &str = env!("CARGO_BIN_EXE_glimpse");
const DEVICE: &str = "life";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn topic(kind: &str) -> String {
    format!("glimpse/{DEVICE}/{kind}")
}

/// A config in `dir` for `source` (the body of `[source]`), plus `extra` sections.
fn config(dir: &Path, broker: &str, source: &str, extra: &str) -> PathBuf {
    let path = dir.join("glimpse.toml");
    let text = format!(
        "state_dir = '{state}'\n[model]\nmanifest = '{manifest}'\nthreads = 1\n\
         [source]\n{source}\n[mqtt]\nurl = '{broker}'\ndevice_id = '{DEVICE}'\n\
         stats_interval_s = 1\nreconnect_backoff_max_s = 1\n{extra}\n",
        state = dir.join("state").display(),
        manifest = repo().join("models/mobilenet_v2_1.0_224.toml").display(),
    );
    std::fs::write(&path, text).expect("write config");
    path
}

fn looping_replay(fps: f32) -> String {
    format!(
        "uri = 'dir:{}'\nreplay_fps = {fps:.1}\nreplay_loop = true",
        repo().join("../shared/testdata/imagenet").display()
    )
}

/// A `glimpse` command with no inherited configuration variables.
fn glimpse(args: &[&str]) -> Command {
    let mut command = Command::new(GLIMPSE);
    command.args(args).current_dir(repo());
    for (key, _) in std::env::vars() {
        if key.starts_with("GLIMPSE_") {
            command.env_remove(key);
        }
    }
    for key in [
        "RUST_LOG",
        "JOURNAL_STREAM",
        "NOTIFY_SOCKET",
        "WATCHDOG_USEC",
    ] {
        command.env_remove(key);
    }
    command
}

struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn start(dir: &Path, config: &Path, env: &[(&str, &str)]) -> Daemon {
        let log = dir.join("daemon.log");
        let child = glimpse(&["run", "--config"])
            .arg(config)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start glimpse run");
        Daemon { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "still running after {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
    }

    /// Asserts the daemon exited 1 and logged `reason` on one line.
    fn assert_failed_with(&mut self, reason: &str) {
        let status = self.wait_exit(WAIT * 3);
        let log = self.log();
        assert_eq!(status.code(), Some(1), "{status}:\n{log}");
        let line = log
            .lines()
            .find(|l| l.contains(reason))
            .unwrap_or_else(|| panic!("no line with {reason:?}:\n{log}"));
        assert!(
            line.contains("exiting so that systemd restarts"),
            "{line}\n{log}"
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_online(sub: &Subscriber, daemon: &Daemon) {
    sub.wait_for(WAIT * 3, |m| {
        m.topic == topic("availability") && m.payload == b"online"
    })
    .unwrap_or_else(|| panic!("never online:\n{}", daemon.log()));
}

#[test]
fn a_panicking_inference_thread_ends_the_daemon_with_exit_1() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), &broker.url(), &looping_replay(5.0), "");
    let mut daemon = Daemon::start(dir.path(), &config, &[("GLIMPSE_FAULT", "infer-panic")]);
    daemon.assert_failed_with("infer thread panicked: injected fault infer-panic");
}

#[test]
fn a_panicking_learner_ends_the_daemon_with_exit_1() {
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port(), &[&topic("#")]);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), &broker.url(), &looping_replay(1.0), "");
    let mut daemon = Daemon::start(dir.path(), &config, &[("GLIMPSE_FAULT", "learner-panic")]);
    wait_online(&sub, &daemon);
    sub.publish(&topic("cmd/labels"), Vec::new(), false);
    daemon.assert_failed_with("learner thread panicked: injected fault learner-panic");
}

#[test]
fn an_ended_mqtt_task_ends_the_daemon_with_exit_1() {
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port(), &[&topic("#")]);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(dir.path(), &broker.url(), &looping_replay(1.0), "");
    let mut daemon = Daemon::start(dir.path(), &config, &[("GLIMPSE_FAULT", "mqtt-poll-end")]);
    wait_online(&sub, &daemon);
    sub.publish(&topic("cmd/labels"), Vec::new(), false);
    daemon.assert_failed_with("the MQTT link task ended");
    // No clean goodbye: the broker tells everyone the device is gone.
    sub.expect(&topic("availability"), b"offline");
}

#[test]
fn a_wedged_learner_stops_the_watchdog_pings_while_frames_flow() {
    assert_wedge_stops_the_pings("learner-stall", "the learner has been on one job");
}

#[test]
fn a_wedged_mqtt_poll_task_stops_the_watchdog_pings_while_frames_flow() {
    assert_wedge_stops_the_pings("mqtt-poll-hang", "the MQTT link has not polled");
}

/// Starts a daemon under a fake systemd watchdog with `fault` armed, checks it pings while
/// healthy, wedges the part with a message, and checks the pings stop (with `said` in the log)
/// while frames keep flowing. The injected stall limit is 2 s.
fn assert_wedge_stops_the_pings(fault: &str, said: &str) {
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port(), &[&topic("#")]);
    let dir = tempfile::tempdir().expect("tempdir");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind notify socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let config = config(dir.path(), &broker.url(), &looping_replay(4.0), "");
    let notify = socket_path.display().to_string();
    let daemon = Daemon::start(
        dir.path(),
        &config,
        &[
            ("GLIMPSE_FAULT", fault),
            ("NOTIFY_SOCKET", notify.as_str()),
            ("WATCHDOG_USEC", "4000000"),
        ],
    );
    let pings_within = |window: Duration| {
        let deadline = Instant::now() + window;
        let mut pings = 0;
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = socket.recv(&mut buf) {
                pings += usize::from(buf[..n].starts_with(b"WATCHDOG=1"));
            }
        }
        pings
    };
    wait_online(&sub, &daemon);
    assert!(
        pings_within(Duration::from_secs(8)) >= 2,
        "no pings while healthy:\n{}",
        daemon.log()
    );
    sub.publish(&topic("cmd/labels"), Vec::new(), false);
    // Wait until the daemon says it withholds the ping, then forget the pings sent before that
    // (they wait in the socket buffer).
    common::wait_until("the stall to be noticed", || daemon.log().contains(said));
    pings_within(Duration::from_millis(500));
    let frames_before = sub.messages(&topic("prediction")).len();
    let pings = pings_within(Duration::from_secs(6));
    let frames_after = sub.messages(&topic("prediction")).len();
    assert_eq!(
        pings,
        0,
        "pings went on with a wedged {fault}:\n{}",
        daemon.log()
    );
    if fault != "mqtt-poll-hang" {
        assert!(frames_after > frames_before, "frames must keep flowing");
    }
}

/// Pids of live (non-zombie) processes in group `pgid`.
fn live_group_members(pgid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let Some((_, rest)) = stat.rsplit_once(") ") else {
                return false;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            fields.first() != Some(&"Z") && fields.get(2) == Some(&pgid.to_string().as_str())
        })
        .collect()
}

#[test]
fn an_exec_child_that_writes_nothing_does_not_outlive_sigterm() {
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port(), &[&topic("#")]);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config(
        dir.path(),
        &broker.url(),
        "uri = 'exec:sleep 300; sleep 300'",
        "",
    );
    let mut daemon = Daemon::start(dir.path(), &config, &[]);
    wait_online(&sub, &daemon);
    let log = daemon.log();
    let pid: u32 = log
        .lines()
        .find_map(|l| l.split("started (pid ").nth(1))
        .and_then(|rest| rest.split(')').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no child pid in the log:\n{log}"));
    assert!(
        !live_group_members(pid).is_empty(),
        "the child is not running"
    );
    daemon.signal(libc::SIGTERM);
    let status = daemon.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(0), "{status}:\n{}", daemon.log());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !live_group_members(pid).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = live_group_members(pid);
    assert!(left.is_empty(), "orphaned: {left:?}\n{}", daemon.log());
}

#[test]
fn a_damaged_store_is_set_aside_and_the_daemon_starts() {
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port(), &[&topic("#")]);
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).expect("mkdir");
    std::fs::write(state.join("glimpse.db"), vec![0x5Au8; 16384]).expect("write");
    let config = config(dir.path(), &broker.url(), &looping_replay(1.0), "");
    let daemon = Daemon::start(dir.path(), &config, &[]);
    wait_online(&sub, &daemon);
    let log = daemon.log();
    assert!(
        log.lines()
            .any(|l| l.contains("quick_check") && l.contains("damaged files kept as")),
        "{log}"
    );
    let aside = std::fs::read_dir(&state)
        .expect("state dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
        .count();
    assert_eq!(aside, 1, "{log}");
    // The rebuilt store takes samples: a command answers from it.
    sub.publish(&topic("cmd/labels"), Vec::new(), false);
    let ack = sub
        .wait_for(WAIT, |m| m.topic == topic("ack"))
        .unwrap_or_else(|| panic!("no ack:\n{}", daemon.log()));
    assert!(ack.text().contains("accepted"), "{}", ack.text());
}

/// Runs `glimpse <command> --config <path>` with `env` to the end (bounded).
fn run_to_end(command: &str, config: &Path, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut child = glimpse(&[command, "--config"])
        .arg(config)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start glimpse");
    let deadline = Instant::now() + WAIT * 2;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
    }
    (status.code(), stderr)
}

#[test]
fn check_config_refuses_what_run_refuses() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = format!("mqtt://127.0.0.1:{}", common::free_port());
    let garbage = dir.path().join("garbage.onnx");
    std::fs::write(&garbage, b"this is not an ONNX model").expect("write");
    let manifest_text =
        std::fs::read_to_string(repo().join("models/mobilenet_v2_1.0_224.toml")).expect("read");
    let model_line = "path = \"../../shared/models/mobilenet_v2_1.0_224.onnx\"";
    assert!(manifest_text.contains(model_line));
    let garbage_manifest = dir.path().join("garbage.toml");
    std::fs::write(
        &garbage_manifest,
        manifest_text
            .replace(model_line, &format!("path = '{}'", garbage.display()))
            .replace("sha256 = ", "# sha256 = "),
    )
    .expect("write");
    let wrong_sha = dir.path().join("wrong-sha.toml");
    std::fs::write(
        &wrong_sha,
        manifest_text
            .replace(
                model_line,
                &format!(
                    "path = '{}'",
                    repo()
                        .join("../shared/models/mobilenet_v2_1.0_224.onnx")
                        .display()
                ),
            )
            .replace("6fa988279c", "0000000000"),
    )
    .expect("write");
    let manifest_key = format!(
        "manifest = '{}'",
        repo().join("models/mobilenet_v2_1.0_224.toml").display()
    );
    let source = looping_replay(1.0);
    // (what, config text to append or `#manifest` to use, environment, what the error names)
    type Case<'a> = (&'a str, String, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "missing password_file",
            String::new(),
            vec![
                ("GLIMPSE_MQTT__USERNAME", "u"),
                ("GLIMPSE_MQTT__PASSWORD_FILE", "/nonexistent/pw"),
            ],
            "password_file",
        ),
        (
            "threads = 1000",
            String::new(),
            vec![("GLIMPSE_MODEL__THREADS", "1000")],
            "GLIMPSE_MODEL__THREADS",
        ),
        (
            "log.level = verbose",
            "[log]\nlevel = 'verbose'\n".into(),
            vec![],
            "log.level",
        ),
        (
            "recent_frames = 1e8",
            "[learning]\nrecent_frames = 100000000\n".into(),
            vec![],
            "learning.recent_frames",
        ),
        (
            "empty GLIMPSE_STATE_DIR",
            String::new(),
            vec![("GLIMPSE_STATE_DIR", "")],
            "GLIMPSE_STATE_DIR",
        ),
        (
            "garbage model file",
            format!("#{}", garbage_manifest.display()),
            vec![],
            "garbage.onnx",
        ),
        (
            "wrong sha256",
            format!("#{}", wrong_sha.display()),
            vec![],
            "sha256",
        ),
    ];
    for (what, extra, env, named) in cases {
        let config = config(dir.path(), &broker, &source, "");
        let mut text = std::fs::read_to_string(&config).expect("read");
        if let Some(manifest) = extra.strip_prefix('#') {
            text = text.replace(&manifest_key, &format!("manifest = '{manifest}'"));
        } else {
            text.push_str(&extra);
        }
        std::fs::write(&config, &text).expect("write");
        for command in ["check-config", "run"] {
            let (code, stderr) = run_to_end(command, &config, &env);
            assert_eq!(code, Some(2), "{command} with {what}: {stderr}");
            let line = stderr
                .lines()
                .find(|l| l.starts_with("glimpse: "))
                .unwrap_or_else(|| panic!("{command} with {what}: no `glimpse:` line: {stderr}"));
            assert!(
                line.contains(named),
                "{command} with {what}: {line:?} should name {named:?}"
            );
        }
    }
}
