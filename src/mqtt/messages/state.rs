//! State: the smoothed current label, retained on `{prefix}/{device}/state` so a dashboard that
//! connects later sees it at once. Published only when [`crate::mqtt::policy`] says it changed.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub device: String,
    pub label: String,
    /// Score of the frame that completed the change.
    pub score: f32,
    /// When this label became the state, unix ms.
    pub since_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub head_version: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_shape() {
        let s = State {
            device: "cam1".into(),
            label: "roses".into(),
            score: 0.75,
            since_ms: 1_700_000_000_000,
            head_version: Some(2),
        };
        let value = serde_json::to_value(&s).unwrap();
        assert_eq!(
            value,
            json!({"device": "cam1", "label": "roses", "score": 0.75,
                   "since_ms": 1_700_000_000_000u64, "head_version": 2})
        );
        assert_eq!(serde_json::from_value::<State>(value).unwrap(), s);
    }
}
