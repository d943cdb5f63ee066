//! A group member adopts the group's head (docs/fleet.md): the message is checked
//! (`learn::group_head::decode`: size, header, length, sha256), parsed against this backbone,
//! judged on the member's own validation samples (`learn::group_head::judge`), then stored as a
//! new head version like one of its own (atomic file + commit, so rollback works and a crash
//! leaves the old head or the new one) and served. Every outcome is answered with an
//! `adopt_head` ack. A head trained with another engine of the same model is accepted only when
//! the engines agree (`learn::cross_engine`), else refused with the reason.
//!
//! Convergence: only a leader publishes, and only heads it trained or rolled back to; an adopted
//! head is never republished, and a leader adopts nothing. So a head crosses the group once and
//! cannot bounce between members, even with two leaders configured by mistake.

use std::sync::Arc;

use super::Trainer;
use crate::daemon::learner::ADOPT_HEAD;
use crate::daemon::pipeline::LoadedHead;
use crate::learn::cache::content_hash;
use crate::learn::cross_engine::accept_head_bytes;
use crate::learn::group_head::{decode, judge};
use crate::learn::head::Head;
use crate::learn::retrain::Sample;
use crate::mqtt::messages::learning::{Ack, AckStatus};
use crate::store::NewHead;

impl Trainer {
    /// Checks, judges, stores and serves a group head; the ack says what was done and why.
    pub(super) fn adopt(&mut self, payload: &[u8]) -> Ack {
        let answer = |status: AckStatus, reason: String, version: Option<u64>| {
            log::info!("group head: {reason}");
            Ack {
                head_version: version,
                ..Ack::command(None, ADOPT_HEAD, status).with_reason(reason)
            }
        };
        // The group version is set on the answers after which this member serves the head.
        let serving = |ack: Ack, group_version: u64| Ack {
            group_version: Some(group_version),
            ..ack
        };
        let rejected = |reason: String| {
            let active = self.head.load_full().map(|h| h.version);
            answer(AckStatus::Rejected, format!("refused: {reason}"), active)
        };
        let (header, bytes) = match decode(payload) {
            Ok(decoded) => decoded,
            Err(e) => return rejected(format!("{e}; the active head is kept")),
        };
        let from = format!("head v{} of {}", header.version, header.origin);
        if header.origin == self.settings.device {
            return answer(
                AckStatus::Duplicate,
                format!("{from} is this device's own"),
                None,
            );
        }
        if !self.follower() {
            return rejected(format!(
                "{from}: this device is the group's leader and adopts no head (one leader per group)"
            ));
        }
        match self.active_sha256() {
            Ok(Some((version, sha))) if sha == header.sha256 => {
                let ack = answer(
                    AckStatus::Duplicate,
                    format!("{from} is already active here as v{version}"),
                    Some(version),
                );
                return serving(ack, header.version);
            }
            Ok(_) => {}
            Err(e) => return rejected(e),
        }
        // A head from a member on another engine of the same model is judged by the agreement
        // check, as a head file would be; the bytes are stored as received (so a redelivery is
        // still recognised by its sha256) and the rule is applied again when they are loaded.
        let head = match accept_head_bytes(bytes, &from, &*self.backbone) {
            Ok(head) => head,
            Err(e) => return rejected(format!("{from}: {e}; the active head is kept")),
        };
        let decision = match self.judge(&head) {
            Ok(decision) => decision,
            Err(e) => return rejected(e),
        };
        if !decision.accepted {
            return rejected(format!(
                "{from} is worse on this device's own samples: {}",
                decision.reason
            ));
        }
        let report = serde_json::json!({
            "adopted_from": header.origin,
            "origin_version": header.version,
            "classes": head.classes(),
            "gate": decision,
        })
        .to_string();
        let stored = self.store.insert_head(
            &NewHead {
                bytes,
                gate_bytes: None,
                report_json: &report,
            },
            true,
        );
        let version = match stored {
            Ok(version) => version,
            Err(e) => return rejected(format!("{from}: cannot store it: {e}")),
        };
        self.head.store(Some(Arc::new(LoadedHead {
            head,
            version,
            gate: None,
            provisional: false,
        })));
        self.events.send(super::LearnEvent::HeadChanged {
            version: Some(version),
        });
        if let Err(e) = self.store.prune_heads(self.settings.learning.keep_heads) {
            log::warn!("cannot prune old head versions: {e}");
        }
        let ack = answer(
            AckStatus::Accepted,
            format!("adopted {from} as v{version}: {}", decision.reason),
            Some(version),
        );
        serving(ack, header.version)
    }

    /// The active version and the sha256 of its file, so a redelivered retained head (every
    /// reconnect) is recognised instead of stored again.
    fn active_sha256(&self) -> Result<Option<(u64, String)>, String> {
        let Some(version) = self.store.active_version().map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        Ok(self
            .store
            .head(version)
            .ok()
            .flatten()
            .map(|stored| (version, content_hash(&stored.bytes))))
    }

    /// The adoption rule on this device's own samples (see `learn::group_head::judge`).
    fn judge(&self, candidate: &Head) -> Result<crate::learn::gate::GateDecision, String> {
        let stored = self
            .store
            .samples(&self.fingerprint_text)
            .map_err(|e| e.to_string())?;
        let samples: Vec<Sample> = stored.iter().map(super::as_sample).collect();
        let current = self.head.load_full();
        let learning = &self.settings.learning;
        Ok(judge(
            candidate,
            current.as_deref().map(|loaded| &loaded.head),
            &samples,
            learning.validation_split,
            learning.seed,
            learning.gate_tolerance,
        ))
    }
}
