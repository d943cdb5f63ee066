//! Home Assistant MQTT discovery: the retained config messages that make a glimpse device appear
//! in Home Assistant with no YAML.
//!
//! Two sensors per device, grouped under one HA device:
//! - `label`: the smoothed state (`{prefix}/{device}/state`, `value_json.label`), `device_class:
//!   enum` with the head's classes as `options` (republish when a new head changes the classes);
//! - `score`: the score of each published prediction.
//!
//! Availability maps our three values onto HA's two: `online` is available, `offline` (last
//! will) and `stopped` (clean shutdown) are both not available, via `availability_template`.
//! Config topics: `{discovery_prefix}/sensor/{node_id}/{object_id}/config`, retained.

use serde_json::{json, Value};

use super::topics::Topics;

/// What the discovery payloads are built from.
#[derive(Debug, Clone)]
pub struct DiscoveryInput<'a> {
    pub topics: &'a Topics,
    pub discovery_prefix: &'a str,
    /// The current head's classes; empty before the first training.
    pub classes: &'a [String],
    /// The backbone model name, shown as the HA device model.
    pub model: &'a str,
    pub sw_version: &'a str,
}

/// One retained config message.
#[derive(Debug, Clone, PartialEq)]
pub struct DiscoveryMessage {
    pub topic: String,
    pub payload: Value,
}

/// Maps `online` to `online` and everything else (`offline`, `stopped`) to `offline`.
pub const AVAILABILITY_TEMPLATE: &str = "{{ 'online' if value == 'online' else 'offline' }}";

/// HA node ids and unique ids allow `[a-zA-Z0-9_-]`; anything else becomes `_`.
pub fn node_id(device: &str) -> String {
    device
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The config messages for one device (label sensor, score sensor).
pub fn discovery_messages(input: &DiscoveryInput<'_>) -> Vec<DiscoveryMessage> {
    let node = node_id(input.topics.device());
    let device_block = json!({
        "identifiers": [format!("glimpse_{node}")],
        "name": format!("glimpse {}", input.topics.device()),
        "manufacturer": "glimpse",
        "model": input.model,
        "sw_version": input.sw_version,
    });
    let common = |object: &str, name: &str, state_topic: String, template: &str| {
        json!({
            "name": name,
            "unique_id": format!("glimpse_{node}_{object}"),
            "object_id": format!("glimpse_{node}_{object}"),
            "state_topic": state_topic,
            "value_template": template,
            "availability_topic": input.topics.availability(),
            "availability_template": AVAILABILITY_TEMPLATE,
            "payload_available": "online",
            "payload_not_available": "offline",
            "device": device_block.clone(),
        })
    };

    let mut label = common(
        "label",
        "Label",
        input.topics.state(),
        "{{ value_json.label }}",
    );
    if !input.classes.is_empty() {
        // An enum sensor must list every value it can take; without classes (no head yet) the
        // sensor stays a plain text sensor rather than announcing an empty enum.
        label["device_class"] = json!("enum");
        label["options"] = json!(input.classes);
    }
    label["json_attributes_topic"] = json!(input.topics.state());
    label["icon"] = json!("mdi:eye");

    let mut score = common(
        "score",
        "Score",
        input.topics.prediction(),
        "{{ value_json.score if value_json.score is defined else None }}",
    );
    score["state_class"] = json!("measurement");
    score["icon"] = json!("mdi:percent");

    vec![
        DiscoveryMessage {
            topic: config_topic(input.discovery_prefix, &node, "label"),
            payload: label,
        },
        DiscoveryMessage {
            topic: config_topic(input.discovery_prefix, &node, "score"),
            payload: score,
        },
    ]
}

fn config_topic(discovery_prefix: &str, node: &str, object: &str) -> String {
    format!("{discovery_prefix}/sensor/{node}/{object}/config")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(classes: &[String]) -> Vec<DiscoveryMessage> {
        let topics = Topics::new("glimpse", "cam.1").unwrap();
        discovery_messages(&DiscoveryInput {
            topics: &topics,
            discovery_prefix: "homeassistant",
            classes,
            model: "mobilenetv2-12",
            sw_version: "0.1.0",
        })
    }

    #[test]
    fn config_topics_and_ids() {
        let m = messages(&[]);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].topic, "homeassistant/sensor/cam_1/label/config");
        assert_eq!(m[1].topic, "homeassistant/sensor/cam_1/score/config");
        assert_eq!(m[0].payload["unique_id"], "glimpse_cam_1_label");
        assert_eq!(m[1].payload["unique_id"], "glimpse_cam_1_score");
        assert_ne!(m[0].payload["unique_id"], m[1].payload["unique_id"]);
    }

    #[test]
    fn label_sensor_is_an_enum_of_the_classes() {
        let classes = vec!["daisy".to_string(), "roses".to_string()];
        let label = &messages(&classes)[0].payload;
        assert_eq!(label["device_class"], "enum");
        assert_eq!(label["options"], json!(["daisy", "roses"]));
        assert_eq!(label["state_topic"], "glimpse/cam.1/state");
        assert_eq!(label["value_template"], "{{ value_json.label }}");
    }

    #[test]
    fn without_classes_the_label_is_a_plain_sensor() {
        let label = &messages(&[])[0].payload;
        assert!(label.get("device_class").is_none());
        assert!(label.get("options").is_none());
    }

    #[test]
    fn score_sensor_reads_predictions() {
        let score = &messages(&[])[1].payload;
        assert_eq!(score["state_topic"], "glimpse/cam.1/prediction");
        assert_eq!(score["state_class"], "measurement");
        assert!(score["value_template"]
            .as_str()
            .unwrap()
            .contains("value_json.score"));
    }

    #[test]
    fn availability_and_device_block() {
        for m in messages(&[]) {
            let p = &m.payload;
            assert_eq!(p["availability_topic"], "glimpse/cam.1/availability");
            assert_eq!(p["availability_template"], AVAILABILITY_TEMPLATE);
            assert_eq!(p["payload_available"], "online");
            assert_eq!(p["payload_not_available"], "offline");
            assert_eq!(p["device"]["identifiers"], json!(["glimpse_cam_1"]));
            assert_eq!(p["device"]["name"], "glimpse cam.1");
            assert_eq!(p["device"]["model"], "mobilenetv2-12");
            assert_eq!(p["device"]["sw_version"], "0.1.0");
        }
    }

    #[test]
    fn node_id_keeps_only_ha_safe_characters() {
        assert_eq!(node_id("cam-1_a"), "cam-1_a");
        assert_eq!(node_id("jetson.lan:été"), "jetson_lan__t_");
    }
}
