//! What a retrain costs on real embeddings, and what it is worth, without the daemon around it:
//! the learner's training work (a gate twin trained on the holdout split's training side, then
//! the refit on every sample) cold, and warm-started from the heads of the previous retrain
//! after the operator added samples of known classes, or a new class. Accuracy is compared with a
//! reference: the same regularized logistic regression trained from zero until its gradient is
//! 50x smaller than the trainer's default tolerance (or it stalls at f32 round-off).

use std::time::{Duration, Instant};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::real::RealSet;
use super::StageStats;
use crate::learn::gate::holdout_split;
use crate::learn::head::Head;
use crate::learn::train::{train_with_split_warm, Dataset, TrainConfig};
use crate::vision::spec::Fingerprint;

/// Samples added between two retrains in the "more samples" scenario (`retrain_after` default).
pub const ADDED_SAMPLES: usize = 20;
/// Samples of the new class in the "new class" scenario.
pub const NEW_CLASS_SAMPLES: usize = 10;

/// One scenario's timings (median over runs) and the gate head's held-out accuracy.
#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    pub name: String,
    pub samples: usize,
    pub classes: usize,
    pub runs: usize,
    /// Gate twin + refit on all (the training part of a retrain).
    pub total: StageStats,
    pub twin: StageStats,
    pub refit: StageStats,
    pub twin_iterations: usize,
    pub refit_iterations: usize,
    /// The gate twin's accuracy on the holdout (last run).
    pub val_accuracy: f32,
    pub val_count: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct RetrainFigures {
    pub cold: Scenario,
    pub warm_more_samples: Scenario,
    pub warm_new_class: Scenario,
    /// The new-class data trained from zero: what the warm start is compared with.
    pub cold_new_class: Scenario,
    /// Held-out accuracy of the reference fit on the full set's holdout split.
    pub reference_accuracy: f32,
    pub reference_iterations: usize,
    /// Gradient tolerance of the reference fit.
    pub reference_tolerance: f32,
}

/// A subset of the real set as an owned dataset (classes without rows dropped, labels remapped).
struct Subset {
    features: Vec<f32>,
    labels: Vec<usize>,
    classes: Vec<String>,
    hashes: Vec<String>,
}

impl Subset {
    fn of(set: &RealSet, rows: &[usize]) -> Subset {
        let mut present = vec![false; set.classes.len()];
        for &i in rows {
            present[set.labels[i]] = true;
        }
        let mut remap = vec![usize::MAX; set.classes.len()];
        let mut classes = Vec::new();
        for (c, name) in set.classes.iter().enumerate() {
            if present[c] {
                remap[c] = classes.len();
                classes.push(name.clone());
            }
        }
        let mut features = Vec::with_capacity(rows.len() * set.dim);
        for &i in rows {
            features.extend_from_slice(set.row(i));
        }
        Subset {
            features,
            labels: rows.iter().map(|&i| remap[set.labels[i]]).collect(),
            classes,
            hashes: rows.iter().map(|&i| set.hashes[i].clone()).collect(),
        }
    }

    fn data(&self, dim: usize) -> Dataset<'_> {
        Dataset {
            features: &self.features,
            dim,
            labels: &self.labels,
            classes: &self.classes,
        }
    }

    fn split(&self, cfg: &TrainConfig) -> (Vec<usize>, Vec<usize>) {
        let hashes: Vec<&str> = self.hashes.iter().map(String::as_str).collect();
        holdout_split(&hashes, &self.labels, cfg.validation_split, cfg.seed)
    }
}

/// The learner's training work on `sub`: gate twin, then refit on all, each warm-started from
/// the given heads. Returns (twin, refit, twin time, refit time).
fn retrain(
    sub: &Subset,
    dim: usize,
    fingerprint: &Fingerprint,
    cfg: &TrainConfig,
    previous: Option<(&Head, &Head)>,
) -> anyhow::Result<(Head, Head, Duration, Duration)> {
    let data = sub.data(dim);
    let (train_idx, val_idx) = sub.split(cfg);
    let started = Instant::now();
    let twin = train_with_split_warm(
        &data,
        &train_idx,
        &val_idx,
        fingerprint,
        cfg,
        previous.map(|(twin, _)| twin),
        &mut |_| {},
    )?;
    let twin_time = started.elapsed();
    let all: Vec<usize> = (0..sub.labels.len()).collect();
    let started = Instant::now();
    // The refit starts from the previous deployed head when there is one (trained on nearly
    // the same rows), else from the twin just trained.
    let refit = train_with_split_warm(
        &data,
        &all,
        &[],
        fingerprint,
        cfg,
        Some(previous.map_or(&twin, |(_, deployed)| deployed)),
        &mut |_| {},
    )?;
    Ok((twin, refit, twin_time, started.elapsed()))
}

/// Runs `runs` retrains of `now_rows`, each after heads trained on `before(run)` rows (or cold).
fn scenario(
    name: &str,
    set: &RealSet,
    fingerprint: &Fingerprint,
    cfg: &TrainConfig,
    runs: usize,
    mut rows: impl FnMut(usize) -> (Vec<usize>, Option<Vec<usize>>),
) -> anyhow::Result<Scenario> {
    let (mut totals, mut twins, mut refits) = (Vec::new(), Vec::new(), Vec::new());
    let mut last = None;
    for run in 0..runs {
        let (now_rows, before_rows) = rows(run);
        let previous = match before_rows {
            Some(before) => {
                let sub = Subset::of(set, &before);
                let (twin, refit, _, _) = retrain(&sub, set.dim, fingerprint, cfg, None)?;
                Some((twin, refit))
            }
            None => None,
        };
        let sub = Subset::of(set, &now_rows);
        let (twin, refit, twin_time, refit_time) = retrain(
            &sub,
            set.dim,
            fingerprint,
            cfg,
            previous.as_ref().map(|(t, r)| (t, r)),
        )?;
        twins.push(twin_time);
        refits.push(refit_time);
        totals.push(twin_time + refit_time);
        last = Some((sub.labels.len(), sub.classes.len(), twin, refit));
    }
    let (samples, classes, twin, refit) = last.expect("at least one run");
    let validation = twin.report().validation.clone();
    Ok(Scenario {
        name: name.to_string(),
        samples,
        classes,
        runs,
        total: StageStats::from_durations(&totals),
        twin: StageStats::from_durations(&twins),
        refit: StageStats::from_durations(&refits),
        twin_iterations: twin.report().iterations,
        refit_iterations: refit.report().iterations,
        val_accuracy: validation.as_ref().map_or(0.0, |v| v.accuracy),
        val_count: twin.report().val_count,
    })
}

/// Measures the three scenarios and the reference on `set`.
pub fn measure(
    set: &RealSet,
    fingerprint: &Fingerprint,
    runs: usize,
    say: &dyn Fn(String),
) -> anyhow::Result<RetrainFigures> {
    let cfg = TrainConfig::default();
    let n = set.len();
    let everything: Vec<usize> = (0..n).collect();
    say(format!(
        "training on {n} real samples, {} classes: cold...",
        set.classes.len()
    ));
    let cold = scenario("cold", set, fingerprint, &cfg, runs, |_| {
        (everything.clone(), None)
    })?;
    say(format!("warm, after {ADDED_SAMPLES} more samples..."));
    let warm_more_samples = scenario(
        &format!("warm, +{ADDED_SAMPLES} samples"),
        set,
        fingerprint,
        &cfg,
        runs,
        |run| {
            let mut rng = ChaCha8Rng::seed_from_u64(run as u64);
            let mut shuffled = everything.clone();
            shuffled.shuffle(&mut rng);
            let mut before = shuffled[ADDED_SAMPLES..].to_vec();
            before.sort_unstable();
            (everything.clone(), Some(before))
        },
    )?;
    say(format!(
        "warm, after a new class with {NEW_CLASS_SAMPLES} samples..."
    ));
    // A different class is "new" in each run; the others keep all their samples.
    let new_class_rows = |run: usize| {
        let class = run % set.classes.len();
        let mut rng = ChaCha8Rng::seed_from_u64(100 + run as u64);
        let mut members: Vec<usize> = everything
            .iter()
            .copied()
            .filter(|&i| set.labels[i] == class)
            .collect();
        members.shuffle(&mut rng);
        members.truncate(NEW_CLASS_SAMPLES);
        let before: Vec<usize> = everything
            .iter()
            .copied()
            .filter(|&i| set.labels[i] != class)
            .collect();
        let mut now = before.clone();
        now.extend(&members);
        now.sort_unstable();
        (now, before)
    };
    let warm_new_class = scenario(
        &format!("warm, new class with {NEW_CLASS_SAMPLES} samples"),
        set,
        fingerprint,
        &cfg,
        runs,
        |run| {
            let (now, before) = new_class_rows(run);
            (now, Some(before))
        },
    )?;
    say("the same new-class data, cold...".into());
    let cold_new_class = scenario(
        &format!("cold, new class with {NEW_CLASS_SAMPLES} samples"),
        set,
        fingerprint,
        &cfg,
        runs,
        |run| (new_class_rows(run).0, None),
    )?;
    say("reference: logistic regression from zero to a 50x tighter tolerance...".into());
    let reference_cfg = TrainConfig {
        gradient_tolerance: Some(1e-6),
        max_iterations: 5000,
        ..cfg.clone()
    };
    let sub = Subset::of(set, &everything);
    let (train_idx, val_idx) = sub.split(&cfg);
    let reference = train_with_split_warm(
        &sub.data(set.dim),
        &train_idx,
        &val_idx,
        fingerprint,
        &reference_cfg,
        None,
        &mut |_| {},
    )?;
    Ok(RetrainFigures {
        cold,
        warm_more_samples,
        warm_new_class,
        cold_new_class,
        reference_accuracy: reference
            .report()
            .validation
            .as_ref()
            .map_or(0.0, |v| v.accuracy),
        reference_iterations: reference.report().iterations,
        reference_tolerance: 1e-6,
    })
}
