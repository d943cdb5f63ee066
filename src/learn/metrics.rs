//! Classification metrics for a trained head: accuracy, mean cross-entropy, per-class precision
//! and recall, and the confusion matrix, plus a plain-text rendering for the CLI and the logs.
//!
//! Everything here is a pure function of predicted probabilities and true labels, so the trainer,
//! the acceptance gate and the CLI all measure a head the same way.

use serde::{Deserialize, Serialize};

/// Probabilities are clamped to this before the log so one confident mistake gives a large but
/// finite loss (a NaN or infinite loss would poison comparisons between heads).
const MIN_PROB: f32 = 1e-7;

/// How well a head does on a set of labeled embeddings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Fraction of samples whose most probable class is the true class (0 when there are none).
    pub accuracy: f32,
    /// `confusion[true][predicted]` = number of samples.
    pub confusion: Vec<Vec<u32>>,
    /// Per predicted class: correct / predicted (0 when the class was never predicted).
    pub precision: Vec<f32>,
    /// Per true class: correct / support (0 when the class has no samples).
    pub recall: Vec<f32>,
    /// Number of samples of each true class.
    pub support: Vec<u32>,
    /// Mean cross-entropy `-ln p(true class)`, unweighted (0 when there are no samples).
    pub loss: f32,
}

/// Index of the largest value; the first one wins ties, so the result is deterministic.
pub fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

/// Evaluates row-major `probs` (`labels.len()` rows of `n_classes` probabilities) against `labels`.
///
/// Labels must be `< n_classes` and `probs.len()` must be `labels.len() * n_classes`; both are
/// guaranteed by the callers in this crate (the head produces the probabilities, the dataset the
/// labels), so a violation is a programming error and panics with a clear message.
pub fn evaluate(probs: &[f32], labels: &[usize], n_classes: usize) -> Evaluation {
    assert_eq!(
        probs.len(),
        labels.len() * n_classes,
        "evaluate: probs must hold labels.len() x n_classes values"
    );
    let mut confusion = vec![vec![0u32; n_classes]; n_classes];
    let mut loss = 0.0f64;
    for (row, &label) in probs.chunks_exact(n_classes.max(1)).zip(labels) {
        assert!(label < n_classes, "evaluate: label {label} >= {n_classes}");
        confusion[label][argmax(row)] += 1;
        loss -= f64::from(row[label].max(MIN_PROB).ln());
    }
    let mut eval = from_confusion(confusion);
    if !labels.is_empty() {
        eval.loss = (loss / labels.len() as f64) as f32;
    }
    eval
}

/// Evaluates hard predictions (class indices) against `labels`; `loss` is 0 since there are no
/// probabilities to score.
pub fn evaluate_predictions(predicted: &[usize], labels: &[usize], n_classes: usize) -> Evaluation {
    assert_eq!(
        predicted.len(),
        labels.len(),
        "evaluate_predictions: length mismatch"
    );
    let mut confusion = vec![vec![0u32; n_classes]; n_classes];
    for (&p, &t) in predicted.iter().zip(labels) {
        assert!(
            p < n_classes && t < n_classes,
            "evaluate_predictions: class index out of range"
        );
        confusion[t][p] += 1;
    }
    from_confusion(confusion)
}

/// Derives accuracy, precision, recall and support from a confusion matrix.
fn from_confusion(confusion: Vec<Vec<u32>>) -> Evaluation {
    let k = confusion.len();
    let support: Vec<u32> = confusion.iter().map(|row| row.iter().sum()).collect();
    let predicted: Vec<u32> = (0..k)
        .map(|p| confusion.iter().map(|row| row[p]).sum())
        .collect();
    let correct: Vec<u32> = (0..k).map(|c| confusion[c][c]).collect();
    let ratio = |a: u32, b: u32| if b == 0 { 0.0 } else { a as f32 / b as f32 };
    let total: u32 = support.iter().sum();
    Evaluation {
        accuracy: ratio(correct.iter().sum(), total),
        precision: (0..k).map(|c| ratio(correct[c], predicted[c])).collect(),
        recall: (0..k).map(|c| ratio(correct[c], support[c])).collect(),
        support,
        confusion,
        loss: 0.0,
    }
}

impl Evaluation {
    /// Number of samples evaluated.
    pub fn count(&self) -> u32 {
        self.support.iter().sum()
    }

    /// Per-class precision / recall / support, then the confusion matrix (rows = true class,
    /// columns = predicted class), as aligned plain text. Class names beyond `classes` are shown
    /// by index.
    pub fn render_table(&self, classes: &[String]) -> String {
        use std::fmt::Write as _;
        let k = self.support.len();
        let names: Vec<String> = (0..k)
            .map(|c| classes.get(c).cloned().unwrap_or_else(|| format!("#{c}")))
            .collect();
        let w = names
            .iter()
            .map(|n| n.chars().count())
            .max()
            .unwrap_or(0)
            .max(5);
        let mut out = String::new();
        // Writing to a String cannot fail, so the fmt::Results below are ignored on purpose.
        let _ = writeln!(
            out,
            "accuracy {:.4} on {} samples, mean loss {:.4}",
            self.accuracy,
            self.count(),
            self.loss
        );
        let _ = writeln!(out, "{:<w$}  precision  recall  support", "class");
        for c in 0..k {
            let _ = writeln!(
                out,
                "{:<w$}  {:>9.3}  {:>6.3}  {:>7}",
                names[c], self.precision[c], self.recall[c], self.support[c]
            );
        }
        let cw = self
            .confusion
            .iter()
            .flatten()
            .map(|v| v.to_string().len())
            .chain(names.iter().map(|n| n.chars().count()))
            .max()
            .unwrap_or(1);
        let _ = writeln!(out, "confusion (rows: true, columns: predicted)");
        let _ = write!(out, "{:<w$}", "");
        for name in &names {
            let _ = write!(out, "  {name:>cw$}");
        }
        out.push('\n');
        for (c, row) in self.confusion.iter().enumerate() {
            let _ = write!(out, "{:<w$}", names[c]);
            for v in row {
                let _ = write!(out, "  {v:>cw$}");
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 3 classes, 6 samples, computed by hand:
    /// true 0 -> pred 0, 0, 1 ; true 1 -> pred 1 ; true 2 -> pred 0, 2.
    fn example() -> Evaluation {
        evaluate_predictions(&[0, 0, 1, 1, 0, 2], &[0, 0, 0, 1, 2, 2], 3)
    }

    #[test]
    fn confusion_precision_recall_match_hand_computed_example() {
        let e = example();
        assert_eq!(
            e.confusion,
            vec![vec![2, 1, 0], vec![0, 1, 0], vec![1, 0, 1]]
        );
        assert_eq!(e.support, vec![3, 1, 2]);
        assert!((e.accuracy - 4.0 / 6.0).abs() < 1e-6);
        // precision: class 0 predicted 3 times, 2 right; class 1 predicted 2 times, 1 right;
        // class 2 predicted once, right.
        let want_p = [2.0 / 3.0, 0.5, 1.0];
        let want_r = [2.0 / 3.0, 1.0, 0.5];
        for c in 0..3 {
            assert!((e.precision[c] - want_p[c]).abs() < 1e-6, "precision {c}");
            assert!((e.recall[c] - want_r[c]).abs() < 1e-6, "recall {c}");
        }
    }

    #[test]
    fn evaluate_on_probabilities_computes_loss_and_argmax() {
        let probs = [0.7, 0.2, 0.1, 0.1, 0.3, 0.6];
        let e = evaluate(&probs, &[0, 1], 3);
        assert_eq!(
            e.confusion,
            vec![vec![1, 0, 0], vec![0, 0, 1], vec![0, 0, 0]]
        );
        let want = -(0.7f32.ln() + 0.3f32.ln()) / 2.0;
        assert!((e.loss - want).abs() < 1e-6);
        assert_eq!(e.accuracy, 0.5);
        // Class 2 has no support: recall 0, not NaN.
        assert_eq!(e.recall[2], 0.0);
        assert_eq!(e.precision[1], 0.0);
    }

    #[test]
    fn empty_evaluation_is_zero_not_nan() {
        let e = evaluate(&[], &[], 2);
        assert_eq!(e.accuracy, 0.0);
        assert_eq!(e.loss, 0.0);
        assert_eq!(e.count(), 0);
    }

    #[test]
    fn render_table_names_classes_and_counts() {
        let classes: Vec<String> = ["paper", "rock", "scissors"].map(String::from).to_vec();
        let text = example().render_table(&classes);
        assert!(text.contains("accuracy 0.6667 on 6 samples"), "{text}");
        assert!(text.contains("scissors"), "{text}");
        let paper_row = text.lines().last().unwrap_or_default();
        assert!(paper_row.starts_with("scissors"), "{text}");
        assert!(paper_row.ends_with("1         0         1"), "{text}");
    }
}
