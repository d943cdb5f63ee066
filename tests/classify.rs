//! `glimpse classify` on real photos against onnxruntime's reference top-5
//! (../shared/testdata/imagenet/expected.tsv), for the float32 model and the zoo-style model whose
//! embedding tensor is found automatically and whose class indices are shifted by one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn shared(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared")
        .join(rel)
}

struct Reference {
    /// (index, label, probability), best first.
    top5: Vec<(usize, String, f32)>,
}

fn load_expected() -> HashMap<String, Reference> {
    let path = shared("testdata/imagenet/expected.tsv");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut out = HashMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let mut cols = line.split('\t');
        let file = cols.next().unwrap().to_string();
        let top5 = cols
            .map(|c| {
                let (index, rest) = c.split_once(':').unwrap();
                let (label, prob) = rest.rsplit_once(':').unwrap();
                (
                    index.parse().unwrap(),
                    label.to_string(),
                    prob.parse().unwrap(),
                )
            })
            .collect();
        out.insert(file, Reference { top5 });
    }
    assert_eq!(out.len(), 10, "expected.tsv should list 10 images");
    out
}

/// Runs `glimpse classify --json` and returns file name -> [(index, label, score)].
fn classify(model: &str, files: &[PathBuf]) -> HashMap<String, Vec<(usize, String, f32)>> {
    let output = Command::new(env!("CARGO_BIN_EXE_glimpse"))
        .args([
            "classify",
            "--json",
            "--threads",
            "2",
            "-k",
            "5",
            "--model",
            model,
        ])
        .args(files)
        .output()
        .expect("run glimpse");
    assert!(
        output.status.success(),
        "glimpse classify failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut out = HashMap::new();
    for line in String::from_utf8(output.stdout).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let file = Path::new(v["file"].as_str().unwrap())
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_string();
        let top = v["top_k"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["index"].as_u64().unwrap() as usize,
                    s["label"].as_str().unwrap().to_string(),
                    s["score"].as_f64().unwrap() as f32,
                )
            })
            .collect();
        out.insert(file, top);
    }
    out
}

fn image_files(expected: &HashMap<String, Reference>) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = expected
        .keys()
        .map(|f| shared("testdata/imagenet").join(f))
        .collect();
    files.sort();
    files
}

#[test]
fn float_model_matches_reference_top_classes() {
    let expected = load_expected();
    let got = classify("models/mobilenet_v2_1.0_224.toml", &image_files(&expected));
    assert_eq!(got.len(), expected.len());
    for (file, reference) in &expected {
        let ours = &got[file];
        let (ref_index, ref_label, ref_prob) = &reference.top5[0];
        if *ref_prob >= 0.8 {
            assert_eq!(
                ours[0].0, *ref_index,
                "{file}: top-1 {:?}, reference {ref_label} ({ref_prob})",
                ours[0]
            );
            assert_eq!(&ours[0].1, ref_label);
        } else {
            let ref_top3: Vec<usize> = reference.top5[..3].iter().map(|r| r.0).collect();
            assert!(
                ref_top3.contains(&ours[0].0),
                "{file}: top-1 {:?} not in reference top-3 {ref_top3:?}",
                ours[0]
            );
        }
        // Probabilities are softmax outputs: they must be in (0, 1] and sorted.
        assert!(
            ours.windows(2).all(|w| w[0].2 >= w[1].2),
            "{file}: unsorted"
        );
        assert!(ours[0].2 > 0.0 && ours[0].2 <= 1.0);
    }
}

#[test]
fn zoo_style_model_gives_same_classes_shifted_by_one() {
    let expected = load_expected();
    let files = image_files(&expected);
    let float = classify("models/mobilenet_v2_1.0_224.toml", &files);
    let zoo = classify("models/mobilenet_v2_zoo_style.toml", &files);
    for (file, reference) in &expected {
        let (ref_index, ref_label, ref_prob) = &reference.top5[0];
        let top1 = &zoo[file][0];
        // 1000 classes without `background`: index i is the float model's class i + 1, same name.
        if *ref_prob >= 0.8 {
            assert_eq!(top1.0 + 1, *ref_index, "{file}: zoo top-1 {top1:?}");
            assert_eq!(&top1.1, ref_label, "{file}");
        } else {
            let ref_top3: Vec<usize> = reference.top5[..3].iter().map(|r| r.0).collect();
            assert!(ref_top3.contains(&(top1.0 + 1)), "{file}: {top1:?}");
        }
        assert_eq!(
            top1.1, float[file][0].1,
            "{file}: both models agree on the name"
        );
    }
}
