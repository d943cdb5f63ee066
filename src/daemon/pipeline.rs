//! The frame pipeline: capture -> decode (+ skip unchanged) -> preprocess -> backbone -> head,
//! on three threads joined by newest-wins slots, so decoding the next frame overlaps inference of
//! this one, a slow stage drops stale frames (counted) instead of queueing them, and memory stays
//! flat however long the broker or a consumer is away. Predictions leave on a bounded channel.
//! The decoder works one frame ahead of inference and no further (so its core time goes to
//! frames that will be classified), and an unpaced replay is read only as fast as it is consumed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use image::RgbImage;
use tokio::sync::mpsc;

use super::change::ChangeFilter;
use super::liveness::{spawn_watched, DeathReporter};
use super::meter::LatencyWindow;
use super::slot::LatestSlot;
use crate::learn::head::Head;
use crate::learn::thumbnail::jpeg_thumbnail;
use crate::mqtt::messages::Scored;
use crate::source::{Frame, FrameData, FrameSource, HealthProbe, Interrupt};
use crate::vision::backbone::Backbone;
use crate::vision::decode::{decode_image, decode_raw, DecodeLimits, PixelFormat};
use crate::vision::labels::{softmax, top_k};
use crate::vision::preprocess::{PreprocessError, Preprocessor};
use crate::vision::spec::ResizeMode;

/// How long a waiting stage sleeps before re-checking the stop flag.
const POLL: Duration = Duration::from_millis(200);
/// Latency samples kept per stage for the stats medians.
const WINDOW: usize = 256;
/// How long `stop` waits for the capture thread after asking the source to stop (an `exec:`
/// child gets SIGTERM first, as gstreamer's camera daemon wants), before forcing it.
const CAPTURE_GRACE: Duration = Duration::from_millis(1500);

/// A trained head with the version it is stored under.
pub struct LoadedHead {
    pub head: Head,
    pub version: u64,
    /// The same training without the validation samples: what the learner's gate scores against
    /// a new head (the deployed head has seen those samples). `None`: the gate uses `head`.
    pub gate: Option<Head>,
    /// An imprinted head (a new class added in milliseconds, not stored): served until the full
    /// training refines it; if the gate rejects that training, stored version `version` returns.
    pub provisional: bool,
}

impl LoadedHead {
    /// A head without a gate twin (trained offline, or with no validation split).
    pub fn new(head: Head, version: u64) -> LoadedHead {
        LoadedHead {
            head,
            version,
            gate: None,
            provisional: false,
        }
    }

    /// The head the gate compares a new one against.
    pub fn gate_head(&self) -> &Head {
        self.gate.as_ref().unwrap_or(&self.head)
    }
}

/// The head in use, swapped atomically by the trainer while frames keep flowing.
pub type HeadCell = ArcSwapOption<LoadedHead>;

/// Decodes what a source delivered into an RGB image.
pub fn decode_frame(data: &FrameData, limits: &DecodeLimits) -> Result<RgbImage, PreprocessError> {
    match data {
        FrameData::Encoded(bytes) => decode_image(bytes, limits),
        FrameData::Raw {
            format,
            width,
            height,
            bytes,
        } => match format {
            PixelFormat::Mjpeg => decode_image(bytes, limits),
            _ => decode_raw(*format, *width, *height, bytes, limits),
        },
    }
}

/// What the pipeline hands to the publisher for each processed frame.
#[derive(Debug, Clone)]
pub struct PredictionEvent {
    pub frame_id: u64,
    pub captured_at: SystemTime,
    /// Head label and score; `None` before a head is trained.
    pub label: Option<String>,
    pub score: Option<f32>,
    pub top_k: Vec<Scored>,
    /// ImageNet classes, given when no head is loaded (a first look at any scene).
    pub imagenet_top_k: Option<Vec<Scored>>,
    pub latency: Duration,
    pub head_version: Option<u64>,
    pub embedding: Vec<f32>,
    /// A small JPEG of the frame (made in the decode thread), kept in the recent-frames ring so
    /// an operator can label this frame later; `None` when thumbnails are off.
    pub thumbnail: Option<Vec<u8>>,
}

/// Per-stage latency windows.
#[derive(Debug)]
pub struct StageWindows {
    pub decode: LatencyWindow,
    pub preprocess: LatencyWindow,
    pub backbone: LatencyWindow,
    pub head: LatencyWindow,
    pub end_to_end: LatencyWindow,
}

/// Counters shared by the pipeline threads and the stats publisher.
#[derive(Debug)]
pub struct PipelineStats {
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub frames_skipped: AtomicU64,
    pub decode_errors: AtomicU64,
    /// Predictions the publisher could not take (its channel was full).
    pub events_dropped: AtomicU64,
    pub stages: Mutex<StageWindows>,
    frame_slot_drops: AtomicU64,
    tensor_slot_drops: AtomicU64,
}

impl Default for PipelineStats {
    fn default() -> Self {
        Self {
            frames_in: AtomicU64::new(0),
            frames_out: AtomicU64::new(0),
            frames_skipped: AtomicU64::new(0),
            decode_errors: AtomicU64::new(0),
            events_dropped: AtomicU64::new(0),
            stages: Mutex::new(StageWindows {
                decode: LatencyWindow::new(WINDOW),
                preprocess: LatencyWindow::new(WINDOW),
                backbone: LatencyWindow::new(WINDOW),
                head: LatencyWindow::new(WINDOW),
                end_to_end: LatencyWindow::new(WINDOW),
            }),
            frame_slot_drops: AtomicU64::new(0),
            tensor_slot_drops: AtomicU64::new(0),
        }
    }
}

impl PipelineStats {
    /// Stale frames replaced before a stage could take them (the camera outran inference).
    pub fn frames_dropped(&self) -> u64 {
        self.frame_slot_drops.load(Ordering::Relaxed)
            + self.tensor_slot_drops.load(Ordering::Relaxed)
    }

    fn with_stages(&self, f: impl FnOnce(&mut StageWindows)) {
        let mut guard = self.stages.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut guard);
    }
}

/// Everything the pipeline needs besides the source.
#[derive(Clone)]
pub struct PipelineSettings {
    pub resize: ResizeMode,
    pub limits: DecodeLimits,
    pub skip_unchanged_below: f32,
    pub top_k: usize,
    /// Longest side of each frame's thumbnail; 0 = no thumbnails.
    pub thumbnail_px: u32,
}

/// A frame after decode + preprocess, waiting for the backbone.
struct Prepared {
    frame_id: u64,
    captured_at: SystemTime,
    received: Instant,
    tensor: Vec<f32>,
    thumbnail: Option<Vec<u8>>,
}

/// The running pipeline.
pub struct Pipeline {
    stop: Arc<AtomicBool>,
    frames: Arc<LatestSlot<Frame>>,
    tensors: Arc<LatestSlot<Prepared>>,
    workers: Vec<JoinHandle<()>>,
    capture: JoinHandle<()>,
    interrupter: Option<Arc<dyn Interrupt>>,
    pub stats: Arc<PipelineStats>,
    pub health: HealthProbe,
    /// Set when the source ended for good (a non-looping replay).
    pub source_ended: Arc<AtomicBool>,
    /// Set when the source failed for good: the daemon exits non-zero with this reason.
    pub source_error: Arc<Mutex<Option<String>>>,
}

impl Pipeline {
    /// Starts the three threads. Predictions go to `events`; a full channel drops (counted).
    pub fn start(
        mut source: Box<dyn FrameSource>,
        backbone: Arc<Backbone>,
        head: Arc<HeadCell>,
        settings: PipelineSettings,
        events: mpsc::Sender<PredictionEvent>,
        deaths: DeathReporter,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let frames = Arc::new(LatestSlot::new());
        let tensors = Arc::new(LatestSlot::new());
        let stats = Arc::new(PipelineStats::default());
        let source_ended = Arc::new(AtomicBool::new(false));
        let source_error = Arc::new(Mutex::new(None));
        let health = source.health_probe();
        let interrupter = source.interrupter();

        // Capture: owns the source. `stop` interrupts the source (an `exec:` child that writes
        // nothing would block the read forever) and waits a bounded time: a camera read may
        // block for a while, and the process is about to exit anyway.
        let capture = {
            let (stop, frames, stats, ended, failed) = (
                stop.clone(),
                frames.clone(),
                stats.clone(),
                source_ended.clone(),
                source_error.clone(),
            );
            spawn_watched("capture", deaths.clone(), move || {
                // A source without a clock of its own (an unpaced replay) is read only when
                // the decoder took the previous frame: reading ahead would only spin a core
                // on frames that get replaced. Live sources are always read, or their
                // buffers would fill with stale frames.
                let paced = source.paced_by_consumer();
                while !stop.load(Ordering::Relaxed) {
                    if paced && !frames.wait_empty(POLL) {
                        continue;
                    }
                    match source.next_frame() {
                        Ok(Some(frame)) => {
                            stats.frames_in.fetch_add(1, Ordering::Relaxed);
                            if frames.put(frame) {
                                stats.frame_slot_drops.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Ok(None) => {
                            log::info!("source {} ended", source.describe());
                            ended.store(true, Ordering::Relaxed);
                            break;
                        }
                        Err(err) => {
                            let reason = format!("source {}: {err}", source.describe());
                            *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
                            ended.store(true, Ordering::Relaxed);
                            break;
                        }
                    }
                }
                frames.close();
            })?
        };

        let decode_worker = {
            let (stop, frames, tensors, stats) =
                (stop.clone(), frames.clone(), tensors.clone(), stats.clone());
            let settings = settings.clone();
            let mut preprocessor = Preprocessor::new(backbone.input_spec(), settings.resize);
            let mut change = ChangeFilter::new(settings.skip_unchanged_below);
            spawn_watched("decode", deaths.clone(), move || {
                while !stop.load(Ordering::Relaxed) {
                    // Decode the next frame only once inference took the previous tensor:
                    // one frame is prepared ahead (the overlap), never more, so no core is
                    // spent decoding frames inference would never see, and the frame
                    // decoded is the newest one at that moment.
                    if !tensors.wait_empty(POLL) {
                        continue;
                    }
                    let Some(frame) = frames.take_timeout(POLL) else {
                        if frames.is_closed() {
                            break;
                        }
                        continue;
                    };
                    let started = Instant::now();
                    let image = match decode_frame(&frame.data, &settings.limits) {
                        Ok(image) => image,
                        Err(err) => {
                            stats.decode_errors.fetch_add(1, Ordering::Relaxed);
                            log::warn!("frame {}: {err}", frame.id);
                            continue;
                        }
                    };
                    let decoded = Instant::now();
                    if !change.should_process(&image) {
                        stats.frames_skipped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let mut tensor = Vec::new();
                    if let Err(err) = preprocessor.run(&image, &mut tensor) {
                        stats.decode_errors.fetch_add(1, Ordering::Relaxed);
                        log::warn!("frame {}: {err}", frame.id);
                        continue;
                    }
                    let thumbnail = (settings.thumbnail_px > 0)
                        .then(|| jpeg_thumbnail(&image, settings.thumbnail_px))
                        .flatten();
                    let done = Instant::now();
                    stats.with_stages(|s| {
                        s.decode.record(decoded - started);
                        s.preprocess.record(done - decoded);
                    });
                    let prepared = Prepared {
                        frame_id: frame.id,
                        captured_at: frame.captured_at,
                        received: frame.received,
                        tensor,
                        thumbnail,
                    };
                    if tensors.put(prepared) {
                        stats.tensor_slot_drops.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tensors.close();
            })?
        };

        let infer_worker = {
            let (stop, tensors, stats) = (stop.clone(), tensors.clone(), stats.clone());
            spawn_watched("infer", deaths, move || {
                while !stop.load(Ordering::Relaxed) {
                    let Some(prepared) = tensors.take_timeout(POLL) else {
                        if tensors.is_closed() {
                            break;
                        }
                        continue;
                    };
                    if prepared.frame_id >= 2 {
                        crate::fault::maybe_panic(crate::fault::Fault::InferPanic);
                    }
                    let event = match infer(&backbone, &head, &settings, &stats, prepared) {
                        Ok(event) => event,
                        Err(err) => {
                            log::error!("inference failed: {err}");
                            continue;
                        }
                    };
                    stats.frames_out.fetch_add(1, Ordering::Relaxed);
                    if events.try_send(event).is_err() {
                        stats.events_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })?
        };

        Ok(Self {
            stop,
            frames,
            tensors,
            workers: vec![decode_worker, infer_worker],
            capture,
            interrupter,
            stats,
            health,
            source_ended,
            source_error,
        })
    }

    /// Stops the pipeline: waits for the decode and inference threads (at most one frame) and,
    /// a bounded time, for the capture thread, whose source is interrupted so that nothing it
    /// started (an `exec:` child) outlives the daemon.
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.frames.close();
        self.tensors.close();
        if let Some(interrupter) = &self.interrupter {
            interrupter.interrupt(false);
        }
        for worker in self.workers {
            let _ = worker.join();
        }
        // A camera read that blocks is left behind (the process is about to exit); a source
        // with processes of its own gets SIGKILL for them if SIGTERM was not enough.
        if !wait_finished(&self.capture, CAPTURE_GRACE) {
            if let Some(interrupter) = &self.interrupter {
                log::warn!("capture did not stop within {CAPTURE_GRACE:?}: killing the source");
                interrupter.interrupt(true);
                wait_finished(&self.capture, CAPTURE_GRACE);
            }
        }
    }
}

/// Waits up to `limit` for a thread to finish; true if it did.
fn wait_finished(thread: &JoinHandle<()>, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while !thread.is_finished() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

fn to_scored(pairs: Vec<(usize, f32)>, name: impl Fn(usize) -> String) -> Vec<Scored> {
    pairs
        .into_iter()
        .map(|(index, score)| Scored {
            label: name(index),
            score,
        })
        .collect()
}

fn infer(
    backbone: &Backbone,
    head: &HeadCell,
    settings: &PipelineSettings,
    stats: &PipelineStats,
    prepared: Prepared,
) -> Result<PredictionEvent, Box<dyn std::error::Error + Send + Sync>> {
    let started = Instant::now();
    let output = backbone.run(&prepared.tensor)?;
    let inferred = Instant::now();
    let current = head.load_full();
    let (label, score, top, imagenet_top_k, head_version) = match current.as_deref() {
        Some(loaded) => {
            let probs = loaded.head.predict(&output.embedding)?;
            let classes = loaded.head.classes();
            let top = to_scored(top_k(&probs, settings.top_k), |i| classes[i].clone());
            let (label, score) = top
                .first()
                .map(|s| (Some(s.label.clone()), Some(s.score)))
                .unwrap_or((None, None));
            (label, score, top, None, Some(loaded.version))
        }
        None => {
            let imagenet = match (&output.logits, backbone.labels()) {
                (Some(logits), Some(labels)) => {
                    Some(to_scored(top_k(&softmax(logits), settings.top_k), |i| {
                        labels.name(i).unwrap_or("?").to_string()
                    }))
                }
                _ => None,
            };
            (None, None, Vec::new(), imagenet, None)
        }
    };
    let finished = Instant::now();
    // Monotonic: a wall clock that jumps (NTP syncing a board that booted in 1970) must not
    // turn into hour-long or zero latencies.
    let latency = finished.saturating_duration_since(prepared.received);
    stats.with_stages(|s| {
        s.backbone.record(inferred - started);
        s.head.record(finished - inferred);
        s.end_to_end.record(latency);
    });
    Ok(PredictionEvent {
        frame_id: prepared.frame_id,
        captured_at: prepared.captured_at,
        label,
        score,
        top_k: top,
        imagenet_top_k,
        latency,
        head_version,
        embedding: output.embedding,
        thumbnail: prepared.thumbnail,
    })
}
