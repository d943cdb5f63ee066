//! The fast path for a new class: add it to a trained linear head by *imprinting* (as Coral's
//! on-device learning does) instead of training. Milliseconds, so a label the operator just
//! taught is predicted at once; the full training then refines it in the background and the gate
//! judges that refined head as usual. Pure.
//!
//! In the head's normalized input space `z = (x - mean) * scale`, the new class's weight column
//! is the direction of its samples' mean, `u = zbar / |zbar|`, scaled to the mean norm of the
//! existing columns (so its logits are on the same scale as the trained classes'). Its bias puts
//! the new logit `MARGIN` above the best old logit on 9 in 10 of the new samples: the new class
//! wins on what it was taught with, and samples of other classes, which project less onto `u`
//! and score higher on their own class, keep their prediction.

use crate::learn::head::{Head, Layer};
use crate::learn::train::HeadKind;

/// Logit margin of the new class over the old ones (e^1: about 2.7 to 1) ...
const MARGIN: f32 = 1.0;
/// ... on this fraction of the samples it is imprinted from.
const COVERED: f32 = 0.9;

/// Why a class could not be imprinted (the caller then waits for the full training).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImprintError {
    #[error("only a linear head can be imprinted")]
    NotLinear,
    #[error("the head already knows {0:?}")]
    Known(String),
    #[error("no samples to imprint")]
    NoSamples,
    #[error("a sample has {found} values, the head takes {expected}")]
    DimMismatch { expected: usize, found: usize },
    #[error("the samples' mean is the head's input mean: no direction to imprint")]
    NoDirection,
}

/// `head` plus the class `label`, imprinted from its `embeddings` (raw backbone outputs).
pub fn imprint(head: &Head, label: &str, embeddings: &[&[f32]]) -> Result<Head, ImprintError> {
    if head.kind() != HeadKind::Linear {
        return Err(ImprintError::NotLinear);
    }
    if head.classes().iter().any(|c| c == label) {
        return Err(ImprintError::Known(label.to_string()));
    }
    if embeddings.is_empty() {
        return Err(ImprintError::NoSamples);
    }
    let (mean, scale, layers) = head.parts();
    let [layer] = layers else {
        return Err(ImprintError::NotLinear);
    };
    let dim = mean.len();
    let normalized: Vec<Vec<f32>> = embeddings
        .iter()
        .map(|e| {
            if e.len() != dim {
                return Err(ImprintError::DimMismatch {
                    expected: dim,
                    found: e.len(),
                });
            }
            Ok(e.iter()
                .zip(mean)
                .zip(scale)
                .map(|((x, m), s)| (x - m) * s)
                .collect())
        })
        .collect::<Result<_, _>>()?;
    let mut zbar = vec![0f32; dim];
    for z in &normalized {
        for (acc, v) in zbar.iter_mut().zip(z) {
            *acc += v / normalized.len() as f32;
        }
    }
    let norm = zbar.iter().map(|v| v * v).sum::<f32>().sqrt();
    if !(norm.is_finite() && norm > 0.0) {
        return Err(ImprintError::NoDirection);
    }
    let k = layer.outputs;
    let column_norm = (0..k)
        .map(|j| {
            (0..dim)
                .map(|d| layer.weights[d * k + j].powi(2))
                .sum::<f32>()
                .sqrt()
        })
        .sum::<f32>()
        / k.max(1) as f32;
    let column: Vec<f32> = zbar.iter().map(|v| v / norm * column_norm).collect();

    // Bias: MARGIN above the best old logit on 9 in 10 of the new samples.
    let mut gaps: Vec<f32> = normalized
        .iter()
        .map(|z| {
            let best_old = (0..k)
                .map(|j| {
                    layer.bias[j]
                        + (0..dim)
                            .map(|d| z[d] * layer.weights[d * k + j])
                            .sum::<f32>()
                })
                .fold(f32::NEG_INFINITY, f32::max);
            let new = z.iter().zip(&column).map(|(a, b)| a * b).sum::<f32>();
            best_old - new
        })
        .collect();
    gaps.sort_by(|a, b| a.total_cmp(b));
    let quantile = ((gaps.len() - 1) as f32 * COVERED).round() as usize;
    let bias = gaps[quantile] + MARGIN;

    let mut weights = Vec::with_capacity(dim * (k + 1));
    for (d, &c) in column.iter().enumerate() {
        weights.extend_from_slice(&layer.weights[d * k..(d + 1) * k]);
        weights.push(c);
    }
    let mut biases = layer.bias.clone();
    biases.push(bias);
    let mut classes = head.classes().to_vec();
    classes.push(label.to_string());
    let mut report = head.report().clone();
    report.classes = classes.clone();
    report.samples_per_class.push(embeddings.len() as u32);
    Ok(Head::from_parts(
        classes,
        head.fingerprint().clone(),
        HeadKind::Linear,
        mean.to_vec(),
        scale.to_vec(),
        vec![Layer {
            inputs: dim,
            outputs: k + 1,
            weights,
            bias: biases,
        }],
        report,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::learn::metrics::argmax;
    use crate::learn::train::{train, Dataset, TrainConfig};
    use crate::vision::spec::Fingerprint;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    const DIM: usize = 24;

    /// `n` samples around a random non-negative center (like ReLU features), seeded.
    fn cluster(center_seed: u64, n: usize, rng: &mut ChaCha8Rng) -> Vec<Vec<f32>> {
        let mut c = ChaCha8Rng::seed_from_u64(center_seed);
        let center: Vec<f32> = (0..DIM).map(|_| c.gen_range(0.0f32..3.0)).collect();
        (0..n)
            .map(|_| {
                center
                    .iter()
                    .map(|m| (m + rng.gen_range(-0.6f32..0.6)).max(0.0))
                    .collect()
            })
            .collect()
    }

    fn trained(classes: &[&str], rng: &mut ChaCha8Rng) -> (Head, Vec<Vec<Vec<f32>>>) {
        let clusters: Vec<Vec<Vec<f32>>> = (0..classes.len())
            .map(|c| cluster(c as u64, 40, rng))
            .collect();
        let features: Vec<f32> = clusters.iter().flatten().flatten().copied().collect();
        let labels: Vec<usize> = (0..classes.len()).flat_map(|c| [c; 40]).collect();
        let names: Vec<String> = classes.iter().map(|s| s.to_string()).collect();
        let fingerprint = Fingerprint {
            engine: crate::vision::spec::DEFAULT_ENGINE.into(),
            model_sha256: "ab".repeat(32),
            embedding_tensor: "features".into(),
            dim: DIM,
        };
        let data = Dataset {
            features: &features,
            dim: DIM,
            labels: &labels,
            classes: &names,
        };
        let head = train(&data, &fingerprint, &TrainConfig::default(), &mut |_| {}).unwrap();
        (head, clusters)
    }

    fn predicted(head: &Head, x: &[f32]) -> String {
        head.classes()[argmax(&head.predict(x).unwrap())].clone()
    }

    #[test]
    fn a_new_class_is_predicted_at_once_and_old_ones_keep_theirs() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let (head, clusters) = trained(&["a", "b", "c"], &mut rng);
        let taught = cluster(99, 10, &mut rng);
        let refs: Vec<&[f32]> = taught.iter().map(Vec::as_slice).collect();
        let imprinted = imprint(&head, "new", &refs).unwrap();
        assert_eq!(imprinted.classes(), ["a", "b", "c", "new"]);
        assert_eq!(imprinted.report().samples_per_class.len(), 4);
        // Unseen samples of the new class.
        let unseen = cluster(99, 30, &mut rng);
        let right = unseen
            .iter()
            .filter(|x| predicted(&imprinted, x) == "new")
            .count();
        assert!(right >= 27, "new class: {right} of 30");
        // The old classes' own samples keep their label.
        let mut kept = 0;
        for (c, name) in ["a", "b", "c"].iter().enumerate() {
            kept += clusters[c]
                .iter()
                .filter(|x| predicted(&imprinted, x) == *name)
                .count();
        }
        assert!(kept >= 114, "old classes: {kept} of 120");
        // It survives the head file round trip (what a stored version would be).
        let back = Head::from_bytes(&imprinted.to_bytes(), None).unwrap();
        assert_eq!(back.classes(), imprinted.classes());
    }

    #[test]
    fn refuses_what_it_cannot_imprint() {
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        let (head, clusters) = trained(&["a", "b"], &mut rng);
        let one: Vec<&[f32]> = vec![&clusters[0][0]];
        assert_eq!(
            imprint(&head, "a", &one).unwrap_err(),
            ImprintError::Known("a".into())
        );
        assert_eq!(
            imprint(&head, "n", &[]).unwrap_err(),
            ImprintError::NoSamples
        );
        let short = [1.0f32; 3];
        assert!(matches!(
            imprint(&head, "n", &[&short]).unwrap_err(),
            ImprintError::DimMismatch { found: 3, .. }
        ));
    }
}
