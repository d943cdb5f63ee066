//! The MQTT edge under a hostile or clumsy broker client (issue 9), end to end: the real
//! `glimpse run` binary, a real Mosquitto (tests/common), the real SQLite store.
//!
//! - an oversized message (QoS 0, QoS 1, retained) is acked `rejected: too large` and the device
//!   stays connected and keeps predicting;
//! - a retained `cmd/forget` is never executed from its stored copy, across a broker restart;
//! - a burst of QoS 1 samples from several clients: every one acked, every accepted one stored.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::daemon::{Daemon, DaemonConfig};
use common::{Mosquitto, Msg, Subscriber};
use rumqttc::QoS;
use serde_json::Value;
use sha2::{Digest, Sha256};

const DEVICE: &str = "cam1";

fn topic(kind: &str) -> String {
    format!("glimpse/{DEVICE}/{kind}")
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The first `n` photos of a class of the real rock-paper-scissors set, as bytes.
fn photos(class: &str, n: usize) -> Vec<Vec<u8>> {
    common::rps_full_photos(class, n)
        .iter()
        .map(|f| std::fs::read(f).expect("read photo"))
        .collect()
}

/// The daemon of these tests: replaying one photo in a loop (so it predicts), stats every second,
/// reconnecting within a second.
fn config(dir: &Path, broker: &Mosquitto) -> DaemonConfig {
    let source = dir.join("idle");
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(source.join("000_x.jpg"), &photos("rock", 1)[0]).unwrap();
    DaemonConfig::new(dir, broker, DEVICE)
        .source_dir(&source)
        .set("mqtt.stats_interval_s", 1)
        .set("mqtt.reconnect_backoff_max_s", 1)
}

/// Samples per label in the store, read with SQLite directly.
fn stored_samples(dir: &Path) -> BTreeMap<String, (u64, Vec<String>)> {
    let db = rusqlite::Connection::open(dir.join("state/glimpse.db")).expect("open store");
    let mut stmt = db
        .prepare("SELECT label, content_hash FROM samples")
        .expect("query");
    let mut out: BTreeMap<String, (u64, Vec<String>)> = BTreeMap::new();
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .expect("rows");
    for row in rows {
        let (label, hash) = row.expect("row");
        let entry = out.entry(label).or_default();
        entry.0 += 1;
        entry.1.push(hash);
    }
    out
}

fn json_of(msg: &Msg) -> Value {
    serde_json::from_slice(&msg.payload)
        .unwrap_or_else(|e| panic!("{} is not JSON ({e}): {}", msg.topic, msg.text()))
}

fn wait_online(sub: &Subscriber, daemon: &Daemon) {
    sub.wait_for(Duration::from_secs(90), |m| {
        m.topic == topic("availability") && m.payload == b"online"
    })
    .unwrap_or_else(|| panic!("daemon never came online:\n{}", daemon.log()));
}

/// The first ack matching `pred`, within `timeout`.
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

/// Waits until the daemon is subscribed: a `labels` command comes back acked.
fn wait_subscribed(sub: &Subscriber, daemon: &Daemon) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0.. {
        let id = format!("probe-{i}");
        sub.publish(&topic("cmd/labels"), format!(r#"{{"id":"{id}"}}"#), false);
        if sub
            .wait_for(Duration::from_millis(500), |m| {
                m.topic == topic("ack") && json_of(m)["id"] == id.as_str()
            })
            .is_some()
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "daemon never subscribed:\n{}",
            daemon.log()
        );
    }
}

#[test]
fn oversized_messages_are_acked_too_large_and_the_device_stays_connected() {
    let broker = Mosquitto::start();
    let tmp = tempfile::tempdir().unwrap();
    let limit = 1024 * 1024;
    let big = vec![0x5a; 3 * limit];
    let sub = Subscriber::connect(
        broker.port(),
        &[
            &topic("availability"),
            &topic("ack"),
            &topic("prediction"),
            &topic("stats"),
        ],
    );
    // Retained before the device starts: the broker sends it on every subscription.
    sub.publish_qos(&topic("sample/early"), big.clone(), QoS::AtMostOnce, true);
    let daemon = Daemon::start(
        config(tmp.path(), &broker)
            .set("mqtt.max_packet_bytes", limit as i64)
            .set("learning.max_sample_bytes", (limit / 2) as i64),
    );
    wait_online(&sub, &daemon);
    let retained = ack(&sub, &daemon, "retained oversized sample", |a| {
        a["label"] == "early"
    });
    assert_eq!(retained["status"], "rejected", "{retained}");
    assert!(
        retained["reason"]
            .as_str()
            .unwrap()
            .starts_with("too large"),
        "{retained}"
    );
    sub.publish(&topic("sample/early"), Vec::new(), true); // clears the retained copy

    wait_subscribed(&sub, &daemon);
    sub.publish(&topic("sample/qos1"), big.clone(), false);
    sub.publish_qos(&topic("sample/qos0"), big.clone(), QoS::AtMostOnce, false);
    sub.publish(&topic("cmd/forget"), big.clone(), false);
    for label in ["qos1", "qos0"] {
        let a = ack(&sub, &daemon, label, |a| a["label"] == label);
        assert_eq!(a["status"], "rejected", "{a}");
        let reason = a["reason"].as_str().unwrap();
        assert!(
            reason.starts_with("too large") && reason.contains(&limit.to_string()),
            "{a}"
        );
    }
    let forget = ack(&sub, &daemon, "oversized command", |a| {
        a["command"] == "forget"
    });
    assert_eq!(forget["status"], "rejected", "{forget}");

    // Still the same connection, still predicting, and a normal sample still goes in.
    let photo = photos("paper", 1).remove(0);
    sub.publish(&topic("sample/paper"), photo.clone(), false);
    let accepted = ack(&sub, &daemon, "normal sample", |a| {
        a["id"] == sha256(&photo).as_str()
    });
    assert_eq!(accepted["status"], "accepted", "{accepted}");
    sub.clear();
    sub.wait_for(Duration::from_secs(30), |m| m.topic == topic("prediction"))
        .unwrap_or_else(|| {
            panic!(
                "no prediction after the oversized messages:\n{}",
                daemon.log()
            )
        });
    let stats = sub
        .wait_for(Duration::from_secs(30), |m| m.topic == topic("stats"))
        .map(|m| json_of(&m))
        .expect("stats");
    assert_eq!(stats["broker_reconnects"], 0, "{stats}");
    assert_eq!(stats["incoming_too_large"], 4, "{stats}");
    assert!(stats["incoming_dropped"].as_u64().unwrap() >= 4, "{stats}");
    assert!(
        !sub.texts(&topic("availability"))
            .contains(&"offline".to_string()),
        "the device dropped its connection:\n{}",
        daemon.log()
    );
}

#[test]
fn a_retained_forget_is_never_run_from_its_stored_copy_across_a_broker_restart() {
    let mut broker = Mosquitto::start_persistent();
    let tmp = tempfile::tempdir().unwrap();
    let sub = Subscriber::connect(
        broker.port(),
        &[&topic("availability"), &topic("ack"), &topic("stats")],
    );
    let daemon = Daemon::start(config(tmp.path(), &broker));
    wait_online(&sub, &daemon);
    wait_subscribed(&sub, &daemon);

    let mut rocks = photos("rock", 4);
    let first = rocks.remove(0);
    sub.publish(&topic("sample/rock"), first.clone(), false);
    let a = ack(&sub, &daemon, "first rock", |a| {
        a["id"] == sha256(&first).as_str()
    });
    assert_eq!(a["status"], "accepted", "{a}");

    // A live delivery (the device is subscribed: the broker clears the retain flag) runs once.
    sub.publish(&topic("cmd/forget"), r#"{"id":"f1","label":"rock"}"#, true);
    let live = ack(&sub, &daemon, "live forget", |a| a["id"] == "f1");
    assert_eq!(
        (live["status"].as_str(), live["deleted"].as_u64()),
        (Some("accepted"), Some(1)),
        "{live}"
    );

    // Taught after the forget: must survive the broker's stored copy coming back.
    for photo in &rocks {
        sub.publish(&topic("sample/rock"), photo.clone(), false);
    }
    for photo in &rocks {
        let a = ack(&sub, &daemon, "rock sample", |a| {
            a["id"] == sha256(photo).as_str()
        });
        assert_eq!(a["status"], "accepted", "{a}");
    }

    sub.clear();
    broker.restart_graceful();
    sub.wait_subscribed(2);
    // The device's re-subscription brings the stored copy back: counted as refused, not run.
    sub.wait_for(Duration::from_secs(60), |m| {
        m.topic == topic("stats") && json_of(m)["incoming_retained"].as_u64() >= Some(1)
    })
    .unwrap_or_else(|| {
        panic!(
            "no retained delivery counted after the restart:\n{}",
            daemon.log()
        )
    });
    let stored = stored_samples(tmp.path());
    assert_eq!(
        stored.get("rock").map(|s| s.0),
        Some(3),
        "{stored:?}\n{}",
        daemon.log()
    );

    // A restarted device meets the stored copy again (the broker kept it): its ack says why.
    drop(daemon);
    sub.clear();
    let daemon = Daemon::start(config(tmp.path(), &broker));
    let stored_copy = ack(&sub, &daemon, "retained forget", |a| a["id"] == "f1");
    assert_eq!(stored_copy["status"], "rejected", "{stored_copy}");
    assert!(
        stored_copy["reason"]
            .as_str()
            .unwrap()
            .starts_with("retained"),
        "{stored_copy}"
    );
    wait_subscribed(&sub, &daemon);
    let stored = stored_samples(tmp.path());
    assert_eq!(
        stored.get("rock").map(|s| s.0),
        Some(3),
        "{stored:?}\n{}",
        daemon.log()
    );
}

#[test]
fn a_burst_of_200_qos1_samples_from_4_clients_is_acked_in_full() {
    let broker = Mosquitto::start();
    let tmp = tempfile::tempdir().unwrap();
    let sub = Subscriber::connect(broker.port(), &[&topic("availability"), &topic("ack")]);
    let daemon = Daemon::start(config(tmp.path(), &broker));
    wait_online(&sub, &daemon);
    wait_subscribed(&sub, &daemon);

    let classes = ["rock", "paper", "scissors", "rock"];
    let per_client = 50;
    let senders: Vec<Subscriber> = (0..4)
        .map(|_| Subscriber::connect(broker.port(), &[&topic("unused")]))
        .collect();
    let mut sent: BTreeMap<String, &str> = BTreeMap::new();
    let batches: Vec<Vec<Vec<u8>>> = (0..4)
        .map(|c| {
            let mut all = photos(classes[c], 2 * per_client);
            // Client 3 sends other rocks than client 0.
            if c == 3 {
                all.drain(..per_client);
            }
            all.truncate(per_client);
            all
        })
        .collect();
    for (c, batch) in batches.iter().enumerate() {
        for photo in batch {
            sent.insert(sha256(photo), classes[c]);
        }
    }
    assert_eq!(sent.len(), 4 * per_client, "the photos are distinct");
    // All four at once, each as fast as its client can.
    std::thread::scope(|scope| {
        for ((sender, batch), class) in senders.iter().zip(&batches).zip(classes) {
            scope.spawn(move || {
                for photo in batch {
                    sender.publish(&topic(&format!("sample/{class}")), photo.clone(), false);
                }
            });
        }
    });

    let deadline = Instant::now() + Duration::from_secs(240);
    let acks = loop {
        let acks: BTreeMap<String, Value> = sub
            .messages(&topic("ack"))
            .iter()
            .map(json_of)
            .filter_map(|a| Some((a["id"].as_str()?.to_string(), a)))
            .filter(|(id, _)| sent.contains_key(id))
            .collect();
        if acks.len() == sent.len() || Instant::now() > deadline {
            break acks;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let missing: Vec<&String> = sent.keys().filter(|id| !acks.contains_key(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} samples got no ack:\n{}",
        missing.len(),
        sent.len(),
        daemon.log()
    );
    let accepted: Vec<&String> = acks
        .iter()
        .filter(|(_, a)| a["status"] == "accepted")
        .map(|(id, _)| id)
        .collect();
    for (id, a) in &acks {
        let status = a["status"].as_str().unwrap();
        assert!(
            status == "accepted"
                || (status == "rejected" && a["reason"].as_str().unwrap().contains("busy")),
            "unexpected ack for {id}: {a}"
        );
    }
    assert!(!accepted.is_empty(), "nothing accepted");
    let stored: Vec<String> = stored_samples(tmp.path())
        .into_values()
        .flat_map(|(_, hashes)| hashes)
        .collect();
    for id in &accepted {
        assert!(
            stored.contains(id),
            "accepted sample {id} is not in the store"
        );
    }
    eprintln!(
        "burst: {} accepted, {} busy of {}",
        accepted.len(),
        acks.len() - accepted.len(),
        sent.len()
    );
}
