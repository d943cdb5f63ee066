//! `glimpse bench --engines tract,onnxruntime`: the backbone on each engine side by side, in
//! one run, at 1 and 2 threads and one per core, so the engines' ratio is measured on this
//! machine, not remembered. Specs also name devices, precisions and tract's tuning
//! (`onnxruntime/tensorrt/fp16`, `tract+nhwc`); one that cannot run here is reported, not fatal. Same model, same preprocessed input (a synthetic 640x480 JPEG, or
//! --image), same warm-up. RSS is read after each engine's backbones are loaded and run; the
//! process holds both engines by the end, so the last figure is the pair (`--pipeline --engine`
//! measures one engine's pipeline and peak RSS alone).

use std::time::Instant;

use anyhow::Context;
use serde::Serialize;

use super::{emit, BenchArgs, StageStats};
use crate::vision::backbone::{set_threads, Backbone, BackboneOptions};
use crate::vision::manifest::ModelManifest;
use crate::vision::preprocess::{decode_image, synthetic_jpeg, DecodeLimits, Preprocessor};

#[derive(Debug, Serialize)]
pub struct EngineRow {
    pub engine: String,
    pub provider: String,
    pub threads: usize,
    pub backbone: StageStats,
    /// Resident memory after this row (MiB).
    pub rss_mb: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct EnginesReport {
    pub model: String,
    pub runs: usize,
    pub rows: Vec<EngineRow>,
    /// Specs that could not load here, with the reason.
    pub skipped: Vec<SkippedEngine>,
    pub peak_rss_mb: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct SkippedEngine {
    pub engine: String,
    pub reason: String,
}

/// 1, 2 and one per core, without repeats.
fn thread_counts() -> Vec<usize> {
    let all = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut counts = vec![1, 2, all];
    counts.retain(|&t| t <= all.max(2));
    counts.dedup();
    counts
}

pub fn run(args: &BenchArgs, specs: &[String]) -> anyhow::Result<()> {
    let engines = specs
        .iter()
        .map(|spec| args.model.engine_options().with_spec(spec))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| super::super::common::ConfigError(format!("--engines: {e}")))?;
    let manifest = ModelManifest::load(&args.model.model)
        .map_err(|e| super::super::common::ConfigError(e.to_string()))?;
    let bytes = match &args.image {
        Some(path) => {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
        }
        None => synthetic_jpeg(640, 480, 85)?,
    };
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    let mut input = Vec::new();
    'engines: for engine in engines {
        for threads in thread_counts() {
            set_threads(threads);
            let options = BackboneOptions {
                threads,
                engine: engine.clone(),
            };
            let backbone = match Backbone::load(&manifest, &options) {
                Ok(backbone) => backbone,
                Err(e) => {
                    skipped.push(SkippedEngine {
                        engine: engine.label(),
                        reason: e.to_string(),
                    });
                    continue 'engines;
                }
            };
            let image = decode_image(&bytes, &DecodeLimits::default())?;
            Preprocessor::new(backbone.input_spec(), args.model.resize_mode())
                .run(&image, &mut input)?;
            let mut times = Vec::with_capacity(args.runs);
            for run in 0..args.runs + 3 {
                let t0 = Instant::now();
                std::hint::black_box(backbone.run(&input)?);
                if run >= 3 {
                    times.push(t0.elapsed());
                }
            }
            rows.push(EngineRow {
                engine: options.engine.label(),
                provider: backbone.provider().to_string(),
                threads,
                backbone: StageStats::from_durations(&times),
                rss_mb: crate::procstat::rss_bytes().map(|b| b as f64 / 1048576.0),
            });
        }
    }
    if rows.is_empty() {
        let reasons: Vec<String> = skipped
            .iter()
            .map(|s| format!("{}: {}", s.engine, s.reason))
            .collect();
        anyhow::bail!("no engine could run: {}", reasons.join("; "));
    }
    let report = EnginesReport {
        model: args.model.model.display().to_string(),
        runs: args.runs,
        rows,
        skipped,
        peak_rss_mb: super::peak_rss_mb(),
    };
    emit(args, &report, print)
}

fn print(report: &EnginesReport) {
    println!("model {}  runs {}", report.model, report.runs);
    println!(
        "{:<24} {:<22} {:>7} {:>12} {:>10} {:>8} {:>10}",
        "engine", "provider", "threads", "median ms", "p95 ms", "vs first", "rss MiB"
    );
    for row in &report.rows {
        // Ratio to the first engine's row with the same thread count.
        let base = report
            .rows
            .iter()
            .find(|r| r.threads == row.threads)
            .map_or(f64::NAN, |r| r.backbone.median_ms);
        println!(
            "{:<24} {:<22} {:>7} {:>12.2} {:>10.2} {:>7.2}x {:>10}",
            row.engine,
            row.provider,
            row.threads,
            row.backbone.median_ms,
            row.backbone.p95_ms,
            row.backbone.median_ms / base,
            row.rss_mb.map_or("-".into(), |m| format!("{m:.0}"))
        );
    }
    for skipped in &report.skipped {
        println!("{:<24} not measured: {}", skipped.engine, skipped.reason);
    }
    if let Some(peak) = report.peak_rss_mb {
        println!("peak RSS {peak:.0} MiB (every engine loaded)");
    }
}
