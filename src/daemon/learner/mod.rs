//! The learner: typed requests in (a validated sample, a parsed command), typed events out (acks,
//! training reports, head changes, export archives). It knows nothing about MQTT: topics, retain
//! flags, packet sizes and JSON live in `daemon::teach`.
//!
//! Two threads, both at nice 19 so the frame pipeline keeps its cores:
//! - ingest (`ingest.rs`): duplicate check -> quota -> decode + embed -> commit -> ack, plus the
//!   commands that only read (`labels`, `export`). An `accepted` ack is emitted only after the
//!   commit, so it always means the sample survives a crash.
//! - trainer (`trainer.rs`): retrains (the pure core `learn::retrain`), rollback, forget, and
//!   the automatic retrain, coalesced: samples never wait for a head to train, a retrain is
//!   never queued behind a running one, and a `retrain` that arrives while one runs joins it.
//!
//! Each thread has its own SQLite connection to the same store (WAL: readers never block).

mod engine_switch;
mod export;
mod heads;
mod ingest;
mod trainer;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::mpsc;

use super::liveness::{spawn_watched, Busy, DeathReporter};
use super::pipeline::HeadCell;
use crate::config::LearningConfig;
use crate::learn::identity::{Label, SampleId};
use crate::learn::ingest::SampleLimits;
use crate::mqtt::budget::BytePermit;
use crate::mqtt::messages::learning::{Ack, Command, TrainingReport};
use crate::store::Store;
use crate::vision::backbone::Backbone;
use crate::vision::embedder::Embedder;
use crate::vision::spec::ResizeMode;
pub use engine_switch::take_over_samples;
pub use heads::restore_head;

/// The command name of the acks that answer a group head message.
pub const ADOPT_HEAD: &str = "adopt_head";
/// Requests waiting for the ingest thread. Each may hold an image of up to `max_sample_bytes`.
const QUEUE: usize = 64;
/// The learner threads' nice value: when a board's cores are busy with frames, ingest and
/// training wait, the frame loop does not (throughput during a retrain: docs/performance.md).
const LEARNER_NICE: i32 = 19;

/// What a sample carries once the daemon validated it.
#[derive(Debug, Clone, PartialEq)]
pub enum SampleContent {
    /// Encoded image bytes to decode and embed.
    Image(Vec<u8>),
    /// A recent frame's embedding and thumbnail (the operator labeled frame N).
    Embedding {
        embedding: Vec<f32>,
        thumbnail: Option<Vec<u8>>,
    },
}

/// A sample whose payload, label and size were checked.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleRequest {
    /// What the ack reports: the content hash for raw images, the sender's id for JSON. Typed:
    /// the one id and label rule (src/learn/identity.rs) was checked where the message entered.
    pub id: SampleId,
    pub label: Label,
    /// `image`, `json` or `frame` (how it was taught).
    pub source: &'static str,
    pub content_hash: String,
    pub content: SampleContent,
}

/// One unit of work for the learner.
#[derive(Debug, Clone, PartialEq)]
pub enum LearnRequest {
    Sample(SampleRequest),
    Command {
        id: Option<String>,
        name: String,
        command: Command,
    },
    /// A message on the group's head topic (`learn::group_head`): checked and, if it passes
    /// the member's own gate, stored and served as a new head version.
    AdoptHead {
        payload: Vec<u8>,
    },
}

impl LearnRequest {
    /// The ack this request gets when it is refused before running (busy, stopping).
    pub fn refusal(&self) -> Ack {
        use crate::mqtt::messages::learning::AckStatus::Rejected;
        match self {
            LearnRequest::Sample(s) => {
                Ack::sample(Some(s.id.to_string()), Some(s.label.to_string()), Rejected)
            }
            LearnRequest::Command { id, name, .. } => Ack::command(id.clone(), name, Rejected),
            LearnRequest::AdoptHead { .. } => Ack::command(None, ADOPT_HEAD, Rejected),
        }
    }
}

/// What the learner tells the daemon.
#[derive(Debug, Clone)]
pub enum LearnEvent {
    /// The answer to one sample or command.
    Ack(Ack),
    /// A training finished (accepted or not).
    Report(TrainingReport),
    /// The head in the cell changed (new version, rollback, imprint, none after a forget): the
    /// daemon republishes what depends on the classes (Home Assistant discovery).
    HeadChanged { version: Option<u64> },
    /// A group leader's new active head, encoded for the group's head topic (retained).
    GroupHead { payload: Vec<u8> },
    /// `export` wrote an archive; with `publish`, the daemon publishes it in numbered parts
    /// before the ack (src/daemon/export_stream.rs), then deletes the file.
    Export {
        path: PathBuf,
        bytes: u64,
        publish: bool,
        ack: Ack,
    },
}

/// Everything the learner needs besides the store.
#[derive(Clone)]
pub struct LearnerSettings {
    pub device: String,
    pub learning: LearningConfig,
    pub state_dir: PathBuf,
    pub resize: ResizeMode,
}

impl LearnerSettings {
    pub fn limits(&self) -> SampleLimits {
        SampleLimits {
            max_bytes: self.learning.max_sample_bytes,
            max_pixels: self.learning.max_sample_pixels,
            max_per_label: self.learning.max_per_label,
            max_total: self.learning.max_total,
            max_labels: self.learning.max_labels,
        }
    }
}

/// Command ids handed to the trainer and not finished yet (a repeat is a duplicate too).
type InFlight = Arc<Mutex<HashSet<String>>>;

/// Sends events from a learner thread (blocking is fine there; fails only when stopping).
#[derive(Clone)]
struct Events(mpsc::Sender<LearnEvent>);

impl Events {
    fn send(&self, event: LearnEvent) {
        if self.0.blocking_send(event).is_err() {
            log::debug!("learner: daemon gone, event dropped");
        }
    }
}

/// A request with the share of the daemon's incoming byte budget its payload holds (released
/// when the request has been handled, so memory for waiting samples stays bounded).
type Queued = (LearnRequest, Option<BytePermit>);

/// The handle the daemon holds.
pub struct Learner {
    tx: Option<SyncSender<Queued>>,
    threads: Vec<JoinHandle<()>>,
    /// The job a learner thread is on (a sample, a command, a training), for the watchdog: one
    /// job far longer than any should means a wedged thread.
    pub busy: Busy,
}

impl Learner {
    /// Starts the ingest and trainer threads on `store` (the trainer opens its own connection).
    /// A panic in either is reported on `deaths` (the daemon then exits 1: without these
    /// threads every later sample would be answered `busy` forever).
    pub fn start(
        store: Store,
        backbone: Arc<Backbone>,
        head: Arc<HeadCell>,
        settings: LearnerSettings,
        events: mpsc::Sender<LearnEvent>,
        deaths: DeathReporter,
    ) -> std::io::Result<Learner> {
        let trainer_store = Store::open(store.path()).map_err(std::io::Error::other)?;
        let events = Events(events);
        let inflight = InFlight::default();
        let fingerprint = backbone.fingerprint().clone();
        let (trainer_tx, trainer_rx) = std::sync::mpsc::channel();
        let busy = Busy::default();
        let trainer = trainer::Trainer::new(
            trainer_store,
            backbone.clone(),
            head,
            settings.clone(),
            events.clone(),
            inflight.clone(),
            busy.clone(),
        );
        let trainer = spawn_watched("trainer", deaths.clone(), move || {
            lower_thread_priority(LEARNER_NICE);
            trainer.run(trainer_rx)
        })?;
        let limits = settings.limits();
        let embedder = Embedder::new(backbone, settings.resize, limits.decode_limits());
        let mut ingest = ingest::Ingest {
            fingerprint: fingerprint.to_string(),
            store,
            embedder,
            settings,
            limits,
            events,
            trainer: trainer_tx,
            inflight,
            busy: busy.clone(),
        };
        let (tx, rx) = sync_channel(QUEUE);
        let ingest = spawn_watched("learner", deaths, move || {
            lower_thread_priority(LEARNER_NICE);
            ingest.run(rx)
        })?;
        Ok(Learner {
            tx: Some(tx),
            threads: vec![ingest, trainer],
            busy,
        })
    }

    /// Queues a request (with its budget permit, held until it is handled). When the queue is
    /// full it is handed back at once, so the daemon can refuse it (`busy`) and the sender knows
    /// to retry.
    pub fn submit(
        &self,
        request: LearnRequest,
        permit: Option<BytePermit>,
    ) -> Result<(), Box<LearnRequest>> {
        let Some(tx) = &self.tx else {
            return Err(Box::new(request));
        };
        tx.try_send((request, permit)).map_err(|e| match e {
            TrySendError::Full((r, _)) | TrySendError::Disconnected((r, _)) => Box::new(r),
        })
    }

    /// Stops taking work and waits for both threads to finish what they hold (the ingest thread
    /// ends first and closes the trainer's queue).
    pub fn stop(mut self) {
        self.tx.take();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Lowers the calling thread's CPU priority (Linux: `setpriority` on the thread id), so that
/// ingest and training give way to the frame pipeline when both want a core.
fn lower_thread_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain syscalls on the calling thread; no memory is shared with the kernel.
        let result = unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, nice)
        };
        if result != 0 {
            // Warn: without it frames lose a third of their rate while a head trains (a
            // sandbox refusing setpriority, see systemd/glimpse.service).
            log::warn!(
                "learner: cannot lower priority to nice {nice}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}
