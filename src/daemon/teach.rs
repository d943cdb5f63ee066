//! The MQTT side of teaching: received samples and commands become typed [`LearnRequest`]s
//! (payload checks, label rules, JSON forms, recent-frame lookup; refusals answered at once), and
//! the learner's [`LearnEvent`]s become messages on the device's topics. The learner itself knows
//! no topic, retain flag, packet size or JSON.

use std::path::PathBuf;
use std::sync::Mutex;

use super::learner::{LearnEvent, LearnRequest, SampleContent, SampleRequest};
use super::recent::RecentFrames;
use crate::config::LearningConfig;
use crate::learn::cache::content_hash;
use crate::learn::identity::{Label, SampleId};
use crate::learn::ingest::{
    check_payload_size, json_id_hint, parse_json_sample, Rejection, SampleContent as JsonContent,
    SampleLimits,
};
use crate::mqtt::link::Received;
use crate::mqtt::messages::learning::{parse_command, Ack, AckStatus};
use crate::mqtt::topics::{Incoming, Outgoing};

/// One message for the publisher.
#[derive(Debug, Clone, PartialEq)]
pub struct Outbound {
    pub kind: Outgoing,
    pub payload: Vec<u8>,
}

impl Outbound {
    pub fn json<T: serde::Serialize>(kind: Outgoing, value: &T) -> Outbound {
        Outbound {
            kind,
            payload: serde_json::to_vec(value).unwrap_or_default(),
        }
    }

    pub fn ack(ack: &Ack) -> Outbound {
        Outbound::json(Outgoing::Ack, ack)
    }
}

/// Turns a received message into a learner request, or the ack that refuses it.
pub fn request(
    received: Received,
    learning: &LearningConfig,
    limits: &SampleLimits,
    recent: &Mutex<RecentFrames>,
) -> Result<LearnRequest, Box<Ack>> {
    match received.incoming {
        Incoming::GroupHead => Ok(LearnRequest::AdoptHead {
            payload: received.payload,
        }),
        Incoming::Command { name } => {
            let (id, parsed) = parse_command(&name, &received.payload);
            let refuse = |reason: String| {
                log::info!("command {name} rejected: {reason}");
                Ack::command(id.clone(), &echo(&name), AckStatus::Rejected).with_reason(reason)
            };
            match parsed {
                Err(reason) => Err(Box::new(refuse(reason))),
                Ok(_) if !learning.enabled => {
                    Err(Box::new(refuse(Rejection::Disabled.to_string())))
                }
                Ok(command) => Ok(LearnRequest::Command { id, name, command }),
            }
        }
        Incoming::SampleImage { label } => {
            let hash = content_hash(&received.payload);
            let refuse = |r: Rejection| {
                log::info!("sample on {} rejected: {r}", received.topic);
                Ack::sample(Some(hash.clone()), Some(echo(&label)), AckStatus::Rejected)
                    .with_reason(r.to_string())
            };
            let checks = || {
                if !learning.enabled {
                    return Err(Rejection::Disabled);
                }
                check_payload_size(received.payload.len(), limits)?;
                Ok(Label::new(label.as_str())?)
            };
            let checked = checks().map_err(|r| Box::new(refuse(r)))?;
            Ok(LearnRequest::Sample(SampleRequest {
                id: SampleId::of_content(hash.clone()),
                label: checked,
                source: "image",
                content_hash: hash,
                content: SampleContent::Image(received.payload),
            }))
        }
        Incoming::SampleJson => {
            json_sample(&received.payload, learning, limits, recent).map_err(|r| {
                log::info!("sample on {} rejected: {r}", received.topic);
                Box::new(
                    Ack::sample(json_id_hint(&received.payload), None, AckStatus::Rejected)
                        .with_reason(r.to_string()),
                )
            })
        }
    }
}

/// A refused label (or command name) as the ack echoes it: as received, but never more than a
/// label's worth of text (a topic level may be 64 KiB), so the sender can still match the ack to
/// what it sent.
pub fn echo(label: &str) -> String {
    const MAX_ECHO_BYTES: usize = 4 * crate::learn::identity::MAX_LABEL_CHARS + 4;
    let mut end = label.len().min(MAX_ECHO_BYTES);
    while !label.is_char_boundary(end) {
        end -= 1;
    }
    label[..end].to_string()
}

fn json_sample(
    payload: &[u8],
    learning: &LearningConfig,
    limits: &SampleLimits,
    recent: &Mutex<RecentFrames>,
) -> Result<LearnRequest, Rejection> {
    if !learning.enabled {
        return Err(Rejection::Disabled);
    }
    let sample = parse_json_sample(payload, limits)?;
    let request = match sample.content {
        JsonContent::Image(bytes) => {
            let hash = content_hash(&bytes);
            SampleRequest {
                id: sample
                    .id
                    .unwrap_or_else(|| SampleId::of_content(hash.clone())),
                label: sample.label,
                source: "json",
                content_hash: hash,
                content: SampleContent::Image(bytes),
            }
        }
        JsonContent::Frame(frame_id) => {
            let recent = recent.lock().unwrap_or_else(|p| p.into_inner());
            let frame = recent
                .get(frame_id)
                .ok_or(Rejection::UnknownFrame(frame_id))?;
            let bytes: Vec<u8> = frame
                .embedding
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            SampleRequest {
                id: sample
                    .id
                    .unwrap_or_else(|| SampleId::of_content(format!("frame-{frame_id}"))),
                label: sample.label,
                source: "frame",
                content_hash: content_hash(&bytes),
                content: SampleContent::Embedding {
                    embedding: frame.embedding.clone(),
                    thumbnail: frame.thumbnail.clone(),
                },
            }
        }
    };
    Ok(LearnRequest::Sample(request))
}

/// The ack for a request the learner could not take (its queue is full).
pub fn busy(request: &LearnRequest) -> Ack {
    request
        .refusal()
        .with_reason(Rejection::Busy("ingest queue full".into()).to_string())
}

/// What the daemon must do for one learner event: messages to publish, in order, whether the
/// head's classes may have changed (Home Assistant discovery is then republished), and an
/// archive to stream (its ack is published after its last part, see `daemon::export_stream`).
#[derive(Debug, Default)]
pub struct Effects {
    pub messages: Vec<Outbound>,
    pub head_changed: bool,
    pub export: Option<ExportJob>,
    /// A group head to publish, retained, on the group's head topic.
    pub group_head: Option<Vec<u8>>,
}

/// An export archive to publish on `export` in parts, then its ack.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportJob {
    pub path: PathBuf,
    pub ack: Ack,
}

/// The group head version an event says this member now serves (an `adopt_head` ack that
/// adopted it or found it already active).
pub fn served_group_version(event: &LearnEvent) -> Option<u64> {
    match event {
        LearnEvent::Ack(ack) if ack.command.as_deref() == Some(super::learner::ADOPT_HEAD) => {
            ack.group_version
        }
        _ => None,
    }
}

/// Maps a learner event to what gets published.
pub fn effects(event: LearnEvent) -> Effects {
    match event {
        LearnEvent::Ack(ack) => Effects {
            messages: vec![Outbound::ack(&ack)],
            ..Effects::default()
        },
        LearnEvent::Report(report) => Effects {
            messages: vec![Outbound::json(Outgoing::Report, &report)],
            ..Effects::default()
        },
        LearnEvent::GroupHead { payload } => Effects {
            group_head: Some(payload),
            ..Effects::default()
        },
        LearnEvent::HeadChanged { .. } => Effects {
            head_changed: true,
            ..Effects::default()
        },
        LearnEvent::Export {
            path,
            publish: true,
            ack,
            ..
        } => Effects {
            export: Some(ExportJob { path, ack }),
            ..Effects::default()
        },
        LearnEvent::Export { ack, .. } => Effects {
            messages: vec![Outbound::ack(&ack)],
            ..Effects::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt::messages::learning::Command;

    fn limits() -> SampleLimits {
        let l = LearningConfig::default();
        SampleLimits {
            max_bytes: l.max_sample_bytes,
            max_pixels: l.max_sample_pixels,
            max_per_label: l.max_per_label,
            max_total: l.max_total,
            max_labels: l.max_labels,
        }
    }

    fn received(incoming: Incoming, payload: &[u8]) -> Received {
        Received::new("t", incoming, payload.to_vec())
    }

    #[test]
    fn samples_and_commands_become_typed_requests_or_refusals() {
        let recent = Mutex::new(RecentFrames::new(4));
        let learning = LearningConfig::default();
        let image = received(
            Incoming::SampleImage {
                label: "cat".into(),
            },
            b"jpegish",
        );
        let Ok(LearnRequest::Sample(s)) = request(image, &learning, &limits(), &recent) else {
            panic!("an image sample is a request");
        };
        assert_eq!(
            (s.id.as_str(), s.source),
            (s.content_hash.as_str(), "image")
        );
        let bad = received(
            Incoming::SampleImage {
                label: "a/b".into(),
            },
            b"x",
        );
        let ack = request(bad, &learning, &limits(), &recent).unwrap_err();
        assert!(ack.reason.unwrap().contains("not allowed"));
        let frame = received(
            Incoming::SampleJson,
            br#"{"id":"f","label":"x","frame_id":9}"#,
        );
        let ack = request(frame, &learning, &limits(), &recent).unwrap_err();
        assert_eq!(ack.id.as_deref(), Some("f"));
        let cmd = || {
            received(
                Incoming::Command {
                    name: "retrain".into(),
                },
                br#"{"id":"r","force":true}"#,
            )
        };
        assert_eq!(
            request(cmd(), &learning, &limits(), &recent).unwrap(),
            LearnRequest::Command {
                id: Some("r".into()),
                name: "retrain".into(),
                command: Command::Retrain { force: true }
            }
        );
        let off = LearningConfig {
            enabled: false,
            ..LearningConfig::default()
        };
        let ack = request(cmd(), &off, &limits(), &recent).unwrap_err();
        assert!(ack.reason.unwrap().contains("disabled"));
    }

    #[test]
    fn a_published_export_becomes_a_job_and_a_kept_one_an_ack() {
        let event = |publish| LearnEvent::Export {
            path: PathBuf::from("/x/samples-1.tar"),
            bytes: 7,
            publish,
            ack: Ack::command(None, "export", AckStatus::Accepted),
        };
        let streamed = effects(event(true));
        assert!(streamed.messages.is_empty(), "the ack follows the parts");
        assert_eq!(
            streamed.export.unwrap().path,
            PathBuf::from("/x/samples-1.tar")
        );
        let kept = effects(event(false));
        assert!(kept.export.is_none());
        assert_eq!(kept.messages[0].kind, Outgoing::Ack);
        assert!(effects(LearnEvent::HeadChanged { version: None }).head_changed);
    }

    #[test]
    fn a_refused_label_is_acked_and_echoed_within_bounds() {
        let recent = Mutex::new(RecentFrames::new(4));
        let learning = LearningConfig::default();
        let emoji = "🐈".repeat(65);
        let long = "x".repeat(100_000);
        for label in ["", "a\u{0}b", " cat", emoji.as_str(), long.as_str()] {
            let image = received(
                Incoming::SampleImage {
                    label: label.into(),
                },
                b"jpegish",
            );
            let ack = request(image, &learning, &limits(), &recent).unwrap_err();
            assert_eq!(ack.status, Some(AckStatus::Rejected));
            assert_eq!(ack.id, Some(content_hash(b"jpegish")));
            let echoed = ack.label.unwrap();
            assert!(
                label.starts_with(&echoed) && echoed.len() <= 260,
                "{label:.20}"
            );
        }
    }
}
