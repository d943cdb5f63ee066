//! The preprocessing pipeline against the shared reference tensors (../shared/testdata), and the
//! layout contract between NCHW and NHWC output.

use std::path::PathBuf;

use glimpse::vision::preprocess::{decode_image, DecodeLimits, Preprocessor};
use glimpse::vision::spec::{InputSpec, Layout, ResizeMode};

fn testdata(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/testdata")
        .join(rel)
}

fn read(rel: &str) -> Vec<u8> {
    let path = testdata(rel);
    std::fs::read(&path).unwrap_or_else(|e| panic!("missing test data {}: {e}", path.display()))
}

/// The spec the reference tensors were made with: (v - 127.5) / 127.5, 224x224.
fn reference_spec(layout: Layout) -> InputSpec {
    InputSpec {
        width: 224,
        height: 224,
        layout,
        mean: [0.5; 3],
        std: [0.5; 3],
        pixel_scale: 255.0,
    }
}

fn reference_tensor(name: &str) -> Vec<f32> {
    read(&format!("tensors/{name}.input.f32"))
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// (mean, max) absolute difference.
fn diff(a: &[f32], b: &[f32]) -> (f32, f32) {
    assert_eq!(a.len(), b.len());
    let sum: f32 = a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum();
    let max = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    (sum / a.len() as f32, max)
}

#[test]
fn matches_reference_tensors_within_filter_differences() {
    let mut pre = Preprocessor::new(&reference_spec(Layout::Nchw), ResizeMode::Stretch);
    let mut out = Vec::new();
    for (name, file) in [
        ("cat", "imagenet/cat.bmp"),
        ("parrot", "imagenet/parrot.jpg"),
        ("grace_hopper", "imagenet/grace_hopper.bmp"),
    ] {
        pre.run_bytes(&read(file), &DecodeLimits::default(), &mut out)
            .unwrap();
        let reference = reference_tensor(name);
        let (mean, max) = diff(&out, &reference);
        eprintln!("{name}: mean abs diff {mean:.4}, max {max:.4}");
    }
}
