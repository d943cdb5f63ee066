//! The tract backbone against the reference tensors in ../shared/testdata/tensors (onnxruntime
//! outputs for exact inputs), the "auto" embedding on the zoo-style model, threading, and the
//! load errors a misconfigured manifest must produce.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use glimpse::vision::backbone::{set_threads, Backbone, BackboneError, BackboneOptions};
use glimpse::vision::engine::{EngineOptions, Precision};
use glimpse::vision::labels::top_k;
use glimpse::vision::manifest::ModelManifest;

const IMAGES: [&str; 3] = ["cat", "parrot", "grace_hopper"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn shared(rel: &str) -> PathBuf {
    repo().join("../shared").join(rel)
}

/// Raw little-endian f32 file; a missing file fails the test with its path.
fn read_f32(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path)
        .unwrap_or_else(|e| panic!("reference tensor {} is missing: {e}", path.display()));
    assert_eq!(bytes.len() % 4, 0, "{} is not f32 data", path.display());
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn reference(name: &str, what: &str) -> Vec<f32> {
    read_f32(&shared(&format!("testdata/tensors/{name}.{what}.f32")))
}

/// ||a - b|| / ||b||
fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

fn argmax(v: &[f32]) -> usize {
    top_k(v, 1)[0].0
}

fn manifest(file: &str) -> ModelManifest {
    ModelManifest::load(&repo().join("models").join(file))
        .unwrap_or_else(|e| panic!("shipped manifest {file}: {e}"))
}

/// The reference backbone, loaded once and shared by the tests (it is Sync).
fn reference_backbone() -> &'static Backbone {
    static BACKBONE: OnceLock<Backbone> = OnceLock::new();
    BACKBONE.get_or_init(|| {
        Backbone::load(
            &manifest("mobilenet_v2_1.0_224.toml"),
            &BackboneOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    })
}

/// A manifest in a temp folder: the shipped reference manifest with `edit` applied and the
/// model/labels paths made absolute.
fn edited_manifest(dir: &Path, edit: impl Fn(String) -> String) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("models/mobilenet_v2_1.0_224.toml")).unwrap();
    let model = shared("models/mobilenet_v2_1.0_224.onnx");
    let labels = repo().join("models/imagenet_labels.txt");
    let text = text
        .replace(
            "\"../../shared/models/mobilenet_v2_1.0_224.onnx\"",
            &format!("{:?}", model.display().to_string()),
        )
        .replace(
            "\"imagenet_labels.txt\"",
            &format!("{:?}", labels.display().to_string()),
        );
    let path = dir.join("edited.toml");
    std::fs::write(&path, edit(text)).unwrap();
    path
}

fn load_edited(
    edit: impl Fn(String) -> String,
) -> (tempfile::TempDir, Result<Backbone, BackboneError>) {
    let dir = tempfile::tempdir().unwrap();
    let path = edited_manifest(dir.path(), edit);
    let manifest = ModelManifest::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let result = Backbone::load(&manifest, &BackboneOptions::default());
    (dir, result)
}

#[test]
fn reference_model_reproduces_onnxruntime_outputs() {
    let backbone = reference_backbone();
    assert_eq!(backbone.embedding_dim(), 1280);
    assert_eq!(backbone.fingerprint().embedding_tensor, "features");
    assert_eq!(
        backbone.fingerprint().model_sha256,
        "6fa988279c988d21a768534e480c6d6763f4f84caf3230ac1f323e24b2e0a956"
    );
    assert_eq!(backbone.labels().map(|l| l.len()), Some(1001));
    for name in IMAGES {
        let out = backbone.run(&reference(name, "input")).unwrap();
        let features = reference(name, "features");
        let logits = reference(name, "logits");
        let got_logits = out.logits.expect("the reference model has logits");
        let e_feat = rel_l2(&out.embedding, &features);
        let e_logits = rel_l2(&got_logits, &logits);
        println!("{name}: features rel L2 {e_feat:.2e}, logits rel L2 {e_logits:.2e}");
        assert!(e_feat < 1e-4, "{name}: features rel L2 error {e_feat}");
        assert!(e_logits < 1e-4, "{name}: logits rel L2 error {e_logits}");
        assert_eq!(argmax(&got_logits), argmax(&logits), "{name}: top-1");
    }
}

#[test]
fn reference_top1_names_are_the_expected_classes() {
    let backbone = reference_backbone();
    let labels = backbone.labels().unwrap();
    let out = backbone.run(&reference("parrot", "input")).unwrap();
    let top = argmax(out.logits.as_deref().unwrap());
    assert_eq!(labels.name(top), Some("macaw"));
}

#[test]
fn zoo_style_model_finds_its_embedding_automatically() {
    let backbone = Backbone::load(
        &manifest("mobilenet_v2_zoo_style.toml"),
        &BackboneOptions::default(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(backbone.embedding_dim(), 1280);
    // The Flatten output that feeds the final Gemm.
    assert_eq!(backbone.fingerprint().embedding_tensor, "472");
    assert_eq!(backbone.labels().map(|l| l.len()), Some(1000));
    let spec = backbone.input_spec().clone();
    for name in IMAGES {
        // The shared input is (v - 127.5) / 127.5: map it back to v, then normalize the
        // torchvision way for this model.
        let tf_input = reference(name, "input");
        let plane = tf_input.len() / 3;
        let zoo_input: Vec<f32> = tf_input
            .iter()
            .enumerate()
            .map(|(i, x)| {
                let c = i / plane;
                let v = x * 127.5 + 127.5;
                (v / spec.pixel_scale - spec.mean[c]) / spec.std[c]
            })
            .collect();
        let out = backbone.run(&zoo_input).unwrap();
        let reference_top1 = argmax(&reference(name, "logits"));
        let zoo_top1 = argmax(out.logits.as_deref().unwrap());
        assert_eq!(zoo_top1 + 1, reference_top1, "{name}: top-1 class");
        assert_eq!(
            backbone.labels().unwrap().name(zoo_top1),
            reference_backbone().labels().unwrap().name(reference_top1),
        );
        let e = rel_l2(&out.embedding, &reference(name, "features"));
        assert!(
            e < 1e-3,
            "{name}: zoo-style embedding differs from the features by {e}"
        );
    }
}

#[test]
fn auto_embedding_on_the_reference_model_is_its_feature_vector() {
    let (_dir, result) =
        load_edited(|t| t.replace("embedding = \"features\"", "embedding = \"auto\""));
    let backbone = result.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(backbone.embedding_dim(), 1280);
    assert_ne!(backbone.fingerprint().embedding_tensor, "features");
    let out = backbone.run(&reference("cat", "input")).unwrap();
    let e = rel_l2(&out.embedding, &reference("cat", "features"));
    assert!(e < 1e-5, "auto embedding vs features: {e}");
}

#[test]
fn threads_give_the_same_outputs() {
    let input = reference("grace_hopper", "input");
    let single = reference_backbone().run(&input).unwrap();
    let manifest = manifest("mobilenet_v2_1.0_224.toml");
    let own_pool = Backbone::load(
        &manifest,
        &BackboneOptions {
            threads: 2,
            ..Default::default()
        },
    )
    .unwrap();
    let pooled = own_pool.run(&input).unwrap();
    set_threads(2);
    let global = reference_backbone().run(&input);
    set_threads(1);
    let global = global.unwrap();
    for out in [&pooled, &global] {
        assert!(rel_l2(&out.embedding, &single.embedding) < 1e-6);
        let l = out.logits.as_deref().unwrap();
        assert!(rel_l2(l, single.logits.as_deref().unwrap()) < 1e-6);
    }
}

#[test]
fn backbone_runs_from_several_threads_at_once() {
    let backbone = reference_backbone();
    let input = reference("cat", "input");
    let expected = backbone.run(&input).unwrap();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..2).map(|_| s.spawn(|| backbone.run(&input))).collect();
        for h in handles {
            assert_eq!(h.join().unwrap().unwrap(), expected);
        }
    });
}

#[test]
fn wrong_input_length_is_an_error() {
    let err = reference_backbone()
        .run(&[0.0; 10])
        .unwrap_err()
        .to_string();
    assert!(err.contains("10") && err.contains("150528"), "{err}");
}

#[test]
fn unknown_tensor_names_the_manifest_model_and_outputs() {
    let (dir, result) = load_edited(|t| t.replace("\"features\"", "\"feature_vector\""));
    let err = result.unwrap_err().to_string();
    println!("{err}");
    assert!(err.contains("`feature_vector`"), "{err}");
    assert!(err.contains("outputs.embedding"), "{err}");
    assert!(err.contains("mobilenet_v2_1.0_224.onnx"), "{err}");
    assert!(err.contains("outputs are: logits, features"), "{err}");
    assert!(
        err.contains(&dir.path().join("edited.toml").display().to_string()),
        "{err}"
    );
    assert!(!err.contains('\n'));

    let (_dir, result) = load_edited(|t| t.replace("logits = \"logits\"", "logits = \"scores\""));
    let err = result.unwrap_err().to_string();
    assert!(
        err.contains("`scores`") && err.contains("outputs.logits"),
        "{err}"
    );
}

#[test]
fn unknown_input_name_lists_the_inputs() {
    let (_dir, result) = load_edited(|t| t.replace("name = \"input\"", "name = \"image\""));
    let err = result.unwrap_err().to_string();
    assert!(
        err.contains("`image`") && err.contains("inputs are: input"),
        "{err}"
    );
}

#[test]
fn wrong_sha256_names_the_file_and_both_hashes() {
    let wrong = "0".repeat(64);
    let (_dir, result) = load_edited(|t| {
        t.replace(
            "6fa988279c988d21a768534e480c6d6763f4f84caf3230ac1f323e24b2e0a956",
            &wrong,
        )
    });
    let err = result.unwrap_err();
    assert!(
        matches!(err, BackboneError::Sha256Mismatch { .. }),
        "{err:?}"
    );
    let err = err.to_string();
    assert!(err.contains("mobilenet_v2_1.0_224.onnx"), "{err}");
    assert!(err.contains(&wrong), "{err}");
    assert!(
        err.contains("6fa988279c988d21a768534e480c6d6763f4f84caf3230ac1f323e24b2e0a956"),
        "{err}"
    );
}

#[test]
fn missing_model_file_names_the_file() {
    let (_dir, result) = load_edited(|t| t.replace("mobilenet_v2_1.0_224.onnx\"", "nope.onnx\""));
    let err = result.unwrap_err();
    assert!(matches!(err, BackboneError::ModelMissing { .. }), "{err:?}");
    let err = err.to_string();
    assert!(
        err.contains("nope.onnx") && err.contains("not found"),
        "{err}"
    );
}

#[test]
fn labels_that_do_not_cover_the_logits_are_an_error() {
    let (_dir, result) = load_edited(|t| t.replace("offset = 0", "offset = 1"));
    let err = result.unwrap_err().to_string();
    assert!(
        err.contains("imagenet_labels.txt") && err.contains("1001"),
        "{err}"
    );
}

#[test]
fn unknown_manifest_key_names_the_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = edited_manifest(dir.path(), |t| {
        t.replace("[outputs]", "[outputs]\nembeding = \"x\"")
    });
    let err = ModelManifest::load(&path).unwrap_err().to_string();
    assert!(err.contains("edited.toml"), "{err}");
    assert!(err.contains("embeding"), "{err}");
    assert!(!err.contains('\n'), "{err}");
}

#[test]
fn shipped_zoo_manifest_parses() {
    let m = manifest("mobilenetv2-12.toml");
    assert!(m.url_is_archive());
    assert_eq!(
        m.model.archive_member.as_deref(),
        Some("mobilenetv2-12/mobilenetv2-12.onnx")
    );
    assert_eq!(m.labels.as_ref().map(|l| l.offset), Some(1));
}

#[test]
fn a_spatial_tensor_is_refused_as_embedding() {
    // The last ReLU6 before pooling: [1, 1280, 7, 7], not a feature vector.
    let (_dir, result) = load_edited(|t| t.replace("\"features\"", "\"Relu6__90:0\""));
    let err = result.unwrap_err();
    assert!(
        matches!(err, BackboneError::BadOutputShape { .. }),
        "{err:?}"
    );
    let err = err.to_string();
    assert!(
        err.contains("Relu6__90:0") && err.contains("1280, 7, 7"),
        "{err}"
    );
}

#[test]
fn channel_last_tuning_reproduces_the_reference_outputs() {
    let options = BackboneOptions {
        engine: EngineOptions {
            tract_nhwc: true,
            ..EngineOptions::default()
        },
        ..BackboneOptions::default()
    };
    let backbone = Backbone::load(&manifest("mobilenet_v2_1.0_224.toml"), &options).unwrap();
    // Same fingerprint: the layout changes the order of float additions, not the embedding.
    assert_eq!(backbone.fingerprint(), reference_backbone().fingerprint());
    for name in IMAGES {
        let out = backbone.run(&reference(name, "input")).unwrap();
        let e_feat = rel_l2(&out.embedding, &reference(name, "features"));
        let logits = reference(name, "logits");
        let got_logits = out.logits.unwrap();
        println!("{name}: nhwc features rel L2 {e_feat:.2e}");
        assert!(e_feat < 1e-4, "{name}: features rel L2 error {e_feat}");
        assert!(rel_l2(&got_logits, &logits) < 1e-4, "{name}: logits");
        assert_eq!(argmax(&got_logits), argmax(&logits), "{name}: top-1");
    }
}

/// tract in fp16: refused where the CPU has no fp16 arithmetic (this x86 machine), and, run in
/// tract's emulation (the test-only override), close to the fp32 references with the same top-1
/// but beyond the cross-engine agreement tolerance, so a head never moves between fp32 and fp16.
#[test]
fn fp16_needs_fp16_arithmetic_and_stays_close_to_fp32() {
    let manifest = manifest("mobilenet_v2_1.0_224.toml");
    let options = BackboneOptions {
        engine: EngineOptions {
            precision: Precision::Fp16,
            ..EngineOptions::default()
        },
        ..BackboneOptions::default()
    };
    if !glimpse::vision::engine::cpu_has_fp16() {
        let refused = Backbone::load(&manifest, &options).unwrap_err().to_string();
        assert!(
            refused.contains("model.precision") && refused.contains("asimdhp"),
            "{refused}"
        );
    }
    let exe = env!("CARGO_BIN_EXE_glimpse");
    let image = shared("testdata/imagenet/grace_hopper.bmp");
    let classify = |extra: &[&str], emulate: bool| {
        let mut cmd = std::process::Command::new(exe);
        cmd.args(["classify", "--threads", "1", "--model"])
            .arg(repo().join("models/mobilenet_v2_1.0_224.toml"))
            .args(extra)
            .arg(&image);
        if emulate {
            cmd.env("GLIMPSE_ALLOW_EMULATED_FP16", "1");
        }
        let out = cmd.output().expect("run glimpse classify");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{extra:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let top1 = |text: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with("1."))
            .map(str::to_string)
    };
    let fp32 = classify(&[], false);
    let fp16 = classify(&["--precision", "fp16"], true);
    assert!(top1(&fp32).is_some(), "{fp32}");
    // Same class in first place; the score may differ in its last digits.
    let class = |line: Option<String>| {
        line.map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
    };
    assert_eq!(
        class(top1(&fp16)),
        class(top1(&fp32)),
        "fp16:\n{fp16}\nfp32:\n{fp32}"
    );

    // The embedding itself, against the reference, through the library.
    std::env::set_var("GLIMPSE_ALLOW_EMULATED_FP16", "1");
    let backbone = Backbone::load(&manifest, &options).unwrap();
    assert_eq!(backbone.fingerprint().engine, "tract/cpu/fp16");
    for name in IMAGES {
        let out = backbone.run(&reference(name, "input")).unwrap();
        let e_feat = rel_l2(&out.embedding, &reference(name, "features"));
        println!("{name}: fp16 features rel L2 {e_feat:.2e}");
        assert!(e_feat < 3e-2, "{name}: fp16 features rel L2 error {e_feat}");
        assert_eq!(
            argmax(&out.logits.unwrap()),
            argmax(&reference(name, "logits")),
            "{name}: top-1"
        );
    }
}
