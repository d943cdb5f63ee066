//! Class names for a model's logits, and the two small pure functions every consumer of logits
//! needs: a numerically stable softmax and a deterministic top-k.
//!
//! A labels file has one name per line. Models disagree on whether class 0 is `background`
//! (TF-slim: 1001 logits) or not (torchvision / ONNX zoo: 1000 logits), so one 1001-line file
//! serves both through an `offset`: logit `i` is named by line `i + offset`.

use std::path::{Path, PathBuf};

/// Why a labels file could not be used. Messages name the file.
#[derive(Debug, thiserror::Error)]
pub enum LabelsError {
    #[error("cannot read labels file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("labels file {} has {lines} lines, fewer than its offset {offset} + 1", path.display())]
    TooShort {
        path: PathBuf,
        lines: usize,
        offset: usize,
    },
}

/// Class names plus the offset that maps logit indices onto them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labels {
    names: Vec<String>,
    offset: usize,
}

impl Labels {
    /// Reads one name per line (trailing whitespace and `\r` trimmed; a final empty line ignored).
    pub fn load(path: &Path, offset: usize) -> Result<Self, LabelsError> {
        let text = std::fs::read_to_string(path).map_err(|source| LabelsError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let names: Vec<String> = text.lines().map(|l| l.trim_end().to_string()).collect();
        if names.len() <= offset {
            return Err(LabelsError::TooShort {
                path: path.to_path_buf(),
                lines: names.len(),
                offset,
            });
        }
        Ok(Self { names, offset })
    }

    /// Labels from names already in memory (line `i` = `names[i]`).
    pub fn from_names(names: Vec<String>, offset: usize) -> Self {
        Self { names, offset }
    }

    /// The class name of logit `logit_index`, if the file has one.
    pub fn name(&self, logit_index: usize) -> Option<&str> {
        let line = logit_index.checked_add(self.offset)?;
        self.names.get(line).map(String::as_str)
    }

    /// How many logits have a name: the lines after the offset.
    pub fn len(&self) -> usize {
        self.names.len().saturating_sub(self.offset)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The offset between logit index and line number.
    pub fn offset(&self) -> usize {
        self.offset
    }
}

/// Softmax with the maximum subtracted first, so large logits cannot overflow `exp`.
/// Non-finite logits give non-finite probabilities (they are not hidden).
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = logits.iter().map(|&x| (x - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// The `k` largest values with their indices, largest first; equal values keep index order, so
/// the result is deterministic. NaNs sort last.
pub fn top_k(probs: &[f32], k: usize) -> Vec<(usize, f32)> {
    let mut ranked: Vec<(usize, f32)> = probs.iter().copied().enumerate().collect();
    ranked.sort_by(|a, b| {
        // NaN is "smallest" so it never displaces a real score.
        let (x, y) = (a.1, b.1);
        match (x.is_nan(), y.is_nan()) {
            (true, true) => a.0.cmp(&b.0),
            (true, false) => std::cmp::Ordering::Greater,
            (false, true) => std::cmp::Ordering::Less,
            (false, false) => y.total_cmp(&x).then(a.0.cmp(&b.0)),
        }
    });
    ranked.truncate(k);
    ranked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_is_stable_and_sums_to_one() {
        let p = softmax(&[1000.0, 1001.0, 999.0]);
        assert!(p.iter().all(|x| x.is_finite()));
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(p[1] > p[0] && p[0] > p[2]);
        assert!(softmax(&[]).is_empty());
        let u = softmax(&[3.0, 3.0]);
        assert!((u[0] - 0.5).abs() < 1e-7 && (u[1] - 0.5).abs() < 1e-7);
    }

    #[test]
    fn top_k_sorts_desc_with_ties_by_index() {
        let probs = [0.1, 0.4, 0.1, 0.4, f32::NAN, 0.0];
        assert_eq!(top_k(&probs, 3), vec![(1, 0.4), (3, 0.4), (0, 0.1)]);
        assert_eq!(top_k(&probs, 0), vec![]);
        let all = top_k(&probs, 100);
        assert_eq!(all.len(), 6);
        assert_eq!(all[5].0, 4, "NaN last");
    }

    #[test]
    fn offset_maps_logits_to_lines() {
        let labels = Labels::from_names(vec!["background".into(), "tench".into()], 1);
        assert_eq!(labels.name(0), Some("tench"));
        assert_eq!(labels.name(1), None);
        assert_eq!(labels.len(), 1);
        assert_eq!(labels.name(usize::MAX), None);
    }

    #[test]
    fn load_reads_the_shipped_imagenet_file() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/imagenet_labels.txt");
        let labels = Labels::load(&path, 0).unwrap();
        assert_eq!(labels.len(), 1001);
        assert_eq!(labels.name(0), Some("background"));
        assert_eq!(labels.name(1), Some("tench, Tinca tinca"));
        let zoo = Labels::load(&path, 1).unwrap();
        assert_eq!(zoo.len(), 1000);
        assert_eq!(zoo.name(0), Some("tench, Tinca tinca"));
    }

    #[test]
    fn load_errors_name_the_file() {
        let err = Labels::load(Path::new("/nonexistent/labels.txt"), 0).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/labels.txt"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("short.txt");
        std::fs::write(&path, "a\nb\n").unwrap();
        let err = Labels::load(&path, 2).unwrap_err().to_string();
        assert!(
            err.contains("short.txt") && err.contains("offset 2"),
            "{err}"
        );
    }
}
