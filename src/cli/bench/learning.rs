//! `glimpse bench --learning`: what teaching costs on real photos (`--dataset`, default the
//! 4,250 photos / 13 classes of ../shared/datasets/*_full, embedded once and cached).
//!
//! First the training work alone (`retrain.rs`): cold, and warm-started after 20 new samples or
//! a new class, against a converged logistic-regression reference. Then through the daemon's real
//! learner thread (validation, decode, embed, thumbnail, SQLite commit with synchronous=FULL,
//! ack; retraining: read every sample, train the gate's head, gate, refit on all, write the
//! version files, swap, report), without MQTT, each figure against a reference from the same run:
//!
//! - ingest of a real photo sample, submit to ack, against one backbone inference alone;
//! - the first retrain on the store (every photo but a few held back), command to ack, then
//!   retrains after each 20 further samples;
//! - frame throughput of the real pipeline while heads train back to back, against the same
//!   pipeline without training (measured just before).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use arc_swap::ArcSwapOption;
use serde::Serialize;
use tokio::sync::mpsc;

use super::pipeline::{backbone_alone, start_replay, ScratchDir};
use super::real::{RealSet, DEFAULT_DATASETS};
use super::retrain::{RetrainFigures, ADDED_SAMPLES};
use super::{emit, peak_rss_mb, BenchArgs, StageStats};
use crate::config::LearningConfig;
use crate::daemon::learner::{
    LearnEvent, LearnRequest, Learner, LearnerSettings, SampleContent, SampleRequest,
};
use crate::daemon::pipeline::{HeadCell, PipelineStats};
use crate::learn::cache::content_hash;
use crate::learn::identity::{Label, SampleId};
use crate::mqtt::messages::learning::{Ack, AckStatus, Command};
use crate::store::{NewSample, Store};
use crate::vision::preprocess::synthetic_jpeg;

/// Ingests timed (after 2 warm-up ones).
const INGEST_RUNS: usize = 20;
/// Retrains after `ADDED_SAMPLES` new samples, timed on an idle machine.
const RETRAIN_RUNS: usize = 3;
/// Photos held back from the seeded store, to be taught through the learner.
const HELD_BACK: usize = INGEST_RUNS + 2 + RETRAIN_RUNS * ADDED_SAMPLES;

#[derive(Debug, Serialize)]
pub struct LearningReport {
    pub model: String,
    pub threads: usize,
    pub datasets: Vec<String>,
    pub classes: usize,
    /// The training work alone on the real embeddings (no store, no daemon).
    pub training: RetrainFigures,
    /// One backbone inference of a preprocessed 640x480 frame, alone.
    pub backbone_alone: StageStats,
    /// Submit of a real photo sample to its `accepted` ack.
    pub ingest: StageStats,
    /// ingest median / backbone median (target < 1.5).
    pub ingest_over_backbone: f64,
    /// Stored samples the first retrain trained on.
    pub retrain_samples: usize,
    /// The first `retrain` command (no active head) to its ack, idle machine.
    pub first_retrain: StageStats,
    /// `retrain` command to its ack after each `ADDED_SAMPLES` more samples, idle machine.
    pub retrain: StageStats,
    /// Frames per second of the pipeline alone, then while heads train back to back.
    pub frames_per_s_normal: f64,
    pub frames_per_s_training: f64,
    /// training / normal (target >= 0.7).
    pub throughput_during_training: f64,
    /// Retrains completed during the training window, and their median (cores shared).
    pub retrains_under_load: usize,
    pub retrain_under_load: StageStats,
    pub peak_rss_mb: Option<f64>,
}

/// The learner threads with their event channel, driven like the daemon's tokio loop drives them.
struct Driver {
    learner: Learner,
    out: mpsc::Receiver<LearnEvent>,
}

impl Driver {
    /// Submits one request and waits for its ack (other events on the way are skipped).
    fn call(&mut self, request: LearnRequest) -> anyhow::Result<Ack> {
        if let Err(refused) = self.learner.submit(request, None) {
            bail!("learner refused: {:?}", refused.refusal());
        }
        loop {
            if let LearnEvent::Ack(ack) = self.out.blocking_recv().context("learner stopped")? {
                return Ok(ack);
            }
        }
    }

    fn retrain(&mut self) -> anyhow::Result<Duration> {
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
}

/// The rows of `set` held back from the seeded store, spread over the whole set (and so over
/// every class): taught through the learner instead.
fn held_back(set: &RealSet) -> Vec<usize> {
    let step = (set.len() / HELD_BACK).max(1);
    (0..set.len()).step_by(step).take(HELD_BACK).collect()
}

/// Stores every row of `set` but `skip` as samples, as a second connection (WAL).
fn seed_store(
    store: &mut Store,
    set: &RealSet,
    skip: &[usize],
    fingerprint: &str,
) -> anyhow::Result<usize> {
    let mut stored = 0;
    for i in (0..set.len()).filter(|i| skip.binary_search(i).is_err()) {
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

/// Predictions per second of a running pipeline over `window`.
fn frames_per_s(stats: &PipelineStats, window: Duration) -> f64 {
    let before = stats.frames_out.load(Ordering::Relaxed);
    let started = Instant::now();
    std::thread::sleep(window);
    let after = stats.frames_out.load(Ordering::Relaxed);
    (after - before) as f64 / started.elapsed().as_secs_f64()
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let (width, height) = (640, 480);
    let threads = args.pipeline_threads.max(1);
    let model = crate::cli::common::ModelArgs {
        threads,
        ..args.model.clone()
    };
    let backbone = model.load_backbone()?;
    let fingerprint = backbone.fingerprint().clone();
    let say = |text: String| {
        if !args.json {
            eprintln!("{text}");
        }
    };
    let dirs: Vec<std::path::PathBuf> = if args.datasets.is_empty() {
        DEFAULT_DATASETS.iter().map(Into::into).collect()
    } else {
        args.datasets.clone()
    };
    let set = super::real::load(
        &dirs,
        &backbone,
        args.model.resize_mode(),
        args.cache_dir.clone(),
        &say,
    )
    .context("the learning benchmark runs on real photos: run it from the repository root (next to ../shared) or give --dataset DIR")?;
    if set.len() < 4 * HELD_BACK {
        bail!(
            "the learning benchmark needs at least {} photos, the datasets hold {}",
            4 * HELD_BACK,
            set.len()
        );
    }
    let training_work =
        super::retrain::measure(&set, &fingerprint, args.retrain_runs.max(1), &say)?;

    let jpeg = synthetic_jpeg(width, height, 85)?;
    let alone = backbone_alone(&backbone, args, &jpeg)?;
    let state = ScratchDir::create(0, width, height)?;
    let held = held_back(&set);
    let mut seeding = Store::open_in(&state.0)?;
    say(format!(
        "seeding the store with {} real samples ({} classes)...",
        set.len() - held.len(),
        set.classes.len()
    ));
    let seeded = seed_store(&mut seeding, &set, &held, &fingerprint.to_string())?;
    drop(seeding);

    let head: Arc<HeadCell> = Arc::new(ArcSwapOption::empty());
    let learning = LearningConfig {
        retrain_after: 0,
        ..LearningConfig::default()
    };
    let (out_tx, out) = mpsc::channel(64);
    let learner = Learner::start(
        Store::open_in(&state.0)?,
        backbone.clone(),
        head.clone(),
        LearnerSettings {
            device: "bench".into(),
            learning: learning.clone(),
            state_dir: state.0.clone(),
            resize: args.model.resize_mode(),
        },
        out_tx,
        mpsc::unbounded_channel().0,
    )
    .context("cannot start the learner thread")?;
    let mut driver = Driver { learner, out };
    let mut teach = held.iter().copied();
    let teach_one = |driver: &mut Driver, i: usize| -> anyhow::Result<Duration> {
        let bytes = std::fs::read(&set.files[i])
            .with_context(|| format!("reading {}", set.files[i].display()))?;
        let label = set.classes[set.labels[i]].clone();
        let started = Instant::now();
        let hash = content_hash(&bytes);
        let ack = driver.call(LearnRequest::Sample(SampleRequest {
            id: SampleId::of_content(hash.clone()),
            label: Label::new(label)?,
            source: "image",
            content_hash: hash,
            content: SampleContent::Image(bytes),
        }))?;
        if ack.status != Some(AckStatus::Accepted) {
            bail!("{} not accepted: {:?}", set.files[i].display(), ack.reason);
        }
        Ok(started.elapsed())
    };

    say(format!("ingesting {INGEST_RUNS} real photo samples..."));
    let mut ingest = Vec::new();
    for (n, i) in teach.by_ref().take(INGEST_RUNS + 2).enumerate() {
        let took = teach_one(&mut driver, i)?;
        if n >= 2 {
            ingest.push(took);
        }
    }
    let ingest = StageStats::from_durations(&ingest);
    let retrain_samples = seeded + INGEST_RUNS + 2;

    say(format!(
        "first retrain on {retrain_samples} samples (no active head)..."
    ));
    let first = driver.retrain()?;
    let mut retrains = Vec::new();
    for run in 0..RETRAIN_RUNS {
        for i in teach.by_ref().take(ADDED_SAMPLES) {
            teach_one(&mut driver, i)?;
        }
        say(format!(
            "retrain {}/{RETRAIN_RUNS} after {ADDED_SAMPLES} more samples...",
            run + 1
        ));
        retrains.push(driver.retrain()?);
    }

    let images = ScratchDir::create(args.pipeline_images.max(1), width, height)?;
    let (pipeline, drain) = start_replay(args, &images, backbone.clone(), head)?;
    let window = Duration::from_secs_f64(args.seconds.max(1.0));
    say(format!(
        "frames: {:.0} s without training, then {:.0} s with heads training back to back...",
        window.as_secs_f64(),
        window.as_secs_f64()
    ));
    std::thread::sleep(Duration::from_secs(1));
    let stats = pipeline.stats.clone();
    let normal = frames_per_s(&stats, window);
    // Training starts first, then the window opens, so it covers training only.
    let measuring = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let trainer = {
        let measuring = measuring.clone();
        std::thread::spawn(move || -> anyhow::Result<Vec<Duration>> {
            let mut times = Vec::new();
            while measuring.load(Ordering::Relaxed) || times.is_empty() {
                times.push(driver.retrain()?);
            }
            driver.learner.stop();
            Ok(times)
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    let training = frames_per_s(&stats, window);
    measuring.store(false, Ordering::Relaxed);
    let under_load = trainer
        .join()
        .map_err(|_| anyhow::anyhow!("trainer panicked"))??;
    pipeline.stop();
    let _ = drain.join();

    let report = LearningReport {
        model: args.model.model.display().to_string(),
        threads,
        datasets: dirs.iter().map(|d| d.display().to_string()).collect(),
        classes: set.classes.len(),
        training: training_work,
        backbone_alone: alone,
        ingest,
        ingest_over_backbone: ingest.median_ms / alone.median_ms.max(1e-9),
        retrain_samples,
        first_retrain: StageStats::from_durations(&[first]),
        retrain: StageStats::from_durations(&retrains),
        frames_per_s_normal: normal,
        frames_per_s_training: training,
        throughput_during_training: training / normal.max(1e-9),
        retrains_under_load: under_load.len(),
        retrain_under_load: StageStats::from_durations(&under_load),
        peak_rss_mb: peak_rss_mb(),
    };
    emit(args, &report, print_report)
}

fn print_report(r: &LearningReport) {
    println!("model {}  {} backbone threads", r.model, r.threads);
    println!(
        "real photos: {} ({} classes)",
        r.datasets.join(", "),
        r.classes
    );
    let t = &r.training;
    println!(
        "training work alone (gate twin + refit on all), median of {} runs:",
        t.cold.runs
    );
    for s in [&t.cold, &t.warm_more_samples, &t.warm_new_class] {
        println!(
            "  {:<34} {:>5} samples: {:>6.0} ms ({:.0} twin + {:.0} refit; {} + {} iterations), held-out accuracy {:.4} on {}",
            s.name,
            s.samples,
            s.total.median_ms,
            s.twin.median_ms,
            s.refit.median_ms,
            s.twin_iterations,
            s.refit_iterations,
            s.val_accuracy,
            s.val_count
        );
    }
    println!(
        "  reference (zero start, gradient < {:.0e}, {} iterations): held-out accuracy {:.4}",
        t.reference_tolerance, t.reference_iterations, t.reference_accuracy
    );
    println!(
        "ingest of a real photo sample (submit -> accepted ack): {:.2} ms median ({:.2} p95)",
        r.ingest.median_ms, r.ingest.p95_ms
    );
    println!(
        "  = {:.2}x one backbone inference ({:.2} ms median alone)",
        r.ingest_over_backbone, r.backbone_alone.median_ms
    );
    println!(
        "first retrain on {} stored samples (command -> ack): {:.0} ms",
        r.retrain_samples, r.first_retrain.median_ms
    );
    println!(
        "retrain after {ADDED_SAMPLES} more samples (command -> ack): {:.0} ms median ({:.0} p95)",
        r.retrain.median_ms, r.retrain.p95_ms
    );
    println!(
        "frames/s: {:.2} normal, {:.2} while training -> {:.0}% of normal",
        r.frames_per_s_normal,
        r.frames_per_s_training,
        r.throughput_during_training * 100.0
    );
    println!(
        "  {} retrains under frame load, {:.0} ms median",
        r.retrains_under_load, r.retrain_under_load.median_ms
    );
    if let Some(rss) = r.peak_rss_mb {
        println!("peak RSS {rss:.1} MB");
    }
}
