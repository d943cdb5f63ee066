//! EXIF orientation, all eight values, in every decode path: the library decoder (PNG exactly,
//! JPEG within compression noise), `glimpse classify` (the real binary), and the daemon's sample
//! ingest over a real Mosquitto and its `dir:` replay source.
//!
//! The oriented images are made here from a real photo (grace_hopper.bmp, 512x600 portrait): the
//! upright pixels are stored the way a camera with orientation N stores them (the mapping is
//! written out below, independently of image's own `apply_orientation`), and the Orientation tag
//! is written by hand as a one-entry TIFF IFD. No image file is kept in git.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::daemon::{Daemon, DaemonConfig, GLIMPSE};
use common::{Mosquitto, Subscriber};
use image::codecs::jpeg::JpegEncoder;
use image::codecs::png::PngEncoder;
use image::{ExtendedColorType, ImageEncoder, RgbImage};

use glimpse::vision::preprocess::{decode_image, DecodeLimits};

const DEVICE: &str = "exif1";
/// ImageNet index and name of the photo's reference top-1 (expected.tsv: p = 0.93 upright).
const UNIFORM: (u64, &str) = (653, "military uniform");

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn upright_photo() -> RgbImage {
    let path = repo().join("../shared/testdata/imagenet/grace_hopper.bmp");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let image = decode_image(&bytes, &DecodeLimits::default()).expect("decode the photo");
    assert_eq!(
        image.dimensions(),
        (512, 600),
        "portrait, so rotations show"
    );
    image
}

/// The pixels a camera stores for an `upright` scene when it tags them with `orientation`
/// (EXIF 2.3, tag 0x0112: where the stored 0th row and 0th column are in the upright view).
fn stored_for(upright: &RgbImage, orientation: u16) -> RgbImage {
    let (w, h) = upright.dimensions();
    let transposed = orientation >= 5;
    let (sw, sh) = if transposed { (h, w) } else { (w, h) };
    RgbImage::from_fn(sw, sh, |x, y| {
        let (ux, uy) = match orientation {
            1 => (x, y),
            2 => (w - 1 - x, y),         // mirrored left-right
            3 => (w - 1 - x, h - 1 - y), // upside down
            4 => (x, h - 1 - y),         // mirrored top-bottom
            5 => (y, x),                 // transposed
            6 => (w - 1 - y, x),         // stored turned 90 counter-clockwise (phone upright)
            7 => (w - 1 - y, h - 1 - x), // transversed
            8 => (y, h - 1 - x),         // stored turned 90 clockwise
            _ => unreachable!(),
        };
        *upright.get_pixel(ux, uy)
    })
}

/// A big-endian TIFF block holding one IFD with one entry: Orientation (0x0112, SHORT, 1 value).
fn exif_orientation(orientation: u16) -> Vec<u8> {
    let mut tiff = b"MM\x00\x2a".to_vec();
    tiff.extend_from_slice(&8u32.to_be_bytes()); // IFD0 right after the header
    tiff.extend_from_slice(&1u16.to_be_bytes()); // one entry
    tiff.extend_from_slice(&0x0112u16.to_be_bytes());
    tiff.extend_from_slice(&3u16.to_be_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_be_bytes()); // one value, stored inline (left-justified)
    tiff.extend_from_slice(&orientation.to_be_bytes());
    tiff.extend_from_slice(&[0, 0]);
    tiff.extend_from_slice(&0u32.to_be_bytes()); // no next IFD
    tiff
}

/// JPEG (quality 95) with an APP1 Exif segment, as a phone writes it.
fn oriented_jpeg(upright: &RgbImage, orientation: u16) -> Vec<u8> {
    let stored = stored_for(upright, orientation);
    let mut out = Vec::new();
    let mut encoder = JpegEncoder::new_with_quality(&mut out, 95);
    encoder
        .set_exif_metadata(exif_orientation(orientation))
        .unwrap();
    encoder
        .write_image(
            stored.as_raw(),
            stored.width(),
            stored.height(),
            ExtendedColorType::Rgb8,
        )
        .unwrap();
    assert!(out.windows(6).any(|w| w == b"Exif\0\0"), "APP1 written");
    out
}

/// Lossless PNG with an eXIf chunk.
fn oriented_png(upright: &RgbImage, orientation: u16) -> Vec<u8> {
    let stored = stored_for(upright, orientation);
    let mut out = Vec::new();
    let mut encoder = PngEncoder::new(&mut out);
    encoder
        .set_exif_metadata(exif_orientation(orientation))
        .unwrap();
    encoder
        .write_image(
            stored.as_raw(),
            stored.width(),
            stored.height(),
            ExtendedColorType::Rgb8,
        )
        .unwrap();
    assert!(out.windows(4).any(|w| w == b"eXIf"), "eXIf written");
    out
}

/// Mean absolute difference per channel value, in 8-bit levels.
fn mean_abs_diff(a: &RgbImage, b: &RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let sum: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| u64::from(x.abs_diff(*y)))
        .sum();
    sum as f64 / a.as_raw().len() as f64
}

#[test]
fn decoder_turns_all_eight_orientations_upright() {
    let upright = upright_photo();
    let limits = DecodeLimits::default();
    // The metric tells orientations apart: the photo against itself mirrored is far off.
    let mirrored = stored_for(&upright, 2);
    assert!(mean_abs_diff(&upright, &mirrored) > 20.0);
    for orientation in 1..=8 {
        let png = decode_image(&oriented_png(&upright, orientation), &limits).unwrap();
        assert!(
            png == upright,
            "PNG orientation {orientation}: not the upright pixels"
        );
        let jpeg = decode_image(&oriented_jpeg(&upright, orientation), &limits).unwrap();
        assert_eq!(
            jpeg.dimensions(),
            (512, 600),
            "JPEG orientation {orientation}"
        );
        let diff = mean_abs_diff(&jpeg, &upright);
        assert!(
            diff < 3.0,
            "JPEG orientation {orientation}: {diff:.2} levels from upright"
        );
    }
}

#[test]
fn damaged_exif_is_ignored_not_fatal() {
    let upright = upright_photo();
    let mut jpeg = oriented_jpeg(&upright, 6);
    // Point IFD0 far past the end of the block: the orientation cannot be read.
    let at = jpeg.windows(6).position(|w| w == b"Exif\0\0").unwrap() + 6 + 4;
    jpeg[at..at + 4].copy_from_slice(&0xFFFF_0000u32.to_be_bytes());
    let image = decode_image(&jpeg, &DecodeLimits::default()).expect("still decodes");
    assert_eq!(image.dimensions(), (600, 512), "used as stored");
}

/// Writes the eight oriented JPEGs into `dir` as `o1.jpg` .. `o8.jpg`.
fn write_oriented_jpegs(dir: &Path) -> Vec<PathBuf> {
    let upright = upright_photo();
    (1..=8)
        .map(|orientation| {
            let path = dir.join(format!("o{orientation}.jpg"));
            std::fs::write(&path, oriented_jpeg(&upright, orientation)).unwrap();
            path
        })
        .collect()
}

#[test]
fn classify_sees_every_orientation_upright() {
    let dir = tempfile::tempdir().unwrap();
    let files = write_oriented_jpegs(dir.path());
    let output = Command::new(GLIMPSE)
        .args(["classify", "--json", "-k", "1", "--model"])
        .arg(repo().join("models/mobilenet_v2_1.0_224.toml"))
        .args(&files)
        .output()
        .expect("run glimpse classify");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 8);
    for line in &lines {
        let top = &line["top_k"][0];
        assert_eq!(
            (top["index"].as_u64(), top["label"].as_str()),
            (Some(UNIFORM.0), Some(UNIFORM.1)),
            "{line}"
        );
        assert!(top["score"].as_f64().unwrap() > 0.8, "{line}");
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

#[test]
fn daemon_replays_and_learns_every_orientation_upright() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("frames");
    std::fs::create_dir(&source).unwrap();
    let files = write_oriented_jpegs(&source);
    let broker = Mosquitto::start();
    let topic = |kind: &str| format!("glimpse/{DEVICE}/{kind}");
    let sub = Subscriber::connect(
        broker.port(),
        &[&topic("prediction"), &topic("ack"), &topic("availability")],
    );
    let daemon = Daemon::start(
        DaemonConfig::new(dir.path(), &broker, DEVICE)
            .source_dir(&source)
            .set("source.replay_fps", 4),
    );

    // dir: source: the eight files replayed (in name order, looping), each predicted as the
    // upright photo by the backbone's ImageNet classifier (no head is trained yet).
    let deadline = Instant::now() + Duration::from_secs(120);
    while sub.messages(&topic("prediction")).len() < 8 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let predictions = sub.messages(&topic("prediction"));
    assert!(predictions.len() >= 8, "log:\n{}", daemon.log());
    for msg in &predictions {
        let prediction: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
        assert_eq!(
            prediction["imagenet_top_k"][0]["label"].as_str(),
            Some(UNIFORM.1),
            "frame {}: {prediction}",
            prediction["frame_id"]
        );
    }

    // Samples over MQTT: all eight stored, with embeddings of the same upright photo.
    for path in &files {
        sub.publish(&topic("sample/hopper"), std::fs::read(path).unwrap(), false);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while sub.messages(&topic("ack")).len() < 8 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let acks: Vec<String> = sub
        .messages(&topic("ack"))
        .iter()
        .map(|m| m.text())
        .collect();
    assert_eq!(acks.len(), 8, "acks {acks:?}\nlog:\n{}", daemon.log());
    for ack in &acks {
        assert!(ack.contains("\"accepted\""), "{ack}");
    }
    drop(daemon);

    let db = rusqlite::Connection::open(dir.path().join("state/glimpse.db")).unwrap();
    let mut statement = db
        .prepare("SELECT embedding, thumbnail FROM samples ORDER BY rowid")
        .unwrap();
    let rows: Vec<(Vec<f32>, Vec<u8>)> = statement
        .query_map([], |row| {
            let blob: Vec<u8> = row.get(0)?;
            let embedding = blob
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            Ok((embedding, row.get(1)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len(), 8);
    for (i, (embedding, thumbnail)) in rows.iter().enumerate() {
        // Compression noise only: a sideways or mirrored photo embeds measurably elsewhere.
        let similarity = cosine(embedding, &rows[0].0);
        assert!(similarity > 0.97, "sample {i}: cosine {similarity}");
        let thumb = image::load_from_memory(thumbnail).unwrap();
        assert!(
            thumb.height() > thumb.width(),
            "sample {i}: thumbnail {}x{} is not portrait",
            thumb.width(),
            thumb.height()
        );
    }
}
