//! An on-disk cache of embeddings keyed by image content, so a second `glimpse train` over the same
//! folder skips the backbone entirely.
//!
//! Layout: `ROOT/<namespace>/<ab>/<sha256 of the image bytes>.f32`, raw little-endian f32. The
//! namespace hashes everything that changes an embedding besides the pixels (model file hash,
//! embedding tensor, input size and normalization, resize mode), so switching models or the
//! center-crop option can never serve a stale vector. Entries are written to a temporary file and
//! renamed into place, so a crash leaves either the whole entry or none.

use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::vision::spec::{Fingerprint, InputSpec, ResizeMode};

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("embedding cache {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Lowercase hex sha256 of `bytes`: the content key of an image.
pub fn content_hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The cache namespace for embeddings made by this backbone with this preprocessing.
pub fn namespace_for(fingerprint: &Fingerprint, spec: &InputSpec, mode: ResizeMode) -> String {
    // serde_json of plain structs is deterministic (field order is declaration order).
    let identity = serde_json::json!({ "fingerprint": fingerprint, "spec": spec, "mode": mode });
    content_hash(identity.to_string().as_bytes())[..16].to_string()
}

/// The default cache root: `$XDG_CACHE_HOME/glimpse/embeddings`, else `~/.cache/glimpse/embeddings`,
/// else `.glimpse-cache/embeddings` in the working directory.
pub fn default_root() -> PathBuf {
    if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("glimpse/embeddings");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home).join(".cache/glimpse/embeddings");
    }
    PathBuf::from(".glimpse-cache/embeddings")
}

/// A directory of cached embeddings for one namespace.
#[derive(Debug, Clone)]
pub struct EmbeddingCache {
    dir: PathBuf,
    dim: usize,
}

impl EmbeddingCache {
    /// Opens (creating if needed) the cache for `namespace` under `root`; entries hold `dim` floats.
    pub fn open(root: &Path, namespace: &str, dim: usize) -> Result<Self, CacheError> {
        let dir = root.join(namespace);
        std::fs::create_dir_all(&dir).map_err(|source| CacheError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(Self { dir, dim })
    }

    fn entry_path(&self, hash: &str) -> PathBuf {
        let shard = hash.get(..2).unwrap_or("xx");
        self.dir.join(shard).join(format!("{hash}.f32"))
    }

    /// The cached embedding for an image with content hash `hash`, if present and well-formed.
    /// A damaged entry (wrong length) counts as a miss and is recomputed by the caller.
    pub fn get(&self, hash: &str) -> Option<Vec<f32>> {
        let bytes = std::fs::read(self.entry_path(hash)).ok()?;
        if bytes.len() != self.dim * 4 {
            return None;
        }
        let values: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        values.iter().all(|v| v.is_finite()).then_some(values)
    }

    /// Stores `embedding` under `hash` (write to a temporary file, then rename).
    pub fn put(&self, hash: &str, embedding: &[f32]) -> Result<(), CacheError> {
        let path = self.entry_path(hash);
        let io_err = |source| CacheError::Io {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io_err)?;
        }
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut bytes = Vec::with_capacity(embedding.len() * 4);
        for v in embedding {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        let mut file = std::fs::File::create(&tmp).map_err(io_err)?;
        file.write_all(&bytes).map_err(io_err)?;
        drop(file);
        std::fs::rename(&tmp, &path).map_err(io_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vision::spec::Layout;

    fn spec() -> InputSpec {
        InputSpec {
            width: 224,
            height: 224,
            layout: Layout::Nchw,
            mean: [0.5; 3],
            std: [0.5; 3],
            pixel_scale: 255.0,
        }
    }

    fn fp(tensor: &str) -> Fingerprint {
        Fingerprint {
            engine: crate::vision::spec::DEFAULT_ENGINE.into(),
            model_sha256: "ab".repeat(32),
            embedding_tensor: tensor.into(),
            dim: 3,
        }
    }

    #[test]
    fn round_trip_and_miss() {
        let dir = tempfile::tempdir().unwrap();
        let cache = EmbeddingCache::open(dir.path(), "ns", 3).unwrap();
        let key = content_hash(b"image");
        assert!(cache.get(&key).is_none());
        cache.put(&key, &[1.0, -2.5, 3.25]).unwrap();
        assert_eq!(cache.get(&key).unwrap(), vec![1.0, -2.5, 3.25]);
        // A cache opened for another dimension treats the entry as a miss.
        let other = EmbeddingCache::open(dir.path(), "ns", 4).unwrap();
        assert!(other.get(&key).is_none());
    }

    #[test]
    fn namespace_changes_with_anything_that_changes_embeddings() {
        let base = namespace_for(&fp("features"), &spec(), ResizeMode::Stretch);
        assert_eq!(
            base,
            namespace_for(&fp("features"), &spec(), ResizeMode::Stretch)
        );
        assert_ne!(
            base,
            namespace_for(&fp("other"), &spec(), ResizeMode::Stretch)
        );
        assert_ne!(
            base,
            namespace_for(&fp("features"), &spec(), ResizeMode::CenterCrop)
        );
        let mut s = spec();
        s.mean = [0.4; 3];
        assert_ne!(
            base,
            namespace_for(&fp("features"), &s, ResizeMode::Stretch)
        );
    }
}
