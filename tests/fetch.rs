//! `fetch_model` against a loopback HTTP server started by the test: a zoo-like tarball built
//! here from ../shared/models, corrupted downloads, 404s, missing members and the
//! skip-if-present path. No internet needed.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use glimpse::vision::backbone::{Backbone, BackboneOptions};
use glimpse::vision::fetch::{fetch_model, sha256_file, FetchError};
use glimpse::vision::manifest::ModelManifest;
use sha2::{Digest, Sha256};

const MEMBER: &str = "mobilenetv2-12/mobilenetv2-12.onnx";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn zoo_style_model() -> PathBuf {
    let path = repo().join("../shared/models/mobilenet_v2_zoo_style.onnx");
    assert!(path.is_file(), "test model {} is missing", path.display());
    path
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A gzip tarball like the zoo's: the model under `member`, next to some test data.
fn tarball(model: &[u8], member: &str) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut add = |name: &str, data: &[u8]| {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, name, data).unwrap();
    };
    add(
        "mobilenetv2-12/test_data_set_0/input_0.pb",
        b"not a real tensor",
    );
    add(member, model);
    tar.into_inner().unwrap().finish().unwrap()
}

/// A tiny HTTP/1.1 server on 127.0.0.1: serves `files` by path, 404 otherwise, and counts
/// requests. Lives until the test process ends.
struct Server {
    base: String,
    requests: Arc<AtomicUsize>,
}

impl Server {
    fn start(files: HashMap<String, Vec<u8>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&requests);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                counter.fetch_add(1, Ordering::SeqCst);
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                // Skip the headers.
                loop {
                    let mut line = String::new();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => break,
                        Ok(_) if line == "\r\n" || line == "\n" => break,
                        Ok(_) => {}
                    }
                }
                let path = request_line
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or("/")
                    .to_string();
                let (status, body): (&str, &[u8]) = match files.get(&path) {
                    Some(body) => ("200 OK", body),
                    None => ("404 Not Found", b"no such file\n"),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(body);
                let _ = stream.flush();
            }
        });
        Self { base, requests }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// A zoo-like manifest (written into `dir`) whose model is fetched from `url`.
fn manifest(dir: &Path, url: &str, archive_sha256: &str, member: &str) -> ModelManifest {
    let labels = repo().join("models/imagenet_labels.txt");
    let text = format!(
        r#"
name = "zoo-test"
[model]
path = "mobilenetv2-12.onnx"
url = "{url}"
archive_sha256 = "{archive_sha256}"
archive_member = "{member}"
[input]
layout = "NCHW"
width = 224
height = 224
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]
[labels]
path = {labels:?}
offset = 1
[outputs]
embedding = "auto"
"#,
        labels = labels.display().to_string()
    );
    let path = dir.join("zoo-test.toml");
    std::fs::write(&path, text).unwrap();
    ModelManifest::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn fetch_verifies_extracts_and_skips_the_second_time() {
    let model = std::fs::read(zoo_style_model()).unwrap();
    let archive = tarball(&model, MEMBER);
    let server = Server::start(HashMap::from([(
        "/m/mobilenetv2-12.tar.gz".into(),
        archive.clone(),
    )]));
    let manifests = tempfile::tempdir().unwrap();
    let dest = tempfile::tempdir().unwrap();
    let m = manifest(
        manifests.path(),
        &server.url("/m/mobilenetv2-12.tar.gz"),
        &sha256_hex(&archive),
        MEMBER,
    );

    let fetched = fetch_model(&m, Some(dest.path()), false).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(fetched, dest.path().join("mobilenetv2-12.onnx"));
    assert_eq!(sha256_file(&fetched).unwrap(), sha256_hex(&model));
    assert_eq!(
        entries(dest.path()),
        ["mobilenetv2-12.onnx", "mobilenetv2-12.onnx.source"],
        "no temp files left behind"
    );
    assert_eq!(server.requests(), 1);

    // The extracted model loads, from the folder it was fetched into.
    let relocated = m.clone().with_model_dir(dest.path());
    let backbone =
        Backbone::load(&relocated, &BackboneOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(backbone.embedding_dim(), 1280);
    assert_eq!(backbone.fingerprint().model_sha256, sha256_hex(&model));

    // Second fetch: already there and verified, no request.
    let again = fetch_model(&m, Some(dest.path()), false).unwrap();
    assert_eq!(again, fetched);
    assert_eq!(server.requests(), 1, "second fetch must not download");

    // A damaged file on disk is fetched again.
    std::fs::write(&fetched, b"truncated").unwrap();
    fetch_model(&m, Some(dest.path()), false).unwrap();
    assert_eq!(server.requests(), 2);
    assert_eq!(sha256_file(&fetched).unwrap(), sha256_hex(&model));
}

#[test]
fn fetch_defaults_to_the_model_path_folder() {
    let model = b"pretend onnx".to_vec();
    let archive = tarball(&model, MEMBER);
    let server = Server::start(HashMap::from([("/a.tgz".into(), archive.clone())]));
    let dir = tempfile::tempdir().unwrap();
    let m = manifest(
        dir.path(),
        &server.url("/a.tgz"),
        &sha256_hex(&archive),
        MEMBER,
    );
    let fetched = fetch_model(&m, None, false).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(fetched, m.model_path());
    assert_eq!(std::fs::read(&fetched).unwrap(), model);
}

#[test]
fn corrupted_download_is_a_checksum_error_and_leaves_nothing() {
    let model = std::fs::read(zoo_style_model()).unwrap();
    let archive = tarball(&model, MEMBER);
    let mut corrupted = archive.clone();
    let middle = corrupted.len() / 2;
    for b in &mut corrupted[middle..middle + 16] {
        *b ^= 0xff;
    }
    let server = Server::start(HashMap::from([("/m.tar.gz".into(), corrupted.clone())]));
    let manifests = tempfile::tempdir().unwrap();
    let dest = tempfile::tempdir().unwrap();
    let expected = sha256_hex(&archive);
    let m = manifest(
        manifests.path(),
        &server.url("/m.tar.gz"),
        &expected,
        MEMBER,
    );

    let err = fetch_model(&m, Some(dest.path()), false).unwrap_err();
    assert!(matches!(err, FetchError::Checksum { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&expected), "{msg}");
    assert!(msg.contains(&sha256_hex(&corrupted)), "{msg}");
    assert!(!msg.contains('\n'));
    assert!(
        entries(dest.path()).is_empty(),
        "left: {:?}",
        entries(dest.path())
    );
}

#[test]
fn http_404_is_a_clear_error() {
    let server = Server::start(HashMap::new());
    let manifests = tempfile::tempdir().unwrap();
    let dest = tempfile::tempdir().unwrap();
    let url = server.url("/missing.tar.gz");
    let m = manifest(manifests.path(), &url, &"0".repeat(64), MEMBER);
    let err = fetch_model(&m, Some(dest.path()), false).unwrap_err();
    assert!(
        matches!(err, FetchError::Http { status: 404, .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("404") && msg.contains(&url), "{msg}");
    assert!(entries(dest.path()).is_empty());
}

#[test]
fn missing_member_lists_what_the_archive_holds() {
    let archive = tarball(b"x", "other/model.onnx");
    let server = Server::start(HashMap::from([("/m.tar.gz".into(), archive.clone())]));
    let manifests = tempfile::tempdir().unwrap();
    let dest = tempfile::tempdir().unwrap();
    let m = manifest(
        manifests.path(),
        &server.url("/m.tar.gz"),
        &sha256_hex(&archive),
        MEMBER,
    );
    let err = fetch_model(&m, Some(dest.path()), false).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, FetchError::MissingMember { .. }), "{msg}");
    assert!(
        msg.contains(MEMBER) && msg.contains("other/model.onnx"),
        "{msg}"
    );
    assert!(entries(dest.path()).is_empty());
}

#[test]
fn manifest_without_url_cannot_be_fetched() {
    let m = ModelManifest::load(&repo().join("models/mobilenet_v2_1.0_224.toml")).unwrap();
    let err = fetch_model(&m, None, false).unwrap_err().to_string();
    assert!(
        err.contains("mobilenet_v2_1.0_224.toml") && err.contains("model.url"),
        "{err}"
    );
}
