//! Stats: periodic health, published every `stats_interval_s` on `{prefix}/{device}/stats`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Latency of one pipeline stage over the last interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StageLatency {
    pub median_ms: f32,
    pub p95_ms: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub device: String,
    /// Frames read from the source per second.
    pub fps_in: f32,
    /// Predictions produced per second.
    pub fps_out: f32,
    /// Frames lost because the pipeline was busy (queue full), since start.
    pub frames_dropped: u64,
    /// Frames deliberately not processed (frame-rate limiting), since start.
    pub frames_skipped: u64,
    /// Per stage (`decode`, `preprocess`, `backbone`, `head`, ...); a map so new stages do not
    /// change the schema. BTreeMap: stable key order in the JSON.
    pub stages: BTreeMap<String, StageLatency>,
    pub rss_bytes: u64,
    pub uptime_s: u64,
    pub broker_reconnects: u64,
    /// Outgoing messages dropped because the broker was away and the outbox was full.
    #[serde(default)]
    pub mqtt_dropped: u64,
    /// Incoming messages not run, since start: the three below, plus those whose topic did not
    /// parse and those lost while stopping. Each sample or command among them got a
    /// `rejected` ack where its topic allowed one.
    #[serde(default)]
    pub incoming_dropped: u64,
    /// Over `mqtt.max_packet_bytes` (skipped unread, acked `rejected: too large`).
    #[serde(default)]
    pub incoming_too_large: u64,
    /// Retained deliveries on sample and command topics (acked `rejected: retained`).
    #[serde(default)]
    pub incoming_retained: u64,
    /// Refused because the device was busy (acked `rejected`, reason `the device is busy`).
    #[serde(default)]
    pub incoming_busy: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub head_version: Option<u64>,
    /// Bytes free for the daemon on the state directory's filesystem (samples, heads, exports).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub state_free_bytes: Option<u64>,
    /// The backbone's `engine/device/precision`, e.g. `onnxruntime/cuda/fp32`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub backbone_engine: Option<String>,
    /// The execution provider actually running it (`tract`, `CUDAExecutionProvider`, ...).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub backbone_provider: Option<String>,
    /// Samples left out of retrains because they were embedded with another engine that does
    /// not agree with this one (docs/learning.md "Changing engines"); absent when none.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub samples_other_engine: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_shape() {
        let s = Stats {
            device: "cam1".into(),
            fps_in: 15.0,
            fps_out: 14.5,
            frames_dropped: 3,
            frames_skipped: 0,
            stages: BTreeMap::from([
                (
                    "backbone".to_string(),
                    StageLatency {
                        median_ms: 24.0,
                        p95_ms: 31.5,
                    },
                ),
                (
                    "decode".to_string(),
                    StageLatency {
                        median_ms: 2.0,
                        p95_ms: 3.0,
                    },
                ),
            ]),
            rss_bytes: 120_000_000,
            uptime_s: 3600,
            broker_reconnects: 1,
            mqtt_dropped: 0,
            incoming_dropped: 3,
            incoming_too_large: 1,
            incoming_retained: 1,
            incoming_busy: 1,
            head_version: None,
            state_free_bytes: None,
            backbone_engine: Some("onnxruntime/cpu/fp32".into()),
            backbone_provider: Some("CPUExecutionProvider".into()),
            samples_other_engine: None,
        };
        let value = serde_json::to_value(&s).unwrap();
        assert_eq!(
            value,
            json!({
                "device": "cam1", "fps_in": 15.0, "fps_out": 14.5,
                "frames_dropped": 3, "frames_skipped": 0,
                "stages": {
                    "backbone": {"median_ms": 24.0, "p95_ms": 31.5},
                    "decode": {"median_ms": 2.0, "p95_ms": 3.0}
                },
                "rss_bytes": 120_000_000, "uptime_s": 3600,
                "broker_reconnects": 1, "mqtt_dropped": 0, "incoming_dropped": 3,
                "incoming_too_large": 1, "incoming_retained": 1, "incoming_busy": 1,
                "backbone_engine": "onnxruntime/cpu/fp32",
                "backbone_provider": "CPUExecutionProvider"
            })
        );
        assert_eq!(serde_json::from_value::<Stats>(value).unwrap(), s);
    }
}
