//! `glimpse run`: the long-running process. Loads the backbone and the head, opens the source,
//! starts the frame pipeline (threads) and the MQTT link (tokio), then publishes predictions
//! through the publish policy, stats every few seconds, and keeps systemd informed (READY,
//! STATUS, WATCHDOG only while frames flow, STOPPING). SIGTERM or SIGINT: `stopped` on the
//! availability topic and exit 0.

pub mod change; // skip frames that barely changed (grey-thumbnail difference)
pub mod export_stream; // an export archive -> numbered parts on `export`, then its ack
pub mod intake; // refusals before the learner (retained, too large, busy) and the byte budget
pub mod learner; // typed teach requests -> store, acks, retraining, hot swap (ingest + trainer threads)
pub mod liveness; // watched threads (a panic ends the daemon with exit 1), busy-job stall checks
pub mod meter; // rolling latency windows and rates for the stats topic
pub mod pipeline; // capture -> decode -> backbone -> head threads with newest-wins hand-offs
pub mod preflight; // start-up checks shared with `glimpse check-config`
pub mod publish; // prediction events -> MQTT messages through the publish policy
pub mod recent; // the ring of recent frames (embedding + thumbnail) an operator can label
pub mod slot; // the newest-wins single-slot hand-off between pipeline threads
pub mod teach; // MQTT <-> learner: received messages to requests, learner events to messages

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::learn::head::HeadError;
use crate::mqtt::link::MqttLink;
use crate::mqtt::messages::learning::{Ack, AckStatus};
use crate::store::Store;
use crate::systemd::{watchdog_interval, Notifier, WatchdogGate};
use crate::vision::backbone::Backbone;
use crate::vision::decode::DecodeLimits;
use intake::Intake;
use learner::{restore_head, take_over_samples, LearnEvent, Learner, LearnerSettings};
use pipeline::{LoadedHead, Pipeline, PipelineSettings};
use publish::Publisher;
use recent::{RecentFrame, RecentFrames};
use teach::Outbound;

/// Longest one learner job (a sample, a command, a retrain) may take before the watchdog ping is
/// withheld: training a few thousand samples takes seconds, exporting 50,000 thumbnails well
/// under a minute, so this is a wedged thread, not a slow one.
const LEARNER_STALL: Duration = Duration::from_secs(300);

/// Bytes of sample payloads that may wait for the learner (see `intake`); at least one message
/// of `mqtt.max_packet_bytes` always fits an idle device.
pub const INTAKE_BUDGET_BYTES: usize = 32 << 20;

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
    match crate::learn::cross_engine::load_head_for(path, backbone) {
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

/// Opens the sample store, checked and, when damaged, rebuilt (one line in the log says so). A
/// schema newer than this build is a configuration problem (exit 2: restarting cannot fix a
/// downgrade); anything else that stops the store from opening is exit 1.
fn open_store(state_dir: &std::path::Path) -> Result<Store, DaemonError> {
    match crate::store::recovery::open_checked(state_dir) {
        Ok((store, None)) => Ok(store),
        Ok((store, Some(recovery))) => {
            log::error!("{}", recovery.summary());
            Ok(store)
        }
        Err(err @ crate::store::StoreError::TooNew { .. }) => {
            Err(DaemonError::Config(err.to_string()))
        }
        Err(err) => Err(DaemonError::Runtime(err.to_string())),
    }
}

/// Why the pipeline's event channel closed: `None` for a finite replay that ended (exit 0), else
/// the failure (a source that failed for good, or a pipeline thread that ended).
fn pipeline_end(pipeline: &Pipeline) -> Option<String> {
    let failed = pipeline
        .source_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if let Some(reason) = failed {
        return Some(reason);
    }
    if pipeline
        .source_ended
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        return None;
    }
    Some("the inference thread ended".to_string())
}

/// Runs the daemon until SIGTERM / SIGINT or the end of a finite source.
pub async fn run(config: Config) -> Result<(), DaemonError> {
    liveness::log_panics_in_one_line();
    // First, so that a SIGTERM while the model loads or the link connects (`online` may already
    // be out) is a clean stop once the loop runs, not death by the default action.
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| DaemonError::Runtime(format!("cannot install SIGTERM handler: {e}")))?;
    let notifier = Notifier::from_env().map_err(|e| DaemonError::Runtime(e.to_string()))?;
    let preflight::Checked { manifest, backbone } = preflight::preflight(&config)?;
    // The active head comes from the store; a corrupt version falls back to the previous one.
    // A store without heads falls back to the configured head file (trained offline).
    let state_dir = config.state_dir();
    let mut store = open_store(&state_dir)?;
    // After an engine switch: samples of an agreeing engine become this backbone's.
    let held_samples = take_over_samples(&mut store, &*backbone)
        .map_err(|e| DaemonError::Runtime(e.to_string()))?;
    let (stored_head, head_errors) =
        restore_head(&mut store, &*backbone).map_err(|e| DaemonError::Runtime(e.to_string()))?;
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
    // Home Assistant discovery goes out on every (re)connection (a broker without persistence
    // forgets retained configs) and on every head change (the label sensor's `options`).
    let mut connections = link.connections();
    let mut publisher = Publisher::new(&config, &manifest.name, link);
    publisher.set_backbone(
        backbone.fingerprint().engine.clone(),
        backbone.provider().to_string(),
    );
    publisher.set_samples_other_engine(held_samples);
    if !head_errors.is_empty() {
        let ack = Ack::command(None, "restore_head", AckStatus::Rejected)
            .with_reason(head_errors.join("; "));
        publisher.send(Outbound::ack(&ack));
    }
    let recent = Mutex::new(RecentFrames::new(config.learning.recent_frames));
    let learner_settings = LearnerSettings {
        device: config.mqtt.device_id.clone(),
        learning: config.learning.clone(),
        state_dir: state_dir.clone(),
        resize: config.model.resize,
    };
    let limits = learner_settings.limits();
    let (learner_tx, mut learner_out) = mpsc::channel::<LearnEvent>(64);
    let (deaths_tx, mut deaths) = mpsc::unbounded_channel::<liveness::Death>();
    let learner = Learner::start(
        store,
        backbone.clone(),
        head.clone(),
        learner_settings,
        learner_tx,
        deaths_tx.clone(),
    )
    .map_err(|e| DaemonError::Runtime(format!("cannot start the learner threads: {e}")))?;

    // The leader version of the group head this member serves (`watch --group` flags laggards).
    let mut group_version: Option<u64> = None;
    let mut intake = Intake::new(INTAKE_BUDGET_BYTES, config.mqtt.max_packet_bytes);

    let (events_tx, mut events) = mpsc::channel(16);
    let settings = PipelineSettings {
        resize: config.model.resize,
        limits: DecodeLimits::default(),
        skip_unchanged_below: config.pipeline.skip_unchanged_below,
        top_k: config.model.top_k,
        // Thumbnails feed the labelling ring and `frame/thumbnail`; neither on: none made.
        thumbnail_px: if config.learning.recent_frames > 0 || config.mqtt.thumbnail_interval_ms > 0
        {
            config.learning.thumbnail_px
        } else {
            0
        },
    };
    let pipeline = Pipeline::start(
        source,
        backbone.clone(),
        head.clone(),
        settings,
        events_tx,
        deaths_tx.clone(),
    )
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
    // A test that wedges the learner on purpose need not wait five minutes for the verdict.
    let learner_stall = if crate::fault::armed(crate::fault::Fault::LearnerStall) {
        Duration::from_secs(2)
    } else {
        LEARNER_STALL
    };
    let link_stall = if crate::fault::armed(crate::fault::Fault::MqttPollHang) {
        Duration::from_secs(2)
    } else {
        MqttLink::stall_limit(&config.mqtt)
    };
    // Set when a part died: the loop ends and the daemon exits 1 with this one-line reason.
    let mut failure: Option<String> = None;

    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(event) => {
                    publisher.prediction(&event);
                    publisher.thumbnail(event.frame_id, event.thumbnail.as_deref());
                    let mut ring = recent.lock().unwrap_or_else(|p| p.into_inner());
                    ring.push(RecentFrame {
                        frame_id: event.frame_id,
                        embedding: event.embedding,
                        thumbnail: event.thumbnail,
                    });
                }
                None => {
                    // A dying pipeline thread closes the channel just before it reports.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    failure = match deaths.try_recv() {
                        Ok(death) => Some(format!("{} thread {}", death.part, death.reason)),
                        Err(_) => pipeline_end(&pipeline),
                    };
                    if failure.is_none() {
                        log::info!("pipeline finished (source ended)");
                    }
                    break;
                }
            },
            Some(death) = deaths.recv() => {
                failure = Some(format!("{} thread {}", death.part, death.reason));
                break;
            }
            _ = stats_tick.tick() => {
                let status = publisher.stats(&pipeline.stats, &pipeline.health, intake.counters());
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
                    if !gate.should_ping(now) {
                        log::warn!("no frame processed for {:?}: withholding the watchdog ping", gate.stall_window());
                    } else if learner.busy.stalled(now, learner_stall) {
                        log::warn!("the learner has been on one job for over {learner_stall:?}: withholding the watchdog ping");
                    } else if publisher.link().poll_silent_for(now) > link_stall {
                        log::warn!("the MQTT link has not polled for over {link_stall:?}: withholding the watchdog ping");
                    } else if let Err(err) = notifier.watchdog() {
                        log::warn!("sd_notify WATCHDOG: {err}");
                    }
                }
            }
            received = incoming.recv() => match received {
                Some(received) => {
                    match intake.admit(received) {
                        Ok(mut admitted) => {
                            // The budget share travels with the request until it is handled.
                            let permit = admitted.permit.take();
                            match teach::request(admitted, &config.learning, &limits, &recent) {
                                Ok(request) => {
                                    if let Err(request) = learner.submit(request, permit) {
                                        intake.learner_busy();
                                        publisher.send(Outbound::ack(&teach::busy(&request)));
                                    }
                                }
                                Err(refused) => publisher.send(Outbound::ack(&refused)),
                            }
                        }
                        Err(refused) => publisher.send(refused),
                    }
                }
                None => {
                    // The poll task owns the sender: it ended, and no sample can arrive again.
                    failure = Some("the MQTT link task ended".to_string());
                    break;
                }
            },
            Some(event) = learner_out.recv() => {
                if let Some(version) = teach::served_group_version(&event) {
                    group_version = Some(version);
                    announce_member(&publisher, group_version);
                }
                let effects = teach::effects(event);
                for message in effects.messages {
                    publisher.send(message);
                }
                if let Some(job) = effects.export {
                    // Parts wait for room in the outbox: on a thread of their own, so this loop
                    // keeps serving predictions and acks meanwhile.
                    let outbox = publisher.outbox();
                    tokio::task::spawn_blocking(move || export_stream::publish(job, &outbox));
                }
                if effects.head_changed {
                    publisher.announce_discovery(&head);
                }
                if let (Some(payload), Some(topic)) = (effects.group_head, publisher.link().topics().group_head()) {
                    // Retained: a member that connects later adopts it at once (catch-up).
                    if let Err(e) = publisher.link().publish(topic, payload, true) {
                        log::warn!("cannot publish the group head: {e}");
                    }
                }
            }
            Ok(()) = connections.changed() => {
                publisher.announce_discovery(&head);
                announce_member(&publisher, group_version);
            }
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
    // The link stops waiting to hand over messages nobody will read.
    drop(incoming);
    if let Err(err) = notifier.stopping() {
        log::debug!("sd_notify STOPPING: {err}");
    }
    if let Some(reason) = failure {
        // No clean goodbye: the broker publishes the `offline` will, systemd restarts us. The
        // source is still stopped, so an `exec:` child does not outlive the process.
        pipeline.stop();
        return Err(DaemonError::Runtime(format!(
            "{reason}: exiting so that systemd restarts the daemon"
        )));
    }
    pipeline.stop();
    // Let the learner finish what it holds and publish its last acks before disconnecting.
    let learner_done = tokio::task::spawn_blocking(move || learner.stop());
    while let Ok(Some(event)) =
        tokio::time::timeout(Duration::from_secs(10), learner_out.recv()).await
    {
        let effects = teach::effects(event);
        for message in effects.messages {
            publisher.send(message);
        }
        if let Some(job) = effects.export {
            // Stopping: no time to stream an archive; it stays on the device.
            let mut ack = job.ack;
            ack.published = Some(false);
            ack.reason = Some(format!(
                "the device is stopping; the archive stays at {}",
                job.path.display()
            ));
            publisher.send(Outbound::ack(&ack));
        }
    }
    let _ = learner_done.await;
    publisher.shutdown().await;
    Ok(())
}

/// Retained `{p}/group/{g}/members/{d}`: this device is a member, and serves the group head of
/// leader version `group_version` (docs/fleet.md). Nothing outside a group.
fn announce_member(publisher: &Publisher, group_version: Option<u64>) {
    let topics = publisher.link().topics();
    if let Some(topic) = topics.group_member() {
        let payload =
            serde_json::json!({ "device": topics.device(), "group_version": group_version });
        if let Err(e) = publisher.link().publish(topic, payload.to_string(), true) {
            log::warn!("cannot announce group membership: {e}");
        }
    }
}
