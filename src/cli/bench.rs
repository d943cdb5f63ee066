//! `glimpse bench`: how fast each stage is on this machine. Per-stage medians and p95 (decode,
//! resize + normalize, backbone, head) over N runs of one 640x480 JPEG, images per second, peak
//! RSS, for each requested thread count, plus the time to train a head on 3,000 x 1280
//! embeddings. Quote medians; compare ratios within one run (shared machines are noisy).
//! `--pipeline` measures the daemon's whole frame pipeline instead (see `pipeline.rs`), and
//! `--learning` what teaching costs: ingest, retraining, frames during training (`learning.rs`),
//! `--flood` the daemon's MQTT edge under a flood of max-size samples (`flood.rs`), and
//! `--engines` the backbone on tract and onnxruntime side by side (`engines.rs`).

mod engines;
mod flood;
mod learning;
mod pipeline;
mod real;
mod retrain;
mod teaching;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::common::ModelArgs;
use crate::learn::head::Head;
use crate::learn::train::{train, Dataset, TrainConfig};
use crate::vision::backbone::set_threads;
use crate::vision::embedder::Embedder;
use crate::vision::preprocess::{decode_image, synthetic_jpeg, DecodeLimits, Preprocessor};

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Timed runs per stage and thread count (after 3 warm-up runs).
    #[arg(long, default_value_t = 30)]
    pub runs: usize,
    /// Thread counts to measure the backbone with, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub thread_counts: Vec<usize>,
    /// Image to use (default: a synthetic 640x480 JPEG).
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Embeddings to train the benchmark head on (synthetic, 10 overlapping classes: they
    /// converge ~10x faster than real ones; --learning measures training on real photos).
    #[arg(long, default_value_t = 3000)]
    pub train_samples: usize,
    /// Compare engines side by side: backbone median and p95 at 1, 2 and all threads, one row
    /// per engine spec `engine[/device[/precision]][+nhwc]`, e.g.
    /// `tract,tract+nhwc,onnxruntime,onnxruntime/tensorrt/fp16` (--onnxruntime-library applies
    /// to every onnxruntime spec). A spec this machine cannot run is listed with the reason.
    #[arg(long, value_delimiter = ',', conflicts_with_all = ["pipeline", "learning", "flood", "device", "precision", "tract_nhwc"])]
    pub engines: Vec<String>,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
    /// Run the daemon's real frame pipeline (threads, hand-offs) on an unpaced looping replay of
    /// synthetic 640x480 JPEGs, without MQTT, and report sustained predictions/s against the
    /// backbone's own speed, frames dropped and peak RSS.
    #[arg(long)]
    pub pipeline: bool,
    /// Measure teaching through the daemon's learner thread: ingest of a 640x480 JPEG sample
    /// against one inference, retraining on --train-samples stored samples, and pipeline frames/s
    /// while heads train against frames/s without (uses --seconds, --pipeline-threads).
    #[arg(long, conflicts_with = "pipeline")]
    pub learning: bool,
    /// --pipeline / --learning: seconds measured per window (after 1 s of warm-up).
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// --pipeline / --learning: backbone threads.
    #[arg(long, default_value_t = 2)]
    pub pipeline_threads: usize,
    /// --learning: class-per-folder photo sets whose real embeddings the retrains train on
    /// (repeatable; default ../shared/datasets/rps_full and ../shared/datasets/sign_digits_full).
    #[arg(long = "dataset")]
    pub datasets: Vec<PathBuf>,
    /// --learning: embedding cache folder (default: ~/.cache/glimpse/embeddings).
    #[arg(long, env = "GLIMPSE_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// --learning: timed runs of each retrain scenario.
    #[arg(long, default_value_t = 5)]
    pub retrain_runs: usize,
    /// --learning: photos taught in the bulk-teaching scenario, twice (retraining off, then
    /// default settings); 0 skips it.
    #[arg(long, default_value_t = 4000)]
    pub bulk: usize,
    /// --pipeline: synthetic JPEGs in the replayed folder.
    #[arg(long, default_value_t = 8)]
    pub pipeline_images: usize,
    /// Flood a real `glimpse run` over MQTT with max-size QoS 1 samples from --flood-clients
    /// clients for --seconds (plus one oversized message per client per second) and report
    /// acks/s, unacked samples and the daemon's peak RSS against its stated ceiling.
    #[arg(long, conflicts_with_all = ["pipeline", "learning"])]
    pub flood: bool,
    /// --flood: publishing clients.
    #[arg(long, default_value_t = 4)]
    pub flood_clients: usize,
    /// --flood: the daemon's mqtt.max_packet_bytes (samples are just under it).
    #[arg(long, default_value_t = 8 * 1024 * 1024)]
    pub flood_max_packet_bytes: usize,
    /// --flood: an existing broker (default: Mosquitto started on a free loopback port).
    #[arg(long)]
    pub flood_url: Option<String>,
}

/// Median and 95th percentile of one stage, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StageStats {
    pub median_ms: f64,
    pub p95_ms: f64,
}

impl StageStats {
    pub fn from_durations(samples: &[Duration]) -> Self {
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let pick = |q: f64| {
            if ms.is_empty() {
                return 0.0;
            }
            let rank = ((ms.len() - 1) as f64 * q).round() as usize;
            ms[rank.min(ms.len() - 1)]
        };
        Self {
            median_ms: pick(0.5),
            p95_ms: pick(0.95),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ThreadResult {
    pub threads: usize,
    pub decode: StageStats,
    pub preprocess: StageStats,
    pub backbone: StageStats,
    pub head: StageStats,
    pub total: StageStats,
    pub images_per_s: f64,
    /// Decode + resize + normalize as a fraction of the backbone (medians).
    pub preprocess_share_of_backbone: f64,
}

#[derive(Debug, Serialize)]
pub struct TrainResult {
    pub samples: usize,
    pub dim: usize,
    pub classes: usize,
    pub median_ms: f64,
    pub iterations: usize,
    pub validation_accuracy: Option<f32>,
}

#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub image: String,
    pub runs: usize,
    pub results: Vec<ThreadResult>,
    pub train: TrainResult,
    pub peak_rss_mb: Option<f64>,
}

/// Overlapping Gaussian clusters of non-negative, embedding-like vectors: hard enough that the
/// optimizer has real work to do (not linearly separable), like real embeddings of similar classes.
fn synthetic_embeddings(n: usize, dim: usize, classes: usize, seed: u64) -> (Vec<f32>, Vec<usize>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let centers: Vec<Vec<f32>> = (0..classes)
        .map(|_| (0..dim).map(|_| rng.gen_range(0.0..1.0f32)).collect())
        .collect();
    let mut features = Vec::with_capacity(n * dim);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let label = i % classes;
        for &c in &centers[label] {
            let noise: f32 = rng.gen_range(-1.2..1.2);
            features.push((c + noise).max(0.0));
        }
        labels.push(label);
    }
    (features, labels)
}

fn bench_training(samples: usize, dim: usize) -> anyhow::Result<(TrainResult, Head)> {
    let classes: Vec<String> = (0..10).map(|i| format!("class{i}")).collect();
    let (features, labels) = synthetic_embeddings(samples, dim, classes.len(), 7);
    let data = Dataset {
        features: &features,
        dim,
        labels: &labels,
        classes: &classes,
    };
    let fingerprint = crate::vision::spec::Fingerprint {
        engine: crate::vision::spec::DEFAULT_ENGINE.into(),
        model_sha256: "bench".into(),
        embedding_tensor: "synthetic".into(),
        dim,
    };
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..3 {
        let started = Instant::now();
        let head = train(&data, &fingerprint, &TrainConfig::default(), &mut |_| {})?;
        times.push(started.elapsed());
        last = Some(head);
    }
    let head = last.context("no training run")?;
    let report = head.report();
    let result = TrainResult {
        samples,
        dim,
        classes: classes.len(),
        median_ms: StageStats::from_durations(&times).median_ms,
        iterations: report.iterations,
        validation_accuracy: report.validation.as_ref().map(|v| v.accuracy),
    };
    Ok((result, head))
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    if args.pipeline {
        return pipeline::run(args);
    }
    if args.learning {
        return learning::run(args);
    }
    if args.flood {
        return flood::run(args);
    }
    if !args.engines.is_empty() {
        return engines::run(args, &args.engines);
    }
    let backbone = args.model.load_backbone()?;
    let (bytes, image_name) = match &args.image {
        Some(path) => (
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?,
            path.display().to_string(),
        ),
        None => (
            synthetic_jpeg(640, 480, 85)?,
            "synthetic 640x480 JPEG".to_string(),
        ),
    };
    let limits = DecodeLimits::default();
    let dim = backbone.embedding_dim();
    if !args.json {
        eprintln!(
            "training the benchmark head ({} x {dim})...",
            args.train_samples
        );
    }
    let (train_result, _) = bench_training(args.train_samples, dim)?;
    // The head used for the head stage has the real backbone's fingerprint and dimension.
    let (_, head) = bench_training(300, dim)?;

    let mut results = Vec::new();
    for &threads in &args.thread_counts {
        set_threads(threads.max(1));
        let mut preprocessor = Preprocessor::new(backbone.input_spec(), args.model.resize_mode());
        let mut embedder = Embedder::new(backbone.clone(), args.model.resize_mode(), limits);
        let mut input = Vec::new();
        let (mut decode, mut preprocess, mut infer, mut head_times, mut total) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for run in 0..args.runs + 3 {
            let t0 = Instant::now();
            let image = decode_image(&bytes, &limits)?;
            let t1 = Instant::now();
            preprocessor.run(&image, &mut input)?;
            let t2 = Instant::now();
            let output = backbone.run(&input)?;
            let t3 = Instant::now();
            let probs = head.predict(&output.embedding)?;
            let t4 = Instant::now();
            std::hint::black_box(probs);
            if run >= 3 {
                decode.push(t1 - t0);
                preprocess.push(t2 - t1);
                infer.push(t3 - t2);
                head_times.push(t4 - t3);
                total.push(t4 - t0);
            }
        }
        // The Embedder path is what the daemon uses; run it once so a regression there shows.
        embedder.embed_bytes(&bytes)?;
        let decode = StageStats::from_durations(&decode);
        let preprocess = StageStats::from_durations(&preprocess);
        let backbone_stats = StageStats::from_durations(&infer);
        let total = StageStats::from_durations(&total);
        results.push(ThreadResult {
            threads,
            decode,
            preprocess,
            backbone: backbone_stats,
            head: StageStats::from_durations(&head_times),
            total,
            images_per_s: 1e3 / total.median_ms.max(1e-9),
            preprocess_share_of_backbone: (decode.median_ms + preprocess.median_ms)
                / backbone_stats.median_ms.max(1e-9),
        });
    }
    let report = BenchReport {
        model: args.model.model.display().to_string(),
        image: image_name,
        runs: args.runs,
        results,
        train: train_result,
        peak_rss_mb: peak_rss_mb(),
    };
    emit(args, &report, print_table)
}

/// Peak resident memory of this process, in MiB (the figure every bench mode reports).
fn peak_rss_mb() -> Option<f64> {
    crate::procstat::peak_rss_bytes().map(|b| b as f64 / 1048576.0)
}

/// Prints a report as JSON (`--json`) or with its human-readable printer.
fn emit<T: Serialize>(args: &BenchArgs, report: &T, print: fn(&T)) -> anyhow::Result<()> {
    if args.json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print(report);
    }
    Ok(())
}

fn print_table(report: &BenchReport) {
    println!(
        "model {}  image {}  runs {}",
        report.model, report.image, report.runs
    );
    println!(
        "{:>7} {:>14} {:>14} {:>14} {:>14} {:>14} {:>9} {:>9}",
        "threads",
        "decode ms",
        "resize+norm ms",
        "backbone ms",
        "head ms",
        "total ms",
        "images/s",
        "pre/bb"
    );
    let cell = |s: &StageStats| format!("{:.2} ({:.2})", s.median_ms, s.p95_ms);
    for r in &report.results {
        println!(
            "{:>7} {:>14} {:>14} {:>14} {:>14} {:>14} {:>9.1} {:>8.1}%",
            r.threads,
            cell(&r.decode),
            cell(&r.preprocess),
            cell(&r.backbone),
            cell(&r.head),
            cell(&r.total),
            r.images_per_s,
            r.preprocess_share_of_backbone * 100.0
        );
    }
    println!("(median, p95 in parentheses)");
    let t = &report.train;
    println!(
        "train head: {} x {} embeddings, {} classes: {:.1} ms median of 3 ({} iterations, validation accuracy {})",
        t.samples,
        t.dim,
        t.classes,
        t.median_ms,
        t.iterations,
        t.validation_accuracy
            .map(|a| format!("{a:.3}"))
            .unwrap_or_else(|| "-".into())
    );
    if let Some(rss) = report.peak_rss_mb {
        println!("peak RSS {rss:.1} MB");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_stats_median_and_p95() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let stats = StageStats::from_durations(&samples);
        assert!((stats.median_ms - 51.0).abs() < 1.0, "{stats:?}");
        assert!((stats.p95_ms - 95.0).abs() < 1.0, "{stats:?}");
        let empty = StageStats::from_durations(&[]);
        assert_eq!(empty.median_ms, 0.0);
    }

    #[test]
    fn synthetic_embeddings_are_deterministic_and_labelled_round_robin() {
        let (a, la) = synthetic_embeddings(20, 8, 4, 1);
        let (b, lb) = synthetic_embeddings(20, 8, 4, 1);
        assert_eq!(a, b);
        assert_eq!(la, lb);
        assert_eq!(la[..5], [0, 1, 2, 3, 0]);
        assert!(a.iter().all(|v| *v >= 0.0));
    }
}
