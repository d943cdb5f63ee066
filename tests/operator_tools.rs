//! `glimpse send` against a real Mosquitto and a scripted device (a test client that answers as
//! the daemon does): it stops at once for a device that is not online, reads the broker URL from
//! `GLIMPSE_MQTT__URL` (and, deprecated, `GLIMPSE_MQTT_URL`), keeps several samples in flight
//! but never more than `--in-flight`, and refuses a file over the device's size limit before
//! publishing it.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Mosquitto, Subscriber};
use sha2::{Digest, Sha256};

const GLIMPSE: &str = env!("CARGO_BIN_EXE_glimpse");

/// Runs `glimpse send` with only the given environment for the broker URL.
fn send(env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut command = Command::new(GLIMPSE);
    command
        .env_remove("GLIMPSE_MQTT__URL")
        .env_remove("GLIMPSE_MQTT_URL")
        .arg("send")
        .args(["--device", "cam1", "--timeout-s", "20"])
        .args(args);
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("run glimpse send")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn image_file(dir: &Path, name: &str, bytes: usize) -> String {
    let path = dir.join(name);
    // Distinct content per file (the id is the content hash); the scripted device never decodes.
    let mut content = name.as_bytes().to_vec();
    content.resize(bytes, b'x');
    std::fs::write(&path, content).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn send_stops_at_once_when_the_device_is_not_online() {
    let broker = Mosquitto::start();
    let watcher = Subscriber::connect(broker.port(), &["glimpse/cam1/sample/#"]);
    let dir = tempfile::tempdir().unwrap();
    let file = image_file(dir.path(), "a.jpg", 100);

    // Never seen on this broker: no retained availability at all.
    let out = send(
        &[("GLIMPSE_MQTT__URL", &broker.url())],
        &["--label", "rock", &file],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("device cam1 has never announced itself on this broker"),
        "{}",
        text(&out)
    );

    // The broker holds the device's last will: offline. The new variable names the broker.
    watcher.publish("glimpse/cam1/availability", "offline", true);
    let out = send(
        &[("GLIMPSE_MQTT__URL", &broker.url())],
        &["--label", "rock", &file],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(
            "device cam1 is offline (retained availability on glimpse/cam1/availability); \
             nothing was sent"
        ),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains("deprecated"), "{}", text(&out));

    // The old variable still works, with a warning.
    let out = send(
        &[("GLIMPSE_MQTT_URL", &broker.url())],
        &["--label", "rock", &file],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("GLIMPSE_MQTT_URL is deprecated: set GLIMPSE_MQTT__URL")
            && text(&out).contains("device cam1 is offline"),
        "{}",
        text(&out)
    );
    // ... and the new one wins over the old.
    let out = send(
        &[
            ("GLIMPSE_MQTT__URL", &broker.url()),
            ("GLIMPSE_MQTT_URL", "mqtt://127.0.0.1:1"),
        ],
        &["--label", "rock", &file],
    );
    assert!(
        text(&out).contains("device cam1 is offline"),
        "{}",
        text(&out)
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        watcher.messages("glimpse/cam1/sample/rock").is_empty(),
        "a sample was published to an offline device"
    );
}

/// A scripted device: online, answers `labels` with a 1000-byte sample limit, and acks samples
/// only when `window` of them are waiting (or every file has arrived), recording the most ever
/// unacknowledged.
struct ScriptedDevice {
    stop: Arc<AtomicBool>,
    max_unacked: Arc<AtomicUsize>,
    received: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ScriptedDevice {
    fn start(port: u16, window: usize, expected: usize) -> ScriptedDevice {
        let device = Subscriber::connect(port, &["glimpse/cam1/sample/rock", "glimpse/cam1/cmd/#"]);
        device.publish("glimpse/cam1/availability", "online", true);
        let stop = Arc::new(AtomicBool::new(false));
        let max_unacked = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, max_unacked, received) =
                (stop.clone(), max_unacked.clone(), received.clone());
            std::thread::spawn(move || {
                let (mut commands, mut acked) = (0, 0);
                while !stop.load(Ordering::Relaxed) {
                    let labels = device.messages("glimpse/cam1/cmd/labels");
                    for m in &labels[commands..] {
                        let args: serde_json::Value =
                            serde_json::from_slice(&m.payload).unwrap_or_default();
                        let ack = serde_json::json!({
                            "id": args["id"], "command": "labels", "status": "accepted",
                            "labels": {}, "max_sample_bytes": 1000
                        });
                        device.publish("glimpse/cam1/ack", ack.to_string(), false);
                    }
                    commands = labels.len();
                    let samples = device.messages("glimpse/cam1/sample/rock");
                    received.store(samples.len(), Ordering::SeqCst);
                    let unacked = samples.len() - acked;
                    max_unacked.fetch_max(unacked, Ordering::SeqCst);
                    if unacked >= window || (samples.len() >= expected && unacked > 0) {
                        for m in &samples[acked..] {
                            let id = hex::encode(Sha256::digest(&m.payload));
                            let ack = serde_json::json!({
                                "id": id, "status": "accepted", "label": "rock", "count": 1
                            });
                            device.publish("glimpse/cam1/ack", ack.to_string(), false);
                        }
                        acked = samples.len();
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        ScriptedDevice {
            stop,
            max_unacked,
            received,
            thread: Some(thread),
        }
    }
}

impl Drop for ScriptedDevice {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn send_pipelines_within_its_bound_and_refuses_oversized_files_before_publishing() {
    let broker = Mosquitto::start();
    let device = ScriptedDevice::start(broker.port(), 4, 10);
    let dir = tempfile::tempdir().unwrap();
    let mut files: Vec<String> = (0..10)
        .map(|i| image_file(dir.path(), &format!("{i}.jpg"), 200))
        .collect();
    files.push(image_file(dir.path(), "big.jpg", 1001));
    let mut args = vec!["--label", "rock", "--in-flight", "4"];
    args.extend(files.iter().map(String::as_str));
    let out = send(&[("GLIMPSE_MQTT__URL", &broker.url())], &args);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "one file was refused: {all}");
    assert!(
        all.contains("11 files in")
            && all.contains(": 10 accepted, 0 duplicate, 1 rejected, 0 no ack"),
        "{all}"
    );
    assert!(
        all.contains(
            "big.jpg (label rock): the file is 1001 bytes, over the device's limit of 1000 bytes"
        ),
        "{all}"
    );
    // The device only acks once 4 samples wait: send kept exactly 4 in flight, never more.
    assert_eq!(device.max_unacked.load(Ordering::SeqCst), 4, "{all}");
    assert_eq!(
        device.received.load(Ordering::SeqCst),
        10,
        "the oversized file must not be published: {all}"
    );

    // --json: the same tally as one object.
    let mut args = vec!["--label", "rock", "--json"];
    args.extend(files.iter().take(3).map(String::as_str));
    let out = send(&[("GLIMPSE_MQTT__URL", &broker.url())], &args);
    let tally: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
    assert_eq!(tally["files"], 3, "{tally}");
    assert_eq!(tally["accepted"], 3, "{tally}");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}
