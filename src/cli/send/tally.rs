//! The outcome of a `glimpse send`: what happened to each file, counted (accepted, duplicate,
//! rejected by reason, no ack), rendered as the final line for a terminal or as one JSON object.
//! Pure: the sending loop records, this module counts and renders.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

/// What became of one file.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Accepted,
    /// The device already had this image (same content, same label).
    Duplicate,
    /// Refused, by the device or here before sending (too large, unreadable).
    Rejected(String),
    /// No ack within the timeout, after every retry.
    NoAck,
}

/// A file that was not accepted, with why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Failure {
    pub file: PathBuf,
    pub label: String,
    /// `rejected` or `no_ack`.
    pub status: &'static str,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Tally {
    pub files: usize,
    pub accepted: usize,
    pub duplicate: usize,
    /// Rejections counted by reason (numbers in a reason are written `#`, so "payload is 5000000
    /// bytes" and "payload is 6000000 bytes" count as one reason).
    pub rejected: BTreeMap<String, usize>,
    pub no_ack: usize,
    pub failures: Vec<Failure>,
}

/// `reason` with every run of digits replaced by `#`.
fn reason_kind(reason: &str) -> String {
    let mut out = String::with_capacity(reason.len());
    let mut in_number = false;
    for ch in reason.chars() {
        if ch.is_ascii_digit() {
            if !in_number {
                out.push('#');
            }
            in_number = true;
        } else {
            in_number = false;
            out.push(ch);
        }
    }
    out
}

impl Tally {
    pub fn record(&mut self, file: &Path, label: &str, outcome: Outcome) {
        self.files += 1;
        let (status, reason) = match outcome {
            Outcome::Accepted => {
                self.accepted += 1;
                return;
            }
            Outcome::Duplicate => {
                self.duplicate += 1;
                return;
            }
            Outcome::Rejected(reason) => {
                *self.rejected.entry(reason_kind(&reason)).or_default() += 1;
                ("rejected", reason)
            }
            Outcome::NoAck => {
                self.no_ack += 1;
                ("no_ack", "no ack within the timeout".to_string())
            }
        };
        self.failures.push(Failure {
            file: file.to_path_buf(),
            label: label.to_string(),
            status,
            reason,
        });
    }

    pub fn rejected_total(&self) -> usize {
        self.rejected.values().sum()
    }

    /// Every file was stored (accepted now or already there).
    pub fn all_stored(&self) -> bool {
        self.accepted + self.duplicate == self.files
    }

    /// One line per failed file: `rejected rock/a.jpg (label rock): reason`.
    pub fn failure_line(failure: &Failure) -> String {
        format!(
            "{} {} (label {}): {}",
            failure.status,
            failure.file.display(),
            failure.label,
            failure.reason
        )
    }

    /// The final summary for a terminal, e.g.
    /// `192 files in 12.0 s (16.0/s): 190 accepted, 1 duplicate, 1 rejected, 0 no ack`,
    /// then one indented line per rejection reason.
    pub fn summary(&self, elapsed: Duration) -> String {
        let secs = elapsed.as_secs_f64();
        let mut text = format!(
            "{} files in {secs:.1} s ({:.1}/s): {} accepted, {} duplicate, {} rejected, {} no ack",
            self.files,
            self.files as f64 / secs.max(1e-3),
            self.accepted,
            self.duplicate,
            self.rejected_total(),
            self.no_ack
        );
        for (reason, count) in &self.rejected {
            text.push_str(&format!("\n  {count} rejected: {reason}"));
        }
        text
    }

    /// The tally as JSON, with the elapsed time and rate.
    pub fn to_json(&self, elapsed: Duration) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        let secs = elapsed.as_secs_f64();
        value["elapsed_s"] = serde_json::json!(secs);
        value["per_s"] = serde_json::json!(self.files as f64 / secs.max(1e-3));
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_outcomes_and_groups_reasons() {
        let mut t = Tally::default();
        let f = Path::new("a.jpg");
        t.record(f, "rock", Outcome::Accepted);
        t.record(f, "rock", Outcome::Accepted);
        t.record(f, "rock", Outcome::Duplicate);
        t.record(
            f,
            "rock",
            Outcome::Rejected("payload is 5000000 bytes, over 4194304".into()),
        );
        t.record(
            f,
            "rock",
            Outcome::Rejected("payload is 6000001 bytes, over 4194304".into()),
        );
        t.record(f, "paper", Outcome::Rejected("not an image".into()));
        t.record(f, "paper", Outcome::NoAck);
        assert_eq!((t.files, t.accepted, t.duplicate, t.no_ack), (7, 2, 1, 1));
        assert_eq!(
            t.rejected,
            BTreeMap::from([
                ("not an image".to_string(), 1),
                ("payload is # bytes, over #".to_string(), 2)
            ])
        );
        assert!(!t.all_stored());
        assert_eq!(t.failures.len(), 4);
        assert_eq!(
            t.failures[0].reason, "payload is 5000000 bytes, over 4194304",
            "a failure keeps its full reason"
        );
        let summary = t.summary(Duration::from_secs(2));
        assert!(
            summary.starts_with(
                "7 files in 2.0 s (3.5/s): 2 accepted, 1 duplicate, 3 rejected, 1 no ack"
            ),
            "{summary}"
        );
        assert!(summary.contains("\n  2 rejected: payload is # bytes, over #"));
        let json = t.to_json(Duration::from_secs(2));
        assert_eq!(json["accepted"], 2);
        assert_eq!(json["rejected"]["not an image"], 1);
        assert_eq!(json["failures"][3]["status"], "no_ack");
        assert_eq!(json["elapsed_s"], 2.0);
    }

    #[test]
    fn duplicates_count_as_stored() {
        let mut t = Tally::default();
        t.record(Path::new("a"), "x", Outcome::Accepted);
        t.record(Path::new("b"), "x", Outcome::Duplicate);
        assert!(t.all_stored());
        assert_eq!(
            Tally::failure_line(&Failure {
                file: "rock/a.jpg".into(),
                label: "rock".into(),
                status: "rejected",
                reason: "too big".into()
            }),
            "rejected rock/a.jpg (label rock): too big"
        );
    }
}
