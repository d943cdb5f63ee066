//! Which stored samples a backbone takes over after an engine switch (docs/learning.md
//! "Changing engines"). Samples are keyed by the fingerprint text they were embedded with; a
//! key for the same model under another engine is re-keyed to the current fingerprint when the
//! two engines agree (the embeddings are interchangeable, so retrains keep them), and held back
//! otherwise (they would teach the head another engine's arithmetic). Keys of another model are
//! none of this rule's business. Pure: the store's counts and a verdict in, a plan out.

use crate::vision::spec::{Fingerprint, DEFAULT_ENGINE};

/// Samples of one key whose engine agrees with the current one: to be re-keyed.
#[derive(Debug, Clone, PartialEq)]
pub struct Takeover {
    pub key: String,
    pub engine: String,
    pub count: u64,
    /// The agreement check's measured embedding error.
    pub error: f32,
}

/// Samples of one key whose engine does not agree: left as they are, out of retrains.
#[derive(Debug, Clone, PartialEq)]
pub struct Held {
    pub key: String,
    pub engine: String,
    pub count: u64,
    pub reason: String,
}

/// What to do with the store's sample keys.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SwitchPlan {
    pub rekey: Vec<Takeover>,
    pub held: Vec<Held>,
}

impl SwitchPlan {
    /// Samples of this model that retrains will not see (for `stats`).
    pub fn held_count(&self) -> u64 {
        self.held.iter().map(|h| h.count).sum()
    }
}

/// The engine of `key` when it names `current`'s model under another engine; `None` for
/// `current`'s own key and for other models. Keys are `Fingerprint`'s display form, which ends
/// in `@engine` unless the engine is the default.
pub fn other_engine_of(key: &str, current: &Fingerprint) -> Option<String> {
    let base = Fingerprint {
        engine: DEFAULT_ENGINE.to_string(),
        ..current.clone()
    }
    .to_string();
    if key == current.to_string() {
        None
    } else if key == base {
        Some(DEFAULT_ENGINE.to_string())
    } else {
        key.strip_prefix(&base)
            .and_then(|rest| rest.strip_prefix('@'))
            .map(str::to_string)
    }
}

/// Decides, for each `(key, sample count)` in the store, whether `current` takes it over;
/// `verdict` is the agreement check for an engine id (called once per other-engine key).
pub fn plan(
    current: &Fingerprint,
    keys: &[(String, u64)],
    mut verdict: impl FnMut(&str) -> Result<f32, String>,
) -> SwitchPlan {
    let mut plan = SwitchPlan::default();
    for (key, count) in keys {
        let Some(engine) = other_engine_of(key, current) else {
            continue;
        };
        match verdict(&engine) {
            Ok(error) => plan.rekey.push(Takeover {
                key: key.clone(),
                engine,
                count: *count,
                error,
            }),
            Err(reason) => plan.held.push(Held {
                key: key.clone(),
                engine,
                count: *count,
                reason,
            }),
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fingerprint(engine: &str) -> Fingerprint {
        Fingerprint {
            model_sha256: "ab".repeat(32),
            embedding_tensor: "emb".into(),
            dim: 1280,
            engine: engine.into(),
        }
    }

    fn key(engine: &str) -> String {
        fingerprint(engine).to_string()
    }

    #[test]
    fn keys_name_their_engine_relative_to_the_current_fingerprint() {
        let ort = fingerprint("onnxruntime/cpu/fp32");
        let tract = fingerprint(DEFAULT_ENGINE);
        assert_eq!(
            other_engine_of(&key(DEFAULT_ENGINE), &ort).as_deref(),
            Some(DEFAULT_ENGINE)
        );
        assert_eq!(
            other_engine_of(&key("onnxruntime/cpu/fp32"), &tract).as_deref(),
            Some("onnxruntime/cpu/fp32")
        );
        assert_eq!(other_engine_of(&key(DEFAULT_ENGINE), &tract), None);
        assert_eq!(other_engine_of(&key("onnxruntime/cpu/fp32"), &ort), None);
        let mut other_model = fingerprint(DEFAULT_ENGINE);
        other_model.model_sha256 = "cd".repeat(32);
        assert_eq!(other_engine_of(&other_model.to_string(), &ort), None);
        let mut other_dim = fingerprint("onnxruntime/cuda/fp32");
        other_dim.dim = 1000;
        assert_eq!(other_engine_of(&other_dim.to_string(), &tract), None);
    }

    #[test]
    fn agreeing_engines_are_taken_over_and_disagreeing_ones_held() {
        let current = fingerprint("onnxruntime/cpu/fp32");
        let mut other_model = fingerprint(DEFAULT_ENGINE);
        other_model.model_sha256 = "cd".repeat(32);
        let keys = vec![
            (key(DEFAULT_ENGINE), 12),
            (key("onnxruntime/cpu/fp32"), 3),
            (key("onnxruntime/tensorrt/fp16"), 5),
            (other_model.to_string(), 7),
        ];
        let mut asked = Vec::new();
        let plan = plan(&current, &keys, |engine| {
            asked.push(engine.to_string());
            if engine.ends_with("fp16") {
                Err("embeddings differ by 5.00e-3".into())
            } else {
                Ok(1e-6)
            }
        });
        assert_eq!(asked, [DEFAULT_ENGINE, "onnxruntime/tensorrt/fp16"]);
        assert_eq!(
            plan.rekey,
            [Takeover {
                key: key(DEFAULT_ENGINE),
                engine: DEFAULT_ENGINE.into(),
                count: 12,
                error: 1e-6,
            }]
        );
        assert_eq!(
            plan.held,
            [Held {
                key: key("onnxruntime/tensorrt/fp16"),
                engine: "onnxruntime/tensorrt/fp16".into(),
                count: 5,
                reason: "embeddings differ by 5.00e-3".into(),
            }]
        );
        assert_eq!(plan.held_count(), 5);
    }

    #[test]
    fn nothing_to_do_when_every_key_is_current_or_foreign() {
        let current = fingerprint(DEFAULT_ENGINE);
        let keys = vec![(key(DEFAULT_ENGINE), 4), ("junk".to_string(), 1)];
        let plan = plan(&current, &keys, |_| panic!("no check needed"));
        assert_eq!(plan, SwitchPlan::default());
    }
}
