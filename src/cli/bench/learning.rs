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

use super::pipeline::{backbone_alone, start_replay, ScratchDir};
use super::real::{RealSet, DEFAULT_DATASETS};
use super::retrain::{RetrainFigures, ADDED_SAMPLES};
use super::teaching::{seed_store, BulkFigures, Driver, NewLabelFigures, FRAME_FPS};
use super::{emit, peak_rss_mb, BenchArgs, StageStats};
use crate::config::LearningConfig;
use crate::daemon::pipeline::{HeadCell, PipelineStats};
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
    /// A new label taught with default settings while frames flow (target: trained < 3 s).
    pub new_label: NewLabelFigures,
    /// Bulk teaching with default settings against ingest alone (target ratio <= 1.3).
    pub bulk: Option<BulkFigures>,
    pub peak_rss_mb: Option<f64>,
}

/// The rows of `set` held back from the seeded store, spread over the whole set (and so over
/// every class): taught through the learner instead.
fn held_back(set: &RealSet) -> Vec<usize> {
    let step = (set.len() / HELD_BACK).max(1);
    (0..set.len()).step_by(step).take(HELD_BACK).collect()
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
    say(format!(
        "seeding the store with {} real samples ({} classes)...",
        set.len() - held.len(),
        set.classes.len()
    ));
    let seeded = seed_store(
        &state.0,
        &set,
        (0..set.len()).filter(|i| held.binary_search(i).is_err()),
        &fingerprint.to_string(),
    )?;

    let head: Arc<HeadCell> = Arc::new(ArcSwapOption::empty());
    let learning = LearningConfig {
        retrain_after: 0,
        ..LearningConfig::default()
    };
    let mut driver = Driver::start(
        &state.0,
        backbone.clone(),
        head.clone(),
        learning,
        args.model.resize_mode(),
    )?;
    let mut teach = held.iter().copied();
    let teach_one = |driver: &mut Driver, i: usize| -> anyhow::Result<Duration> {
        let started = Instant::now();
        driver.teach(&set, i)?;
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
    let (pipeline, drain) = start_replay(args, &images, backbone.clone(), head, 0.0)?;
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

    // The field targets: default settings, frames flowing at FRAME_FPS beside the teaching.
    let frames = |head: Arc<HeadCell>| -> anyhow::Result<Box<dyn FnOnce()>> {
        let (pipeline, drain) = start_replay(args, &images, backbone.clone(), head, FRAME_FPS)?;
        Ok(Box::new(move || {
            pipeline.stop();
            let _ = drain.join();
        }))
    };
    // The class with the most photos, so that its 10 taught ones leave a real class out.
    let new_class = (0..set.classes.len())
        .max_by_key(|&c| set.labels.iter().filter(|&&l| l == c).count())
        .unwrap_or(0);
    say(format!(
        "new label {:?}: {} photos taught one by one, default settings, frames at {FRAME_FPS} fps...",
        set.classes[new_class],
        super::teaching::NEW_LABEL_SAMPLES
    ));
    let new_label = super::teaching::new_label(
        &set,
        new_class,
        backbone.clone(),
        args.model.resize_mode(),
        &fingerprint.to_string(),
        &frames,
    )?;
    let bulk = if args.bulk > 0 {
        Some(super::teaching::bulk(
            &set,
            args.bulk,
            backbone.clone(),
            args.model.resize_mode(),
            &frames,
            &say,
        )?)
    } else {
        None
    };

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
        new_label,
        bulk,
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
    for s in [
        &t.cold,
        &t.warm_more_samples,
        &t.warm_new_class,
        &t.cold_new_class,
    ] {
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
    let n = &r.new_label;
    println!(
        "new label {:?} ({} photos taught one by one into {} samples / {} classes, frames at {FRAME_FPS} fps, default settings):",
        n.label,
        super::teaching::NEW_LABEL_SAMPLES,
        n.store_samples,
        n.store_classes
    );
    if let Some(ms) = n.imprinted_after_ms {
        println!(
            "  served (imprinted) {ms:.0} ms after its {}th accepted sample",
            n.imprint_after
        );
    }
    println!(
        "  served by a trained, gated head {:.0} ms after its 10th accepted sample (target < 3000 ms); 10 acks took {:.0} ms",
        n.trained_after_10th_ms, n.teaching_ms
    );
    if let Some(b) = &r.bulk {
        println!(
            "bulk teaching {} photos ({} classes), frames at {FRAME_FPS} fps: ingest alone {:.1} s; default settings {:.1} s to the last ack, {:.1} s until the head in use knew every sample ({} automatic retrains) = {:.2}x ingest alone (target <= 1.3x)",
            b.samples,
            b.classes,
            b.ingest_alone_s,
            b.default_acked_s,
            b.default_settled_s,
            b.automatic_retrains,
            b.ratio
        );
    }
    if let Some(rss) = r.peak_rss_mb {
        println!("peak RSS {rss:.1} MB");
    }
}
