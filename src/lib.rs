//! glimpse: a Jetson daemon that turns camera frames into MobileNetV2 embeddings (tract, frozen),
//! classifies them with a small head trained on the device, and publishes predictions over MQTT.
//!
//! The crate map follows the data flow, one direction:
//! source -> vision (preprocess, backbone) -> learn (head) -> mqtt (publish).

pub mod cli; // subcommand implementations behind `src/main.rs`
pub mod learn; // the trainable head: dataset scan, embedding cache, training, metrics, head file
pub mod procstat; // resident memory of this process (stats topic, bench)
pub mod systemd; // sd_notify, watchdog gating, journald detection
pub mod vision; // model manifests, model fetch, image decode + preprocess, the tract backbone
