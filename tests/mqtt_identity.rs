//! What is taught, at the edges (issue 9 items 4 and 7), end to end: the real `glimpse run`
//! binary, a real Mosquitto (tests/common), the real SQLite store.
//!
//! - `glimpse export` of 2,000+ samples (an archive over `mqtt.max_packet_bytes`) arrives in
//!   numbered parts, is reassembled and checked, and extracts on a real file system, with labels
//!   and ids stored before the label and id rules (a 64-emoji label, an id with a tab and a
//!   newline) kept inside their directory name and `index.tsv` field;
//! - labels and ids at the edges of the one rule (64 emoji, 65 emoji, empty, padded, 10 kB, `/`,
//!   `#`, `+`; empty, 100 kB, NUL and tab/newline ids) each get an ack, through raw MQTT and
//!   `glimpse send`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::daemon::{Daemon, DaemonConfig, GLIMPSE};
use common::{Mosquitto, Msg, Subscriber};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const DEVICE: &str = "cam1";
/// Samples seeded for the export test, and the bytes of each one's thumbnail: 2,000 x 5 KiB of
/// tar makes an archive over the default 8 MiB packet limit, so it cannot be one message.
const SEEDED: usize = 2_000;
const THUMB_BYTES: usize = 4_500;

fn topic(kind: &str) -> String {
    format!("glimpse/{DEVICE}/{kind}")
}

/// A running `glimpse run` replaying one photo in a loop, killed on drop.
fn start_daemon(dir: &Path, broker: &Mosquitto) -> Daemon {
    let source = dir.join("idle");
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(source.join("000_x.jpg"), photo()).unwrap();
    Daemon::start(DaemonConfig::new(dir, broker, DEVICE).source_dir(&source))
}

fn photo() -> Vec<u8> {
    let file = &common::rps_full_photos("rock", 1)[0];
    std::fs::read(file).expect("read photo")
}

fn json_of(msg: &Msg) -> Value {
    serde_json::from_slice(&msg.payload)
        .unwrap_or_else(|e| panic!("{} is not JSON ({e}): {}", msg.topic, msg.text()))
}

/// The first ack (received so far or later) matching `pred`.
fn ack(sub: &Subscriber, daemon: &Daemon, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let msg = sub
        .wait_for(Duration::from_secs(60), |m| {
            m.topic == topic("ack") && pred(&json_of(m))
        })
        .unwrap_or_else(|| {
            panic!(
                "no ack for {what}; acks: {:?}\n{}",
                sub.texts(&topic("ack")),
                daemon.log()
            )
        });
    json_of(&msg)
}

/// Waits until the daemon answers commands (it is connected and subscribed).
fn wait_ready(sub: &Subscriber, daemon: &Daemon) {
    for i in 0..120 {
        let id = format!("probe-{i}");
        sub.publish(&topic("cmd/labels"), format!(r#"{{"id":"{id}"}}"#), false);
        if sub
            .wait_for(Duration::from_millis(1000), |m| {
                m.topic == topic("ack") && json_of(m)["id"] == id.as_str()
            })
            .is_some()
        {
            return;
        }
    }
    panic!("daemon never answered:\n{}", daemon.log());
}

/// Runs the operator CLI against the device; (success, stdout + stderr).
fn glimpse(broker: &Mosquitto, args: &[&str]) -> (bool, String) {
    let out = Command::new(GLIMPSE)
        .args(args)
        .args([
            "--url",
            &broker.url(),
            "--device",
            DEVICE,
            "--timeout-s",
            "60",
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

/// The thumbnail seeded for sample `i` (distinct, so a misplaced part shows).
fn thumbnail(i: usize) -> Vec<u8> {
    let seed = Sha256::digest(i.to_le_bytes());
    seed.iter().copied().cycle().take(THUMB_BYTES).collect()
}

/// Seeds the store (before the daemon starts) with `rows` of (id, label), in one transaction:
/// the store's own schema, rows as an older version (before the id and label rules) could have
/// left them.
fn seed(state: &Path, rows: &[(String, String)]) {
    drop(glimpse::store::Store::open_in(state).expect("create the store"));
    let mut db = rusqlite::Connection::open(state.join("glimpse.db")).expect("open store");
    let tx = db.transaction().unwrap();
    for (i, (id, label)) in rows.iter().enumerate() {
        tx.execute(
            "INSERT INTO samples (id, label, embedding, source, created_at_ms, content_hash,
             thumbnail, fingerprint) VALUES (?1, ?2, ?3, 'json', 0, ?4, ?5, 'seeded')",
            rusqlite::params![id, label, vec![0u8; 16], format!("hash-{i}"), thumbnail(i)],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

/// Reads `index.tsv` rows (file, label, id) of an extracted archive, undoing its escapes.
fn index_rows(root: &Path) -> Vec<[String; 3]> {
    let text = std::fs::read_to_string(root.join("index.tsv")).expect("index.tsv");
    let unescape = |field: &str| {
        field
            .replace("\\t", "\t")
            .replace("\\n", "\n")
            .replace("\\\\", "\\")
    };
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("file\tlabel\tid"));
    lines
        .map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            assert_eq!(fields.len(), 3, "a forged row: {line:?}");
            [fields[0], fields[1], fields[2]].map(unescape)
        })
        .collect()
}

#[test]
fn export_of_2000_samples_streams_in_parts_and_extracts() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let emoji = "🐈".repeat(64);
    let mut rows: Vec<(String, String)> = (0..SEEDED)
        .map(|i| {
            (
                format!("seed-{i}"),
                ["rock", "paper", "scissors"][i % 3].into(),
            )
        })
        .collect();
    rows.push(("a\nb\tc".into(), emoji.clone()));
    rows.push(("plain".into(), "x/../y".into()));
    seed(&state, &rows);
    let daemon = start_daemon(dir.path(), &broker);
    let sub = Subscriber::connect(broker.port(), &[&topic("ack"), &topic("export")]);
    wait_ready(&sub, &daemon);

    let out = dir.path().join("samples.tar");
    let (ok, text) = glimpse(&broker, &["export", "--out", out.to_str().unwrap()]);
    assert!(ok, "{text}\n{}", daemon.log());
    assert!(
        text.contains(&format!("{} thumbnails", rows.len())),
        "{text}"
    );

    // The device sent numbered parts, none near the packet limit, then an ack that counts them.
    let done = ack(&sub, &daemon, "export", |a| a["command"] == "export");
    assert_eq!(done["published"], true, "{done}");
    let bytes = done["bytes"].as_u64().unwrap();
    assert!(
        bytes > 8 << 20,
        "the archive ({bytes}) must exceed one 8 MiB packet"
    );
    let parts = sub.messages(&topic("export"));
    assert_eq!(
        parts.len() as u64,
        done["parts"].as_u64().unwrap(),
        "{done}"
    );
    assert!(parts.len() > 100, "{} parts", parts.len());
    assert!(parts.iter().all(|p| p.payload.len() <= 65 * 1024));
    let archive = std::fs::read(&out).unwrap();
    assert_eq!(archive.len() as u64, bytes);
    assert_eq!(
        done["sha256"].as_str().unwrap(),
        hex::encode(Sha256::digest(&archive))
    );
    // Nothing is left behind: not on the device, not next to --out.
    assert_eq!(std::fs::read_dir(state.join("exports")).unwrap().count(), 0);
    let beside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".part-"))
        .collect();
    assert!(beside.is_empty(), "{beside:?}");

    // It extracts on a real file system, every file where index.tsv says, with its bytes.
    let root = dir.path().join("extracted");
    tar::Archive::new(std::fs::File::open(&out).unwrap())
        .unpack(&root)
        .expect("the archive extracts");
    let index = index_rows(&root);
    assert_eq!(index.len(), rows.len());
    let mut per_label: BTreeMap<String, usize> = BTreeMap::new();
    for (i, [file, label, id]) in index.iter().enumerate() {
        assert_eq!((id, label), (&rows[i].0, &rows[i].1), "row {i}");
        assert_eq!(
            std::fs::read(root.join(file)).unwrap(),
            thumbnail(i),
            "{file}"
        );
        *per_label
            .entry(file.split('/').next().unwrap().to_string())
            .or_default() += 1;
    }
    // The 64-emoji label (256 bytes) became a directory name a file system accepts.
    let cat_dir = "🐈".repeat(50);
    assert_eq!(per_label.get(&cat_dir), Some(&1), "{per_label:?}");
    assert_eq!(per_label.get("x_.._y"), Some(&1), "{per_label:?}");
    assert_eq!(per_label.get("rock"), Some(&667));
}

#[test]
fn labels_and_ids_at_the_edges_each_get_an_ack() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let daemon = start_daemon(dir.path(), &broker);
    let sub = Subscriber::connect(broker.port(), &[&topic("ack")]);
    wait_ready(&sub, &daemon);
    let image = photo();
    let hash = hex::encode(Sha256::digest(&image));
    let by_reason = |what: &str, reason: &str| {
        let reason = reason.to_string();
        ack(&sub, &daemon, what, move |a| {
            a["status"] == "rejected" && a["reason"].as_str().is_some_and(|r| r.contains(&reason))
        })
    };

    // Raw image samples: the label is the topic level, checked against the one rule.
    let emoji = "🐈".repeat(64);
    sub.publish(&topic(&format!("sample/{emoji}")), image.clone(), false);
    let a = ack(&sub, &daemon, "64 emoji", |a| a["label"] == emoji.as_str());
    assert_eq!(
        (a["status"].as_str(), a["id"].as_str()),
        (Some("accepted"), Some(hash.as_str()))
    );
    let over = "🐈".repeat(65);
    sub.publish(&topic(&format!("sample/{over}")), image.clone(), false);
    let a = by_reason("65 emoji", "label is 65 characters, the limit is 64");
    assert_eq!(a["id"], hash.as_str());
    sub.publish(&topic("sample/"), image.clone(), false);
    let a = by_reason("an empty label", "label is empty");
    assert_eq!(a["label"], "");
    // A 10 kB topic level: answered, and the ack echoes only the start of it.
    let long = "x".repeat(10_000);
    sub.publish(&topic(&format!("sample/{long}")), image.clone(), false);
    let a = by_reason("a 10 kB label", "label is 10000 characters");
    let echoed = a["label"].as_str().unwrap();
    assert!(
        long.starts_with(echoed) && echoed.len() <= 260,
        "{}",
        echoed.len()
    );
    sub.publish(&topic("sample/ cat"), image.clone(), false);
    by_reason("a padded label", "starts or ends with white space");

    // JSON samples: `/` and `#` cannot be in a topic level, but they can be in JSON.
    for (i, label) in ["a/b", "a#b", "a+b"].iter().enumerate() {
        let id = format!("j{i}");
        let payload = json!({"id": id, "label": label, "frame_id": 1}).to_string();
        sub.publish(&topic("sample"), payload, false);
        let a = ack(&sub, &daemon, label, |a| a["id"] == id.as_str());
        assert_eq!(a["status"], "rejected", "{a}");
        assert!(a["reason"].as_str().unwrap().contains("not allowed"), "{a}");
    }
    // Ids: empty, 100 kB, NUL-filled, tab and newline. Refused, and never echoed.
    let cases = [
        (String::new(), "id is empty"),
        ("x".repeat(100_000), "id is 100000 bytes, the limit is 128"),
        ("\0\0\0".to_string(), "id contains '\\0'"),
        ("a\nb\tc".to_string(), "id contains '\\n'"),
    ];
    for (id, reason) in &cases {
        let payload = json!({"id": id, "label": "ok", "frame_id": 1}).to_string();
        sub.publish(&topic("sample"), payload, false);
        let a = by_reason(reason, reason);
        assert!(a.get("id").is_none(), "an invalid id was echoed: {a}");
    }
    // A command with a forged id: refused, not run.
    sub.publish(
        &topic("cmd/export"),
        json!({"id": "a\nb\tc"}).to_string(),
        false,
    );
    let a = ack(&sub, &daemon, "a command with a bad id", |a| {
        a["command"] == "export"
    });
    assert_eq!(a["status"], "rejected", "{a}");
    assert!(a["reason"].as_str().unwrap().contains("id contains"), "{a}");
    assert!(a.get("id").is_none(), "{a}");

    // `glimpse send` applies the same rule before publishing anything.
    let file = dir.path().join("rock.jpg");
    std::fs::write(&file, &image).unwrap();
    let (ok, text) = glimpse(&broker, &["send", "--label", "a/b", file.to_str().unwrap()]);
    assert!(!ok && text.contains("not allowed"), "{text}");
    let (ok, text) = glimpse(&broker, &["send", "--label", &over, file.to_str().unwrap()]);
    assert!(!ok && text.contains("65 characters"), "{text}");
    let (ok, text) = glimpse(
        &broker,
        &["send", "--label", &emoji, file.to_str().unwrap()],
    );
    assert!(ok, "{text}\n{}", daemon.log());

    // Only the valid sample is stored, under its exact label.
    let db = rusqlite::Connection::open(dir.path().join("state/glimpse.db")).unwrap();
    let stored: Vec<(String, String)> = db
        .prepare("SELECT id, label FROM samples")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    assert_eq!(stored, [(hash.clone(), emoji.clone())]);
}
