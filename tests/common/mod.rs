//! Shared integration-test harness: a REAL Mosquitto broker per test, and a subscriber that
//! collects messages, plus a helper that builds and locates example binaries.
//!
//! Each test starts its own broker on a free loopback port, so tests run in parallel without
//! seeing each other's retained messages. The broker can be stopped and restarted on the SAME
//! port to test reconnection. A missing `mosquitto` binary fails the test loudly: it is a
//! prerequisite, never a reason to skip.

// Every test binary compiles this module but uses only part of it.
#![allow(dead_code)]

pub mod daemon; // glimpse run with a rendered config, killed on drop
pub mod studio; // glimpse studio harness: daemon with thumbnails, studio process, WebDriver

use std::fs::File;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS, SubscribeFilter};

/// Where Debian's package puts the broker.
pub const MOSQUITTO: &str = "/usr/sbin/mosquitto";
/// Generous: the machines running the tests are small and shared.
pub const WAIT: Duration = Duration::from_secs(20);

/// A Mosquitto process owned by a test; killed on drop.
pub struct Mosquitto {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    /// Keep retained messages and sessions on disk across restarts (as a real deployment does).
    persistent: bool,
    /// More configuration lines (a bridge).
    extra: String,
}

impl Mosquitto {
    /// Starts a broker on a free loopback port and waits until it accepts connections.
    pub fn start() -> Mosquitto {
        assert!(
            Path::new(MOSQUITTO).exists(),
            "{MOSQUITTO} not found: install mosquitto (apt-get install -y mosquitto)"
        );
        let dir = tempfile::tempdir().expect("create a temp dir for mosquitto");
        let mut broker = Mosquitto {
            child: None,
            port: free_port(),
            dir,
            persistent: false,
            extra: String::new(),
        };
        broker.spawn();
        broker
    }

    /// A second broker bridged to `central` (a site broker): everything under `glimpse/` goes
    /// both ways at QoS 1, as docs/fleet.md configures it.
    pub fn start_bridged_to(central: &Mosquitto) -> Mosquitto {
        let mut broker = Mosquitto::start();
        broker.stop();
        broker.extra = format!(
            "connection central\naddress 127.0.0.1:{}\ntopic glimpse/# both 1\n",
            central.port()
        );
        broker.spawn();
        broker
    }

    /// Like [`Mosquitto::start`], with persistence on: retained messages and persistent
    /// sessions survive [`Mosquitto::restart_graceful`].
    pub fn start_persistent() -> Mosquitto {
        let mut broker = Mosquitto::start();
        broker.stop();
        broker.persistent = true;
        broker.spawn();
        broker
    }

    /// SIGTERM (Mosquitto saves its persistence file), wait for the exit, start again.
    pub fn restart_graceful(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: signalling our own child process by its pid.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let _ = child.wait();
        }
        self.spawn();
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mqtt://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// The broker's log so far (stdout + stderr), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// Kills the broker (as a crash or a network loss would look) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    fn spawn(&mut self) {
        let config = self.dir.path().join("mosquitto.conf");
        // `user root`: when the tests run as root, Mosquitto would otherwise switch to a
        // `mosquitto` user that may not exist; as non-root the option is ignored.
        let persistence = if self.persistent {
            format!(
                "persistence true\npersistence_location {}/\n",
                self.dir.path().display()
            )
        } else {
            "persistence false\n".to_string()
        };
        let text = format!(
            "listener {} 127.0.0.1\nallow_anonymous true\n{persistence}user root\n\
             log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n{}",
            self.port, self.extra
        );
        std::fs::write(&config, text).expect("write mosquitto.conf");
        let log_path = self.dir.path().join("mosquitto.log");
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("open mosquitto.log");
        let log_err = log.try_clone().expect("clone mosquitto.log handle");
        let deadline = Instant::now() + WAIT;
        // The port may be briefly unavailable right after a stop; retry the spawn until the
        // deadline rather than failing on the first `Address already in use`.
        loop {
            let mut child = Command::new(MOSQUITTO)
                .arg("-c")
                .arg(&config)
                .stdout(Stdio::from(log.try_clone().expect("clone log handle")))
                .stderr(Stdio::from(log_err.try_clone().expect("clone log handle")))
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {MOSQUITTO}: {e}"));
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    if Instant::now() > deadline {
                        panic!(
                            "mosquitto exited with {status} on port {}:\n{}",
                            self.port,
                            self.log()
                        );
                    }
                    std::thread::sleep(Duration::from_millis(200));
                    break;
                }
                if TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_ok() {
                    self.child = Some(child);
                    return;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!(
                        "mosquitto did not accept connections on port {} within {WAIT:?}:\n{}",
                        self.port,
                        self.log()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port nobody listens on right now (bind to 0, read it, release it).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

/// One received message.
#[derive(Debug, Clone, PartialEq)]
pub struct Msg {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

impl Msg {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

#[derive(Default)]
struct Inbox {
    messages: Mutex<Vec<Msg>>,
    changed: Condvar,
}

/// A test client on its own thread: subscribes (and re-subscribes after every reconnect), keeps
/// every message it receives, and can publish. Waits are bounded and report what did arrive.
pub struct Subscriber {
    client: Client,
    inbox: Arc<Inbox>,
    subscriptions: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Subscriber {
    /// Connects to the broker on `port`, subscribes to `filters` (QoS 1) and returns once the
    /// broker acknowledged the subscription.
    pub fn connect(port: u16, filters: &[&str]) -> Subscriber {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        let id = format!(
            "test-sub-{}-{}",
            std::process::id(),
            NEXT_ID.fetch_add(1, Ordering::Relaxed)
        );
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(5));
        options.set_max_packet_size(16 * 1024 * 1024, 16 * 1024 * 1024);
        let (client, mut connection) = Client::new(options, 64);
        let inbox = Arc::new(Inbox::default());
        let subscriptions = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let filters: Vec<String> = filters.iter().map(|f| f.to_string()).collect();
        {
            let (client, inbox, subscriptions, stop) = (
                client.clone(),
                Arc::clone(&inbox),
                Arc::clone(&subscriptions),
                Arc::clone(&stop),
            );
            std::thread::spawn(move || {
                for event in connection.iter() {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    match event {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            let f = filters
                                .iter()
                                .map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
                            let _ = client.try_subscribe_many(f);
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            subscriptions.fetch_add(1, Ordering::SeqCst);
                            inbox.changed.notify_all();
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            let mut messages = inbox.messages.lock().expect("inbox lock");
                            messages.push(Msg {
                                topic: p.topic.clone(),
                                payload: p.payload.to_vec(),
                                retain: p.retain,
                            });
                            inbox.changed.notify_all();
                        }
                        Ok(_) => {}
                        Err(_) => std::thread::sleep(Duration::from_millis(100)),
                    }
                }
            });
        }
        let subscriber = Subscriber {
            client,
            inbox,
            subscriptions,
            stop,
        };
        subscriber.wait_subscribed(1);
        subscriber
    }

    /// Waits until the broker acknowledged `n` subscriptions in total (one per connection).
    pub fn wait_subscribed(&self, n: u64) {
        let deadline = Instant::now() + WAIT;
        while self.subscriptions.load(Ordering::SeqCst) < n {
            assert!(
                Instant::now() < deadline,
                "subscriber: no SUBACK #{n} within {WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for a message matching `pred` among everything received so far and later.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&Msg) -> bool) -> Option<Msg> {
        let deadline = Instant::now() + timeout;
        let mut messages = self.inbox.messages.lock().expect("inbox lock");
        loop {
            if let Some(m) = messages.iter().find(|m| pred(m)) {
                return Some(m.clone());
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            messages = self
                .inbox
                .changed
                .wait_timeout(messages, left)
                .expect("inbox lock")
                .0;
        }
    }

    /// Waits for `payload` on `topic`; panics listing what arrived on that topic if it does not.
    pub fn expect(&self, topic: &str, payload: &[u8]) -> Msg {
        self.wait_for(WAIT, |m| m.topic == topic && m.payload == payload)
            .unwrap_or_else(|| {
                panic!(
                    "no {:?} on {topic} within {WAIT:?}; got {:?}",
                    String::from_utf8_lossy(payload),
                    self.texts(topic)
                )
            })
    }

    /// Waits for any message on `topic`.
    pub fn expect_any(&self, topic: &str) -> Msg {
        self.wait_for(WAIT, |m| m.topic == topic)
            .unwrap_or_else(|| panic!("nothing on {topic} within {WAIT:?}"))
    }

    /// Everything received on `topic`, oldest first.
    pub fn messages(&self, topic: &str) -> Vec<Msg> {
        let messages = self.inbox.messages.lock().expect("inbox lock");
        messages
            .iter()
            .filter(|m| m.topic == topic)
            .cloned()
            .collect()
    }

    /// Payloads on `topic` as text (truncated), for failure messages.
    pub fn texts(&self, topic: &str) -> Vec<String> {
        self.messages(topic)
            .iter()
            .map(|m| m.text().chars().take(80).collect())
            .collect()
    }

    /// Forgets what was received so far.
    pub fn clear(&self) {
        self.inbox.messages.lock().expect("inbox lock").clear();
    }

    /// Publishes through this client (QoS 1). Fails if the client's queue is full.
    pub fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>, retain: bool) {
        self.publish_qos(topic, payload, QoS::AtLeastOnce, retain);
    }

    /// Publishes through this client at `qos`. Fails if the client's queue is full.
    pub fn publish_qos(&self, topic: &str, payload: impl Into<Vec<u8>>, qos: QoS, retain: bool) {
        self.client
            .try_publish(topic, qos, retain, payload.into())
            .expect("test client publish queue");
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.client.try_disconnect();
    }
}

/// Polls `cond` until true or `WAIT` elapses; panics with `what` if it never holds.
/// Starts `glimpse run --config config` (the binary under test), with stdout and stderr both
/// appended to `log` and no systemd notify socket.
pub fn spawn_run(glimpse: &str, config: &Path, log: &Path) -> Child {
    let out = File::create(log).expect("create the daemon log");
    Command::new(glimpse)
        .args(["run", "--config"])
        .arg(config)
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::from(out.try_clone().expect("log")))
        .stderr(Stdio::from(out))
        .spawn()
        .expect("spawn glimpse run")
}

pub fn wait_until(what: &str, cond: impl FnMut() -> bool) {
    wait_until_within(what, WAIT, cond)
}

/// [`wait_until`] with its own deadline, for steps a loaded machine makes slow (a model load,
/// the first embedding while other test daemons start).
pub fn wait_until_within(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Returns the path of `examples/{name}.rs` built: `cargo test` builds examples next to the test
/// binaries (`target/<profile>/examples/`), so that copy is used when present and newer than the
/// source; otherwise it is built with the same cargo that runs the tests (a plain `cargo build`
/// resolves features without dev-dependencies and may rebuild a few crates: slower, same result).
pub fn build_example(name: &str) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("examples/{name}.rs"));
    if let Some(built) = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("examples").join(name)))
    {
        let fresh = |p: &Path| -> Option<bool> {
            Some(
                std::fs::metadata(p).ok()?.modified().ok()?
                    >= std::fs::metadata(&source).ok()?.modified().ok()?,
            )
        };
        if fresh(&built) == Some(true) {
            return built;
        }
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let output = Command::new(cargo)
        .args(["build", "--example", name, "--message-format=json"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo to build example {name}: {e}"));
    assert!(
        output.status.success(),
        "cargo build --example {name} failed"
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == name)
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("cargo built example {name} but reported no executable"))
}

/// The first `n` photos (sorted by name) of a class of the real rock-paper-scissors set in
/// ../shared/datasets/rps_full. Panics, naming the folder, when there are fewer.
pub fn rps_full_photos(class: &str, n: usize) -> Vec<PathBuf> {
    dataset_photos("rps_full", class, n)
}

/// The first `n` photos (sorted by name) of `class` in ../shared/datasets/`set`. Panics, naming
/// the folder, when there are fewer.
pub fn dataset_photos(set: &str, class: &str, n: usize) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/datasets")
        .join(set)
        .join(class);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("test data {} is missing: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    files.sort();
    assert!(
        files.len() >= n,
        "{} has fewer than {n} photos",
        dir.display()
    );
    files.truncate(n);
    files
}

/// libonnxruntime from PyPI (bench/fetch-onnxruntime.sh installs it once into a venv under
/// target/). A failed fetch fails the test: the onnxruntime engine is part of the suite.
pub fn onnxruntime_library() -> &'static Path {
    static LIB: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    LIB.get_or_init(|| {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let out = Command::new(repo.join("bench/fetch-onnxruntime.sh"))
            .output()
            .expect("run bench/fetch-onnxruntime.sh");
        assert!(
            out.status.success(),
            "bench/fetch-onnxruntime.sh failed (the onnxruntime engine tests need it): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        assert!(path.is_file(), "not a file: {}", path.display());
        path
    })
}
