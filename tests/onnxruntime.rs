//! The onnxruntime engine (issue 13), with the CPU library from PyPI that
//! bench/fetch-onnxruntime.sh installs under target/ (CI: .ci/run has python3-venv). If it
//! cannot be installed, these tests fail; none is skipped.
//!
//! What is checked: its features and logits on ../shared/testdata/tensors match the references
//! with tract's tolerances (tests/backbone.rs); a head trained on tract is accepted by the
//! onnxruntime engine after the agreement check and refused, with a message, when the check
//! cannot pass; the daemon runs end to end with `model.engine = "onnxruntime"` and names the
//! provider; `model.device = "cuda"` on this GPU-less machine, an impossible combination and a
//! missing library are configuration errors (exit 2) with their messages; a device taught on
//! tract and restarted on onnxruntime keeps serving its stored head and retrains on its samples.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use glimpse::learn::cross_engine::load_head_for;
use glimpse::learn::head::{Head, HeadError};
use glimpse::learn::train::{train, Dataset, TrainConfig};
use glimpse::vision::backbone::{Backbone, BackboneOptions};
use glimpse::vision::engine::{EngineKind, EngineOptions};
use glimpse::vision::manifest::ModelManifest;
use glimpse::vision::spec::Fingerprint;

mod common;

use common::daemon::{Daemon, DaemonConfig};
use common::{spawn_run, Mosquitto, Msg, Subscriber, WAIT};
use serde_json::Value;

const GLIMPSE: &str = env!("CARGO_BIN_EXE_glimpse");
const IMAGES: [&str; 3] = ["cat", "parrot", "grace_hopper"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn manifest_path() -> PathBuf {
    repo().join("models/mobilenet_v2_1.0_224.toml")
}

fn manifest() -> ModelManifest {
    ModelManifest::load(&manifest_path()).unwrap_or_else(|e| panic!("shipped manifest: {e}"))
}

fn options(engine: EngineKind) -> BackboneOptions {
    BackboneOptions {
        threads: 1,
        engine: EngineOptions {
            engine,
            onnxruntime_library: Some(common::onnxruntime_library().to_path_buf()),
            ..EngineOptions::default()
        },
    }
}

fn backbone(engine: EngineKind) -> &'static Backbone {
    static TRACT: OnceLock<Backbone> = OnceLock::new();
    static ORT: OnceLock<Backbone> = OnceLock::new();
    let cell = match engine {
        EngineKind::Tract => &TRACT,
        EngineKind::Onnxruntime => &ORT,
    };
    cell.get_or_init(|| {
        Backbone::load(&manifest(), &options(engine)).unwrap_or_else(|e| panic!("{engine}: {e}"))
    })
}

fn reference(name: &str, what: &str) -> Vec<f32> {
    let path = repo().join(format!("../shared/testdata/tensors/{name}.{what}.f32"));
    let bytes = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("reference tensor {} is missing: {e}", path.display()));
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// ||a - b|| / ||b||
fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

#[test]
fn onnxruntime_engine_reproduces_the_reference_tensors() {
    let ort = backbone(EngineKind::Onnxruntime);
    assert_eq!(ort.provider(), "CPUExecutionProvider");
    assert_eq!(ort.embedding_dim(), 1280);
    assert_eq!(ort.fingerprint().engine, "onnxruntime/cpu/fp32");
    assert!(ort
        .fingerprint()
        .same_model(backbone(EngineKind::Tract).fingerprint()));
    assert_ne!(ort.fingerprint(), backbone(EngineKind::Tract).fingerprint());
    assert_eq!(ort.labels().map(|l| l.len()), Some(1001));
    for name in IMAGES {
        let out = ort.run(&reference(name, "input")).unwrap();
        let e_feat = rel_l2(&out.embedding, &reference(name, "features"));
        let logits = out.logits.expect("the reference model has logits");
        let e_logits = rel_l2(&logits, &reference(name, "logits"));
        println!("{name}: features rel L2 {e_feat:.2e}, logits rel L2 {e_logits:.2e}");
        // The same tolerances as tract's test (tests/backbone.rs).
        assert!(e_feat < 1e-4, "{name}: features rel L2 error {e_feat}");
        assert!(e_logits < 1e-4, "{name}: logits rel L2 error {e_logits}");
    }
    let bad = ort.run(&[0.0; 10]).unwrap_err().to_string();
    assert!(bad.contains("10 values"), "{bad}");
}

/// A linear head trained on tract embeddings of the three reference inputs, each also slightly
/// scaled so every class has several samples, saved as if made with `fingerprint`.
fn tract_head(dir: &Path, fingerprint: &Fingerprint) -> PathBuf {
    let tract = backbone(EngineKind::Tract);
    let classes: Vec<String> = IMAGES.iter().map(|s| s.to_string()).collect();
    let (mut features, mut labels) = (Vec::new(), Vec::new());
    for (class, name) in IMAGES.iter().enumerate() {
        let input = reference(name, "input");
        for scale in [1.0f32, 0.9, 0.8, 1.1] {
            let scaled: Vec<f32> = input.iter().map(|v| v * scale).collect();
            features.extend(tract.run(&scaled).unwrap().embedding);
            labels.push(class);
        }
    }
    let data = Dataset {
        features: &features,
        dim: tract.embedding_dim(),
        labels: &labels,
        classes: &classes,
    };
    let head = train(&data, fingerprint, &TrainConfig::default(), &mut |_| {})
        .unwrap_or_else(|e| panic!("train: {e}"));
    let path = dir.join(format!("{}.glh", fingerprint.engine.replace('/', "-")));
    head.save(&path).unwrap();
    path
}

#[test]
fn a_head_trained_on_tract_is_accepted_by_onnxruntime_after_the_agreement_check() {
    let dir = tempfile::tempdir().unwrap();
    let path = tract_head(dir.path(), backbone(EngineKind::Tract).fingerprint());
    let ort = backbone(EngineKind::Onnxruntime);
    // The plain loader refuses it: the fingerprints differ by the engine.
    let plain = Head::load(&path, Some(ort.fingerprint())).unwrap_err();
    assert!(
        matches!(plain, HeadError::FingerprintMismatch { .. }),
        "{plain}"
    );

    let head = load_head_for(&path, ort).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        head.fingerprint(),
        ort.fingerprint(),
        "re-labelled for onnxruntime"
    );
    let tract_head = Head::load(&path, Some(backbone(EngineKind::Tract).fingerprint())).unwrap();
    for name in IMAGES {
        let input = reference(name, "input");
        let p_ort = head.predict(&ort.run(&input).unwrap().embedding).unwrap();
        let p_tract = tract_head
            .predict(&backbone(EngineKind::Tract).run(&input).unwrap().embedding)
            .unwrap();
        for (a, b) in p_ort.iter().zip(&p_tract) {
            assert!((a - b).abs() < 1e-3, "{name}: {p_ort:?} vs {p_tract:?}");
        }
    }
}

#[test]
fn a_head_whose_engine_cannot_be_checked_here_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let tract = backbone(EngineKind::Tract);
    // As if trained with CUDA: this machine cannot run CUDA to compare, so no agreement.
    let mut cuda = tract.fingerprint().clone();
    cuda.engine = "onnxruntime/cuda/fp32".into();
    let path = tract_head(dir.path(), &cuda);
    let err = load_head_for(&path, tract).unwrap_err();
    assert!(matches!(err, HeadError::EngineDisagrees { .. }), "{err}");
    let message = err.to_string();
    for part in ["onnxruntime/cuda/fp32", "tract/cpu/fp32", "retrain", "CUDA"] {
        assert!(message.contains(part), "`{part}` missing from: {message}");
    }
    // Another model altogether is the plain fingerprint refusal, no check attempted.
    let mut other = tract.fingerprint().clone();
    other.model_sha256 = "00".repeat(32);
    let path = tract_head(dir.path(), &other);
    let err = load_head_for(&path, tract).unwrap_err();
    assert!(
        matches!(err, HeadError::FingerprintMismatch { .. }),
        "{err}"
    );
}

fn check_config(config: &Path) -> Output {
    Command::new(GLIMPSE)
        .args(["check-config", "--config"])
        .arg(config)
        .current_dir(repo())
        .env_remove("ORT_DYLIB_PATH")
        .stdin(Stdio::null())
        .output()
        .expect("run glimpse check-config")
}

fn config(dir: &Path, model: &str, source: &str) -> PathBuf {
    config_with_broker(dir, model, source, "mqtt://127.0.0.1:1")
}

fn config_with_broker(dir: &Path, model: &str, source: &str, broker: &str) -> PathBuf {
    let text = format!(
        "state_dir = '{state}'\n[model]\nmanifest = '{manifest}'\nthreads = 1\n{model}\n\
         [source]\n{source}\n[mqtt]\nurl = '{broker}'\ndevice_id = 'ort'\n\
         stats_interval_s = 1\nreconnect_backoff_max_s = 1\n[log]\nlevel = 'info'\n",
        state = dir.join("state").display(),
        manifest = manifest_path().display(),
    );
    let path = dir.join("glimpse.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn cuda_without_a_gpu_is_a_config_error_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let lib = common::onnxruntime_library().display().to_string();
    let cfg = config(
        dir.path(),
        &format!("engine = 'onnxruntime'\ndevice = 'cuda'\nonnxruntime_library = '{lib}'"),
        "uri = 'file:/nonexistent.jpg'",
    );
    let out = check_config(&cfg);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("model.device = \"cuda\""), "{err}");
    assert!(err.contains("CUDA"), "{err}");
    assert!(
        err.contains("model.device = \"cpu\""),
        "says how to get going: {err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[test]
fn impossible_combinations_and_a_missing_library_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let source = "uri = 'file:/nonexistent.jpg'";
    let cfg = config(dir.path(), "engine = 'tract'\ndevice = 'tensorrt'", source);
    let out = check_config(&cfg);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("model.device"), "{}", stderr(&out));

    let cfg = config(
        dir.path(),
        "engine = 'onnxruntime'\ndevice = 'cuda'\nprecision = 'fp16'",
        source,
    );
    let out = check_config(&cfg);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("model.precision"), "{}", stderr(&out));

    let cfg = config(
        dir.path(),
        "engine = 'onnxruntime'\nonnxruntime_library = '/nonexistent/libonnxruntime.so.1'",
        source,
    );
    let out = check_config(&cfg);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("/nonexistent/libonnxruntime.so.1"), "{err}");
    assert!(err.contains("install onnxruntime >= 1.17"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[test]
fn the_daemon_runs_end_to_end_with_onnxruntime() {
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port(), &["glimpse/#"]);
    let dir = tempfile::tempdir().unwrap();
    let images = repo().join("../shared/testdata/imagenet");
    let files = std::fs::read_dir(&images)
        .expect("the shared imagenet test images")
        .filter(|e| {
            let p = e.as_ref().unwrap().path();
            matches!(
                p.extension().and_then(|x| x.to_str()),
                Some("jpg" | "jpeg" | "png" | "bmp")
            )
        })
        .count();
    assert!(files >= 5, "too few test images in {}", images.display());
    let lib = common::onnxruntime_library().display().to_string();
    let cfg = config_with_broker(
        dir.path(),
        &format!("engine = 'onnxruntime'\nonnxruntime_library = '{lib}'"),
        &format!(
            "uri = 'dir:{}'\nreplay_fps = 0.0\nreplay_loop = false",
            images.display()
        ),
        &broker.url(),
    );
    let log = dir.path().join("daemon.log");
    let mut child = spawn_run(GLIMPSE, &cfg, &log);
    let status = child.wait().expect("wait for the daemon");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "{status}:\n{text}");
    assert!(
        text.contains("engine onnxruntime/cpu/fp32, provider CPUExecutionProvider"),
        "the provider is logged at start:\n{text}"
    );
    sub.expect("glimpse/ort/availability", b"stopped");
    let predictions = sub.messages("glimpse/ort/prediction");
    assert_eq!(
        predictions.len(),
        files,
        "one prediction per image:\n{text}"
    );
}

fn json(msg: &Msg) -> Value {
    serde_json::from_slice(&msg.payload)
        .unwrap_or_else(|e| panic!("{} is not JSON ({e}): {}", msg.topic, msg.text()))
}

/// Publishes a command and waits for its ack (matched by id).
fn command(sub: &Subscriber, daemon: &Daemon, name: &str, id: &str, argument: &str) -> Value {
    sub.publish(
        &format!("glimpse/ort/cmd/{name}"),
        argument.replace("ID", id),
        false,
    );
    let ack = sub
        .wait_for(WAIT * 6, |m| {
            m.topic == "glimpse/ort/ack" && json(m)["id"] == id
        })
        .unwrap_or_else(|| panic!("no ack for {name} {id}:\n{}", daemon.log()));
    json(&ack)
}

#[test]
fn a_device_taught_on_tract_keeps_its_head_and_samples_on_onnxruntime() {
    let broker = Mosquitto::start();
    let sub = Subscriber::connect(broker.port(), &["glimpse/ort/#"]);
    let dir = tempfile::tempdir().unwrap();
    // One photo replayed in a loop keeps the daemon online and predicting.
    let idle = dir.path().join("idle");
    std::fs::create_dir_all(&idle).unwrap();
    std::fs::copy(
        &common::dataset_photos("rps", "rock", 1)[0],
        idle.join("rock.png"),
    )
    .unwrap();
    // Trained on command only (the harness's default), so the retrains below are the only ones.
    let config = DaemonConfig::new(dir.path(), &broker, "ort")
        .source_dir(&idle)
        .set("learning.retrain_quiet_ms", 0)
        .set("learning.imprint_after", 0);

    // 1. On tract: taught 4 photos of two classes over MQTT, then a retrain makes head v1.
    let mut daemon = Daemon::start(config.clone().set("model.engine", "tract"));
    sub.wait_for(WAIT * 6, |m| {
        m.topic == "glimpse/ort/availability" && m.payload == b"online"
    })
    .unwrap_or_else(|| panic!("the tract daemon never came online:\n{}", daemon.log()));
    let mut taught = 0;
    for class in ["rock", "paper"] {
        for photo in common::dataset_photos("rps", class, 4) {
            let before = sub.messages("glimpse/ort/ack").len();
            let topic = format!("glimpse/ort/sample/{class}");
            sub.publish(&topic, std::fs::read(&photo).unwrap(), false);
            common::wait_until_within("a sample's ack", WAIT * 6, || {
                sub.messages("glimpse/ort/ack").len() > before
            });
            let ack = json(&sub.messages("glimpse/ort/ack")[before]);
            assert_eq!(ack["status"], "accepted", "{ack}");
            taught += 1;
        }
    }
    let ack = command(&sub, &daemon, "retrain", "tract-1", r#"{"id": "ID"}"#);
    assert_eq!(ack["status"], "accepted", "{ack}");
    assert_eq!(ack["head_version"], 1, "{ack}");
    daemon.stop();

    // 2. The same state on onnxruntime: the samples are re-keyed, head v1 is restored after
    //    the agreement check and serves predictions, and a retrain trains on the old samples.
    sub.clear();
    daemon.restart(config.set("model.engine", "onnxruntime").set(
        "model.onnxruntime_library",
        common::onnxruntime_library().display().to_string(),
    ));
    let prediction = sub
        .wait_for(WAIT * 6, |m| m.topic == "glimpse/ort/prediction")
        .unwrap_or_else(|| panic!("no prediction on onnxruntime:\n{}", daemon.log()));
    let prediction = json(&prediction);
    assert_eq!(
        prediction["head_version"], 1,
        "the stored head serves: {prediction}"
    );
    assert!(
        matches!(prediction["label"].as_str(), Some("rock" | "paper")),
        "{prediction}"
    );
    assert!(
        sub.messages("glimpse/ort/ack")
            .iter()
            .all(|m| json(m)["command"] != "restore_head"),
        "the head was not refused:\n{}",
        daemon.log()
    );
    let ack = command(
        &sub,
        &daemon,
        "retrain",
        "ort-1",
        r#"{"id": "ID", "force": true}"#,
    );
    assert_eq!(ack["status"], "accepted", "{ack}\n{}", daemon.log());
    assert_eq!(ack["head_version"], 2, "{ack}");
    let report = sub
        .wait_for(WAIT, |m| {
            m.topic == "glimpse/ort/report" && json(m)["version"] == 2
        })
        .unwrap_or_else(|| panic!("no report of v2:\n{}", daemon.log()));
    let report = json(&report);
    let per_class: u64 = report["samples_per_class"]
        .as_object()
        .expect("samples_per_class")
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(
        per_class, taught,
        "every sample taught on tract is trained on: {report}"
    );
    daemon.stop();
    let log = daemon.log();
    // What the check cost (it loads tract beside onnxruntime), for docs/learning.md.
    for line in log.lines().filter(|l| l.contains("agreement check")) {
        println!("{line}");
    }
    for part in [
        "samples were embedded with engine tract/cpu/fp32",
        "was trained with engine tract/cpu/fp32",
        "agreement check against tract/cpu/fp32: agree",
    ] {
        assert!(log.contains(part), "`{part}` missing from the log:\n{log}");
    }
}
