//! The learner: one dedicated thread that owns the sample store and its own embedder, and turns
//! samples and commands from MQTT into stored samples, acks, retrained heads and training
//! reports. It never runs on the tokio thread and never touches the frame pipeline except
//! through the `HeadCell`, which it swaps atomically (the inference thread picks the new head up
//! on its next frame; no frame is dropped for it).
//!
//! Order of work per sample: validate (pure, cheapest first) -> duplicate check -> quota ->
//! decode + embed -> commit -> ack. The ack is queued only after `COMMIT` returned, so an
//! `accepted` ack always means the sample survives a crash.
//!
//! Training runs on this thread too: ingest waits while a head trains (a second or two for a few
//! thousand samples), the frame pipeline does not.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::mpsc;

use super::pipeline::{HeadCell, LoadedHead};
use super::recent::RecentFrames;
use crate::config::LearningConfig;
use crate::learn::cache::content_hash;
use crate::learn::gate::{decide, holdout_split, GateInput};
use crate::learn::head::Head;
use crate::learn::ingest::{
    check_quota, decode_sample, json_id_hint, parse_json_sample, validate_label, Rejection,
    SampleContent, SampleLimits,
};
use crate::learn::metrics::argmax;
use crate::learn::thumbnail::jpeg_thumbnail;
use crate::learn::train::{train_with_split, Dataset, TrainConfig};
use crate::mqtt::link::Received;
use crate::mqtt::messages::learning::{parse_command, Ack, AckStatus, Command, TrainingReport};
use crate::mqtt::messages::now_unix_ms;
use crate::mqtt::topics::{Incoming, Outgoing};
use crate::store::{Inserted, NewHead, NewSample, Store, StoreError};
use crate::vision::backbone::Backbone;
use crate::vision::embedder::Embedder;
use crate::vision::spec::{Fingerprint, ResizeMode};

/// Messages waiting for the learner. Each may hold an image of up to `max_sample_bytes`.
const QUEUE: usize = 64;
/// The learner thread's nice value: when a board's cores are busy with frames, ingest and
/// training wait, the frame loop does not (throughput during a retrain: docs/performance.md).
const LEARNER_NICE: i32 = 19;

/// A message for the publisher (acks, reports).
#[derive(Debug, Clone, PartialEq)]
pub struct Outbound {
    pub kind: Outgoing,
    pub payload: Vec<u8>,
}

impl Outbound {
    fn json<T: serde::Serialize>(kind: Outgoing, value: &T) -> Outbound {
        Outbound {
            kind,
            payload: serde_json::to_vec(value).unwrap_or_default(),
        }
    }
}

/// Everything the learner needs besides the store.
#[derive(Clone)]
pub struct LearnerSettings {
    pub device: String,
    pub learning: LearningConfig,
    pub state_dir: PathBuf,
    pub resize: ResizeMode,
    /// The largest archive `cmd/export` publishes (`mqtt.max_packet_bytes` less room for the
    /// topic and header); larger ones stay on the device.
    pub max_publish_bytes: usize,
}

/// The handle the daemon holds.
pub struct Learner {
    tx: Option<SyncSender<Received>>,
    thread: Option<JoinHandle<()>>,
}

impl Learner {
    /// Starts the learner thread.
    pub fn start(
        store: Store,
        backbone: Arc<Backbone>,
        head: Arc<HeadCell>,
        recent: Arc<Mutex<RecentFrames>>,
        settings: LearnerSettings,
        out: mpsc::Sender<Outbound>,
    ) -> std::io::Result<Learner> {
        let (tx, rx) = sync_channel(QUEUE);
        let limits = SampleLimits {
            max_bytes: settings.learning.max_sample_bytes,
            max_pixels: settings.learning.max_sample_pixels,
            max_per_label: settings.learning.max_per_label,
            max_total: settings.learning.max_total,
            max_labels: settings.learning.max_labels,
        };
        let embedder = Embedder::new(backbone.clone(), settings.resize, limits.decode_limits());
        let fingerprint = backbone.fingerprint().clone();
        let since_training = samples_since_active_head(&store);
        let mut worker = Worker {
            fingerprint_text: fingerprint.to_string(),
            fingerprint,
            store,
            embedder,
            head,
            recent,
            settings,
            limits,
            out,
            since_training,
        };
        let thread = std::thread::Builder::new()
            .name("learner".into())
            .spawn(move || {
                lower_thread_priority(LEARNER_NICE);
                worker.run(rx)
            })?;
        Ok(Learner {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queues a sample or command. When the queue is full the message is refused at once with a
    /// `rejected` ack (reason "busy") to publish, so the sender knows to retry.
    pub fn submit(&self, received: Received) -> Result<(), Outbound> {
        let Some(tx) = &self.tx else {
            return Ok(());
        };
        match tx.try_send(received) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(received)) | Err(TrySendError::Disconnected(received)) => {
                let reason = Rejection::Busy("ingest queue full".into()).to_string();
                Err(Outbound::json(
                    Outgoing::Ack,
                    &refusal_ack(&received).with_reason(reason),
                ))
            }
        }
    }

    /// Stops taking work and waits for the thread to finish what it holds.
    pub fn stop(mut self) {
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The ack skeleton (id, label / command) for a message, before knowing the outcome.
fn refusal_ack(received: &Received) -> Ack {
    match &received.incoming {
        Incoming::SampleImage { label } => Ack::sample(
            Some(content_hash(&received.payload)),
            Some(label.clone()),
            AckStatus::Rejected,
        ),
        Incoming::SampleJson => {
            Ack::sample(json_id_hint(&received.payload), None, AckStatus::Rejected)
        }
        Incoming::Command { name } => {
            Ack::command(json_id_hint(&received.payload), name, AckStatus::Rejected)
        }
    }
}

/// Reads and checks one stored head version (and its gate twin, when it has a usable one).
fn load_version(
    store: &Store,
    version: u64,
    fingerprint: &Fingerprint,
) -> Result<Result<LoadedHead, String>, StoreError> {
    let stored = match store.head(version) {
        Ok(Some(stored)) => stored,
        Ok(None) => return Ok(Err(format!("head v{version} is missing from the store"))),
        Err(err @ StoreError::HeadFile { .. }) => {
            return Ok(Err(format!("head v{version}: {err}")))
        }
        Err(err) => return Err(err),
    };
    let head = match Head::from_bytes(&stored.bytes, Some(fingerprint)) {
        Ok(head) => head,
        Err(err) => return Ok(Err(format!("head v{version} in the store: {err}"))),
    };
    let gate = stored
        .gate_bytes
        .and_then(|bytes| match Head::from_bytes(&bytes, Some(fingerprint)) {
            Ok(gate) => Some(gate),
            Err(err) => {
                log::warn!("gate twin of head v{version} unusable ({err}): gating against v{version} itself");
                None
            }
        });
    Ok(Ok(LoadedHead {
        head,
        version,
        gate,
    }))
}

/// Loads the active head from the store; a corrupt, missing or foreign version falls back to the
/// previous one (which becomes active). Returns the head and one message per refused version.
pub fn restore_head(
    store: &mut Store,
    fingerprint: &Fingerprint,
) -> Result<(Option<LoadedHead>, Vec<String>), StoreError> {
    let mut errors = Vec::new();
    let Some(active) = store.active_version()? else {
        return Ok((None, errors));
    };
    let mut candidate = Some(active);
    while let Some(version) = candidate {
        match load_version(store, version, fingerprint)? {
            Ok(loaded) => {
                if version != active {
                    store.set_active(version)?;
                    errors.push(format!("using head v{version} instead of v{active}"));
                }
                return Ok((Some(loaded), errors));
            }
            Err(error) => errors.push(error),
        }
        candidate = store.previous_version(version)?;
    }
    errors.push("no usable head version: publishing ImageNet classes".into());
    Ok((None, errors))
}

/// Samples stored since the active head was made (they count toward `retrain_after`, so a
/// restart does not forget them).
fn samples_since_active_head(store: &Store) -> u32 {
    let count = || -> Result<u64, StoreError> {
        store.samples_after(store.active_created_at()?.unwrap_or(0))
    };
    match count() {
        Ok(n) => n.min(u32::MAX as u64) as u32,
        Err(err) => {
            log::warn!("cannot count samples since the active head: {err}");
            0
        }
    }
}

/// Lowers the calling thread's CPU priority (Linux: `setpriority` on the thread id), so that
/// ingest and training give way to the frame pipeline when both want a core.
fn lower_thread_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain syscalls on the calling thread; no memory is shared with the kernel.
        let result = unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, nice)
        };
        if result != 0 {
            log::debug!(
                "learner: cannot lower priority: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

struct Worker {
    fingerprint: Fingerprint,
    fingerprint_text: String,
    store: Store,
    embedder: Embedder,
    head: Arc<HeadCell>,
    recent: Arc<Mutex<RecentFrames>>,
    settings: LearnerSettings,
    limits: SampleLimits,
    out: mpsc::Sender<Outbound>,
    /// Samples accepted since the last training (counts toward `retrain_after`).
    since_training: u32,
}

/// A validated sample ready to embed and store.
struct Pending {
    id: String,
    label: String,
    source: &'static str,
    content_hash: String,
    /// Image bytes to decode and embed, or a remembered frame's embedding and thumbnail.
    content: PendingContent,
}

enum PendingContent {
    Image(Vec<u8>),
    Frame {
        embedding: Vec<f32>,
        thumbnail: Option<Vec<u8>>,
    },
}

impl Worker {
    fn run(&mut self, rx: Receiver<Received>) {
        while let Ok(received) = rx.recv() {
            let acks = match &received.incoming {
                Incoming::Command { name } => {
                    let name = name.clone();
                    self.command(&name, &received.payload)
                }
                _ => self.sample(&received),
            };
            self.send(Outbound::json(Outgoing::Ack, &acks));
            // Automatic retraining after the ack: the sample is committed already.
            let every = self.settings.learning.retrain_after;
            if every > 0 && self.since_training >= every {
                if let Err(reason) = self.retrain("auto", false) {
                    log::info!("automatic retraining skipped: {reason}");
                }
            }
        }
    }

    fn send(&self, message: Outbound) {
        // Blocking is fine here (this thread only); it fails only when the daemon is stopping.
        if self.out.blocking_send(message).is_err() {
            log::debug!("learner: publisher gone, message dropped");
        }
    }

    fn sample(&mut self, received: &Received) -> Ack {
        let skeleton = refusal_ack(received);
        match self.ingest(received) {
            Ok((pending_id, label, inserted)) => {
                let (status, count) = match inserted {
                    Inserted::Accepted { count } => (AckStatus::Accepted, count),
                    Inserted::Duplicate { count } => (AckStatus::Duplicate, count),
                };
                let ack = Ack {
                    count: Some(count),
                    ..Ack::sample(Some(pending_id), Some(label), status)
                };
                if status == AckStatus::Accepted {
                    self.since_training += 1;
                }
                ack
            }
            Err(rejection) => {
                log::info!("sample on {} rejected: {rejection}", received.topic);
                skeleton.with_reason(rejection.to_string())
            }
        }
    }

    /// Validates, embeds and commits one sample.
    fn ingest(&mut self, received: &Received) -> Result<(String, String, Inserted), Rejection> {
        if !self.settings.learning.enabled {
            return Err(Rejection::Disabled);
        }
        let pending = self.validate(received)?;
        let internal = |e: StoreError| Rejection::Internal(e.to_string());
        if self
            .store
            .contains(&pending.content_hash, &pending.label)
            .map_err(internal)?
        {
            let count = self
                .store
                .label_counts()
                .map_err(internal)?
                .get(&pending.label)
                .copied()
                .unwrap_or(0);
            return Ok((pending.id, pending.label, Inserted::Duplicate { count }));
        }
        let counts = self.store.label_counts().map_err(internal)?;
        check_quota(&counts, &pending.label, &self.limits)?;
        let (embedding, thumbnail) = match pending.content {
            PendingContent::Image(bytes) => {
                let image = decode_sample(&bytes, &self.limits)?;
                let (output, _) = self
                    .embedder
                    .embed_image(&image)
                    .map_err(|e| Rejection::BadImage(e.to_string()))?;
                let thumbnail = jpeg_thumbnail(&image, self.settings.learning.thumbnail_px);
                (output.embedding, thumbnail)
            }
            PendingContent::Frame {
                embedding,
                thumbnail,
            } => (embedding, thumbnail),
        };
        let inserted = self
            .store
            .insert_sample(&NewSample {
                id: &pending.id,
                label: &pending.label,
                embedding: &embedding,
                source: pending.source,
                content_hash: &pending.content_hash,
                thumbnail: thumbnail.as_deref(),
                fingerprint: &self.fingerprint_text,
            })
            .map_err(internal)?;
        Ok((pending.id, pending.label, inserted))
    }

    /// The pure checks, cheapest first; reads the recent-frames ring for `frame_id` samples.
    fn validate(&self, received: &Received) -> Result<Pending, Rejection> {
        match &received.incoming {
            Incoming::SampleImage { label } => {
                crate::learn::ingest::check_payload_size(received.payload.len(), &self.limits)?;
                validate_label(label)?;
                let hash = content_hash(&received.payload);
                Ok(Pending {
                    id: hash.clone(),
                    label: label.clone(),
                    source: "image",
                    content_hash: hash,
                    content: PendingContent::Image(received.payload.clone()),
                })
            }
            Incoming::SampleJson => {
                let sample = parse_json_sample(&received.payload, &self.limits)?;
                match sample.content {
                    SampleContent::Image(bytes) => {
                        let hash = content_hash(&bytes);
                        Ok(Pending {
                            id: sample.id.unwrap_or_else(|| hash.clone()),
                            label: sample.label,
                            source: "json",
                            content_hash: hash,
                            content: PendingContent::Image(bytes),
                        })
                    }
                    SampleContent::Frame(frame_id) => {
                        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
                        let frame = recent
                            .get(frame_id)
                            .ok_or(Rejection::UnknownFrame(frame_id))?;
                        let bytes: Vec<u8> = frame
                            .embedding
                            .iter()
                            .flat_map(|v| v.to_le_bytes())
                            .collect();
                        Ok(Pending {
                            id: sample.id.unwrap_or_else(|| format!("frame-{frame_id}")),
                            label: sample.label,
                            source: "frame",
                            content_hash: content_hash(&bytes),
                            content: PendingContent::Frame {
                                embedding: frame.embedding.clone(),
                                thumbnail: frame.thumbnail.clone(),
                            },
                        })
                    }
                }
            }
            Incoming::Command { .. } => Err(Rejection::Internal("not a sample".into())),
        }
    }

    fn command(&mut self, name: &str, payload: &[u8]) -> Ack {
        let (id, parsed) = parse_command(name, payload);
        let rejected = |reason: String| {
            log::info!("command {name} rejected: {reason}");
            Ack::command(id.clone(), name, AckStatus::Rejected).with_reason(reason)
        };
        let command = match parsed {
            Ok(c) => c,
            Err(reason) => return rejected(reason),
        };
        if !self.settings.learning.enabled {
            return rejected(Rejection::Disabled.to_string());
        }
        let accepted = Ack::command(id.clone(), name, AckStatus::Accepted);
        let result = match command {
            Command::Retrain { force } => {
                self.retrain("command", force)
                    .map(|(version, accepted_by_gate, reason)| Ack {
                        head_version: version,
                        reason: Some(reason),
                        status: Some(if accepted_by_gate {
                            AckStatus::Accepted
                        } else {
                            AckStatus::Rejected
                        }),
                        ..accepted.clone()
                    })
            }
            Command::Rollback => self.rollback().map(|version| Ack {
                head_version: Some(version),
                ..accepted.clone()
            }),
            Command::Forget { label } => self.forget(&label).map(|(deleted, version)| Ack {
                label: Some(label.clone()),
                deleted: Some(deleted),
                head_version: version,
                ..accepted.clone()
            }),
            Command::Labels => self
                .store
                .label_counts()
                .map_err(|e| e.to_string())
                .map(|labels| Ack {
                    labels: Some(labels),
                    ..accepted.clone()
                }),
            Command::Export { publish } => self.export().map(|(path, bytes)| {
                let mut ack = Ack {
                    path: Some(path.display().to_string()),
                    bytes: Some(bytes),
                    ..accepted.clone()
                };
                if publish {
                    ack.published = Some(self.publish_export(&path, bytes, &mut ack));
                }
                ack
            }),
        };
        result.unwrap_or_else(rejected)
    }

    /// Trains on every stored sample, gates, stores + swaps when accepted, publishes the report.
    /// Returns (active version, accepted by the gate, gate reason).
    fn retrain(
        &mut self,
        trigger: &str,
        force: bool,
    ) -> Result<(Option<u64>, bool, String), String> {
        self.since_training = 0;
        let started = Instant::now();
        let samples = self
            .store
            .samples(&self.fingerprint_text)
            .map_err(|e| e.to_string())?;
        let classes: Vec<String> = samples
            .iter()
            .map(|s| s.label.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if classes.len() < 2 {
            return Err(format!(
                "need samples of at least 2 labels to train, the store has {}",
                classes.len()
            ));
        }
        let index: BTreeMap<&str, usize> = classes
            .iter()
            .enumerate()
            .map(|(i, c)| (c.as_str(), i))
            .collect();
        let labels: Vec<usize> = samples.iter().map(|s| index[s.label.as_str()]).collect();
        let dim = self.fingerprint.dim;
        let mut features = Vec::with_capacity(samples.len() * dim);
        for s in &samples {
            features.extend_from_slice(&s.embedding);
        }
        let data = Dataset {
            features: &features,
            dim,
            labels: &labels,
            classes: &classes,
        };
        let cfg = TrainConfig {
            validation_split: self.settings.learning.validation_split,
            seed: self.settings.learning.seed,
            ..TrainConfig::default()
        };
        let hashes: Vec<&str> = samples.iter().map(|s| s.content_hash.as_str()).collect();
        let (train_idx, val_idx) = holdout_split(&hashes, &labels, cfg.validation_split, cfg.seed);
        let train = |train_idx: &[usize], val_idx: &[usize]| {
            train_with_split(
                &data,
                train_idx,
                val_idx,
                &self.fingerprint,
                &cfg,
                &mut |_| {},
            )
            .map_err(|e| e.to_string())
        };
        // The gate's head: trained without the validation samples, so its validation figures
        // are honest and it can be compared fairly with the active version's gate head.
        let candidate = train(&train_idx, &val_idx)?;

        // The gate: both gate heads on the same validation rows, which neither has trained on
        // (a sample's side of the split never changes).
        let val_features: Vec<f32> = val_idx
            .iter()
            .flat_map(|&i| samples[i].embedding.iter().copied())
            .collect();
        let names = |head: &Head| -> Vec<String> {
            let k = head.classes().len().max(1);
            head.predict_batch(&val_features, val_idx.len())
                .chunks(k)
                .map(|row| head.classes()[argmax(row)].clone())
                .collect()
        };
        let truth: Vec<&str> = val_idx.iter().map(|&i| samples[i].label.as_str()).collect();
        let new_names = names(&candidate);
        let old = self.head.load_full();
        let old_names = old.as_deref().map(|o| names(o.gate_head()));
        let old_classes = old
            .as_deref()
            .map(|o| o.gate_head().classes().to_vec())
            .unwrap_or_default();
        let new_refs: Vec<&str> = new_names.iter().map(String::as_str).collect();
        let old_refs: Option<Vec<&str>> = old_names
            .as_ref()
            .map(|v| v.iter().map(String::as_str).collect());
        let decision = decide(&GateInput {
            truth: &truth,
            old_predictions: old_refs.as_deref(),
            new_predictions: &new_refs,
            old_classes: &old_classes,
            tolerance: self.settings.learning.gate_tolerance,
            force,
        });

        let report = candidate.report().clone();
        let mut deployed_train_count = report.train_count;
        let mut version = None;
        if decision.accepted {
            // Deploy the same training refit on every sample: the validation samples are often
            // a fifth of what the operator taught, too much to leave out of the head in use.
            let (deployed, gate) = if val_idx.is_empty() {
                (candidate, None)
            } else {
                let all: Vec<usize> = (0..samples.len()).collect();
                let mut deployed = train(&all, &[])?;
                let deployed_report = deployed.report_mut();
                deployed_report.validation = report.validation.clone();
                deployed_report.val_count = report.val_count;
                deployed_report.refit_on_all = true;
                (deployed, Some(candidate))
            };
            deployed_train_count = deployed.report().train_count;
            let bytes = deployed.to_bytes();
            let gate_bytes = gate.as_ref().map(Head::to_bytes);
            let report_json = serde_json::to_string(deployed.report()).unwrap_or_default();
            let v = self
                .store
                .insert_head(
                    &NewHead {
                        bytes: &bytes,
                        gate_bytes: gate_bytes.as_deref(),
                        report_json: &report_json,
                    },
                    true,
                )
                .map_err(|e| e.to_string())?;
            self.head.store(Some(Arc::new(LoadedHead {
                head: deployed,
                version: v,
                gate,
            })));
            version = Some(v);
            log::info!(
                "head v{v} active: {} classes, {} samples ({})",
                classes.len(),
                samples.len(),
                decision.reason
            );
        } else {
            log::warn!("new head rejected by the gate: {}", decision.reason);
        }
        let active_version = self.head.load_full().as_deref().map(|h| h.version);
        let message = TrainingReport {
            device: self.settings.device.clone(),
            trigger: trigger.to_string(),
            version,
            active_version,
            accepted: decision.accepted,
            forced: force,
            gate: decision.clone(),
            samples_per_class: classes
                .iter()
                .cloned()
                .zip(report.samples_per_class.iter().copied())
                .collect(),
            classes,
            train_count: report.train_count,
            val_count: report.val_count,
            deployed_train_count,
            accuracy: report.validation.as_ref().map(|v| v.accuracy),
            validation: report.validation.clone(),
            train_accuracy: report.train_accuracy,
            duration_ms: started.elapsed().as_millis() as u64,
            finished_at_ms: now_unix_ms(),
        };
        self.send(Outbound::json(Outgoing::Report, &message));
        Ok((active_version, decision.accepted, decision.reason))
    }

    /// Activates the newest usable version older than the active one.
    fn rollback(&mut self) -> Result<u64, String> {
        let err = |e: StoreError| e.to_string();
        let active = self
            .store
            .active_version()
            .map_err(err)?
            .ok_or("no active head to roll back from")?;
        let mut candidate = self.store.previous_version(active).map_err(err)?;
        while let Some(version) = candidate {
            match load_version(&self.store, version, &self.fingerprint).map_err(err)? {
                Ok(loaded) => {
                    self.store.set_active(version).map_err(err)?;
                    self.head.store(Some(Arc::new(loaded)));
                    log::info!("rolled back from head v{active} to v{version}");
                    return Ok(version);
                }
                Err(e) => log::error!("rollback: {e}"),
            }
            candidate = self.store.previous_version(version).map_err(err)?;
        }
        Err(format!("no usable head version older than v{active}"))
    }

    /// Deletes a label's samples, then retrains (forced: the operator asked for the change).
    fn forget(&mut self, label: &str) -> Result<(u64, Option<u64>), String> {
        let deleted = self.store.delete_label(label).map_err(|e| e.to_string())?;
        if deleted == 0 {
            return Err(format!("no samples labeled {label:?}"));
        }
        log::info!("forgot {deleted} samples of {label:?}");
        match self.retrain("forget", true) {
            Ok((version, _, _)) => Ok((deleted, version)),
            Err(reason) => {
                // Fewer than 2 labels left: no head can be trained, and the old one would keep
                // predicting the forgotten label, so predictions fall back to ImageNet.
                log::info!("after forget: {reason}; no head active");
                self.store.deactivate_heads().map_err(|e| e.to_string())?;
                self.head.store(None);
                Ok((deleted, None))
            }
        }
    }

    /// Publishes an export archive on `export` (before its ack, so a client that waits for the
    /// ack has the archive). Too large for one MQTT packet: the ack says so and where it is.
    fn publish_export(&self, path: &std::path::Path, bytes: u64, ack: &mut Ack) -> bool {
        if bytes > self.settings.max_publish_bytes as u64 {
            ack.reason = Some(format!(
                "the archive is {bytes} bytes, over the {} bytes one MQTT message may carry \
                 (mqtt.max_packet_bytes); copy {} from the device",
                self.settings.max_publish_bytes,
                path.display()
            ));
            return false;
        }
        match std::fs::read(path) {
            Ok(payload) => {
                self.send(Outbound {
                    kind: Outgoing::Export,
                    payload,
                });
                true
            }
            Err(e) => {
                ack.reason = Some(format!("cannot read {}: {e}", path.display()));
                false
            }
        }
    }

    /// Writes every sample's thumbnail and label into `<state_dir>/exports/samples-<ms>.tar`;
    /// returns its path and size.
    fn export(&self) -> Result<(PathBuf, u64), String> {
        let rows = self.store.thumbnails().map_err(|e| e.to_string())?;
        let dir = self.settings.state_dir.join("exports");
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = dir.join(format!("samples-{}.tar", now_unix_ms()));
        let tmp = dir.join(".export.tmp");
        let write = || -> std::io::Result<()> {
            let file = std::fs::File::create(&tmp)?;
            let mut tar = tar::Builder::new(file);
            let mut index = String::from("file\tlabel\tid\n");
            for (i, (id, label, thumbnail)) in rows.iter().enumerate() {
                let name = format!("{}/{i:06}.jpg", safe_dir_name(label));
                append(&mut tar, &name, thumbnail)?;
                index.push_str(&format!("{name}\t{label}\t{id}\n"));
            }
            append(&mut tar, "index.tsv", index.as_bytes())?;
            tar.into_inner()?.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        let bytes = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        log::info!(
            "exported {} samples to {} ({bytes} bytes)",
            rows.len(),
            path.display()
        );
        Ok((path, bytes))
    }
}

fn append(tar: &mut tar::Builder<std::fs::File>, name: &str, data: &[u8]) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(now_unix_ms() / 1000);
    header.set_cksum();
    tar.append_data(&mut header, name, data)
}

/// A label as one safe path component (labels may be `..` or contain `\`).
fn safe_dir_name(label: &str) -> String {
    let cleaned: String = label
        .chars()
        .map(|c| if c == '\\' { '_' } else { c })
        .collect();
    if cleaned == "." || cleaned == ".." {
        format!("_{cleaned}")
    } else {
        cleaned
    }
}
