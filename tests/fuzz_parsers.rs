//! Property tests (proptest) over the parsers a broker client reaches: the topic grammar, sample
//! JSON, command JSON. Bounded: a fixed number of cases per property (`CASES`), a few seconds in
//! all, so they run in every `cargo test`. Each property asserts what a hostile payload may never
//! do: panic, or come out accepted while breaking the rules the rest of the daemon relies on.

use glimpse::learn::identity::Label;
use glimpse::learn::ingest::{parse_json_sample, validate_label, SampleContent, SampleLimits};
use glimpse::mqtt::messages::learning::{parse_command, Command};
use glimpse::mqtt::topics::{parse_incoming, Incoming, Topics};
use proptest::prelude::*;

const CASES: u32 = 2_000;

fn limits() -> SampleLimits {
    SampleLimits {
        max_bytes: 64 * 1024,
        max_pixels: 25_000_000,
        max_per_label: 1000,
        max_total: 10_000,
        max_labels: 100,
    }
}

/// Strings that look like topics: mostly the device's own levels, with hostile characters.
fn topicish() -> impl Strategy<Value = String> {
    let level = prop_oneof![
        Just("glimpse".to_string()),
        Just("cam1".to_string()),
        Just("sample".to_string()),
        Just("cmd".to_string()),
        Just(String::new()),
        "[a-z+#/\u{0}\u{7f}\u{1F600} ]{0,6}",
        ".{0,200}",
    ];
    let levels = proptest::collection::vec(level, 0..6).prop_map(|levels| levels.join("/"));
    // Half under the device's own root, so the sample and command branches are reached often.
    prop_oneof![
        levels.clone(),
        levels.prop_map(|rest| format!("glimpse/cam1/{rest}")),
    ]
}

/// JSON objects with the fields a sample or command may carry, valid or not.
fn jsonish() -> impl Strategy<Value = Vec<u8>> {
    let value = prop_oneof![
        Just("null".to_string()),
        Just("true".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        ".{0,40}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        Just("\"aGVsbG8=\"".to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
    ];
    let key = prop_oneof![
        Just("id"),
        Just("label"),
        Just("image"),
        Just("frame_id"),
        Just("force"),
        Just("publish"),
        Just("extra"),
    ];
    prop_oneof![
        proptest::collection::vec((key, value), 0..6).prop_map(|fields| {
            let body: Vec<String> = fields
                .into_iter()
                .map(|(k, v)| format!("\"{k}\":{v}"))
                .collect();
            format!("{{{}}}", body.join(",")).into_bytes()
        }),
        proptest::collection::vec(any::<u8>(), 0..300),
    ]
}

proptest! {
    // No regression files: a failure prints its minimal input, which a test can then pin.
    #![proptest_config(ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn topic_grammar_parses_single_levels(topic in topicish()) {
        if let Ok(incoming) = parse_incoming("glimpse", "cam1", &topic) {
            let topics = Topics::new("glimpse", "cam1").unwrap();
            // What parses names a single level, passed on as received (the label rule is
            // applied by ingest, which acks a refusal), and builds back to the same topic.
            match incoming {
                Incoming::SampleImage { label } => {
                    prop_assert!(!label.contains('/'));
                    prop_assert_eq!(format!("glimpse/cam1/sample/{label}"), topic.clone());
                    if let Ok(valid) = Label::new(label.as_str()) {
                        prop_assert_eq!(topics.sample_image(&valid), topic);
                    }
                }
                Incoming::Command { name } => {
                    prop_assert!(!name.contains('/'));
                    prop_assert_eq!(topics.command(&name), topic);
                }
                Incoming::SampleJson => prop_assert_eq!(topics.sample_json(), topic),
                // Only a group member's topics (which this device has none of) parse to it.
                Incoming::GroupHead => prop_assert!(false, "{topic} is no group topic here"),
            }
        }
    }

    #[test]
    fn valid_labels_round_trip_through_the_topic(label in "[^/+#\u{0}-\u{1f}\u{7f}-\u{9f}]{1,40}") {
        let Ok(valid) = Label::new(label.as_str()) else {
            return Ok(());
        };
        let topics = Topics::new("glimpse", "cam1").unwrap();
        prop_assert_eq!(
            topics.parse_incoming(&topics.sample_image(&valid)),
            Ok(Incoming::SampleImage { label })
        );
    }

    #[test]
    fn sample_json_never_accepts_an_invalid_label(payload in jsonish()) {
        if let Ok(sample) = parse_json_sample(&payload, &limits()) {
            prop_assert!(validate_label(&sample.label).is_ok(), "{:?}", sample.label);
            if let SampleContent::Image(bytes) = &sample.content {
                prop_assert!(!bytes.is_empty());
            }
        }
    }

    #[test]
    fn commands_never_panic_and_forget_needs_a_valid_label(
        name in prop_oneof![Just("forget"), Just("retrain"), Just("labels"), Just("export"), Just("rollback"), Just("x")],
        payload in jsonish(),
    ) {
        let (_id, parsed) = parse_command(name, &payload);
        if let Ok(Command::Forget { label }) = parsed {
            prop_assert!(validate_label(&label).is_ok());
        }
    }
}
