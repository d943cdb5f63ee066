//! Availability: the plain-text, retained payload of `{prefix}/{device}/availability`.
//!
//! Plain text rather than JSON because Home Assistant's availability topics compare the raw
//! payload. `offline` is the broker's last will (the device died or lost the network);
//! `stopped` is a clean shutdown, so an operator can tell a crash from a planned stop.

use std::fmt;

/// The device's liveness as published on the availability topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    Online,
    Offline,
    Stopped,
}

impl Availability {
    pub fn as_str(self) -> &'static str {
        match self {
            Availability::Online => "online",
            Availability::Offline => "offline",
            Availability::Stopped => "stopped",
        }
    }

    /// Parses a received payload; `None` for anything else.
    pub fn parse(payload: &[u8]) -> Option<Availability> {
        match payload {
            b"online" => Some(Availability::Online),
            b"offline" => Some(Availability::Offline),
            b"stopped" => Some(Availability::Stopped),
            _ => None,
        }
    }
}

impl fmt::Display for Availability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_others() {
        for a in [
            Availability::Online,
            Availability::Offline,
            Availability::Stopped,
        ] {
            assert_eq!(Availability::parse(a.as_str().as_bytes()), Some(a));
        }
        assert_eq!(Availability::parse(b"ONLINE"), None);
        assert_eq!(Availability::parse(b"\"online\""), None);
        assert_eq!(Availability::Stopped.to_string(), "stopped");
    }
}
