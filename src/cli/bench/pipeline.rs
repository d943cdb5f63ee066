//! `glimpse bench --pipeline`: the daemon's real frame pipeline (capture, decode, backbone
//! threads and their newest-wins hand-offs) fed by an unpaced, looping `dir:` replay of
//! synthetic 640x480 JPEGs, with no MQTT (predictions are drained and counted). It answers "how
//! close does the pipeline come to the backbone's own speed?": sustained predictions per second
//! against 1 / the backbone's median latency measured alone in the same run, with the same
//! threads. Decoding overlaps inference, so the ratio should be near 1 when decode + preprocess
//! take less than the backbone; a ratio well below 1 means the stages fight for cores.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use arc_swap::ArcSwapOption;
use serde::Serialize;
use tokio::sync::mpsc;

use super::{emit, peak_rss_mb, BenchArgs, StageStats};
use crate::daemon::pipeline::{HeadCell, Pipeline, PipelineSettings};
use crate::source::SourceConfig;
use crate::vision::backbone::Backbone;
use crate::vision::preprocess::{decode_image, synthetic_jpeg, DecodeLimits, Preprocessor};

/// Frames the pipeline may run before the measured window starts (model warm-up, page cache).
const WARMUP: Duration = Duration::from_secs(1);
/// Backbone runs timed alone, after 3 warm-up runs.
const ALONE_RUNS: usize = 20;

#[derive(Debug, Serialize)]
pub struct PipelineReport {
    pub model: String,
    pub images: usize,
    pub width: u32,
    pub height: u32,
    pub threads: usize,
    pub seconds: f64,
    /// Frames the source delivered / predictions made during the measured window.
    pub frames_in: u64,
    pub predictions: u64,
    pub predictions_per_s: f64,
    /// The backbone alone, same threads, same run.
    pub backbone_alone: StageStats,
    /// 1 / backbone_alone.median: what a perfect pipeline would sustain.
    pub backbone_bound_per_s: f64,
    /// predictions_per_s / backbone_bound_per_s.
    pub efficiency: f64,
    /// Stage medians inside the pipeline (cores shared with the other stages), ms.
    pub in_pipeline_ms: std::collections::BTreeMap<String, f32>,
    pub frames_dropped: u64,
    pub frames_skipped: u64,
    pub events_dropped: u64,
    pub decode_errors: u64,
    pub peak_rss_mb: Option<f64>,
}

/// A temporary folder of synthetic JPEGs (or an empty one, `count` 0, e.g. a state directory),
/// removed on drop (the library has no tempfile crate).
pub(super) struct ScratchDir(pub(super) PathBuf);

impl ScratchDir {
    pub(super) fn create(count: usize, width: u32, height: u32) -> anyhow::Result<ScratchDir> {
        static CREATED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let nth = CREATED.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "glimpse-bench-{}-{nanos}-{nth}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let dir = ScratchDir(path);
        // Different qualities give different files: the decoder cannot coast on one image.
        for i in 0..count {
            let quality = 70 + (i * 5 % 30) as u8;
            let file = dir.0.join(format!("frame{i:03}.jpg"));
            std::fs::write(&file, synthetic_jpeg(width, height, quality)?)
                .with_context(|| format!("cannot write {}", file.display()))?;
        }
        Ok(dir)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Times the backbone alone on one preprocessed synthetic frame.
pub(super) fn backbone_alone(
    backbone: &Backbone,
    args: &BenchArgs,
    jpeg: &[u8],
) -> anyhow::Result<StageStats> {
    let image = decode_image(jpeg, &DecodeLimits::default())?;
    let mut input = Vec::new();
    Preprocessor::new(backbone.input_spec(), args.model.resize_mode()).run(&image, &mut input)?;
    let mut times = Vec::with_capacity(ALONE_RUNS);
    for run in 0..ALONE_RUNS + 3 {
        let started = Instant::now();
        std::hint::black_box(backbone.run(&input)?);
        if run >= 3 {
            times.push(started.elapsed());
        }
    }
    Ok(StageStats::from_durations(&times))
}

/// The daemon's pipeline on a looping replay of `images` at `fps` (0 = unpaced), its events
/// drained (counted by the pipeline itself) as a healthy publisher would. Stop the pipeline, then
/// join the drain.
pub(super) fn start_replay(
    args: &BenchArgs,
    images: &ScratchDir,
    backbone: Arc<Backbone>,
    head: Arc<HeadCell>,
    fps: f32,
) -> anyhow::Result<(Pipeline, std::thread::JoinHandle<()>)> {
    let source = crate::source::open(&SourceConfig {
        uri: format!("dir:{}", images.0.display()),
        replay_fps: fps,
        replay_loop: true,
        ..SourceConfig::default()
    })?;
    let settings = PipelineSettings {
        resize: args.model.resize_mode(),
        limits: DecodeLimits::default(),
        skip_unchanged_below: 0.0,
        top_k: 3,
        // As the daemon: every frame also gets the thumbnail the teaching ring keeps.
        thumbnail_px: crate::config::LearningConfig::default().thumbnail_px,
    };
    // Capacity 16 as in the daemon.
    let (events_tx, mut events) = mpsc::channel(16);
    // A benchmark has no supervisor to restart it: a panicking stage shows in its own output.
    let (deaths, _) = mpsc::unbounded_channel();
    let pipeline = Pipeline::start(source, backbone, head, settings, events_tx, deaths)
        .context("cannot start the pipeline threads")?;
    let drain = std::thread::spawn(move || while events.blocking_recv().is_some() {});
    Ok((pipeline, drain))
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let (width, height) = (640, 480);
    let threads = args.pipeline_threads.max(1);
    let model = crate::cli::common::ModelArgs {
        threads,
        ..args.model.clone()
    };
    let backbone = model.load_backbone()?;
    let images = ScratchDir::create(args.pipeline_images.max(1), width, height)?;
    let alone = backbone_alone(&backbone, args, &synthetic_jpeg(width, height, 85)?)?;

    let (pipeline, drain) = start_replay(
        args,
        &images,
        backbone.clone(),
        Arc::new(ArcSwapOption::empty()),
        0.0,
    )?;

    if !args.json {
        eprintln!(
            "pipeline: {} synthetic {width}x{height} JPEGs, {threads} backbone threads, {:.0} s...",
            args.pipeline_images, args.seconds
        );
    }
    std::thread::sleep(WARMUP);
    let stats = pipeline.stats.clone();
    let counters = |stats: &crate::daemon::pipeline::PipelineStats| {
        (
            stats.frames_in.load(Ordering::Relaxed),
            stats.frames_out.load(Ordering::Relaxed),
        )
    };
    let (in0, out0) = counters(&stats);
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(args.seconds.max(0.5)));
    let (in1, out1) = counters(&stats);
    let seconds = started.elapsed().as_secs_f64();
    pipeline.stop();
    let _ = drain.join();

    let mut in_pipeline = std::collections::BTreeMap::new();
    {
        let windows = stats.stages.lock().unwrap_or_else(|p| p.into_inner());
        for (name, window) in [
            ("decode", &windows.decode),
            ("preprocess", &windows.preprocess),
            ("backbone", &windows.backbone),
            ("end_to_end", &windows.end_to_end),
        ] {
            if let Some((median, _)) = window.median_p95_ms() {
                in_pipeline.insert(name.to_string(), median);
            }
        }
    }
    let predictions = out1 - out0;
    let predictions_per_s = predictions as f64 / seconds;
    let bound = 1e3 / alone.median_ms.max(1e-9);
    let report = PipelineReport {
        model: args.model.model.display().to_string(),
        images: args.pipeline_images,
        width,
        height,
        threads,
        seconds,
        frames_in: in1 - in0,
        predictions,
        predictions_per_s,
        backbone_alone: alone,
        backbone_bound_per_s: bound,
        efficiency: predictions_per_s / bound,
        in_pipeline_ms: in_pipeline,
        frames_dropped: stats.frames_dropped(),
        frames_skipped: stats.frames_skipped.load(Ordering::Relaxed),
        events_dropped: stats.events_dropped.load(Ordering::Relaxed),
        decode_errors: stats.decode_errors.load(Ordering::Relaxed),
        peak_rss_mb: peak_rss_mb(),
    };
    emit(args, &report, print_report)
}

fn print_report(r: &PipelineReport) {
    println!(
        "model {}  {} synthetic {}x{} JPEGs, unpaced looping replay, {} threads, {:.1} s",
        r.model, r.images, r.width, r.height, r.threads, r.seconds
    );
    println!(
        "sustained {:.2} predictions/s ({} frames in, {} predictions)",
        r.predictions_per_s, r.frames_in, r.predictions
    );
    println!(
        "backbone alone {:.2} ms median ({:.2} p95) -> bound {:.2}/s; pipeline efficiency {:.0}%",
        r.backbone_alone.median_ms,
        r.backbone_alone.p95_ms,
        r.backbone_bound_per_s,
        r.efficiency * 100.0
    );
    let stages: Vec<String> = r
        .in_pipeline_ms
        .iter()
        .map(|(k, v)| format!("{k} {v:.2}"))
        .collect();
    println!("in-pipeline medians (ms): {}", stages.join(", "));
    println!(
        "frames dropped {}, skipped {}, events dropped {}, decode errors {}",
        r.frames_dropped, r.frames_skipped, r.events_dropped, r.decode_errors
    );
    if let Some(rss) = r.peak_rss_mb {
        println!("peak RSS {rss:.1} MB");
    }
}
