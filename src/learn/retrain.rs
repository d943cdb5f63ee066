//! The retraining core: stored samples + the active head in, a gated head version out. Pure: no
//! MQTT, no store, no threads, no clock beyond what the trainer reports (so every branch is
//! unit-tested with synthetic embeddings below).
//!
//! Steps: class list and dataset -> content-hash holdout (a sample's side never changes as
//! samples are added, see [`holdout_split`]) -> candidate trained without the holdout -> the gate
//! compares it with the active head's gate twin on the same holdout -> when accepted, the head to
//! deploy is refit on every sample (the holdout is often a fifth of what the operator taught, too
//! much to leave out of the head in use) and the candidate is kept as its gate twin.
//!
//! Both fits start from the active version's heads (warm start, see
//! [`crate::learn::train::train_with_split_warm`]): the candidate from the active gate twin,
//! trained on nearly the same rows, and the refit from the active deployed head. The two are then
//! independent, so with `parallel` the refit runs on a second thread while the candidate trains
//! and the gate judges; a rejected candidate throws the refit away (a rare, wasted second core).

use std::collections::{BTreeMap, BTreeSet};

use crate::learn::gate::{decide, holdout_split, GateDecision, GateInput};
use crate::learn::head::Head;
use crate::learn::metrics::argmax;
use crate::learn::train::{train_with_split_warm, Dataset, TrainConfig, TrainError, TrainReport};
use crate::vision::spec::Fingerprint;

/// One stored sample, borrowed from wherever the caller keeps it.
#[derive(Debug, Clone, Copy)]
pub struct Sample<'a> {
    pub label: &'a str,
    /// sha256 of the sample's content: decides its side of the holdout, forever.
    pub content_hash: &'a str,
    pub embedding: &'a [f32],
}

/// The active version: what a retrain is judged against and where its fits start.
#[derive(Debug, Clone, Copy, Default)]
pub struct Active<'a> {
    /// The gate twin of the active version (trained without the holdout), `None` when no head
    /// is active. The gate compares against it; the candidate starts from it.
    pub gate_head: Option<&'a Head>,
    /// The deployed head of the active version: the refit on every sample starts from it.
    pub head: Option<&'a Head>,
}

/// Settings of one retrain.
#[derive(Debug, Clone)]
pub struct RetrainConfig {
    /// Trainer settings; `validation_split` and `seed` also drive the holdout.
    pub train: TrainConfig,
    /// The gate's tolerance (see [`crate::learn::gate`]).
    pub gate_tolerance: f32,
    /// Accept whatever the gate says (operator's `--force`, and after `forget`).
    pub force: bool,
    /// Start both fits from the active heads instead of zero. Same optimum (the loss is
    /// convex), a fraction of the iterations; off only to measure the difference.
    pub warm_start: bool,
    /// Fit the refit on a second thread, concurrently with the candidate and the gate.
    pub parallel: bool,
}

/// A head the gate accepted, ready to store and serve.
#[derive(Debug, Clone)]
pub struct Deployed {
    /// Trained on every sample (or the candidate itself when there was no holdout).
    pub head: Head,
    /// The candidate trained without the holdout: what the next gate compares against.
    pub gate: Option<Head>,
}

/// What a retrain decided.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub classes: Vec<String>,
    pub decision: GateDecision,
    /// The candidate's report: its validation figures are honest (it never saw the holdout).
    pub candidate_report: TrainReport,
    /// Samples the deployed head trained on (the candidate's count when rejected).
    pub deployed_train_count: usize,
    /// `Some` when the gate accepted.
    pub deployed: Option<Deployed>,
}

/// Why no head could be trained at all.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RetrainError {
    #[error("need samples of at least 2 labels to train, the store has {0}")]
    TooFewLabels(usize),
    #[error("sample {index} has {found} values, the backbone gives {expected}")]
    BadEmbedding {
        index: usize,
        found: usize,
        expected: usize,
    },
    #[error("{0}")]
    Train(#[from] TrainError),
}

/// Trains, gates and (when accepted) refits. See the module docs.
pub fn retrain(
    samples: &[Sample],
    active: Active,
    fingerprint: &Fingerprint,
    cfg: &RetrainConfig,
) -> Result<Outcome, RetrainError> {
    let classes: Vec<String> = samples
        .iter()
        .map(|s| s.label)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(str::to_string)
        .collect();
    if classes.len() < 2 {
        return Err(RetrainError::TooFewLabels(classes.len()));
    }
    let index: BTreeMap<&str, usize> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();
    let labels: Vec<usize> = samples.iter().map(|s| index[s.label]).collect();
    let dim = fingerprint.dim;
    let mut features = Vec::with_capacity(samples.len() * dim);
    for (i, s) in samples.iter().enumerate() {
        if s.embedding.len() != dim {
            return Err(RetrainError::BadEmbedding {
                index: i,
                found: s.embedding.len(),
                expected: dim,
            });
        }
        features.extend_from_slice(s.embedding);
    }
    let data = Dataset {
        features: &features,
        dim,
        labels: &labels,
        classes: &classes,
    };
    let hashes: Vec<&str> = samples.iter().map(|s| s.content_hash).collect();
    let (train_idx, val_idx) =
        holdout_split(&hashes, &labels, cfg.train.validation_split, cfg.train.seed);
    let warm = |head: Option<&Head>| -> bool { cfg.warm_start && head.is_some() };
    let fit = |rows: &[usize], held: &[usize], start: Option<&Head>| {
        train_with_split_warm(
            &data,
            rows,
            held,
            fingerprint,
            &cfg.train,
            start,
            &mut |_| {},
        )
    };
    let all: Vec<usize> = (0..samples.len()).collect();
    let refit_wanted = !val_idx.is_empty();
    std::thread::scope(|scope| {
        // The refit does not depend on the candidate when the active head can seed it.
        let early_refit = (refit_wanted && cfg.parallel && warm(active.head)).then(|| {
            let (all, fit) = (&all, &fit);
            scope.spawn(move || fit(all, &[], active.head))
        });
        let candidate_start = active.gate_head.filter(|_| cfg.warm_start);
        let candidate = fit(&train_idx, &val_idx, candidate_start)?;
        let (mut outcome, candidate) = judge(samples, &val_idx, candidate, active, &classes, cfg);
        if !outcome.decision.accepted {
            return Ok(outcome);
        }
        let deployed = if !refit_wanted {
            Deployed {
                head: candidate,
                gate: None,
            }
        } else {
            let head = match early_refit {
                Some(handle) => handle.join().expect("the refit thread panicked")?,
                // No active head: the candidate, trained on four fifths of these rows, is the
                // nearest start.
                None => {
                    let start = active.head.or(Some(&candidate)).filter(|_| cfg.warm_start);
                    fit(&all, &[], start)?
                }
            };
            let mut head = head;
            let report = head.report_mut();
            report.validation = outcome.candidate_report.validation.clone();
            report.val_count = outcome.candidate_report.val_count;
            report.refit_on_all = true;
            Deployed {
                head,
                gate: Some(candidate),
            }
        };
        outcome.deployed_train_count = deployed.head.report().train_count;
        outcome.deployed = Some(deployed);
        Ok(outcome)
    })
}

/// The gate's verdict on `candidate` against the active gate head, on the holdout rows `val_idx`
/// (which neither trained on). Returns the outcome (nothing deployed yet) and the candidate.
fn judge(
    samples: &[Sample],
    val_idx: &[usize],
    candidate: Head,
    active: Active,
    classes: &[String],
    cfg: &RetrainConfig,
) -> (Outcome, Head) {
    // Both gate heads on the same holdout rows, which neither has trained on.
    let val_features: Vec<f32> = val_idx
        .iter()
        .flat_map(|&i| samples[i].embedding.iter().copied())
        .collect();
    let names = |head: &Head| -> Vec<String> {
        let k = head.classes().len().max(1);
        head.predict_batch(&val_features, val_idx.len())
            .chunks(k)
            .map(|row| head.classes()[argmax(row)].clone())
            .collect()
    };
    let truth: Vec<&str> = val_idx.iter().map(|&i| samples[i].label).collect();
    let new_names = names(&candidate);
    let old_names = active.gate_head.map(names);
    let old_classes = active
        .gate_head
        .map(|h| h.classes().to_vec())
        .unwrap_or_default();
    let new_refs: Vec<&str> = new_names.iter().map(String::as_str).collect();
    let old_refs: Option<Vec<&str>> = old_names
        .as_ref()
        .map(|v| v.iter().map(String::as_str).collect());
    let decision = decide(&GateInput {
        truth: &truth,
        old_predictions: old_refs.as_deref(),
        new_predictions: &new_refs,
        old_classes: &old_classes,
        tolerance: cfg.gate_tolerance,
        force: cfg.force,
    });

    let candidate_report = candidate.report().clone();
    let outcome = Outcome {
        classes: classes.to_vec(),
        decision,
        deployed_train_count: candidate_report.train_count,
        candidate_report,
        deployed: None,
    };
    (outcome, candidate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    const DIM: usize = 16;

    fn fingerprint() -> Fingerprint {
        Fingerprint {
            engine: crate::vision::spec::DEFAULT_ENGINE.into(),
            model_sha256: "ab".repeat(32),
            embedding_tensor: "features".into(),
            dim: DIM,
        }
    }

    /// Owned synthetic samples: `n` per label around a label-specific center, unit-ish noise.
    struct Owned(Vec<(String, String, Vec<f32>)>);

    impl Owned {
        fn blobs(labels: &[&str], n: usize, noise: f32, seed: u64) -> Owned {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut rows = Vec::new();
            for (c, label) in labels.iter().enumerate() {
                let center: Vec<f32> = (0..DIM)
                    .map(|d| if d % labels.len() == c { 4.0 } else { 0.0 })
                    .collect();
                for i in 0..n {
                    let e = center
                        .iter()
                        .map(|m| m + noise * rng.gen_range(-1.0f32..1.0))
                        .collect();
                    rows.push((label.to_string(), format!("{label}-{seed}-{i}"), e));
                }
            }
            Owned(rows)
        }

        fn samples(&self) -> Vec<Sample<'_>> {
            self.0
                .iter()
                .map(|(label, hash, e)| Sample {
                    label,
                    content_hash: hash,
                    embedding: e,
                })
                .collect()
        }
    }

    fn cfg(force: bool) -> RetrainConfig {
        RetrainConfig {
            train: TrainConfig::default(),
            gate_tolerance: 0.02,
            force,
            warm_start: true,
            parallel: true,
        }
    }

    /// The head a first retrain of `data` deploys (no active head).
    fn first_head(data: &Owned) -> Deployed {
        retrain(
            &data.samples(),
            Active::default(),
            &fingerprint(),
            &cfg(false),
        )
        .unwrap()
        .deployed
        .unwrap()
    }

    /// `deployed` as the active version.
    fn active_of(deployed: &Deployed) -> Active<'_> {
        Active {
            gate_head: deployed.gate.as_ref(),
            head: Some(&deployed.head),
        }
    }

    #[test]
    fn first_head_is_accepted_refit_on_all_with_a_gate_twin() {
        let data = Owned::blobs(&["a", "b", "c"], 30, 1.0, 1);
        let out = retrain(
            &data.samples(),
            Active::default(),
            &fingerprint(),
            &cfg(false),
        )
        .unwrap();
        assert!(out.decision.accepted, "{:?}", out.decision);
        assert_eq!(out.classes, ["a", "b", "c"]);
        let deployed = out.deployed.expect("accepted");
        assert_eq!(deployed.head.report().train_count, 90);
        assert!(deployed.head.report().refit_on_all);
        let gate = deployed
            .gate
            .expect("a holdout was made, so a gate twin exists");
        let val = out.candidate_report.val_count;
        assert!(val > 0 && gate.report().train_count + val == 90);
        assert_eq!(out.deployed_train_count, 90);
        assert!(out.candidate_report.validation.unwrap().accuracy > 0.95);
    }

    #[test]
    fn a_worse_head_is_rejected_unless_forced() {
        let good = Owned::blobs(&["a", "b"], 40, 1.0, 2);
        let first = first_head(&good);
        // Same contents (so the same holdout), the training side's labels swapped: the new
        // head learns the opposite of what the holdout says, the old one gets it right.
        let mut scrambled = Owned::blobs(&["a", "b"], 40, 1.0, 2);
        let hashes: Vec<&str> = good.0.iter().map(|r| r.1.as_str()).collect();
        let labels: Vec<usize> = good.0.iter().map(|r| usize::from(r.0 == "b")).collect();
        let (train_idx, _) = holdout_split(&hashes, &labels, 0.2, TrainConfig::default().seed);
        for i in train_idx {
            let row = &mut scrambled.0[i];
            row.0 = if row.0 == "a" { "b" } else { "a" }.to_string();
        }
        let active = active_of(&first);
        let out = retrain(&scrambled.samples(), active, &fingerprint(), &cfg(false)).unwrap();
        assert!(!out.decision.accepted, "{:?}", out.decision);
        assert!(out.deployed.is_none());
        assert!(out.decision.reason.contains("kept the active head"));
        let forced = retrain(&scrambled.samples(), active, &fingerprint(), &cfg(true)).unwrap();
        assert!(forced.decision.accepted && forced.deployed.is_some());
    }

    #[test]
    fn a_new_class_is_judged_on_the_old_classes() {
        let two = Owned::blobs(&["a", "b"], 30, 1.0, 3);
        let first = first_head(&two);
        let three = Owned::blobs(&["a", "b", "c"], 30, 1.0, 3);
        let active = active_of(&first);
        let out = retrain(&three.samples(), active, &fingerprint(), &cfg(false)).unwrap();
        assert!(out.decision.accepted, "{:?}", out.decision);
        // Only holdout samples of a and b were compared.
        let val_of_c = out.candidate_report.validation.as_ref().unwrap();
        assert!(
            out.decision.compared < out.candidate_report.val_count,
            "{val_of_c:?}"
        );
        assert_eq!(out.deployed.unwrap().head.classes(), ["a", "b", "c"]);
    }

    #[test]
    fn the_holdout_is_fixed_by_content_not_by_order() {
        let data = Owned::blobs(&["a", "b"], 25, 1.0, 4);
        let mut reversed = Owned(data.0.clone());
        reversed.0.reverse();
        let one = retrain(
            &data.samples(),
            Active::default(),
            &fingerprint(),
            &cfg(false),
        )
        .unwrap();
        let two = retrain(
            &reversed.samples(),
            Active::default(),
            &fingerprint(),
            &cfg(false),
        )
        .unwrap();
        assert_eq!(
            one.candidate_report.val_count,
            two.candidate_report.val_count
        );
        assert_eq!(one.decision.new_accuracy, two.decision.new_accuracy);
    }

    #[test]
    fn warm_and_parallel_retrains_agree_with_cold_sequential_ones() {
        let before = Owned::blobs(&["a", "b"], 30, 1.5, 6);
        let first = first_head(&before);
        // More samples of the known labels and a new one.
        let mut after = Owned::blobs(&["a", "b", "c"], 40, 1.5, 7);
        after.0.extend(before.0.iter().cloned());
        let active = active_of(&first);
        let cold = RetrainConfig {
            warm_start: false,
            parallel: false,
            ..cfg(false)
        };
        let a = retrain(&after.samples(), active, &fingerprint(), &cold).unwrap();
        let b = retrain(&after.samples(), active, &fingerprint(), &cfg(false)).unwrap();
        assert_eq!(a.decision.accepted, b.decision.accepted);
        let (x, y) = (
            a.decision.new_accuracy.unwrap(),
            b.decision.new_accuracy.unwrap(),
        );
        assert!((x - y).abs() <= 0.02, "{x} vs {y}");
        let (a, b) = (a.deployed.unwrap().head, b.deployed.unwrap().head);
        assert!(b.report().refit_on_all && b.report().train_count == after.0.len());
        // Same optimum within the gradient tolerance: the same answers on every sample.
        let rows: Vec<f32> = after.0.iter().flat_map(|r| r.2.iter().copied()).collect();
        let n = after.0.len();
        let top =
            |h: &Head| -> Vec<usize> { h.predict_batch(&rows, n).chunks(3).map(argmax).collect() };
        let (ta, tb) = (top(&a), top(&b));
        let same = ta.iter().zip(&tb).filter(|(x, y)| x == y).count();
        assert!(same * 100 >= n * 98, "{same} of {n} agree");
    }

    #[test]
    fn too_few_labels_and_bad_embeddings_are_refused() {
        let one = Owned::blobs(&["a"], 5, 1.0, 5);
        let err = retrain(
            &one.samples(),
            Active::default(),
            &fingerprint(),
            &cfg(false),
        );
        assert_eq!(err.unwrap_err(), RetrainError::TooFewLabels(1));
        let mut bad = Owned::blobs(&["a", "b"], 5, 1.0, 5);
        bad.0[3].2.pop();
        let err = retrain(
            &bad.samples(),
            Active::default(),
            &fingerprint(),
            &cfg(false),
        );
        assert!(matches!(
            err.unwrap_err(),
            RetrainError::BadEmbedding { index: 3, .. }
        ));
        assert_eq!(
            retrain(&[], Active::default(), &fingerprint(), &cfg(false)).unwrap_err(),
            RetrainError::TooFewLabels(0)
        );
    }
}
