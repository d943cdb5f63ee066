//! The teaching scenarios of `bench --learning` that the field-scale targets are about, through
//! the daemon's real learner threads with the *default* learning settings (automatic retraining
//! with coalescing, imprinting, warm starts), real photos, and the real frame pipeline running at
//! `FRAME_FPS` beside them:
//!
//! - new label: the store holds every photo but those of one class, with a trained head active;
//!   ten photos of the class are taught one by one, as fast as they are acked. "Served" is the
//!   moment the head in use knows the label: imprinted (a provisional head) after the
//!   `imprint_after`th sample, and trained + gated (a stored version) after the 10th.
//! - bulk: N photos taught into an empty store, as `glimpse send DIR` would (one after another),
//!   until the last ack and until the head in use was trained on all of them; against the same
//!   photos taught with retraining off (ingest alone), in the same run.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use arc_swap::ArcSwapOption;
use serde::Serialize;
use tokio::sync::mpsc;

use super::real::RealSet;
use crate::config::LearningConfig;
use crate::daemon::learner::{
    LearnEvent, LearnRequest, Learner, LearnerSettings, SampleContent, SampleRequest,
};
use crate::daemon::pipeline::HeadCell;
use crate::learn::cache::content_hash;
use crate::learn::identity::{Label, SampleId};
use crate::mqtt::messages::learning::{Ack, AckStatus, Command};
use crate::store::{NewSample, Store};
use crate::vision::backbone::Backbone;
use crate::vision::spec::ResizeMode;

/// Frames per second of the camera running beside the teaching (the 5 fps).
pub const FRAME_FPS: f32 = 5.0;
/// Samples of the new label.
pub const NEW_LABEL_SAMPLES: usize = 10;
/// How long the learner may take to settle after the last ack before the bench gives up.
const SETTLE_LIMIT: Duration = Duration::from_secs(300);

/// The learner threads with their event channel, driven like the daemon's tokio loop drives them.
pub(super) struct Driver {
    pub learner: Learner,
    out: mpsc::Receiver<LearnEvent>,
    /// Training reports seen (automatic and commanded).
    pub reports: usize,
}

impl Driver {
    /// Starts the learner on the store in `state` with `learning` settings.
    pub fn start(
        state: &std::path::Path,
        backbone: Arc<Backbone>,
        head: Arc<HeadCell>,
        learning: LearningConfig,
        resize: ResizeMode,
    ) -> anyhow::Result<Driver> {
        let (out_tx, out) = mpsc::channel(64);
        let learner = Learner::start(
            Store::open_in(state)?,
            backbone,
            head,
            LearnerSettings {
                device: "bench".into(),
                learning,
                state_dir: state.to_path_buf(),
                resize,
            },
            out_tx,
            mpsc::unbounded_channel().0,
        )
        .context("cannot start the learner threads")?;
        Ok(Driver {
            learner,
            out,
            reports: 0,
        })
    }

    fn note(&mut self, event: &LearnEvent) {
        if matches!(event, LearnEvent::Report(_)) {
            self.reports += 1;
        }
    }

    /// Submits one request and waits for its ack (other events on the way are counted).
    pub fn call(&mut self, request: LearnRequest) -> anyhow::Result<Ack> {
        if let Err(refused) = self.learner.submit(request, None) {
            bail!("learner refused: {:?}", refused.refusal());
        }
        loop {
            let event = self.out.blocking_recv().context("learner stopped")?;
            self.note(&event);
            if let LearnEvent::Ack(ack) = event {
                return Ok(ack);
            }
        }
    }

    /// Reads the events that are waiting (so the learner never blocks on a full channel).
    pub fn drain(&mut self) {
        while let Ok(event) = self.out.try_recv() {
            self.note(&event);
        }
    }

    /// A forced `retrain` command, timed from submit to ack.
    pub fn retrain(&mut self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let ack = self.call(LearnRequest::Command {
            id: None,
            name: "retrain".into(),
            command: Command::Retrain { force: true },
        })?;
        if ack.status != Some(AckStatus::Accepted) {
            bail!("retrain was not accepted: {:?}", ack.reason);
        }
        Ok(started.elapsed())
    }

    /// Teaches row `i` of `set` as an image sample; returns when it is acked `accepted`.
    pub fn teach(&mut self, set: &RealSet, i: usize) -> anyhow::Result<()> {
        let bytes = std::fs::read(&set.files[i])
            .with_context(|| format!("reading {}", set.files[i].display()))?;
        let hash = content_hash(&bytes);
        let ack = self.call(LearnRequest::Sample(SampleRequest {
            id: SampleId::of_content(hash.clone()),
            label: Label::new(set.classes[set.labels[i]].clone())?,
            source: "image",
            content_hash: hash,
            content: SampleContent::Image(bytes),
        }))?;
        if ack.status != Some(AckStatus::Accepted) {
            bail!("{} not accepted: {:?}", set.files[i].display(), ack.reason);
        }
        Ok(())
    }

    /// Waits (reading events) until `done` holds, at most `limit`; returns when it held.
    pub fn wait_for(
        &mut self,
        limit: Duration,
        mut done: impl FnMut() -> bool,
    ) -> anyhow::Result<Instant> {
        let started = Instant::now();
        while !done() {
            if started.elapsed() > limit {
                bail!("the learner did not settle within {limit:?}");
            }
            self.drain();
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(Instant::now())
    }
}

/// Stores the rows `rows` of `set` as samples, as a second connection would (WAL).
pub(super) fn seed_store(
    state: &std::path::Path,
    set: &RealSet,
    rows: impl Iterator<Item = usize>,
    fingerprint: &str,
) -> anyhow::Result<usize> {
    let mut store = Store::open_in(state)?;
    let mut stored = 0;
    for i in rows {
        store.insert_sample(&NewSample {
            id: &set.hashes[i],
            label: &set.classes[set.labels[i]],
            embedding: set.row(i),
            source: "image",
            content_hash: &set.hashes[i],
            thumbnail: None,
            fingerprint,
        })?;
        stored += 1;
    }
    Ok(stored)
}

/// When the head in use first knew a label: provisionally (imprinted) and as a trained version.
#[derive(Default)]
struct Sightings {
    imprinted: Option<Instant>,
    trained: Option<Instant>,
}

/// Polls the head cell every millisecond on a thread of its own until stopped.
fn watch_head(
    head: Arc<HeadCell>,
    label: String,
    stop: Arc<AtomicBool>,
) -> (Arc<Mutex<Sightings>>, std::thread::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Sightings::default()));
    let out = seen.clone();
    let handle = std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if let Some(current) = head.load_full() {
                if current.head.classes().contains(&label) {
                    let mut s = seen.lock().unwrap_or_else(|p| p.into_inner());
                    let now = Instant::now();
                    s.imprinted.get_or_insert(now);
                    if !current.provisional {
                        s.trained.get_or_insert(now);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    (out, handle)
}

#[derive(Debug, Clone, Serialize)]
pub struct NewLabelFigures {
    pub label: String,
    /// Samples in the store (all other classes) before the new label's first sample.
    pub store_samples: usize,
    pub store_classes: usize,
    /// From the `imprint_after`th accepted sample to the label in the head in use (imprinted).
    pub imprinted_after_ms: Option<f64>,
    pub imprint_after: u64,
    /// From the 10th accepted sample to a trained, gated head version that knows the label.
    pub trained_after_10th_ms: f64,
    /// The ten acks, first submit to last ack.
    pub teaching_ms: f64,
}

/// The new-label scenario: see the module docs. `class` is the label taught.
pub(super) fn new_label(
    set: &RealSet,
    class: usize,
    backbone: Arc<Backbone>,
    resize: ResizeMode,
    fingerprint: &str,
    frames: &dyn Fn(Arc<HeadCell>) -> anyhow::Result<Box<dyn FnOnce()>>,
) -> anyhow::Result<NewLabelFigures> {
    let state = super::pipeline::ScratchDir::create(0, 1, 1)?;
    let store_samples = seed_store(
        &state.0,
        set,
        (0..set.len()).filter(|&i| set.labels[i] != class),
        fingerprint,
    )?;
    let head: Arc<HeadCell> = Arc::new(ArcSwapOption::empty());
    let learning = LearningConfig::default();
    let mut driver = Driver::start(&state.0, backbone, head.clone(), learning.clone(), resize)?;
    driver.retrain()?; // the active head of the other classes
    let stop_frames = frames(head.clone())?;
    let label = set.classes[class].clone();
    let stop = Arc::new(AtomicBool::new(false));
    let (seen, watcher) = watch_head(head.clone(), label.clone(), stop.clone());
    let rows: Vec<usize> = (0..set.len())
        .filter(|&i| set.labels[i] == class)
        .take(NEW_LABEL_SAMPLES)
        .collect();
    if rows.len() < NEW_LABEL_SAMPLES {
        bail!("class {label} has fewer than {NEW_LABEL_SAMPLES} photos");
    }
    let started = Instant::now();
    let mut acked = Vec::new();
    for &i in &rows {
        driver.teach(set, i)?;
        acked.push(Instant::now());
    }
    let teaching = started.elapsed();
    let result = driver.wait_for(Duration::from_secs(120), || {
        seen.lock()
            .unwrap_or_else(|p| p.into_inner())
            .trained
            .is_some()
    });
    stop.store(true, Ordering::Relaxed);
    let _ = watcher.join();
    stop_frames();
    driver.learner.stop();
    result?;
    let seen = seen.lock().unwrap_or_else(|p| p.into_inner());
    let since = |from: Instant, to: Option<Instant>| {
        to.map(|t| t.saturating_duration_since(from).as_secs_f64() * 1e3)
    };
    let nth = (learning.imprint_after as usize).clamp(1, NEW_LABEL_SAMPLES);
    Ok(NewLabelFigures {
        label,
        store_samples,
        store_classes: set.classes.len() - 1,
        imprinted_after_ms: (learning.imprint_after > 0)
            .then(|| since(acked[nth - 1], seen.imprinted))
            .flatten(),
        imprint_after: learning.imprint_after,
        trained_after_10th_ms: since(acked[NEW_LABEL_SAMPLES - 1], seen.trained).unwrap_or(0.0),
        teaching_ms: teaching.as_secs_f64() * 1e3,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct BulkFigures {
    pub samples: usize,
    pub classes: usize,
    /// Retraining off: first submit to last ack.
    pub ingest_alone_s: f64,
    /// Default settings: first submit to last ack.
    pub default_acked_s: f64,
    /// Default settings: first submit until the head in use was trained on every sample.
    pub default_settled_s: f64,
    /// default_settled / ingest_alone (target <= 1.3).
    pub ratio: f64,
    /// Trainings the learner ran on its own during the default run.
    pub automatic_retrains: usize,
}

/// Teaches `rows` into a fresh store with `learning`; returns (last ack, settled, reports).
fn teach_all(
    set: &RealSet,
    rows: &[usize],
    backbone: Arc<Backbone>,
    resize: ResizeMode,
    learning: LearningConfig,
    frames: &dyn Fn(Arc<HeadCell>) -> anyhow::Result<Box<dyn FnOnce()>>,
    say: &dyn Fn(String),
) -> anyhow::Result<(Duration, Duration, usize)> {
    let state = super::pipeline::ScratchDir::create(0, 1, 1)?;
    let head: Arc<HeadCell> = Arc::new(ArcSwapOption::empty());
    let retraining = learning.retrain_after > 0;
    let mut driver = Driver::start(&state.0, backbone, head.clone(), learning, resize)?;
    let stop_frames = frames(head.clone())?;
    let started = Instant::now();
    for (n, &i) in rows.iter().enumerate() {
        driver.teach(set, i)?;
        if (n + 1) % 500 == 0 {
            say(format!(
                "  {} / {} taught, {:.0} s",
                n + 1,
                rows.len(),
                started.elapsed().as_secs_f64()
            ));
        }
    }
    let acked = started.elapsed();
    let settled = if retraining {
        let all = rows.len();
        driver.wait_for(SETTLE_LIMIT, || {
            // The deployed head is refit on every sample, so its train_count is the store's.
            head.load_full()
                .is_some_and(|h| !h.provisional && h.head.report().train_count >= all)
        })?;
        started.elapsed()
    } else {
        acked
    };
    stop_frames();
    driver.drain();
    let reports = driver.reports;
    driver.learner.stop();
    Ok((acked, settled, reports))
}

/// The bulk scenario: see the module docs. Teaches the first `n` rows of `set` (in the set's
/// order: folder by folder, as an operator sends them).
pub(super) fn bulk(
    set: &RealSet,
    n: usize,
    backbone: Arc<Backbone>,
    resize: ResizeMode,
    frames: &dyn Fn(Arc<HeadCell>) -> anyhow::Result<Box<dyn FnOnce()>>,
    say: &dyn Fn(String),
) -> anyhow::Result<BulkFigures> {
    let rows: Vec<usize> = (0..set.len().min(n)).collect();
    let classes = rows
        .iter()
        .map(|&i| set.labels[i])
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    say(format!(
        "bulk: {} photos, retraining off (ingest alone)...",
        rows.len()
    ));
    let off = LearningConfig {
        retrain_after: 0,
        retrain_quiet_ms: 0,
        imprint_after: 0,
        ..LearningConfig::default()
    };
    let (alone, _, _) = teach_all(set, &rows, backbone.clone(), resize, off, frames, say)?;
    say(format!(
        "bulk: {} photos, default settings (automatic retraining)...",
        rows.len()
    ));
    let (acked, settled, reports) = teach_all(
        set,
        &rows,
        backbone,
        resize,
        LearningConfig::default(),
        frames,
        say,
    )?;
    Ok(BulkFigures {
        samples: rows.len(),
        classes,
        ingest_alone_s: alone.as_secs_f64(),
        default_acked_s: acked.as_secs_f64(),
        default_settled_s: settled.as_secs_f64(),
        ratio: settled.as_secs_f64() / alone.as_secs_f64().max(1e-9),
        automatic_retrains: reports,
    })
}
