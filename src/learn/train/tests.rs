//! Trainer tests on synthetic Gaussian blobs: accuracy, determinism, the split, class balancing,
//! the MLP variant and input validation.

use super::*;

/// Standard normal samples (Box-Muller) from a seeded RNG.
fn normal(rng: &mut ChaCha8Rng) -> f32 {
    use rand::Rng;
    let u1: f32 = rng.gen_range(f32::EPSILON..1.0);
    let u2: f32 = rng.gen_range(0.0..1.0);
    (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
}

/// `counts[c]` samples of class c around a random center (coordinates N(0, spread^2)), unit noise.
pub(crate) fn blobs(
    counts: &[usize],
    dim: usize,
    spread: f32,
    seed: u64,
) -> (Vec<f32>, Vec<usize>, Vec<String>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let centers: Vec<Vec<f32>> = counts
        .iter()
        .map(|_| (0..dim).map(|_| spread * normal(&mut rng)).collect())
        .collect();
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for (c, &n) in counts.iter().enumerate() {
        for _ in 0..n {
            x.extend(centers[c].iter().map(|m| m + normal(&mut rng)));
            y.push(c);
        }
    }
    let classes = (0..counts.len()).map(|c| format!("class{c}")).collect();
    (x, y, classes)
}

pub(crate) fn fingerprint(dim: usize) -> Fingerprint {
    Fingerprint {
        engine: crate::vision::spec::DEFAULT_ENGINE.into(),
        model_sha256: "ab".repeat(32),
        embedding_tensor: "features".into(),
        dim,
    }
}

fn run(
    x: &[f32],
    y: &[usize],
    classes: &[String],
    dim: usize,
    cfg: &TrainConfig,
) -> Result<Head, TrainError> {
    let data = Dataset {
        features: x,
        dim,
        labels: y,
        classes,
    };
    train(&data, &fingerprint(dim), cfg, &mut |_| {})
}

#[test]
fn linear_head_separates_gaussian_blobs() {
    let (x, y, classes) = blobs(&[60, 60, 60, 60], 32, 3.0, 1);
    let head = run(&x, &y, &classes, 32, &TrainConfig::default()).unwrap();
    let report = head.report();
    let val = report.validation.as_ref().expect("validation evaluation");
    assert_eq!(val.accuracy, 1.0, "{}", val.render_table(&classes));
    assert_eq!(report.train_accuracy, 1.0);
    assert_eq!((report.train_count, report.val_count), (192, 48));
    assert_eq!(report.samples_per_class, vec![60; 4]);
    assert_eq!(report.stop_reason, StopReason::Converged);
    assert_eq!(report.l2_used, DEFAULT_L2);
}

#[test]
fn mlp_head_separates_gaussian_blobs() {
    let (x, y, classes) = blobs(&[50, 50, 50], 16, 3.0, 2);
    let cfg = TrainConfig {
        kind: HeadKind::Mlp { hidden: 32 },
        max_iterations: 200,
        ..TrainConfig::default()
    };
    let head = run(&x, &y, &classes, 16, &cfg).unwrap();
    let val = head
        .report()
        .validation
        .as_ref()
        .expect("validation evaluation");
    assert!(val.accuracy >= 0.96, "{}", val.render_table(&classes));
    assert_eq!(head.kind(), HeadKind::Mlp { hidden: 32 });
    assert_eq!(head.report().l2_used, DEFAULT_MLP_L2);
}

#[test]
fn progress_reports_every_iteration_with_falling_loss() {
    let (x, y, classes) = blobs(&[40, 40], 8, 1.0, 3);
    let data = Dataset {
        features: &x,
        dim: 8,
        labels: &y,
        classes: &classes,
    };
    let mut seen = Vec::new();
    let head = train(&data, &fingerprint(8), &TrainConfig::default(), &mut |p| {
        seen.push(p)
    })
    .unwrap();
    assert_eq!(seen.len(), head.report().iterations);
    assert!(seen
        .windows(2)
        .all(|w| w[1].loss <= w[0].loss && w[1].iteration == w[0].iteration + 1));
    assert!(seen.iter().all(|p| p.val_accuracy.is_some()));
}

#[test]
fn same_seed_gives_identical_head_bytes() {
    for kind in [HeadKind::Linear, HeadKind::Mlp { hidden: 8 }] {
        let (x, y, classes) = blobs(&[30, 40, 50], 12, 1.0, 4);
        let cfg = TrainConfig {
            kind,
            max_iterations: 40,
            ..TrainConfig::default()
        };
        let a = run(&x, &y, &classes, 12, &cfg).unwrap().to_bytes();
        let b = run(&x, &y, &classes, 12, &cfg).unwrap().to_bytes();
        assert!(a == b, "{kind:?}: two trainings with the same seed differ");
    }
}

#[test]
fn different_seed_gives_different_split_and_head() {
    let labels: Vec<usize> = (0..100).map(|i| i % 4).collect();
    let a = stratified_split(&labels, 4, 0.2, 1);
    let b = stratified_split(&labels, 4, 0.2, 2);
    assert_ne!(a.1, b.1);
    let (x, y, classes) = blobs(&[30, 30], 8, 1.0, 5);
    let h1 = run(
        &x,
        &y,
        &classes,
        8,
        &TrainConfig {
            seed: 1,
            ..TrainConfig::default()
        },
    )
    .unwrap();
    let h2 = run(
        &x,
        &y,
        &classes,
        8,
        &TrainConfig {
            seed: 2,
            ..TrainConfig::default()
        },
    )
    .unwrap();
    assert_ne!(h1.to_bytes(), h2.to_bytes());
}

#[test]
fn stratified_split_keeps_class_proportions_and_is_deterministic() {
    // 50 / 30 / 10 / 3 / 1 samples, interleaved.
    let counts = [50usize, 30, 10, 3, 1];
    let mut labels: Vec<usize> = counts
        .iter()
        .enumerate()
        .flat_map(|(c, &n)| vec![c; n])
        .collect();
    labels.shuffle(&mut ChaCha8Rng::seed_from_u64(9));
    let (train, val) = stratified_split(&labels, 5, 0.2, 7);
    assert_eq!(
        (train.clone(), val.clone()),
        stratified_split(&labels, 5, 0.2, 7)
    );
    let count = |idx: &[usize], c: usize| idx.iter().filter(|&&i| labels[i] == c).count();
    // round(0.2 * n), at least 1 when n >= 2, never the whole class.
    let want_val = [10, 6, 2, 1, 0];
    for c in 0..5 {
        assert_eq!(count(&val, c), want_val[c], "class {c}");
        assert_eq!(count(&train, c), counts[c] - want_val[c], "class {c}");
    }
    let mut all: Vec<usize> = train.iter().chain(&val).copied().collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..labels.len()).collect::<Vec<_>>(),
        "every sample exactly once"
    );
    assert!(train.windows(2).all(|w| w[0] < w[1]) && val.windows(2).all(|w| w[0] < w[1]));

    let (train0, val0) = stratified_split(&labels, 5, 0.0, 7);
    assert!(val0.is_empty());
    assert_eq!(train0.len(), labels.len());
}

#[test]
fn class_balancing_weighs_every_class_the_same() {
    let labels = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1];
    let balanced = sample_weights(&labels, 2, true);
    let plain = sample_weights(&labels, 2, false);
    let class_total = |w: &[f32], c: usize| -> f32 {
        w.iter()
            .zip(&labels)
            .filter(|(_, &l)| l == c)
            .map(|(w, _)| w)
            .sum()
    };
    assert!((class_total(&balanced, 0) - 0.5).abs() < 1e-6);
    assert!((class_total(&balanced, 1) - 0.5).abs() < 1e-6);
    // n / (k n_c) normalized by n: 10 / (2 * 8) / 10 and 10 / (2 * 2) / 10.
    assert!((balanced[0] - 0.0625).abs() < 1e-7 && (balanced[9] - 0.25).abs() < 1e-7);
    assert!(plain.iter().all(|&w| (w - 0.1).abs() < 1e-7));
}

#[test]
fn class_balancing_changes_the_trained_head_on_an_imbalanced_set() {
    let (x, y, classes) = blobs(&[120, 12], 8, 0.4, 6);
    let on = run(&x, &y, &classes, 8, &TrainConfig::default()).unwrap();
    let off = run(
        &x,
        &y,
        &classes,
        8,
        &TrainConfig {
            balance_classes: false,
            ..TrainConfig::default()
        },
    )
    .unwrap();
    assert_ne!(on.to_bytes(), off.to_bytes());
    // Balanced weights push the boundary toward the majority: the minority's mean probability
    // over all samples rises.
    let minority = |h: &Head| -> f32 {
        let p = h.predict_batch(&x, y.len());
        p.chunks_exact(2).map(|r| r[1]).sum::<f32>() / y.len() as f32
    };
    assert!(
        minority(&on) > minority(&off) + 0.01,
        "{} vs {}",
        minority(&on),
        minority(&off)
    );
}

#[test]
fn early_stopping_guard_restores_the_best_parameters() {
    // Heavily overlapping classes, few samples, many dimensions and no L2: the training loss
    // keeps falling while the validation loss climbs, so the guard must fire.
    let (x, y, classes) = blobs(&[20, 20], 64, 0.15, 8);
    let cfg = TrainConfig {
        l2: Some(0.0),
        patience: Some(5),
        ..TrainConfig::default()
    };
    let head = run(&x, &y, &classes, 64, &cfg).unwrap();
    assert_eq!(head.report().stop_reason, StopReason::EarlyStopped);
    let unguarded = run(
        &x,
        &y,
        &classes,
        64,
        &TrainConfig {
            patience: Some(0),
            ..cfg
        },
    )
    .unwrap();
    let val_loss = |h: &Head| {
        h.report()
            .validation
            .as_ref()
            .map(|e| e.loss)
            .unwrap_or(f32::NAN)
    };
    assert!(
        val_loss(&head) < val_loss(&unguarded),
        "{} vs {}",
        val_loss(&head),
        val_loss(&unguarded)
    );
}

#[test]
fn refuses_fewer_than_two_classes() {
    let (x, y, classes) = blobs(&[10], 4, 1.0, 10);
    let err = run(&x, &y, &classes, 4, &TrainConfig::default()).unwrap_err();
    assert_eq!(err, TrainError::TooFewClasses(1));
    assert_eq!(
        err.to_string(),
        "need at least 2 classes to train a head, got 1"
    );
}

#[test]
fn refuses_a_class_without_samples() {
    let (x, y, _) = blobs(&[10, 10], 4, 1.0, 11);
    let classes: Vec<String> = ["a", "b", "empty"].map(String::from).to_vec();
    let err = run(&x, &y, &classes, 4, &TrainConfig::default()).unwrap_err();
    assert_eq!(err.to_string(), "class 'empty' has no samples");
}

#[test]
fn refuses_non_finite_features() {
    let (mut x, y, classes) = blobs(&[10, 10], 4, 1.0, 12);
    x[4 * 7 + 2] = f32::NAN;
    let err = run(&x, &y, &classes, 4, &TrainConfig::default()).unwrap_err();
    assert_eq!(
        err,
        TrainError::NonFinite {
            sample: 7,
            index: 2
        }
    );
}

#[test]
fn refuses_shape_label_split_and_config_errors() {
    let (x, y, classes) = blobs(&[10, 10], 4, 1.0, 13);
    let data = Dataset {
        features: &x,
        dim: 4,
        labels: &y,
        classes: &classes,
    };
    let cfg = TrainConfig::default();
    let none = &mut |_| {};
    assert_eq!(
        train(&data, &fingerprint(5), &cfg, none).unwrap_err(),
        TrainError::DimMismatch {
            expected: 5,
            found: 4
        }
    );
    let short = Dataset {
        features: &x[..x.len() - 1],
        ..data
    };
    assert!(matches!(
        train(&short, &fingerprint(4), &cfg, none),
        Err(TrainError::ShapeMismatch { .. })
    ));
    let mut bad_labels = y.clone();
    bad_labels[3] = 2;
    let bad = Dataset {
        labels: &bad_labels,
        ..data
    };
    assert_eq!(
        train(&bad, &fingerprint(4), &cfg, none).unwrap_err(),
        TrainError::LabelOutOfRange {
            sample: 3,
            label: 2,
            classes: 2
        }
    );
    let fp = fingerprint(4);
    assert_eq!(
        train_with_split(&data, &[0, 1, 10], &[1], &fp, &cfg, none).unwrap_err(),
        TrainError::OverlappingSplit(1)
    );
    assert_eq!(
        train_with_split(&data, &[0, 99], &[], &fp, &cfg, none).unwrap_err(),
        TrainError::IndexOutOfRange { index: 99, len: 20 }
    );
    assert_eq!(
        train_with_split(&data, &[0, 1], &[10], &fp, &cfg, none).unwrap_err(),
        TrainError::NoTrainingSamples("class1".into())
    );
    for bad_cfg in [
        TrainConfig {
            validation_split: 1.0,
            ..cfg.clone()
        },
        TrainConfig {
            l2: Some(f32::NAN),
            ..cfg.clone()
        },
        TrainConfig {
            max_iterations: 0,
            ..cfg.clone()
        },
        TrainConfig {
            kind: HeadKind::Mlp { hidden: 0 },
            ..cfg.clone()
        },
    ] {
        assert!(
            matches!(
                train(&data, &fp, &bad_cfg, none),
                Err(TrainError::BadConfig(_))
            ),
            "{bad_cfg:?}"
        );
    }
}

#[test]
fn trains_without_a_validation_split() {
    let (x, y, classes) = blobs(&[20, 20], 4, 3.0, 14);
    let head = run(
        &x,
        &y,
        &classes,
        4,
        &TrainConfig {
            validation_split: 0.0,
            ..TrainConfig::default()
        },
    )
    .unwrap();
    assert!(head.report().validation.is_none());
    assert_eq!(head.report().train_count, 40);
    assert_eq!(head.report().train_accuracy, 1.0);
}

#[test]
fn constant_features_are_ignored_not_divided_by_zero() {
    let (mut x, y, classes) = blobs(&[20, 20], 4, 3.0, 15);
    for row in x.chunks_exact_mut(4) {
        row[1] = 2.5;
    }
    let head = run(&x, &y, &classes, 4, &TrainConfig::default()).unwrap();
    let mut probe = x[..4].to_vec();
    probe[1] = 1e6; // a dead unit firing at inference must not change the answer
    let a = head.predict(&x[..4]).unwrap();
    let b = head.predict(&probe).unwrap();
    assert_eq!(a, b);
}

/// Trains the "active" head on `earlier` rows of the classes `known` (a prefix of the class
/// list), then today's training cold and warm from it; returns (cold, warm, validation rows).
fn cold_and_warm(known: usize, earlier: impl Fn(usize) -> bool) -> (Head, Head, Vec<f32>, usize) {
    let (x, y, classes) = blobs(&[80, 80, 80, 40], 24, 1.0, 9);
    let fp = fingerprint(24);
    let cfg = TrainConfig::default();
    let data = Dataset {
        features: &x,
        dim: 24,
        labels: &y,
        classes: &classes,
    };
    let (train_idx, val_idx) = stratified_split(&y, 4, 0.2, 5);
    let earlier_rows: Vec<usize> = train_idx
        .iter()
        .copied()
        .filter(|&i| y[i] < known && earlier(i))
        .collect();
    // Blobs are generated class by class: the first rows are a dataset of the first classes.
    let rows_known = y.iter().filter(|&&l| l < known).count();
    let active = train_with_split(
        &Dataset {
            features: &x[..rows_known * 24],
            labels: &y[..rows_known],
            classes: &classes[..known],
            ..data
        },
        &earlier_rows,
        &[],
        &fp,
        &cfg,
        &mut |_| {},
    )
    .unwrap();
    let cold = train_with_split(&data, &train_idx, &val_idx, &fp, &cfg, &mut |_| {}).unwrap();
    let warm = train_with_split_warm(
        &data,
        &train_idx,
        &val_idx,
        &fp,
        &cfg,
        Some(&active),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(warm.classes(), cold.classes());
    assert_eq!(warm.report().stop_reason, StopReason::Converged);
    let rows: Vec<f32> = val_idx
        .iter()
        .flat_map(|&i| x[i * 24..(i + 1) * 24].iter().copied())
        .collect();
    (cold, warm, rows, val_idx.len())
}

/// Same optimum: the probabilities agree closely on every validation row.
fn assert_same_optimum(cold: &Head, warm: &Head, rows: &[f32], n: usize) {
    let (pc, pw) = (cold.predict_batch(rows, n), warm.predict_batch(rows, n));
    let worst = pc
        .iter()
        .zip(&pw)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst < 0.02, "probabilities differ by up to {worst}");
}

#[test]
fn warm_start_after_more_samples_reaches_the_cold_optimum_in_fewer_iterations() {
    // The active head knows every class and was trained on three quarters of today's rows.
    let (cold, warm, rows, n) = cold_and_warm(4, |i| i % 4 != 0);
    assert!(
        warm.report().iterations < cold.report().iterations,
        "warm {} vs cold {} iterations",
        warm.report().iterations,
        cold.report().iterations
    );
    assert_same_optimum(&cold, &warm, &rows, n);
}

#[test]
fn warm_start_with_a_new_class_reaches_the_cold_optimum() {
    // The active head knows 3 of 4 classes. The new class starts at zero, as cold; iterations
    // are compared on real photos (tests/warm_start.rs, bench --learning), where it matters.
    let (cold, warm, rows, n) = cold_and_warm(3, |i| i % 4 != 0);
    assert_same_optimum(&cold, &warm, &rows, n);
}

#[test]
fn a_warm_head_that_cannot_seed_the_training_means_a_cold_start() {
    let (x, y, classes) = blobs(&[40, 40], 8, 3.0, 4);
    let fp = fingerprint(8);
    let data = Dataset {
        features: &x,
        dim: 8,
        labels: &y,
        classes: &classes,
    };
    let all: Vec<usize> = (0..y.len()).collect();
    let cold =
        train_with_split(&data, &all, &[], &fp, &TrainConfig::default(), &mut |_| {}).unwrap();
    // An MLP head, and a linear head that shares no class: both ignored.
    let mlp_cfg = TrainConfig {
        kind: HeadKind::Mlp { hidden: 4 },
        max_iterations: 5,
        ..TrainConfig::default()
    };
    let mlp = train_with_split(&data, &all, &[], &fp, &mlp_cfg, &mut |_| {}).unwrap();
    let other_names = vec!["x".to_string(), "y".to_string()];
    let stranger = train_with_split(
        &Dataset {
            classes: &other_names,
            ..data
        },
        &all,
        &[],
        &fp,
        &TrainConfig::default(),
        &mut |_| {},
    )
    .unwrap();
    for warm in [&mlp, &stranger] {
        let head = train_with_split_warm(
            &data,
            &all,
            &[],
            &fp,
            &TrainConfig::default(),
            Some(warm),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(head.to_bytes(), cold.to_bytes());
    }
}
