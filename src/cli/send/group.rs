//! `--group`: an operator tool talks to every online member of a fleet group at once. Pure parts:
//! which devices are members (`{p}/group/{g}/members/{d}`, retained, published by each member on
//! connect) and the merging of their acks, so the sending loop sees one ack per request, and
//! only once every online member answered it (or learns which did not).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::mqtt::messages::learning::{Ack, AckStatus};

/// The member a `{prefix}/group/{group}/members/{device}` topic announces, if it is one.
pub fn member_of(prefix: &str, group: &str, topic: &str) -> Option<String> {
    let rest = topic.strip_prefix(&format!("{prefix}/group/{group}/members/"))?;
    (!rest.is_empty() && !rest.contains('/')).then(|| rest.to_string())
}

/// Acks of the online members, merged per request (`id` + command name).
#[derive(Debug, Default)]
pub struct GroupAcks {
    members: BTreeSet<String>,
    pending: HashMap<(Option<String>, Option<String>), BTreeMap<String, Ack>>,
}

impl GroupAcks {
    pub fn new(members: impl IntoIterator<Item = String>) -> GroupAcks {
        GroupAcks {
            members: members.into_iter().collect(),
            pending: HashMap::new(),
        }
    }

    /// Records `device`'s ack; returns the merged ack once every member answered this request.
    /// Acks of other devices are ignored; an ack without an id (a sample refused unread) cannot
    /// be matched across members and is passed on at once, naming its device.
    pub fn add(&mut self, device: &str, ack: Ack) -> Option<Ack> {
        if !self.members.contains(device) {
            return None;
        }
        if ack.id.is_none() {
            return Some(name_device(device, ack));
        }
        let key = (ack.id.clone(), ack.command.clone());
        let answered = self.pending.entry(key.clone()).or_default();
        answered.insert(device.to_string(), ack);
        if answered.len() < self.members.len() {
            return None;
        }
        self.pending.remove(&key).map(merge)
    }

    /// The members that have not answered request `id` yet.
    pub fn missing(&self, id: &str) -> Vec<String> {
        let answered: BTreeSet<&String> = self
            .pending
            .iter()
            .filter(|((i, _), _)| i.as_deref() == Some(id))
            .flat_map(|(_, acks)| acks.keys())
            .collect();
        self.members
            .iter()
            .filter(|m| !answered.contains(m))
            .cloned()
            .collect()
    }
}

fn name_device(device: &str, mut ack: Ack) -> Ack {
    ack.reason = Some(match ack.reason {
        Some(reason) => format!("{reason} [{device}]"),
        None => format!("[{device}]"),
    });
    ack
}

/// One ack for all members: rejected if any refused (its reason first, so `busy` is still
/// recognised, then who said it), else accepted if any stored it, else duplicate. The reason
/// lists every member's answer, so the operator sees which device said what.
fn merge(acks: BTreeMap<String, Ack>) -> Ack {
    let worst = acks
        .iter()
        .find(|(_, a)| a.status == Some(AckStatus::Rejected))
        .or_else(|| {
            acks.iter()
                .find(|(_, a)| a.status == Some(AckStatus::Accepted))
        })
        .or_else(|| acks.iter().next())
        .map(|(d, a)| (d.clone(), a.clone()));
    let Some((device, mut merged)) = worst else {
        return Ack::default();
    };
    let each: Vec<String> = acks
        .iter()
        .map(|(d, a)| {
            let status = a
                .status
                .map(|s| format!("{s:?}").to_lowercase())
                .unwrap_or_default();
            let version = a.head_version.map(|v| format!(" v{v}")).unwrap_or_default();
            format!("{d} {status}{version}")
        })
        .collect();
    merged.reason = Some(format!(
        "{}[{device}; members: {}]",
        merged
            .reason
            .as_deref()
            .map(|r| format!("{r} "))
            .unwrap_or_default(),
        each.join(", ")
    ));
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(id: &str, status: AckStatus) -> Ack {
        Ack::sample(Some(id.into()), Some("rock".into()), status)
    }

    #[test]
    fn one_merged_ack_once_every_member_answered() {
        let mut acks = GroupAcks::new(["a".to_string(), "b".to_string()]);
        assert!(acks.add("a", ack("x", AckStatus::Accepted)).is_none());
        assert_eq!(acks.missing("x"), vec!["b".to_string()]);
        assert!(acks
            .add("stranger", ack("x", AckStatus::Rejected))
            .is_none());
        let merged = acks.add("b", ack("x", AckStatus::Duplicate)).unwrap();
        assert_eq!(merged.status, Some(AckStatus::Accepted));
        assert!(merged.reason.unwrap().contains("a accepted, b duplicate"));
    }

    #[test]
    fn a_refusal_wins_and_keeps_its_reason_first() {
        let mut acks = GroupAcks::new(["a".to_string(), "b".to_string()]);
        acks.add("a", ack("x", AckStatus::Accepted));
        let busy = ack("x", AckStatus::Rejected).with_reason("the device is busy (queue)");
        let merged = acks.add("b", busy).unwrap();
        assert_eq!(merged.status, Some(AckStatus::Rejected));
        assert!(merged.reason.unwrap().starts_with("the device is busy"));
    }

    #[test]
    fn member_topics_name_one_device() {
        assert_eq!(
            member_of("glimpse", "l3", "glimpse/group/l3/members/cam1").as_deref(),
            Some("cam1")
        );
        assert_eq!(member_of("glimpse", "l3", "glimpse/group/l3/head"), None);
        assert_eq!(
            member_of("glimpse", "l3", "glimpse/group/l3/members/a/b"),
            None
        );
    }
}
