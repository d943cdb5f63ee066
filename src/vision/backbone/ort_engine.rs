//! The onnxruntime engine: the same ONNX file run by libonnxruntime, loaded at run time through
//! the `ort` crate's `load-dynamic` (no build links it), on the CPU, CUDA or TensorRT provider.
//!
//! onnxruntime only returns graph outputs, so the graph is re-encoded with exactly the chosen
//! embedding (and logits) tensors as its outputs. A provider that fails to register is an error:
//! falling back to the CPU silently would hide a broken GPU install behind slow predictions.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;
use ort::ep::{self, ExecutionProviderDispatch};
use ort::session::Session;
use ort::value::TensorRef;
use prost::Message;
use tract_onnx::pb;

use super::{BackboneError, BackboneOptions, ChosenTensors, EngineRun, OutputShapes};
use crate::vision::engine::{Device, Precision};

/// The oldest onnxruntime the `ort` build here loads (its C API 17; `ort` checks the version
/// when it opens the library).
pub const MIN_ONNXRUNTIME: &str = "1.17";

/// A session ready to run. `ort`'s `Session::run` takes `&mut self`; the lock is uncontended
/// in the daemon (one backbone worker) and keeps `Backbone` `Sync`.
pub(super) struct OrtEngine {
    session: Mutex<Session>,
    input_shape: [usize; 4],
    outputs: usize,
}

impl std::fmt::Debug for OrtEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtEngine")
            .field("input_shape", &self.input_shape)
            .finish_non_exhaustive()
    }
}

/// The process-wide onnxruntime environment. `ort` can open one library per process, so the
/// first load decides (and its error is repeated to every later caller).
fn environment(library: Option<&Path>) -> Result<&'static Environment, BackboneError> {
    static ENV: OnceLock<Result<Environment, String>> = OnceLock::new();
    ENV.get_or_init(|| {
        let path: PathBuf = library.map(Path::to_path_buf).unwrap_or_else(|| {
            std::env::var_os("ORT_DYLIB_PATH")
                .filter(|p| !p.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("libonnxruntime.so"))
        });
        let builder = ort::init_from(&path).map_err(|e| {
            format!(
                "cannot load the onnxruntime library ({e}); install onnxruntime >= {MIN_ONNXRUNTIME} \
                 (`pip install onnxruntime`, or the JetPack build, see docs/deploy.md) and point \
                 model.onnxruntime_library or ORT_DYLIB_PATH at its libonnxruntime.so, or set \
                 model.engine = \"tract\""
            )
            .replace('\n', " ")
        })?;
        builder
            .with_name("glimpse")
            .build()
            .map_err(|e| format!("cannot start onnxruntime: {e}"))
    })
    .as_ref()
    .map_err(|m| BackboneError::OnnxRuntime(m.clone()))
}

/// The execution provider for `device`, set to fail loudly.
fn provider(opts: &BackboneOptions) -> Option<ExecutionProviderDispatch> {
    let engine = &opts.engine;
    match engine.device {
        Device::Cpu => None,
        Device::Cuda => Some(ep::CUDA::default().build().error_on_failure()),
        Device::Tensorrt => {
            let mut trt = ep::TensorRT::default().with_fp16(engine.precision == Precision::Fp16);
            if let Some(dir) = &engine.cache_dir {
                // Building a TensorRT engine takes minutes on a Jetson; the cache makes it once.
                trt = trt
                    .with_engine_cache(true)
                    .with_engine_cache_path(dir.display())
                    .with_timing_cache(true)
                    .with_timing_cache_path(dir.display());
            }
            Some(trt.build().error_on_failure())
        }
    }
}

/// The model with exactly the chosen tensors as graph outputs, encoded again.
fn with_outputs(proto: &pb::ModelProto, chosen: &ChosenTensors) -> Vec<u8> {
    let mut proto = proto.clone();
    let float = |name: &str| pb::ValueInfoProto {
        name: name.to_string(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: pb::tensor_proto::DataType::Float as i32,
                shape: None,
            })),
        }),
        doc_string: String::new(),
    };
    if let Some(graph) = proto.graph.as_mut() {
        graph.output = std::iter::once(&chosen.embedding)
            .chain(chosen.logits.as_ref())
            .map(|n| float(n))
            .collect();
        // Shapes recorded for intermediate tensors may carry the symbolic batch; onnxruntime
        // infers them again.
        graph.value_info.clear();
    }
    proto.encode_to_vec()
}

/// Builds the session and runs it once on zeros to learn the output shapes (the graph's
/// declared ones are symbolic), which also warms it up.
pub(super) fn load(
    proto: &pb::ModelProto,
    path: &Path,
    chosen: &ChosenTensors,
    input_shape: [usize; 4],
    opts: &BackboneOptions,
) -> Result<(OrtEngine, OutputShapes, String), BackboneError> {
    let env = environment(opts.engine.onnxruntime_library.as_deref())?;
    let onnx_error = |e: ort::Error| BackboneError::Onnx {
        path: path.to_path_buf(),
        message: format!("onnxruntime: {e}").replace('\n', " "),
    };
    let mut builder = Session::builder(env)
        .map_err(onnx_error)?
        .with_intra_threads(opts.threads.max(1))
        .map_err(|e| onnx_error(e.into()))?
        // onnxruntime's pool threads spin between operators by default, holding their cores;
        // in the daemon the backbone shares the cores with decoding, capture, MQTT and the
        // learner, and the spinning starved them (docs/performance.md: sustained predictions/s
        // rose ~25 % on 2 cores without it).
        .with_intra_op_spinning(false)
        .map_err(|e| onnx_error(e.into()))?;
    let provider_name = match provider(opts) {
        Some(ep) => {
            let name = ep.name();
            builder =
                builder
                    .with_execution_providers([ep])
                    .map_err(|e| BackboneError::Provider {
                        device: opts.engine.device.to_string(),
                        message: format!("{e}").replace('\n', " "),
                    })?;
            name
        }
        None => "CPUExecutionProvider",
    };
    let session = builder
        .commit_from_memory(&with_outputs(proto, chosen))
        .map_err(onnx_error)?;
    let engine = OrtEngine {
        session: Mutex::new(session),
        input_shape,
        outputs: 1 + usize::from(chosen.logits.is_some()),
    };
    let zeros = vec![0f32; input_shape.iter().product()];
    let shapes = engine.run_shapes(&zeros)?;
    Ok((
        engine,
        OutputShapes {
            embedding: shapes.first().cloned(),
            logits: shapes.get(1).cloned(),
        },
        provider_name.to_string(),
    ))
}

/// One output: its shape and values.
type Output = (Vec<usize>, Vec<f32>);

impl OrtEngine {
    fn run_inner(&self, input: &[f32]) -> Result<Vec<Output>, BackboneError> {
        let run_error = |e: ort::Error| BackboneError::Run(format!("onnxruntime: {e}"));
        let tensor = TensorRef::from_array_view((self.input_shape, input)).map_err(run_error)?;
        let mut session = self
            .session
            .lock()
            .map_err(|_| BackboneError::Run("onnxruntime session poisoned".into()))?;
        let outputs = session.run(ort::inputs![tensor]).map_err(run_error)?;
        (0..self.outputs)
            .map(|ix| {
                let (shape, data) = outputs[ix].try_extract_tensor::<f32>().map_err(run_error)?;
                let shape = shape.iter().map(|&d| d.max(0) as usize).collect();
                Ok((shape, data.to_vec()))
            })
            .collect()
    }

    fn run_shapes(&self, input: &[f32]) -> Result<Vec<Vec<usize>>, BackboneError> {
        Ok(self.run_inner(input)?.into_iter().map(|(s, _)| s).collect())
    }
}

impl EngineRun for OrtEngine {
    fn run(&self, input: &[f32]) -> Result<Vec<Vec<f32>>, BackboneError> {
        Ok(self.run_inner(input)?.into_iter().map(|(_, v)| v).collect())
    }
}
