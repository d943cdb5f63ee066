//! The model manifest: a small TOML file in `models/` that says where an ONNX backbone lives
//! (or where to download it), what input it wants, how its logits map to class names, and which
//! tensors are the embedding and the logits. Every key is documented in `docs/models.md`.
//!
//! Parsing is strict (`deny_unknown_fields`): a typo in a key is an error naming the file, the
//! line and the key, not a silently ignored setting.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::spec::{InputSpec, Layout, ResizeMode};

/// Why a manifest could not be loaded. Every message names the manifest file.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read model manifest {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("model manifest {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("model manifest {}: key `{key}`: {reason}", path.display())]
    Invalid {
        path: PathBuf,
        key: &'static str,
        reason: String,
    },
}

/// A parsed and validated model manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelManifest {
    /// Short name of the model, used in logs and as the default fetch file name.
    pub name: String,
    pub model: ModelSection,
    pub input: InputSection,
    /// Class names for the logits; absent when the model has no (useful) classifier.
    pub labels: Option<LabelsSection>,
    pub outputs: OutputsSection,
    /// The manifest file this came from (for error messages).
    pub origin: PathBuf,
    /// Folder that relative paths resolve against: the manifest's own folder.
    pub base_dir: PathBuf,
}

/// `[model]`: where the ONNX file is and how to verify or download it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// The ONNX file; relative paths resolve against the manifest's folder.
    pub path: PathBuf,
    /// Expected sha256 of the ONNX file (lowercase hex). Checked at load when given.
    #[serde(default)]
    pub sha256: Option<String>,
    /// Where `glimpse fetch-model` downloads the model (or a `.tar.gz` holding it) from.
    #[serde(default)]
    pub url: Option<String>,
    /// For a `.tar.gz` url: the archive member that is the model. Default: the only `.onnx` member.
    #[serde(default)]
    pub archive_member: Option<String>,
    /// For a `.tar.gz` url: expected sha256 of the downloaded archive.
    #[serde(default)]
    pub archive_sha256: Option<String>,
}

/// `[input]`: what the input tensor looks like and how pixels are normalized.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSection {
    /// Name of the model input; default: the model's only input.
    #[serde(default)]
    pub name: Option<String>,
    pub layout: Layout,
    pub width: u32,
    pub height: u32,
    /// Pixel values `v` in 0..=255 are divided by this before mean/std apply.
    #[serde(default = "default_pixel_scale")]
    pub pixel_scale: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// How a frame is fitted into `width` x `height`.
    #[serde(default)]
    pub resize: ResizeMode,
}

fn default_pixel_scale() -> f32 {
    255.0
}

/// `[labels]`: the class-name file for the logits.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelsSection {
    /// One class name per line; relative paths resolve against the manifest's folder.
    pub path: PathBuf,
    /// Logit `i` is named by line `i + offset` (1 for 1000-class models with a 1001-line file).
    #[serde(default)]
    pub offset: usize,
}

/// `[outputs]`: which tensors are read from the model.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputsSection {
    /// The logits tensor; default: the model's only output (if it has exactly one).
    #[serde(default)]
    pub logits: Option<String>,
    /// The embedding tensor, or `"auto"`: the input of the final classifier layer.
    pub embedding: EmbeddingTensor,
}

/// Which tensor holds the embedding.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "String")]
pub enum EmbeddingTensor {
    /// Find the final classifier (Gemm, MatMul[+Add] or 1x1 Conv producing the logits) and
    /// take its data input.
    Auto,
    /// A tensor name in the ONNX graph.
    Named(String),
}

impl From<String> for EmbeddingTensor {
    fn from(s: String) -> Self {
        if s == "auto" {
            EmbeddingTensor::Auto
        } else {
            EmbeddingTensor::Named(s)
        }
    }
}

/// The on-disk shape of a manifest, before path resolution and validation.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestFile {
    name: String,
    model: ModelSection,
    input: InputSection,
    #[serde(default)]
    labels: Option<LabelsSection>,
    outputs: OutputsSection,
}

impl ModelManifest {
    /// Reads and validates the manifest at `path`.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_str(&text, path)
    }

    /// Parses manifest text; `origin` is the file it came from: errors name it and relative
    /// paths resolve against its folder.
    pub fn from_toml_str(text: &str, origin: &Path) -> Result<Self, ManifestError> {
        let file: ManifestFile = toml::from_str(text).map_err(|e| ManifestError::Parse {
            path: origin.to_path_buf(),
            message: one_line_toml_error(text, &e),
        })?;
        let base_dir = origin
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let mut manifest = ModelManifest {
            name: file.name,
            model: file.model,
            input: file.input,
            labels: file.labels,
            outputs: file.outputs,
            origin: origin.to_path_buf(),
            base_dir,
        };
        manifest.validate()?;
        Ok(manifest)
    }

    /// The input description the preprocessing needs.
    pub fn input_spec(&self) -> InputSpec {
        InputSpec {
            width: self.input.width,
            height: self.input.height,
            layout: self.input.layout,
            mean: self.input.mean,
            std: self.input.std,
            pixel_scale: self.input.pixel_scale,
        }
    }

    /// How frames are fitted into the input size.
    pub fn resize_mode(&self) -> ResizeMode {
        self.input.resize
    }

    /// The model file, with a relative path resolved against the manifest's folder.
    pub fn model_path(&self) -> PathBuf {
        self.resolve(&self.model.path)
    }

    /// The labels file, resolved like `model_path`.
    pub fn labels_path(&self) -> Option<PathBuf> {
        self.labels.as_ref().map(|l| self.resolve(&l.path))
    }

    /// Moves the model file into `dir`, keeping its file name: a daemon keeps downloaded models
    /// in its own state folder, whatever folder the manifest names.
    pub fn with_model_dir(mut self, dir: &Path) -> Self {
        let file_name = self
            .model
            .path
            .file_name()
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(format!("{}.onnx", self.name)));
        self.model.path = dir.join(file_name);
        self
    }

    /// Whether `model.url` points at a gzip-compressed tarball (the model is one member of it).
    pub fn url_is_archive(&self) -> bool {
        self.model.url.as_deref().is_some_and(url_is_archive)
    }

    fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }

    fn invalid(&self, key: &'static str, reason: impl Into<String>) -> ManifestError {
        ManifestError::Invalid {
            path: self.origin.clone(),
            key,
            reason: reason.into(),
        }
    }

    /// Checks what serde cannot: value ranges and keys that only make sense together.
    /// Also normalizes hashes to lowercase so comparisons are exact.
    fn validate(&mut self) -> Result<(), ManifestError> {
        if self.name.trim().is_empty() {
            return Err(self.invalid("name", "must not be empty"));
        }
        if self.model.path.as_os_str().is_empty() {
            return Err(self.invalid("model.path", "must not be empty"));
        }
        for (key, value) in [
            ("model.sha256", &mut self.model.sha256),
            ("model.archive_sha256", &mut self.model.archive_sha256),
        ] {
            if let Some(hash) = value.as_mut() {
                *hash = hash.to_ascii_lowercase();
                if !is_sha256_hex(hash) {
                    return Err(ManifestError::Invalid {
                        path: self.origin.clone(),
                        key,
                        reason: format!("`{hash}` is not a sha256 (64 hex digits)"),
                    });
                }
            }
        }
        match self.model.url.as_deref() {
            None => {
                if self.model.archive_member.is_some() {
                    return Err(self.invalid("model.archive_member", "needs model.url"));
                }
                if self.model.archive_sha256.is_some() {
                    return Err(self.invalid("model.archive_sha256", "needs model.url"));
                }
            }
            Some(url) => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(self.invalid("model.url", format!("`{url}` is not an http(s) URL")));
                }
                if url_is_archive(url) {
                    if self.model.archive_sha256.is_none() && self.model.sha256.is_none() {
                        return Err(self.invalid(
                            "model.archive_sha256",
                            "a downloaded archive must be verified: give archive_sha256 (or model.sha256)",
                        ));
                    }
                } else {
                    if self.model.archive_member.is_some() || self.model.archive_sha256.is_some() {
                        return Err(self.invalid(
                            "model.url",
                            "archive_member/archive_sha256 need a .tar.gz (or .tgz) url",
                        ));
                    }
                    if self.model.sha256.is_none() {
                        return Err(self.invalid(
                            "model.sha256",
                            "a downloaded model must be verified: give model.sha256",
                        ));
                    }
                }
            }
        }
        if self.input.width == 0 || self.input.height == 0 {
            return Err(self.invalid("input.width", "width and height must be > 0"));
        }
        if !(self.input.pixel_scale.is_finite() && self.input.pixel_scale > 0.0) {
            return Err(self.invalid("input.pixel_scale", "must be a positive number"));
        }
        if self.input.mean.iter().any(|m| !m.is_finite()) {
            return Err(self.invalid("input.mean", "must be finite numbers"));
        }
        if self.input.std.iter().any(|s| !(s.is_finite() && *s != 0.0)) {
            return Err(self.invalid("input.std", "must be finite and non-zero"));
        }
        if let Some(name) = &self.outputs.logits {
            if name.is_empty() {
                return Err(self.invalid("outputs.logits", "must not be empty"));
            }
        }
        if self.outputs.embedding == EmbeddingTensor::Named(String::new()) {
            return Err(self.invalid("outputs.embedding", "must be a tensor name or \"auto\""));
        }
        Ok(())
    }
}

/// `.tar.gz` / `.tgz` urls (query strings aside) are archives; anything else is the model itself.
fn url_is_archive(url: &str) -> bool {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    path.ends_with(".tar.gz") || path.ends_with(".tgz")
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// toml's own Display spans several lines (with a source excerpt); keep one line: position + message.
fn one_line_toml_error(text: &str, err: &toml::de::Error) -> String {
    let message = err.message().trim().replace('\n', " ");
    match err.span() {
        Some(span) => {
            let line = text
                .get(..span.start)
                .map_or(0, |before| before.matches('\n').count())
                + 1;
            format!("line {line}: {message}")
        }
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
name = "m"
[model]
path = "m.onnx"
[input]
layout = "NCHW"
width = 224
height = 224
mean = [0.5, 0.5, 0.5]
std = [0.5, 0.5, 0.5]
[outputs]
embedding = "auto"
"#;

    fn parse(text: &str) -> Result<ModelManifest, ManifestError> {
        ModelManifest::from_toml_str(text, Path::new("/etc/glimpse/models/m.toml"))
    }

    #[test]
    fn minimal_manifest_gets_defaults_and_resolves_paths() {
        let m = parse(MINIMAL).unwrap();
        assert_eq!(m.input.pixel_scale, 255.0);
        assert_eq!(m.input.resize, ResizeMode::Stretch);
        assert_eq!(m.outputs.embedding, EmbeddingTensor::Auto);
        assert_eq!(m.model_path(), PathBuf::from("/etc/glimpse/models/m.onnx"));
        assert!(m.labels.is_none());
        assert_eq!(m.input_spec().tensor_len(), 3 * 224 * 224);
    }

    #[test]
    fn with_model_dir_keeps_the_file_name() {
        let m = parse(MINIMAL)
            .unwrap()
            .with_model_dir(Path::new("/var/lib/g"));
        assert_eq!(m.model_path(), PathBuf::from("/var/lib/g/m.onnx"));
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = MINIMAL.replace("width = 224", "widht = 224");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("/etc/glimpse/models/m.toml"), "{err}");
        assert!(err.contains("widht"), "{err}");
        assert!(err.contains("line 7"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn bad_sha256_is_rejected_and_case_is_normalized() {
        let text = MINIMAL.replace("path = \"m.onnx\"", "path = \"m.onnx\"\nsha256 = \"abc\"");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("model.sha256"), "{err}");
        let upper = "A".repeat(64);
        let text = MINIMAL.replace(
            "path = \"m.onnx\"",
            &format!("path = \"m.onnx\"\nsha256 = \"{upper}\""),
        );
        assert_eq!(parse(&text).unwrap().model.sha256, Some("a".repeat(64)));
    }

    #[test]
    fn download_needs_a_checksum() {
        let text = MINIMAL.replace(
            "path = \"m.onnx\"",
            "path = \"m.onnx\"\nurl = \"https://example.com/m.tar.gz\"",
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("archive_sha256"), "{err}");
        let text = MINIMAL.replace(
            "path = \"m.onnx\"",
            "path = \"m.onnx\"\nurl = \"https://example.com/m.onnx\"",
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("model.sha256"), "{err}");
    }

    #[test]
    fn archive_keys_need_an_archive_url() {
        let text = MINIMAL.replace(
            "path = \"m.onnx\"",
            "path = \"m.onnx\"\narchive_member = \"a/m.onnx\"",
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("model.archive_member"), "{err}");
    }

    #[test]
    fn archive_urls_are_recognized() {
        assert!(url_is_archive("https://x/y/m.tar.gz"));
        assert!(url_is_archive("https://x/y/m.tgz?raw=1"));
        assert!(!url_is_archive("https://x/y/m.onnx"));
    }

    #[test]
    fn zero_std_is_rejected() {
        let text = MINIMAL.replace("std = [0.5, 0.5, 0.5]", "std = [0.5, 0.0, 0.5]");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("input.std"), "{err}");
    }

    #[test]
    fn bad_layout_names_the_value() {
        let text = MINIMAL.replace("\"NCHW\"", "\"CHW\"");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("CHW"), "{err}");
    }
}
