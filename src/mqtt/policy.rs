//! When to publish: a pure state machine fed one classified frame at a time.
//!
//! A camera at 15 fps produces 15 predictions a second, and a label flickers at the boundary
//! between two classes. The policy decides, per frame:
//! - whether the prediction goes out on `.../prediction` (`every_frame`: each frame with
//!   `score >= min_score`, at most one per `min_interval_ms`; `on_change`: only when the state
//!   changes);
//! - whether the smoothed *state* (`.../state`, retained) changes: a new label must win
//!   `smoothing_frames` consecutive confident frames before it replaces the current one, so a
//!   one-frame flicker never reaches Home Assistant.
//!
//! A frame below `min_score` is "not sure": it is not published and it breaks the streak of the
//! challenger, but it does not clear the state (a moment of doubt is not a new state).
//! A state change always publishes its prediction, even inside `min_interval_ms`: it is already
//! rate-limited by the smoothing, and dropping it would leave `prediction` and `state` disagreeing.

use std::time::{Duration, Instant};

use serde::Deserialize;

/// How the prediction stream is thinned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PublishMode {
    /// Every confident frame (subject to `min_interval_ms`).
    #[default]
    EveryFrame,
    /// Only frames that change the smoothed state.
    OnChange,
}

/// The `[mqtt.publish]` section.
#[derive(Debug, Clone, PartialEq, serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    pub mode: PublishMode,
    /// K: consecutive confident frames a new label needs before it becomes the state (>= 1).
    pub smoothing_frames: u32,
    /// Minimum gap between two published predictions; 0 = no limit.
    pub min_interval_ms: u64,
    /// Frames scoring below this are neither published nor counted toward a state change.
    pub min_score: f32,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            mode: PublishMode::EveryFrame,
            smoothing_frames: 3,
            min_interval_ms: 0,
            min_score: 0.0,
        }
    }
}

impl PolicyConfig {
    /// Returns a message naming the sub-key (the caller adds the `mqtt.publish` prefix).
    pub fn validate(&self) -> Result<(), String> {
        if self.smoothing_frames == 0 {
            return Err("smoothing_frames must be at least 1".to_string());
        }
        if !(0.0..=1.0).contains(&self.min_score) {
            return Err(format!("min_score {} is not in 0..=1", self.min_score));
        }
        Ok(())
    }
}

/// What to do with one frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Publish this frame's prediction on `.../prediction`.
    pub publish_prediction: bool,
    /// The new state label, when this frame changed it (publish on `.../state`, retained).
    pub state_changed: Option<String>,
}

/// The state machine; one per camera stream.
#[derive(Debug, Clone)]
pub struct PublishPolicy {
    config: PolicyConfig,
    state: Option<String>,
    /// The label trying to replace `state` and how many consecutive frames it has won.
    challenger: Option<(String, u32)>,
    last_published: Option<Instant>,
}

impl PublishPolicy {
    /// `smoothing_frames` below 1 is treated as 1 (validation reports it; this keeps the state
    /// machine total).
    pub fn new(config: PolicyConfig) -> PublishPolicy {
        PublishPolicy {
            config: PolicyConfig {
                smoothing_frames: config.smoothing_frames.max(1),
                ..config
            },
            state: None,
            challenger: None,
            last_published: None,
        }
    }

    /// The current smoothed label, if any frame sequence has established one.
    pub fn state(&self) -> Option<&str> {
        self.state.as_deref()
    }

    /// Feeds one classified frame.
    pub fn decide(&mut self, label: &str, score: f32, now: Instant) -> Decision {
        // NaN compares false: a NaN score counts as not sure.
        let confident = score >= self.config.min_score;
        let state_changed = if confident {
            self.advance_state(label)
        } else {
            self.challenger = None;
            None
        };
        let publish_prediction = match (state_changed.is_some(), confident, self.config.mode) {
            (true, _, _) => true,
            (false, true, PublishMode::EveryFrame) => self.interval_elapsed(now),
            _ => false,
        };
        if publish_prediction {
            self.last_published = Some(now);
        }
        Decision {
            publish_prediction,
            state_changed,
        }
    }

    fn advance_state(&mut self, label: &str) -> Option<String> {
        if self.state.as_deref() == Some(label) {
            self.challenger = None;
            return None;
        }
        let wins = match &self.challenger {
            Some((current, wins)) if current == label => wins + 1,
            _ => 1,
        };
        if wins >= self.config.smoothing_frames {
            self.challenger = None;
            self.state = Some(label.to_string());
            return self.state.clone();
        }
        self.challenger = Some((label.to_string(), wins));
        None
    }

    fn interval_elapsed(&self, now: Instant) -> bool {
        match self.last_published {
            None => true,
            Some(last) => {
                now.saturating_duration_since(last)
                    >= Duration::from_millis(self.config.min_interval_ms)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(mode: PublishMode, k: u32, min_interval_ms: u64, min_score: f32) -> PublishPolicy {
        PublishPolicy::new(PolicyConfig {
            mode,
            smoothing_frames: k,
            min_interval_ms,
            min_score,
        })
    }

    /// Feeds frames 10 ms apart; returns the decisions.
    fn feed(p: &mut PublishPolicy, frames: &[(&str, f32)]) -> Vec<Decision> {
        let t0 = Instant::now();
        frames
            .iter()
            .enumerate()
            .map(|(i, (label, score))| {
                p.decide(label, *score, t0 + Duration::from_millis(10 * i as u64))
            })
            .collect()
    }

    fn changes(decisions: &[Decision]) -> Vec<Option<&str>> {
        decisions
            .iter()
            .map(|d| d.state_changed.as_deref())
            .collect()
    }

    #[test]
    fn first_frame_sets_the_state_when_no_smoothing() {
        let mut p = policy(PublishMode::EveryFrame, 1, 0, 0.0);
        let d = feed(&mut p, &[("cat", 0.9)]);
        assert_eq!(
            d[0],
            Decision {
                publish_prediction: true,
                state_changed: Some("cat".into())
            }
        );
        assert_eq!(p.state(), Some("cat"));
    }

    #[test]
    fn first_state_needs_k_frames_too() {
        let mut p = policy(PublishMode::EveryFrame, 3, 0, 0.0);
        let d = feed(
            &mut p,
            &[("cat", 0.9), ("cat", 0.9), ("cat", 0.9), ("cat", 0.9)],
        );
        assert_eq!(changes(&d), vec![None, None, Some("cat"), None]);
        assert!(
            d.iter().all(|d| d.publish_prediction),
            "every_frame publishes each frame"
        );
    }

    #[test]
    fn flicker_is_suppressed() {
        let mut p = policy(PublishMode::OnChange, 3, 0, 0.0);
        let frames = [
            ("cat", 0.9),
            ("cat", 0.9),
            ("cat", 0.9), // state: cat
            ("dog", 0.6),
            ("cat", 0.7), // one-frame flicker: ignored
            ("dog", 0.6),
            ("dog", 0.6),
            ("cat", 0.7), // two-frame flicker: ignored
            ("dog", 0.6),
            ("dog", 0.6),
            ("dog", 0.6), // three in a row: state dog
        ];
        let d = feed(&mut p, &frames);
        assert_eq!(
            changes(&d),
            vec![
                None,
                None,
                Some("cat"),
                None,
                None,
                None,
                None,
                None,
                None,
                None,
                Some("dog")
            ]
        );
        let published: Vec<bool> = d.iter().map(|d| d.publish_prediction).collect();
        assert_eq!(
            published,
            vec![false, false, true, false, false, false, false, false, false, false, true],
            "on_change publishes exactly the state changes"
        );
        assert_eq!(p.state(), Some("dog"));
    }

    #[test]
    fn alternating_challengers_never_win() {
        let mut p = policy(PublishMode::OnChange, 2, 0, 0.0);
        feed(&mut p, &[("cat", 1.0), ("cat", 1.0)]);
        let d = feed(
            &mut p,
            &[("dog", 1.0), ("owl", 1.0), ("dog", 1.0), ("owl", 1.0)],
        );
        assert!(changes(&d).iter().all(Option::is_none));
        assert_eq!(p.state(), Some("cat"));
    }

    #[test]
    fn min_interval_thins_every_frame_mode() {
        let mut p = policy(PublishMode::EveryFrame, 1, 25, 0.0);
        // Frames every 10 ms: published at 0, 30, 60 ms.
        let d = feed(&mut p, &[("cat", 0.9); 8]);
        let published: Vec<bool> = d.iter().map(|d| d.publish_prediction).collect();
        assert_eq!(
            published,
            vec![true, false, false, true, false, false, true, false]
        );
    }

    #[test]
    fn state_change_publishes_even_inside_min_interval() {
        let mut p = policy(PublishMode::EveryFrame, 1, 1_000, 0.0);
        let d = feed(&mut p, &[("cat", 0.9), ("cat", 0.9), ("dog", 0.9)]);
        let published: Vec<bool> = d.iter().map(|d| d.publish_prediction).collect();
        assert_eq!(published, vec![true, false, true]);
        assert_eq!(changes(&d), vec![Some("cat"), None, Some("dog")]);
    }

    #[test]
    fn min_score_gates_publishing_and_breaks_streaks() {
        let mut p = policy(PublishMode::EveryFrame, 2, 0, 0.5);
        let d = feed(
            &mut p,
            &[
                ("cat", 0.4), // not sure: nothing
                ("cat", 0.8),
                ("cat", 0.3), // not sure: breaks the streak
                ("cat", 0.8),
                ("cat", 0.8), // two confident in a row: state cat
                ("dog", 0.2), // doubt does not clear the state
            ],
        );
        let published: Vec<bool> = d.iter().map(|d| d.publish_prediction).collect();
        assert_eq!(published, vec![false, true, false, true, true, false]);
        assert_eq!(changes(&d), vec![None, None, None, None, Some("cat"), None]);
        assert_eq!(p.state(), Some("cat"));
    }

    #[test]
    fn nan_score_is_not_confident() {
        let mut p = policy(PublishMode::EveryFrame, 1, 0, 0.1);
        let d = p.decide("cat", f32::NAN, Instant::now());
        assert!(!d.publish_prediction);
        assert_eq!(d.state_changed, None);
    }

    #[test]
    fn clock_going_backwards_does_not_panic() {
        let mut p = policy(PublishMode::EveryFrame, 1, 100, 0.0);
        let t = Instant::now() + Duration::from_secs(1);
        assert!(p.decide("cat", 1.0, t).publish_prediction);
        assert!(
            !p.decide("cat", 1.0, t - Duration::from_millis(500))
                .publish_prediction
        );
    }

    #[test]
    fn config_validation_and_defaults() {
        let c: PolicyConfig = toml::from_str("mode = \"on_change\"\nsmoothing_frames = 5").unwrap();
        assert_eq!(c.mode, PublishMode::OnChange);
        assert_eq!(c.smoothing_frames, 5);
        assert_eq!(c.min_score, 0.0);
        c.validate().unwrap();
        let bad = PolicyConfig {
            smoothing_frames: 0,
            ..PolicyConfig::default()
        };
        assert!(bad.validate().unwrap_err().contains("smoothing_frames"));
        let bad = PolicyConfig {
            min_score: 1.5,
            ..PolicyConfig::default()
        };
        assert!(bad.validate().unwrap_err().contains("min_score"));
        assert!(toml::from_str::<PolicyConfig>("mode = \"sometimes\"").is_err());
    }
}
