//! Turns pipeline output into MQTT messages: predictions and the retained state through the
//! publish policy, periodic stats, Home Assistant discovery, and the clean `stopped` at exit.
//! Publishing never blocks the pipeline: the link queues into a bounded outbox and drops (and
//! counts) when the broker is away.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::intake::IntakeCounters;
use super::pipeline::{HeadCell, PipelineStats, PredictionEvent};
use crate::config::Config;
use crate::mqtt::discovery::{discovery_messages, DiscoveryInput};
use crate::mqtt::hints;
use crate::mqtt::link::{MqttLink, Received};
use crate::mqtt::messages::thumbnail::{tag_frame, MAX_THUMBNAIL_BYTES};
use crate::mqtt::messages::{now_unix_ms, unix_ms, Prediction, StageLatency, State, Stats};
use crate::mqtt::policy::PublishPolicy;
use crate::mqtt::topics::Outgoing;
use crate::source::{HealthProbe, HealthState};

/// Counter values at the previous stats message, for rates.
struct Previous {
    at: Instant,
    frames_in: u64,
    frames_out: u64,
}

pub struct Publisher {
    link: MqttLink,
    policy: PublishPolicy,
    device: String,
    model_name: String,
    homeassistant: Option<String>,
    started: Instant,
    previous: Previous,
    head_version: Option<u64>,
    state_dir: std::path::PathBuf,
    /// `mqtt.thumbnail_interval_ms`; `None` when thumbnails are off.
    thumbnail_every: Option<std::time::Duration>,
    last_thumbnail: Option<Instant>,
    /// Backbone engine id and execution provider, for `stats`.
    backbone: Option<(String, String)>,
    /// Samples held under an engine that disagrees with this one, for `stats` (0: none).
    samples_other_engine: u64,
}

impl Publisher {
    /// Names the backbone's engine and execution provider in every `stats` message.
    pub fn set_backbone(&mut self, engine: String, provider: String) {
        self.backbone = Some((engine, provider));
    }

    /// Counts, in every `stats` message, the samples left out of retrains because another
    /// engine embedded them and it disagrees with this one (found at start).
    pub fn set_samples_other_engine(&mut self, count: u64) {
        self.samples_other_engine = count;
    }

    pub fn new(config: &Config, model_name: &str, link: MqttLink) -> Self {
        let now = Instant::now();
        Self {
            link,
            policy: PublishPolicy::new(config.mqtt.publish.clone()),
            device: config.mqtt.device_id.clone(),
            model_name: model_name.to_string(),
            homeassistant: config
                .mqtt
                .homeassistant
                .enabled
                .then(|| config.mqtt.homeassistant.discovery_prefix.clone()),
            started: now,
            previous: Previous {
                at: now,
                frames_in: 0,
                frames_out: 0,
            },
            head_version: None,
            state_dir: config.state_dir(),
            thumbnail_every: (config.mqtt.thumbnail_interval_ms > 0)
                .then(|| std::time::Duration::from_millis(config.mqtt.thumbnail_interval_ms)),
            last_thumbnail: None,
            backbone: None,
            samples_other_engine: 0,
        }
    }

    /// Publishes (retained) Home Assistant discovery configs, when enabled, for the head's classes.
    pub fn announce_discovery(&self, head: &HeadCell) {
        let Some(prefix) = &self.homeassistant else {
            return;
        };
        let current = head.load_full();
        let classes: Vec<String> = current
            .as_deref()
            .map(|h| h.head.classes().to_vec())
            .unwrap_or_default();
        let input = DiscoveryInput {
            topics: self.link.topics(),
            discovery_prefix: prefix,
            classes: &classes,
            model: &self.model_name,
            sw_version: env!("CARGO_PKG_VERSION"),
        };
        for message in discovery_messages(&input) {
            let payload = message.payload.to_string();
            if let Err(err) = self.link.publish(message.topic, payload, true) {
                log::warn!("home assistant discovery: {err}");
            }
        }
    }

    /// One processed frame: publish per the policy; the retained state when the label changed.
    pub fn prediction(&mut self, event: &PredictionEvent) {
        self.head_version = event.head_version;
        // Before a head exists, the ImageNet top-1 drives the policy and the state.
        let (label, score) = match (&event.label, event.score) {
            (Some(label), Some(score)) => (label.clone(), score),
            _ => match event.imagenet_top_k.as_ref().and_then(|t| t.first()) {
                Some(top) => (top.label.clone(), top.score),
                None => return,
            },
        };
        let decision = self.policy.decide(&label, score, Instant::now());
        if decision.publish_prediction {
            let message = Prediction {
                device: self.device.clone(),
                frame_id: event.frame_id,
                label: event.label.clone(),
                score: event.score,
                top_k: event.top_k.clone(),
                imagenet_top_k: event.imagenet_top_k.clone(),
                captured_at_ms: unix_ms(event.captured_at),
                latency_ms: event.latency.as_secs_f32() * 1e3,
                head_version: event.head_version,
            };
            if let Err(err) = self.link.publish_json(Outgoing::Prediction, &message) {
                log::warn!("prediction for frame {}: {err}", event.frame_id);
            }
        }
        if let Some(new_label) = decision.state_changed {
            log::info!("{}", hints::state_changed(&self.device, &new_label, score));
            let state = State {
                device: self.device.clone(),
                label: new_label,
                score,
                since_ms: now_unix_ms(),
                head_version: event.head_version,
            };
            if let Err(err) = self.link.publish_json(Outgoing::State, &state) {
                log::warn!("state: {err}");
            }
        }
    }

    /// Publishes the frame's thumbnail on `frame/thumbnail` when thumbnails are on and the
    /// interval has passed since the last one (not retained: a stale picture misleads).
    pub fn thumbnail(&mut self, frame_id: u64, jpeg: Option<&[u8]>) {
        let (Some(every), Some(jpeg)) = (self.thumbnail_every, jpeg) else {
            return;
        };
        let now = Instant::now();
        if self.last_thumbnail.is_some_and(|last| now < last + every) {
            return;
        }
        let Some(tagged) = tag_frame(jpeg, frame_id).filter(|t| t.len() <= MAX_THUMBNAIL_BYTES)
        else {
            return;
        };
        self.last_thumbnail = Some(now);
        if let Err(err) = self.link.publish_to(Outgoing::Thumbnail, tagged) {
            log::warn!("thumbnail of frame {frame_id}: {err}");
        }
    }

    /// Publishes the stats message; returns a one-line status for systemd.
    pub fn stats(
        &mut self,
        stats: &PipelineStats,
        health: &HealthProbe,
        intake: IntakeCounters,
    ) -> String {
        let now = Instant::now();
        let frames_in = stats.frames_in.load(Ordering::Relaxed);
        let frames_out = stats.frames_out.load(Ordering::Relaxed);
        let secs = now.duration_since(self.previous.at).as_secs_f32().max(1e-3);
        let fps_in = (frames_in - self.previous.frames_in) as f32 / secs;
        let fps_out = (frames_out - self.previous.frames_out) as f32 / secs;
        self.previous = Previous {
            at: now,
            frames_in,
            frames_out,
        };
        let mut stages = BTreeMap::new();
        {
            let windows = stats.stages.lock().unwrap_or_else(|p| p.into_inner());
            for (name, window) in [
                ("decode", &windows.decode),
                ("preprocess", &windows.preprocess),
                ("backbone", &windows.backbone),
                ("head", &windows.head),
                ("end_to_end", &windows.end_to_end),
            ] {
                if let Some((median_ms, p95_ms)) = window.median_p95_ms() {
                    stages.insert(name.to_string(), StageLatency { median_ms, p95_ms });
                }
            }
        }
        let counters = self.link.counters();
        let message = Stats {
            device: self.device.clone(),
            fps_in,
            fps_out,
            frames_dropped: stats.frames_dropped(),
            frames_skipped: stats.frames_skipped.load(Ordering::Relaxed),
            stages,
            rss_bytes: crate::procstat::rss_bytes().unwrap_or(0),
            uptime_s: self.started.elapsed().as_secs(),
            broker_reconnects: counters.reconnects,
            mqtt_dropped: counters.dropped_outgoing,
            incoming_dropped: counters.dropped_incoming
                + counters.rejected_incoming
                + intake.refused(),
            incoming_too_large: intake.too_large,
            incoming_retained: intake.retained,
            incoming_busy: intake.busy,
            head_version: self.head_version,
            state_free_bytes: crate::fsutil::free_bytes(&self.state_dir).ok(),
            backbone_engine: self.backbone.as_ref().map(|b| b.0.clone()),
            backbone_provider: self.backbone.as_ref().map(|b| b.1.clone()),
            samples_other_engine: (self.samples_other_engine > 0)
                .then_some(self.samples_other_engine),
        };
        if let Err(err) = self.link.publish_json(Outgoing::Stats, &message) {
            log::warn!("stats: {err}");
        }
        let source = match health.get().state {
            HealthState::Ok => String::new(),
            HealthState::Reconnecting {
                attempt,
                last_error,
            } => {
                format!(", source reconnecting (attempt {attempt}: {last_error})")
            }
            HealthState::Ended => ", source ended".into(),
        };
        let head = self
            .head_version
            .map(|v| format!("head v{v}"))
            .unwrap_or_else(|| "no head (ImageNet)".into());
        format!(
            "{fps_in:.1} fps in, {fps_out:.1} fps out, {head}, broker {}{source}",
            if counters.connected { "up" } else { "down" }
        )
    }

    /// A message on one of our subscriptions (samples and commands; see docs/mqtt.md).
    pub fn incoming(&mut self, received: Received) {
        log::info!(
            "received {} ({} bytes): teaching over MQTT is not enabled in this build",
            received.topic,
            received.payload.len()
        );
    }

    /// A handle on the link's outbox that waits for room (for the export's parts).
    pub fn outbox(&self) -> crate::mqtt::link::OutboxHandle {
        self.link.outbox()
    }

    /// Queues a learner message (ack or training report) on its topic.
    /// The link, for the watchdog's liveness check.
    pub fn link(&self) -> &MqttLink {
        &self.link
    }

    pub fn send(&self, message: super::teach::Outbound) {
        if let Err(err) = self.link.publish_to(message.kind, message.payload) {
            log::warn!("{}: {err}", message.kind.suffix());
        }
    }

    /// Publishes `stopped` (retained) and disconnects.
    pub async fn shutdown(self) {
        self.link.shutdown().await;
    }
}
