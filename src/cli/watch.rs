//! `glimpse watch`: subscribe to what one device (or all of them, `--device +`) publishes and
//! print one line per message, for an operator at a terminal.
//!
//! Human output: `HH:MM:SS.mmm device kind summary` (UTC time of receipt). `--json`: one JSON
//! object per line, `{"topic", "device", "kind", "received_at_ms", "payload"}`, where `payload`
//! is the message's JSON, or a string for text payloads (availability); made for `jq`.
//! The formatting is a pure function ([`format_message`]); the I/O loop around it is thin and
//! survives broker restarts (it reconnects and re-subscribes).

use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use rumqttc::{
    Client, Event, MqttOptions, Packet, QoS, SubscribeFilter, TlsConfiguration, Transport,
};
use serde_json::{json, Value};

use crate::mqtt::config::{parse_broker_url, Scheme, SYSTEM_CA_BUNDLE};
use crate::mqtt::messages::now_unix_ms;
use crate::mqtt::topics::{parse_outgoing, validate_level, Outgoing};

use super::broker::BrokerArgs;

/// Kinds `watch` subscribes to (thumbnails are binary and large: not shown).
const WATCHED: [Outgoing; 6] = [
    Outgoing::Availability,
    Outgoing::Prediction,
    Outgoing::State,
    Outgoing::Stats,
    Outgoing::Ack,
    Outgoing::Report,
];

#[derive(Debug, Clone, Args)]
#[command(mut_arg("prefix", |a| a.help("Topic prefix the devices publish under")))]
pub struct WatchArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Device id to watch, or + for every device under the prefix.
    #[arg(long, default_value = "+")]
    pub device: String,
    /// A fleet group: print a table of its members (online, head version, label, fps; a member
    /// whose head lags the group's is flagged) every --interval-s; --count counts tables.
    #[arg(long, conflicts_with = "json")]
    pub group: Option<String>,
    /// Seconds between two tables of --group (the first after this long too, so that retained
    /// messages are in).
    #[arg(long, default_value_t = 2)]
    pub interval_s: u64,
    /// Print one JSON object per message instead of a human summary.
    #[arg(long)]
    pub json: bool,
    /// Exit after this many messages.
    #[arg(long)]
    pub count: Option<usize>,
}

/// Formats one received message; `None` for a topic that is not a device output under `prefix`.
pub fn format_message(
    prefix: &str,
    topic: &str,
    payload: &[u8],
    json_output: bool,
    received_at_ms: u64,
) -> Option<String> {
    let (device, kind) = parse_outgoing(prefix, topic)?;
    let parsed: Option<Value> = serde_json::from_slice(payload).ok();
    if json_output {
        let payload_value = match parsed {
            Some(v) => v,
            // A samples archive: its size, not megabytes of mangled tar.
            None if kind == Outgoing::Export => json!({ "bytes": payload.len() }),
            None => Value::String(String::from_utf8_lossy(payload).into_owned()),
        };
        let line = json!({
            "topic": topic,
            "device": device,
            "kind": kind.suffix(),
            "received_at_ms": received_at_ms,
            "payload": payload_value,
        });
        return Some(line.to_string());
    }
    let summary = match (kind, &parsed) {
        (Outgoing::Availability, _) => String::from_utf8_lossy(payload).into_owned(),
        (Outgoing::Thumbnail | Outgoing::Export, _) => format!("{} bytes", payload.len()),
        (_, None) => format!("<not JSON, {} bytes>", payload.len()),
        (Outgoing::Prediction, Some(v)) => prediction_summary(v),
        (Outgoing::State, Some(v)) => {
            format!("{} ({})", str_field(v, "label"), score_text(v.get("score")))
        }
        (Outgoing::Stats, Some(v)) => format!(
            "fps {}/{} dropped {} reconnects {}",
            num_field(v, "fps_in"),
            num_field(v, "fps_out"),
            num_field(v, "frames_dropped"),
            num_field(v, "broker_reconnects"),
        ),
        (Outgoing::Ack, Some(v)) => ack_summary(v),
        (Outgoing::Report, Some(v)) => report_summary(v),
    };
    Some(format!(
        "{} {device} {} {summary}",
        clock_utc(received_at_ms),
        kind.suffix()
    ))
}

/// `sample rock accepted (count 12) id 3fa4c2d1` or `retrain accepted head v3` or
/// `sample rock rejected: reason`.
fn ack_summary(v: &Value) -> String {
    let status = v.get("status").and_then(Value::as_str).unwrap_or("?");
    let mut text = match v.get("command").and_then(Value::as_str) {
        Some(command) => format!("{command} {status}"),
        None => format!(
            "sample {} {status}",
            v.get("label").and_then(Value::as_str).unwrap_or("?")
        ),
    };
    if let Some(count) = v.get("count").and_then(Value::as_u64) {
        text.push_str(&format!(" (count {count})"));
    }
    if let Some(version) = v.get("head_version").and_then(Value::as_u64) {
        text.push_str(&format!(" head v{version}"));
    }
    if let Some(labels) = v.get("labels").and_then(Value::as_object) {
        let list: Vec<String> = labels.iter().map(|(l, n)| format!("{l}={n}")).collect();
        text.push_str(&format!(" labels {}", list.join(" ")));
    }
    if let Some(deleted) = v.get("deleted").and_then(Value::as_u64) {
        text.push_str(&format!(" deleted {deleted}"));
    }
    if let Some(bytes) = v.get("bytes").and_then(Value::as_u64) {
        text.push_str(&format!(" {bytes} bytes"));
    }
    if let Some(id) = v.get("id").and_then(Value::as_str) {
        text.push_str(&format!(" id {}", truncate(id, 12)));
    }
    if let Some(reason) = v.get("reason").and_then(Value::as_str) {
        text.push_str(&format!(": {}", reason));
    }
    text
}

/// `v4 accepted (command): accuracy 0.953 (active 0.941) on 212 held out; 13 classes, 4250
/// samples; 830 ms; gate: reason`.
fn report_summary(v: &Value) -> String {
    let accepted = v.get("accepted").and_then(Value::as_bool);
    let version = match (
        v.get("version").and_then(Value::as_u64),
        v.get("active_version").and_then(Value::as_u64),
    ) {
        (Some(new), _) => format!("v{new}"),
        (None, Some(active)) => format!("kept v{active}"),
        (None, None) => "no head".to_string(),
    };
    let verdict = match accepted {
        Some(true) if v.get("forced").and_then(Value::as_bool) == Some(true) => "accepted (forced)",
        Some(true) => "accepted",
        Some(false) => "rejected by the gate",
        None => "?",
    };
    let gate = v.get("gate").unwrap_or(&Value::Null);
    let accuracy = |x: Option<&Value>| x.and_then(Value::as_f64).map(|a| format!("{a:.3}"));
    let mut text = format!(
        "{version} {verdict} ({})",
        v.get("trigger").and_then(Value::as_str).unwrap_or("?")
    );
    if let Some(new) = accuracy(gate.get("new_accuracy")).or(accuracy(v.get("accuracy"))) {
        text.push_str(&format!(": accuracy {new}"));
        if let Some(old) = accuracy(gate.get("old_accuracy")) {
            text.push_str(&format!(" (active {old})"));
        }
        if let Some(n) = gate.get("compared").and_then(Value::as_u64) {
            text.push_str(&format!(" on {n} held out"));
        }
    }
    let classes = v.get("classes").and_then(Value::as_array).map(Vec::len);
    let samples: Option<u64> = v
        .get("samples_per_class")
        .and_then(Value::as_object)
        .map(|m| m.values().filter_map(Value::as_u64).sum());
    if let (Some(c), Some(n)) = (classes, samples) {
        text.push_str(&format!("; {c} classes, {n} samples"));
    }
    if let Some(ms) = v.get("duration_ms").and_then(Value::as_u64) {
        text.push_str(&format!("; {ms} ms"));
    }
    if let Some(reason) = gate.get("reason").and_then(Value::as_str) {
        text.push_str(&format!("; gate: {}", reason));
    }
    text
}

fn prediction_summary(v: &Value) -> String {
    let frame = num_field(v, "frame_id");
    let latency = num_field(v, "latency_ms");
    match v.get("label").and_then(Value::as_str) {
        Some(label) => format!(
            "{label} {} (frame {frame}, {latency} ms)",
            score_text(v.get("score"))
        ),
        None => {
            let top = v
                .get("imagenet_top_k")
                .and_then(Value::as_array)
                .and_then(|a| a.first());
            match top {
                Some(t) => format!(
                    "imagenet: {} {} (frame {frame}, {latency} ms)",
                    str_field(t, "label"),
                    score_text(t.get("score"))
                ),
                None => format!("no label (frame {frame}, {latency} ms)"),
            }
        }
    }
}

fn str_field<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("?")
}

fn num_field(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::Number(n)) => match n.as_f64() {
            Some(f) if n.is_f64() => format!("{f:.1}"),
            _ => n.to_string(),
        },
        _ => "?".to_string(),
    }
}

fn score_text(score: Option<&Value>) -> String {
    match score.and_then(Value::as_f64) {
        Some(s) => format!("{s:.2}"),
        None => "?".to_string(),
    }
}

fn truncate(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max_chars).collect();
    cut.push('…');
    cut
}

/// `HH:MM:SS.mmm` (UTC) of a unix-ms time.
fn clock_utc(unix_ms: u64) -> String {
    let ms = unix_ms % 1000;
    let secs = (unix_ms / 1000) % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{ms:03}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

/// The subscription filters for `prefix` and `device` (`+` for all devices).
pub fn watch_filters(prefix: &str, device: &str) -> Vec<String> {
    WATCHED
        .iter()
        .map(|kind| format!("{prefix}/{device}/{}", kind.suffix()))
        .collect()
}

/// MQTT options for the operator tools (`watch`, `send`, ...): broker URL, a per-process client
/// id, keep-alive, packet limits `(incoming, outgoing)`, credentials from `--username` and the
/// environment variable named by `--password-env`, and TLS with the system CA bundle.
pub fn operator_options(
    url: &str,
    tool: &str,
    username: Option<&str>,
    password_env: Option<&str>,
    (max_incoming, max_outgoing): (usize, usize),
) -> anyhow::Result<MqttOptions> {
    let broker = parse_broker_url(url)
        .map_err(anyhow::Error::msg)
        .context("--url")?;
    let mut options = MqttOptions::new(
        format!("glimpse-{tool}-{}", std::process::id()),
        broker.host.clone(),
        broker.port,
    );
    options.set_keep_alive(Duration::from_secs(30));
    options.set_max_packet_size(max_incoming, max_outgoing);
    if let Some(user) = username {
        let password = match password_env {
            Some(name) => {
                std::env::var(name).with_context(|| format!("--password-env: {name} is not set"))?
            }
            None => String::new(),
        };
        options.set_credentials(user.to_string(), password);
    }
    if broker.scheme == Scheme::Mqtts {
        let ca = std::fs::read(SYSTEM_CA_BUNDLE)
            .with_context(|| format!("reading the CA bundle {SYSTEM_CA_BUNDLE}"))?;
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
            ca,
            alpn: None,
            client_auth: None,
        }));
    }
    Ok(options)
}

/// Runs until `--count` messages were printed (forever without it).
pub fn watch(args: &WatchArgs) -> anyhow::Result<()> {
    // Training reports and stats can exceed rumqttc's 10 KiB default.
    let (url, mut options) = args
        .broker
        .connect_options("watch", (16 * 1024 * 1024, 64 * 1024))?;
    if args.device != "+" {
        validate_level("device id", &args.device).context("--device")?;
    }
    let prefix = args.broker.prefix.as_str();
    if args.group.is_some() {
        // Tables are printed between events: pings make sure there are some in a quiet group.
        options.set_keep_alive(Duration::from_secs(5));
    }
    let mut fleet = match &args.group {
        Some(group) => {
            validate_level("group", group).context("--group")?;
            Some(super::watch_group::FleetView::new(prefix, group))
        }
        None => None,
    };
    let filters = match &fleet {
        Some(view) => view.filters(),
        None => watch_filters(prefix, &args.device),
    };
    let interval = Duration::from_secs(args.interval_s.max(1));
    let mut next_table = std::time::Instant::now() + interval;
    let (client, mut connection) = Client::new(options, 16);
    let mut printed = 0usize;
    if args.count == Some(0) {
        return Ok(());
    }
    for event in connection.iter() {
        if let Some(view) = &fleet {
            // Pings keep events coming while the group is quiet (keepalive), so tables go out.
            if std::time::Instant::now() >= next_table {
                println!("{}", view.render());
                next_table += interval;
                printed += 1;
                if args.count.is_some_and(|n| printed >= n) {
                    let _ = client.try_disconnect();
                    return Ok(());
                }
            }
        }
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                // Re-subscribe on every connection: the watcher uses a clean session.
                let subscriptions = filters
                    .iter()
                    .map(|f| SubscribeFilter::new(f.clone(), QoS::AtMostOnce));
                if let Err(e) = client.try_subscribe_many(subscriptions) {
                    bail!("cannot subscribe on {url}: {e}");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) if fleet.is_some() => {
                if let Some(view) = fleet.as_mut() {
                    view.update(&p.topic, &p.payload);
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let line = format_message(prefix, &p.topic, &p.payload, args.json, now_unix_ms());
                if let Some(line) = line {
                    println!("{line}");
                    printed += 1;
                    if args.count.is_some_and(|n| printed >= n) {
                        // Best effort: the process exits right after either way.
                        let _ = client.try_disconnect();
                        return Ok(());
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("glimpse watch: {url}: {e}; retrying in 1 s");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT: u64 = 1_700_000_000_123; // 22:13:20.123 UTC

    fn human(topic: &str, payload: &str) -> Option<String> {
        format_message("glimpse", topic, payload.as_bytes(), false, AT)
    }

    #[test]
    fn formats_each_kind_for_humans() {
        assert_eq!(
            human("glimpse/cam1/availability", "online").unwrap(),
            "22:13:20.123 cam1 availability online"
        );
        assert_eq!(
            human(
                "glimpse/cam1/prediction",
                r#"{"device":"cam1","frame_id":7,"label":"daisy","score":0.875,"top_k":[],"captured_at_ms":1,"latency_ms":41.5}"#
            )
            .unwrap(),
            "22:13:20.123 cam1 prediction daisy 0.88 (frame 7, 41.5 ms)"
        );
        assert_eq!(
            human(
                "glimpse/cam1/prediction",
                r#"{"frame_id":8,"top_k":[],"imagenet_top_k":[{"label":"daisy","score":0.5}],"latency_ms":40.0}"#
            )
            .unwrap(),
            "22:13:20.123 cam1 prediction imagenet: daisy 0.50 (frame 8, 40.0 ms)"
        );
        assert_eq!(
            human("glimpse/cam1/state", r#"{"label":"roses","score":0.75}"#).unwrap(),
            "22:13:20.123 cam1 state roses (0.75)"
        );
        assert_eq!(
            human(
                "glimpse/cam1/stats",
                r#"{"fps_in":15.0,"fps_out":14.5,"frames_dropped":3,"broker_reconnects":1}"#
            )
            .unwrap(),
            "22:13:20.123 cam1 stats fps 15.0/14.5 dropped 3 reconnects 1"
        );
    }

    #[test]
    fn acks_and_reports_are_readable_and_whole() {
        assert_eq!(
            human(
                "glimpse/cam1/ack",
                r#"{"id":"3fa4c2d1e5f60718293a4b5c","status":"accepted","label":"rock","count":12}"#
            )
            .unwrap(),
            "22:13:20.123 cam1 ack sample rock accepted (count 12) id 3fa4c2d1e5f6…"
        );
        assert_eq!(
            human(
                "glimpse/cam1/ack",
                r#"{"id":"c1","command":"retrain","status":"accepted","head_version":3}"#
            )
            .unwrap(),
            "22:13:20.123 cam1 ack retrain accepted head v3 id c1"
        );
        let reason = format!("label {} is too long", "x".repeat(100));
        let line = human(
            "glimpse/cam1/ack",
            &format!(r#"{{"status":"rejected","label":"a","reason":"{reason}"}}"#),
        )
        .unwrap();
        assert!(line.ends_with(&format!(": {reason}")), "{line}");
        let report = r#"{"device":"cam1","trigger":"auto","version":4,"active_version":4,
            "accepted":true,"forced":false,
            "gate":{"accepted":true,"reason":"new head 0.953 >= active 0.941 - 0.02","old_accuracy":0.941,"new_accuracy":0.953,"compared":212},
            "samples_per_class":{"a":3000,"b":1250},"classes":["a","b"],"train_count":3400,
            "val_count":850,"deployed_train_count":4250,"accuracy":0.96,"duration_ms":830}"#;
        assert_eq!(
            human("glimpse/cam1/report", report).unwrap(),
            "22:13:20.123 cam1 report v4 accepted (auto): accuracy 0.953 (active 0.941) on 212 \
             held out; 2 classes, 4250 samples; 830 ms; gate: new head 0.953 >= active 0.941 - 0.02"
        );
        let rejected = r#"{"trigger":"command","version":null,"active_version":2,"accepted":false,
            "gate":{"accepted":false,"reason":"worse","old_accuracy":0.9,"new_accuracy":0.5,"compared":10}}"#;
        assert_eq!(
            human("glimpse/cam1/report", rejected).unwrap(),
            "22:13:20.123 cam1 report kept v2 rejected by the gate (command): accuracy 0.500 \
             (active 0.900) on 10 held out; gate: worse"
        );
    }

    #[test]
    fn bad_payloads_and_foreign_topics() {
        assert_eq!(
            human("glimpse/cam1/state", "not json").unwrap(),
            "22:13:20.123 cam1 state <not JSON, 8 bytes>"
        );
        assert_eq!(human("other/cam1/state", "{}"), None);
        assert_eq!(human("glimpse/cam1/sample/x", "{}"), None);
    }

    #[test]
    fn json_output_wraps_the_payload() {
        let line = format_message(
            "glimpse",
            "glimpse/cam1/state",
            br#"{"label":"a"}"#,
            true,
            AT,
        )
        .unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            v,
            json!({"topic": "glimpse/cam1/state", "device": "cam1", "kind": "state",
                   "received_at_ms": AT, "payload": {"label": "a"}})
        );
        let line =
            format_message("glimpse", "glimpse/cam1/availability", b"offline", true, AT).unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["payload"], "offline");
    }

    #[test]
    fn filters_cover_the_watched_kinds() {
        assert_eq!(
            watch_filters("glimpse", "+"),
            vec![
                "glimpse/+/availability",
                "glimpse/+/prediction",
                "glimpse/+/state",
                "glimpse/+/stats",
                "glimpse/+/ack",
                "glimpse/+/report"
            ]
        );
    }
}
