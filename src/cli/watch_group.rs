//! `glimpse watch --group G`: one table of a fleet group's members (online, head version, label,
//! fps), rebuilt from what they publish, with members whose head lags the group's flagged. The
//! view is a pure fold over received messages ([`FleetView::update`]); the loop that feeds it
//! is in `watch.rs`.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::cli::send::member_of;
use crate::mqtt::messages::availability::Availability;
use crate::mqtt::topics::{group_topic, parse_outgoing, Outgoing};

/// What is known of one member.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MemberView {
    pub online: Option<bool>,
    /// The member's own head version (from its predictions and state).
    pub head_version: Option<u64>,
    pub label: Option<String>,
    pub fps: Option<f64>,
    /// The leader's version this member serves (its retained member announcement, or its last
    /// `adopt_head` ack), if any.
    pub follows: Option<u64>,
}

/// The group as seen on the broker.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetView {
    prefix: String,
    group: String,
    pub members: BTreeMap<String, MemberView>,
    /// The retained group head: its origin (the leader) and the leader's version.
    pub head: Option<(String, u64)>,
}

impl FleetView {
    pub fn new(prefix: &str, group: &str) -> FleetView {
        FleetView {
            prefix: prefix.to_string(),
            group: group.to_string(),
            members: BTreeMap::new(),
            head: None,
        }
    }

    /// The topics the view is built from.
    pub fn filters(&self) -> Vec<String> {
        let mut filters = vec![
            group_topic(&self.prefix, &self.group, "members/+"),
            group_topic(&self.prefix, &self.group, "head"),
        ];
        for kind in [
            Outgoing::Availability,
            Outgoing::Prediction,
            Outgoing::State,
            Outgoing::Stats,
            Outgoing::Ack,
        ] {
            filters.push(format!("{}/+/{}", self.prefix, kind.suffix()));
        }
        filters
    }

    /// Folds one message in. Messages of devices that are not members are ignored.
    pub fn update(&mut self, topic: &str, payload: &[u8]) {
        if let Some(member) = member_of(&self.prefix, &self.group, topic) {
            let view = self.members.entry(member).or_default();
            let json: Value = serde_json::from_slice(payload).unwrap_or(Value::Null);
            if let Some(v) = json["group_version"].as_u64() {
                view.follows = Some(v);
            }
            return;
        }
        if topic == group_topic(&self.prefix, &self.group, "head") {
            let line = payload.split(|&b| b == b'\n').next().unwrap_or_default();
            let header: Value = serde_json::from_slice(line).unwrap_or(Value::Null);
            if let (Some(origin), Some(version)) =
                (header["origin"].as_str(), header["version"].as_u64())
            {
                self.head = Some((origin.to_string(), version));
            }
            return;
        }
        let Some((device, kind)) = parse_outgoing(&self.prefix, topic) else {
            return;
        };
        let Some(view) = self.members.get_mut(&device) else {
            return;
        };
        let json: Value = serde_json::from_slice(payload).unwrap_or(Value::Null);
        match kind {
            Outgoing::Availability => {
                view.online = Some(Availability::parse(payload) == Some(Availability::Online));
            }
            Outgoing::Prediction | Outgoing::State => {
                if let Some(v) = json["head_version"].as_u64() {
                    view.head_version = Some(v);
                }
                if kind == Outgoing::State {
                    view.label = json["label"].as_str().map(str::to_string);
                }
            }
            Outgoing::Stats => view.fps = json["fps_out"].as_f64(),
            Outgoing::Ack if json["command"] == "adopt_head" => {
                if let Some(v) = json["group_version"].as_u64() {
                    view.follows = Some(v);
                }
            }
            _ => {}
        }
    }

    /// Whether `device` serves an older head than the group's (the leader never lags).
    pub fn lags(&self, device: &str) -> bool {
        match (&self.head, self.members.get(device)) {
            (Some((origin, _)), _) if origin == device => false,
            (Some((_, version)), Some(view)) => view.follows.is_none_or(|f| f < *version),
            _ => false,
        }
    }

    /// One line per member, then the group head.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (device, view) in &self.members {
            let online = match view.online {
                Some(true) => "online",
                Some(false) => "offline",
                None => "unknown",
            };
            let head = view
                .head_version
                .map(|v| format!("head v{v}"))
                .unwrap_or_else(|| "no head".into());
            let follows = view
                .follows
                .map(|v| format!(" (leader v{v})"))
                .unwrap_or_default();
            let fps = view
                .fps
                .map(|f| format!("{f:.1} fps"))
                .unwrap_or_else(|| "- fps".into());
            let flag = if self.lags(device) { "  LAGGING" } else { "" };
            out.push_str(&format!(
                "{device:<16} {online:<8} {head}{follows}  {label}  {fps}{flag}\n",
                label = view.label.as_deref().unwrap_or("-"),
            ));
        }
        match &self.head {
            Some((origin, version)) => out.push_str(&format!(
                "group {}: head v{version} of {origin}\n",
                self.group
            )),
            None => out.push_str(&format!("group {}: no head published\n", self.group)),
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summarises_members_and_flags_the_one_that_lags() {
        let mut view = FleetView::new("glimpse", "l3");
        for d in ["lead", "m1", "m2"] {
            view.update(&format!("glimpse/group/l3/members/{d}"), b"{}");
            view.update(&format!("glimpse/{d}/availability"), b"online");
        }
        view.update("glimpse/stranger/availability", b"online");
        view.update(
            "glimpse/group/l3/head",
            b"{\"origin\":\"lead\",\"version\":3,\"sha256\":\"x\",\"bytes\":1}\n\x00",
        );
        view.update(
            "glimpse/m1/ack",
            br#"{"command":"adopt_head","status":"accepted","group_version":3,"head_version":2}"#,
        );
        view.update(
            "glimpse/m2/ack",
            br#"{"command":"adopt_head","status":"accepted","group_version":2,"head_version":1}"#,
        );
        view.update("glimpse/m1/state", br#"{"label":"rock","head_version":2}"#);
        view.update("glimpse/m1/stats", br#"{"fps_out":4.5}"#);
        assert!(!view.lags("lead") && !view.lags("m1") && view.lags("m2"));
        assert!(!view.members.contains_key("stranger"));
        let table = view.render();
        assert!(
            table.contains("m1               online   head v2 (leader v3)  rock  4.5 fps\n"),
            "{table}"
        );
        assert!(
            table.contains("LAGGING") && table.contains("head v3 of lead"),
            "{table}"
        );
    }
}
