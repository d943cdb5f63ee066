//! `glimpse train DIR`: the classic transfer-learning job, offline. Scans a class-per-folder
//! dataset, embeds every image (with a progress bar, skipping images already in the embedding
//! cache), splits, trains the head to convergence, prints per-class precision / recall, the
//! confusion matrix and the validation accuracy, and writes the head file.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::common::{ConfigError, ModelArgs};
use crate::learn::cache::{content_hash, default_root, namespace_for, EmbeddingCache};
use crate::learn::dataset::{scan_class_folders, ImageDataset};
use crate::learn::train::{train, Dataset, HeadKind, TrainConfig};
use crate::vision::embedder::Embedder;
use crate::vision::preprocess::DecodeLimits;

#[derive(Args, Debug)]
pub struct TrainArgs {
    /// Dataset folder: one sub-folder of images per class.
    pub dir: PathBuf,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Where to write the head file.
    #[arg(short, long, default_value = "head.glh")]
    pub out: PathBuf,
    /// Fraction of each class held out for validation (0 = train on everything).
    #[arg(long, default_value_t = 0.2)]
    pub validation_split: f32,
    /// Seed of the split and of the training; the same seed gives the same head.
    #[arg(long, default_value_t = 123)]
    pub seed: u64,
    /// Add one hidden layer of this many ReLU units (default: a linear softmax head).
    #[arg(long)]
    pub hidden: Option<usize>,
    /// L2 regularization strength (default: chosen automatically).
    #[arg(long)]
    pub l2: Option<f32>,
    /// Do not weight classes by inverse frequency.
    #[arg(long)]
    pub no_balance: bool,
    /// Embedding cache folder (default: ~/.cache/glimpse/embeddings).
    #[arg(long, env = "GLIMPSE_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Do not read or write the embedding cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Print the training report as JSON instead of tables.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Embeddings of a dataset, row-major, with the labels of the rows that could be embedded.
pub struct EmbeddedDataset {
    pub features: Vec<f32>,
    pub labels: Vec<usize>,
    /// Content hash (sha256 of the file's bytes) of each embedded row: a sample's id.
    pub hashes: Vec<String>,
    pub dim: usize,
    pub from_cache: usize,
    /// Files that could not be read or decoded, with the reason.
    pub failed: Vec<(PathBuf, String)>,
}

/// Embeds every image of `dataset`, reading and filling `cache` when given.
pub fn embed_dataset(
    dataset: &ImageDataset,
    embedder: &mut Embedder,
    cache: Option<&EmbeddingCache>,
    progress: &ProgressBar,
) -> EmbeddedDataset {
    let dim = embedder.backbone().embedding_dim();
    let mut out = EmbeddedDataset {
        features: Vec::with_capacity(dataset.items.len() * dim),
        labels: Vec::with_capacity(dataset.items.len()),
        hashes: Vec::with_capacity(dataset.items.len()),
        dim,
        from_cache: 0,
        failed: Vec::new(),
    };
    for item in &dataset.items {
        progress.inc(1);
        let bytes = match crate::fsutil::read_capped(&item.path, embedder.limits().max_bytes) {
            Ok(bytes) => bytes,
            Err(err) => {
                out.failed.push((item.path.clone(), err.to_string()));
                continue;
            }
        };
        let key = content_hash(&bytes);
        if let Some(hit) = cache.and_then(|c| c.get(&key)) {
            out.features.extend_from_slice(&hit);
            out.labels.push(item.label);
            out.hashes.push(key);
            out.from_cache += 1;
            continue;
        }
        match embedder.embed_bytes(&bytes) {
            Ok((output, _)) => {
                if let Some(cache) = cache {
                    if let Err(err) = cache.put(&key, &output.embedding) {
                        log::warn!("{err}");
                    }
                }
                out.features.extend_from_slice(&output.embedding);
                out.labels.push(item.label);
                out.hashes.push(key);
            }
            Err(err) => out.failed.push((item.path.clone(), err.to_string())),
        }
    }
    progress.finish_and_clear();
    out
}

pub fn run(args: &TrainArgs) -> anyhow::Result<()> {
    if !(0.0..1.0).contains(&args.validation_split) {
        return Err(ConfigError(format!(
            "--validation-split must be in [0, 1), got {}",
            args.validation_split
        ))
        .into());
    }
    let dataset = scan_class_folders(&args.dir).map_err(|e| ConfigError(e.to_string()))?;
    let backbone = args.model.load_backbone()?;
    let mode = args.model.resize_mode();
    let cache = if args.no_cache {
        None
    } else {
        let root = args.cache_dir.clone().unwrap_or_else(default_root);
        let namespace = namespace_for(backbone.fingerprint(), backbone.input_spec(), mode);
        Some(EmbeddingCache::open(
            &root,
            &namespace,
            backbone.embedding_dim(),
        )?)
    };
    let mut embedder = Embedder::new(backbone.clone(), mode, DecodeLimits::default());

    let progress = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(dataset.items.len() as u64)
    };
    progress.set_style(
        ProgressStyle::with_template("embedding {bar:30} {pos}/{len} images, {per_sec}, eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let embed_started = Instant::now();
    let embedded = embed_dataset(&dataset, &mut embedder, cache.as_ref(), &progress);
    let embed_time = embed_started.elapsed();
    for (path, reason) in &embedded.failed {
        eprintln!("skipped {}: {reason}", path.display());
    }
    eprintln!(
        "embedded {} images ({} from cache, {} skipped) in {:.1} s",
        embedded.labels.len(),
        embedded.from_cache,
        embedded.failed.len(),
        embed_time.as_secs_f64()
    );

    let config = TrainConfig {
        kind: match args.hidden {
            Some(hidden) => HeadKind::Mlp { hidden },
            None => HeadKind::Linear,
        },
        l2: args.l2,
        validation_split: args.validation_split,
        seed: args.seed,
        balance_classes: !args.no_balance,
        ..TrainConfig::default()
    };
    let data = Dataset {
        features: &embedded.features,
        dim: embedded.dim,
        labels: &embedded.labels,
        classes: &dataset.classes,
    };
    let head =
        train(&data, backbone.fingerprint(), &config, &mut |_| {}).context("training the head")?;
    let report = head.report();
    if args.json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        if let Some(validation) = &report.validation {
            println!("{}", validation.render_table(&dataset.classes));
            println!(
                "validation accuracy {:.4} on {} images",
                validation.accuracy, report.val_count
            );
        }
        println!(
            "train accuracy {:.4} on {} images; trained in {} ms ({} iterations)",
            report.train_accuracy, report.train_count, report.duration_ms, report.iterations
        );
    }
    head.save(&args.out)
        .with_context(|| format!("writing head file {}", args.out.display()))?;
    eprintln!("head written to {}", args.out.display());
    Ok(())
}
