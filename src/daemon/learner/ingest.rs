//! The ingest thread: stores samples (duplicate check -> quota -> decode + embed -> commit ->
//! ack), answers the commands that only read (`labels`, `export`), refuses command ids already
//! executed, and hands head-changing commands to the trainer. It never trains, so a sample is
//! never stuck behind a head being fitted.

use std::sync::mpsc::{Receiver, Sender};

use super::trainer::TrainerMsg;
use super::{
    export, Events, InFlight, LearnEvent, LearnRequest, LearnerSettings, SampleContent,
    SampleRequest,
};
use crate::learn::ingest::{check_quota, decode_sample, Rejection, SampleLimits};
use crate::learn::thumbnail::jpeg_thumbnail;
use crate::mqtt::messages::learning::{Ack, AckStatus, Command};
use crate::store::{Inserted, NewSample, Store, StoreError};
use crate::vision::embedder::Embedder;

pub(super) struct Ingest {
    /// The backbone fingerprint (display form) stored with each sample.
    pub fingerprint: String,
    pub store: Store,
    pub embedder: Embedder,
    pub settings: LearnerSettings,
    pub limits: SampleLimits,
    pub events: Events,
    pub trainer: Sender<TrainerMsg>,
    pub inflight: InFlight,
    pub busy: crate::daemon::liveness::Busy,
}

impl Ingest {
    pub fn run(&mut self, rx: Receiver<super::Queued>) {
        // The permit is dropped (its bytes released) once the request is handled.
        while let Ok((request, _permit)) = rx.recv() {
            // The watchdog withholds its ping when one job runs far too long (a wedged thread).
            let _busy = self.busy.start();
            crate::fault::maybe_panic(crate::fault::Fault::LearnerPanic);
            if crate::fault::armed(crate::fault::Fault::LearnerStall) {
                loop {
                    std::thread::park();
                }
            }
            match request {
                LearnRequest::Sample(sample) => {
                    let label = sample.label.to_string();
                    let ack = self.sample(sample);
                    let accepted = ack.status == Some(AckStatus::Accepted);
                    self.events.send(LearnEvent::Ack(ack));
                    if accepted {
                        // After the ack: the sample is committed, training may take its time.
                        let _ = self.trainer.send(TrainerMsg::Accepted { label });
                    }
                }
                LearnRequest::Command { id, name, command } => self.command(id, name, command),
                LearnRequest::AdoptHead { payload } => {
                    // Only the trainer changes the head in use.
                    let _ = self.trainer.send(TrainerMsg::Adopt { payload });
                }
            }
        }
    }

    fn sample(&mut self, sample: SampleRequest) -> Ack {
        let skeleton = Ack::sample(
            Some(sample.id.to_string()),
            Some(sample.label.to_string()),
            AckStatus::Rejected,
        );
        match self.store_sample(sample) {
            Ok((status, count)) => Ack {
                count: Some(count),
                status: Some(status),
                ..skeleton
            },
            Err(rejection) => {
                log::info!("sample rejected: {rejection}");
                skeleton.with_reason(rejection.to_string())
            }
        }
    }

    /// Embeds and commits one sample; returns its status and the label's count.
    fn store_sample(&mut self, sample: SampleRequest) -> Result<(AckStatus, u64), Rejection> {
        let internal = |e: StoreError| Rejection::Internal(e.to_string());
        let counts = self.store.label_counts().map_err(internal)?;
        let count = counts.get(sample.label.as_str()).copied().unwrap_or(0);
        if self
            .store
            .contains(&sample.content_hash, &sample.label)
            .map_err(internal)?
        {
            return Ok((AckStatus::Duplicate, count));
        }
        check_quota(&counts, sample.label.as_str(), &self.limits)?;
        let (embedding, thumbnail) = match sample.content {
            SampleContent::Image(bytes) => {
                let image = decode_sample(&bytes, &self.limits)?;
                let (output, _) = self
                    .embedder
                    .embed_image(&image)
                    .map_err(|e| Rejection::BadImage(e.to_string()))?;
                let thumbnail = jpeg_thumbnail(&image, self.settings.learning.thumbnail_px);
                (output.embedding, thumbnail)
            }
            SampleContent::Embedding {
                embedding,
                thumbnail,
            } => (embedding, thumbnail),
        };
        let inserted = self
            .store
            .insert_sample(&NewSample {
                id: &sample.id,
                label: &sample.label,
                embedding: &embedding,
                source: sample.source,
                content_hash: &sample.content_hash,
                thumbnail: thumbnail.as_deref(),
                fingerprint: &self.fingerprint,
            })
            .map_err(internal)?;
        Ok(match inserted {
            Inserted::Accepted { count } => (AckStatus::Accepted, count),
            Inserted::Duplicate { count } => (AckStatus::Duplicate, count),
        })
    }

    fn command(&mut self, id: Option<String>, name: String, command: Command) {
        if let Some(id) = &id {
            match self.already_executed(id) {
                Ok(false) => {}
                Ok(true) => {
                    let ack = Ack::command(Some(id.clone()), &name, AckStatus::Duplicate)
                        .with_reason(format!("command id {id:?} was executed already"));
                    return self.events.send(LearnEvent::Ack(ack));
                }
                Err(e) => {
                    let ack = Ack::command(Some(id.clone()), &name, AckStatus::Rejected)
                        .with_reason(e.to_string());
                    return self.events.send(LearnEvent::Ack(ack));
                }
            }
        }
        let accepted = Ack::command(id.clone(), &name, AckStatus::Accepted);
        let rejected = |reason: String| {
            log::info!("command {name} rejected: {reason}");
            Ack::command(id.clone(), &name, AckStatus::Rejected).with_reason(reason)
        };
        // (event, whether the command ran: only then is its id remembered)
        let (event, ran) = match command {
            Command::Labels => match self.store.label_counts() {
                Ok(labels) => (
                    LearnEvent::Ack(Ack {
                        labels: Some(labels),
                        max_sample_bytes: Some(self.settings.learning.max_sample_bytes as u64),
                        ..accepted
                    }),
                    true,
                ),
                Err(e) => (LearnEvent::Ack(rejected(e.to_string())), false),
            },
            Command::Export { publish } => {
                let store = &self.store;
                let written = export::write_archive(&self.settings.state_dir, &mut |sink| {
                    store.each_thumbnail(sink)
                });
                match written {
                    Ok((path, bytes)) => (
                        LearnEvent::Export {
                            ack: Ack {
                                path: Some(path.display().to_string()),
                                bytes: Some(bytes),
                                ..accepted
                            },
                            path,
                            bytes,
                            publish,
                        },
                        true,
                    ),
                    Err(reason) => (LearnEvent::Ack(rejected(reason)), false),
                }
            }
            command @ (Command::Retrain { .. } | Command::Rollback | Command::Forget { .. }) => {
                if let Some(id) = &id {
                    self.inflight
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(id.clone());
                }
                let _ = self.trainer.send(TrainerMsg::Command { id, name, command });
                return;
            }
        };
        if let (Some(id), true) = (&id, ran) {
            if let Err(e) = self.store.record_command(id, &name) {
                log::warn!("cannot record command id {id:?}: {e}");
            }
        }
        self.events.send(event);
    }

    fn already_executed(&self, id: &str) -> Result<bool, StoreError> {
        let inflight = self
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id);
        Ok(inflight || self.store.command_done(id)?)
    }
}
