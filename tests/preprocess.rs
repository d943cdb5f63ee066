//! The preprocessing pipeline against the shared reference tensors (../shared/testdata), and the
//! layout contract between NCHW and NHWC output.

use std::path::PathBuf;

use glimpse::vision::preprocess::{decode_image, DecodeLimits, PreprocessError, Preprocessor};
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

const REFERENCES: [(&str, &str); 3] = [
    ("cat", "imagenet/cat.bmp"),
    ("parrot", "imagenet/parrot.jpg"),
    ("grace_hopper", "imagenet/grace_hopper.bmp"),
];

/// Measured: mean abs diff 0.0011 (cat), 0.0001 (parrot), 0.0013 (grace_hopper), max 0.0078 =
/// one 8-bit level (1/127.5) for all three: the reference was resized like Pillow's bilinear.
/// The bounds leave room for a filter update, not for a wrong filter, crop or channel order.
#[test]
fn matches_reference_tensors_within_filter_differences() {
    let mut pre = Preprocessor::new(&reference_spec(Layout::Nchw), ResizeMode::Stretch);
    let mut out = Vec::new();
    for (name, file) in REFERENCES {
        pre.run_bytes(&read(file), &DecodeLimits::default(), &mut out)
            .unwrap();
        let (mean, max) = diff(&out, &reference_tensor(name));
        eprintln!("{name}: mean abs diff {mean:.4}, max {max:.4}");
        assert!(mean < 0.005, "{name}: mean abs diff {mean} vs reference");
        assert!(max < 0.05, "{name}: max abs diff {max} vs reference");
    }
}

#[test]
fn nhwc_is_the_transpose_of_nchw_on_a_real_photo() {
    let image = decode_image(&read("imagenet/parrot.jpg"), &DecodeLimits::default()).unwrap();
    let (mut nchw, mut nhwc) = (Vec::new(), Vec::new());
    Preprocessor::new(&reference_spec(Layout::Nchw), ResizeMode::CenterCrop)
        .run(&image, &mut nchw)
        .unwrap();
    Preprocessor::new(&reference_spec(Layout::Nhwc), ResizeMode::CenterCrop)
        .run(&image, &mut nhwc)
        .unwrap();
    let plane = 224 * 224;
    let transposed: Vec<f32> = (0..plane)
        .flat_map(|i| [nchw[i], nchw[plane + i], nchw[2 * plane + i]])
        .collect();
    assert_eq!(nhwc, transposed);
}

#[test]
fn every_shared_photo_decodes_at_its_header_size() {
    let expected = [
        ("bird.bmp", (512, 343)),
        ("cat.bmp", (512, 341)),
        ("dragonfly.bmp", (512, 418)),
        ("grace_hopper.bmp", (512, 600)),
        ("hot_dog.jpg", (512, 384)),
        ("kite_and_cold.jpg", (1352, 900)),
        ("missvickie_potato_chips.bmp", (500, 500)),
        ("owl.jpg", (512, 384)),
        ("parrot.jpg", (512, 929)),
        ("sunflower.bmp", (512, 340)),
    ];
    for (file, size) in expected {
        let image = decode_image(&read(&format!("imagenet/{file}")), &DecodeLimits::default())
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(image.dimensions(), size, "{file}");
    }
}

#[test]
fn real_jpeg_cut_in_half_is_corrupt() {
    let jpeg = read("imagenet/parrot.jpg");
    let err = decode_image(&jpeg[..jpeg.len() / 2], &DecodeLimits::default()).unwrap_err();
    assert!(
        matches!(&err, PreprocessError::Corrupt(m) if m.contains("truncated")),
        "{err}"
    );
    let bmp = read("imagenet/cat.bmp");
    let err = decode_image(&bmp[..bmp.len() / 2], &DecodeLimits::default()).unwrap_err();
    assert!(matches!(err, PreprocessError::Corrupt(_)), "{err}");
}
