//! Bad input to the offline commands: every case gives a clear one-line error and a non-zero exit
//! status, never a panic. Image problems are per-file (exit 1, the other images still run);
//! model problems are configuration errors (exit 2).

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

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

fn assert_no_panic(out: &Output) {
    let err = stderr(out);
    assert!(!err.contains("panicked"), "glimpse panicked: {err}");
}

/// A PNG that is nothing but a valid header declaring `width` x `height` pixels.
fn png_header_only(width: u32, height: u32) -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, deflate, no filter, no interlace
    let crc = crc32(&ihdr);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend_from_slice(&13u32.to_be_bytes());
    png.extend_from_slice(&ihdr);
    png.extend_from_slice(&crc.to_be_bytes());
    png
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn bad_images_each_get_a_clear_error_and_the_good_one_still_runs() {
    let dir = tempfile::tempdir().unwrap();
    let jpeg = std::fs::read(repo("../shared/testdata/imagenet/owl.jpg")).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty.jpg", Vec::new()),
        ("truncated.jpg", jpeg[..jpeg.len() / 3].to_vec()),
        (
            "text.jpg",
            b"this is not an image, just text renamed\n".repeat(10),
        ),
        ("bomb.png", png_header_only(30000, 30000)),
    ];
    let mut args = vec!["classify".to_string(), "--json".to_string()];
    for (name, bytes) in &cases {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        args.push(path.display().to_string());
    }
    args.push(
        repo("../shared/testdata/imagenet/owl.jpg")
            .display()
            .to_string(),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = glimpse(&args);
    assert_no_panic(&out);
    assert_eq!(out.status.code(), Some(1), "stderr: {}", stderr(&out));
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5);
    for (line, (name, _)) in lines.iter().zip(&cases) {
        let error = line["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: expected an error, got {line}"));
        assert!(
            error.contains(name),
            "{name}: error should name the file: {error}"
        );
        assert!(
            !error.contains('\n'),
            "{name}: error should be one line: {error}"
        );
    }
    assert!(lines[1]["error"].as_str().unwrap().len() > 20);
    let bomb = lines[3]["error"].as_str().unwrap();
    assert!(
        bomb.contains("30000"),
        "bomb error should give the size: {bomb}"
    );
    assert!(
        lines[4]["top_k"].is_array(),
        "the good image is still classified"
    );
}

#[test]
fn missing_image_file_is_an_error() {
    let out = glimpse(&["classify", "/nonexistent/cat.jpg"]);
    assert_no_panic(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("/nonexistent/cat.jpg"),
        "{}",
        stderr(&out)
    );
}

/// Writes a copy of the shipped float model manifest with `edit` applied and absolute paths.
fn edited_manifest(dir: &Path, edit: impl Fn(String) -> String) -> PathBuf {
    let text = std::fs::read_to_string(repo("models/mobilenet_v2_1.0_224.toml")).unwrap();
    let models = repo("models").canonicalize().unwrap();
    let text = text
        .replace(
            "\"../../shared/",
            &format!("\"{}/../../shared/", models.display()),
        )
        .replace(
            "\"imagenet_labels.txt\"",
            &format!("\"{}/imagenet_labels.txt\"", models.display()),
        );
    let path = dir.join("model.toml");
    std::fs::write(&path, edit(text)).unwrap();
    path
}

fn classify_with_manifest(manifest: &Path) -> Output {
    let img = repo("../shared/testdata/imagenet/owl.jpg");
    glimpse(&[
        "classify",
        "--model",
        manifest.to_str().unwrap(),
        img.to_str().unwrap(),
    ])
}

#[test]
fn edited_manifest_without_changes_works() {
    // Guards the tests below: they must fail for the edit, not for the copy.
    let dir = tempfile::tempdir().unwrap();
    let manifest = edited_manifest(dir.path(), |t| t);
    let out = classify_with_manifest(&manifest);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn unknown_tensor_name_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = edited_manifest(dir.path(), |t| {
        t.replace("\"features\"", "\"no_such_tensor\"")
    });
    let out = classify_with_manifest(&manifest);
    assert_no_panic(&out);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("no_such_tensor"), "{}", stderr(&out));
}

#[test]
fn wrong_sha256_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = edited_manifest(dir.path(), |t| {
        t.replace(
            "6fa988279c988d21a768534e480c6d6763f4f84caf3230ac1f323e24b2e0a956",
            &"0".repeat(64),
        )
    });
    let out = classify_with_manifest(&manifest);
    assert_no_panic(&out);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("sha256") && err.contains("6fa98827"), "{err}");
}

#[test]
fn missing_model_file_and_missing_manifest_are_config_errors() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = edited_manifest(dir.path(), |t| {
        t.replace("mobilenet_v2_1.0_224.onnx", "missing_model.onnx")
    });
    let out = classify_with_manifest(&manifest);
    assert_no_panic(&out);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("missing_model.onnx"),
        "{}",
        stderr(&out)
    );

    let out = classify_with_manifest(&dir.path().join("nope.toml"));
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("nope.toml"), "{}", stderr(&out));
}

#[test]
fn unknown_manifest_key_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = edited_manifest(dir.path(), |t| format!("colour = \"blue\"\n{t}"));
    let out = classify_with_manifest(&manifest);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("colour"), "{}", stderr(&out));
}
