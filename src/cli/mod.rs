//! Subcommand implementations; `src/main.rs` only parses arguments and maps errors to exit codes.

pub mod bench; // glimpse bench: per-stage timings, throughput, peak RSS, training time
pub mod broker; // --url, --prefix, --username, --password-env of the MQTT operator tools
pub mod capture; // glimpse capture: frames from any source, classified, as JSON lines
pub mod classify; // glimpse classify: ImageNet or trained-head top-k for image files
pub mod common; // arguments shared by subcommands (model manifest, threads, resize mode)
pub mod export; // glimpse export: a device's samples (thumbnails + labels) as a tar, over MQTT
pub mod fetch; // glimpse fetch-model: download + verify a model named by a manifest
pub mod run; // glimpse run (the daemon) and glimpse check-config
pub mod send; // glimpse send / samples / retrain / rollback: teaching a device over MQTT
pub mod studio; // glimpse studio: a web page that teaches devices, relayed over MQTT
pub mod train; // glimpse train: class-per-folder dataset -> embeddings (cached) -> head file
pub mod watch; // `glimpse watch`: print what devices publish
pub mod watch_group; // `glimpse watch --group`: a fleet group's members in one table
