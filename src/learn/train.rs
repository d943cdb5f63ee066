//! The trainer: input validation, the stratified train/validation split, input normalization,
//! and the two head kinds (a linear softmax head fitted with L-BFGS, an optional one-hidden-layer
//! MLP fitted with Adam), ending in a [`Head`] that carries its own [`TrainReport`].
//!
//! Why this design (measured on the MobileNetV2 `features` of ../shared/datasets with the
//! `tune_head` example, 20 split seeds each):
//! - The backbone is frozen, so the linear head is a small convex problem: multinomial logistic
//!   regression with L2. Solved to convergence with full-batch L-BFGS it reaches the "logistic
//!   regression trained to convergence" accuracy in tens of milliseconds, where the Keras-tutorial
//!   recipe (Adam, 10 epochs) has not converged on small sets. Full batches and a zero start also
//!   make the head a deterministic function of the data and the seed.
//! - Inputs are centered and divided by ONE global scale (see [`normalization`]): that keeps the
//!   L2 strength meaningful across backbones without equalizing weak features, which per-feature
//!   standardization does and which cost 3 accuracy points on sign_digits.
//! - The loss is the weighted MEAN cross-entropy, so the L2 strength does not have to change with
//!   the number of samples; class weights `n / (k * n_c)` keep a class with few samples from being
//!   ignored (an operator rarely labels classes evenly in the field).
//! - Early stopping is off for the linear head by default: its target is the optimum of the
//!   regularized loss, and on sign_digits the validation LOSS starts rising after ~5 iterations
//!   while the validation ACCURACY keeps improving until convergence (a 20-iteration patience cost
//!   2 points at seed 123). It stays available (`patience`) as a guard for a user-chosen tiny L2.
//!   The MLP, which has no such optimum, uses it by default and restores the best epoch.
//! - The L2 strength is a fixed default rather than picked by k-fold cross-validation: the
//!   validation accuracy is flat from 0.001 to 0.01 on both sets, so CV would cost 5x the training
//!   time for noise.

mod linear;
mod mlp;
mod warm;

use std::time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::learn::head::{Head, Layer};
use crate::learn::metrics::{evaluate, Evaluation};
use crate::vision::spec::Fingerprint;

/// Default L2 strength on normalized inputs with the mean loss (see [`TrainConfig::l2`]).
///
/// Chosen with the `tune_head` example on both shared datasets over 20 split seeds: mean
/// validation accuracy 0.993 / 0.892 (rps / sign_digits) at 0.003, within 0.002 of that from
/// 0.001 to 0.01, falling off beyond 0.03 (under-fit) and below 0.0003 (slow convergence).
pub const DEFAULT_L2: f32 = 0.003;

/// Default early-stopping patience of the MLP head, in epochs.
pub const DEFAULT_MLP_PATIENCE: usize = 20;

/// Default L2 strength of the MLP head (on its two weight matrices).
pub const DEFAULT_MLP_L2: f32 = 1e-3;

/// Which function the head computes on the normalized embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum HeadKind {
    /// softmax(W z + b): multinomial logistic regression (the default).
    Linear,
    /// softmax(W2 relu(W1 z + b1) + b2) with `hidden` units.
    Mlp { hidden: usize },
}

/// Training settings. `Default` gives the settings the accuracy targets were measured with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub kind: HeadKind,
    /// L2 strength `lambda` of the penalty `lambda / 2 * |W|^2` added to the mean loss (biases are
    /// not penalized). `None` = [`DEFAULT_L2`] for the linear head, [`DEFAULT_MLP_L2`] for the MLP.
    pub l2: Option<f32>,
    /// Fraction of each class held out for validation, in `[0, 1)`. 0 = train on everything.
    pub validation_split: f32,
    /// Seeds the split and the MLP's initialization and batch order.
    pub seed: u64,
    /// Weight each sample by `n / (k * n_c)` so every class weighs the same in the loss.
    pub balance_classes: bool,
    /// L-BFGS iterations (linear) or epochs (MLP) at most.
    pub max_iterations: usize,
    /// Stop when the validation loss has not improved for this many iterations / epochs and
    /// restore the best parameters. `Some(0)` disables early stopping; `None` = the kind's
    /// default: off for the linear head (see the module docs), [`DEFAULT_MLP_PATIENCE`] epochs
    /// for the MLP.
    pub patience: Option<usize>,
    /// Linear head: converged when the largest gradient component is below this. `None` = the
    /// default, 5e-5 (see `train/linear.rs` for why); a smaller value is for reference fits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gradient_tolerance: Option<f32>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            kind: HeadKind::Linear,
            l2: None,
            validation_split: 0.2,
            seed: 123,
            balance_classes: true,
            max_iterations: 500,
            patience: None,
            gradient_tolerance: None,
        }
    }
}

impl TrainConfig {
    /// The L2 strength actually used for this config.
    pub fn effective_l2(&self) -> f32 {
        match (self.l2, self.kind) {
            (Some(l2), _) => l2,
            (None, HeadKind::Linear) => DEFAULT_L2,
            (None, HeadKind::Mlp { .. }) => DEFAULT_MLP_L2,
        }
    }

    /// The early-stopping patience actually used (0 = none).
    pub fn effective_patience(&self) -> usize {
        match (self.patience, self.kind) {
            (Some(p), _) => p,
            (None, HeadKind::Linear) => 0,
            (None, HeadKind::Mlp { .. }) => DEFAULT_MLP_PATIENCE,
        }
    }
}

/// Labeled embeddings, borrowed: `features` is row-major `labels.len() x dim`.
#[derive(Debug, Clone, Copy)]
pub struct Dataset<'a> {
    pub features: &'a [f32],
    pub dim: usize,
    pub labels: &'a [usize],
    pub classes: &'a [String],
}

impl Dataset<'_> {
    fn row(&self, i: usize) -> &[f32] {
        &self.features[i * self.dim..(i + 1) * self.dim]
    }
}

/// Reported after every optimizer iteration (linear) or epoch (MLP).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainProgress {
    pub iteration: usize,
    /// Training objective (weighted mean cross-entropy + L2 penalty).
    pub loss: f32,
    pub val_accuracy: Option<f32>,
}

/// Why the optimizer stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// Gradient (or, for the MLP, training loss) stopped changing.
    Converged,
    /// The validation loss stopped improving for `patience` iterations; best parameters restored.
    EarlyStopped,
    /// `max_iterations` reached.
    MaxIterations,
}

/// What a training run did and how well the result does. Stored in the head file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    pub classes: Vec<String>,
    /// Samples per class in the whole dataset (training + validation).
    pub samples_per_class: Vec<u32>,
    pub train_count: usize,
    pub val_count: usize,
    /// The head on the validation samples (`None` without a validation split).
    pub validation: Option<Evaluation>,
    pub train_accuracy: f32,
    pub iterations: usize,
    pub stop_reason: StopReason,
    /// Wall-clock training time. Written as 0 in head files so that identical trainings give
    /// identical files (see docs/head-format.md).
    #[serde(default)]
    pub duration_ms: u64,
    pub config: TrainConfig,
    pub l2_used: f32,
    pub seed: u64,
    /// The head was refit on every sample after its validation: `validation` then describes the
    /// same training without the `val_count` validation samples (an honest estimate), and
    /// `train_count` includes them.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub refit_on_all: bool,
}

/// Why training refused to start. Each message is one line naming what is wrong.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TrainError {
    #[error("need at least 2 classes to train a head, got {0}")]
    TooFewClasses(usize),
    #[error("class '{0}' has no samples")]
    EmptyClass(String),
    #[error("class '{0}' has no training samples (all of them are in the validation set)")]
    NoTrainingSamples(String),
    #[error(
        "embedding dimension mismatch: the backbone gives {expected}, the dataset has {found}"
    )]
    DimMismatch { expected: usize, found: usize },
    #[error("features hold {values} values, not {rows} rows x {dim}")]
    ShapeMismatch {
        values: usize,
        rows: usize,
        dim: usize,
    },
    #[error("sample {sample} has label {label}, but there are only {classes} classes")]
    LabelOutOfRange {
        sample: usize,
        label: usize,
        classes: usize,
    },
    #[error("sample {sample} has a non-finite feature (NaN or infinite) at index {index}")]
    NonFinite { sample: usize, index: usize },
    #[error("sample index {index} is out of range (dataset has {len} samples)")]
    IndexOutOfRange { index: usize, len: usize },
    #[error("sample {0} is in both the training and the validation set")]
    OverlappingSplit(usize),
    #[error("invalid training config: {0}")]
    BadConfig(String),
}

/// Splits sample indices into (training, validation), class by class so each class keeps its
/// proportion: per class (in class order) the class's indices are shuffled with one ChaCha8 RNG
/// seeded with `seed`, and the first `round(fraction * n_c)` go to validation, at least 1 when the
/// class has 2 or more samples and `fraction > 0`, and never all of them. Both lists are sorted.
/// Labels `>= n_classes` are ignored (the trainer rejects them before splitting).
pub fn stratified_split(
    labels: &[usize],
    n_classes: usize,
    validation_fraction: f32,
    seed: u64,
) -> (Vec<usize>, Vec<usize>) {
    let fraction = if validation_fraction.is_finite() {
        validation_fraction.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let mut per_class: Vec<Vec<usize>> = vec![Vec::new(); n_classes];
    for (i, &label) in labels.iter().enumerate() {
        if let Some(members) = per_class.get_mut(label) {
            members.push(i);
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for mut members in per_class {
        members.shuffle(&mut rng);
        let n = members.len();
        let mut n_val = (fraction * n as f32).round() as usize;
        if fraction > 0.0 && n >= 2 {
            n_val = n_val.clamp(1, n - 1);
        } else {
            n_val = n_val.min(n.saturating_sub(1));
        }
        val.extend_from_slice(&members[..n_val]);
        train.extend_from_slice(&members[n_val..]);
    }
    train.sort_unstable();
    val.sort_unstable();
    (train, val)
}

/// Splits `data` with [`stratified_split`] (`cfg.validation_split`, `cfg.seed`) and trains.
pub fn train(
    data: &Dataset,
    fingerprint: &Fingerprint,
    cfg: &TrainConfig,
    progress: &mut dyn FnMut(TrainProgress),
) -> Result<Head, TrainError> {
    validate_config(cfg)?;
    validate_dataset(data, fingerprint)?;
    let (train_idx, val_idx) = stratified_split(
        data.labels,
        data.classes.len(),
        cfg.validation_split,
        cfg.seed,
    );
    train_with_split(data, &train_idx, &val_idx, fingerprint, cfg, progress)
}

/// Trains on the samples `train_idx` and validates on `val_idx` (which may be empty). Used by
/// [`train`], and by the acceptance gate, which must score the old and the new head on the very
/// same validation samples. A cold start: [`train_with_split_warm`] with no head.
pub fn train_with_split(
    data: &Dataset,
    train_idx: &[usize],
    val_idx: &[usize],
    fingerprint: &Fingerprint,
    cfg: &TrainConfig,
    progress: &mut dyn FnMut(TrainProgress),
) -> Result<Head, TrainError> {
    train_with_split_warm(data, train_idx, val_idx, fingerprint, cfg, None, progress)
}

/// [`train_with_split`], starting the linear head's optimizer from `warm`'s weights (the active
/// head: same classes, plus or minus some) instead of zero. Classes `warm` does not know are
/// zero-initialized, as in a cold start. The optimum is the same (the loss is convex and
/// the stopping rule does not change), so the result agrees with a cold start within the
/// gradient tolerance; only the iterations differ. `warm` is ignored (cold start) for an MLP
/// config, a head that is not linear or of another dimension, or one sharing no class.
pub fn train_with_split_warm(
    data: &Dataset,
    train_idx: &[usize],
    val_idx: &[usize],
    fingerprint: &Fingerprint,
    cfg: &TrainConfig,
    warm: Option<&Head>,
    progress: &mut dyn FnMut(TrainProgress),
) -> Result<Head, TrainError> {
    let started = Instant::now();
    validate_config(cfg)?;
    validate_dataset(data, fingerprint)?;
    validate_split(data, train_idx, val_idx)?;
    let k = data.classes.len();
    let dim = data.dim;
    let l2 = cfg.effective_l2();

    let (mean, scale) = normalization(data, train_idx);
    let train_set = Normalized::new(data, train_idx, &mean, &scale);
    let val_set = Normalized::new(data, val_idx, &mean, &scale);
    let weights = sample_weights(&train_set.labels, k, cfg.balance_classes);

    let fit = match cfg.kind {
        HeadKind::Linear => {
            // Classes the warm head does not know start at zero, as in a cold start. Measured
            // on the real _full sets (bench --learning): starting them imprinted made L-BFGS
            // hit its 500-iteration cap (a steep, badly scaled start), where zero took ~170.
            let start =
                warm.and_then(|head| warm::initial_theta(head, data.classes, &mean, &scale));
            linear::fit(&train_set, &val_set, &weights, k, l2, cfg, start, progress)
        }
        HeadKind::Mlp { hidden } => {
            mlp::fit(&train_set, &val_set, &weights, k, hidden, l2, cfg, progress)
        }
    };

    let mut samples_per_class = vec![0u32; k];
    for &label in data.labels {
        samples_per_class[label] += 1;
    }
    let report = TrainReport {
        classes: data.classes.to_vec(),
        samples_per_class,
        train_count: train_idx.len(),
        val_count: val_idx.len(),
        validation: None,
        train_accuracy: 0.0,
        iterations: fit.iterations,
        stop_reason: fit.stop_reason,
        duration_ms: 0,
        config: cfg.clone(),
        l2_used: l2,
        seed: cfg.seed,
        refit_on_all: false,
    };
    let mut head = Head::from_parts(
        data.classes.to_vec(),
        fingerprint.clone(),
        cfg.kind,
        mean,
        scale,
        fit.layers,
        report,
    );
    let train_eval = evaluate_rows(&head, data, train_idx);
    let validation = (!val_idx.is_empty()).then(|| evaluate_rows(&head, data, val_idx));
    let report = head.report_mut();
    report.train_accuracy = train_eval.accuracy;
    report.validation = validation;
    report.duration_ms = started.elapsed().as_millis() as u64;
    debug_assert_eq!(head.dim(), dim);
    Ok(head)
}

/// Scores `head` on the raw (unnormalized) rows `idx` of `data`.
pub fn evaluate_rows(head: &Head, data: &Dataset, idx: &[usize]) -> Evaluation {
    let mut features = Vec::with_capacity(idx.len() * data.dim);
    for &i in idx {
        features.extend_from_slice(data.row(i));
    }
    let labels: Vec<usize> = idx.iter().map(|&i| data.labels[i]).collect();
    let probs = head.predict_batch(&features, idx.len());
    evaluate(&probs, &labels, data.classes.len())
}

/// What an optimizer hands back to [`train_with_split`].
struct Fit {
    layers: Vec<Layer>,
    iterations: usize,
    stop_reason: StopReason,
}

/// Normalized rows (`(x - mean) * scale`, see [`normalization`]) of one side of the split, with their labels.
struct Normalized {
    x: Vec<f32>,
    labels: Vec<usize>,
    dim: usize,
}

impl Normalized {
    fn new(data: &Dataset, idx: &[usize], mean: &[f32], scale: &[f32]) -> Self {
        let mut x = Vec::with_capacity(idx.len() * data.dim);
        for &i in idx {
            x.extend(
                data.row(i)
                    .iter()
                    .zip(mean)
                    .zip(scale)
                    .map(|((v, m), s)| (v - m) * s),
            );
        }
        Normalized {
            x,
            labels: idx.iter().map(|&i| data.labels[i]).collect(),
            dim: data.dim,
        }
    }

    fn len(&self) -> usize {
        self.labels.len()
    }
}

/// The head's input normalization, from the training rows: `z = (x - mean) * scale` with the
/// per-feature mean and ONE common scale, `1 / rms(per-feature std)`.
///
/// Why centered but not per-feature standardized: centering decouples the bias from the weights
/// (L-BFGS converges in a third of the iterations on raw, non-negative ReLU features), and one
/// global scale makes the L2 strength mean the same for every backbone. Per-feature
/// standardization instead gives rare, weak activations the same weight as strong ones under the
/// L2 penalty: on sign_digits it cost 3 points of validation accuracy (0.862 vs 0.889 mean over 20
/// splits, sklearn and this trainer agree). A feature that is constant on the training set gets
/// scale 0: it carries no information there, and a unit dead in training must not move the
/// prediction if it ever fires at inference.
fn normalization(data: &Dataset, train_idx: &[usize]) -> (Vec<f32>, Vec<f32>) {
    let d = data.dim;
    let n = train_idx.len().max(1) as f64;
    let mut sum = vec![0f64; d];
    for &i in train_idx {
        for (s, &v) in sum.iter_mut().zip(data.row(i)) {
            *s += f64::from(v);
        }
    }
    let mean: Vec<f64> = sum.iter().map(|s| s / n).collect();
    let mut var = vec![0f64; d];
    for &i in train_idx {
        for ((acc, &v), m) in var.iter_mut().zip(data.row(i)).zip(&mean) {
            let dv = f64::from(v) - m;
            *acc += dv * dv;
        }
    }
    let rms_std = (var.iter().sum::<f64>() / n / d as f64).sqrt();
    let scale = var
        .iter()
        .map(|v| {
            let std = (v / n).sqrt();
            if rms_std > 0.0 && std > 1e-6 * rms_std {
                (1.0 / rms_std) as f32
            } else {
                0.0
            }
        })
        .collect();
    (mean.iter().map(|&m| m as f32).collect(), scale)
}

/// Per-sample loss weights, normalized so they sum to 1 (the loss is a weighted mean). Balanced:
/// `n / (k * n_c)` before normalization, so every class carries the same total weight.
fn sample_weights(labels: &[usize], k: usize, balance: bool) -> Vec<f32> {
    let n = labels.len() as f64;
    let mut count = vec![0usize; k];
    for &l in labels {
        count[l] += 1;
    }
    let present = count.iter().filter(|&&c| c > 0).count() as f64;
    labels
        .iter()
        .map(|&l| {
            if balance {
                (1.0 / (present * count[l] as f64)) as f32
            } else {
                (1.0 / n) as f32
            }
        })
        .collect()
}

/// Row-wise softmax in place over `k`-wide rows, stable (max subtracted).
fn softmax_rows(values: &mut [f32], k: usize) {
    for row in values.chunks_exact_mut(k) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for v in row.iter_mut() {
            *v = (*v - max).exp();
            sum += *v;
        }
        for v in row.iter_mut() {
            *v /= sum;
        }
    }
}

/// Unweighted mean cross-entropy and accuracy of row-major probabilities.
fn loss_and_accuracy(probs: &[f32], labels: &[usize], k: usize) -> (f64, f32) {
    let mut loss = 0.0f64;
    let mut correct = 0usize;
    for (row, &y) in probs.chunks_exact(k).zip(labels) {
        loss -= f64::from(row[y].max(1e-7)).ln();
        if crate::learn::metrics::argmax(row) == y {
            correct += 1;
        }
    }
    let n = labels.len().max(1);
    (loss / n as f64, correct as f32 / n as f32)
}

fn validate_config(cfg: &TrainConfig) -> Result<(), TrainError> {
    let bad = |m: String| Err(TrainError::BadConfig(m));
    if !(cfg.validation_split >= 0.0 && cfg.validation_split < 1.0) {
        return bad(format!(
            "validation_split must be in [0, 1), got {}",
            cfg.validation_split
        ));
    }
    if let Some(l2) = cfg.l2 {
        if !(l2.is_finite() && l2 >= 0.0) {
            return bad(format!("l2 must be a finite number >= 0, got {l2}"));
        }
    }
    if let Some(t) = cfg.gradient_tolerance {
        if !(t.is_finite() && t > 0.0) {
            return bad(format!("gradient_tolerance must be a number > 0, got {t}"));
        }
    }
    if cfg.max_iterations == 0 {
        return bad("max_iterations must be at least 1".into());
    }
    if cfg.kind == (HeadKind::Mlp { hidden: 0 }) {
        return bad("an MLP head needs at least 1 hidden unit".into());
    }
    Ok(())
}

fn validate_dataset(data: &Dataset, fingerprint: &Fingerprint) -> Result<(), TrainError> {
    let k = data.classes.len();
    if k < 2 {
        return Err(TrainError::TooFewClasses(k));
    }
    if data.dim != fingerprint.dim {
        return Err(TrainError::DimMismatch {
            expected: fingerprint.dim,
            found: data.dim,
        });
    }
    let rows = data.labels.len();
    if data.dim == 0 || data.features.len() != rows * data.dim {
        return Err(TrainError::ShapeMismatch {
            values: data.features.len(),
            rows,
            dim: data.dim,
        });
    }
    let mut count = vec![0usize; k];
    for (sample, &label) in data.labels.iter().enumerate() {
        if label >= k {
            return Err(TrainError::LabelOutOfRange {
                sample,
                label,
                classes: k,
            });
        }
        count[label] += 1;
    }
    if let Some(c) = count.iter().position(|&c| c == 0) {
        return Err(TrainError::EmptyClass(data.classes[c].clone()));
    }
    if let Some(pos) = data.features.iter().position(|v| !v.is_finite()) {
        return Err(TrainError::NonFinite {
            sample: pos / data.dim,
            index: pos % data.dim,
        });
    }
    Ok(())
}

fn validate_split(
    data: &Dataset,
    train_idx: &[usize],
    val_idx: &[usize],
) -> Result<(), TrainError> {
    let len = data.labels.len();
    let mut seen = vec![0u8; len];
    for (side, idx) in [(1u8, train_idx), (2u8, val_idx)] {
        for &i in idx {
            if i >= len {
                return Err(TrainError::IndexOutOfRange { index: i, len });
            }
            if seen[i] != 0 && seen[i] != side {
                return Err(TrainError::OverlappingSplit(i));
            }
            seen[i] = side;
        }
    }
    let mut in_train = vec![false; data.classes.len()];
    for &i in train_idx {
        in_train[data.labels[i]] = true;
    }
    if let Some(c) = in_train.iter().position(|&present| !present) {
        return Err(TrainError::NoTrainingSamples(data.classes[c].clone()));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
