//! Prediction: one classified frame, published on `{prefix}/{device}/prediction`.

use serde::{Deserialize, Serialize};

/// A class and its probability.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    pub label: String,
    pub score: f32,
}

/// One frame's result. `label`/`score`/`top_k` come from the trained head; before any head is
/// trained they are empty and `imagenet_top_k` (the backbone's own ImageNet classifier) gives a
/// first look, as the Keras tutorial does before training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub device: String,
    /// Monotonic per-process frame number; lets an operator say "label frame 1234".
    pub frame_id: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub score: Option<f32>,
    #[serde(default)]
    pub top_k: Vec<Scored>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub imagenet_top_k: Option<Vec<Scored>>,
    /// When the frame was captured, unix ms.
    pub captured_at_ms: u64,
    /// Capture to classification, milliseconds.
    pub latency_ms: f32,
    /// The head that produced `label`; absent before the first training.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub head_version: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Prediction {
        Prediction {
            device: "cam1".into(),
            frame_id: 1234,
            label: Some("daisy".into()),
            score: Some(0.875),
            top_k: vec![
                Scored {
                    label: "daisy".into(),
                    score: 0.875,
                },
                Scored {
                    label: "tulips".into(),
                    score: 0.125,
                },
            ],
            imagenet_top_k: None,
            captured_at_ms: 1_700_000_000_123,
            latency_ms: 41.5,
            head_version: Some(3),
        }
    }

    #[test]
    fn json_shape_with_a_head() {
        let value = serde_json::to_value(sample()).unwrap();
        assert_eq!(
            value,
            json!({
                "device": "cam1",
                "frame_id": 1234,
                "label": "daisy",
                "score": 0.875,
                "top_k": [{"label": "daisy", "score": 0.875}, {"label": "tulips", "score": 0.125}],
                "captured_at_ms": 1_700_000_000_123u64,
                "latency_ms": 41.5,
                "head_version": 3
            })
        );
    }

    #[test]
    fn json_shape_without_a_head() {
        let p = Prediction {
            label: None,
            score: None,
            top_k: vec![],
            imagenet_top_k: Some(vec![Scored {
                label: "daisy".into(),
                score: 0.5,
            }]),
            head_version: None,
            ..sample()
        };
        let value = serde_json::to_value(&p).unwrap();
        assert_eq!(
            value,
            json!({
                "device": "cam1",
                "frame_id": 1234,
                "top_k": [],
                "imagenet_top_k": [{"label": "daisy", "score": 0.5}],
                "captured_at_ms": 1_700_000_000_123u64,
                "latency_ms": 41.5
            })
        );
        let back: Prediction = serde_json::from_value(value).unwrap();
        assert_eq!(back, p);
    }
}
