//! Payloads of the teaching feature: the `ack` for every sample and command, the commands'
//! arguments, and the retained training `report`. See docs/mqtt.md "Teaching".

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::learn::gate::GateDecision;
use crate::learn::identity::SampleId;
use crate::learn::metrics::Evaluation;

/// `accepted | duplicate | rejected`: a sample already stored, or a command id already executed,
/// is `duplicate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckStatus {
    Accepted,
    Duplicate,
    Rejected,
}

/// One reply on `{p}/{d}/ack`, published after the sample is committed (or refused).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Ack {
    /// The sample's id (content hash for raw images, the sender's id for JSON) or the command's.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub id: Option<String>,
    /// Set for command acks.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub command: Option<String>,
    pub status: Option<AckStatus>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub label: Option<String>,
    /// The label's sample count after this sample.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub count: Option<u64>,
    /// `labels`: every label and its count.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub labels: Option<BTreeMap<String, u64>>,
    /// `labels`: the largest sample payload the device accepts (`learning.max_sample_bytes`), so
    /// `glimpse send` refuses a larger file before publishing it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub max_sample_bytes: Option<u64>,
    /// `retrain` / `rollback`: the head version now active.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub head_version: Option<u64>,
    /// `adopt_head`: the leader's version of the group head this member now serves.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub group_version: Option<u64>,
    /// `export`: the archive written on the device.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub path: Option<String>,
    /// `export`: the archive's size, and whether it was published on `export` (just before
    /// this ack).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub published: Option<bool>,
    /// `export` with `publish`: how many parts were published on `export` before this ack, and
    /// the archive's sha256 (hex); see `messages::export`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub parts: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sha256: Option<String>,
    /// `forget`: samples deleted.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub deleted: Option<u64>,
}

impl Ack {
    pub fn sample(id: Option<String>, label: Option<String>, status: AckStatus) -> Ack {
        Ack {
            id,
            label,
            status: Some(status),
            ..Ack::default()
        }
    }

    pub fn command(id: Option<String>, command: &str, status: AckStatus) -> Ack {
        Ack {
            id,
            command: Some(command.to_string()),
            status: Some(status),
            ..Ack::default()
        }
    }

    pub fn with_reason(mut self, reason: impl Into<String>) -> Ack {
        self.reason = Some(reason.into());
        self
    }
}

/// A command from `{p}/{d}/cmd/{name}` with its JSON argument (an empty payload = `{}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Retrain {
        force: bool,
    },
    Rollback,
    Forget {
        label: String,
    },
    Labels,
    /// Write the samples archive on the device; with `publish`, also publish it on `export`.
    Export {
        publish: bool,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CommandArgs {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    label: Option<String>,
    #[serde(default)]
    publish: bool,
}

/// Parses a command; returns the command's id (for the ack) next to it or the reason it is
/// refused. Pure.
pub fn parse_command(name: &str, payload: &[u8]) -> (Option<String>, Result<Command, String>) {
    let args: CommandArgs = if payload.iter().all(u8::is_ascii_whitespace) {
        CommandArgs::default()
    } else {
        match serde_json::from_slice(payload) {
            Ok(args) => args,
            Err(e) => {
                let id = crate::learn::ingest::json_id_hint(payload);
                return (id, Err(format!("malformed command JSON: {e}")));
            }
        }
    };
    let command = match name {
        "retrain" => Ok(Command::Retrain { force: args.force }),
        "rollback" => Ok(Command::Rollback),
        "labels" => Ok(Command::Labels),
        "export" => Ok(Command::Export {
            publish: args.publish,
        }),
        "forget" => match args.label {
            Some(label) => crate::learn::ingest::validate_label(&label)
                .map(|()| Command::Forget { label })
                .map_err(|e| e.to_string()),
            None => Err("forget needs {\"label\": \"...\"}".to_string()),
        },
        other => Err(format!(
            "unknown command {:?} (known: retrain, rollback, forget, labels, export)",
            other.chars().take(64).collect::<String>()
        )),
    };
    // Ids follow the sample id rule: echoed in the ack, so never a forged or huge one.
    match args.id.map(SampleId::new).transpose() {
        Ok(id) => (id.map(SampleId::into_string), command),
        Err(e) => (None, Err(e.to_string())),
    }
}

/// The retained training report on `{p}/{d}/report`.
#[derive(Debug, Clone, Serialize)]
pub struct TrainingReport {
    pub device: String,
    /// `command`, `auto` or `forget`.
    pub trigger: String,
    /// The version stored for the new head (`None` when the gate rejected it).
    pub version: Option<u64>,
    /// The head version active after this training.
    pub active_version: Option<u64>,
    pub accepted: bool,
    pub forced: bool,
    pub gate: GateDecision,
    pub classes: Vec<String>,
    pub samples_per_class: BTreeMap<String, u32>,
    /// Samples the gate's head trained on (all but the validation samples).
    pub train_count: usize,
    pub val_count: usize,
    /// Samples the deployed head trained on: after the gate accepts, the head is refit on every
    /// sample, validation ones included (the validation figures stay those of the gate's head,
    /// which never saw them). Equal to `train_count` without a validation split or when rejected.
    pub deployed_train_count: usize,
    /// Validation accuracy of the new head (all classes).
    pub accuracy: Option<f32>,
    /// Per-class precision / recall and the confusion matrix (rows = truth, columns = predicted),
    /// in `classes` order.
    pub validation: Option<Evaluation>,
    pub train_accuracy: f32,
    pub duration_ms: u64,
    pub finished_at_ms: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_with_ids_and_reasons() {
        assert_eq!(
            parse_command("retrain", b""),
            (None, Ok(Command::Retrain { force: false }))
        );
        assert_eq!(
            parse_command("retrain", br#"{"id":"r1","force":true}"#),
            (Some("r1".into()), Ok(Command::Retrain { force: true }))
        );
        assert_eq!(
            parse_command("forget", br#"{"label":"rock"}"#).1,
            Ok(Command::Forget {
                label: "rock".into()
            })
        );
        assert!(parse_command("forget", b"{}").1.is_err());
        assert!(parse_command("forget", br#"{"label":"a/b"}"#).1.is_err());
        let (id, result) = parse_command("selfdestruct", br#"{"id":"z"}"#);
        assert_eq!(id.as_deref(), Some("z"));
        assert!(result.unwrap_err().contains("unknown command"));
        let (id, result) = parse_command("retrain", br#"{"id":"a\nb\tc"}"#);
        assert_eq!(id, None);
        assert!(result.unwrap_err().contains("id contains"));
        let (_, result) = parse_command(&"x".repeat(10_000), b"");
        assert!(result.unwrap_err().len() < 200);
        assert!(parse_command("labels", b"{nope")
            .1
            .unwrap_err()
            .contains("malformed"));
    }

    #[test]
    fn acks_serialize_without_empty_fields() {
        let ack = Ack::sample(Some("h".into()), Some("rock".into()), AckStatus::Duplicate);
        let text = serde_json::to_string(&ack).unwrap();
        assert_eq!(text, r#"{"id":"h","status":"duplicate","label":"rock"}"#);
    }
}
