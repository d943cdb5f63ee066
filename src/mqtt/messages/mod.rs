//! The payloads glimpse publishes, one file per message kind (as rumqttc does for packets): each
//! with its serde struct and tests pinning its JSON shape, because other programs (Home Assistant,
//! Node-RED, `glimpse watch`) parse these bytes.
//!
//! Times are unix milliseconds (`*_ms` fields): no time-zone parsing on constrained consumers.

pub mod availability; // online / offline / stopped (plain text, retained)
pub mod export; // the samples archive in numbered, checksummed parts on `export`
pub mod learning; // teaching: acks, commands, the training report
pub mod prediction; // one classified frame
pub mod state; // the smoothed current label (retained)
pub mod stats; // periodic health: fps, drops, stage latencies, memory, reconnects
pub mod thumbnail; // frame/thumbnail: a small JPEG tagged with its frame_id

pub use availability::Availability;
pub use prediction::{Prediction, Scored};
pub use state::State;
pub use stats::{StageLatency, Stats};

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the unix epoch; 0 if the clock is before 1970 (a Jetson without RTC
/// battery can boot in 1970, which must not crash the publisher).
pub fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `unix_ms(SystemTime::now())`.
pub fn now_unix_ms() -> u64 {
    unix_ms(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn unix_ms_handles_the_epoch_and_before() {
        assert_eq!(unix_ms(UNIX_EPOCH + Duration::from_millis(1234)), 1234);
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_secs(5)), 0);
        assert!(now_unix_ms() > 1_600_000_000_000);
    }
}
