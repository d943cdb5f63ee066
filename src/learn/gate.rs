//! The acceptance gate: does a freshly trained head replace the active one? Pure functions.
//!
//! Both heads are scored on the very same validation samples (the new head's held-out split), so
//! the comparison is fair. When the class set changed (a label was added), the old head cannot
//! predict the new classes, so both are scored only on the samples of the classes the old head
//! knows: the new head must still recognise what the old one did (within the tolerance), and the
//! new classes come on top. When a class disappeared (`forget`), the operator asked for it: the
//! retrain after a forget is forced. `force` accepts regardless (and says so).

use serde::Serialize;
use sha2::{Digest, Sha256};

/// Splits samples into (training, validation) by their content hash: a sample is held out when
/// `sha256(seed, hash)` falls below `fraction`. Unlike a shuffled split, a sample's side never
/// changes as samples are added, so the active head was never trained on the current validation
/// samples and the gate compares both heads on data neither has seen. Each class keeps at least
/// one training sample (its first, in the given order). Both lists are sorted.
pub fn holdout_split(
    hashes: &[&str],
    labels: &[usize],
    fraction: f32,
    seed: u64,
) -> (Vec<usize>, Vec<usize>) {
    let threshold = (fraction.clamp(0.0, 1.0) as f64 * u64::MAX as f64) as u64;
    let mut held: Vec<bool> = hashes
        .iter()
        .map(|h| {
            let mut hasher = Sha256::new();
            hasher.update(seed.to_le_bytes());
            hasher.update(h.as_bytes());
            let digest = hasher.finalize();
            let mut word = [0u8; 8];
            word.copy_from_slice(&digest[..8]);
            u64::from_le_bytes(word) < threshold
        })
        .collect();
    let classes = labels.iter().copied().max().map_or(0, |m| m + 1);
    for class in 0..classes {
        let members: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == class).collect();
        if !members.is_empty() && members.iter().all(|&i| held[i]) {
            held[members[0]] = false;
        }
    }
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (i, h) in held.into_iter().enumerate() {
        if h {
            val.push(i);
        } else {
            train.push(i);
        }
    }
    (train, val)
}

/// Labels predicted by the old and the new head for the same validation samples, with the truth.
#[derive(Debug, Clone, Copy)]
pub struct GateInput<'a> {
    pub truth: &'a [&'a str],
    /// Old head's prediction per sample; `None` when there is no active head.
    pub old_predictions: Option<&'a [&'a str]>,
    pub new_predictions: &'a [&'a str],
    /// Classes the old head knows (empty without an old head).
    pub old_classes: &'a [String],
    pub tolerance: f32,
    pub force: bool,
}

/// The gate's verdict, published in the training report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GateDecision {
    pub accepted: bool,
    /// Why, in one line.
    pub reason: String,
    /// Accuracy of the old head on the compared samples.
    pub old_accuracy: Option<f32>,
    /// Accuracy of the new head on the same samples.
    pub new_accuracy: Option<f32>,
    /// How many validation samples were compared.
    pub compared: usize,
}

fn accuracy(predictions: &[&str], truth: &[&str], keep: &[usize]) -> Option<f32> {
    if keep.is_empty() {
        return None;
    }
    let right = keep
        .iter()
        .filter(|&&i| predictions.get(i) == truth.get(i))
        .count();
    Some(right as f32 / keep.len() as f32)
}

/// Decides whether the new head replaces the old one.
pub fn decide(input: &GateInput) -> GateDecision {
    let Some(old) = input.old_predictions else {
        return GateDecision {
            accepted: true,
            reason: "no active head: the first head is accepted".into(),
            old_accuracy: None,
            new_accuracy: accuracy(
                input.new_predictions,
                input.truth,
                &(0..input.truth.len()).collect::<Vec<_>>(),
            ),
            compared: input.truth.len(),
        };
    };
    // Only samples of classes the old head knows: it cannot be right about the others.
    let keep: Vec<usize> = (0..input.truth.len())
        .filter(|&i| input.old_classes.iter().any(|c| c == input.truth[i]))
        .collect();
    let old_accuracy = accuracy(old, input.truth, &keep);
    let new_accuracy = accuracy(input.new_predictions, input.truth, &keep);
    let decision = |accepted, reason: String| GateDecision {
        accepted,
        reason,
        old_accuracy,
        new_accuracy,
        compared: keep.len(),
    };
    if input.force {
        return decision(true, "forced: the gate was not applied".into());
    }
    match (old_accuracy, new_accuracy) {
        (Some(old), Some(new)) if new + input.tolerance < old => decision(
            false,
            format!(
                "new head scores {new:.3} on {} validation samples, the active one {old:.3} \
                 (tolerance {:.3}): kept the active head",
                keep.len(),
                input.tolerance
            ),
        ),
        (Some(old), Some(new)) => decision(
            true,
            format!(
                "new head scores {new:.3} on {} validation samples, the active one {old:.3}",
                keep.len()
            ),
        ),
        _ => decision(
            true,
            "no validation samples of the active head's classes to compare on".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn holdout_is_stable_as_samples_are_added() {
        let hashes: Vec<String> = (0..200).map(|i| format!("h{i}")).collect();
        let refs: Vec<&str> = hashes.iter().map(String::as_str).collect();
        let labels: Vec<usize> = (0..200).map(|i| i % 2).collect();
        let (train, val) = holdout_split(&refs[..100], &labels[..100], 0.2, 7);
        assert_eq!(train.len() + val.len(), 100);
        assert!((10..=30).contains(&val.len()), "{}", val.len());
        let (_, val_more) = holdout_split(&refs, &labels, 0.2, 7);
        let earlier: Vec<usize> = val_more.into_iter().filter(|&i| i < 100).collect();
        assert_eq!(earlier, val);
        // A class whose samples would all be held out keeps one for training.
        let (train, val) = holdout_split(&["x"], &[0], 1.0, 7);
        assert_eq!((train, val), (vec![0], vec![]));
    }

    #[test]
    fn first_head_is_accepted() {
        let d = decide(&GateInput {
            truth: &["a", "b"],
            old_predictions: None,
            new_predictions: &["a", "a"],
            old_classes: &[],
            tolerance: 0.02,
            force: false,
        });
        assert!(d.accepted);
        assert_eq!(d.new_accuracy, Some(0.5));
    }

    #[test]
    fn worse_beyond_tolerance_is_rejected_unless_forced() {
        let old_classes = classes(&["a", "b"]);
        let mut input = GateInput {
            truth: &["a", "b", "a", "b"],
            old_predictions: Some(&["a", "b", "a", "b"]),
            new_predictions: &["a", "b", "a", "a"],
            old_classes: &old_classes,
            tolerance: 0.02,
            force: false,
        };
        let d = decide(&input);
        assert!(!d.accepted, "{d:?}");
        assert_eq!((d.old_accuracy, d.new_accuracy), (Some(1.0), Some(0.75)));
        assert!(d.reason.contains("kept the active head"));
        input.force = true;
        assert!(decide(&input).accepted);
        input.force = false;
        input.tolerance = 0.25;
        assert!(decide(&input).accepted);
    }

    #[test]
    fn equal_or_better_is_accepted() {
        let old_classes = classes(&["a", "b"]);
        let d = decide(&GateInput {
            truth: &["a", "b"],
            old_predictions: Some(&["a", "a"]),
            new_predictions: &["a", "b"],
            old_classes: &old_classes,
            tolerance: 0.0,
            force: false,
        });
        assert!(d.accepted);
    }

    #[test]
    fn new_classes_are_compared_on_the_old_classes_only() {
        let old_classes = classes(&["a", "b"]);
        // The old head cannot predict "c"; on a and b both heads are perfect.
        let d = decide(&GateInput {
            truth: &["a", "b", "c", "c"],
            old_predictions: Some(&["a", "b", "a", "b"]),
            new_predictions: &["a", "b", "c", "a"],
            old_classes: &old_classes,
            tolerance: 0.0,
            force: false,
        });
        assert!(d.accepted, "{d:?}");
        assert_eq!(d.compared, 2);
        assert_eq!(d.old_accuracy, Some(1.0));
        // Forgetting an old class is caught: "b" now predicted as "c".
        let d = decide(&GateInput {
            truth: &["a", "b", "c"],
            old_predictions: Some(&["a", "b", "a"]),
            new_predictions: &["a", "c", "c"],
            old_classes: &old_classes,
            tolerance: 0.02,
            force: false,
        });
        assert!(!d.accepted);
    }
}
