//! Accepting a head for a backbone that may run on another engine than the one it was trained
//! with (docs/learning.md "Changing engines"), wherever the head comes from: a head file, a
//! stored version, a fleet message. Same fingerprint: accepted as always. Same model but
//! another engine/device/precision: the backbone's (cached) agreement check decides; within
//! tolerance the head is used (and re-labelled with this engine), otherwise it is refused with a
//! message that says how to fix it. Anything else is the usual fingerprint refusal.

use std::path::Path;

use super::head::{Head, HeadError};
use crate::vision::backbone::Backbone;
use crate::vision::spec::Fingerprint;

/// The running backbone as the cross-engine rule sees it: its fingerprint, and whether another
/// engine's embeddings agree with its own. A trait so the rule is testable with a fake verdict
/// and the learner threads can hold it without the whole backbone API.
pub trait EngineJudge: Send + Sync {
    fn fingerprint(&self) -> &Fingerprint;
    /// Ok(measured error) when `engine`'s embeddings agree with this backbone's, Err(why not).
    fn agreement(&self, engine: &str) -> Result<f32, String>;
}

impl EngineJudge for Backbone {
    fn fingerprint(&self) -> &Fingerprint {
        Backbone::fingerprint(self)
    }

    fn agreement(&self, engine: &str) -> Result<f32, String> {
        Backbone::agreement(self, engine)
    }
}

/// Reads the head file at `path` and accepts it with [`accept_head_bytes`].
pub fn load_head_for(path: &Path, judge: &dyn EngineJudge) -> Result<Head, HeadError> {
    let file = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|source| HeadError::Io {
        action: "read",
        file: file.clone(),
        source,
    })?;
    accept_head_bytes(&bytes, &file, judge)
}

/// Parses head bytes (`name` says where they came from, for messages) for `judge`'s backbone,
/// applying the cross-engine rule above.
pub fn accept_head_bytes(
    bytes: &[u8],
    name: &str,
    judge: &dyn EngineJudge,
) -> Result<Head, HeadError> {
    let current = judge.fingerprint();
    match Head::from_named_bytes(bytes, name, Some(current)) {
        Err(HeadError::FingerprintMismatch { file, trained, .. })
            if trained.same_model(current) =>
        {
            match judge.agreement(&trained.engine) {
                Ok(error) => {
                    log::warn!(
                        "head {file} was trained with engine {}; this backbone runs {} and the two \
                         agree (embedding error {error:.1e}): using it",
                        trained.engine,
                        current.engine
                    );
                    let mut head = Head::from_named_bytes(bytes, name, None)?;
                    head.rebind(current.clone());
                    Ok(head)
                }
                Err(reason) => Err(HeadError::EngineDisagrees {
                    file,
                    trained: trained.engine.clone(),
                    current: current.engine.clone(),
                    reason,
                }),
            }
        }
        other => other,
    }
}

/// A judge with a fixed verdict for every other engine, for unit tests without a model.
#[cfg(test)]
pub(crate) struct FixedJudge {
    pub fingerprint: Fingerprint,
    pub verdict: Result<f32, String>,
}

#[cfg(test)]
impl FixedJudge {
    /// Refuses every other engine (what a bare fingerprint check used to do).
    pub fn refusing(fingerprint: Fingerprint) -> FixedJudge {
        FixedJudge {
            fingerprint,
            verdict: Err("no other engine to compare with in this test".into()),
        }
    }
}

#[cfg(test)]
impl EngineJudge for FixedJudge {
    fn fingerprint(&self) -> &Fingerprint {
        &self.fingerprint
    }

    fn agreement(&self, _engine: &str) -> Result<f32, String> {
        self.verdict.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::learn::train::{train, Dataset, TrainConfig};

    fn fingerprint(engine: &str) -> Fingerprint {
        Fingerprint {
            model_sha256: "ab".repeat(32),
            embedding_tensor: "emb".into(),
            dim: 2,
            engine: engine.into(),
        }
    }

    fn head_bytes(fingerprint: &Fingerprint) -> Vec<u8> {
        let features = [0.0, 0.1, 0.1, 0.0, 1.0, 0.9, 0.9, 1.0];
        let classes = ["a".to_string(), "b".to_string()];
        let data = Dataset {
            features: &features,
            dim: 2,
            labels: &[0, 0, 1, 1],
            classes: &classes,
        };
        let config = TrainConfig {
            validation_split: 0.0,
            ..TrainConfig::default()
        };
        train(&data, fingerprint, &config, &mut |_| {})
            .unwrap()
            .to_bytes()
    }

    #[test]
    fn another_engine_is_accepted_and_rebound_when_the_engines_agree() {
        let bytes = head_bytes(&fingerprint("tract/cpu/fp32"));
        let judge = FixedJudge {
            fingerprint: fingerprint("onnxruntime/cpu/fp32"),
            verdict: Ok(1e-6),
        };
        let head = accept_head_bytes(&bytes, "head v1", &judge).unwrap();
        assert_eq!(head.fingerprint(), &judge.fingerprint);
    }

    #[test]
    fn another_engine_is_refused_when_the_engines_disagree() {
        let bytes = head_bytes(&fingerprint("onnxruntime/tensorrt/fp16"));
        let judge = FixedJudge {
            fingerprint: fingerprint("tract/cpu/fp32"),
            verdict: Err("embeddings differ by 5.00e-3".into()),
        };
        let err = accept_head_bytes(&bytes, "head v1", &judge).unwrap_err();
        assert!(matches!(err, HeadError::EngineDisagrees { .. }), "{err}");
        let message = err.to_string();
        for part in ["head v1", "onnxruntime/tensorrt/fp16", "5.00e-3", "retrain"] {
            assert!(message.contains(part), "`{part}` missing from: {message}");
        }
    }

    #[test]
    fn another_model_is_refused_without_asking_the_judge() {
        let mut other = fingerprint("tract/cpu/fp32");
        other.model_sha256 = "cd".repeat(32);
        let judge = FixedJudge {
            fingerprint: fingerprint("tract/cpu/fp32"),
            verdict: Ok(0.0),
        };
        let err = accept_head_bytes(&head_bytes(&other), "head v1", &judge).unwrap_err();
        assert!(
            matches!(err, HeadError::FingerprintMismatch { .. }),
            "{err}"
        );
    }
}
