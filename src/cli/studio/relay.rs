//! The studio's MQTT half: one client of the contract in docs/mqtt.md that subscribes to what
//! every device under the prefix publishes, keeps a table of devices (availability, current
//! prediction, stats, labels, last report, newest thumbnail) for pages that connect later,
//! fans every change out to the live streams, and publishes samples and commands whose acks it
//! hands back to the request that is waiting for them (matched by device, id and label).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS, SubscribeFilter};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{broadcast, oneshot};

use crate::cli::send::check_availability;
use crate::mqtt::messages::learning::Ack;
use crate::mqtt::messages::thumbnail::frame_of;
use crate::mqtt::topics::{parse_outgoing, Outgoing, Topics};

/// Live events kept for a slow page; one that falls further behind skips to the newest.
const LIVE_BACKLOG: usize = 256;

/// One device as the page shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Device {
    pub device: String,
    /// `online` / `offline` / `stopped` (the retained availability), as published.
    pub availability: Option<String>,
    /// The newest prediction (label, score, frame_id, head_version, top_k...).
    pub prediction: Option<Value>,
    pub fps_in: Option<f64>,
    pub fps_out: Option<f64>,
    pub head_version: Option<u64>,
    /// Samples per label (the `labels` ack, then each sample ack's `count`).
    pub labels: BTreeMap<String, u64>,
    /// `learning.max_sample_bytes` as the device reported it.
    pub max_sample_bytes: Option<u64>,
    /// The retained training report.
    pub report: Option<Value>,
    /// The frame the newest thumbnail shows (what "label this frame" names).
    pub thumbnail_frame: Option<u64>,
    #[serde(skip)]
    pub thumbnail: Option<Vec<u8>>,
    /// A `labels` command is on its way (one at a time).
    #[serde(skip)]
    asking_labels: bool,
}

/// One message on the live stream (server-sent events): its event name and JSON data.
#[derive(Debug, Clone)]
pub struct Live {
    pub event: &'static str,
    pub data: String,
}

impl Live {
    fn device(device: &Device) -> Live {
        Live {
            event: "device",
            data: serde_json::to_string(device).unwrap_or_default(),
        }
    }

    /// A new prediction only: the page updates one line, not the whole card.
    fn prediction(device: &Device) -> Live {
        let data = serde_json::json!({
            "device": device.device,
            "prediction": device.prediction,
            "head_version": device.head_version,
        });
        Live {
            event: "prediction",
            data: data.to_string(),
        }
    }

    fn thumbnail(device: &str, frame_id: Option<u64>, jpeg: &[u8]) -> Live {
        let data = serde_json::json!({
            "device": device,
            "frame_id": frame_id,
            "jpeg": base64::engine::general_purpose::STANDARD.encode(jpeg),
        });
        Live {
            event: "thumbnail",
            data: data.to_string(),
        }
    }
}

/// What a message changed on the page.
enum Shown {
    Nothing,
    Prediction,
    Device,
}

/// Someone waiting for one ack.
struct Waiter {
    device: String,
    id: String,
    label: Option<String>,
    reply: oneshot::Sender<Ack>,
}

/// Why a sample or command could not be relayed (the HTTP side turns these into statuses).
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Unavailable(#[from] crate::cli::send::DeviceUnavailable),
    #[error("the broker connection is not ready: {0}")]
    Broker(String),
    #[error("no ack from {device} within {seconds} s (is the device busy or gone?)")]
    NoAck { device: String, seconds: u64 },
}

/// The shared relay; cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct Relay {
    inner: Arc<Inner>,
}

struct Inner {
    client: AsyncClient,
    prefix: String,
    devices: Mutex<BTreeMap<String, Device>>,
    waiters: Mutex<Vec<Waiter>>,
    live: broadcast::Sender<Live>,
    ack_timeout: Duration,
}

impl Relay {
    /// Starts the MQTT client task (it reconnects by itself, as rumqttc's event loop does).
    pub fn start(
        options: rumqttc::MqttOptions,
        prefix: &str,
        url: String,
        ack_timeout: Duration,
    ) -> Relay {
        let (client, eventloop) = AsyncClient::new(options, 64);
        let (live, _) = broadcast::channel(LIVE_BACKLOG);
        let relay = Relay {
            inner: Arc::new(Inner {
                client,
                prefix: prefix.to_string(),
                devices: Mutex::new(BTreeMap::new()),
                waiters: Mutex::new(Vec::new()),
                live,
                ack_timeout,
            }),
        };
        tokio::spawn(relay.clone().poll(eventloop, url));
        relay
    }

    async fn poll(self, mut eventloop: EventLoop, url: String) {
        // Everything a device publishes but export archives (megabytes nobody here asked for).
        let filters: Vec<SubscribeFilter> = Outgoing::ALL
            .iter()
            .filter(|k| **k != Outgoing::Export)
            .map(|k| {
                let filter = format!("{}/+/{}", self.inner.prefix, k.suffix());
                SubscribeFilter::new(filter, QoS::AtLeastOnce)
            })
            .collect();
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    log::info!("studio: connected to {url}");
                    let _ = self.inner.client.try_subscribe_many(filters.clone());
                }
                Ok(Event::Incoming(Packet::Publish(p))) => self.incoming(&p.topic, &p.payload),
                Ok(_) => {}
                Err(err) => {
                    // rumqttc's errors name the host, never the credentials.
                    log::warn!("studio: broker {url}: {err}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// A new live stream: every device as it is now, then each change.
    pub fn subscribe(&self) -> (Vec<Live>, broadcast::Receiver<Live>) {
        let receiver = self.inner.live.subscribe();
        let devices = self.lock_devices();
        let mut snapshot = Vec::new();
        for device in devices.values() {
            snapshot.push(Live::device(device));
            if let Some(jpeg) = &device.thumbnail {
                snapshot.push(Live::thumbnail(
                    &device.device,
                    device.thumbnail_frame,
                    jpeg,
                ));
            }
        }
        (snapshot, receiver)
    }

    /// A copy of one device's row.
    pub fn device(&self, name: &str) -> Option<Device> {
        self.lock_devices().get(name).cloned()
    }

    fn lock_devices(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Device>> {
        self.inner.devices.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn incoming(&self, topic: &str, payload: &[u8]) {
        let Some((name, kind)) = parse_outgoing(&self.inner.prefix, topic) else {
            return;
        };
        if kind == Outgoing::Ack {
            if let Ok(ack) = serde_json::from_slice::<Ack>(payload) {
                self.answer(&name, &ack);
                self.update(&name, |d| {
                    if apply_ack(d, &ack) {
                        Shown::Device
                    } else {
                        Shown::Nothing
                    }
                });
            }
            return;
        }
        if kind == Outgoing::Thumbnail {
            let frame = frame_of(payload);
            self.update(&name, |d| {
                d.thumbnail = Some(payload.to_vec());
                d.thumbnail_frame = frame;
                Shown::Nothing
            });
            let _ = self.inner.live.send(Live::thumbnail(&name, frame, payload));
            return;
        }
        let json: Option<Value> = serde_json::from_slice(payload).ok();
        let mut ask_labels = false;
        self.update(&name, |d| {
            let shown = apply_message(d, kind, payload, json);
            // Its labels and size limit (the buttons and the upload cap need them): asked when
            // it comes online and, should that command have been lost (sent before the device
            // subscribed), again with its next stats.
            let online = d.availability.as_deref() == Some("online");
            let wanted = kind == Outgoing::Availability
                || (kind == Outgoing::Stats && d.max_sample_bytes.is_none());
            if online && wanted && !d.asking_labels {
                d.asking_labels = true;
                ask_labels = true;
            }
            shown
        });
        if ask_labels {
            let relay = self.clone();
            tokio::spawn(async move {
                if let Err(err) = relay.command(&name, "labels", serde_json::json!({})).await {
                    log::info!("studio: labels of {name}: {err}");
                }
                relay.update(&name, |d| {
                    d.asking_labels = false;
                    Shown::Nothing
                });
            });
        }
    }

    /// Applies `change` to the device's row (made on first sight) and broadcasts what the
    /// change says the page must redraw.
    fn update(&self, name: &str, change: impl FnOnce(&mut Device) -> Shown) {
        let message = {
            let mut devices = self.lock_devices();
            let device = devices.entry(name.to_string()).or_insert_with(|| Device {
                device: name.to_string(),
                ..Device::default()
            });
            match change(device) {
                Shown::Device => Some(Live::device(device)),
                Shown::Prediction => Some(Live::prediction(device)),
                Shown::Nothing => None,
            }
        };
        if let Some(message) = message {
            // No page connected is not an error.
            let _ = self.inner.live.send(message);
        }
    }

    fn answer(&self, device: &str, ack: &Ack) {
        let Some(id) = ack.id.as_deref() else {
            return;
        };
        let mut waiters = self.inner.waiters.lock().unwrap_or_else(|p| p.into_inner());
        // Dropped requests (a closed page) leave closed senders behind: drop them too.
        waiters.retain(|w| !w.reply.is_closed());
        if let Some(at) = waiters.iter().position(|w| {
            w.device == device
                && w.id == id
                && (w.label.is_none() || w.label.as_deref() == ack.label.as_deref())
        }) {
            let _ = waiters.swap_remove(at).reply.send(ack.clone());
        }
    }

    /// Publishes `payload` on `topic` for `device` and waits for its ack (`id`, and `label` for
    /// samples). Refused at once when the device is not online, as `glimpse send` does.
    pub async fn request(
        &self,
        device: &str,
        topic: String,
        payload: Vec<u8>,
        id: &str,
        label: Option<&str>,
    ) -> Result<Ack, RelayError> {
        let availability_topic = format!("{}/{device}/availability", self.inner.prefix);
        let availability = self.device(device).and_then(|d| d.availability);
        check_availability(
            device,
            &availability_topic,
            availability.as_deref().map(str::as_bytes),
        )?;
        let (reply, answer) = oneshot::channel();
        self.inner
            .waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Waiter {
                device: device.to_string(),
                id: id.to_string(),
                label: label.map(String::from),
                reply,
            });
        self.inner
            .client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .map_err(|e| RelayError::Broker(e.to_string()))?;
        match tokio::time::timeout(self.inner.ack_timeout, answer).await {
            Ok(Ok(ack)) => Ok(ack),
            _ => Err(RelayError::NoAck {
                device: device.to_string(),
                seconds: self.inner.ack_timeout.as_secs(),
            }),
        }
    }

    /// Sends command `name` with `args` (a JSON object) and a fresh id; waits for its ack.
    pub async fn command(
        &self,
        device: &str,
        name: &str,
        mut args: Value,
    ) -> Result<Ack, RelayError> {
        let id = fresh_id();
        args["id"] = Value::String(id.clone());
        let topics = Topics::new(&self.inner.prefix, device)
            .map_err(|e| RelayError::Broker(e.to_string()))?;
        let payload = serde_json::to_vec(&args).unwrap_or_default();
        self.request(device, topics.command(name), payload, &id, None)
            .await
    }

    /// The topics of `device` under the studio's prefix.
    pub fn topics(&self, device: &str) -> Result<Topics, RelayError> {
        Topics::new(&self.inner.prefix, device).map_err(|e| RelayError::Broker(e.to_string()))
    }
}

/// A sample or command id no other request of this process uses (it follows the id rule).
pub fn fresh_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "studio-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Applies a device's message (other than acks and thumbnails) to its row.
fn apply_message(d: &mut Device, kind: Outgoing, payload: &[u8], json: Option<Value>) -> Shown {
    match (kind, json) {
        (Outgoing::Availability, _) => {
            d.availability = Some(String::from_utf8_lossy(payload).chars().take(16).collect());
            Shown::Device
        }
        (Outgoing::Prediction, Some(v)) => {
            let version = v.get("head_version").and_then(Value::as_u64);
            let new_head = version != d.head_version;
            d.head_version = version;
            d.prediction = Some(v);
            if new_head {
                Shown::Device
            } else {
                Shown::Prediction
            }
        }
        (Outgoing::Stats, Some(v)) => {
            d.fps_in = v.get("fps_in").and_then(Value::as_f64);
            d.fps_out = v.get("fps_out").and_then(Value::as_f64);
            d.head_version = v
                .get("head_version")
                .and_then(Value::as_u64)
                .or(d.head_version);
            Shown::Device
        }
        (Outgoing::Report, Some(v)) => {
            d.report = Some(v);
            Shown::Device
        }
        _ => Shown::Nothing,
    }
}

/// What an ack tells about the device's samples; true when the page's view changed.
fn apply_ack(device: &mut Device, ack: &Ack) -> bool {
    let mut changed = false;
    if let Some(labels) = &ack.labels {
        device.labels = labels.clone();
        changed = true;
    }
    if let Some(max) = ack.max_sample_bytes {
        device.max_sample_bytes = Some(max);
    }
    if let (None, Some(label), Some(count)) = (&ack.command, &ack.label, ack.count) {
        device.labels.insert(label.clone(), count);
        changed = true;
    }
    if ack.command.as_deref() == Some("forget") && ack.deleted.is_some() {
        if let Some(label) = &ack.label {
            device.labels.remove(label);
            changed = true;
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::messages::learning::AckStatus;

    #[test]
    fn acks_keep_the_samples_per_label_current() {
        let mut device = Device::default();
        let listing = Ack {
            labels: Some(BTreeMap::from([("rock".to_string(), 3)])),
            max_sample_bytes: Some(1000),
            ..Ack::command(Some("c1".into()), "labels", AckStatus::Accepted)
        };
        assert!(apply_ack(&mut device, &listing));
        assert_eq!(device.max_sample_bytes, Some(1000));
        let sample = Ack {
            count: Some(1),
            ..Ack::sample(Some("h".into()), Some("paper".into()), AckStatus::Accepted)
        };
        assert!(apply_ack(&mut device, &sample));
        assert_eq!(
            device.labels,
            BTreeMap::from([("paper".to_string(), 1), ("rock".to_string(), 3)])
        );
        let retrain = Ack::command(Some("c2".into()), "retrain", AckStatus::Accepted);
        assert!(!apply_ack(&mut device, &retrain));
    }

    #[test]
    fn ids_are_fresh_and_valid() {
        let (a, b) = (fresh_id(), fresh_id());
        assert_ne!(a, b);
        assert!(crate::learn::identity::SampleId::new(a).is_ok());
    }
}
