//! `MqttLink` against a real Mosquitto: availability (online / stopped / last will), publishing,
//! receiving samples, reconnecting after a broker restart, the bounded outbox, large payloads.
//!
//! The test thread blocks on the harness's waits while the link's tasks run on a 2-thread tokio
//! runtime; `rt.block_on` is used only to await the link itself.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{build_example, wait_until, Mosquitto, Subscriber, WAIT};
use glimpse::mqtt::link::LinkError;
use glimpse::mqtt::messages::{Prediction, Scored};
use glimpse::mqtt::topics::Outgoing;
use glimpse::mqtt::{Incoming, MqttConfig, MqttLink, Received};
use tokio::runtime::Runtime;
use tokio::sync::mpsc;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn config(broker: &Mosquitto, device: &str) -> MqttConfig {
    MqttConfig {
        url: broker.url(),
        device_id: device.to_string(),
        // Short backoff cap: the restart test should not wait 30 s for the next attempt.
        reconnect_backoff_max_s: 1,
        ..MqttConfig::default()
    }
}

fn prediction(device: &str, frame_id: u64) -> Prediction {
    Prediction {
        device: device.to_string(),
        frame_id,
        label: Some("daisy".into()),
        score: Some(0.9),
        top_k: vec![Scored {
            label: "daisy".into(),
            score: 0.9,
        }],
        imagenet_top_k: None,
        captured_at_ms: 1_700_000_000_000 + frame_id,
        latency_ms: 40.0,
        head_version: Some(1),
    }
}

fn recv(rt: &Runtime, rx: &mut mpsc::Receiver<Received>, timeout: Duration) -> Option<Received> {
    rt.block_on(async {
        tokio::time::timeout(timeout, rx.recv())
            .await
            .ok()
            .flatten()
    })
}

fn frame_ids(sub: &Subscriber, topic: &str) -> Vec<u64> {
    sub.messages(topic)
        .iter()
        .filter_map(|m| serde_json::from_slice::<Prediction>(&m.payload).ok())
        .map(|p| p.frame_id)
        .collect()
}

#[test]
fn online_is_retained_and_predictions_arrive() {
    let broker = Mosquitto::start();
    let rt = runtime();
    let _enter = rt.enter();
    let (link, _rx) = MqttLink::start(&config(&broker, "cam1")).unwrap();
    wait_until("link connected", || link.is_connected());

    // Subscribing after the fact: `online` must come from the broker's retained store.
    let sub = Subscriber::connect(broker.port(), &["glimpse/cam1/#"]);
    let online = sub.expect("glimpse/cam1/availability", b"online");
    assert!(online.retain, "availability must be retained");

    let sent = prediction("cam1", 42);
    link.publish_json(Outgoing::Prediction, &sent).unwrap();
    let got = sub.expect_any("glimpse/cam1/prediction");
    assert!(!got.retain, "predictions are a stream, not retained");
    assert_eq!(
        serde_json::from_slice::<Prediction>(&got.payload).unwrap(),
        sent
    );

    let counters = link.counters();
    assert!(counters.connected);
    assert_eq!((counters.connections, counters.reconnects), (1, 0));
    assert_eq!(counters.dropped_outgoing, 0);
    rt.block_on(link.shutdown());
}

#[test]
fn incoming_samples_and_commands_are_delivered_and_bad_topics_counted() {
    let broker = Mosquitto::start();
    let rt = runtime();
    let _enter = rt.enter();
    let (link, mut rx) = MqttLink::start(&config(&broker, "cam1")).unwrap();
    // `online` is published before SUBSCRIBE on the same connection, and Mosquitto handles a
    // client's packets in order; the retry below covers the last SUBACK round trip.
    let sub = Subscriber::connect(broker.port(), &["glimpse/cam1/availability"]);
    sub.expect("glimpse/cam1/availability", b"online");

    let mut got = None;
    for _ in 0..20 {
        sub.publish("glimpse/cam1/cmd/retrain", b"{}".to_vec(), false);
        got = recv(&rt, &mut rx, Duration::from_millis(500));
        if got.is_some() {
            break;
        }
    }
    let got = got.expect("command not delivered");
    assert_eq!(
        got.incoming,
        Incoming::Command {
            name: "retrain".into()
        }
    );
    assert_eq!(got.payload, b"{}");

    sub.publish(
        "glimpse/cam1/sample",
        br#"{"frame_id":7,"label":"daisy"}"#.to_vec(),
        false,
    );
    let got = recv(&rt, &mut rx, WAIT).expect("JSON sample not delivered");
    assert_eq!(got.incoming, Incoming::SampleJson);

    // `cmd/` with an empty name matches the `cmd/+` filter: it is handed over like any command,
    // so that the daemon answers it with a `rejected` ack (every message that reaches the device
    // gets one); the link drops nothing itself.
    sub.publish("glimpse/cam1/cmd/", b"{}".to_vec(), false);
    let got = recv(&rt, &mut rx, WAIT).expect("empty command name not delivered");
    assert_eq!(got.incoming, Incoming::Command { name: "".into() });
    assert_eq!(link.counters().rejected_incoming, 0);
    rt.block_on(link.shutdown());
}

#[test]
fn reconnects_after_broker_restart_and_restores_subscriptions() {
    let mut broker = Mosquitto::start();
    let rt = runtime();
    let _enter = rt.enter();
    let (link, mut rx) = MqttLink::start(&config(&broker, "cam1")).unwrap();
    let sub = Subscriber::connect(
        broker.port(),
        &["glimpse/cam1/availability", "glimpse/cam1/prediction"],
    );
    sub.expect("glimpse/cam1/availability", b"online");

    broker.stop();
    wait_until("link notices the broker is gone", || !link.is_connected());
    // Published while the broker is away: held in the outbox, sent after the reconnect.
    for frame in 1..=3 {
        link.publish_json(Outgoing::Prediction, &prediction("cam1", frame))
            .unwrap();
    }
    std::thread::sleep(Duration::from_secs(5));
    sub.clear();
    broker.restart();

    sub.wait_subscribed(2);
    // Retained state died with the broker (no persistence): this `online` is a fresh publish.
    sub.expect("glimpse/cam1/availability", b"online");
    wait_until("queued predictions delivered", || {
        frame_ids(&sub, "glimpse/cam1/prediction") == vec![1, 2, 3]
    });
    let counters = link.counters();
    assert!(counters.connected);
    assert_eq!(counters.reconnects, 1, "{counters:?}");
    assert!(counters.connection_errors >= 1, "{counters:?}");

    // The new broker has no session for us: the link must have subscribed again.
    let mut got = None;
    for _ in 0..20 {
        sub.publish("glimpse/cam1/sample/daisy", vec![0xFF, 0xD8, 0xFF], false);
        got = recv(&rt, &mut rx, Duration::from_millis(500));
        if got.is_some() {
            break;
        }
    }
    let got = got.expect("sample after restart not delivered: subscriptions not restored");
    assert_eq!(
        got.incoming,
        Incoming::SampleImage {
            label: "daisy".into()
        }
    );
    rt.block_on(link.shutdown());
}

#[test]
fn outbox_stays_bounded_while_the_broker_is_down() {
    let mut broker = Mosquitto::start();
    let rt = runtime();
    let _enter = rt.enter();
    let capacity = 8;
    let config = MqttConfig {
        outbox_capacity: capacity,
        ..config(&broker, "cam1")
    };
    let (link, _rx) = MqttLink::start(&config).unwrap();
    wait_until("link connected", || link.is_connected());
    broker.stop();
    wait_until("link notices the broker is gone", || !link.is_connected());

    let sent = 200u64;
    for frame in 0..sent {
        // Never blocks and never fails for lack of a broker.
        link.publish_json(Outgoing::Prediction, &prediction("cam1", frame))
            .unwrap();
        assert!(link.counters().queued <= capacity);
    }
    let counters = link.counters();
    assert_eq!(counters.queued, capacity, "{counters:?}");
    // Everything beyond the outbox (and at most one message in flight in the pump) is dropped.
    assert!(
        counters.dropped_outgoing >= sent - capacity as u64 - 1,
        "{counters:?}"
    );

    broker.restart();
    let sub = Subscriber::connect(broker.port(), &["glimpse/cam1/prediction"]);
    // The newest messages are the ones kept.
    sub.wait_for(WAIT, |m| {
        serde_json::from_slice::<Prediction>(&m.payload).is_ok_and(|p| p.frame_id == sent - 1)
    })
    .expect("newest prediction not delivered after the broker came back");
    let ids = frame_ids(&sub, "glimpse/cam1/prediction");
    assert!(ids.len() <= capacity + 1, "{ids:?}");
    rt.block_on(link.shutdown());
}

#[test]
fn clean_shutdown_leaves_stopped_retained() {
    let broker = Mosquitto::start();
    let rt = runtime();
    let _enter = rt.enter();
    let (link, _rx) = MqttLink::start(&config(&broker, "cam1")).unwrap();
    let sub = Subscriber::connect(broker.port(), &["glimpse/cam1/availability"]);
    sub.expect("glimpse/cam1/availability", b"online");

    rt.block_on(link.shutdown());
    sub.expect("glimpse/cam1/availability", b"stopped");

    // A late subscriber sees `stopped`, not the `offline` will: the disconnect was clean.
    let late = Subscriber::connect(broker.port(), &["glimpse/cam1/availability"]);
    let retained = late.expect_any("glimpse/cam1/availability");
    assert_eq!(retained.text(), "stopped");
    assert!(retained.retain);
    assert!(
        !sub.texts("glimpse/cam1/availability")
            .contains(&"offline".to_string()),
        "the last will fired on a clean shutdown"
    );
}

#[test]
fn abrupt_death_publishes_the_offline_will() {
    let probe = build_example("mqtt_lwt_probe");
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port(), &["glimpse/probe/availability"]);
    let mut child = Command::new(&probe)
        .args([broker.url().as_str(), "glimpse", "probe"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", probe.display()));
    let stdout = child.stdout.take().expect("probe stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read probe stdout");
    assert_eq!(line.trim(), "connected", "probe did not connect");
    sub.expect("glimpse/probe/availability", b"online");

    child.kill().expect("kill -9 the probe");
    let _ = child.wait();
    sub.expect("glimpse/probe/availability", b"offline");
    // The will is retained: a subscriber arriving later still learns the device is gone.
    let late = Subscriber::connect(broker.port(), &["glimpse/probe/availability"]);
    assert_eq!(
        late.expect_any("glimpse/probe/availability").text(),
        "offline"
    );
}

#[test]
fn large_payloads_pass_both_ways_and_oversize_is_refused() {
    let broker = Mosquitto::start();
    let rt = runtime();
    let _enter = rt.enter();
    let config = MqttConfig {
        max_packet_bytes: 4 * 1024 * 1024,
        ..config(&broker, "cam1")
    };
    let (link, mut rx) = MqttLink::start(&config).unwrap();
    let sub = Subscriber::connect(
        broker.port(),
        &["glimpse/cam1/availability", "glimpse/cam1/frame/thumbnail"],
    );
    sub.expect("glimpse/cam1/availability", b"online");

    let big: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
    link.publish_to(Outgoing::Thumbnail, big.clone()).unwrap();
    let got = sub.expect_any("glimpse/cam1/frame/thumbnail");
    assert_eq!(got.payload.len(), big.len());
    assert!(got.payload == big, "2 MB outgoing payload corrupted");

    let mut received = None;
    for _ in 0..10 {
        sub.publish("glimpse/cam1/sample/daisy", big.clone(), false);
        received = recv(&rt, &mut rx, Duration::from_secs(2));
        if received.is_some() {
            break;
        }
    }
    let received = received.expect("2 MB incoming sample not delivered");
    assert_eq!(
        received.incoming,
        Incoming::SampleImage {
            label: "daisy".into()
        }
    );
    assert!(received.payload == big, "2 MB incoming payload corrupted");

    // Over the limit: refused up front (rumqttc would otherwise drop the whole connection).
    let err = link
        .publish_to(Outgoing::Thumbnail, vec![0u8; 5 * 1024 * 1024])
        .unwrap_err();
    assert!(matches!(err, LinkError::TooLarge { .. }), "{err}");
    assert!(link.is_connected());
    assert_eq!(link.counters().reconnects, 0);
    rt.block_on(link.shutdown());
}

/// Waits for the next message the link hands over (panics after `WAIT`).
fn next(rt: &Runtime, rx: &mut mpsc::Receiver<Received>) -> Received {
    recv(rt, rx, WAIT).expect("nothing delivered within WAIT")
}

#[test]
fn oversized_incoming_is_skipped_acked_and_reported_without_a_reconnect() {
    let broker = Mosquitto::start();
    let limit = 1024 * 1024;
    let big: Vec<u8> = (0..3 * limit as u32).map(|i| (i % 251) as u8).collect();
    // Retained before the link subscribes: the broker sends it again on every subscription
    // (stock rumqttc: an endless reconnect loop even at QoS 0).
    let early = Subscriber::connect(broker.port(), &["glimpse/cam1/availability"]);
    early.publish_qos(
        "glimpse/cam1/sample/kept",
        big.clone(),
        rumqttc::QoS::AtMostOnce,
        true,
    );
    std::thread::sleep(Duration::from_millis(500));

    let rt = runtime();
    let _enter = rt.enter();
    let config = MqttConfig {
        max_packet_bytes: limit,
        ..config(&broker, "cam1")
    };
    let (link, mut rx) = MqttLink::start(&config).unwrap();
    let got = next(&rt, &mut rx);
    assert_eq!(got.topic, "glimpse/cam1/sample/kept");
    assert!(
        got.retained,
        "the broker's stored copy carries the retain flag"
    );
    assert!(got.too_large.unwrap() > 3 * limit, "{:?}", got.too_large);
    assert!(
        got.payload.is_empty(),
        "the payload is skipped, not buffered"
    );

    // Live ones, QoS 1 (redelivered forever if not acked) and QoS 0, then a normal message:
    // all arrive, in order, on the same connection.
    early.publish("glimpse/cam1/sample/daisy", big.clone(), false);
    early.publish_qos(
        "glimpse/cam1/cmd/forget",
        big.clone(),
        rumqttc::QoS::AtMostOnce,
        false,
    );
    early.publish("glimpse/cam1/sample/daisy", b"small".to_vec(), false);
    let first = next(&rt, &mut rx);
    assert_eq!(
        (first.incoming, first.retained, first.too_large.is_some()),
        (
            Incoming::SampleImage {
                label: "daisy".into()
            },
            false,
            true
        )
    );
    let second = next(&rt, &mut rx);
    assert_eq!(
        second.incoming,
        Incoming::Command {
            name: "forget".into()
        }
    );
    assert!(second.too_large.is_some());
    let third = next(&rt, &mut rx);
    assert_eq!(
        (third.payload.as_slice(), third.too_large),
        (&b"small"[..], None)
    );

    let counters = link.counters();
    assert!(counters.connected, "{counters:?}");
    assert_eq!(
        (
            counters.reconnects,
            counters.connection_errors,
            counters.too_large_incoming
        ),
        (0, 0, 3),
        "{counters:?}"
    );
    // The QoS 1 one was acked to the broker: nothing comes back after a while.
    assert!(recv(&rt, &mut rx, Duration::from_secs(2)).is_none());
    rt.block_on(link.shutdown());
}

#[test]
fn a_full_daemon_channel_holds_messages_back_instead_of_dropping_them() {
    let broker = Mosquitto::start();
    let rt = runtime();
    let _enter = rt.enter();
    let (link, mut rx) = MqttLink::start(&config(&broker, "cam1")).unwrap();
    let sub = Subscriber::connect(broker.port(), &["glimpse/cam1/availability"]);
    sub.expect("glimpse/cam1/availability", b"online");
    // Subscribed once a probe comes through.
    let mut probe = None;
    for _ in 0..20 {
        sub.publish("glimpse/cam1/cmd/labels", b"{}".to_vec(), false);
        probe = recv(&rt, &mut rx, Duration::from_millis(500));
        if probe.is_some() {
            break;
        }
    }
    probe.expect("link never subscribed");
    while recv(&rt, &mut rx, Duration::from_millis(300)).is_some() {}

    // Nobody reads for a while: 50 QoS 1 samples, far more than the channel holds.
    let sent = 50;
    for i in 0..sent {
        sub.publish(
            "glimpse/cam1/sample/daisy",
            format!("s{i}").into_bytes(),
            false,
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    let got: Vec<String> = (0..sent)
        .map(|_| String::from_utf8(next(&rt, &mut rx).payload).unwrap())
        .collect();
    let expected: Vec<String> = (0..sent).map(|i| format!("s{i}")).collect();
    assert_eq!(got, expected, "every message, in order");
    assert_eq!(link.counters().dropped_incoming, 0);
    rt.block_on(link.shutdown());
}
