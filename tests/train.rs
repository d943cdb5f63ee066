//! `glimpse train` end to end through the Rust pipeline (decode, resize, tract, trainer) on the
//! labeled photo sets in ../shared/datasets: the head must reach the "logistic regression trained
//! to convergence" accuracy, be deterministic, and its file must refuse corruption and foreign
//! backbones.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn glimpse(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_glimpse"))
        .args(args)
        .output()
        .expect("run glimpse")
}

/// Trains on `dataset` with default settings; returns the JSON report and the head path.
fn train(dataset: &str, work: &Path, cache: &Path, extra: &[&str]) -> (serde_json::Value, PathBuf) {
    let head = work.join(format!("{dataset}.glh"));
    let data = repo(&format!("../shared/datasets/{dataset}"));
    let mut args = vec![
        "train",
        data.to_str().unwrap(),
        "--json",
        "--quiet",
        "--threads",
        "1",
        "--out",
        head.to_str().unwrap(),
        "--cache-dir",
        cache.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let out = glimpse(&args);
    assert!(
        out.status.success(),
        "train {dataset} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (report, head)
}

fn validation_accuracy(report: &serde_json::Value) -> f64 {
    report["validation"]["accuracy"]
        .as_f64()
        .expect("validation accuracy")
}

#[test]
fn rps_reaches_converged_accuracy_deterministically() {
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let (report, head) = train("rps", work.path(), &cache, &[]);
    let acc = validation_accuracy(&report);
    eprintln!("rps validation accuracy {acc}");
    assert!(acc >= 0.97, "rps validation accuracy {acc} < 0.97");
    assert_eq!(report["val_count"].as_u64(), Some(48), "80/20 split of 240");

    // Same seed, second run (from the embedding cache): byte-identical head.
    let first = std::fs::read(&head).unwrap();
    let (_, head2) = train("rps", work.path(), &cache, &[]);
    assert_eq!(
        first,
        std::fs::read(&head2).unwrap(),
        "same seed, same head"
    );

    // The head classifies held-out-like images with the right names.
    let rock = repo("../shared/datasets/rps/rock");
    let mut rocks: Vec<PathBuf> = std::fs::read_dir(&rock)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    rocks.sort();
    let out = glimpse(&[
        "classify",
        "--json",
        "--head",
        head.to_str().unwrap(),
        rocks[0].to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["top_k"][0]["label"], "rock");

    // One flipped byte anywhere is refused with a clear error (exit 2).
    let mut corrupt = first.clone();
    let middle = corrupt.len() / 2;
    corrupt[middle] ^= 0x01;
    let bad = work.path().join("corrupt.glh");
    std::fs::write(&bad, &corrupt).unwrap();
    let out = glimpse(&[
        "classify",
        "--head",
        bad.to_str().unwrap(),
        rocks[0].to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("corrupt.glh") && err.contains("checksum"),
        "{err}"
    );

    // A head trained for another backbone is refused.
    let out = glimpse(&[
        "classify",
        "--model",
        "models/mobilenet_v2_zoo_style.toml",
        "--head",
        head.to_str().unwrap(),
        rocks[0].to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("backbone"), "{err}");
}

#[test]
fn sign_digits_reaches_converged_accuracy() {
    let work = tempfile::tempdir().unwrap();
    let (report, _) = train("sign_digits", work.path(), &work.path().join("cache"), &[]);
    let acc = validation_accuracy(&report);
    eprintln!("sign_digits validation accuracy {acc}");
    assert!(acc >= 0.87, "sign_digits validation accuracy {acc} < 0.87");
    assert_eq!(report["classes"].as_array().map(Vec::len), Some(10));
    assert_eq!(report["val_count"].as_u64(), Some(100));
}
