//! Teaching in the field, end to end: the real `glimpse` binary as the daemon, a real Mosquitto
//! broker (tests/common), real SQLite. Samples go in with `glimpse send` or raw MQTT, heads are
//! retrained and swapped, predictions are read back from MQTT, and the store is inspected
//! directly with rusqlite.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::daemon::{Daemon, DaemonConfig, GLIMPSE};
use common::{Mosquitto, Msg, Subscriber};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const DEVICE: &str = "cam1";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn dataset(name: &str) -> PathBuf {
    let path = repo().join("../shared/datasets").join(name);
    assert!(path.is_dir(), "test data {} is missing", path.display());
    path
}

fn topic(kind: &str) -> String {
    format!("glimpse/{DEVICE}/{kind}")
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Sorted images of one class folder.
fn class_files(set: &str, class: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dataset(set).join(class))
        .expect("read class folder")
        .map(|e| e.expect("dir entry").path())
        .collect();
    files.sort();
    files
}

/// The deterministic 80/20 split of a class: every 5th file (index % 5 == 4) is a test file.
fn split(files: &[PathBuf]) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (i, f) in files.iter().enumerate() {
        if i % 5 == 4 {
            test.push(f.clone());
        } else {
            train.push(f.clone());
        }
    }
    (train, test)
}

/// The daemon of these tests: [`DEVICE`] on `broker`, its store in `state`, replaying `source`
/// (at 1 fps in a loop, or at 3 fps once); training on command only.
fn config(
    dir: &Path,
    broker: &Mosquitto,
    state: &Path,
    source: &Path,
    looping: bool,
) -> DaemonConfig {
    DaemonConfig::new(dir, broker, DEVICE)
        .state_dir(state)
        .source_dir(source)
        .set("source.replay_fps", if looping { 1 } else { 3 })
        .set("source.replay_loop", looping)
}

fn json_of(msg: &Msg) -> Value {
    serde_json::from_slice(&msg.payload)
        .unwrap_or_else(|e| panic!("{} is not JSON ({e}): {}", msg.topic, msg.text()))
}

/// Waits until the daemon is online (its retained availability).
fn wait_online(sub: &Subscriber, daemon: &Daemon) {
    sub.wait_for(Duration::from_secs(60), |m| {
        m.topic == topic("availability") && m.payload == b"online"
    })
    .unwrap_or_else(|| panic!("daemon never came online:\n{}", daemon.log()));
}

fn glimpse(broker: &Mosquitto, args: &[&str]) -> (bool, String) {
    let out = Command::new(GLIMPSE)
        .args(args)
        .args([
            "--url",
            &broker.url(),
            "--device",
            DEVICE,
            "--timeout-s",
            "120",
        ])
        .output()
        .expect("run glimpse");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A one-photo looping replay: keeps a daemon online and predicting while a test teaches it.
fn idle_source(root: &Path) -> PathBuf {
    replay_dir(
        root,
        "idle",
        &[(class_files("rps", "rock")[0].clone(), "x".into())],
    )
}

/// Copies labeled files into a fresh folder as `NNN_label.ext`, so the dir source replays them
/// in this order and frame N is file N.
fn replay_dir(root: &Path, name: &str, files: &[(PathBuf, String)]) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).expect("mkdir");
    for (i, (file, label)) in files.iter().enumerate() {
        let ext = file.extension().and_then(|e| e.to_str()).unwrap_or("png");
        std::fs::copy(file, dir.join(format!("{i:03}_{label}.{ext}"))).expect("copy");
    }
    dir
}

/// Runs a non-looping daemon over `files` and returns the predicted label of each frame.
fn predict(
    root: &Path,
    broker: &Mosquitto,
    state: &Path,
    name: &str,
    files: &[(PathBuf, String)],
) -> BTreeMap<u64, String> {
    let source = replay_dir(root, name, files);
    let sub = Subscriber::connect(
        broker.port(),
        &[&topic("prediction"), &topic("availability")],
    );
    sub.clear();
    let mut daemon = Daemon::start(config(root, broker, state, &source, false));
    daemon.wait_exit(Duration::from_secs(300));
    sub.expect(&topic("availability"), b"stopped");
    let mut predicted = BTreeMap::new();
    for msg in sub.messages(&topic("prediction")) {
        let v = json_of(&msg);
        let frame = v["frame_id"].as_u64().expect("frame_id");
        let label = v["label"]
            .as_str()
            .unwrap_or_else(|| panic!("prediction without a head label: {v}"));
        predicted.insert(frame, label.to_string());
    }
    assert!(
        predicted.len() * 10 >= files.len() * 8,
        "only {} of {} frames predicted:\n{}",
        predicted.len(),
        files.len(),
        daemon.log()
    );
    predicted
}

fn accuracy(
    predicted: &BTreeMap<u64, String>,
    files: &[(PathBuf, String)],
    which: impl Fn(&str) -> bool,
) -> (f32, usize) {
    let mut right = 0;
    let mut n = 0;
    for (frame, label) in predicted {
        let truth = &files[*frame as usize].1;
        if which(truth) {
            n += 1;
            if label == truth {
                right += 1;
            }
        }
    }
    (right as f32 / n.max(1) as f32, n)
}

#[test]
fn teach_and_predict_then_add_classes() {
    let broker = Mosquitto::start();
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let idle = idle_source(tmp.path());

    // 80% of rps, class per folder, sent with `glimpse send`.
    let teach = tmp.path().join("teach");
    let mut rps_test = Vec::new();
    for class in ["paper", "rock", "scissors"] {
        let (train, test) = split(&class_files("rps", class));
        std::fs::create_dir_all(teach.join(class)).unwrap();
        for f in train {
            std::fs::copy(&f, teach.join(class).join(f.file_name().unwrap())).unwrap();
        }
        rps_test.extend(test.into_iter().map(|f| (f, class.to_string())));
    }
    let sub = Subscriber::connect(broker.port(), &[&topic("availability"), &topic("report")]);
    // Default learning settings: a 20% holdout gates the head, which is then refit on all.
    let mut daemon = Daemon::start(config(tmp.path(), &broker, &state, &idle, true));
    wait_online(&sub, &daemon);
    let (ok, out) = glimpse(&broker, &["send", teach.to_str().unwrap()]);
    assert!(ok, "glimpse send failed:\n{out}\n{}", daemon.log());
    assert!(
        out.contains("192 files in")
            && out.contains(": 192 accepted, 0 duplicate, 0 rejected, 0 no ack"),
        "{out}"
    );
    // Sending the same files again: all duplicates, still success.
    let (ok, out) = glimpse(
        &broker,
        &[
            "send",
            "--label",
            "rock",
            teach.join("rock").to_str().unwrap(),
        ],
    );
    assert!(
        ok && out.contains(": 0 accepted, 64 duplicate, 0 rejected"),
        "{out}"
    );
    let (ok, out) = glimpse(&broker, &["retrain"]);
    assert!(ok, "retrain: {out}\n{}", daemon.log());
    let report = json_of(&sub.expect_any(&topic("report")));
    assert_eq!(report["accepted"], true, "{report}");
    assert_eq!(report["version"], 1, "{report}");
    assert_eq!(
        report["samples_per_class"],
        json!({"paper": 64, "rock": 64, "scissors": 64})
    );
    // Gated on a holdout the head never saw, then refit on every sample.
    let (train, val) = (report["train_count"].as_u64(), report["val_count"].as_u64());
    assert!(
        val.unwrap() > 0 && train.unwrap() + val.unwrap() == 192,
        "{report}"
    );
    assert_eq!(report["deployed_train_count"], 192, "{report}");
    assert!(state.join("heads/v000001.head").is_file());
    assert!(state.join("heads/v000001.gate.head").is_file());
    let (ok, out) = glimpse(&broker, &["samples"]);
    assert!(ok && out.contains("192  total"), "{out}");
    daemon.stop();

    let predicted = predict(tmp.path(), &broker, &state, "rps-test", &rps_test);
    let (acc, n) = accuracy(&predicted, &rps_test, |_| true);
    eprintln!("rps: {acc:.3} on {n} held-out frames");
    assert!(
        acc >= 0.97,
        "rps accuracy {acc} on {n} frames: {predicted:?}"
    );

    // New classes: a few of each sign digit, then both old and new classes are predicted.
    let digits: Vec<String> = (0..10).map(|d| d.to_string()).collect();
    let mut digit_test = Vec::new();
    let teach_digits = tmp.path().join("teach-digits");
    for d in &digits {
        let files = class_files("sign_digits", d);
        std::fs::create_dir_all(teach_digits.join(d)).unwrap();
        for f in &files[..12] {
            std::fs::copy(f, teach_digits.join(d).join(f.file_name().unwrap())).unwrap();
        }
        digit_test.extend(files[40..43].iter().map(|f| (f.clone(), d.clone())));
    }
    let sub = Subscriber::connect(broker.port(), &[&topic("availability"), &topic("report")]);
    sub.clear();
    let mut daemon = Daemon::start(config(tmp.path(), &broker, &state, &idle, true));
    wait_online(&sub, &daemon);
    let (ok, out) = glimpse(&broker, &["send", teach_digits.to_str().unwrap()]);
    assert!(ok, "{out}");
    let (ok, out) = glimpse(&broker, &["retrain"]);
    assert!(ok, "retrain with new classes: {out}\n{}", daemon.log());
    let report = sub
        .wait_for(common::WAIT, |m| {
            m.topic == topic("report") && json_of(m)["version"] == 2
        })
        .expect("report of v2");
    assert_eq!(json_of(&report)["classes"].as_array().unwrap().len(), 13);
    daemon.stop();

    let mixed: Vec<(PathBuf, String)> = rps_test
        .iter()
        .step_by(2)
        .cloned()
        .chain(digit_test.clone())
        .collect();
    let predicted = predict(tmp.path(), &broker, &state, "mixed-test", &mixed);
    let is_digit = |l: &str| digits.iter().any(|d| d == l);
    let (rps_acc, n_rps) = accuracy(&predicted, &mixed, |l| !is_digit(l));
    let (digit_acc, n_digits) = accuracy(&predicted, &mixed, is_digit);
    assert!(
        rps_acc >= 0.95,
        "old classes after adding new ones: {rps_acc} on {n_rps}"
    );
    assert!(
        digit_acc >= 0.5,
        "new classes: {digit_acc} on {n_digits}: {predicted:?}"
    );
}

/// Publishes and returns the next ack (the learner answers in order, one at a time).
fn next_ack(sub: &Subscriber, topic_name: &str, payload: impl Into<Vec<u8>>) -> Value {
    let before = sub.messages(&topic("ack")).len();
    sub.publish(topic_name, payload, false);
    common::wait_until("the next ack", || {
        sub.messages(&topic("ack")).len() > before
    });
    json_of(&sub.messages(&topic("ack"))[before])
}

#[test]
fn bad_input_is_rejected_with_a_reason_and_nothing_is_stored() {
    let broker = Mosquitto::start();
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let idle = idle_source(tmp.path());
    let sub = Subscriber::connect(
        broker.port(),
        &[&topic("availability"), &topic("ack"), &topic("prediction")],
    );
    let daemon = Daemon::start(
        config(tmp.path(), &broker, &state, &idle, true).set("learning.max_sample_bytes", 1000000),
    );
    wait_online(&sub, &daemon);
    let jpeg = std::fs::read(&class_files("sign_digits", "3")[0]).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&jpeg);
    let mut png_bomb = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
    png_bomb.extend_from_slice(&30000u32.to_be_bytes());
    png_bomb.extend_from_slice(&30000u32.to_be_bytes());
    png_bomb.extend_from_slice(&[8, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);

    let raw: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "non-image",
            b"hello, not an image".to_vec(),
            "not a usable image",
        ),
        ("truncated", jpeg[..jpeg.len() / 2].to_vec(), "truncated"),
        ("empty", Vec::new(), "empty payload"),
        ("too large", vec![0xFF; 1_500_000], "max_sample_bytes"),
        ("bomb", png_bomb, "30000"),
    ];
    for (what, payload, reason) in raw {
        let id = sha256(&payload);
        let ack = next_ack(&sub, &topic("sample/rock"), payload);
        assert_eq!(ack["status"], "rejected", "{what}: {ack}");
        assert_eq!(ack["id"], id.as_str(), "{what}: {ack}");
        assert!(
            ack["reason"].as_str().unwrap_or("").contains(reason),
            "{what}: {ack}"
        );
    }
    let long = "x".repeat(1000);
    for (label, reason) in [
        ("a/b", "not allowed"),
        ("a+b", "not allowed"),
        ("a#b", "not allowed"),
        ("a\0b", "not allowed"),
        (long.as_str(), "1000 characters"),
    ] {
        let payload = json!({"id": "bad-label", "label": label, "image": b64}).to_string();
        let ack = next_ack(&sub, &topic("sample"), payload);
        assert_eq!(ack["status"], "rejected", "{label:?}: {ack}");
        assert_eq!(ack["id"], "bad-label");
        assert!(ack["reason"].as_str().unwrap().contains(reason), "{ack}");
    }
    // Invalid UTF-8 in the label (a JSON string must be UTF-8): refused as malformed JSON.
    let mut invalid = br#"{"id":"u","label":"a"#.to_vec();
    invalid.extend_from_slice(b"\xff\xfe\",\"frame_id\":1}");
    let ack = next_ack(&sub, &topic("sample"), invalid);
    assert_eq!(ack["status"], "rejected");
    assert!(
        ack["reason"].as_str().unwrap().contains("malformed"),
        "{ack}"
    );
    let ack = next_ack(&sub, &topic("sample"), b"{\"label\": ".to_vec());
    assert!(
        ack["reason"].as_str().unwrap().contains("malformed"),
        "{ack}"
    );
    let ack = next_ack(
        &sub,
        &topic("sample"),
        json!({"id":"f","label":"x","frame_id": 99_999_999u64}).to_string(),
    );
    assert_eq!(ack["status"], "rejected");
    assert!(
        ack["reason"]
            .as_str()
            .unwrap()
            .contains("not among the recently"),
        "{ack}"
    );
    let ack = next_ack(
        &sub,
        &topic("cmd/selfdestruct"),
        json!({"id":"c"}).to_string(),
    );
    assert_eq!(
        (ack["status"].as_str(), ack["id"].as_str()),
        (Some("rejected"), Some("c"))
    );
    assert!(
        ack["reason"].as_str().unwrap().contains("unknown command"),
        "{ack}"
    );
    let ack = next_ack(&sub, &topic("cmd/labels"), Vec::new());
    assert_eq!(ack["labels"], json!({}), "something was stored: {ack}");
    // A command id runs once: the repeat is acked `duplicate` and not run again.
    let labels = json!({"id": "L1"}).to_string();
    let ack = next_ack(&sub, &topic("cmd/labels"), labels.clone());
    assert_eq!(
        (ack["status"].as_str(), ack["id"].as_str()),
        (Some("accepted"), Some("L1"))
    );
    let ack = next_ack(&sub, &topic("cmd/labels"), labels);
    assert_eq!(ack["status"], "duplicate", "{ack}");
    assert!(ack.get("labels").is_none(), "ran again: {ack}");

    // Still predicting: a new prediction arrives after all of that.
    let last = sub.messages(&topic("prediction")).len();
    common::wait_until("a prediction after the bad input", || {
        sub.messages(&topic("prediction")).len() > last + 1
    });
    // And the frame path works: label the newest published frame.
    let frame = json_of(sub.messages(&topic("prediction")).last().unwrap())["frame_id"].clone();
    let ack = next_ack(
        &sub,
        &topic("sample"),
        json!({"id":"fr","label":"scene","frame_id": frame}).to_string(),
    );
    assert_eq!(ack["status"], "accepted", "{ack}");
    let ack = next_ack(
        &sub,
        &topic("sample"),
        json!({"id":"fr","label":"scene","frame_id": frame}).to_string(),
    );
    assert_eq!(ack["status"], "duplicate", "{ack}");
    let ack = next_ack(&sub, &topic("cmd/export"), Vec::new());
    let path = ack["path"].as_str().unwrap_or_else(|| panic!("{ack}"));
    let mut archive = tar::Archive::new(std::fs::File::open(path).unwrap());
    let names: Vec<String> = archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    assert_eq!(names, ["scene/000000.jpg", "index.tsv"]);
    // The same archive fetched over MQTT by the operator tool.
    let fetched = tmp.path().join("fetched.tar");
    let (ok, out) = glimpse(&broker, &["export", "--out", fetched.to_str().unwrap()]);
    assert!(ok && out.contains("1 thumbnails"), "{out}");
    let mut archive = tar::Archive::new(std::fs::File::open(&fetched).unwrap());
    let mut index = String::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        if entry.path().unwrap().to_str() == Some("index.tsv") {
            std::io::Read::read_to_string(&mut entry, &mut index).unwrap();
        }
    }
    assert!(index.contains("scene/000000.jpg\tscene\tfr"), "{index}");
    // One export at a time, and a published one is not kept: nothing is left on the device.
    assert!(
        !Path::new(path).exists(),
        "the first archive was not replaced"
    );
    let left: Vec<_> = std::fs::read_dir(state.join("exports")).unwrap().collect();
    assert!(left.is_empty(), "exports left on the device: {left:?}");
    drop(daemon);
}

fn stored_samples(state: &Path) -> BTreeMap<(String, String), usize> {
    let conn = rusqlite::Connection::open(state.join("glimpse.db")).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let mut stmt = conn
        .prepare("SELECT id, label, length(embedding), thumbnail FROM samples")
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Option<Vec<u8>>>(3)?,
            ))
        })
        .unwrap();
    let mut out = BTreeMap::new();
    for row in rows {
        let (id, label, len, thumb) = row.unwrap();
        assert_eq!(len, 1280 * 4, "half-written embedding for {id}");
        let thumb = thumb.unwrap_or_else(|| panic!("no thumbnail for {id}"));
        assert!(
            image::load_from_memory(&thumb).is_ok(),
            "bad thumbnail for {id}"
        );
        out.insert((id, label), len as usize);
    }
    out
}

/// Samples sent and not yet acked, at most, while streaming.
const WINDOW: usize = 16;

/// Streams samples while something disruptive happens `disruptions` times; returns accepted ids.
fn stream_with_disruptions(disrupt_broker: bool) {
    let mut broker = Mosquitto::start();
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let idle = idle_source(tmp.path());
    let mut files: Vec<(PathBuf, String)> = Vec::new();
    for class in ["paper", "rock", "scissors"] {
        files.extend(
            class_files("rps", class)
                .into_iter()
                .take(60)
                .map(|f| (f, class.to_string())),
        );
    }
    for d in ["0", "1", "2"] {
        files.extend(
            class_files("sign_digits", d)
                .into_iter()
                .take(40)
                .map(|f| (f, format!("d{d}"))),
        );
    }
    assert_eq!(files.len(), 300);
    let sub = Subscriber::connect(broker.port(), &[&topic("availability"), &topic("ack")]);
    let mut daemon = Daemon::start(config(tmp.path(), &broker, &state, &idle, true));
    wait_online(&sub, &daemon);
    let mut rng_state = 0x9E3779B97F4A7C15u64;
    let mut next_random = move |n: u64| {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state % n
    };
    let disrupt_at: BTreeSet<usize> = (0..3)
        .map(|i| 40 + i * 80 + next_random(60) as usize)
        .collect();
    let acked = || -> BTreeSet<String> {
        sub.messages(&topic("ack"))
            .iter()
            .filter_map(|m| json_of(m)["id"].as_str().map(str::to_string))
            .collect()
    };
    let onlines = || {
        sub.messages(&topic("availability"))
            .iter()
            .filter(|m| m.payload == b"online")
            .count()
    };
    let mut sent = BTreeMap::new();
    // Sent since the last disruption: what was in flight then may be lost unacked (that is
    // allowed: only an acked sample is promised), so only these are waited for.
    let mut since_disruption: Vec<String> = Vec::new();
    let unacked = |ids: &[String]| {
        let acked = acked();
        ids.iter().filter(|id| !acked.contains(*id)).count()
    };
    for (i, (file, label)) in files.iter().enumerate() {
        let bytes = std::fs::read(file).unwrap();
        let id = sha256(&bytes);
        sent.insert(id.clone(), label.clone());
        // At most WINDOW samples without an ack, however slow the machine: a fixed rate would
        // overrun the device's ingest queue on a loaded box and most samples would be answered
        // `busy` (few accepted, little tested).
        let deadline = Instant::now() + common::WAIT;
        while unacked(&since_disruption) >= WINDOW {
            if Instant::now() > deadline {
                // Their acks are not coming (sent while the daemon was not subscribed): lost
                // unacked, which is allowed. Stream on.
                since_disruption.clear();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // The test client's own queue may refuse while the broker is away: retry.
        let deadline = Instant::now() + common::WAIT;
        loop {
            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                sub.publish(&topic(&format!("sample/{label}")), bytes.clone(), false)
            }));
            if ok.is_ok() || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        since_disruption.push(id);
        std::thread::sleep(Duration::from_millis(20));
        if disrupt_at.contains(&i) {
            // Let some samples reach the daemon, then hit it mid-ingest.
            std::thread::sleep(Duration::from_millis(next_random(1500)));
            since_disruption.clear();
            let online_before = onlines();
            if disrupt_broker {
                broker.restart();
            } else {
                daemon.kill9();
                daemon = Daemon::start(config(tmp.path(), &broker, &state, &idle, true));
            }
            // Streaming on only once the daemon is back (restarted, or reconnected): the next
            // disruption then hits a running daemon mid-ingest, not one still loading its model
            // (which tests nothing), and the samples sent meanwhile do not pile up into one
            // burst that overruns its queue.
            let deadline = Instant::now() + Duration::from_secs(90);
            while onlines() == online_before {
                assert!(
                    Instant::now() < deadline,
                    "daemon never came back online:\n{}",
                    daemon.log()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    // Let the daemon drain what the broker still holds for it: every sample sent since the last
    // disruption acked, or (acks lost with a broker restart) no new ack for 15 s.
    let mut quiet_since = Instant::now();
    let mut seen = 0;
    while unacked(&since_disruption) > 0 && quiet_since.elapsed() < Duration::from_secs(15) {
        let n = sub.messages(&topic("ack")).len();
        if n != seen {
            seen = n;
            quiet_since = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    daemon.stop();
    let stored = stored_samples(&state);
    let mut accepted = 0;
    for msg in sub.messages(&topic("ack")) {
        let ack = json_of(&msg);
        if ack["status"] == "accepted" {
            accepted += 1;
            let key = (
                ack["id"].as_str().unwrap().to_string(),
                ack["label"].as_str().unwrap().to_string(),
            );
            assert!(
                stored.contains_key(&key),
                "acked sample {key:?} is not in the store"
            );
            assert_eq!(
                sent.get(&key.0),
                Some(&key.1),
                "ack for something never sent"
            );
        }
    }
    assert!(
        accepted >= 100,
        "only {accepted} samples accepted:\n{}",
        daemon.log()
    );
    assert!(stored.len() <= 300);
}

#[test]
fn no_acked_sample_is_lost_when_the_daemon_is_killed() {
    stream_with_disruptions(false);
}

#[test]
fn no_acked_sample_is_lost_when_the_broker_restarts() {
    stream_with_disruptions(true);
}

#[test]
fn a_corrupt_head_version_falls_back_to_the_previous_one() {
    let broker = Mosquitto::start();
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let idle = idle_source(tmp.path());
    let sub = Subscriber::connect(
        broker.port(),
        &[&topic("availability"), &topic("ack"), &topic("prediction")],
    );
    let mut daemon = Daemon::start(config(tmp.path(), &broker, &state, &idle, true));
    wait_online(&sub, &daemon);
    for round in 0..2 {
        for class in ["paper", "rock"] {
            for f in class_files("rps", class).iter().skip(round * 6).take(6) {
                let (ok, out) = glimpse(&broker, &["send", "--label", class, f.to_str().unwrap()]);
                assert!(ok, "{out}");
            }
        }
        let (ok, out) = glimpse(&broker, &["retrain", "--force"]);
        assert!(ok, "{out}");
    }
    daemon.stop();
    {
        let conn = rusqlite::Connection::open(state.join("glimpse.db")).unwrap();
        let file: String = conn
            .query_row(
                "SELECT file FROM heads WHERE version = 2 AND active = 1",
                [],
                |r| r.get(0),
            )
            .expect("head v2 is active");
        assert_eq!(file, "v000002.head");
        let path = state.join("heads").join(file);
        let mut bytes = std::fs::read(&path).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0x55;
        std::fs::write(&path, bytes).unwrap();
    }
    sub.clear();
    let mut daemon = Daemon::start(config(tmp.path(), &broker, &state, &idle, true));
    let ack = sub
        .wait_for(common::WAIT * 3, |m| m.topic == topic("ack"))
        .unwrap_or_else(|| panic!("no error published:\n{}", daemon.log()));
    let ack = json_of(&ack);
    assert_eq!(ack["command"], "restore_head", "{ack}");
    let reason = ack["reason"].as_str().unwrap();
    assert!(
        reason.contains("head v2") && reason.contains("v1"),
        "{reason}"
    );
    let prediction = sub
        .wait_for(common::WAIT * 3, |m| m.topic == topic("prediction"))
        .expect("prediction");
    assert_eq!(json_of(&prediction)["head_version"], 1);
    daemon.stop();
    assert!(
        daemon.log().contains("head v2 in the store"),
        "{}",
        daemon.log()
    );
    // Rollback: v1 is the oldest, so there is nothing older to go to.
    sub.clear();
    let mut daemon = Daemon::start(config(tmp.path(), &broker, &state, &idle, true));
    wait_online(&sub, &daemon);
    let (ok, out) = glimpse(&broker, &["rollback"]);
    assert!(
        !ok && out.contains("no usable head version older than v1"),
        "{out}"
    );
    daemon.stop();
}

/// Default learning settings, no command: a label the head does not know is served after a few
/// samples (imprinted, then trained when the samples stop), and Home Assistant's `options` follow
/// the head (discovery republished on every head change).
#[test]
fn a_new_label_is_served_without_a_command() {
    let broker = Mosquitto::start();
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let idle = idle_source(tmp.path());
    let label_config = "homeassistant/sensor/cam1/label/config";
    let sub = Subscriber::connect(
        broker.port(),
        &[&topic("availability"), &topic("report"), label_config],
    );
    let mut daemon = Daemon::start(
        config(tmp.path(), &broker, &state, &idle, true)
            .set("learning.retrain_after", 10)
            .set("mqtt.homeassistant.enabled", true),
    );
    wait_online(&sub, &daemon);
    let options = |m: &Msg| -> Vec<String> {
        json_of(m)["options"]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    let teach = |class: &str, files: &[PathBuf]| {
        let dir = tmp.path().join(format!("teach-{class}"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in files {
            std::fs::copy(f, dir.join(f.file_name().unwrap())).unwrap();
        }
        let (ok, out) = glimpse(&broker, &["send", "--label", class, dir.to_str().unwrap()]);
        assert!(ok, "{out}\n{}", daemon.log());
    };
    teach("paper", &class_files("rps", "paper")[..12]);
    teach("rock", &class_files("rps", "rock")[..12]);
    let first = sub
        .wait_for(common::WAIT * 3, |m| {
            m.topic == topic("report") && json_of(m)["version"] == 1
        })
        .unwrap_or_else(|| panic!("no automatic training:\n{}", daemon.log()));
    assert_eq!(json_of(&first)["trigger"], "auto");
    sub.wait_for(common::WAIT, |m| {
        m.topic == label_config && options(m) == ["paper", "rock"]
    })
    .unwrap_or_else(|| panic!("discovery not republished for v1:\n{}", daemon.log()));

    teach("scissors", &class_files("rps", "scissors")[..10]);
    sub.wait_for(common::WAIT * 3, |m| {
        m.topic == label_config && options(m).contains(&"scissors".to_string())
    })
    .unwrap_or_else(|| panic!("scissors never served:\n{}", daemon.log()));
    let report = sub
        .wait_for(common::WAIT * 3, |m| {
            m.topic == topic("report") && json_of(m)["classes"].as_array().map(Vec::len) == Some(3)
        })
        .unwrap_or_else(|| panic!("no training with scissors:\n{}", daemon.log()));
    let report = json_of(&report);
    assert_eq!(report["trigger"], "auto", "{report}");
    assert_eq!(report["accepted"], true, "{report}");
    assert!(
        daemon.log().contains("imprinted \"scissors\""),
        "{}",
        daemon.log()
    );
    daemon.stop();
}

/// The classes of the active head version, read from the store after the daemon stopped.
fn active_head_classes(state: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(state.join("glimpse.db")).unwrap();
    let report: String = conn
        .query_row("SELECT report FROM heads WHERE active = 1", [], |r| {
            r.get(0)
        })
        .expect("an active head");
    let report: Value = serde_json::from_str(&report).unwrap();
    report["classes"]
        .as_array()
        .expect("classes")
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect()
}

/// kill -9 at several moments after `cmd/forget`: after the restart, either the forget never
/// happened (the samples are there, and a second forget works) or it is finished (the active
/// head no longer knows the class). Never the old head over a store without the class.
#[test]
fn a_forget_cut_short_by_kill_9_is_finished_or_undone() {
    let broker = Mosquitto::start();
    let tmp = tempfile::tempdir().unwrap();
    let idle = idle_source(tmp.path());
    for (attempt, delay_ms) in [0u64, 40, 120, 300].into_iter().enumerate() {
        let state = tmp.path().join(format!("state-{attempt}"));
        let sub = Subscriber::connect(broker.port(), &[&topic("availability"), &topic("ack")]);
        let mut daemon = Daemon::start(config(tmp.path(), &broker, &state, &idle, true));
        wait_online(&sub, &daemon);
        for class in ["paper", "rock", "scissors"] {
            for f in class_files("rps", class).iter().take(6) {
                let (ok, out) = glimpse(&broker, &["send", "--label", class, f.to_str().unwrap()]);
                assert!(ok, "{out}");
            }
        }
        let (ok, out) = glimpse(&broker, &["retrain", "--force"]);
        assert!(ok, "{out}");
        sub.clear();
        sub.publish(&topic("cmd/forget"), r#"{"label":"rock"}"#, false);
        std::thread::sleep(Duration::from_millis(delay_ms));
        daemon.kill9();

        sub.clear();
        let mut daemon = Daemon::start(config(tmp.path(), &broker, &state, &idle, true));
        wait_online(&sub, &daemon);
        let (ok, out) = glimpse(&broker, &["forget", "rock"]);
        if ok {
            // The first forget did not commit: this one did the work.
            assert!(out.contains("forget: accepted"), "{out}");
        } else {
            assert!(out.contains("no samples labeled"), "{out}");
        }
        daemon.stop();
        let classes = active_head_classes(&state);
        assert_eq!(
            classes,
            ["paper", "scissors"],
            "after kill -9 {delay_ms} ms into a forget (second forget ok: {ok}):\n{}",
            daemon.log()
        );
    }
}
