//! The frozen backbone: an ONNX classifier network read at two tensors: the embedding (what the
//! trainable head sees) and, when the model has them, the logits (for the "first look" ImageNet
//! classes).
//!
//! Two engines run it behind one seam (`EngineRun`): tract (the default, pure Rust) and
//! onnxruntime (CPU, CUDA, TensorRT; loaded at run time). What is engine-independent (the file's
//! hash, which tensors to read, the labels, the output shape checks) happens here once, so
//! everything above `Backbone` does not know which engine it has.

mod agreement;
mod auto_embedding;
mod ort_engine;
mod tract_engine;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tract_onnx::pb;
use tract_onnx::prelude::Framework;

pub use agreement::{check_agreement, AgreementCache, AGREEMENT_TOLERANCE};
pub use auto_embedding::{find_embedding_tensor, AutoEmbeddingError, GraphNode};
pub use ort_engine::MIN_ONNXRUNTIME;

use super::engine::{EngineKind, EngineOptions};
use super::labels::{Labels, LabelsError};
use super::manifest::{EmbeddingTensor, ModelManifest};
use super::spec::{Fingerprint, InputSpec, Layout};

/// More threads than this is a configuration mistake, not a wish (and rayon would fail to spawn).
const MAX_THREADS: usize = 256;

/// How the backbone runs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackboneOptions {
    /// Threads for tract's matrix products (the `multithread-mm` executor); 0 or 1 = the calling
    /// thread only. Only this model's plan uses them, whatever `set_threads` says.
    pub threads: usize,
    /// Which engine, device and precision (default: tract on the CPU in fp32).
    pub engine: EngineOptions,
}

/// Sets tract's process-wide default executor: `n` threads for matrix products (0 or 1 = single
/// threaded). Plans built with `BackboneOptions::threads > 1` use their own pool instead.
/// (tract panics if the OS refuses to start the threads; `n` is capped so only a starved
/// system can get there.)
pub fn set_threads(n: usize) {
    use tract_linalg::multithread::{set_default_executor, Executor};
    if n > 1 {
        set_default_executor(Executor::multithread(n.min(MAX_THREADS)));
    } else {
        set_default_executor(Executor::SingleThread);
    }
}

/// What one inference produced.
#[derive(Debug, Clone, PartialEq)]
pub struct BackboneOutput {
    pub embedding: Vec<f32>,
    /// Present when the manifest names (or the model has) a logits output.
    pub logits: Option<Vec<f32>>,
}

/// Why a backbone could not be loaded or run. Each message is one line naming the file(s) and
/// the tensor or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum BackboneError {
    #[error("model file {} not found (manifest {}){hint}", path.display(), manifest.display())]
    ModelMissing {
        path: PathBuf,
        manifest: PathBuf,
        hint: String,
    },
    #[error("cannot read model file {}: {source}", path.display())]
    ModelRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "model file {} has sha256 {actual}, but manifest {} expects {expected}",
        path.display(),
        manifest.display()
    )]
    Sha256Mismatch {
        path: PathBuf,
        manifest: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("cannot load ONNX model {}: {message}", path.display())]
    Onnx { path: PathBuf, message: String },
    #[error(
        "manifest {}: {key}: tensor `{tensor}` not found in {model}; outputs are: {outputs}",
        manifest.display()
    )]
    TensorNotFound {
        manifest: PathBuf,
        key: &'static str,
        tensor: String,
        model: String,
        outputs: String,
    },
    #[error(
        "manifest {}: input.name: input `{name}` not found in {model}; inputs are: {inputs}",
        manifest.display()
    )]
    InputNotFound {
        manifest: PathBuf,
        name: String,
        model: String,
        inputs: String,
    },
    #[error("manifest {}: {reason}", manifest.display())]
    Outputs { manifest: PathBuf, reason: String },
    #[error("manifest {}: outputs.embedding = \"auto\" in {model}: {source}", manifest.display())]
    AutoEmbedding {
        manifest: PathBuf,
        model: String,
        #[source]
        source: AutoEmbeddingError,
    },
    #[error("tensor `{tensor}` in {model} has shape {shape}, expected {expected}")]
    BadOutputShape {
        tensor: String,
        model: String,
        shape: String,
        expected: &'static str,
    },
    #[error(transparent)]
    Labels(#[from] LabelsError),
    #[error(
        "labels file {} names {names} classes after offset {offset}, but the logits have {logits}",
        path.display()
    )]
    LabelsMismatch {
        path: PathBuf,
        names: usize,
        offset: usize,
        logits: usize,
    },
    #[error("threads = {0}: at most {MAX_THREADS}")]
    Threads(usize),
    #[error("input tensor has {got} values, the model wants {expected}")]
    InputLen { expected: usize, got: usize },
    #[error("inference failed: {0}")]
    Run(String),
    #[error("{0}")]
    Combination(#[from] super::engine::ComboError),
    /// The library is missing, too old or would not start; the message says what to install.
    #[error("model.engine = \"onnxruntime\": {0}")]
    OnnxRuntime(String),
    #[error(
        "model.device = \"{device}\": onnxruntime could not use this execution provider ({message}); \
         install an onnxruntime build with it and its GPU libraries (docs/deploy.md), or set model.device = \"cpu\""
    )]
    Provider { device: String, message: String },
}

/// One engine's side of the seam: run one batch-1 input, return the selected outputs in order
/// (embedding, then logits when chosen), each flattened in logical order.
trait EngineRun: Send + Sync + std::fmt::Debug {
    fn run(&self, input: &[f32]) -> Result<Vec<Vec<f32>>, BackboneError>;
}

/// Output shapes an engine reports for the embedding and logits (None when not concrete).
struct OutputShapes {
    embedding: Option<Vec<usize>>,
    logits: Option<Vec<usize>>,
}

/// A loaded, optimized backbone, ready to run.
#[derive(Debug)]
pub struct Backbone {
    engine: Box<dyn EngineRun>,
    /// The execution provider in use (`tract` for tract), for the log and `stats`.
    provider: String,
    input_spec: InputSpec,
    fingerprint: Fingerprint,
    labels: Option<Labels>,
    has_logits: bool,
    /// Kept for the cross-engine check, which loads the same model with another engine.
    manifest: ModelManifest,
    options: BackboneOptions,
    /// Verdicts of the cross-engine check against other engines (see [`Backbone::agreement`]).
    agreements: AgreementCache,
}

/// The tensors the manifest asks for, resolved against the graph.
struct ChosenTensors {
    input: String,
    embedding: String,
    logits: Option<String>,
}

impl Backbone {
    /// Loads the model the manifest describes, checks its hash, picks the embedding (and logits)
    /// tensors, fixes the input to batch 1, optimizes and builds the runnable plan.
    pub fn load(manifest: &ModelManifest, opts: &BackboneOptions) -> Result<Self, BackboneError> {
        if opts.threads > MAX_THREADS {
            return Err(BackboneError::Threads(opts.threads));
        }
        let path = manifest.model_path();
        let bytes = read_model(manifest, &path)?;
        let model_sha256 = hex::encode(Sha256::digest(&bytes));
        if let Some(expected) = &manifest.model.sha256 {
            if *expected != model_sha256 {
                return Err(BackboneError::Sha256Mismatch {
                    path,
                    manifest: manifest.origin.clone(),
                    expected: expected.clone(),
                    actual: model_sha256,
                });
            }
        }
        opts.engine
            .validate(crate::vision::engine::cpu_has_fp16())?;
        let onnx_error = |e: tract_onnx::prelude::TractError| BackboneError::Onnx {
            path: path.clone(),
            message: format!("{e:#}").replace('\n', " "),
        };
        let proto = tract_onnx::onnx()
            .proto_model_for_read(&mut bytes.as_slice())
            .map_err(onnx_error)?;
        let graph = proto.graph.as_ref().ok_or_else(|| BackboneError::Onnx {
            path: path.clone(),
            message: "the file holds no graph".into(),
        })?;
        let chosen = choose_tensors(manifest, &path, graph)?;

        let input_spec = manifest.input_spec();
        let (w, h) = (input_spec.width as usize, input_spec.height as usize);
        let input_shape = match input_spec.layout {
            Layout::Nchw => [1, 3, h, w],
            Layout::Nhwc => [1, h, w, 3],
        };
        let (engine, shapes, provider): (Box<dyn EngineRun>, OutputShapes, String) =
            match opts.engine.engine {
                EngineKind::Tract => {
                    let (engine, shapes) =
                        tract_engine::load(&proto, &path, &chosen, input_shape, opts)?;
                    (Box::new(engine), shapes, "tract".into())
                }
                EngineKind::Onnxruntime => {
                    let (engine, shapes, provider) =
                        ort_engine::load(&proto, &path, &chosen, input_shape, opts)?;
                    (Box::new(engine), shapes, provider)
                }
            };
        log::info!(
            "{}: backbone engine {} (provider {provider})",
            manifest.name,
            opts.engine.id()
        );

        let model_name = file_name(&path);
        let embedding_shape = shapes.embedding;
        let dim =
            embedding_dim_of(&embedding_shape).ok_or_else(|| BackboneError::BadOutputShape {
                tensor: chosen.embedding.clone(),
                model: model_name.clone(),
                shape: format!("{embedding_shape:?}"),
                expected: "[1, D] or [1, D, 1, 1] (a pooled feature vector)",
            })?;
        let mut logits_dim = None;
        if let Some(logits) = &chosen.logits {
            let shape = shapes.logits.clone();
            logits_dim = Some(match shape.as_deref() {
                Some([1, n]) => *n,
                _ => {
                    return Err(BackboneError::BadOutputShape {
                        tensor: logits.clone(),
                        model: model_name,
                        shape: format!("{shape:?}"),
                        expected: "[1, classes]",
                    })
                }
            });
        }
        let labels = load_labels(manifest, logits_dim)?;

        Ok(Self {
            engine,
            provider,
            input_spec,
            fingerprint: Fingerprint {
                model_sha256,
                embedding_tensor: chosen.embedding,
                dim,
                engine: opts.engine.id(),
            },
            labels,
            has_logits: chosen.logits.is_some(),
            manifest: manifest.clone(),
            options: opts.clone(),
            agreements: AgreementCache::default(),
        })
    }

    /// The input the model wants (size, layout, normalization).
    pub fn input_spec(&self) -> &InputSpec {
        &self.input_spec
    }

    /// The execution provider running the model: `tract`, or onnxruntime's
    /// (`CPUExecutionProvider`, `CUDAExecutionProvider`, `TensorrtExecutionProvider`).
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// Which model file and tensor the embeddings come from.
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }

    /// [`check_agreement`] against `other_engine`, run once per engine for this backbone's
    /// lifetime (the verdict cannot change while the process runs: same model, same libraries).
    pub fn agreement(&self, other_engine: &str) -> Result<f32, String> {
        self.agreements
            .get_or_check(other_engine, || check_agreement(self, other_engine))
    }

    /// Class names for the logits, when the manifest has a labels file.
    pub fn labels(&self) -> Option<&Labels> {
        self.labels.as_ref()
    }

    /// Length of the embedding vector.
    pub fn embedding_dim(&self) -> usize {
        self.fingerprint.dim
    }

    /// Name of the tensor read as the embedding (the one `"auto"` found, if so).
    pub fn embedding_tensor(&self) -> &str {
        &self.fingerprint.embedding_tensor
    }

    /// Runs one preprocessed image (batch 1, `input_spec().tensor_len()` values in the
    /// manifest's layout).
    pub fn run(&self, input: &[f32]) -> Result<BackboneOutput, BackboneError> {
        let expected = self.input_spec.tensor_len();
        if input.len() != expected {
            return Err(BackboneError::InputLen {
                expected,
                got: input.len(),
            });
        }
        let mut outputs = self.engine.run(input)?.into_iter();
        let embedding = outputs
            .next()
            .ok_or_else(|| BackboneError::Run("embedding output missing".into()))?;
        let logits = if self.has_logits {
            Some(
                outputs
                    .next()
                    .ok_or_else(|| BackboneError::Run("logits output missing".into()))?,
            )
        } else {
            None
        };
        Ok(BackboneOutput { embedding, logits })
    }
}

fn read_model(manifest: &ModelManifest, path: &Path) -> Result<Vec<u8>, BackboneError> {
    std::fs::read(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            let hint = if manifest.model.url.is_some() {
                format!(
                    "; download it with `glimpse fetch-model {}`",
                    manifest.origin.display()
                )
            } else {
                String::new()
            };
            BackboneError::ModelMissing {
                path: path.to_path_buf(),
                manifest: manifest.origin.clone(),
                hint,
            }
        } else {
            BackboneError::ModelRead {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Resolves input, embedding and logits names against the ONNX graph, so a typo in the manifest
/// is reported with the names that do exist.
fn choose_tensors(
    manifest: &ModelManifest,
    path: &Path,
    graph: &pb::GraphProto,
) -> Result<ChosenTensors, BackboneError> {
    let model = file_name(path);
    let constants: HashSet<String> = graph
        .initializer
        .iter()
        .map(|t| t.name.clone())
        .chain(
            graph
                .node
                .iter()
                .filter(|n| n.op_type == "Constant")
                .flat_map(|n| n.output.iter().cloned()),
        )
        .collect();
    let node_outputs: HashSet<&str> = graph
        .node
        .iter()
        .flat_map(|n| n.output.iter().map(String::as_str))
        .collect();
    let graph_outputs: Vec<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
    let not_found = |key: &'static str, tensor: &str| BackboneError::TensorNotFound {
        manifest: manifest.origin.clone(),
        key,
        tensor: tensor.to_string(),
        model: model.clone(),
        outputs: graph_outputs.join(", "),
    };

    let inputs: Vec<&str> = graph
        .input
        .iter()
        .map(|i| i.name.as_str())
        .filter(|n| !constants.contains(*n))
        .collect();
    let input = match (&manifest.input.name, inputs.as_slice()) {
        (Some(name), _) if inputs.contains(&name.as_str()) => name.clone(),
        (None, [only]) => only.to_string(),
        (name, _) => {
            return Err(BackboneError::InputNotFound {
                manifest: manifest.origin.clone(),
                name: name.clone().unwrap_or_else(|| "(the only input)".into()),
                model,
                inputs: inputs.join(", "),
            })
        }
    };

    let logits = match &manifest.outputs.logits {
        Some(name) if node_outputs.contains(name.as_str()) => Some(name.clone()),
        Some(name) => return Err(not_found("outputs.logits", name)),
        // Without a name, a single-output model's output is its logits unless it IS the
        // embedding (a feature-vector model).
        None => match (graph_outputs.as_slice(), &manifest.outputs.embedding) {
            ([only], EmbeddingTensor::Named(e)) if only == e => None,
            ([only], _) => Some(only.to_string()),
            _ => None,
        },
    };

    let embedding = match &manifest.outputs.embedding {
        EmbeddingTensor::Named(name) if node_outputs.contains(name.as_str()) => name.clone(),
        EmbeddingTensor::Named(name) => return Err(not_found("outputs.embedding", name)),
        EmbeddingTensor::Auto => {
            let logits = logits.as_deref().ok_or_else(|| BackboneError::Outputs {
                manifest: manifest.origin.clone(),
                reason: format!(
                    "outputs.embedding = \"auto\" needs the logits: set outputs.logits (outputs of {model} are: {})",
                    graph_outputs.join(", ")
                ),
            })?;
            let nodes: Vec<GraphNode> = graph.node.iter().map(graph_node).collect();
            find_embedding_tensor(&nodes, &constants, logits).map_err(|source| {
                BackboneError::AutoEmbedding {
                    manifest: manifest.origin.clone(),
                    model: model.clone(),
                    source,
                }
            })?
        }
    };
    log::info!(
        "{}: input `{input}`, embedding `{embedding}`, logits {}",
        manifest.name,
        logits
            .as_deref()
            .map_or("none".into(), |l| format!("`{l}`"))
    );
    Ok(ChosenTensors {
        input,
        embedding,
        logits,
    })
}

fn graph_node(node: &pb::NodeProto) -> GraphNode {
    let kernel_1x1 = node
        .attribute
        .iter()
        .find(|a| a.name == "kernel_shape")
        .is_some_and(|a| !a.ints.is_empty() && a.ints.iter().all(|&k| k == 1));
    GraphNode {
        op_type: node.op_type.clone(),
        name: node.name.clone(),
        inputs: node.input.clone(),
        outputs: node.output.clone(),
        kernel_1x1,
    }
}

/// An embedding is a pooled vector: batch 1 and one feature axis, any other axes of size 1.
fn embedding_dim_of(shape: &Option<Vec<usize>>) -> Option<usize> {
    match shape.as_deref()? {
        [1, rest @ ..] if !rest.is_empty() => {
            let big: Vec<usize> = rest.iter().copied().filter(|&d| d != 1).collect();
            match big.as_slice() {
                [d] => Some(*d),
                [] => Some(1),
                _ => None,
            }
        }
        _ => None,
    }
}

fn load_labels(
    manifest: &ModelManifest,
    logits_dim: Option<usize>,
) -> Result<Option<Labels>, BackboneError> {
    let (Some(section), Some(path)) = (&manifest.labels, manifest.labels_path()) else {
        return Ok(None);
    };
    let Some(logits_dim) = logits_dim else {
        return Err(BackboneError::Outputs {
            manifest: manifest.origin.clone(),
            reason: "labels are set but the model has no logits output (set outputs.logits)".into(),
        });
    };
    let labels = Labels::load(&path, section.offset)?;
    if labels.len() != logits_dim {
        return Err(BackboneError::LabelsMismatch {
            path,
            names: labels.len(),
            offset: section.offset,
            logits: logits_dim,
        });
    }
    Ok(Some(labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backbone_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Backbone>();
    }

    #[test]
    fn embedding_shapes() {
        assert_eq!(embedding_dim_of(&Some(vec![1, 1280])), Some(1280));
        assert_eq!(embedding_dim_of(&Some(vec![1, 1280, 1, 1])), Some(1280));
        assert_eq!(embedding_dim_of(&Some(vec![1, 1, 1, 1280])), Some(1280));
        assert_eq!(embedding_dim_of(&Some(vec![1, 1280, 7, 7])), None);
        assert_eq!(embedding_dim_of(&Some(vec![2, 1280])), None);
        assert_eq!(embedding_dim_of(&Some(vec![1])), None);
        assert_eq!(embedding_dim_of(&None), None);
    }
}
