//! Real embeddings for the learning benchmarks: the class-per-folder photo sets given with
//! `--dataset` (default ../shared/datasets/rps_full and sign_digits_full: 4,250 photos, 13
//! classes) through the backbone, read from and written to the embedding cache, so only the
//! first run pays for the backbone. Synthetic embeddings converge in a tenth of the iterations
//! real ones need and flattered every training figure: learning is measured on these.

use std::path::PathBuf;

use anyhow::{bail, Context};
use indicatif::ProgressBar;

use crate::cli::train::embed_dataset;
use crate::learn::cache::{default_root, namespace_for, EmbeddingCache};
use crate::learn::dataset::scan_class_folders;
use crate::vision::backbone::Backbone;
use crate::vision::embedder::Embedder;
use crate::vision::preprocess::DecodeLimits;
use crate::vision::spec::ResizeMode;

/// The photo sets used when `--dataset` is not given (relative to the repository root).
pub const DEFAULT_DATASETS: [&str; 2] = [
    "../shared/datasets/rps_full",
    "../shared/datasets/sign_digits_full",
];

/// Labeled real embeddings of one or more photo sets, merged (class names must not repeat).
pub struct RealSet {
    pub features: Vec<f32>,
    pub labels: Vec<usize>,
    pub classes: Vec<String>,
    /// Content hash of each row's image: the id the device would give the sample.
    pub hashes: Vec<String>,
    /// The image file of each row (for ingest through the real learner).
    pub files: Vec<PathBuf>,
    pub dim: usize,
}

impl RealSet {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.features[i * self.dim..(i + 1) * self.dim]
    }
}

/// Embeds every set in `dirs` (cache under `cache_root`, default ~/.cache/glimpse/embeddings).
pub fn load(
    dirs: &[PathBuf],
    backbone: &std::sync::Arc<Backbone>,
    mode: ResizeMode,
    cache_root: Option<PathBuf>,
    say: &dyn Fn(String),
) -> anyhow::Result<RealSet> {
    let root = cache_root.unwrap_or_else(default_root);
    let namespace = namespace_for(backbone.fingerprint(), backbone.input_spec(), mode);
    let cache = EmbeddingCache::open(&root, &namespace, backbone.embedding_dim())?;
    let mut embedder = Embedder::new(backbone.clone(), mode, DecodeLimits::default());
    let mut set = RealSet {
        features: Vec::new(),
        labels: Vec::new(),
        classes: Vec::new(),
        hashes: Vec::new(),
        files: Vec::new(),
        dim: backbone.embedding_dim(),
    };
    for dir in dirs {
        let dataset =
            scan_class_folders(dir).with_context(|| format!("--dataset {}", dir.display()))?;
        say(format!(
            "embedding {} ({} photos; cached ones are read from {})...",
            dir.display(),
            dataset.items.len(),
            root.display()
        ));
        let embedded = embed_dataset(
            &dataset,
            &mut embedder,
            Some(&cache),
            &ProgressBar::hidden(),
        );
        if let Some((path, reason)) = embedded.failed.first() {
            bail!("{}: {reason}", path.display());
        }
        let offset = set.classes.len();
        for class in &dataset.classes {
            if set.classes.contains(class) {
                bail!("class {class:?} appears in two --dataset folders");
            }
            set.classes.push(class.clone());
        }
        set.features.extend_from_slice(&embedded.features);
        set.labels
            .extend(embedded.labels.iter().map(|&l| l + offset));
        set.hashes.extend(embedded.hashes);
        // embed_dataset keeps the dataset's order and skips only failures (refused above).
        set.files
            .extend(dataset.items.iter().map(|item| item.path.clone()));
    }
    if set.classes.len() < 2 {
        bail!("the learning benchmark needs at least 2 classes");
    }
    Ok(set)
}
