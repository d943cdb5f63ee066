//! The MQTT side of glimpse: the topic grammar, the payloads, the publish policy, Home Assistant
//! discovery and the rumqttc link that carries them.
//!
//! Pure logic (topics, messages, policy, discovery, backoff, config validation) is kept apart from
//! I/O (`link`), the way rumqttc keeps `state.rs` apart from `eventloop.rs`: the pure parts are
//! tested in microseconds, the link is tested against a real Mosquitto.

pub mod backoff; // capped exponential reconnect backoff with jitter (pure)
pub mod budget; // ByteBudget: bytes of incoming payloads waiting to be handled, with RAII permits
pub mod config; // the `[mqtt]` config section: URL, identity, auth, TLS, limits, validation
pub mod discovery; // Home Assistant MQTT discovery payloads (retained config topics)
pub mod hints; // log lines for people: no broker (said once), smoothed state changes
pub mod link; // MqttLink: rumqttc event loop task, bounded outbox, reconnects, last will
pub mod messages; // serde payloads: prediction, state, stats, availability
pub mod policy; // PublishPolicy: every_frame / on_change, smoothing, min interval, min score
pub mod topics; // outgoing topic names and the parser for incoming topics

pub use config::MqttConfig;
pub use link::{LinkCounters, MqttLink, Received};
pub use policy::{Decision, PolicyConfig, PublishPolicy};
pub use topics::{Incoming, Topics};
