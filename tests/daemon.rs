//! End-to-end tests of the daemon: the real `glimpse run` binary, a real Mosquitto per test
//! (tests/common), the shared test model, and sources over the shared ImageNet images, a single
//! file, or a live ffmpeg MJPEG stream. Configs and state directories live in a tempdir; nothing
//! but loopback is used.
//!
//! What is checked: predictions agree with `glimpse classify`, a broker outage is survived with
//! flat memory, the availability protocol (`online`, `offline` last will, `stopped` on SIGTERM),
//! exit code 2 with a one-line reason for every kind of bad configuration, environment
//! overrides, Home Assistant discovery, the on_change publish policy (and its state lines in the
//! log), the one-time hint when no broker answers, and unchanged-frame skipping.
//! No pass/fail depends on timing beyond generous bounds (the SIGTERM deadline is the contract).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Mosquitto, Msg, Subscriber, WAIT};
use serde_json::Value;

const GLIMPSE: &str = env!("CARGO_BIN_EXE_glimpse");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn manifest() -> PathBuf {
    repo().join("models/mobilenet_v2_1.0_224.toml")
}

fn imagenet_dir() -> PathBuf {
    let dir = repo().join("../shared/testdata/imagenet");
    assert!(
        dir.is_dir(),
        "{} is missing: the shared test data is a prerequisite",
        dir.display()
    );
    dir
}

/// The images of the shared ImageNet set, in the order a `dir:` source replays them.
fn imagenet_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(imagenet_dir())
        .expect("list the imagenet test images")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("jpg" | "jpeg" | "png" | "bmp")
            )
        })
        .collect();
    files.sort();
    assert!(files.len() >= 5, "too few test images: {files:?}");
    files
}

/// A TOML literal string (no escapes) for a path.
fn lit(path: &Path) -> String {
    let text = path.display().to_string();
    assert!(!text.contains('\''), "test path with a quote: {text}");
    format!("'{text}'")
}

/// One daemon configuration, written into its own tempdir with the state directory beside it.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Setup {
        Setup {
            dir: tempfile::tempdir().expect("create a temp dir"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A complete config: `source` is the body of `[source]`, `extra` more sections
    /// (`[pipeline]`, `[mqtt.publish]`, ...). One backbone thread: tests run in parallel.
    fn config(&self, broker: &str, device: &str, source: &str, extra: &str) -> PathBuf {
        let text = format!(
            "state_dir = {state}\n\
             [model]\nmanifest = {manifest}\nthreads = 1\n\
             [source]\n{source}\n\
             [mqtt]\nurl = '{broker}'\ndevice_id = '{device}'\nstats_interval_s = 1\n\
             reconnect_backoff_max_s = 1\n\
             [log]\nlevel = 'info'\n{extra}\n",
            state = lit(&self.path("state")),
            manifest = lit(&manifest()),
        );
        self.write("glimpse.toml", &text)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).expect("write the config");
        path
    }
}

/// A `glimpse` command with a clean environment for configuration (no inherited `GLIMPSE_*`,
/// `RUST_LOG` or systemd variables, so the config file alone decides).
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

/// A running `glimpse run`; killed on drop. Its stderr (the log) goes to a file for messages.
struct Daemon {
    child: Child,
    log: PathBuf,
    status: Option<ExitStatus>,
}

impl Daemon {
    fn start(setup: &Setup, config: &Path, env: &[(&str, &str)]) -> Daemon {
        let log = setup.path("daemon.log");
        let file = std::fs::File::create(&log).expect("create the daemon log");
        let mut command = glimpse(&["run", "--config"]);
        command
            .arg(config)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {GLIMPSE}: {e}"));
        Daemon {
            child,
            log,
            status: None,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill({}, {signal}) failed", self.pid());
    }

    /// Waits for the process to exit, at most `timeout`; None if it is still running.
    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the daemon") {
                self.status = Some(status);
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Fails the test (with the daemon's log) if it exited.
    fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("poll the daemon") {
            panic!("the daemon exited early ({status}):\n{}", self.log());
        }
    }

    /// Resident memory now, from /proc/PID/status (`VmRSS`, kB).
    fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/PID/status of the daemon");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in /proc/{}/status", self.pid()))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn json(msg: &Msg) -> Value {
    serde_json::from_slice(&msg.payload)
        .unwrap_or_else(|e| panic!("{} is not JSON ({e}): {}", msg.topic, msg.text()))
}

/// The ImageNet top-1 label of a prediction (no head is trained in these tests).
fn imagenet_top1(prediction: &Value) -> String {
    prediction["imagenet_top_k"][0]["label"]
        .as_str()
        .unwrap_or_else(|| panic!("prediction without imagenet_top_k: {prediction}"))
        .to_string()
}

/// Waits until `n` messages arrived on `topic`; panics with the daemon log if they do not.
fn wait_count(sub: &Subscriber, topic: &str, n: usize, daemon: &Daemon) -> Vec<Msg> {
    let deadline = Instant::now() + WAIT;
    loop {
        let messages = sub.messages(topic);
        if messages.len() >= n {
            return messages;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {n} messages on {topic} within {WAIT:?}; daemon log:\n{}",
            messages.len(),
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for a stats message satisfying `pred`; panics listing the stats seen.
fn wait_stats(sub: &Subscriber, topic: &str, daemon: &Daemon, pred: impl Fn(&Value) -> bool) {
    let found = sub.wait_for(WAIT, |m| {
        m.topic == topic
            && serde_json::from_slice::<Value>(&m.payload)
                .map(|v| pred(&v))
                .unwrap_or(false)
    });
    assert!(
        found.is_some(),
        "no matching stats on {topic}; got {:?}\ndaemon log:\n{}",
        sub.texts(topic),
        daemon.log()
    );
}

#[test]
fn dir_source_predictions_match_classify_json() {
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port(), &["glimpse/#"]);
    let setup = Setup::new();
    // An unpaced replay is read only as fast as the pipeline consumes it, so no frame may be
    // dropped however busy the machine; the source ends after one pass and the daemon exits.
    let source = format!(
        "uri = 'dir:{}'\nreplay_fps = 0.0\nreplay_loop = false",
        imagenet_dir().display()
    );
    let config = setup.config(&broker.url(), "dirtest", &source, "");
    let mut daemon = Daemon::start(&setup, &config, &[]);

    let files = imagenet_files();
    let mut classify = glimpse(&["classify", "--json", "--threads", "1", "--model"]);
    classify.arg(manifest()).args(&files);
    let out = classify.output().expect("run glimpse classify");
    assert!(
        out.status.success(),
        "glimpse classify failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line).expect("classify --json line");
            v["top_k"][0]["label"]
                .as_str()
                .expect("classify top-1 label")
                .to_string()
        })
        .collect();
    assert_eq!(expected.len(), files.len(), "one classify line per file");

    let status = daemon
        .wait_exit(WAIT * 3)
        .unwrap_or_else(|| panic!("a finite replay must end the daemon:\n{}", daemon.log()));
    assert!(status.success(), "{status}:\n{}", daemon.log());
    sub.expect("glimpse/dirtest/availability", b"stopped");

    let predictions = sub.messages("glimpse/dirtest/prediction");
    let got: Vec<(u64, String)> = predictions
        .iter()
        .map(|m| {
            let v = json(m);
            (v["frame_id"].as_u64().expect("frame_id"), imagenet_top1(&v))
        })
        .collect();
    let ids: Vec<u64> = got.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        ids,
        (0..files.len() as u64).collect::<Vec<_>>(),
        "every frame once, in file order\n{}",
        daemon.log()
    );
    for ((id, label), (file, want)) in got.iter().zip(files.iter().zip(&expected)) {
        assert_eq!(label, want, "frame {id} = {}", file.display());
    }
}

#[test]
fn exec_source_with_ffmpeg_publishes_predictions() {
    let ffmpeg = Command::new("ffmpeg").arg("-version").output();
    assert!(
        matches!(&ffmpeg, Ok(o) if o.status.success()),
        "ffmpeg is required for the exec: source test (apt-get install -y ffmpeg): {ffmpeg:?}"
    );
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port(), &["glimpse/#"]);
    let setup = Setup::new();
    let source = "uri = 'exec:ffmpeg -hide_banner -loglevel error -f lavfi \
                  -i testsrc=size=320x240:rate=10 -f mjpeg -'";
    let config = setup.config(&broker.url(), "exectest", source, "");
    let mut daemon = Daemon::start(&setup, &config, &[]);
    let predictions = wait_count(&sub, "glimpse/exectest/prediction", 3, &daemon);
    daemon.assert_running();
    let ids: Vec<u64> = predictions
        .iter()
        .map(|m| json(m)["frame_id"].as_u64().expect("frame_id"))
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "frame ids must increase: {ids:?}"
    );
    for m in &predictions {
        let v = json(m);
        assert!(!imagenet_top1(&v).is_empty(), "{v}");
        assert!(!m.retain, "predictions are a stream, not retained");
    }
    daemon.signal(libc::SIGTERM);
    let status = daemon.wait_exit(WAIT).expect("exit after SIGTERM");
    assert!(status.success(), "{status}:\n{}", daemon.log());
}

#[test]
fn broker_outage_is_survived_with_flat_memory() {
    let mut broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port(), &["glimpse/#"]);
    let setup = Setup::new();
    let source = format!(
        "uri = 'dir:{}'\nreplay_fps = 4.0\nreplay_loop = true",
        imagenet_dir().display()
    );
    let config = setup.config(&broker.url(), "outage", &source, "");
    let mut daemon = Daemon::start(&setup, &config, &[]);
    sub.expect("glimpse/outage/availability", b"online");
    wait_count(&sub, "glimpse/outage/prediction", 2, &daemon);

    broker.stop();
    // Samples during the outage: after the link noticed, and near its end. The daemon keeps
    // classifying and queueing; the bounded outbox must keep memory flat.
    std::thread::sleep(Duration::from_secs(2));
    daemon.assert_running();
    let early = daemon.rss_kb();
    std::thread::sleep(Duration::from_secs(8));
    daemon.assert_running();
    let late = daemon.rss_kb();
    assert!(
        late < early + 20 * 1024,
        "RSS grew from {early} kB to {late} kB while the broker was away"
    );

    sub.clear();
    broker.restart();
    sub.wait_subscribed(2);
    sub.expect("glimpse/outage/availability", b"online");
    wait_count(&sub, "glimpse/outage/prediction", 2, &daemon);
    wait_stats(&sub, "glimpse/outage/stats", &daemon, |s| {
        s["broker_reconnects"].as_u64().unwrap_or(0) >= 1
    });
    // The space left where the store lives, for an operator watching a small eMMC fill.
    let stats = json(&sub.messages("glimpse/outage/stats").pop().expect("stats"));
    let free = stats["state_free_bytes"].as_u64();
    assert!(free.is_some_and(|f| f > 0), "no state_free_bytes: {stats}");
    daemon.signal(libc::SIGTERM);
    let status = daemon.wait_exit(WAIT).expect("exit after SIGTERM");
    assert!(status.success(), "{status}:\n{}", daemon.log());
}

/// A slow looping replay: enough to keep a daemon alive and publishing, cheaply.
fn slow_replay() -> String {
    format!(
        "uri = 'dir:{}'\nreplay_fps = 1.0\nreplay_loop = true",
        imagenet_dir().display()
    )
}

#[test]
fn sigkill_makes_the_broker_publish_the_offline_will() {
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port(), &["glimpse/#"]);
    let setup = Setup::new();
    let config = setup.config(&broker.url(), "killed", &slow_replay(), "");
    let mut daemon = Daemon::start(&setup, &config, &[]);
    sub.expect("glimpse/killed/availability", b"online");
    daemon.signal(libc::SIGKILL);
    daemon.wait_exit(WAIT).expect("SIGKILL ends the daemon");
    sub.expect("glimpse/killed/availability", b"offline");
    // The will is retained: a client arriving later still learns the device is gone.
    let late = Subscriber::connect(broker.port(), &["glimpse/killed/availability"]);
    let msg = late.expect("glimpse/killed/availability", b"offline");
    assert!(msg.retain, "the offline will must be retained");
}

#[test]
fn sigterm_publishes_stopped_retained_and_exits_0_within_5_s() {
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port(), &["glimpse/#"]);
    let setup = Setup::new();
    let config = setup.config(&broker.url(), "termed", &slow_replay(), "");
    let mut daemon = Daemon::start(&setup, &config, &[]);
    sub.expect("glimpse/termed/availability", b"online");
    wait_count(&sub, "glimpse/termed/prediction", 1, &daemon);
    let sent = Instant::now();
    daemon.signal(libc::SIGTERM);
    let status = daemon.wait_exit(Duration::from_secs(5)).unwrap_or_else(|| {
        panic!(
            "still running 5 s after SIGTERM (systemd would SIGKILL it):\n{}",
            daemon.log()
        )
    });
    assert_eq!(status.code(), Some(0), "{status}:\n{}", daemon.log());
    assert!(sent.elapsed() < Duration::from_secs(5));
    sub.expect("glimpse/termed/availability", b"stopped");
    let late = Subscriber::connect(broker.port(), &["glimpse/termed/availability"]);
    let msg = late.expect("glimpse/termed/availability", b"stopped");
    assert!(msg.retain, "`stopped` must be retained");
    assert!(
        late.wait_for(Duration::from_millis(500), |m| m.payload == b"offline")
            .is_none(),
        "a clean stop must not trigger the offline will"
    );
}

/// Runs `glimpse <command> --config <path>` to completion.
fn run_to_end(command: &str, config: &Path) -> Output {
    let mut cmd = glimpse(&[command, "--config"]);
    cmd.arg(config).stdin(Stdio::null());
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start glimpse");
    // A config that unexpectedly passes would start the daemon: bound it instead of hanging.
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(WAIT).is_err() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    });
    let out = child.wait_with_output().expect("wait for glimpse");
    let _ = done_tx.send(());
    let _ = watchdog.join();
    out
}

#[test]
fn config_errors_exit_2_and_name_the_key_or_file() {
    let setup = Setup::new();
    // Nothing listens here; every case must fail before any connection matters.
    let broker = format!("mqtt://127.0.0.1:{}", common::free_port());
    let source = slow_replay();
    let good = setup.config(&broker, "cfg", &source, "");
    let good_text = std::fs::read_to_string(&good).expect("read the good config");

    let check = run_to_end("check-config", &good);
    assert_eq!(
        check.status.code(),
        Some(0),
        "check-config on a good file: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let effective = String::from_utf8_lossy(&check.stdout);
    assert!(
        effective.contains("device_id = \"cfg\""),
        "check-config prints the effective config: {effective}"
    );

    let manifest_without_model = setup.write(
        "no-model.toml",
        &std::fs::read_to_string(manifest())
            .expect("read the test manifest")
            .replace(
                "../../shared/models/mobilenet_v2_1.0_224.onnx",
                "missing-model.onnx",
            ),
    );
    assert!(std::fs::read_to_string(&manifest_without_model)
        .expect("read")
        .contains("missing-model.onnx"));
    let manifest_line = format!("manifest = {}", lit(&manifest()));
    let cases: Vec<(&str, String, String)> = vec![
        (
            "unknown key",
            good_text.replace("threads = 1", "threads = 1\nthreadz = 2"),
            "threadz".into(),
        ),
        (
            "bad source uri",
            good_text.replace("uri = 'dir:", "uri = 'dri:"),
            "source.uri".into(),
        ),
        (
            "missing manifest",
            good_text.replace(
                &manifest_line,
                &format!("manifest = {}", lit(&setup.path("nope.toml"))),
            ),
            setup.path("nope.toml").display().to_string(),
        ),
        (
            "missing manifest (key)",
            good_text.replace(
                &manifest_line,
                &format!("manifest = {}", lit(&setup.path("nope.toml"))),
            ),
            "model.manifest".into(),
        ),
        (
            "missing model file",
            good_text.replace(
                &manifest_line,
                &format!("manifest = {}", lit(&manifest_without_model)),
            ),
            "missing-model.onnx".into(),
        ),
        (
            "bad value type",
            good_text.replace("stats_interval_s = 1", "stats_interval_s = 'often'"),
            "mqtt.stats_interval_s".into(),
        ),
    ];
    for (what, text, named) in cases {
        assert_ne!(text, good_text, "{what}: the edit did not apply");
        let path = setup.write("bad.toml", &text);
        for command in ["run", "check-config"] {
            let out = run_to_end(command, &path);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(2),
                "{command} with {what}: {stderr}"
            );
            let line = stderr
                .lines()
                .find(|l| l.starts_with("glimpse: "))
                .unwrap_or_else(|| panic!("{command} with {what}: no `glimpse:` line: {stderr}"));
            assert!(
                line.contains(&named),
                "{command} with {what}: {line:?} should name {named:?}"
            );
        }
    }
}

#[test]
fn environment_override_changes_the_device_topic() {
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port(), &["glimpse/#"]);
    let setup = Setup::new();
    let config = setup.config(&broker.url(), "fromfile", &slow_replay(), "");
    let mut daemon = Daemon::start(&setup, &config, &[("GLIMPSE_MQTT__DEVICE_ID", "fromenv")]);
    sub.expect("glimpse/fromenv/availability", b"online");
    wait_count(&sub, "glimpse/fromenv/prediction", 1, &daemon);
    assert!(
        sub.messages("glimpse/fromfile/availability").is_empty(),
        "the file's device id must not be used"
    );
    daemon.signal(libc::SIGTERM);
    let status = daemon.wait_exit(WAIT).expect("exit after SIGTERM");
    assert!(status.success(), "{status}:\n{}", daemon.log());
}

#[test]
fn home_assistant_discovery_is_published_retained() {
    let mut broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port(), &["glimpse/#", "ha/#"]);
    let setup = Setup::new();
    let extra = "[mqtt.homeassistant]\nenabled = true\ndiscovery_prefix = 'ha'";
    let config = setup.config(&broker.url(), "hatest", &slow_replay(), extra);
    let mut daemon = Daemon::start(&setup, &config, &[]);
    sub.expect("glimpse/hatest/availability", b"online");
    let first = sub
        .wait_for(WAIT, |m| m.topic.starts_with("ha/"))
        .unwrap_or_else(|| panic!("no discovery message:\n{}", daemon.log()));
    assert!(first.topic.ends_with("/config"), "{}", first.topic);

    // A client arriving later (Home Assistant restarting) gets them as retained messages.
    let late = Subscriber::connect(broker.port(), &["ha/#"]);
    let config_msg = late
        .wait_for(WAIT, |m| m.topic.starts_with("ha/sensor/hatest/"))
        .expect("retained discovery config");
    assert!(config_msg.retain, "discovery configs must be retained");
    let v = json(&config_msg);
    assert_eq!(v["availability_topic"], "glimpse/hatest/availability");
    assert!(
        v["state_topic"]
            .as_str()
            .is_some_and(|t| t.starts_with("glimpse/hatest/")),
        "{v}"
    );
    drop(late);

    // A broker without persistence forgets retained messages when it restarts: the device
    // publishes its configs again on the new connection.
    sub.clear();
    broker.restart();
    sub.wait_subscribed(2);
    sub.expect("glimpse/hatest/availability", b"online");
    sub.wait_for(WAIT, |m| m.topic.starts_with("ha/sensor/hatest/"))
        .unwrap_or_else(|| panic!("no discovery after the broker restart:\n{}", daemon.log()));
    // Live deliveries carry no retain flag: a client arriving now shows the broker kept them.
    let after_restart = Subscriber::connect(broker.port(), &["ha/#"]);
    let again = after_restart
        .wait_for(WAIT, |m| m.topic.starts_with("ha/sensor/hatest/"))
        .unwrap_or_else(|| panic!("no retained discovery after the restart:\n{}", daemon.log()));
    assert!(again.retain, "republished configs must be retained");
    daemon.assert_running();
}

#[test]
fn on_change_policy_publishes_retained_state_only_on_change() {
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port(), &["glimpse/#"]);
    let setup = Setup::new();
    // owl, owl, parrot: two state changes; the repeated owl publishes nothing.
    let images = setup.path("images");
    std::fs::create_dir(&images).expect("create the image dir");
    let src = imagenet_dir();
    for (name, from) in [
        ("a.jpg", "owl.jpg"),
        ("b.jpg", "owl.jpg"),
        ("c.jpg", "parrot.jpg"),
    ] {
        std::fs::copy(src.join(from), images.join(name)).expect("copy a test image");
    }
    let source = format!(
        "uri = 'dir:{}'\nreplay_fps = 0.0\nreplay_loop = false",
        images.display()
    );
    let extra = "[mqtt.publish]\nmode = 'on_change'\nsmoothing_frames = 1";
    let config = setup.config(&broker.url(), "policy", &source, extra);
    let mut daemon = Daemon::start(&setup, &config, &[]);
    let status = daemon
        .wait_exit(WAIT * 2)
        .unwrap_or_else(|| panic!("a finite replay must end the daemon:\n{}", daemon.log()));
    assert!(status.success(), "{status}:\n{}", daemon.log());
    sub.expect("glimpse/policy/availability", b"stopped");

    let states: Vec<Value> = sub
        .messages("glimpse/policy/state")
        .iter()
        .map(json)
        .collect();
    let predictions: Vec<Value> = sub
        .messages("glimpse/policy/prediction")
        .iter()
        .map(json)
        .collect();
    let ids: Vec<u64> = predictions
        .iter()
        .map(|p| p["frame_id"].as_u64().expect("frame_id"))
        .collect();
    assert_eq!(ids, [0, 2], "only the frames that changed the state");
    assert_eq!(states.len(), 2, "{states:?}");
    assert_eq!(
        states[0]["label"].as_str(),
        Some(imagenet_top1(&predictions[0]).as_str())
    );
    assert_eq!(
        states[1]["label"].as_str(),
        Some(imagenet_top1(&predictions[1]).as_str())
    );
    assert_ne!(states[0]["label"], states[1]["label"]);
    // Each state change is also in the log, for `journalctl -f` without an MQTT client.
    let log = daemon.log();
    let logged: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split_once("policy: now ").map(|(_, rest)| rest))
        .collect();
    assert_eq!(logged.len(), 2, "two state lines expected:\n{log}");
    for (line, state) in logged.iter().zip(&states) {
        let label = state["label"].as_str().expect("state label");
        assert!(
            line.starts_with(&format!("{label:?} (")),
            "log line {line:?} does not name state {label:?}"
        );
    }

    let late = Subscriber::connect(broker.port(), &["glimpse/policy/state"]);
    let retained = late.expect_any("glimpse/policy/state");
    assert!(retained.retain, "the state must be retained");
    assert_eq!(json(&retained)["label"], states[1]["label"]);
}

/// First contact without a broker: the daemon keeps running and says once, plainly, that
/// predictions are not delivered and how to fix it, however many reconnect attempts follow.
#[test]
fn a_missing_broker_is_explained_once() {
    let setup = Setup::new();
    let url = format!("mqtt://127.0.0.1:{}", common::free_port());
    let config = setup.config(&url, "lonely", &slow_replay(), "");
    let mut daemon = Daemon::start(&setup, &config, &[]);
    wait_until_log(&mut daemon, |log| log.contains("(attempt 4)"));
    daemon.assert_running();
    let log = daemon.log();
    let hints: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("predictions are NOT delivered"))
        .collect();
    assert_eq!(hints.len(), 1, "the hint must be said exactly once:\n{log}");
    for needed in [
        url.as_str(),
        "apt-get install mosquitto",
        "GLIMPSE_MQTT__URL=",
    ] {
        assert!(
            hints[0].contains(needed),
            "hint lacks {needed:?}: {}",
            hints[0]
        );
    }
}

/// Polls the daemon's log until `cond` holds (fails the test with the log after WAIT, or when
/// the daemon exits).
fn wait_until_log(daemon: &mut Daemon, cond: impl Fn(&str) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let log = daemon.log();
        if cond(&log) {
            return;
        }
        daemon.assert_running();
        assert!(
            Instant::now() < deadline,
            "log condition not met in {WAIT:?}:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn unchanged_frames_are_skipped_and_counted() {
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port(), &["glimpse/#"]);
    let setup = Setup::new();
    let source = format!(
        "uri = 'file:{}'\nreplay_fps = 5.0\nreplay_loop = true",
        imagenet_dir().join("owl.jpg").display()
    );
    let extra = "[pipeline]\nskip_unchanged_below = 2.0";
    let config = setup.config(&broker.url(), "skipper", &source, extra);
    let mut daemon = Daemon::start(&setup, &config, &[]);
    wait_count(&sub, "glimpse/skipper/prediction", 1, &daemon);
    wait_stats(&sub, "glimpse/skipper/stats", &daemon, |s| {
        s["frames_skipped"].as_u64().unwrap_or(0) > 0
    });
    // The same image replayed: only the first frame is worth classifying.
    let predictions = sub.messages("glimpse/skipper/prediction");
    assert_eq!(
        predictions.len(),
        1,
        "one prediction for an unchanging scene: {:?}",
        sub.texts("glimpse/skipper/prediction")
    );
    daemon.signal(libc::SIGTERM);
    let status = daemon.wait_exit(WAIT).expect("exit after SIGTERM");
    assert!(status.success(), "{status}:\n{}", daemon.log());
}

#[test]
fn packaged_example_config_lists_the_defaults_and_passes_check_config() {
    let path = repo().join("systemd/glimpse.toml");
    let text = std::fs::read_to_string(&path).expect("read systemd/glimpse.toml");
    let parsed = glimpse::config::parse(&path, &text, Vec::new())
        .unwrap_or_else(|e| panic!("systemd/glimpse.toml: {e}"));
    // Every value the example states is the built-in default, except the packaged manifest.
    let mut expected = glimpse::config::Config::default();
    expected.model.manifest = "/usr/share/glimpse/models/mobilenetv2-12.toml".into();
    let as_toml = |c: &glimpse::config::Config| toml::to_string(c).expect("serialize a config");
    assert_eq!(as_toml(&parsed), as_toml(&expected));

    // With the manifest pointed at the test model (as a drop-in would), the packaged file passes.
    let out = glimpse(&["check-config", "--config"])
        .arg(&path)
        .env("GLIMPSE_MODEL__MANIFEST", manifest())
        .output()
        .expect("run glimpse check-config");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
