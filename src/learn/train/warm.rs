//! Warm starts for the linear head: an existing head's weights re-expressed for a new training's
//! classes and input normalization; classes it does not know start at zero, as in a cold start.
//! (Starting them imprinted, as the daemon's fast path serves them, was measured on the real
//! `_full` sets and made the fit hit its 500-iteration cap; zero took ~120-170.)
//!
//! Why: the loss is convex, so where L-BFGS starts does not change where it ends (within the
//! gradient tolerance), only how long it takes. A retrain after a few new samples starts next to
//! the optimum when it starts from the active head (measured on the real `_full` sets: see
//! docs/performance.md), where a zero start needs ~100+ iterations on real embeddings.

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
