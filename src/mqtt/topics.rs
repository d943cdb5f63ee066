//! The topic grammar, in one place.
//!
//! Every topic is `{prefix}/{device}/...`. Outgoing (published by the device):
//!
//! | topic                          | payload                     | retained |
//! |--------------------------------|-----------------------------|----------|
//! | `{p}/{d}/availability`         | `online`/`offline`/`stopped`| yes      |
//! | `{p}/{d}/prediction`           | Prediction JSON             | no       |
//! | `{p}/{d}/state`                | State JSON (current label)  | yes      |
//! | `{p}/{d}/stats`                | Stats JSON                  | no       |
//! | `{p}/{d}/ack`                  | ack JSON (learning feature) | no       |
//! | `{p}/{d}/report`               | training report JSON        | yes      |
//! | `{p}/{d}/frame/thumbnail`      | JPEG bytes (optional)       | no       |
//!
//! Incoming (subscribed by the device, consumed by the learning feature):
//! `{p}/{d}/sample/{label}` (raw JPEG/PNG bytes), `{p}/{d}/sample` (JSON), `{p}/{d}/cmd/{name}`.
//!
//! Fleet groups (`learning.group`, docs/fleet.md): a member also listens on
//! `{p}/group/{g}/sample[/{label}]` and `{p}/group/{g}/cmd/{name}` (the same requests as on its own
//! topics) and on `{p}/group/{g}/head` (retained: the group's current head, see
//! `learn::group_head`). `group` is therefore not a usable device id when groups are used.
//!
//! Parsing is pure: [`parse_incoming`] turns a topic string into an [`Incoming`] or says why not.
//! Every topic our subscriptions can deliver parses: the label or command name in the last level
//! is passed on as received and checked by the teaching code, whose refusal is an ack (a label
//! refused here would be a message dropped without one). Labels follow one rule,
//! [`crate::learn::identity::Label`].

use thiserror::Error;

use crate::learn::identity::Label;

/// Longest device id or prefix level. (Labels have their own rule, checked where they are used:
/// [`crate::learn::identity::Label`].)
pub const MAX_NAME_BYTES: usize = 128;

/// Why a topic (or one of its parts) was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TopicError {
    #[error("mqtt {what} is empty")]
    Empty { what: &'static str },
    #[error("mqtt {what} {value:?} contains {bad:?}, which is not allowed in a topic level")]
    BadChar {
        what: &'static str,
        value: String,
        bad: char,
    },
    #[error("mqtt {what} {value:?} is longer than {max} bytes")]
    TooLong {
        what: &'static str,
        value: String,
        max: usize,
    },
    #[error("topic {topic:?} is not under {expected:?}")]
    WrongRoot { topic: String, expected: String },
    #[error("topic {topic:?} is not a known incoming topic (expected sample, sample/<label> or cmd/<name>)")]
    Unknown { topic: String },
}

/// A topic the device listens to, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// `sample/{label}`: the payload is an encoded image (JPEG or PNG) of class `label`. The
    /// label is the topic level as received (possibly empty or invalid: ingest checks it against
    /// the label rule and acks a refusal).
    SampleImage { label: String },
    /// `sample`: the payload is a JSON sample description.
    SampleJson,
    /// `cmd/{name}`: a command to the device; the payload is its (optional) JSON argument. The
    /// name is as received (an unknown one is refused with an ack).
    Command { name: String },
    /// `{p}/group/{g}/head`: a head published for the group (header line + head file bytes).
    GroupHead,
}

/// What the device publishes; one variant per outgoing topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outgoing {
    Availability,
    Prediction,
    State,
    Stats,
    Ack,
    Report,
    Thumbnail,
    /// `cmd/export` with `publish`: the samples archive (tar bytes, not JSON).
    Export,
}

impl Outgoing {
    /// Every outgoing kind, in a stable order (used by `glimpse watch` to subscribe).
    pub const ALL: [Outgoing; 8] = [
        Outgoing::Availability,
        Outgoing::Prediction,
        Outgoing::State,
        Outgoing::Stats,
        Outgoing::Ack,
        Outgoing::Report,
        Outgoing::Thumbnail,
        Outgoing::Export,
    ];

    /// The topic suffix after `{prefix}/{device}/`.
    pub fn suffix(self) -> &'static str {
        match self {
            Outgoing::Availability => "availability",
            Outgoing::Prediction => "prediction",
            Outgoing::State => "state",
            Outgoing::Stats => "stats",
            Outgoing::Ack => "ack",
            Outgoing::Report => "report",
            Outgoing::Thumbnail => "frame/thumbnail",
            Outgoing::Export => "export",
        }
    }

    /// Whether the broker should keep the last message for late subscribers. Retained topics hold
    /// a state (availability, current label, last training report), the others are a stream.
    pub fn retained(self) -> bool {
        matches!(
            self,
            Outgoing::Availability | Outgoing::State | Outgoing::Report
        )
    }

    fn from_suffix(suffix: &str) -> Option<Outgoing> {
        Outgoing::ALL.into_iter().find(|o| o.suffix() == suffix)
    }
}

/// The validated `{prefix}/{device}` pair, building every topic the device uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
    device: String,
    /// The fleet group this device belongs to (`learning.group`), if any.
    group: Option<String>,
}

impl Topics {
    /// Validates both parts (see [`validate_level`]); the prefix may hold several levels
    /// (`site/glimpse`), each validated.
    pub fn new(prefix: &str, device: &str) -> Result<Topics, TopicError> {
        validate_prefix(prefix)?;
        validate_level("device id", device)?;
        Ok(Topics {
            prefix: prefix.to_string(),
            device: device.to_string(),
            group: None,
        })
    }

    /// The same topics for a member of `group` (validated like a level).
    pub fn with_group(mut self, group: Option<&str>) -> Result<Topics, TopicError> {
        if let Some(group) = group {
            validate_level("group", group)?;
        }
        self.group = group.map(str::to_string);
        Ok(self)
    }

    pub fn group(&self) -> Option<&str> {
        self.group.as_deref()
    }

    /// `{p}/group/{g}/members/{d}`: retained, published on every connection and adoption, so
    /// operator tools know which devices a `--group` request must be answered by, and which
    /// leader version each serves.
    pub fn group_member(&self) -> Option<String> {
        self.group
            .as_deref()
            .map(|g| group_topic(&self.prefix, g, &format!("members/{}", self.device)))
    }

    /// `{p}/group/{g}/head` of this device's group.
    pub fn group_head(&self) -> Option<String> {
        self.group
            .as_deref()
            .map(|g| group_topic(&self.prefix, g, "head"))
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn device(&self) -> &str {
        &self.device
    }

    /// The full topic of an outgoing kind.
    pub fn outgoing(&self, kind: Outgoing) -> String {
        format!("{}/{}/{}", self.prefix, self.device, kind.suffix())
    }

    pub fn availability(&self) -> String {
        self.outgoing(Outgoing::Availability)
    }

    pub fn prediction(&self) -> String {
        self.outgoing(Outgoing::Prediction)
    }

    pub fn state(&self) -> String {
        self.outgoing(Outgoing::State)
    }

    pub fn stats(&self) -> String {
        self.outgoing(Outgoing::Stats)
    }

    pub fn ack(&self) -> String {
        self.outgoing(Outgoing::Ack)
    }

    pub fn report(&self) -> String {
        self.outgoing(Outgoing::Report)
    }

    /// `sample/{label}`: for clients (and tests) that send samples to this device.
    pub fn sample_image(&self, label: &Label) -> String {
        format!("{}/{}/sample/{}", self.prefix, self.device, label)
    }

    pub fn sample_json(&self) -> String {
        format!("{}/{}/sample", self.prefix, self.device)
    }

    pub fn command(&self, name: &str) -> String {
        format!("{}/{}/cmd/{}", self.prefix, self.device, name)
    }

    /// The filters the device subscribes to (re-subscribed on every connection).
    pub fn subscriptions(&self) -> Vec<String> {
        let base = format!("{}/{}", self.prefix, self.device);
        let mut filters = vec![
            format!("{base}/sample"),
            format!("{base}/sample/+"),
            format!("{base}/cmd/+"),
        ];
        if let Some(group) = &self.group {
            let base = group_topic(&self.prefix, group, "");
            filters.extend([
                format!("{base}sample"),
                format!("{base}sample/+"),
                format!("{base}cmd/+"),
                format!("{base}head"),
            ]);
        }
        filters
    }

    /// Parses a topic received on one of [`Topics::subscriptions`].
    pub fn parse_incoming(&self, topic: &str) -> Result<Incoming, TopicError> {
        if let Some(group) = &self.group {
            let root = group_topic(&self.prefix, group, "");
            if let Some(rest) = topic.strip_prefix(&root) {
                if rest == "head" {
                    return Ok(Incoming::GroupHead);
                }
                return parse_incoming(&self.prefix, &format!("group/{group}"), topic);
            }
        }
        parse_incoming(&self.prefix, &self.device, topic)
    }
}

/// `{prefix}/group/{group}/{suffix}`: the topics every member of a group shares.
pub fn group_topic(prefix: &str, group: &str, suffix: &str) -> String {
    format!("{prefix}/group/{group}/{suffix}")
}

/// Parses an incoming topic for this `prefix`/`device`. Pure: no broker, no state.
pub fn parse_incoming(prefix: &str, device: &str, topic: &str) -> Result<Incoming, TopicError> {
    let root = format!("{prefix}/{device}/");
    let rest = topic
        .strip_prefix(&root)
        .ok_or_else(|| TopicError::WrongRoot {
            topic: topic.to_string(),
            expected: root.clone(),
        })?;
    let unknown = || TopicError::Unknown {
        topic: topic.to_string(),
    };
    let mut levels = rest.split('/');
    let first = levels.next().ok_or_else(unknown)?;
    let second = levels.next();
    if levels.next().is_some() {
        return Err(unknown());
    }
    match (first, second) {
        ("sample", None) => Ok(Incoming::SampleJson),
        ("sample", Some(label)) => Ok(Incoming::SampleImage {
            label: label.to_string(),
        }),
        ("cmd", Some(name)) => Ok(Incoming::Command {
            name: name.to_string(),
        }),
        _ => Err(unknown()),
    }
}

/// Parses a topic the device publishes, under `prefix`, for any device: `(device, kind)`. Used by
/// `glimpse watch`, which subscribes with a `+` device wildcard.
pub fn parse_outgoing(prefix: &str, topic: &str) -> Option<(String, Outgoing)> {
    let rest = topic.strip_prefix(prefix)?.strip_prefix('/')?;
    let (device, suffix) = rest.split_once('/')?;
    let kind = Outgoing::from_suffix(suffix)?;
    Some((device.to_string(), kind))
}

/// One topic level (device id, prefix level): not empty, at most [`MAX_NAME_BYTES`],
/// no `/` (would add a level), no `+`/`#` (wildcards are illegal in published topics), no control
/// characters (invisible in logs, refused by some brokers).
pub fn validate_level(what: &'static str, value: &str) -> Result<(), TopicError> {
    if value.is_empty() {
        return Err(TopicError::Empty { what });
    }
    if value.len() > MAX_NAME_BYTES {
        return Err(TopicError::TooLong {
            what,
            value: value.chars().take(32).collect(),
            max: MAX_NAME_BYTES,
        });
    }
    if let Some(bad) = value
        .chars()
        .find(|c| matches!(c, '/' | '+' | '#') || c.is_control())
    {
        return Err(TopicError::BadChar {
            what,
            value: value.to_string(),
            bad,
        });
    }
    Ok(())
}

/// The prefix may span levels (`site-a/glimpse`); each level must be a valid level.
pub fn validate_prefix(prefix: &str) -> Result<(), TopicError> {
    if prefix.is_empty() {
        return Err(TopicError::Empty {
            what: "topic prefix",
        });
    }
    prefix
        .split('/')
        .try_for_each(|level| validate_level("topic prefix level", level))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics() -> Topics {
        Topics::new("glimpse", "cam1").unwrap()
    }

    #[test]
    fn outgoing_topics_follow_the_grammar() {
        let t = topics();
        assert_eq!(t.availability(), "glimpse/cam1/availability");
        assert_eq!(t.prediction(), "glimpse/cam1/prediction");
        assert_eq!(t.state(), "glimpse/cam1/state");
        assert_eq!(t.stats(), "glimpse/cam1/stats");
        assert_eq!(t.ack(), "glimpse/cam1/ack");
        assert_eq!(t.report(), "glimpse/cam1/report");
        assert_eq!(
            t.outgoing(Outgoing::Thumbnail),
            "glimpse/cam1/frame/thumbnail"
        );
    }

    #[test]
    fn only_state_like_topics_are_retained() {
        let retained: Vec<_> = Outgoing::ALL.into_iter().filter(|o| o.retained()).collect();
        assert_eq!(
            retained,
            vec![Outgoing::Availability, Outgoing::State, Outgoing::Report]
        );
    }

    #[test]
    fn subscriptions_cover_samples_and_commands() {
        assert_eq!(
            topics().subscriptions(),
            vec![
                "glimpse/cam1/sample",
                "glimpse/cam1/sample/+",
                "glimpse/cam1/cmd/+"
            ]
        );
    }

    #[test]
    fn parses_incoming_topics() {
        let t = topics();
        assert_eq!(
            t.parse_incoming("glimpse/cam1/sample/daisy"),
            Ok(Incoming::SampleImage {
                label: "daisy".into()
            })
        );
        assert_eq!(
            t.parse_incoming("glimpse/cam1/sample"),
            Ok(Incoming::SampleJson)
        );
        assert_eq!(
            t.parse_incoming("glimpse/cam1/cmd/retrain"),
            Ok(Incoming::Command {
                name: "retrain".into()
            })
        );
        // Unicode labels are fine: operators name classes in their language.
        assert_eq!(
            t.parse_incoming("glimpse/cam1/sample/tournesol-été"),
            Ok(Incoming::SampleImage {
                label: "tournesol-été".into()
            })
        );
    }

    #[test]
    fn refuses_other_devices_and_unknown_topics() {
        let t = topics();
        assert!(matches!(
            t.parse_incoming("glimpse/cam2/sample/daisy"),
            Err(TopicError::WrongRoot { .. })
        ));
        assert!(matches!(
            t.parse_incoming("other/cam1/sample"),
            Err(TopicError::WrongRoot { .. })
        ));
        for bad in [
            "glimpse/cam1/",
            "glimpse/cam1/cmd",
            "glimpse/cam1/sample/a/b",
            "glimpse/cam1/prediction",
            "glimpse/cam1/cmd/x/y",
        ] {
            assert!(
                matches!(t.parse_incoming(bad), Err(TopicError::Unknown { .. })),
                "{bad} should be unknown"
            );
        }
    }

    #[test]
    fn every_deliverable_sample_or_command_topic_parses() {
        // What `sample/+` and `cmd/+` can deliver always parses, so it reaches the code that
        // answers with an ack; the label rule is applied there.
        let t = topics();
        let long = "x".repeat(1000);
        for label in ["", "a\u{7}b", long.as_str(), "🐈🐈"] {
            assert_eq!(
                t.parse_incoming(&format!("glimpse/cam1/sample/{label}")),
                Ok(Incoming::SampleImage {
                    label: label.into()
                })
            );
            assert_eq!(
                t.parse_incoming(&format!("glimpse/cam1/cmd/{label}")),
                Ok(Incoming::Command { name: label.into() })
            );
        }
    }

    #[test]
    fn validates_prefix_and_device() {
        assert!(Topics::new("site/glimpse", "cam-1.local").is_ok());
        for (prefix, device) in [
            ("", "cam"),
            ("glimpse", ""),
            ("glimpse/", "cam"),
            ("/glimpse", "cam"),
            ("glim+pse", "cam"),
            ("glimpse", "cam/1"),
            ("glimpse", "cam#"),
            ("glimpse", "cam+"),
            ("glimpse", "cam\n"),
        ] {
            assert!(
                Topics::new(prefix, device).is_err(),
                "{prefix:?} {device:?} should be refused"
            );
        }
        let err = Topics::new("glimpse", "a/b").unwrap_err().to_string();
        assert!(err.contains("device id"), "{err}");
    }

    #[test]
    fn parses_outgoing_topics_for_any_device() {
        assert_eq!(
            parse_outgoing("glimpse", "glimpse/cam9/state"),
            Some(("cam9".into(), Outgoing::State))
        );
        assert_eq!(
            parse_outgoing("site/glimpse", "site/glimpse/cam9/frame/thumbnail"),
            Some(("cam9".into(), Outgoing::Thumbnail))
        );
        assert_eq!(parse_outgoing("glimpse", "glimpse/cam9/sample/x"), None);
        assert_eq!(parse_outgoing("glimpse", "glimpsex/cam9/state"), None);
    }
}
