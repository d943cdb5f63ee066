//! The daemon's intake of samples and commands from the broker, before the learner: the rules
//! that answer a message without running it, and the byte budget of what may wait.
//!
//! Every message that reaches the device gets an ack, so each refusal here produces one:
//! - over `mqtt.max_packet_bytes` (the link skipped its payload): `rejected`, reason
//!   `too large: ...` (no id: the payload that would name it was never read);
//! - a *retained* delivery (the broker's stored copy, sent again on every subscribe): `rejected`,
//!   reason `retained: ...`. A sample or command is an intent that runs once; a retained one
//!   would run again after every reconnect (a retained `cmd/forget` would delete what was taught
//!   since);
//! - no room in the byte budget, or the learner's queue is full: `rejected`, reason `the device
//!   is busy ...` (the sender retries).
//!
//! [`screen`] is pure; [`Intake`] adds the budget and the counters for `stats`.

use crate::learn::cache::content_hash;
use crate::learn::ingest::{json_id_hint, Rejection};
use crate::mqtt::budget::ByteBudget;
use crate::mqtt::link::Received;
use crate::mqtt::messages::learning::{Ack, AckStatus};
use crate::mqtt::topics::{Incoming, Outgoing};

use super::teach::Outbound;

/// Why a message is answered without being handed to the learner.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("too large: the message was {size} bytes, over mqtt.max_packet_bytes = {max}; it was not read")]
    TooLarge { size: usize, max: usize },
    #[error("retained: samples and commands must not be published with the retain flag (a retained message would run again on every reconnect); clear it with an empty retained message")]
    Retained,
    #[error("{0}")]
    Busy(String),
}

/// What happened to incoming messages since start (for the `stats` topic).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IntakeCounters {
    pub too_large: u64,
    pub retained: u64,
    pub busy: u64,
}

impl IntakeCounters {
    /// Messages answered without being run.
    pub fn refused(&self) -> u64 {
        self.too_large + self.retained + self.busy
    }
}

/// The refusal a message gets before any queue, if any. Pure.
pub fn screen(received: &Received, max_packet_bytes: usize) -> Option<Refusal> {
    if let Some(size) = received.too_large {
        return Some(Refusal::TooLarge {
            size,
            max: max_packet_bytes,
        });
    }
    // Every subscription but the group head is a sample or a command topic: none may act from a
    // retained copy. The group head is retained on purpose (catch-up): it is a state, and
    // adopting the same head twice is a no-op.
    if received.retained && received.incoming != Incoming::GroupHead {
        return Some(Refusal::Retained);
    }
    None
}

/// The `rejected` ack for a message: its id (content hash for raw images, `id` of a JSON
/// payload), label or command, and the reason.
pub fn refusal_ack(received: &Received, reason: &str) -> Ack {
    let payload = (received.too_large.is_none()).then_some(received.payload.as_slice());
    let ack = match &received.incoming {
        Incoming::SampleImage { label } => Ack::sample(
            payload.map(content_hash),
            Some(super::teach::echo(label)),
            AckStatus::Rejected,
        ),
        Incoming::SampleJson => {
            Ack::sample(payload.and_then(json_id_hint), None, AckStatus::Rejected)
        }
        Incoming::Command { name } => Ack::command(
            payload.and_then(json_id_hint),
            &super::teach::echo(name),
            AckStatus::Rejected,
        ),
        Incoming::GroupHead => Ack::command(None, super::learner::ADOPT_HEAD, AckStatus::Rejected),
    };
    ack.with_reason(reason)
}

/// Screens messages and holds the byte budget of those waiting for the learner.
pub struct Intake {
    budget: ByteBudget,
    max_packet_bytes: usize,
    counters: IntakeCounters,
}

impl Intake {
    pub fn new(budget_bytes: usize, max_packet_bytes: usize) -> Intake {
        Intake {
            budget: ByteBudget::new(budget_bytes),
            max_packet_bytes,
            counters: IntakeCounters::default(),
        }
    }

    /// The message with its budget permit, ready for the learner, or the ack to publish now.
    pub fn admit(&mut self, mut received: Received) -> Result<Received, Outbound> {
        let refusal = match screen(&received, self.max_packet_bytes) {
            Some(refusal) => refusal,
            None => match self.budget.try_acquire(received.payload.len()) {
                Some(permit) => {
                    received.permit = Some(permit);
                    return Ok(received);
                }
                None => Refusal::Busy(
                    Rejection::Busy(format!(
                        "{} MiB of samples already wait",
                        self.budget.used() >> 20
                    ))
                    .to_string(),
                ),
            },
        };
        Err(self.refuse(&received, &refusal))
    }

    /// Counts a message the learner's queue refused (its `busy` ack is the learner's).
    pub fn learner_busy(&mut self) {
        self.counters.busy += 1;
    }

    pub fn counters(&self) -> IntakeCounters {
        self.counters
    }

    fn refuse(&mut self, received: &Received, refusal: &Refusal) -> Outbound {
        match refusal {
            Refusal::TooLarge { .. } => self.counters.too_large += 1,
            Refusal::Retained => self.counters.retained += 1,
            Refusal::Busy(_) => self.counters.busy += 1,
        }
        log::info!("{}: refused: {refusal}", received.topic);
        Outbound {
            kind: Outgoing::Ack,
            payload: serde_json::to_vec(&refusal_ack(received, &refusal.to_string()))
                .unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(incoming: Incoming, payload: &[u8]) -> Received {
        Received::new("glimpse/cam1/x", incoming, payload.to_vec())
    }

    fn ack_of(out: Outbound) -> Ack {
        assert_eq!(out.kind, Outgoing::Ack);
        serde_json::from_slice(&out.payload).unwrap()
    }

    fn image(label: &str) -> Incoming {
        Incoming::SampleImage {
            label: label.into(),
        }
    }

    #[test]
    fn live_messages_pass_the_screen() {
        let live = message(image("cat"), b"jpeg");
        assert_eq!(screen(&live, 100), None);
    }

    #[test]
    fn retained_samples_and_commands_are_refused_with_their_ids() {
        let mut intake = Intake::new(1 << 20, 1 << 20);
        let mut forget = message(
            Incoming::Command {
                name: "forget".into(),
            },
            br#"{"id":"c1","label":"cat"}"#,
        );
        forget.retained = true;
        let ack = ack_of(intake.admit(forget).unwrap_err());
        assert_eq!(ack.status, Some(AckStatus::Rejected));
        assert_eq!(ack.command.as_deref(), Some("forget"));
        assert_eq!(ack.id.as_deref(), Some("c1"));
        assert!(ack.reason.unwrap().starts_with("retained"));

        let mut sample = message(image("cat"), b"jpeg bytes");
        sample.retained = true;
        let ack = ack_of(intake.admit(sample).unwrap_err());
        assert_eq!(ack.id, Some(content_hash(b"jpeg bytes")));
        assert_eq!(ack.label.as_deref(), Some("cat"));
        assert_eq!(intake.counters().retained, 2);
    }

    #[test]
    fn too_large_is_refused_without_an_id() {
        let mut intake = Intake::new(1 << 20, 1000);
        let mut big = message(image("cat"), b"");
        big.too_large = Some(5000);
        let ack = ack_of(intake.admit(big).unwrap_err());
        assert_eq!(ack.id, None, "the hash of the skipped payload is unknown");
        assert_eq!(ack.label.as_deref(), Some("cat"));
        let reason = ack.reason.unwrap();
        assert!(
            reason.starts_with("too large") && reason.contains("5000") && reason.contains("1000"),
            "{reason}"
        );
        assert_eq!(intake.counters().too_large, 1);
    }

    #[test]
    fn the_budget_refuses_busy_until_the_learner_drops_a_message() {
        let mut intake = Intake::new(10, 1000);
        let first = intake.admit(message(image("cat"), &[1; 8])).unwrap();
        let refused = ack_of(intake.admit(message(image("cat"), &[2; 8])).unwrap_err());
        assert!(refused.reason.unwrap().contains("busy"));
        assert_eq!(refused.id, Some(content_hash(&[2; 8])));
        drop(first); // the learner is done with it
        assert!(intake.admit(message(image("cat"), &[2; 8])).is_ok());
        intake.learner_busy();
        assert_eq!(intake.counters().busy, 2);
        assert_eq!(intake.counters().refused(), 2);
    }
}
