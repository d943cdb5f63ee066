//! Warm starts for the linear head: an existing head's weights re-expressed for a new training's
//! classes and input normalization, and the classes it does not know imprinted from their
//! training samples (one pass, no optimization) so the optimizer starts near the optimum.
//!
//! Why: the loss is convex, so where L-BFGS starts does not change where it ends (within the
//! gradient tolerance), only how long it takes. A retrain after a few new samples starts next to
//! the optimum when it starts from the active head (measured on the real `_full` sets: see
//! docs/performance.md), where a zero start needs ~100+ iterations on real embeddings.

use super::Normalized;
use crate::learn::head::Head;
use crate::learn::train::HeadKind;

/// The parameters of `head` (W: dim x k row-major, then b: k) for a training with `classes` and
/// the input normalization `(mean, scale)`, computing the same logits as `head` on every input
/// for the classes both know. Classes `head` does not know get zero weights and no bias (the
/// caller imprints them). `None` when the head cannot seed this training: not linear, another
/// dimension, or no class in common.
pub(super) fn initial_theta(
    head: &Head,
    classes: &[String],
    mean: &[f32],
    scale: &[f32],
) -> Option<Vec<f32>> {
    let d = mean.len();
    let (old_mean, old_scale, layers) = head.parts();
    let [layer] = layers else {
        return None;
    };
    if head.kind() != HeadKind::Linear || head.dim() != d || layer.inputs != d {
        return None;
    }
    let map: Vec<Option<usize>> = classes
        .iter()
        .map(|c| head.classes().iter().position(|o| o == c))
        .collect();
    if map.iter().all(Option::is_none) {
        return None;
    }
    let (k, ko) = (classes.len(), layer.outputs);
    let mut theta = vec![0f32; d * k + k];
    // Old logits: W^T ((x - m_old) * s_old) + b. With z = (x - m) * s, x = z / s + m, so
    // W' = W * s_old / s and b' = b + W^T ((m - m_old) * s_old). A feature with s = 0 is
    // constant in the new training data: its weight cannot matter there and starts at 0.
    let mut bias: Vec<f64> = map
        .iter()
        .map(|o| o.map_or(0.0, |o| f64::from(layer.bias[o])))
        .collect();
    for j in 0..d {
        let ratio = if scale[j] > 0.0 {
            old_scale[j] / scale[j]
        } else {
            0.0
        };
        let shift = f64::from((mean[j] - old_mean[j]) * old_scale[j]);
        let row = &layer.weights[j * ko..(j + 1) * ko];
        for (c, o) in map.iter().enumerate() {
            if let Some(o) = *o {
                theta[j * k + c] = row[o] * ratio;
                bias[c] += f64::from(row[o]) * shift;
            }
        }
    }
    for (t, b) in theta[d * k..].iter_mut().zip(bias) {
        *t = b as f32;
    }
    Some(theta)
}

/// Imprints every class in `new` (indices into the k classes of `theta`) from the normalized
/// training rows `set`, in place. See [`imprint_column`].
pub(super) fn imprint_classes(theta: &mut [f32], set: &Normalized, k: usize, new: &[usize]) {
    let d = set.dim;
    let mut known: Vec<bool> = (0..k).map(|c| !new.contains(&c)).collect();
    for &c in new {
        let (w, b) = imprint_column(&set.x, &set.labels, d, c, theta, k, &known);
        for (j, v) in w.into_iter().enumerate() {
            theta[j * k + c] = v;
        }
        theta[d * k + c] = b;
        known[c] = true;
    }
}

/// The weights and bias of class `target` from its samples, against the classes marked `known`
/// in `theta` (dim x k weights, then k biases).
///
/// Direction: the mean of the class's normalized embeddings (as Coral's weight imprinting), at
/// the median norm of the known classes' weight columns so its logits are on their scale. Bias:
/// the threshold that best separates the class's samples from the others' by "the new logit beats
/// every known one", maximizing the balanced accuracy of that one-vs-rest decision on `rows`.
/// Milliseconds, no optimization: a new class is served at once and training refines it.
fn imprint_column(
    rows: &[f32],
    labels: &[usize],
    d: usize,
    target: usize,
    theta: &[f32],
    k: usize,
    known: &[bool],
) -> (Vec<f32>, f32) {
    let mut centroid = vec![0f64; d];
    let mut members = 0usize;
    for (row, _) in rows
        .chunks_exact(d)
        .zip(labels)
        .filter(|(_, &l)| l == target)
    {
        members += 1;
        for (c, &v) in centroid.iter_mut().zip(row) {
            *c += f64::from(v);
        }
    }
    let centroid_norm = centroid.iter().map(|c| c * c).sum::<f64>().sqrt();
    if members == 0 || centroid_norm == 0.0 {
        return (vec![0.0; d], f32::MIN / 4.0);
    }
    let mut norms: Vec<f64> = (0..k)
        .filter(|&c| known[c] && c != target)
        .map(|c| {
            (0..d)
                .map(|j| f64::from(theta[j * k + c]).powi(2))
                .sum::<f64>()
                .sqrt()
        })
        .filter(|&v| v > 0.0)
        .collect();
    norms.sort_by(f64::total_cmp);
    // Without a trained column to match, a unit-norm direction scaled so a typical member's
    // logit is ~1 per unit of centroid length.
    let target_norm = norms
        .get(norms.len() / 2)
        .copied()
        .unwrap_or(1.0 / centroid_norm);
    let w: Vec<f32> = centroid
        .iter()
        .map(|c| (c / centroid_norm * target_norm) as f32)
        .collect();

    // t_i = (best known logit) - (new logit without bias): the class wins on row i iff b > t_i.
    let bias = &theta[d * k..];
    let mut own = Vec::new();
    let mut others = Vec::new();
    for (row, &label) in rows.chunks_exact(d).zip(labels) {
        let mut best = f64::NEG_INFINITY;
        for c in (0..k).filter(|&c| known[c] && c != target) {
            let mut logit = f64::from(bias[c]);
            for (j, &z) in row.iter().enumerate() {
                logit += f64::from(z) * f64::from(theta[j * k + c]);
            }
            best = best.max(logit);
        }
        let own_logit: f64 = row
            .iter()
            .zip(&w)
            .map(|(&z, &v)| f64::from(z) * f64::from(v))
            .sum();
        let t = if best.is_finite() {
            best - own_logit
        } else {
            -own_logit
        };
        if label == target {
            own.push(t);
        } else {
            others.push(t);
        }
    }
    (w, best_threshold(&mut own, &mut others) as f32)
}

/// The threshold `b` maximizing recall(own: b > t) + specificity(others: b <= t), halfway
/// between neighbouring candidates. `own` must not be empty.
fn best_threshold(own: &mut [f64], others: &mut [f64]) -> f64 {
    own.sort_by(f64::total_cmp);
    others.sort_by(f64::total_cmp);
    if others.is_empty() {
        return own[own.len() - 1] + 1.0;
    }
    let mut cuts: Vec<f64> = own.iter().chain(others.iter()).copied().collect();
    cuts.sort_by(f64::total_cmp);
    let mut best = (f64::NEG_INFINITY, cuts[0] - 1.0);
    let (mut i_own, mut i_other) = (0usize, 0usize);
    for w in 0..cuts.len() {
        // Threshold just above cuts[w]: every t <= cuts[w] is won.
        let b = match cuts.get(w + 1) {
            Some(next) => 0.5 * (cuts[w] + next),
            None => cuts[w] + 1.0,
        };
        while i_own < own.len() && own[i_own] < b {
            i_own += 1;
        }
        while i_other < others.len() && others[i_other] < b {
            i_other += 1;
        }
        let score = i_own as f64 / own.len() as f64 + 1.0 - i_other as f64 / others.len() as f64;
        if score > best.0 {
            best = (score, b);
        }
    }
    best.1
}
