//! Downloading a model named by a manifest's `model.url`: the ONNX file itself or a `.tar.gz`
//! holding it. Everything downloaded is verified by sha256 before it is used, and the model
//! appears at its final path only complete and verified (temp file in the same folder, then an
//! atomic rename), so a daemon never loads half a download.
//!
//! Archives carry no model hash in the manifest, so a fetch writes a small sidecar
//! (`<model>.source`) recording the archive hash and the extracted model's hash; the next fetch
//! skips the download when the file on disk still matches it.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::manifest::ModelManifest;

/// Why a model could not be fetched. One line each, naming the url / file and the values.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("manifest {} has no model.url to download from", manifest.display())]
    NoUrl { manifest: PathBuf },
    #[error("GET {url}: HTTP {status} {reason}")]
    Http {
        url: String,
        status: u16,
        reason: String,
    },
    #[error("GET {url}: {message}")]
    Transport { url: String, message: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("checksum mismatch for the {what} from {url}: expected sha256 {expected}, got {got}")]
    Checksum {
        what: &'static str,
        url: String,
        expected: String,
        got: String,
    },
    #[error("archive from {url} has no member `{member}`; members: {members}")]
    MissingMember {
        url: String,
        member: String,
        members: String,
    },
    #[error("archive from {url} holds {count} .onnx files ({names}): set model.archive_member")]
    AmbiguousMember {
        url: String,
        count: usize,
        names: String,
    },
    #[error("archive from {url} is not a readable .tar.gz: {message}")]
    Archive { url: String, message: String },
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// sha256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String, FetchError> {
    let file = File::open(path).map_err(io_error(path))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut BufReader::new(file), &mut hasher).map_err(io_error(path))?;
    Ok(hex::encode(hasher.finalize()))
}

/// Downloads the manifest's model into `dest_dir` (default: the folder of `model.path`) under
/// the file name of `model.path`, and returns its path. Skips the download when a verified copy
/// is already there. `progress` draws a progress bar on stderr.
pub fn fetch_model(
    manifest: &ModelManifest,
    dest_dir: Option<&Path>,
    progress: bool,
) -> Result<PathBuf, FetchError> {
    let url = manifest
        .model
        .url
        .as_deref()
        .ok_or_else(|| FetchError::NoUrl {
            manifest: manifest.origin.clone(),
        })?;
    let model_path = manifest.model_path();
    let dir = match dest_dir {
        Some(dir) => dir.to_path_buf(),
        None => model_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(".")),
    };
    let file_name = model_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| format!("{}.onnx", manifest.name));
    let target = dir.join(&file_name);
    let source_path = dir.join(format!("{file_name}.source"));
    let wanted = Provenance {
        url: url.to_string(),
        archive_sha256: manifest.model.archive_sha256.clone(),
        sha256: manifest.model.sha256.clone(),
    };

    if already_fetched(&target, &source_path, &wanted)? {
        log::info!("{} is already there and verified", target.display());
        return Ok(target);
    }
    std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;

    let download = TempFile::new(&dir, &file_name, "download");
    let downloaded_sha = download_to(url, download.path(), progress)?;
    let is_archive = manifest.url_is_archive();
    let (model_file, model_sha) = if is_archive {
        if let Some(expected) = &manifest.model.archive_sha256 {
            check("archive", url, expected, &downloaded_sha)?;
        }
        let extracted = TempFile::new(&dir, &file_name, "extract");
        let sha = extract_member(
            download.path(),
            manifest.model.archive_member.as_deref(),
            extracted.path(),
            url,
        )?;
        drop(download);
        (extracted, sha)
    } else {
        (download, downloaded_sha.clone())
    };
    if let Some(expected) = &manifest.model.sha256 {
        check("model", url, expected, &model_sha)?;
    }
    model_file.persist(&target)?;

    let record = Provenance {
        sha256: Some(model_sha),
        archive_sha256: is_archive.then_some(downloaded_sha),
        url: url.to_string(),
    };
    let sidecar = TempFile::new(&dir, &file_name, "source");
    std::fs::write(sidecar.path(), record.to_text()).map_err(io_error(sidecar.path()))?;
    sidecar.persist(&source_path)?;
    log::info!("fetched {url} -> {}", target.display());
    Ok(target)
}

fn check(what: &'static str, url: &str, expected: &str, got: &str) -> Result<(), FetchError> {
    if expected == got {
        Ok(())
    } else {
        Err(FetchError::Checksum {
            what,
            url: url.to_string(),
            expected: expected.to_string(),
            got: got.to_string(),
        })
    }
}

/// Where a fetched model came from: what the sidecar records and what the manifest wants.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Provenance {
    url: String,
    archive_sha256: Option<String>,
    sha256: Option<String>,
}

impl Provenance {
    fn to_text(&self) -> String {
        let mut text = format!(
            "# written by `glimpse fetch-model`: where this model came from\nurl={}\n",
            self.url
        );
        if let Some(a) = &self.archive_sha256 {
            text.push_str(&format!("archive_sha256={a}\n"));
        }
        if let Some(s) = &self.sha256 {
            text.push_str(&format!("sha256={s}\n"));
        }
        text
    }

    fn from_text(text: &str) -> Self {
        let mut p = Provenance {
            url: String::new(),
            archive_sha256: None,
            sha256: None,
        };
        for line in text.lines() {
            match line.split_once('=') {
                Some(("url", v)) => p.url = v.to_string(),
                Some(("archive_sha256", v)) => p.archive_sha256 = Some(v.to_string()),
                Some(("sha256", v)) => p.sha256 = Some(v.to_string()),
                _ => {}
            }
        }
        p
    }
}

/// Whether `target` already holds the wanted model. With a model hash in the manifest, the file
/// alone decides; otherwise the sidecar must show the same archive and the file its recorded hash.
fn already_fetched(target: &Path, sidecar: &Path, wanted: &Provenance) -> Result<bool, FetchError> {
    if !target.is_file() {
        return Ok(false);
    }
    if let Some(expected) = &wanted.sha256 {
        return Ok(sha256_file(target)? == *expected);
    }
    let Ok(text) = std::fs::read_to_string(sidecar) else {
        return Ok(false);
    };
    let recorded = Provenance::from_text(&text);
    if recorded.archive_sha256.is_none() || recorded.archive_sha256 != wanted.archive_sha256 {
        return Ok(false);
    }
    Ok(recorded.sha256.as_deref() == Some(sha256_file(target)?.as_str()))
}

/// GETs `url` into `path`, hashing on the way; returns the sha256.
fn download_to(url: &str, path: &Path, progress: bool) -> Result<String, FetchError> {
    let agent = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(30))
        .timeout_read(Duration::from_secs(60))
        .build();
    let response = agent.get(url).call().map_err(|e| match e {
        ureq::Error::Status(status, response) => FetchError::Http {
            url: url.to_string(),
            status,
            reason: response.status_text().to_string(),
        },
        ureq::Error::Transport(t) => FetchError::Transport {
            url: url.to_string(),
            message: t.to_string().replace('\n', " "),
        },
    })?;
    let length = response
        .header("Content-Length")
        .and_then(|v| v.parse::<u64>().ok());
    let bar = if progress {
        let bar = match length {
            Some(n) => indicatif::ProgressBar::new(n),
            None => indicatif::ProgressBar::new_spinner(),
        };
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message("downloading");
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut reader = bar.wrap_read(response.into_reader());
    let mut file = File::create(path).map_err(io_error(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total: u64 = 0;
    loop {
        let n = reader.read(&mut buf).map_err(|e| FetchError::Transport {
            url: url.to_string(),
            message: format!("reading the body: {e}"),
        })?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).map_err(io_error(path))?;
        total += n as u64;
    }
    file.sync_all().map_err(io_error(path))?;
    bar.finish_and_clear();
    if let Some(expected) = length {
        if total != expected {
            return Err(FetchError::Transport {
                url: url.to_string(),
                message: format!("body ended after {total} of {expected} bytes"),
            });
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Copies one member of the `.tar.gz` at `archive` into `out`; returns its sha256. Without a
/// `member`, the archive must hold exactly one `.onnx` file.
fn extract_member(
    archive: &Path,
    member: Option<&str>,
    out: &Path,
    url: &str,
) -> Result<String, FetchError> {
    let archive_error = |e: std::io::Error| FetchError::Archive {
        url: url.to_string(),
        message: e.to_string(),
    };
    let file = File::open(archive).map_err(io_error(archive))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(BufReader::new(file)));
    let mut names = Vec::new();
    let mut onnx_names = Vec::new();
    let mut found: Option<String> = None;
    for entry in tar.entries().map_err(archive_error)? {
        let mut entry = entry.map_err(archive_error)?;
        let name = entry
            .path()
            .map_err(archive_error)?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let wanted = match member {
            Some(m) => name == m.trim_start_matches("./"),
            None => name.ends_with(".onnx"),
        };
        if name.ends_with(".onnx") {
            onnx_names.push(name.clone());
        }
        if wanted && found.is_none() {
            let mut writer = File::create(out).map_err(io_error(out))?;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = entry.read(&mut buf).map_err(archive_error)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                writer.write_all(&buf[..n]).map_err(io_error(out))?;
            }
            writer.sync_all().map_err(io_error(out))?;
            found = Some(hex::encode(hasher.finalize()));
        }
        names.push(name);
    }
    if member.is_none() && onnx_names.len() > 1 {
        return Err(FetchError::AmbiguousMember {
            url: url.to_string(),
            count: onnx_names.len(),
            names: onnx_names.join(", "),
        });
    }
    found.ok_or_else(|| FetchError::MissingMember {
        url: url.to_string(),
        member: member.unwrap_or("*.onnx").to_string(),
        members: summarize(&names),
    })
}

/// At most a dozen names: an archive listing must stay one readable line.
fn summarize(names: &[String]) -> String {
    const SHOWN: usize = 12;
    let mut s = names
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        s.push_str(&format!(", ... ({} in all)", names.len()));
    }
    if s.is_empty() {
        s.push_str("(none)");
    }
    s
}

/// A file in the destination folder that is removed on drop unless persisted, so a failed
/// fetch leaves nothing behind. Same folder as the target, so the final rename is atomic.
struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl TempFile {
    fn new(dir: &Path, file_name: &str, purpose: &str) -> Self {
        let path = dir.join(format!(".{file_name}.{purpose}-{}", std::process::id()));
        Self { path, keep: false }
    }

    fn path(&self) -> &Path {
        &self.path
    }

    fn persist(mut self, to: &Path) -> Result<(), FetchError> {
        std::fs::rename(&self.path, to).map_err(io_error(to))?;
        self.keep = true;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            // Best effort: the file may not exist when the failure came before it was created.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provenance_round_trips() {
        let p = Provenance {
            url: "https://x/m.tar.gz".into(),
            archive_sha256: Some("a".repeat(64)),
            sha256: Some("b".repeat(64)),
        };
        assert_eq!(Provenance::from_text(&p.to_text()), p);
    }

    #[test]
    fn sha256_file_matches_a_known_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(
            sha256_file(&path).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let err = sha256_file(&dir.path().join("nope")).unwrap_err();
        assert!(err.to_string().contains("nope"));
    }

    #[test]
    fn temp_files_vanish_unless_persisted() {
        let dir = tempfile::tempdir().unwrap();
        let t = TempFile::new(dir.path(), "m.onnx", "download");
        std::fs::write(t.path(), b"x").unwrap();
        let p = t.path().to_path_buf();
        drop(t);
        assert!(!p.exists());
        let t = TempFile::new(dir.path(), "m.onnx", "download");
        std::fs::write(t.path(), b"x").unwrap();
        t.persist(&dir.path().join("m.onnx")).unwrap();
        assert!(dir.path().join("m.onnx").exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn summaries_stay_short() {
        let names: Vec<String> = (0..20).map(|i| format!("f{i}")).collect();
        let s = summarize(&names);
        assert!(s.ends_with("(20 in all)"), "{s}");
        assert_eq!(summarize(&[]), "(none)");
    }
}
