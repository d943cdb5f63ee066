//! The trainer thread: everything that changes the head in use. Retrains (the pure core
//! [`crate::learn::retrain`] on every stored sample), stores and serves accepted versions, prunes
//! old ones, rolls back, forgets labels, and finishes at start a retrain a crash interrupted.
//!
//! Coalescing, so training keeps up with teaching at field scale:
//! - automatic retraining when samples stop arriving for `retrain_quiet_ms`, or when enough
//!   arrived (`retrain_after`, or a tenth of the store when that is more: the cost of a retrain
//!   grows with the store, so the number of retrains during bulk teaching grows only with its
//!   logarithm);
//! - requests that arrive while a head trains wait in the channel; when it finishes, every
//!   `retrain` among them *joins* it (one ack, with the head it produced) instead of queueing a
//!   second training on the same samples;
//! - counting is by sample row id (`Store::trained_through`), never by wall clock.

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::heads::load_version;
use super::{Events, InFlight, LearnEvent, LearnerSettings};
use crate::daemon::liveness::Busy;
use crate::daemon::pipeline::{HeadCell, LoadedHead};
use crate::learn::cross_engine::EngineJudge;
use crate::learn::imprint::imprint;
use crate::learn::retrain::{retrain, Active, RetrainConfig, RetrainError, Sample};
use crate::learn::train::TrainConfig;
use crate::mqtt::messages::learning::{Ack, AckStatus, Command, TrainingReport};
use crate::mqtt::messages::now_unix_ms;
use crate::store::{NewHead, Store, StoreError, StoredSample};
use crate::vision::spec::Fingerprint;

/// Automatic retraining also waits for this fraction of the store to be new (see module docs).
const GROWTH_DIVISOR: u64 = 10;

/// What the ingest thread hands over.
#[derive(Debug)]
pub(super) enum TrainerMsg {
    /// A sample was committed (and acked).
    Accepted { label: String },
    /// `retrain`, `rollback` or `forget`.
    Command {
        id: Option<String>,
        name: String,
        command: Command,
    },
    /// A message from the group's head topic (see `adopt.rs`).
    Adopt { payload: Vec<u8> },
}

/// A finished training: the active version after it, the gate's verdict and its reason.
#[derive(Debug, Clone)]
struct Trained {
    active_version: Option<u64>,
    accepted: bool,
    reason: String,
}

pub(super) struct Trainer {
    store: Store,
    /// The backbone's fingerprint and agreement verdicts: stored, rolled-back and adopted heads
    /// of another engine go through the cross-engine rule (`learn::cross_engine`).
    backbone: Arc<dyn EngineJudge>,
    fingerprint: Fingerprint,
    fingerprint_text: String,
    head: Arc<HeadCell>,
    settings: LearnerSettings,
    events: Events,
    inflight: InFlight,
    /// Marks each job (a training, a command) for the watchdog's stall check.
    busy: Busy,
    /// Samples stored since the last training (by row id).
    pending: u64,
    /// Samples the last training saw (for the growth rule).
    trained_count: u64,
    /// When the newest sample arrived: the quiet timer runs from here.
    last_sample: Option<Instant>,
    /// Messages drained after a training that still have to run, in order.
    backlog: VecDeque<TrainerMsg>,
}

impl Trainer {
    pub fn new(
        store: Store,
        backbone: Arc<dyn EngineJudge>,
        head: Arc<HeadCell>,
        settings: LearnerSettings,
        events: Events,
        inflight: InFlight,
        busy: Busy,
    ) -> Trainer {
        let fingerprint = backbone.fingerprint().clone();
        Trainer {
            store,
            backbone,
            fingerprint_text: fingerprint.to_string(),
            fingerprint,
            head,
            settings,
            events,
            inflight,
            busy,
            pending: 0,
            trained_count: 0,
            last_sample: None,
            backlog: VecDeque::new(),
        }
    }

    pub fn run(mut self, rx: Receiver<TrainerMsg>) {
        self.resume();
        loop {
            let message = match self.backlog.pop_front() {
                Some(message) => message,
                None => match self.quiet_deadline() {
                    Some(deadline) => {
                        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                            Ok(message) => message,
                            Err(RecvTimeoutError::Timeout) => {
                                self.auto(&rx);
                                continue;
                            }
                            Err(RecvTimeoutError::Disconnected) => break,
                        }
                    }
                    None => match rx.recv() {
                        Ok(message) => message,
                        Err(_) => break,
                    },
                },
            };
            match message {
                TrainerMsg::Accepted { label } => {
                    self.pending += 1;
                    self.last_sample = Some(Instant::now());
                    self.maybe_imprint(&label);
                    if self.auto_enabled() && self.pending >= self.threshold() {
                        self.auto(&rx);
                    }
                }
                TrainerMsg::Adopt { payload } => {
                    let _busy = self.busy.start();
                    let ack = self.adopt(&payload);
                    self.events.send(LearnEvent::Ack(ack));
                }
                TrainerMsg::Command { id, name, command } => {
                    let _busy = self.busy.start();
                    self.command(id.clone(), &name, command, &rx);
                    if let Some(id) = id {
                        if let Err(e) = self.store.record_command(&id, &name) {
                            log::warn!("cannot record command id {id:?}: {e}");
                        }
                        self.inflight
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&id);
                    }
                }
            }
        }
    }

    /// At start: finish the retrain a `forget` owes (a crash came between its delete and its
    /// retrain), and count the samples stored since the last training.
    fn resume(&mut self) {
        match self.store.pending_retrain() {
            Ok(Some(why)) => {
                log::warn!("finishing the retrain interrupted by a restart ({why})");
                if let Err(e) = self.retrain_after_forget("restart") {
                    log::error!("cannot finish the interrupted retrain: {e}");
                }
            }
            Ok(None) => {}
            Err(e) => log::error!("cannot read the pending retrain: {e}"),
        }
        self.recount();
        if self.pending > 0 {
            // Samples the last run stored but never trained on: train once things are quiet.
            self.last_sample = Some(Instant::now());
        }
    }

    fn recount(&mut self) {
        let count = || -> Result<(u64, u64), StoreError> {
            let through = self.store.trained_through()?;
            Ok((
                self.store.samples_after_row(through)?,
                self.store.samples_after_row(0)?,
            ))
        };
        match count() {
            Ok((pending, total)) => {
                self.pending = pending;
                self.trained_count = total.saturating_sub(pending);
            }
            Err(e) => log::warn!("cannot count samples since the last training: {e}"),
        }
    }

    fn auto_enabled(&self) -> bool {
        self.settings.learning.enabled
            && self.settings.learning.retrain_after > 0
            && !self.follower()
    }

    /// A group member that is not the leader: it adopts the leader's heads instead of training
    /// on every group sample itself (docs/fleet.md "Who trains"); it trains only on command.
    fn follower(&self) -> bool {
        self.settings.learning.group.is_some() && !self.settings.learning.group_leader
    }

    /// A leader publishes each head version it activates to the group.
    fn publish_to_group(&self, version: u64, bytes: &[u8]) {
        let learning = &self.settings.learning;
        if learning.group.is_some() && learning.group_leader {
            let payload = crate::learn::group_head::encode(&self.settings.device, version, bytes);
            self.events.send(LearnEvent::GroupHead { payload });
        }
    }

    /// How many new samples start a retrain without waiting for quiet.
    fn threshold(&self) -> u64 {
        u64::from(self.settings.learning.retrain_after).max(self.trained_count / GROWTH_DIVISOR)
    }

    fn quiet_deadline(&self) -> Option<Instant> {
        let quiet = self.settings.learning.retrain_quiet_ms;
        if !self.auto_enabled() || self.pending == 0 || quiet == 0 {
            return None;
        }
        self.last_sample.map(|at| at + Duration::from_millis(quiet))
    }

    fn auto(&mut self, rx: &Receiver<TrainerMsg>) {
        let _busy = self.busy.start();
        let result = self.retrain("auto", false);
        if let Err(reason) = &result {
            log::info!("automatic retraining skipped: {reason}");
        }
        self.after_training(result, false, rx, None);
    }

    /// Drains what arrived while a head trained: `retrain`s at the front join the training that
    /// just finished (one ack each, with its result, after `own_ack`, the ack of the command
    /// that ran it); the rest waits in the backlog, in order. The queue is drained before
    /// `own_ack` goes out, so a retrain sent after that ack is a new request, never a joiner.
    fn after_training(
        &mut self,
        result: Result<Trained, String>,
        forced: bool,
        rx: &Receiver<TrainerMsg>,
        own_ack: Option<Ack>,
    ) {
        let arrived: Vec<TrainerMsg> = rx.try_iter().collect();
        if let Some(ack) = own_ack {
            self.events.send(LearnEvent::Ack(ack));
        }
        let mut joining = true;
        for message in arrived {
            match message {
                TrainerMsg::Accepted { .. } => self.last_sample = Some(Instant::now()),
                TrainerMsg::Command {
                    id,
                    name,
                    command: Command::Retrain { force },
                } if joining && (forced || !force) => {
                    let ack = retrain_ack(id.clone(), &name, &result, true);
                    self.events.send(LearnEvent::Ack(ack));
                    if let Some(id) = id {
                        let _ = self.store.record_command(&id, &name);
                        self.inflight
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&id);
                    }
                }
                other => {
                    joining = false;
                    self.backlog.push_back(other);
                }
            }
        }
        self.recount();
    }

    fn command(
        &mut self,
        id: Option<String>,
        name: &str,
        command: Command,
        rx: &Receiver<TrainerMsg>,
    ) {
        let accepted = Ack::command(id.clone(), name, AckStatus::Accepted);
        let rejected = |reason: String| {
            log::info!("command {name} rejected: {reason}");
            Ack::command(id.clone(), name, AckStatus::Rejected).with_reason(reason)
        };
        let ack = match command {
            Command::Retrain { force } => {
                let result = self.retrain("command", force);
                let ack = retrain_ack(id.clone(), name, &result, false);
                return self.after_training(result, force, rx, Some(ack));
            }
            Command::Rollback => match self.rollback() {
                Ok(version) => Ack {
                    head_version: Some(version),
                    ..accepted
                },
                Err(reason) => rejected(reason),
            },
            Command::Forget { label } => {
                let command = id.as_deref().map(|id| (id, name));
                match self.store.forget_label(&label, command) {
                    Ok(0) => rejected(format!("no samples labeled {label:?}")),
                    Ok(deleted) => {
                        log::info!("forgot {deleted} samples of {label:?}");
                        match self.retrain_after_forget("forget") {
                            Ok(version) => Ack {
                                label: Some(label),
                                deleted: Some(deleted),
                                head_version: version,
                                ..accepted
                            },
                            Err(reason) => rejected(reason),
                        }
                    }
                    Err(e) => rejected(e.to_string()),
                }
            }
            Command::Labels | Command::Export { .. } => {
                rejected(format!("{name} is not a training command"))
            }
        };
        self.events.send(LearnEvent::Ack(ack));
    }

    /// The forced retrain a forget owes; with fewer than 2 labels left no head can be trained,
    /// and the old one would keep predicting the forgotten label, so none stays active. Clears
    /// the pending mark once done. Returns the active version.
    fn retrain_after_forget(&mut self, trigger: &str) -> Result<Option<u64>, String> {
        let version = match self.retrain(trigger, true) {
            Ok(trained) => trained.active_version,
            Err(reason) => {
                log::info!("after forget: {reason}; no head active");
                self.store.deactivate_heads().map_err(|e| e.to_string())?;
                self.head.store(None);
                self.events.send(LearnEvent::HeadChanged { version: None });
                None
            }
        };
        self.store
            .clear_pending_retrain()
            .map_err(|e| e.to_string())?;
        Ok(version)
    }

    /// Trains on every stored sample, gates, stores + serves when accepted, reports.
    fn retrain(&mut self, trigger: &str, force: bool) -> Result<Trained, String> {
        let started = Instant::now();
        let stored = self
            .store
            .samples(&self.fingerprint_text)
            .map_err(|e| e.to_string())?;
        let through = stored.iter().map(|s| s.row).max().unwrap_or(0);
        let samples: Vec<Sample> = stored.iter().map(as_sample).collect();
        let learning = &self.settings.learning;
        let cfg = RetrainConfig {
            train: TrainConfig {
                validation_split: learning.validation_split,
                seed: learning.seed,
                ..TrainConfig::default()
            },
            gate_tolerance: learning.gate_tolerance,
            force,
            warm_start: true,
            parallel: learning.train_threads > 1,
        };
        let old = self.head.load_full();
        let active = Active {
            gate_head: old.as_deref().map(LoadedHead::gate_head),
            // An imprinted head's new columns are a poor start for L-BFGS (measured: the fit
            // hits its iteration cap); its gate twin is the stored training without them.
            head: old.as_deref().map(|loaded| {
                if loaded.provisional {
                    loaded.gate_head()
                } else {
                    &loaded.head
                }
            }),
        };
        let outcome = match retrain(&samples, active, &self.fingerprint, &cfg) {
            Ok(outcome) => outcome,
            Err(e @ RetrainError::TooFewLabels(_)) => {
                // Nothing to learn from these samples yet: they do not count again.
                let _ = self.store.set_trained_through(through);
                return Err(e.to_string());
            }
            Err(e) => return Err(e.to_string()),
        };
        let mut version = None;
        if let Some(deployed) = outcome.deployed {
            let report_json = serde_json::to_string(deployed.head.report()).unwrap_or_default();
            let gate_bytes = deployed.gate.as_ref().map(|g| g.to_bytes());
            let head_bytes = deployed.head.to_bytes();
            let v = self
                .store
                .insert_head(
                    &NewHead {
                        bytes: &head_bytes,
                        gate_bytes: gate_bytes.as_deref(),
                        report_json: &report_json,
                    },
                    true,
                )
                .map_err(|e| e.to_string())?;
            log::info!(
                "head v{v} active: {} classes, {} samples ({})",
                outcome.classes.len(),
                samples.len(),
                outcome.decision.reason
            );
            self.head.store(Some(Arc::new(LoadedHead {
                head: deployed.head,
                version: v,
                gate: deployed.gate,
                provisional: false,
            })));
            self.events
                .send(LearnEvent::HeadChanged { version: Some(v) });
            self.publish_to_group(v, &head_bytes);
            version = Some(v);
            match self.store.prune_heads(learning.keep_heads) {
                Ok(gone) if !gone.is_empty() => log::info!("pruned head versions {gone:?}"),
                Ok(_) => {}
                Err(e) => log::warn!("cannot prune old head versions: {e}"),
            }
        } else {
            log::warn!("new head rejected by the gate: {}", outcome.decision.reason);
            self.drop_provisional();
        }
        if let Err(e) = self.store.set_trained_through(through) {
            log::warn!("cannot record the trained samples: {e}");
        }
        let active_version = self.head.load_full().as_deref().map(|h| h.version);
        let report = &outcome.candidate_report;
        self.events.send(LearnEvent::Report(TrainingReport {
            device: self.settings.device.clone(),
            trigger: trigger.to_string(),
            version,
            active_version,
            accepted: outcome.decision.accepted,
            forced: force,
            gate: outcome.decision.clone(),
            samples_per_class: outcome
                .classes
                .iter()
                .cloned()
                .zip(report.samples_per_class.iter().copied())
                .collect(),
            classes: outcome.classes.clone(),
            train_count: report.train_count,
            val_count: report.val_count,
            deployed_train_count: outcome.deployed_train_count,
            accuracy: report.validation.as_ref().map(|v| v.accuracy),
            validation: report.validation.clone(),
            train_accuracy: report.train_accuracy,
            duration_ms: started.elapsed().as_millis() as u64,
            finished_at_ms: now_unix_ms(),
        }));
        Ok(Trained {
            active_version,
            accepted: outcome.decision.accepted,
            reason: outcome.decision.reason,
        })
    }

    /// The fast path for a label the head in use does not know: once it has `imprint_after`
    /// samples, imprint it (milliseconds) and serve that until a training refines it.
    fn maybe_imprint(&mut self, label: &str) {
        let after = self.settings.learning.imprint_after;
        let Some(current) = self.head.load_full() else {
            return; // no head yet: the first training makes one
        };
        if after == 0 || self.follower() || current.head.classes().iter().any(|c| c == label) {
            return;
        }
        let embeddings = match self.store.embeddings_of(label, &self.fingerprint_text) {
            Ok(e) if (e.len() as u64) >= after => e,
            Ok(_) => return,
            Err(e) => {
                log::warn!("imprint {label:?}: {e}");
                return;
            }
        };
        let refs: Vec<&[f32]> = embeddings.iter().map(Vec::as_slice).collect();
        match imprint(&current.head, label, &refs) {
            Ok(head) => {
                log::info!(
                    "imprinted {label:?} from {} samples into head v{}: served until a training refines it",
                    refs.len(),
                    current.version
                );
                self.head.store(Some(Arc::new(LoadedHead {
                    head,
                    version: current.version,
                    gate: Some(current.gate_head().clone()),
                    provisional: true,
                })));
                self.events.send(LearnEvent::HeadChanged {
                    version: Some(current.version),
                });
            }
            Err(e) => log::info!("cannot imprint {label:?}: {e}"),
        }
    }

    /// After a rejected training: an imprinted head gives way to the stored active version.
    fn drop_provisional(&mut self) {
        let Some(current) = self.head.load_full() else {
            return;
        };
        if !current.provisional {
            return;
        }
        match load_version(&self.store, current.version, &*self.backbone) {
            Ok(Ok(stored)) => {
                self.head.store(Some(Arc::new(stored)));
                self.events.send(LearnEvent::HeadChanged {
                    version: Some(current.version),
                });
                log::info!(
                    "imprinted classes withdrawn: back to head v{}",
                    current.version
                );
            }
            Ok(Err(e)) => log::error!("cannot withdraw the imprinted head: {e}"),
            Err(e) => log::error!("cannot withdraw the imprinted head: {e}"),
        }
    }

    /// Activates the newest usable version older than the active one.
    fn rollback(&mut self) -> Result<u64, String> {
        let err = |e: StoreError| e.to_string();
        let active = self
            .store
            .active_version()
            .map_err(err)?
            .ok_or("no active head to roll back from")?;
        let mut candidate = self.store.previous_version(active).map_err(err)?;
        while let Some(version) = candidate {
            match load_version(&self.store, version, &*self.backbone).map_err(err)? {
                Ok(loaded) => {
                    self.store.set_active(version).map_err(err)?;
                    self.publish_to_group(version, &loaded.head.to_bytes());
                    self.head.store(Some(Arc::new(loaded)));
                    self.events.send(LearnEvent::HeadChanged {
                        version: Some(version),
                    });
                    log::info!("rolled back from head v{active} to v{version}");
                    return Ok(version);
                }
                Err(e) => log::error!("rollback: {e}"),
            }
            candidate = self.store.previous_version(version).map_err(err)?;
        }
        Err(format!("no usable head version older than v{active}"))
    }
}

/// The ack of a `retrain` (`joined`: it arrived while that training ran).
fn retrain_ack(
    id: Option<String>,
    name: &str,
    result: &Result<Trained, String>,
    joined: bool,
) -> Ack {
    match result {
        Ok(trained) => Ack {
            head_version: trained.active_version,
            reason: Some(if joined {
                format!("joined the retrain that was running: {}", trained.reason)
            } else {
                trained.reason.clone()
            }),
            ..Ack::command(
                id,
                name,
                if trained.accepted {
                    AckStatus::Accepted
                } else {
                    AckStatus::Rejected
                },
            )
        },
        Err(reason) => Ack::command(id, name, AckStatus::Rejected).with_reason(if joined {
            format!("joined the retrain that was running: {reason}")
        } else {
            reason.clone()
        }),
    }
}

mod adopt;
#[cfg(test)]
mod tests;

/// A stored sample as the retrain and the gates read it (borrowed, no copy of the embedding).
pub(super) fn as_sample(stored: &StoredSample) -> Sample<'_> {
    Sample {
        label: &stored.label,
        content_hash: &stored.content_hash,
        embedding: &stored.embedding,
    }
}
