//! `glimpse run`: the long-running process. Loads the backbone and the head, opens the source,
//! starts the frame pipeline (threads) and the MQTT link (tokio), then publishes predictions
//! through the publish policy, stats every few seconds, and keeps systemd informed (READY,
//! STATUS, WATCHDOG only while frames flow, STOPPING). SIGTERM or SIGINT: `stopped` on the
//! availability topic and exit 0.

pub mod change; // skip frames that barely changed (grey-thumbnail difference)
pub mod learner; // samples + commands -> store, acks, retraining, hot swap (its own thread)
pub mod meter; // rolling latency windows and rates for the stats topic
pub mod pipeline; // capture -> decode -> backbone -> head threads with newest-wins hand-offs
pub mod publish; // prediction events -> MQTT messages through the publish policy
pub mod recent; // the ring of recent frames (embedding + thumbnail) an operator can label
pub mod slot; // the newest-wins single-slot hand-off between pipeline threads

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::learn::head::{Head, HeadError};
use crate::mqtt::link::MqttLink;
use crate::mqtt::messages::learning::{Ack, AckStatus};
use crate::mqtt::topics::Outgoing;
use crate::store::Store;
use crate::systemd::{watchdog_interval, Notifier, WatchdogGate};
use crate::vision::backbone::{set_threads, Backbone, BackboneOptions};
use crate::vision::decode::DecodeLimits;
use crate::vision::manifest::ModelManifest;
use learner::{restore_head, Learner, LearnerSettings, Outbound};
use pipeline::{LoadedHead, Pipeline, PipelineSettings};
use publish::Publisher;
use recent::{RecentFrame, RecentFrames};

/// Room left in an MQTT packet for the topic and fixed header when publishing an export archive.
const EXPORT_HEADROOM: usize = 1024;

/// Why the daemon could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Bad configuration, missing model: exit code 2, systemd should not hammer restarts.
    #[error("{0}")]
    Config(String),
    /// Anything else (camera gone at start, runtime failure): exit code 1.
    #[error("{0}")]
    Runtime(String),
}

/// Loads the head the daemon starts with. A missing file is normal (nothing taught yet); a
/// corrupt or foreign one is logged and ignored so the device still publishes ImageNet classes.
pub fn load_start_head(path: &std::path::Path, backbone: &Backbone) -> Option<LoadedHead> {
    match Head::load(path, Some(backbone.fingerprint())) {
        Ok(head) => {
            log::info!(
                "head {}: {} classes ({})",
                path.display(),
                head.classes().len(),
                head.classes().join(", ")
            );
            Some(LoadedHead::new(head, 1))
        }
        Err(HeadError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            log::info!(
                "no head at {} yet: publishing ImageNet classes until one is trained",
                path.display()
            );
            None
        }
        Err(err) => {
            log::error!("{err}; publishing ImageNet classes instead");
            None
        }
    }
}

/// Runs the daemon until SIGTERM / SIGINT or the end of a finite source.
pub async fn run(config: Config) -> Result<(), DaemonError> {
    let notifier = Notifier::from_env().map_err(|e| DaemonError::Runtime(e.to_string()))?;
    // Config errors name the key: the manifest's own message names the file.
    let manifest = ModelManifest::load(&config.model.manifest)
        .map_err(|e| DaemonError::Config(format!("model.manifest: {e}")))?;
    let threads = crate::cli::common::resolve_threads(config.model.threads);
    set_threads(threads);
    let backbone = Arc::new(
        Backbone::load(&manifest, &BackboneOptions { threads })
            .map_err(|e| DaemonError::Config(format!("model.manifest: {e}")))?,
    );
    // The active head comes from the store; a corrupt version falls back to the previous one.
    // A store without heads falls back to the configured head file (trained offline).
    let state_dir = config.state_dir();
    let mut store = Store::open_in(&state_dir).map_err(|e| DaemonError::Runtime(e.to_string()))?;
    let (stored_head, head_errors) = restore_head(&mut store, backbone.fingerprint())
        .map_err(|e| DaemonError::Runtime(e.to_string()))?;
    for error in &head_errors {
        log::error!("{error}");
    }
    let start_head = match stored_head {
        Some(head) => {
            log::info!(
                "head v{} from {}: {}",
                head.version,
                store.path().display(),
                head.head.classes().join(", ")
            );
            Some(head)
        }
        None if head_errors.is_empty() => load_start_head(&config.head_path(), &backbone),
        None => None,
    };
    let head = Arc::new(ArcSwapOption::from(start_head.map(Arc::new)));
    let source = crate::source::open(&config.source)
        .map_err(|e| DaemonError::Runtime(format!("cannot open source: {e}")))?;
    log::info!("source: {}", source.describe());

    let (link, mut incoming) =
        MqttLink::start(&config.mqtt).map_err(|e| DaemonError::Config(e.to_string()))?;
    let mut publisher = Publisher::new(&config, &manifest.name, link);
    publisher.announce_discovery(&head);
    if !head_errors.is_empty() {
        let ack = Ack::command(None, "restore_head", AckStatus::Rejected)
            .with_reason(head_errors.join("; "));
        publisher.send(Outbound {
            kind: Outgoing::Ack,
            payload: serde_json::to_vec(&ack).unwrap_or_default(),
        });
    }
    let recent = Arc::new(Mutex::new(RecentFrames::new(config.learning.recent_frames)));
    let (learner_tx, mut learner_out) = mpsc::channel::<Outbound>(64);
    let learner = Learner::start(
        store,
        backbone.clone(),
        head.clone(),
        recent.clone(),
        LearnerSettings {
            device: config.mqtt.device_id.clone(),
            learning: config.learning.clone(),
            state_dir: state_dir.clone(),
            resize: config.model.resize,
            max_publish_bytes: config.mqtt.max_packet_bytes.saturating_sub(EXPORT_HEADROOM),
        },
        learner_tx,
    )
    .map_err(|e| DaemonError::Runtime(format!("cannot start the learner thread: {e}")))?;

    let (events_tx, mut events) = mpsc::channel(16);
    let settings = PipelineSettings {
        resize: config.model.resize,
        limits: DecodeLimits::default(),
        skip_unchanged_below: config.pipeline.skip_unchanged_below,
        top_k: config.model.top_k,
        thumbnail_px: if config.learning.recent_frames > 0 {
            config.learning.thumbnail_px
        } else {
            0
        },
    };
    let pipeline = Pipeline::start(source, backbone.clone(), head.clone(), settings, events_tx)
        .map_err(|e| DaemonError::Runtime(format!("cannot start pipeline threads: {e}")))?;
    if let Err(err) = notifier.ready() {
        log::warn!("sd_notify READY: {err}");
    }
    log::info!(
        "running: device {} on {}",
        config.mqtt.device_id,
        config.mqtt.url
    );

    let watchdog = watchdog_interval().unwrap_or_else(|err| {
        log::warn!("ignoring watchdog settings: {err}");
        None
    });
    let mut gate = watchdog.map(|interval| WatchdogGate::new(interval, Instant::now()));
    let ping_period = gate
        .as_ref()
        .map(|g| g.ping_period())
        .unwrap_or(Duration::from_secs(3600));
    let mut watchdog_tick = tokio::time::interval(ping_period);
    let mut stats_tick =
        tokio::time::interval(Duration::from_secs(config.mqtt.stats_interval_s.max(1)));
    stats_tick.tick().await; // the first tick is immediate; stats after one full interval
    let mut progress_seen = 0u64;

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| DaemonError::Runtime(format!("cannot install SIGTERM handler: {e}")))?;
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => {
                    publisher.prediction(&event);
                    let mut ring = recent.lock().unwrap_or_else(|p| p.into_inner());
                    ring.push(RecentFrame {
                        frame_id: event.frame_id,
                        embedding: event.embedding,
                        thumbnail: event.thumbnail,
                    });
                }
                None => {
                    log::info!("pipeline finished (source ended)");
                    break;
                }
            },
            _ = stats_tick.tick() => {
                let status = publisher.stats(&pipeline.stats, &pipeline.health);
                if let Err(err) = notifier.status(&status) {
                    log::debug!("sd_notify STATUS: {err}");
                }
            }
            _ = watchdog_tick.tick() => {
                if let Some(gate) = gate.as_mut() {
                    // Frames skipped as unchanged are progress too: a static scene is healthy.
                    let progress = pipeline.stats.frames_out.load(std::sync::atomic::Ordering::Relaxed)
                        + pipeline.stats.frames_skipped.load(std::sync::atomic::Ordering::Relaxed);
                    let now = Instant::now();
                    if progress != progress_seen {
                        progress_seen = progress;
                        gate.frame_processed(now);
                    }
                    if gate.should_ping(now) {
                        if let Err(err) = notifier.watchdog() {
                            log::warn!("sd_notify WATCHDOG: {err}");
                        }
                    } else {
                        log::warn!("no frame processed for {:?}: withholding the watchdog ping", gate.stall_window());
                    }
                }
            }
            received = incoming.recv() => {
                if let Some(received) = received {
                    if let Err(busy) = learner.submit(received) {
                        publisher.send(busy);
                    }
                }
            }
            Some(message) = learner_out.recv() => publisher.send(message),
            _ = sigterm.recv() => {
                log::info!("SIGTERM: stopping");
                break;
            }
            _ = tokio::signal::ctrl_c() => {
                log::info!("SIGINT: stopping");
                break;
            }
        }
    }
    if let Err(err) = notifier.stopping() {
        log::debug!("sd_notify STOPPING: {err}");
    }
    pipeline.stop();
    // Let the learner finish what it holds and publish its last acks before disconnecting.
    let learner_done = tokio::task::spawn_blocking(move || learner.stop());
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_secs(10), learner_out.recv()).await
    {
        publisher.send(message);
    }
    let _ = learner_done.await;
    publisher.shutdown().await;
    Ok(())
}
