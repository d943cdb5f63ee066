//! One `glimpse run` harness for the integration tests: [`DaemonConfig`] renders the TOML a test
//! runs the daemon with (the shared defaults, plus the keys the test sets), and [`Daemon`] runs
//! the built binary on it, with stdout and stderr in a log file, killed on drop.
//!
//! Every setting beyond the daemon's identity (state dir, source, model) is set one way:
//! `.set("learning.retrain_after", 3)`, a dotted key and a TOML value.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::Mosquitto;

/// The binary under test.
pub const GLIMPSE: &str = env!("CARGO_BIN_EXE_glimpse");

/// The repository root.
fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// What a test runs `glimpse run` with: the TOML keys, the process environment and the folder
/// its config and log files go in.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    dir: PathBuf,
    table: toml::Table,
    env: Vec<(String, String)>,
}

impl DaemonConfig {
    /// Device `device` on `broker`, files (config, log, `state/`) under `dir`. Defaults: the
    /// float32 MobileNetV2 on one thread, a `dir:` source replayed at 2 fps in a loop (set it
    /// with [`DaemonConfig::source_dir`]), stats every 60 s, retraining on command only
    /// (`learning.retrain_after = 0`), `info` logs.
    pub fn new(dir: &Path, broker: &Mosquitto, device: &str) -> DaemonConfig {
        DaemonConfig {
            dir: dir.to_path_buf(),
            table: toml::Table::new(),
            env: Vec::new(),
        }
        .state_dir(&dir.join("state"))
        .model("mobilenet_v2_1.0_224.toml")
        .set("model.threads", 1)
        .set("source.replay_fps", 2)
        .set("source.replay_loop", true)
        .set("mqtt.url", broker.url())
        .set("mqtt.device_id", device)
        .set("mqtt.stats_interval_s", 60)
        .set("learning.retrain_after", 0)
        .set("log.level", "info")
    }

    /// Sets `key` (dotted: `section.key`, `mqtt.homeassistant.enabled`) to `value`.
    pub fn set(mut self, key: &str, value: impl Into<toml::Value>) -> DaemonConfig {
        let mut parts: Vec<&str> = key.split('.').collect();
        let last = parts.pop().expect("a key");
        let mut table = &mut self.table;
        for part in parts {
            table = table
                .entry(part)
                .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                .as_table_mut()
                .unwrap_or_else(|| panic!("{key}: {part} is not a table"));
        }
        table.insert(last.to_string(), value.into());
        self
    }

    /// `state_dir` (default `<dir>/state`).
    pub fn state_dir(self, path: &Path) -> DaemonConfig {
        self.set("state_dir", path.display().to_string())
    }

    /// `source.uri = "dir:<path>"`: the files of `path`, in name order.
    pub fn source_dir(self, path: &Path) -> DaemonConfig {
        self.set("source.uri", format!("dir:{}", path.display()))
    }

    /// `model.manifest`: a manifest of the repository's `models/` (its files in ../shared).
    pub fn model(self, manifest: &str) -> DaemonConfig {
        let path = repo().join("models").join(manifest);
        self.set("model.manifest", path.display().to_string())
    }

    /// An environment variable of the daemon process (`GLIMPSE_FAULT`, ...).
    pub fn env(mut self, name: &str, value: &str) -> DaemonConfig {
        self.env.retain(|(n, _)| n != name);
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// Without the environment variable `name`.
    pub fn env_remove(mut self, name: &str) -> DaemonConfig {
        self.env.retain(|(n, _)| n != name);
        self
    }

    /// The state dir.
    pub fn state(&self) -> PathBuf {
        PathBuf::from(self.table["state_dir"].as_str().expect("state_dir"))
    }

    /// The device id.
    pub fn device(&self) -> String {
        self.table["mqtt"]["device_id"]
            .as_str()
            .expect("mqtt.device_id")
            .to_string()
    }

    /// The configuration file's text.
    pub fn render(&self) -> String {
        toml::to_string(&self.table).expect("render the daemon config")
    }
}

/// A running (or stopped) `glimpse run`, killed on drop.
pub struct Daemon {
    config: DaemonConfig,
    config_path: PathBuf,
    log: PathBuf,
    child: Child,
}

impl Daemon {
    /// Writes `config` to `<dir>/<device>-<n>.toml` and starts the daemon on it, stdout and
    /// stderr appended to `<dir>/<device>-<n>.log` (`n` unique in this test process).
    pub fn start(config: DaemonConfig) -> Daemon {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "{}-{}",
            config.device(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let config_path = config.dir.join(format!("{name}.toml"));
        let log = config.dir.join(format!("{name}.log"));
        let child = spawn(&config, &config_path, &log);
        Daemon {
            config,
            config_path,
            log,
            child,
        }
    }

    /// Kills the daemon if it still runs, then starts it again on `config` (same files: the
    /// config is rewritten, the log goes on).
    pub fn restart(&mut self, config: DaemonConfig) {
        self.kill9();
        self.child = spawn(&config, &self.config_path, &self.log);
        self.config = config;
    }

    pub fn config(&self) -> &DaemonConfig {
        &self.config
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// SIGKILL, and wait for the exit.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and wait (up to 60 s) for the exit.
    pub fn stop(&mut self) {
        // SAFETY: signalling our own child process by its pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        self.wait_exit(Duration::from_secs(60));
    }

    /// Waits for the daemon to exit by itself; panics with its log after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{} did not exit within {timeout:?}:\n{}",
            self.config.device(),
            self.log()
        );
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Writes the config and starts `glimpse run` on it, with no systemd notify socket, no
/// inherited `RUST_LOG` (`log.level` decides) or `GLIMPSE_FAULT`, plus the config's variables.
fn spawn(config: &DaemonConfig, config_path: &Path, log: &Path) -> Child {
    std::fs::write(config_path, config.render()).expect("write the daemon config");
    let out = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open the daemon log");
    let mut command = Command::new(GLIMPSE);
    command
        .args(["run", "--config"])
        .arg(config_path)
        .env_remove("NOTIFY_SOCKET")
        .env_remove("RUST_LOG")
        .env_remove("GLIMPSE_FAULT")
        .stdout(Stdio::from(out.try_clone().expect("log")))
        .stderr(Stdio::from(out))
        .envs(config.env.iter().map(|(n, v)| (n, v)));
    command.spawn().expect("spawn glimpse run")
}
