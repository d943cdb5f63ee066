//! glimpse: a Jetson daemon that turns camera frames into MobileNetV2 embeddings (tract, frozen),
//! classifies them with a small head trained on the device, and publishes predictions over MQTT.
//!
//! The crate map follows the data flow, one direction:
//! source -> vision (preprocess, backbone) -> learn (head) -> mqtt (publish).

pub mod cli; // subcommand implementations behind `src/main.rs`
pub mod config; // the daemon configuration tree: TOML + GLIMPSE_* overrides, validation
pub mod daemon; // glimpse run: pipeline threads, MQTT publishing, stats, watchdog, shutdown
pub mod fault; // test-only fault injection (GLIMPSE_FAULT; debug builds or feature fault-injection)
pub mod fsutil; // crash-safe file replacement (temp, fsync, rename, fsync dir)
pub mod learn; // the trainable head: dataset scan, embedding cache, training, metrics, head file
pub mod mqtt; // topics, payloads, publish policy, the rumqttc link
pub mod procstat; // resident memory of this process (stats topic, bench)
pub mod source; // frame sources: camera (nokhwa V4L2), exec (MJPEG from a child's stdout), dir/file replay
pub mod store; // samples and head versions in SQLite (<state_dir>/glimpse.db)
pub mod systemd; // sd_notify, watchdog gating, journald detection
pub mod vision; // model manifests, model fetch, image decode + preprocess, the tract backbone
