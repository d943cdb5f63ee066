//! Tunes and times the trainable head on cached embeddings (not part of the test suite).
//!
//! Reads `DIR/{rps,sign_digits}.{f32,labels,classes}` (row-major little-endian f32 1280-d
//! MobileNetV2 `features`, u32 labels, one class name per line; DIR defaults to /tmp/learn_emb),
//! then for every L2 strength given reports the validation accuracy for split seed 123 and the
//! mean / min over seeds 0..SEEDS, and finally times training on 3000 x 1280 embeddings.
//!
//! `cargo run --release --example tune_head -- [DIR] [SEEDS] [l2,l2,...] [linear|mlp] [patience]`

use std::time::Instant;

use glimpse::learn::train::{train, Dataset, HeadKind, TrainConfig};
use glimpse::vision::spec::Fingerprint;

/// CPU time this thread has run, in ms (Linux `schedstat`; 0 elsewhere). The build machines are
/// shared and noisy, so CPU time says more about the trainer than wall time.
fn thread_cpu_ms() -> f64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |ns| ns / 1e6)
}

struct Cached {
    name: String,
    features: Vec<f32>,
    labels: Vec<usize>,
    classes: Vec<String>,
}

fn load(dir: &str, name: &str) -> Result<Cached, String> {
    let read = |ext: &str| {
        let path = format!("{dir}/{name}.{ext}");
        std::fs::read(&path).map_err(|e| format!("{path}: {e}"))
    };
    let le = |b: &[u8]| [b[0], b[1], b[2], b[3]];
    let features = read("f32")?
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(le(b)))
        .collect();
    let labels = read("labels")?
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes(le(b)) as usize)
        .collect();
    let classes = String::from_utf8_lossy(&read("classes")?)
        .lines()
        .map(String::from)
        .collect();
    Ok(Cached {
        name: name.into(),
        features,
        labels,
        classes,
    })
}

fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = args.first().map_or("/tmp/learn_emb", String::as_str);
    let seeds: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(20);
    let l2s: Vec<Option<f32>> = match args.get(2) {
        Some(list) => list.split(',').map(|v| v.parse().ok()).collect(),
        None => vec![None],
    };
    let patience: Option<usize> = args.get(4).and_then(|s| s.parse().ok());
    let kind = match args.get(3).map(String::as_str) {
        Some("mlp") => HeadKind::Mlp { hidden: 128 },
        _ => HeadKind::Linear,
    };
    let dim = 1280;
    let fp = Fingerprint {
        model_sha256: "0".repeat(64),
        embedding_tensor: "features".into(),
        dim,
        engine: glimpse::vision::spec::DEFAULT_ENGINE.into(),
    };
    let sets = [load(dir, "rps")?, load(dir, "sign_digits")?];

    for l2 in &l2s {
        for set in &sets {
            let data = Dataset {
                features: &set.features,
                dim,
                labels: &set.labels,
                classes: &set.classes,
            };
            let run = |seed| {
                let cfg = TrainConfig {
                    kind,
                    l2: *l2,
                    seed,
                    patience,
                    ..TrainConfig::default()
                };
                let head = train(&data, &fp, &cfg, &mut |_| {}).map_err(|e| e.to_string())?;
                let r = head.report();
                let acc = r.validation.as_ref().map_or(f32::NAN, |v| v.accuracy);
                Ok::<_, String>((acc, r.iterations, r.duration_ms, r.stop_reason))
            };
            let (acc123, it, ms, stop) = run(123)?;
            let mut accs = Vec::new();
            for seed in 0..seeds {
                accs.push(run(seed)?.0);
            }
            let mean = accs.iter().sum::<f32>() / accs.len().max(1) as f32;
            let min = accs.iter().copied().fold(f32::INFINITY, f32::min);
            println!(
                "l2 {:>8} {:<12} seed123 {acc123:.4} ({it} it, {ms} ms, {stop:?})  seeds 0..{seeds}: mean {mean:.4} min {min:.4}",
                l2.map_or("default".into(), |v| v.to_string()),
                set.name
            );
        }
    }

    // Timing: sign_digits replicated to 3000 rows with small deterministic jitter, 10 classes.
    let src = &sets[1];
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for r in 0..3000 {
        let i = r % src.labels.len();
        let row = &src.features[i * dim..(i + 1) * dim];
        x.extend(
            row.iter()
                .enumerate()
                .map(|(j, v)| v * (1.0 + 0.01 * (((r * 31 + j * 17) % 13) as f32 - 6.0) / 6.0)),
        );
        y.push(src.labels[i]);
    }
    let data = Dataset {
        features: &x,
        dim,
        labels: &y,
        classes: &src.classes,
    };
    for split in [0.2f32, 0.0] {
        let cfg = TrainConfig {
            kind,
            validation_split: split,
            patience,
            ..TrainConfig::default()
        };
        let (mut wall, mut cpu) = (Vec::new(), Vec::new());
        let mut iterations = 0;
        let mut stop = None;
        for _ in 0..5 {
            let (t, c) = (Instant::now(), thread_cpu_ms());
            let head = train(&data, &fp, &cfg, &mut |_| {}).map_err(|e| e.to_string())?;
            wall.push(t.elapsed().as_secs_f64() * 1e3);
            cpu.push(thread_cpu_ms() - c);
            iterations = head.report().iterations;
            stop = Some(head.report().stop_reason);
        }
        wall.sort_by(f64::total_cmp);
        cpu.sort_by(f64::total_cmp);
        println!(
            "3000 x 1280, 10 classes, validation_split {split}: {iterations} iterations ({stop:?}), CPU median {:.0} ms (min {:.0}), wall median {:.0} ms (min {:.0})",
            cpu[2], cpu[0], wall[2], wall[0]
        );
    }
    Ok(())
}
