//! Which engine runs the backbone, on which device, at which precision: the choice shared by
//! the config file (`model.engine`, `model.device`, `model.precision`) and the `--engine`,
//! `--device`, `--precision` flags, and the one place that says which combinations exist.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The inference engine behind the backbone.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// tract: pure Rust, no system library (the default; the only one on JetPack 4.6).
    #[default]
    Tract,
    /// onnxruntime, loaded at run time (model.onnxruntime_library or ORT_DYLIB_PATH).
    Onnxruntime,
}

/// Where the engine runs the model.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    #[default]
    Cpu,
    /// onnxruntime's CUDA execution provider.
    Cuda,
    /// onnxruntime's TensorRT execution provider (engine cache in the state directory).
    Tensorrt,
}

/// Arithmetic precision of the backbone.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    /// Half precision: TensorRT only (onnxruntime's CPU and CUDA providers run an fp32 model
    /// in fp32; they would need a converted fp16 model file).
    Fp16,
}

impl std::fmt::Display for EngineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tract => "tract",
            Self::Onnxruntime => "onnxruntime",
        })
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Cpu => "cpu",
            Self::Cuda => "cuda",
            Self::Tensorrt => "tensorrt",
        })
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Fp32 => "fp32",
            Self::Fp16 => "fp16",
        })
    }
}

/// The engine choice plus what the onnxruntime engine needs to find its library and cache.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineOptions {
    pub engine: EngineKind,
    pub device: Device,
    pub precision: Precision,
    /// libonnxruntime to load; None = `ORT_DYLIB_PATH`, else `libonnxruntime.so` on the
    /// library path.
    pub onnxruntime_library: Option<PathBuf>,
    /// Where TensorRT keeps its built engines (the state directory); None = no cache.
    pub cache_dir: Option<PathBuf>,
}

/// A combination that does not exist: the config key at fault and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ComboError {
    pub key: &'static str,
    pub message: String,
}

impl EngineOptions {
    /// The fingerprint tag: `engine/device/precision`, e.g. `tract/cpu/fp32`.
    pub fn id(&self) -> String {
        format!("{}/{}/{}", self.engine, self.device, self.precision)
    }

    /// Refuses combinations no engine implements, naming the key to change.
    pub fn validate(&self) -> Result<(), ComboError> {
        let err = |key, message: &str| {
            Err(ComboError {
                key,
                message: message.to_string(),
            })
        };
        match (self.engine, self.device, self.precision) {
            (EngineKind::Tract, Device::Cpu, Precision::Fp32) => Ok(()),
            (EngineKind::Tract, Device::Cpu, Precision::Fp16) => err(
                "model.precision",
                "fp16 with engine = \"tract\" is not supported (tract's f32_to_f16 is slower than fp32 on a Nano's Cortex-A57); use fp32",
            ),
            (EngineKind::Tract, _, _) => err(
                "model.device",
                "engine = \"tract\" runs on the CPU only; set device = \"cpu\", or engine = \"onnxruntime\" for cuda/tensorrt",
            ),
            (EngineKind::Onnxruntime, Device::Tensorrt, _) => Ok(()),
            (EngineKind::Onnxruntime, _, Precision::Fp16) => err(
                "model.precision",
                "fp16 needs device = \"tensorrt\" (onnxruntime's cpu and cuda providers run this fp32 model in fp32)",
            ),
            (EngineKind::Onnxruntime, _, Precision::Fp32) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(engine: EngineKind, device: Device, precision: Precision) -> EngineOptions {
        EngineOptions {
            engine,
            device,
            precision,
            ..EngineOptions::default()
        }
    }

    #[test]
    fn combinations_name_the_key_at_fault() {
        use Device::*;
        use EngineKind::*;
        use Precision::*;
        assert_eq!(opts(Tract, Cpu, Fp32).validate(), Ok(()));
        assert_eq!(opts(Onnxruntime, Cpu, Fp32).validate(), Ok(()));
        assert_eq!(opts(Onnxruntime, Cuda, Fp32).validate(), Ok(()));
        assert_eq!(opts(Onnxruntime, Tensorrt, Fp16).validate(), Ok(()));
        assert_eq!(
            opts(Tract, Cuda, Fp32).validate().unwrap_err().key,
            "model.device"
        );
        assert_eq!(
            opts(Tract, Cpu, Fp16).validate().unwrap_err().key,
            "model.precision"
        );
        assert_eq!(
            opts(Onnxruntime, Cuda, Fp16).validate().unwrap_err().key,
            "model.precision"
        );
        assert_eq!(
            opts(Onnxruntime, Cpu, Fp16).validate().unwrap_err().key,
            "model.precision"
        );
    }

    #[test]
    fn id_is_engine_device_precision() {
        assert_eq!(EngineOptions::default().id(), "tract/cpu/fp32");
        let trt = opts(EngineKind::Onnxruntime, Device::Tensorrt, Precision::Fp16);
        assert_eq!(trt.id(), "onnxruntime/tensorrt/fp16");
    }
}
