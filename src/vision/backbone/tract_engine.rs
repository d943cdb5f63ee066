//! The tract engine (the default): the ONNX graph parsed, its input fixed to batch 1, optimized
//! and turned into a runnable plan once; `run` only feeds tensors. The plan is immutable and
//! `Send + Sync`, so one backbone can serve several worker threads. Two tunings (measured in
//! docs/performance.md "tract tuning"): convolutions channel-last (`conv_nhwc`), and the whole
//! graph in fp16 (`f32_to_f16`, for CPUs with fp16 arithmetic), fed and read in f32.

use std::path::Path;
use std::sync::Arc;

use tract_onnx::pb;
use tract_onnx::prelude::{
    f16, tvec, DatumType, InferenceFact, InferenceModelExt, IntoTValue, OutletId, RunOptions,
    Tensor, TypedSimplePlan,
};
use tract_onnx::tract_hir::infer::InferenceModel;

use super::{BackboneError, BackboneOptions, ChosenTensors, EngineRun, OutputShapes};
use crate::vision::engine::Precision;

#[derive(Debug)]
pub(super) struct TractEngine {
    plan: Arc<TypedSimplePlan>,
    input_shape: [usize; 4],
    outputs: usize,
    /// The plan runs in fp16: inputs are cast down, outputs back up to f32.
    fp16: bool,
}

/// Parses, optimizes and plans the model with the chosen input and outputs.
pub(super) fn load(
    proto: &pb::ModelProto,
    path: &Path,
    chosen: &ChosenTensors,
    input_shape: [usize; 4],
    opts: &BackboneOptions,
) -> Result<(TractEngine, OutputShapes), BackboneError> {
    let threads = opts.threads;
    let fp16 = opts.engine.precision == Precision::Fp16;
    let onnx_error = |e: tract_onnx::prelude::TractError| BackboneError::Onnx {
        path: path.to_path_buf(),
        message: format!("{e:#}").replace('\n', " "),
    };
    // Declared output shapes and value_info carry a symbolic batch `N` that conflicts with
    // the batch-1 input fact; tract infers every shape from the input anyway.
    let onnx = tract_onnx::onnx()
        .with_ignore_output_shapes(true)
        .with_ignore_value_info(true);
    let model_dir = path.parent().and_then(Path::to_str);
    let parsed = onnx.parse(proto, model_dir).map_err(onnx_error)?;
    if !parsed.unresolved_inputs.is_empty() {
        return Err(BackboneError::Onnx {
            path: path.to_path_buf(),
            message: format!("unresolved inputs: {}", parsed.unresolved_inputs.join(", ")),
        });
    }
    let mut model = parsed.model;
    let outlet = |name: &str| parsed.outlets_by_name.get(name).copied();
    // choose_tensors checked that these are node outputs, which the parser always registers.
    let embedding_outlet =
        outlet(&chosen.embedding).ok_or_else(|| missing(path, &chosen.embedding))?;
    let mut outputs = vec![embedding_outlet];
    if let Some(logits) = &chosen.logits {
        outputs.push(outlet(logits).ok_or_else(|| missing(path, logits))?);
    }
    fix_input(&mut model, &chosen.input, input_shape).map_err(onnx_error)?;
    model.select_output_outlets(&outputs).map_err(onnx_error)?;
    let mut typed = model
        .into_typed()
        .and_then(|typed| typed.into_decluttered())
        .map_err(onnx_error)?;
    // The rewrites run on the decluttered graph, before optimization fuses ops into kernels
    // for one datum type and layout; optimizing afterwards lowers the new nodes like the rest.
    let rewrites = [(opts.engine.tract_nhwc, "conv_nhwc"), (fp16, "f32_to_f16")];
    for (_, name) in rewrites.iter().filter(|(wanted, _)| *wanted) {
        let transform = tract_onnx::tract_core::transform::get_transform(name)
            .map_err(onnx_error)?
            .ok_or_else(|| BackboneError::Onnx {
                path: path.to_path_buf(),
                message: format!("this tract has no `{name}` transform"),
            })?;
        transform.transform(&mut typed).map_err(onnx_error)?;
    }
    let typed = typed.into_optimized().map_err(onnx_error)?;
    let shapes = OutputShapes {
        embedding: concrete_shape(&typed, 0),
        logits: chosen
            .logits
            .as_ref()
            .and_then(|_| concrete_shape(&typed, 1)),
    };
    let plan = if threads > 1 {
        use tract_linalg::multithread::Executor;
        let options = RunOptions {
            executor: Some(Executor::multithread(threads)),
            ..RunOptions::default()
        };
        typed.into_runnable_with_options(&options)
    } else {
        tract_onnx::prelude::IntoRunnable::into_runnable(typed)
    }
    .map_err(onnx_error)?;
    Ok((
        TractEngine {
            plan,
            input_shape,
            outputs: outputs.len(),
            fp16,
        },
        shapes,
    ))
}

impl EngineRun for TractEngine {
    fn run(&self, input: &[f32]) -> Result<Vec<Vec<f32>>, BackboneError> {
        let run_error = |e: tract_onnx::prelude::TractError| BackboneError::Run(format!("{e:#}"));
        let mut tensor = Tensor::from_shape(&self.input_shape, input).map_err(run_error)?;
        if self.fp16 {
            tensor = tensor.cast_to::<f16>().map_err(run_error)?.into_owned();
        }
        let outputs = self
            .plan
            .run(tvec!(tensor.into_tvalue()))
            .map_err(run_error)?;
        (0..self.outputs)
            .map(|ix| {
                let value = outputs
                    .get(ix)
                    .ok_or_else(|| BackboneError::Run(format!("output {ix} missing")))?;
                let value = value.cast_to::<f32>().map_err(run_error)?;
                // Logical order, whatever the storage layout tract chose.
                let view = value.to_plain_array_view::<f32>().map_err(run_error)?;
                Ok(view.iter().copied().collect())
            })
            .collect()
    }
}

fn missing(path: &Path, tensor: &str) -> BackboneError {
    BackboneError::Onnx {
        path: path.to_path_buf(),
        message: format!("tract did not register tensor `{tensor}`"),
    }
}

/// Makes `name` the model's only free input, with a concrete batch-1 f32 shape.
fn fix_input(
    model: &mut InferenceModel,
    name: &str,
    shape: [usize; 4],
) -> tract_onnx::prelude::TractResult<()> {
    let outlets: Vec<OutletId> = model.input_outlets()?.to_vec();
    let index = outlets
        .iter()
        .position(|o| model.node(o.node).name == name)
        .ok_or_else(|| {
            tract_onnx::prelude::tract_data::internal::format_err!(
                "input `{name}` not among tract's inputs"
            )
        })?;
    model.set_input_fact(index, InferenceFact::dt_shape(DatumType::F32, shape))?;
    Ok(())
}

fn concrete_shape(model: &tract_onnx::prelude::TypedModel, output: usize) -> Option<Vec<usize>> {
    model
        .output_fact(output)
        .ok()
        .and_then(|f| f.shape.as_concrete().map(<[usize]>::to_vec))
}
