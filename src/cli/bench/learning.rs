//! `glimpse bench --learning`: what teaching costs, through the daemon's real learner thread
//! (validation, decode, embed, thumbnail, SQLite commit with synchronous=FULL, ack) and its real
//! retraining (read every sample, train the gate's head, gate, refit on all, write the version
//! files, swap, report), without MQTT. Three figures, each against a reference from the same run:
//!
//! - ingest of one 640x480 JPEG sample, submit to ack, against one backbone inference alone;
//! - retraining on `--train-samples` (3,000) stored samples, command to ack;
//! - frame throughput of the real pipeline while heads train back to back, against the same
//!   pipeline without training (measured just before).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use arc_swap::ArcSwapOption;
use serde::Serialize;
use tokio::sync::mpsc;

use super::pipeline::{backbone_alone, start_replay, ScratchDir};
use super::{emit, peak_rss_mb, synthetic_embeddings, BenchArgs, StageStats};
use crate::config::LearningConfig;
use crate::daemon::learner::{Learner, LearnerSettings, Outbound};
use crate::daemon::pipeline::{HeadCell, PipelineStats};
use crate::daemon::recent::RecentFrames;
use crate::learn::cache::content_hash;
use crate::mqtt::link::Received;
use crate::mqtt::messages::learning::{Ack, AckStatus};
use crate::mqtt::topics::{Incoming, Outgoing};
use crate::store::{NewSample, Store};
use crate::vision::preprocess::synthetic_jpeg;

/// Ingests timed (after 2 warm-up ones).
const INGEST_RUNS: usize = 20;
/// Retrains timed on an idle machine.
const RETRAIN_RUNS: usize = 3;
/// Classes of the seeded samples.
const SEED_CLASSES: usize = 10;

#[derive(Debug, Serialize)]
pub struct LearningReport {
    pub model: String,
    pub threads: usize,
    /// One backbone inference of a preprocessed 640x480 frame, alone.
    pub backbone_alone: StageStats,
    /// Submit of a 640x480 JPEG sample to its `accepted` ack.
    pub ingest: StageStats,
    /// ingest median / backbone median (target < 1.5).
    pub ingest_over_backbone: f64,
    /// Stored samples the retrains trained on.
    pub retrain_samples: usize,
    /// `retrain` command to its ack, idle machine.
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

/// The learner thread with its ack channel, driven like the daemon's tokio loop drives it.
struct Driver {
    learner: Learner,
    out: mpsc::Receiver<Outbound>,
}

impl Driver {
    /// Submits one message and waits for its ack (reports published on the way are skipped).
    fn call(&mut self, topic: &str, incoming: Incoming, payload: Vec<u8>) -> anyhow::Result<Ack> {
        let received = Received {
            topic: topic.to_string(),
            incoming,
            payload,
        };
        if let Err(refused) = self.learner.submit(received) {
            bail!(
                "learner refused: {}",
                String::from_utf8_lossy(&refused.payload)
            );
        }
        loop {
            let message = self.out.blocking_recv().context("learner stopped")?;
            if message.kind == Outgoing::Ack {
                return serde_json::from_slice(&message.payload).context("unreadable ack");
            }
        }
    }

    fn retrain(&mut self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let ack = self.call(
            "bench/cmd/retrain",
            Incoming::Command {
                name: "retrain".into(),
            },
            br#"{"force":true}"#.to_vec(),
        )?;
        if ack.status != Some(AckStatus::Accepted) {
            bail!("retrain was not accepted: {:?}", ack.reason);
        }
        Ok(started.elapsed())
    }
}

/// Stores `n` synthetic samples of `SEED_CLASSES` classes, as a second connection (WAL).
fn seed_store(store: &mut Store, n: usize, fingerprint: &str, dim: usize) -> anyhow::Result<()> {
    let (features, labels) = synthetic_embeddings(n, dim, SEED_CLASSES, 11);
    for (i, (embedding, label)) in features.chunks(dim).zip(&labels).enumerate() {
        let hash = content_hash(format!("seed-{i}").as_bytes());
        store.insert_sample(&NewSample {
            id: &hash,
            label: &format!("class{label}"),
            embedding,
            source: "image",
            content_hash: &hash,
            thumbnail: None,
            fingerprint,
        })?;
    }
    Ok(())
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
    let jpeg = synthetic_jpeg(width, height, 85)?;
    let alone = backbone_alone(&backbone, args, &jpeg)?;
    let say = |text: String| {
        if !args.json {
            eprintln!("{text}");
        }
    };

    let state = ScratchDir::create(0, width, height)?;
    let mut seeding = Store::open_in(&state.0)?;
    say(format!(
        "seeding the store with {} samples ({SEED_CLASSES} classes)...",
        args.train_samples
    ));
    seed_store(
        &mut seeding,
        args.train_samples,
        &fingerprint.to_string(),
        fingerprint.dim,
    )?;
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
        Arc::new(Mutex::new(RecentFrames::new(0))),
        LearnerSettings {
            device: "bench".into(),
            learning: learning.clone(),
            state_dir: state.0.clone(),
            resize: args.model.resize_mode(),
            max_publish_bytes: 0,
        },
        out_tx,
    )
    .context("cannot start the learner thread")?;
    let mut driver = Driver { learner, out };

    say(format!("ingesting {INGEST_RUNS} 640x480 JPEG samples..."));
    let mut ingest = Vec::new();
    for i in 0..INGEST_RUNS + 2 {
        // Bytes after the JPEG's end marker make each sample distinct for the duplicate check.
        let mut sample = jpeg.clone();
        sample.extend_from_slice(format!("sample {i}").as_bytes());
        let started = Instant::now();
        let ack = driver.call(
            "bench/sample/taught",
            Incoming::SampleImage {
                label: "taught".into(),
            },
            sample,
        )?;
        if ack.status != Some(AckStatus::Accepted) {
            bail!("sample {i} not accepted: {:?}", ack.reason);
        }
        if i >= 2 {
            ingest.push(started.elapsed());
        }
    }
    let ingest = StageStats::from_durations(&ingest);
    let retrain_samples = args.train_samples + INGEST_RUNS + 2;

    say(format!("retraining on {retrain_samples} samples..."));
    let mut retrains = Vec::new();
    for _ in 0..RETRAIN_RUNS {
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
        backbone_alone: alone,
        ingest,
        ingest_over_backbone: ingest.median_ms / alone.median_ms.max(1e-9),
        retrain_samples,
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
        "ingest of a 640x480 JPEG sample (submit -> accepted ack): {:.2} ms median ({:.2} p95)",
        r.ingest.median_ms, r.ingest.p95_ms
    );
    println!(
        "  = {:.2}x one backbone inference ({:.2} ms median alone)",
        r.ingest_over_backbone, r.backbone_alone.median_ms
    );
    println!(
        "retrain on {} stored samples (command -> ack): {:.0} ms median ({:.0} p95)",
        r.retrain_samples, r.retrain.median_ms, r.retrain.p95_ms
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
