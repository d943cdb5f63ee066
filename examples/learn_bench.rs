//! Rough costs of teaching on this machine: one backbone inference vs one full sample ingest
//! (decode a 640x480 JPEG, embed, thumbnail, SQLite commit with synchronous=FULL), and a
//! retrain on 3,000 stored samples (read from the store + train). Run with --release for
//! board-like numbers: `cargo run --release --example learn_bench`.

use std::sync::Arc;
use std::time::Instant;

use glimpse::learn::cache::content_hash;
use glimpse::learn::thumbnail::jpeg_thumbnail;
use glimpse::learn::train::{train_with_split, Dataset, TrainConfig};
use glimpse::store::{NewSample, Store};
use glimpse::vision::backbone::{Backbone, BackboneOptions};
use glimpse::vision::decode::{decode_image, synthetic_jpeg, DecodeLimits};
use glimpse::vision::embedder::Embedder;
use glimpse::vision::manifest::ModelManifest;
use glimpse::vision::spec::ResizeMode;

fn main() -> anyhow::Result<()> {
    let manifest = ModelManifest::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/models/mobilenet_v2_1.0_224.toml"
    )))?;
    let backbone = Arc::new(Backbone::load(
        &manifest,
        &BackboneOptions {
            threads: 1,
            ..Default::default()
        },
    )?);
    let mut embedder = Embedder::new(
        backbone.clone(),
        ResizeMode::Stretch,
        DecodeLimits::default(),
    );
    let dir = tempfile::tempdir()?;
    let mut store = Store::open_in(dir.path())?;
    let jpeg = synthetic_jpeg(640, 480, 90)?;
    let image = decode_image(&jpeg, &DecodeLimits::default())?;
    embedder.embed_image(&image)?; // warm up
    let n = 10;
    let started = Instant::now();
    for _ in 0..n {
        embedder.embed_image(&image)?;
    }
    let infer = started.elapsed() / n;
    let fp = backbone.fingerprint().to_string();
    let started = Instant::now();
    for i in 0..n {
        let mut bytes = jpeg.clone();
        bytes.extend_from_slice(&i.to_le_bytes()); // distinct content
        let hash = content_hash(&bytes);
        let img = decode_image(&jpeg, &DecodeLimits::default())?;
        let (out, _) = embedder.embed_image(&img)?;
        let thumb = jpeg_thumbnail(&img, 96);
        store.insert_sample(&NewSample {
            id: &hash,
            label: "a",
            embedding: &out.embedding,
            source: "image",
            content_hash: &hash,
            thumbnail: thumb.as_deref(),
            fingerprint: &fp,
        })?;
    }
    let ingest = started.elapsed() / n;
    println!("backbone (preprocess + inference), 640x480: {infer:?}");
    println!("ingest (decode + embed + thumbnail + commit), 640x480 JPEG: {ingest:?}");

    // 3,000 stored samples of 10 classes: class-dependent means plus noise.
    let dim = backbone.fingerprint().dim;
    let mut rng = 12345u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % 1000) as f32 / 1000.0
    };
    let started = Instant::now();
    for i in 0..3000usize {
        let class = i % 10;
        let e: Vec<f32> = (0..dim)
            .map(|j| if j % 10 == class { 1.0 } else { 0.0 } + next())
            .collect();
        let hash = format!("s{i}");
        store.insert_sample(&NewSample {
            id: &hash,
            label: &format!("c{class}"),
            embedding: &e,
            source: "image",
            content_hash: &hash,
            thumbnail: None,
            fingerprint: &fp,
        })?;
    }
    println!(
        "3,000 sample commits (one transaction each): {:?}",
        started.elapsed()
    );
    let started = Instant::now();
    let samples = store.samples(&fp)?;
    let classes: Vec<String> = (0..10).map(|c| format!("c{c}")).collect();
    let labels: Vec<usize> = samples
        .iter()
        .map(|s| classes.iter().position(|c| *c == s.label).unwrap_or(0))
        .collect();
    let features: Vec<f32> = samples.iter().flat_map(|s| s.embedding.clone()).collect();
    let read = started.elapsed();
    let data = Dataset {
        features: &features,
        dim,
        labels: &labels,
        classes: &classes,
    };
    let hashes: Vec<&str> = samples.iter().map(|s| s.content_hash.as_str()).collect();
    let (train, val) = glimpse::learn::gate::holdout_split(&hashes, &labels, 0.2, 123);
    let head = train_with_split(
        &data,
        &train,
        &val,
        backbone.fingerprint(),
        &TrainConfig::default(),
        &mut |_| {},
    )?;
    println!(
        "retrain on {} samples: read {read:?}, total {:?} (val accuracy {:?})",
        samples.len(),
        started.elapsed(),
        head.report().validation.as_ref().map(|v| v.accuracy)
    );
    Ok(())
}
