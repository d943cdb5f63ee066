//! The cross-engine check behind docs/learning.md "Changing engines": before a head trained on
//! one engine (tract, onnxruntime on some device and precision) is used with another, both
//! engines embed the same fixed inputs and must agree within `AGREEMENT_TOLERANCE`.
//!
//! The inputs are generated, not read from files: the device has no test data, and what is
//! compared is the engines' arithmetic on identical tensors, not a model's accuracy.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{Backbone, BackboneOptions};
use crate::vision::engine::{Device, EngineKind, EngineOptions, Precision};

/// Largest relative L2 error (|a - b| / |a|) allowed between the two engines' embeddings of any
/// check input. tract and onnxruntime in fp32 agree to ~1e-6 on MobileNetV2; TensorRT fp16 is
/// typically ~1e-3..1e-2 and so is refused, which is the point: a head's decision boundary was
/// fitted to fp32 embeddings.
pub const AGREEMENT_TOLERANCE: f32 = 1e-3;

/// How many generated inputs the check embeds (each a few ms to a few hundred ms).
const CHECK_INPUTS: u64 = 3;

/// Parses a fingerprint's `engine/device/precision` tag.
fn parse_engine_id(id: &str) -> Option<(EngineKind, Device, Precision)> {
    let mut parts = id.split('/');
    let engine = match parts.next()? {
        "tract" => EngineKind::Tract,
        "onnxruntime" => EngineKind::Onnxruntime,
        _ => return None,
    };
    let device = match parts.next()? {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda,
        "tensorrt" => Device::Tensorrt,
        _ => return None,
    };
    let precision = match parts.next()? {
        "fp32" => Precision::Fp32,
        "fp16" => Precision::Fp16,
        _ => return None,
    };
    parts
        .next()
        .is_none()
        .then_some((engine, device, precision))
}

/// Relative L2 distance of `b` from `a`.
fn rel_l2(a: &[f32], b: &[f32]) -> f32 {
    let num: f32 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let den: f32 = a.iter().map(|x| x * x).sum();
    (num / den.max(f32::MIN_POSITIVE)).sqrt()
}

/// Loads `other_engine` (a fingerprint's engine tag) beside `current` and embeds the check
/// inputs with both. Ok(largest error) when they agree within [`AGREEMENT_TOLERANCE`]; Err says
/// why not (the other engine cannot load here, or the error it measured).
pub fn check_agreement(current: &Backbone, other_engine: &str) -> Result<f32, String> {
    let (engine, device, precision) = parse_engine_id(other_engine)
        .ok_or_else(|| format!("unknown engine `{other_engine}` in the head's fingerprint"))?;
    let options = BackboneOptions {
        threads: current.options.threads,
        engine: EngineOptions {
            engine,
            device,
            precision,
            ..current.options.engine.clone()
        },
    };
    let other = Backbone::load(&current.manifest, &options)
        .map_err(|e| format!("cannot load {other_engine} to compare with: {e}"))?;
    let len = current.input_spec().tensor_len();
    let mut worst = 0f32;
    for seed in 0..CHECK_INPUTS {
        // Roughly the range normalized pixels have (ImageNet mean/std: about -2..2.6).
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let input: Vec<f32> = (0..len).map(|_| rng.gen_range(-2.0f32..2.0)).collect();
        let ours = current.run(&input).map_err(|e| e.to_string())?;
        let theirs = other.run(&input).map_err(|e| e.to_string())?;
        worst = worst.max(rel_l2(&theirs.embedding, &ours.embedding));
    }
    if worst <= AGREEMENT_TOLERANCE {
        Ok(worst)
    } else {
        Err(format!(
            "{other_engine} and {} embeddings differ by {worst:.2e} (relative L2), more than the {AGREEMENT_TOLERANCE:.0e} allowed",
            current.fingerprint().engine
        ))
    }
}

/// Verdicts of [`check_agreement`] per other engine id, for the life of the process: the check
/// loads a second engine (hundreds of ms, more for TensorRT), and a start that restores a head,
/// re-keys samples and later adopts a fleet head would otherwise pay it several times.
#[derive(Debug, Default)]
pub struct AgreementCache(Mutex<HashMap<String, Result<f32, String>>>);

impl AgreementCache {
    /// The cached verdict for `engine`, or `check`'s, remembered. The lock is held while
    /// checking so two threads asking at once load the other engine once, not twice.
    pub fn get_or_check(
        &self,
        engine: &str,
        check: impl FnOnce() -> Result<f32, String>,
    ) -> Result<f32, String> {
        let mut verdicts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(verdict) = verdicts.get(engine) {
            return verdict.clone();
        }
        let started = Instant::now();
        let verdict = check();
        log::info!(
            "agreement check against {engine}: {} in {} ms",
            match &verdict {
                Ok(error) => format!("agree (embedding error {error:.1e})"),
                Err(_) => "disagree".to_string(),
            },
            started.elapsed().as_millis()
        );
        verdicts.insert(engine.to_string(), verdict.clone());
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_ids_round_trip_and_junk_is_refused() {
        assert_eq!(
            parse_engine_id("onnxruntime/tensorrt/fp16"),
            Some((EngineKind::Onnxruntime, Device::Tensorrt, Precision::Fp16))
        );
        assert_eq!(
            parse_engine_id(&EngineOptions::default().id()),
            Some((EngineKind::Tract, Device::Cpu, Precision::Fp32))
        );
        for junk in [
            "",
            "tract",
            "tract/cpu",
            "tract/cpu/fp32/x",
            "tvm/cpu/fp32",
            "tract/gpu/fp32",
        ] {
            assert_eq!(parse_engine_id(junk), None, "{junk}");
        }
    }

    #[test]
    fn the_cache_checks_each_engine_once() {
        let cache = AgreementCache::default();
        let mut calls = 0;
        for _ in 0..3 {
            let verdict = cache.get_or_check("onnxruntime/cpu/fp32", || {
                calls += 1;
                Ok(1e-6)
            });
            assert_eq!(verdict, Ok(1e-6));
        }
        let refused = cache.get_or_check("onnxruntime/tensorrt/fp16", || Err("differ".into()));
        assert_eq!(refused, Err("differ".to_string()));
        let again = cache.get_or_check("onnxruntime/tensorrt/fp16", || Ok(0.0));
        assert_eq!(
            again,
            Err("differ".to_string()),
            "a refusal is remembered too"
        );
        assert_eq!(calls, 1);
    }

    #[test]
    fn rel_l2_measures_relative_distance() {
        assert_eq!(rel_l2(&[3.0, 4.0], &[3.0, 4.0]), 0.0);
        assert!((rel_l2(&[3.0, 4.0], &[3.0, 4.5]) - 0.1).abs() < 1e-6);
    }
}
