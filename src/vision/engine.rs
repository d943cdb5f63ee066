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
    /// Half precision: TensorRT, or tract on a CPU with fp16 arithmetic (`asimdhp`: Xavier,
    /// Orin). onnxruntime's CPU and CUDA providers run an fp32 model in fp32; they would need a
    /// converted fp16 model file.
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

/// Whether tract may run in fp16 here: the CPU does fp16 arithmetic (`asimdhp`, as tract
/// reads /proc/cpuinfo), or `GLIMPSE_ALLOW_EMULATED_FP16=1` asks for tract's emulated fp16
/// anyway: for tests of the fp16 path on x86 and for measuring how slow emulation is, never for
/// a deployment.
pub fn cpu_has_fp16() -> bool {
    tract_linalg::has_fp16()
        || std::env::var_os("GLIMPSE_ALLOW_EMULATED_FP16").is_some_and(|v| v == "1")
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
    /// tract only: run the convolutions channel-last (tract's `conv_nhwc` rewrite). Same
    /// results to float rounding; faster or slower depending on the CPU's kernels
    /// (docs/performance.md "tract tuning"), hence a choice, not the default.
    pub tract_nhwc: bool,
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

    /// The id plus tuning that does not change the fingerprint (`+nhwc`): a bench row's name.
    pub fn label(&self) -> String {
        if self.tract_nhwc {
            format!("{}+nhwc", self.id())
        } else {
            self.id()
        }
    }

    /// These options with the engine, device and precision of a spec such as `tract`,
    /// `tract+nhwc`, `tract/cpu/fp16`, `onnxruntime/cuda` or `onnxruntime/tensorrt/fp16`
    /// (`engine[/device[/precision]][+nhwc]`, missing parts = cpu, fp32). Not validated: a
    /// spec may name something this machine cannot run, which `Backbone::load` says.
    pub fn with_spec(&self, spec: &str) -> Result<EngineOptions, String> {
        let (body, nhwc) = match spec.split_once('+') {
            Some((body, "nhwc")) => (body, true),
            Some((_, other)) => return Err(format!("`+{other}`: the only tuning is `+nhwc`")),
            None => (spec, false),
        };
        let mut parts = body.split('/');
        let parse = |part: Option<&str>, what: &str| -> Result<Option<String>, String> {
            match part {
                None => Ok(None),
                Some("") => Err(format!("`{spec}`: empty {what}")),
                Some(p) => Ok(Some(p.to_string())),
            }
        };
        let value_error = |e: String| format!("`{spec}`: {e}");
        let engine =
            parse(parts.next(), "engine")?.ok_or_else(|| format!("`{spec}`: no engine"))?;
        let engine =
            <EngineKind as clap::ValueEnum>::from_str(&engine, true).map_err(value_error)?;
        let device = match parse(parts.next(), "device")? {
            Some(d) => <Device as clap::ValueEnum>::from_str(&d, true).map_err(value_error)?,
            None => Device::Cpu,
        };
        let precision = match parse(parts.next(), "precision")? {
            Some(p) => <Precision as clap::ValueEnum>::from_str(&p, true).map_err(value_error)?,
            None => Precision::Fp32,
        };
        if parts.next().is_some() {
            return Err(format!(
                "`{spec}`: expected engine[/device[/precision]][+nhwc]"
            ));
        }
        Ok(EngineOptions {
            engine,
            device,
            precision,
            tract_nhwc: nhwc,
            ..self.clone()
        })
    }

    /// Refuses combinations no engine implements, naming the key to change. `cpu_has_fp16`:
    /// whether this CPU does fp16 arithmetic (`tract_linalg::has_fp16`, i.e. `asimdhp`).
    pub fn validate(&self, cpu_has_fp16: bool) -> Result<(), ComboError> {
        let err = |key, message: &str| {
            Err(ComboError {
                key,
                message: message.to_string(),
            })
        };
        if self.tract_nhwc && self.engine != EngineKind::Tract {
            return err(
                "model.tract_nhwc",
                "applies to engine = \"tract\" only; remove it or set engine = \"tract\"",
            );
        }
        match (self.engine, self.device, self.precision) {
            (EngineKind::Tract, Device::Cpu, Precision::Fp32) => Ok(()),
            (EngineKind::Tract, Device::Cpu, Precision::Fp16) if cpu_has_fp16 => Ok(()),
            (EngineKind::Tract, Device::Cpu, Precision::Fp16) => err(
                "model.precision",
                "fp16 with engine = \"tract\" needs a CPU with fp16 arithmetic (asimdhp: Jetson Xavier, Orin) and this one has none (a Nano's Cortex-A57 would emulate it, slower than fp32); use fp32",
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
        for fp16 in [false, true] {
            let key = |o: EngineOptions| o.validate(fp16).err().map(|e| e.key);
            assert_eq!(key(opts(Tract, Cpu, Fp32)), None);
            assert_eq!(key(opts(Onnxruntime, Cpu, Fp32)), None);
            assert_eq!(key(opts(Onnxruntime, Cuda, Fp32)), None);
            assert_eq!(key(opts(Onnxruntime, Tensorrt, Fp16)), None);
            assert_eq!(key(opts(Tract, Cuda, Fp32)), Some("model.device"));
            assert_eq!(key(opts(Onnxruntime, Cuda, Fp16)), Some("model.precision"));
            assert_eq!(key(opts(Onnxruntime, Cpu, Fp16)), Some("model.precision"));
            let nhwc = |engine| EngineOptions {
                tract_nhwc: true,
                ..opts(engine, Cpu, Fp32)
            };
            assert_eq!(key(nhwc(Tract)), None);
            assert_eq!(key(nhwc(Onnxruntime)), Some("model.tract_nhwc"));
        }
        // tract in fp16 only where the CPU has fp16 arithmetic.
        assert_eq!(opts(Tract, Cpu, Fp16).validate(true), Ok(()));
        let refused = opts(Tract, Cpu, Fp16).validate(false).unwrap_err();
        assert_eq!(refused.key, "model.precision");
        assert!(refused.message.contains("asimdhp"), "{refused}");
    }

    #[test]
    fn specs_parse_into_options() {
        use Device::*;
        use EngineKind::*;
        use Precision::*;
        let spec = |s: &str| EngineOptions::default().with_spec(s);
        assert_eq!(spec("tract"), Ok(opts(Tract, Cpu, Fp32)));
        assert_eq!(spec("onnxruntime/cuda"), Ok(opts(Onnxruntime, Cuda, Fp32)));
        assert_eq!(
            spec("onnxruntime/tensorrt/fp16"),
            Ok(opts(Onnxruntime, Tensorrt, Fp16))
        );
        assert_eq!(spec("tract/cpu/fp16"), Ok(opts(Tract, Cpu, Fp16)));
        let nhwc = spec("tract+nhwc").unwrap();
        assert!(nhwc.tract_nhwc && nhwc.engine == Tract);
        assert_eq!(nhwc.label(), "tract/cpu/fp32+nhwc");
        for bad in [
            "",
            "gpu",
            "tract/gpu",
            "tract/cpu/fp8",
            "tract/cpu/fp32/x",
            "tract+nchw",
        ] {
            assert!(spec(bad).is_err(), "{bad:?} parsed");
        }
        // The library path and cache are kept from the options the spec refines.
        let base = EngineOptions {
            onnxruntime_library: Some("/x/libonnxruntime.so".into()),
            ..EngineOptions::default()
        };
        let ort = base.with_spec("onnxruntime").unwrap();
        assert_eq!(ort.onnxruntime_library, base.onnxruntime_library);
    }

    #[test]
    fn id_is_engine_device_precision() {
        assert_eq!(EngineOptions::default().id(), "tract/cpu/fp32");
        let trt = opts(EngineKind::Onnxruntime, Device::Tensorrt, Precision::Fp16);
        assert_eq!(trt.id(), "onnxruntime/tensorrt/fp16");
    }
}
