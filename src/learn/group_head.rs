//! Fleet heads on the wire, and the rule a member adopts one by. Pure: no store, no MQTT.
//!
//! A group head message (`{p}/group/{g}/head`, retained) is one JSON header line, `\n`, then the
//! head file bytes of docs/head-format.md (which carry their own sha256 and the backbone
//! fingerprint). The header names the leader that trained it and that leader's version, and
//! repeats the sha256 and length of the head bytes, so a torn or forged payload is refused before
//! the head parser sees it. Anyone can publish on the topic: nothing here trusts the sender
//! beyond what it can check (size, checksum, backbone, and the member's own samples).

use serde::{Deserialize, Serialize};

use crate::learn::cache::content_hash;
use crate::learn::gate::{decide, holdout_split, GateDecision, GateInput};
use crate::learn::head::Head;
use crate::learn::metrics::argmax;
use crate::learn::retrain::Sample;

/// Largest group head message accepted. A linear head for the 200-label quota over a 1280-wide
/// embedding is about 1 MiB; a forged huge retained message must not be held or parsed.
pub const MAX_GROUP_HEAD_BYTES: usize = 4 << 20;
/// Longest header line (it holds a few short fields).
const MAX_HEADER_BYTES: usize = 1024;

/// The header line of a group head message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupHeadHeader {
    /// The device that trained the head (the group's leader).
    pub origin: String,
    /// Its head version on the leader.
    pub version: u64,
    /// sha256 (hex) of the head bytes that follow.
    pub sha256: String,
    /// Length of the head bytes that follow.
    pub bytes: usize,
}

/// Why a group head message was refused (each one line, for the member's ack).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupHeadError {
    #[error("group head is {0} bytes, over the {MAX_GROUP_HEAD_BYTES} byte limit")]
    TooLarge(usize),
    #[error("group head has no header line")]
    NoHeader,
    #[error("group head header is not valid: {0}")]
    BadHeader(String),
    #[error("group head is torn: the header says {expected} bytes, {found} followed")]
    Length { expected: usize, found: usize },
    #[error("group head checksum mismatch: header says {expected}, the bytes hash to {found}")]
    Checksum { expected: String, found: String },
}

/// Builds the message a leader publishes for one of its head versions.
pub fn encode(origin: &str, version: u64, head_bytes: &[u8]) -> Vec<u8> {
    let header = GroupHeadHeader {
        origin: origin.to_string(),
        version,
        sha256: content_hash(head_bytes),
        bytes: head_bytes.len(),
    };
    let mut out = serde_json::to_vec(&header).unwrap_or_default();
    out.push(b'\n');
    out.extend_from_slice(head_bytes);
    out
}

/// Checks a received message's size, header, length and checksum; returns the header and the
/// head bytes (still to be parsed against the member's backbone by [`Head::from_bytes`]).
pub fn decode(payload: &[u8]) -> Result<(GroupHeadHeader, &[u8]), GroupHeadError> {
    if payload.len() > MAX_GROUP_HEAD_BYTES {
        return Err(GroupHeadError::TooLarge(payload.len()));
    }
    let newline = payload
        .iter()
        .take(MAX_HEADER_BYTES)
        .position(|&b| b == b'\n')
        .ok_or(GroupHeadError::NoHeader)?;
    let header: GroupHeadHeader = serde_json::from_slice(&payload[..newline])
        .map_err(|e| GroupHeadError::BadHeader(e.to_string()))?;
    let bytes = &payload[newline + 1..];
    if bytes.len() != header.bytes {
        return Err(GroupHeadError::Length {
            expected: header.bytes,
            found: bytes.len(),
        });
    }
    let found = content_hash(bytes);
    if found != header.sha256 {
        return Err(GroupHeadError::Checksum {
            expected: header.sha256,
            found,
        });
    }
    Ok((header, bytes))
}

/// The adoption rule: the group head is scored against the member's active head on the member's
/// own validation samples (the same content-hash holdout its own gate uses), restricted to the
/// classes the active head knows, and refused when it is more than `tolerance` worse. Without an
/// active head or without comparable samples it is accepted (nothing to lose).
pub fn judge(
    candidate: &Head,
    active: Option<&Head>,
    samples: &[Sample],
    validation_split: f32,
    seed: u64,
    tolerance: f32,
) -> GateDecision {
    let mut names: Vec<&str> = samples.iter().map(|s| s.label).collect();
    names.sort_unstable();
    names.dedup();
    let labels: Vec<usize> = samples
        .iter()
        .map(|s| names.binary_search(&s.label).unwrap_or(0))
        .collect();
    let hashes: Vec<&str> = samples.iter().map(|s| s.content_hash).collect();
    let (_, val) = holdout_split(&hashes, &labels, validation_split, seed);
    let truth: Vec<&str> = val.iter().map(|&i| samples[i].label).collect();
    fn predict<'h>(head: &'h Head, samples: &[Sample], val: &[usize]) -> Vec<&'h str> {
        val.iter()
            .map(|&i| {
                head.predict(samples[i].embedding)
                    .map(|p| head.classes()[argmax(&p)].as_str())
                    .unwrap_or("")
            })
            .collect()
    }
    let new_predictions = predict(candidate, samples, &val);
    let old_predictions = active.map(|h| predict(h, samples, &val));
    let old_classes = active.map(|h| h.classes().to_vec()).unwrap_or_default();
    decide(&GateInput {
        truth: &truth,
        old_predictions: old_predictions.as_deref(),
        new_predictions: &new_predictions,
        old_classes: &old_classes,
        tolerance,
        force: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::learn::retrain::{retrain, Active, RetrainConfig};
    use crate::learn::train::TrainConfig;
    use crate::vision::spec::Fingerprint;

    type Row = (String, String, Vec<f32>);

    fn borrowed(rows: &[Row]) -> Vec<Sample<'_>> {
        rows.iter()
            .map(|(label, hash, e)| Sample {
                label,
                content_hash: hash,
                embedding: e,
            })
            .collect()
    }

    /// 30 samples of each of two well separated classes (deterministic, no rng), and a head
    /// trained on them with the labels as given.
    fn taught(labels: [&str; 2]) -> (Vec<(String, String, Vec<f32>)>, Head) {
        let rows: Vec<(String, String, Vec<f32>)> = (0..60)
            .map(|i| {
                let class = i % 2;
                let e = (0..8)
                    .map(|d| {
                        let jitter = ((i * 7 + d * 3) % 11) as f32 / 11.0;
                        if d % 2 == class {
                            3.0 + jitter
                        } else {
                            jitter
                        }
                    })
                    .collect();
                (["a", "b"][class].to_string(), format!("h{i}"), e)
            })
            .collect();
        let relabeled: Vec<(String, String, Vec<f32>)> = rows
            .iter()
            .map(|(l, h, e)| {
                (
                    labels[usize::from(l == "b")].to_string(),
                    h.clone(),
                    e.clone(),
                )
            })
            .collect();
        let samples = borrowed(&relabeled);
        let fingerprint = Fingerprint {
            model_sha256: "cd".repeat(32),
            embedding_tensor: "features".into(),
            dim: 8,
            engine: crate::vision::spec::DEFAULT_ENGINE.into(),
        };
        let cfg = RetrainConfig {
            train: TrainConfig::default(),
            gate_tolerance: 0.02,
            force: false,
            warm_start: false,
            parallel: false,
        };
        let head = retrain(&samples, Active::default(), &fingerprint, &cfg)
            .unwrap()
            .deployed
            .unwrap()
            .head;
        (rows, head)
    }

    #[test]
    fn a_head_worse_on_the_members_own_samples_is_refused() {
        let (rows, good) = taught(["a", "b"]);
        let (_, swapped) = taught(["b", "a"]);
        let samples = borrowed(&rows);
        let verdict = |candidate, active| judge(candidate, active, &samples, 0.3, 1, 0.02);
        assert!(!verdict(&swapped, Some(&good)).accepted);
        assert!(verdict(&good, Some(&swapped)).accepted);
        // Nothing to lose without an active head; no samples to compare on: accepted.
        assert!(verdict(&swapped, None).accepted);
        assert!(judge(&swapped, Some(&good), &[], 0.3, 1, 0.02).accepted);
    }

    #[test]
    fn a_message_round_trips_and_every_tampering_is_refused() {
        let head = vec![7u8; 100];
        let message = encode("cam1", 3, &head);
        let (header, bytes) = decode(&message).unwrap();
        assert_eq!((header.origin.as_str(), header.version), ("cam1", 3));
        assert_eq!(bytes, &head[..]);

        let mut flipped = message.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(matches!(
            decode(&flipped),
            Err(GroupHeadError::Checksum { .. })
        ));
        assert!(matches!(
            decode(&message[..message.len() - 1]),
            Err(GroupHeadError::Length { .. })
        ));
        assert_eq!(decode(b"no header"), Err(GroupHeadError::NoHeader));
        assert!(matches!(
            decode(b"{\"origin\":1}\n"),
            Err(GroupHeadError::BadHeader(_))
        ));
        let huge = vec![b'x'; MAX_GROUP_HEAD_BYTES + 1];
        assert!(matches!(decode(&huge), Err(GroupHeadError::TooLarge(_))));
    }
}
