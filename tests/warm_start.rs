//! Warm starts and imprinting on real embeddings (../shared/datasets/sign_digits through the
//! MobileNetV2 backbone): a head retrained from the active head (which lacks a class and a fifth
//! of the samples) agrees with one trained from scratch on held-out samples, in fewer iterations.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use glimpse::learn::dataset::scan_class_folders;
use glimpse::learn::head::Head;
use glimpse::learn::train::{
    stratified_split, train_with_split, train_with_split_warm, Dataset, TrainConfig,
};
use glimpse::vision::backbone::{Backbone, BackboneOptions};
use glimpse::vision::decode::DecodeLimits;
use glimpse::vision::embedder::Embedder;
use glimpse::vision::manifest::ModelManifest;
use glimpse::vision::spec::{Fingerprint, ResizeMode};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

struct Embedded {
    features: Vec<f32>,
    labels: Vec<usize>,
    classes: Vec<String>,
    fingerprint: Fingerprint,
}

/// The sign_digits embeddings, computed once per test binary.
fn sign_digits() -> &'static Embedded {
    static CELL: OnceLock<Embedded> = OnceLock::new();
    CELL.get_or_init(|| {
        let manifest = ModelManifest::load(&repo("models/mobilenet_v2_1.0_224.toml")).unwrap();
        let backbone = std::sync::Arc::new(
            Backbone::load(
                &manifest,
                &BackboneOptions {
                    threads: 2,
                    ..Default::default()
                },
            )
            .unwrap(),
        );
        let fingerprint = backbone.fingerprint().clone();
        let mut embedder = Embedder::new(backbone, ResizeMode::Stretch, DecodeLimits::default());
        let dataset = scan_class_folders(&repo("../shared/datasets/sign_digits")).unwrap();
        let mut features = Vec::new();
        let mut labels = Vec::new();
        for item in &dataset.items {
            let bytes = std::fs::read(&item.path).unwrap();
            let (out, _) = embedder.embed_bytes(&bytes).unwrap();
            features.extend_from_slice(&out.embedding);
            labels.push(item.label);
        }
        Embedded {
            features,
            labels,
            classes: dataset.classes.clone(),
            fingerprint,
        }
    })
}

fn data(e: &Embedded) -> Dataset<'_> {
    Dataset {
        features: &e.features,
        dim: e.fingerprint.dim,
        labels: &e.labels,
        classes: &e.classes,
    }
}

/// The predicted class index of every row `idx`.
fn predictions(head: &Head, e: &Embedded, idx: &[usize]) -> Vec<usize> {
    let d = e.fingerprint.dim;
    let rows: Vec<f32> = idx
        .iter()
        .flat_map(|&i| e.features[i * d..(i + 1) * d].iter().copied())
        .collect();
    head.predict_batch(&rows, idx.len())
        .chunks(head.classes().len())
        .map(glimpse::learn::metrics::argmax)
        .map(|c| {
            e.classes
                .iter()
                .position(|n| n == &head.classes()[c])
                .unwrap()
        })
        .collect()
}

fn accuracy(pred: &[usize], e: &Embedded, idx: &[usize]) -> f64 {
    let right = pred
        .iter()
        .zip(idx)
        .filter(|(p, &i)| **p == e.labels[i])
        .count();
    right as f64 / idx.len() as f64
}

#[test]
fn warm_started_retrain_agrees_with_a_cold_one_on_held_out_samples() {
    let e = sign_digits();
    let data = data(e);
    let cfg = TrainConfig::default();
    let (train_idx, val_idx) = stratified_split(e.labels.as_slice(), 10, 0.2, 7);
    // The "active head": trained earlier on 80% of today's training samples and without class 9,
    // as when an operator has since added samples and a new label.
    let earlier: Vec<usize> = train_idx
        .iter()
        .copied()
        .filter(|&i| e.labels[i] != 9 && i % 5 != 0)
        .collect();
    let d = e.fingerprint.dim;
    let earlier_features: Vec<f32> = earlier
        .iter()
        .flat_map(|&i| e.features[i * d..(i + 1) * d].iter().copied())
        .collect();
    let earlier_labels: Vec<usize> = earlier.iter().map(|&i| e.labels[i]).collect();
    let classes9: Vec<String> = e.classes[..9].to_vec();
    let earlier_data = Dataset {
        features: &earlier_features,
        dim: d,
        labels: &earlier_labels,
        classes: &classes9,
    };
    let earlier_rows: Vec<usize> = (0..earlier.len()).collect();
    let active = train_with_split(
        &earlier_data,
        &earlier_rows,
        &[],
        &e.fingerprint,
        &cfg,
        &mut |_| {},
    )
    .unwrap();

    let cold = train_with_split(
        &data,
        &train_idx,
        &val_idx,
        &e.fingerprint,
        &cfg,
        &mut |_| {},
    )
    .unwrap();
    let warm = train_with_split_warm(
        &data,
        &train_idx,
        &val_idx,
        &e.fingerprint,
        &cfg,
        Some(&active),
        &mut |_| {},
    )
    .unwrap();
    let (cold_pred, warm_pred) = (
        predictions(&cold, e, &val_idx),
        predictions(&warm, e, &val_idx),
    );
    let agree = cold_pred
        .iter()
        .zip(&warm_pred)
        .filter(|(a, b)| a == b)
        .count() as f64
        / val_idx.len() as f64;
    let (cold_acc, warm_acc) = (
        accuracy(&cold_pred, e, &val_idx),
        accuracy(&warm_pred, e, &val_idx),
    );
    eprintln!(
        "cold {cold_acc:.4} ({} it), warm {warm_acc:.4} ({} it), agreement {agree:.4}",
        cold.report().iterations,
        warm.report().iterations
    );
    assert!(
        agree >= 0.98,
        "only {agree:.3} of held-out predictions agree"
    );
    assert!(
        (cold_acc - warm_acc).abs() <= 0.01,
        "held-out accuracy cold {cold_acc:.4} vs warm {warm_acc:.4}"
    );
    assert_eq!(warm.classes(), cold.classes());
    assert!(
        warm.report().iterations < cold.report().iterations,
        "a warm start must need fewer iterations: warm {} vs cold {}",
        warm.report().iterations,
        cold.report().iterations
    );
}
