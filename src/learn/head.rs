//! The trained head: its forward pass (single embedding and sgemm batches) and its file, a
//! versioned, checksummed container that refuses corrupt files and heads trained for another
//! backbone. The byte layout is documented in docs/head-format.md.

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::learn::train::{HeadKind, TrainReport};
use crate::vision::spec::Fingerprint;

/// First 8 bytes of every head file.
pub const MAGIC: &[u8; 8] = b"GLMPHEAD";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// magic + version (u32) + header length (u32) + parameter blob length (u64).
const PREAMBLE_LEN: usize = 8 + 4 + 4 + 8;
const CHECKSUM_LEN: usize = 32;
/// Name used in error messages for heads parsed from memory.
const IN_MEMORY: &str = "(in-memory head)";

/// Why a head could not be loaded, saved or applied. One line each, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("cannot {action} head file {file}: {source}")]
    Io {
        action: &'static str,
        file: String,
        source: std::io::Error,
    },
    #[error("{file} is not a glimpse head file (bad magic)")]
    BadMagic { file: String },
    #[error(
        "head file {file} has format version {found}, this build reads version {FORMAT_VERSION}"
    )]
    UnsupportedVersion { file: String, found: u32 },
    #[error("corrupt head file {file}: truncated ({found} bytes, expected {expected})")]
    Truncated {
        file: String,
        found: usize,
        expected: usize,
    },
    #[error("corrupt head file {file}: {reason}")]
    Corrupt { file: String, reason: String },
    #[error("head {file} was trained for backbone {trained}, this backbone is {current}")]
    FingerprintMismatch {
        file: String,
        trained: Box<Fingerprint>,
        current: Box<Fingerprint>,
    },
    #[error(
        "head {file} was trained with engine {trained} and this backbone runs {current}: {reason}; \
         retrain it with this engine (glimpse train --engine ...), or set model.engine/device/precision back to {trained}"
    )]
    EngineDisagrees {
        file: String,
        trained: String,
        current: String,
        reason: String,
    },
    #[error("embedding has {found} values, the head expects {expected}")]
    DimMismatch { expected: usize, found: usize },
    #[error("embedding has a non-finite value (NaN or infinite) at index {0}")]
    NonFinite(usize),
}

/// One dense layer: `out = in . weights + bias`, `weights` row-major `inputs x outputs`.
#[derive(Debug, Clone, PartialEq)]
pub struct Layer {
    pub inputs: usize,
    pub outputs: usize,
    pub weights: Vec<f32>,
    pub bias: Vec<f32>,
}

/// A trained classifier over one backbone's embeddings.
///
/// Computes `softmax(layers(z))` on the normalized embedding `z = (x - mean) * scale`, with ReLU
/// between layers (one layer = linear head, two = MLP).
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    classes: Vec<String>,
    fingerprint: Fingerprint,
    kind: HeadKind,
    mean: Vec<f32>,
    scale: Vec<f32>,
    layers: Vec<Layer>,
    report: TrainReport,
}

/// The JSON header of a head file. Tensors are listed in blob order.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    classes: Vec<String>,
    kind: HeadKind,
    fingerprint: Fingerprint,
    tensors: Vec<TensorInfo>,
    report: TrainReport,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct TensorInfo {
    name: String,
    shape: Vec<usize>,
}

impl Head {
    /// Assembles a head; the trainer guarantees the shapes agree (checked again on load).
    pub(crate) fn from_parts(
        classes: Vec<String>,
        fingerprint: Fingerprint,
        kind: HeadKind,
        mean: Vec<f32>,
        scale: Vec<f32>,
        layers: Vec<Layer>,
        report: TrainReport,
    ) -> Head {
        Head {
            classes,
            fingerprint,
            kind,
            mean,
            scale,
            layers,
            report,
        }
    }

    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }

    pub fn report(&self) -> &TrainReport {
        &self.report
    }

    pub(crate) fn report_mut(&mut self) -> &mut TrainReport {
        &mut self.report
    }

    /// The input normalization (`mean`, `scale`) and the layers, for code that derives a head
    /// from this one (the imprint fast path).
    pub(crate) fn parts(&self) -> (&[f32], &[f32], &[Layer]) {
        (&self.mean, &self.scale, &self.layers)
    }

    pub fn kind(&self) -> HeadKind {
        self.kind
    }

    /// Length of the embeddings this head takes.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// Class probabilities for one embedding. Allocates only the output (and, for the MLP, the
    /// hidden activations): the normalization is folded into the first layer's loop.
    pub fn predict(&self, embedding: &[f32]) -> Result<Vec<f32>, HeadError> {
        if embedding.len() != self.dim() {
            return Err(HeadError::DimMismatch {
                expected: self.dim(),
                found: embedding.len(),
            });
        }
        if let Some(i) = embedding.iter().position(|v| !v.is_finite()) {
            return Err(HeadError::NonFinite(i));
        }
        let Some((first, rest)) = self.layers.split_first() else {
            return Ok(Vec::new()); // unreachable for a head built by the trainer or loader
        };
        let mut out = first.bias.clone();
        for (j, ((&x, &m), &s)) in embedding
            .iter()
            .zip(&self.mean)
            .zip(&self.scale)
            .enumerate()
        {
            let z = (x - m) * s;
            if z != 0.0 {
                let row = &first.weights[j * first.outputs..(j + 1) * first.outputs];
                for (o, &w) in out.iter_mut().zip(row) {
                    *o += z * w;
                }
            }
        }
        for layer in rest {
            let mut next = layer.bias.clone();
            for (j, &a) in out.iter().enumerate() {
                let a = a.max(0.0); // ReLU on the previous layer's output
                if a != 0.0 {
                    let row = &layer.weights[j * layer.outputs..(j + 1) * layer.outputs];
                    for (o, &w) in next.iter_mut().zip(row) {
                        *o += a * w;
                    }
                }
            }
            out = next;
        }
        softmax(&mut out);
        Ok(out)
    }

    /// Class probabilities for `n` embeddings (row-major `n x dim`), as `n x classes`.
    ///
    /// # Panics
    /// If `features.len() != n * self.dim()`: batches come from this crate's own backbone, whose
    /// dimension the head's fingerprint was checked against when the head was loaded.
    pub fn predict_batch(&self, features: &[f32], n: usize) -> Vec<f32> {
        let d = self.dim();
        assert_eq!(
            features.len(),
            n * d,
            "predict_batch: features must hold n x {d} values"
        );
        let mut x: Vec<f32> = Vec::with_capacity(n * d);
        for row in features.chunks_exact(d.max(1)) {
            x.extend(
                row.iter()
                    .zip(&self.mean)
                    .zip(&self.scale)
                    .map(|((v, m), s)| (v - m) * s),
            );
        }
        for (i, layer) in self.layers.iter().enumerate() {
            if i > 0 {
                for v in x.iter_mut() {
                    *v = v.max(0.0);
                }
            }
            let mut out = Vec::with_capacity(n * layer.outputs);
            for _ in 0..n {
                out.extend_from_slice(&layer.bias);
            }
            gemm(
                n,
                layer.inputs,
                layer.outputs,
                &x,
                false,
                &layer.weights,
                false,
                &mut out,
                1.0,
            );
            x = out;
        }
        for row in x.chunks_exact_mut(self.classes.len().max(1)) {
            softmax(row);
        }
        x
    }

    /// The head file's bytes (see docs/head-format.md). Deterministic: the training report's
    /// wall-clock `duration_ms` is written as 0, so the same data, config and seed give the same
    /// bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut report = self.report.clone();
        report.duration_ms = 0;
        let header = Header {
            classes: self.classes.clone(),
            kind: self.kind,
            fingerprint: self.fingerprint.clone(),
            tensors: self.tensor_infos(),
            report,
        };
        // Serializing plain structs of strings and numbers cannot fail; non-finite floats (which
        // serde_json writes as null) cannot occur in a trained report.
        let header = serde_json::to_vec(&header).unwrap_or_default();
        let blob_len = 4 * self.tensors().map(<[f32]>::len).sum::<usize>();
        let mut out = Vec::with_capacity(PREAMBLE_LEN + header.len() + blob_len + CHECKSUM_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&(header.len() as u32).to_le_bytes());
        out.extend_from_slice(&(blob_len as u64).to_le_bytes());
        out.extend_from_slice(&header);
        for tensor in self.tensors() {
            for v in tensor {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        let checksum = Sha256::digest(&out);
        out.extend_from_slice(&checksum);
        out
    }

    /// Parses head bytes; with `expected`, refuses a head trained for another backbone.
    pub fn from_bytes(bytes: &[u8], expected: Option<&Fingerprint>) -> Result<Head, HeadError> {
        parse(bytes, IN_MEMORY, expected)
    }

    /// [`Head::from_bytes`] with `name` (a file, a stored version, a group message) in errors.
    pub fn from_named_bytes(
        bytes: &[u8],
        name: &str,
        expected: Option<&Fingerprint>,
    ) -> Result<Head, HeadError> {
        parse(bytes, name, expected)
    }

    /// Writes the head atomically: a temporary file in the same directory, fsync, rename over
    /// `path`, fsync the directory. A crash leaves either the old file or the new one, never half.
    pub fn save(&self, path: &Path) -> Result<(), HeadError> {
        crate::fsutil::write_atomic(path, &self.to_bytes()).map_err(|(step, source)| {
            HeadError::Io {
                action: step.action(),
                file: path.display().to_string(),
                source,
            }
        })
    }

    /// Reads and checks a head file (see [`Head::from_bytes`]).
    pub fn load(path: &Path, expected: Option<&Fingerprint>) -> Result<Head, HeadError> {
        let file = path.display().to_string();
        let bytes = fs::read(path).map_err(|source| HeadError::Io {
            action: "read",
            file: file.clone(),
            source,
        })?;
        parse(&bytes, &file, expected)
    }

    /// Re-labels the head as belonging to `fingerprint`, once the cross-engine check
    /// (`learn::cross_engine`) found the two engines' embeddings interchangeable. Only for the
    /// same model, tensor and size.
    pub(crate) fn rebind(&mut self, fingerprint: Fingerprint) {
        debug_assert!(self.fingerprint.same_model(&fingerprint));
        self.fingerprint = fingerprint;
    }

    /// Parameter tensors in blob order.
    fn tensors(&self) -> impl Iterator<Item = &[f32]> {
        [self.mean.as_slice(), self.scale.as_slice()]
            .into_iter()
            .chain(
                self.layers
                    .iter()
                    .flat_map(|l| [l.weights.as_slice(), l.bias.as_slice()]),
            )
    }

    fn tensor_infos(&self) -> Vec<TensorInfo> {
        expected_tensors(
            self.dim(),
            &self.layers.iter().map(|l| l.outputs).collect::<Vec<_>>(),
        )
    }
}

/// The tensor list of a head with embedding length `dim` and the given layer output sizes.
fn expected_tensors(dim: usize, outputs: &[usize]) -> Vec<TensorInfo> {
    let t = |name: String, shape: Vec<usize>| TensorInfo { name, shape };
    let mut list = vec![t("mean".into(), vec![dim]), t("scale".into(), vec![dim])];
    let mut inputs = dim;
    for (i, &o) in outputs.iter().enumerate() {
        list.push(t(format!("layer{i}.weights"), vec![inputs, o]));
        list.push(t(format!("layer{i}.bias"), vec![o]));
        inputs = o;
    }
    list
}

fn parse(bytes: &[u8], file: &str, expected: Option<&Fingerprint>) -> Result<Head, HeadError> {
    let corrupt = |reason: String| HeadError::Corrupt {
        file: file.to_string(),
        reason,
    };
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(HeadError::BadMagic {
            file: file.to_string(),
        });
    }
    if bytes.len() < PREAMBLE_LEN {
        return Err(HeadError::Truncated {
            file: file.to_string(),
            found: bytes.len(),
            expected: PREAMBLE_LEN,
        });
    }
    let u32_at =
        |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let version = u32_at(8);
    if version != FORMAT_VERSION {
        return Err(HeadError::UnsupportedVersion {
            file: file.to_string(),
            found: version,
        });
    }
    let header_len = u32_at(12) as usize;
    let mut blob_len_bytes = [0u8; 8];
    blob_len_bytes.copy_from_slice(&bytes[16..24]);
    let blob_len = u64::from_le_bytes(blob_len_bytes);
    let expected_len = usize::try_from(blob_len)
        .ok()
        .and_then(|b| {
            (PREAMBLE_LEN + CHECKSUM_LEN)
                .checked_add(header_len)?
                .checked_add(b)
        })
        .ok_or_else(|| corrupt(format!("impossible parameter blob length {blob_len}")))?;
    if bytes.len() < expected_len {
        return Err(HeadError::Truncated {
            file: file.to_string(),
            found: bytes.len(),
            expected: expected_len,
        });
    }
    if bytes.len() > expected_len {
        return Err(corrupt(format!(
            "{} bytes after the end of the head",
            bytes.len() - expected_len
        )));
    }
    let (body, checksum) = bytes.split_at(expected_len - CHECKSUM_LEN);
    if Sha256::digest(body).as_slice() != checksum {
        return Err(corrupt("checksum mismatch".into()));
    }

    let header: Header = serde_json::from_slice(&body[PREAMBLE_LEN..PREAMBLE_LEN + header_len])
        .map_err(|e| corrupt(format!("invalid header: {e}")))?;
    if let Some(current) = expected {
        if *current != header.fingerprint {
            return Err(HeadError::FingerprintMismatch {
                file: file.to_string(),
                trained: Box::new(header.fingerprint),
                current: Box::new(current.clone()),
            });
        }
    }
    let k = header.classes.len();
    let outputs = match header.kind {
        HeadKind::Linear => vec![k],
        HeadKind::Mlp { hidden } => vec![hidden, k],
    };
    let dim = header.fingerprint.dim;
    let want = expected_tensors(dim, &outputs);
    if header.tensors != want || k < 2 {
        return Err(corrupt(format!(
            "tensors {:?} do not match a {:?} head for {k} classes on {dim}-d embeddings",
            header.tensors, header.kind
        )));
    }
    let values = (blob_len / 4) as usize;
    let want_values: usize = want.iter().map(|t| t.shape.iter().product::<usize>()).sum();
    if !blob_len.is_multiple_of(4) || values != want_values {
        return Err(corrupt(format!(
            "parameter blob has {blob_len} bytes, expected {}",
            4 * want_values
        )));
    }
    let mut floats = body[PREAMBLE_LEN + header_len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
    if let Some(bad) = floats.clone().position(|v| !v.is_finite()) {
        return Err(corrupt(format!("parameter {bad} is not finite")));
    }
    let mut take = |len: usize| -> Vec<f32> { floats.by_ref().take(len).collect() };
    let mean = take(dim);
    let scale = take(dim);
    let mut layers = Vec::with_capacity(outputs.len());
    let mut inputs = dim;
    for &o in &outputs {
        let weights = take(inputs * o);
        let bias = take(o);
        layers.push(Layer {
            inputs,
            outputs: o,
            weights,
            bias,
        });
        inputs = o;
    }
    Ok(Head {
        classes: header.classes,
        fingerprint: header.fingerprint,
        kind: header.kind,
        mean,
        scale,
        layers,
        report: header.report,
    })
}

/// Softmax in place, stable (max subtracted).
fn softmax(values: &mut [f32]) {
    let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in values.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    for v in values.iter_mut() {
        *v /= sum;
    }
}

/// `C = op(A) . op(B) + beta * C` for row-major matrices, with matrixmultiply's sgemm:
/// `op(A)` is `m x k` (stored `k x m` when `a_transposed`), `op(B)` is `k x n` (stored `n x k` when
/// `b_transposed`), `C` is `m x n`.
///
/// # Panics
/// If a slice is shorter than its shape says (a programming error in this crate).
#[allow(clippy::too_many_arguments)] // mirrors the BLAS signature it wraps
pub(crate) fn gemm(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    a_transposed: bool,
    b: &[f32],
    b_transposed: bool,
    c: &mut [f32],
    beta: f32,
) {
    assert!(
        a.len() >= m * k && b.len() >= k * n && c.len() >= m * n,
        "gemm: slice too short"
    );
    let (rsa, csa) = if a_transposed {
        (1, m as isize)
    } else {
        (k as isize, 1)
    };
    let (rsb, csb) = if b_transposed {
        (1, k as isize)
    } else {
        (n as isize, 1)
    };
    // SAFETY: the assert above guarantees every index sgemm touches, (i * rs + j * cs) for
    // i < rows and j < cols of each operand, lies inside its slice; `c` is borrowed mutably, so
    // it cannot alias `a` or `b`.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            rsa,
            csa,
            b.as_ptr(),
            rsb,
            csb,
            beta,
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

#[cfg(test)]
mod tests;
