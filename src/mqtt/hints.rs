//! Log lines written for a person reading `journalctl -u glimpse -f` or a terminal, not for a
//! machine: what a newcomer sees on a first `glimpse run`. Pure text, so the wording is tested.
//!
//! Two moments matter most. With no broker, the link's backoff warnings repeat forever and never
//! say the consequence (nothing is delivered) nor the fix; [`no_broker`] says both, once. And
//! without an MQTT client the log is the only window on what the camera sees;
//! [`state_changed`] puts each change of the smoothed state there.

/// Said once, the first time the broker cannot be reached and no connection has succeeded yet.
/// `refused_by_broker` is true when a broker answered but refused the connection (credentials,
/// client id), false when nothing answered (no broker, wrong host or port, firewall, TLS).
pub fn no_broker(url: &str, refused_by_broker: bool) -> String {
    if refused_by_broker {
        format!(
            "the MQTT broker at {url} refused the connection: predictions are NOT delivered \
             until it accepts. glimpse keeps running and retries. Check mqtt.username, \
             mqtt.password_file / mqtt.password_env and mqtt.client_id in the config \
             (see docs/configuration.md)."
        )
    } else {
        format!(
            "no MQTT broker answers at {url}: predictions are NOT delivered until one does. \
             glimpse keeps running and retries. Start a broker on this machine \
             (`sudo apt-get install mosquitto` runs one on localhost:1883) or point glimpse at \
             yours: `url = \"mqtt://host:1883\"` in the [mqtt] section of the config, or \
             GLIMPSE_MQTT__URL=mqtt://host:1883 in the environment."
        )
    }
}

/// One change of the smoothed state (the retained `state` topic), e.g. `cam1: now "daisy" (0.93)`.
/// The label is quoted with Rust's escaping, so a label cannot forge a second log line.
pub fn state_changed(device: &str, label: &str, score: f32) -> String {
    format!("{device}: now {label:?} ({score:.2})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_broker_names_the_url_the_consequence_and_both_fixes() {
        let line = no_broker("mqtt://localhost:1883", false);
        assert!(line.contains("mqtt://localhost:1883"), "{line}");
        assert!(line.contains("NOT delivered"), "{line}");
        assert!(line.contains("apt-get install mosquitto"), "{line}");
        assert!(line.contains("GLIMPSE_MQTT__URL="), "{line}");
        assert!(line.contains("[mqtt]"), "{line}");
    }

    #[test]
    fn a_refusing_broker_points_at_the_credentials_not_at_installing_one() {
        let line = no_broker("mqtts://broker.lan:8883", true);
        assert!(line.contains("mqtts://broker.lan:8883"), "{line}");
        assert!(line.contains("refused"), "{line}");
        assert!(line.contains("NOT delivered"), "{line}");
        assert!(line.contains("mqtt.username"), "{line}");
        assert!(!line.contains("apt-get"), "{line}");
    }

    #[test]
    fn state_change_reads_device_label_and_score() {
        assert_eq!(
            state_changed("cam1", "daisy", 0.934),
            "cam1: now \"daisy\" (0.93)"
        );
    }

    #[test]
    fn a_label_cannot_break_the_log_line() {
        let line = state_changed("cam1", "a\"b\nc", 0.5);
        assert_eq!(line, "cam1: now \"a\\\"b\\nc\" (0.50)");
        assert!(!line.contains('\n'));
    }
}
