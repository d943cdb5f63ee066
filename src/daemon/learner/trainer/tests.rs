//! The trainer thread on a real SQLite store with synthetic embeddings (no backbone, no MQTT):
//! joining retrains, the new-label fast path, a forget finished after a crash, pruning.

use std::sync::mpsc::{channel, Sender};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::mpsc;

use super::*;
use crate::config::LearningConfig;
use crate::learn::cross_engine::FixedJudge;
use crate::store::NewSample;
use crate::vision::spec::ResizeMode;

const DIM: usize = 16;

fn fingerprint() -> Fingerprint {
    Fingerprint {
        engine: crate::vision::spec::DEFAULT_ENGINE.into(),
        model_sha256: "cd".repeat(32),
        embedding_tensor: "features".into(),
        dim: DIM,
    }
}

/// Stores `n` samples of `label` around a label-specific center.
fn teach(store: &mut Store, label: &str, n: usize, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let axis = label.bytes().map(usize::from).sum::<usize>() % DIM;
    for i in 0..n {
        let e: Vec<f32> = (0..DIM)
            .map(|d| if d == axis { 5.0 } else { 0.0 } + rng.gen_range(-1.0f32..1.0))
            .collect();
        let hash = format!("{label}-{seed}-{i}");
        store
            .insert_sample(&NewSample {
                id: &hash,
                label,
                embedding: &e,
                source: "image",
                content_hash: &hash,
                thumbnail: None,
                fingerprint: &fingerprint().to_string(),
            })
            .unwrap();
    }
}

struct Rig {
    dir: tempfile::TempDir,
    head: Arc<HeadCell>,
    events: mpsc::Receiver<LearnEvent>,
    events_tx: mpsc::Sender<LearnEvent>,
}

impl Rig {
    fn new() -> Rig {
        let (events_tx, events) = mpsc::channel(1024);
        Rig {
            dir: tempfile::tempdir().unwrap(),
            head: Arc::new(ArcSwapOption::empty()),
            events,
            events_tx,
        }
    }

    fn store(&self) -> Store {
        Store::open_in(self.dir.path()).unwrap()
    }

    fn trainer(&self, learning: LearningConfig) -> Trainer {
        self.trainer_for(learning, FixedJudge::refusing(fingerprint()))
    }

    /// A trainer whose backbone is `judge` (its fingerprint and agreement verdict).
    fn trainer_for(&self, learning: LearningConfig, judge: FixedJudge) -> Trainer {
        Trainer::new(
            self.store(),
            Arc::new(judge),
            self.head.clone(),
            LearnerSettings {
                device: "test".into(),
                learning,
                state_dir: self.dir.path().to_path_buf(),
                resize: ResizeMode::default(),
            },
            Events(self.events_tx.clone()),
            InFlight::default(),
            Busy::default(),
        )
    }

    /// Runs a trainer on its own thread; returns its queue and the join handle.
    fn spawn(&self, learning: LearningConfig) -> (Sender<TrainerMsg>, std::thread::JoinHandle<()>) {
        let trainer = self.trainer(learning);
        let (tx, rx) = channel();
        (tx, std::thread::spawn(move || trainer.run(rx)))
    }

    fn next_event(&mut self) -> LearnEvent {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(event) = self.events.try_recv() {
                return event;
            }
            assert!(Instant::now() < deadline, "no learner event within 60 s");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn next_ack(&mut self) -> Ack {
        loop {
            if let LearnEvent::Ack(ack) = self.next_event() {
                return ack;
            }
        }
    }

    fn drain(&mut self) -> Vec<LearnEvent> {
        let mut out = Vec::new();
        while let Ok(event) = self.events.try_recv() {
            out.push(event);
        }
        out
    }

    fn classes(&self) -> Vec<String> {
        self.head
            .load_full()
            .map(|h| h.head.classes().to_vec())
            .unwrap_or_default()
    }
}

fn manual() -> LearningConfig {
    LearningConfig {
        retrain_after: 0,
        ..LearningConfig::default()
    }
}

fn retrain_cmd(id: &str, force: bool) -> TrainerMsg {
    TrainerMsg::Command {
        id: Some(id.into()),
        name: "retrain".into(),
        command: Command::Retrain { force },
    }
}

#[test]
fn a_retrain_that_arrives_while_one_runs_joins_it() {
    let mut rig = Rig::new();
    let mut store = rig.store();
    teach(&mut store, "a", 30, 1);
    teach(&mut store, "b", 30, 2);
    // Both commands are queued before the trainer starts: the second waits while the first
    // trains, exactly as one sent during a running training would.
    let trainer = rig.trainer(manual());
    let (tx, rx) = channel();
    tx.send(retrain_cmd("r1", false)).unwrap();
    tx.send(retrain_cmd("r2", false)).unwrap();
    drop(tx);
    trainer.run(rx);
    let events = rig.drain();
    let reports = events
        .iter()
        .filter(|e| matches!(e, LearnEvent::Report(_)))
        .count();
    assert_eq!(reports, 1, "one training for two commands: {events:?}");
    let acks: Vec<&Ack> = events
        .iter()
        .filter_map(|e| match e {
            LearnEvent::Ack(a) => Some(a),
            _ => None,
        })
        .collect();
    assert_eq!(acks.len(), 2, "{acks:?}");
    assert_eq!(acks[0].id.as_deref(), Some("r1"));
    assert_eq!(acks[1].id.as_deref(), Some("r2"));
    assert_eq!(acks[0].head_version, Some(1));
    assert_eq!(
        acks[1].head_version,
        Some(1),
        "joined: the head it produced"
    );
    assert_eq!(acks[1].status, Some(AckStatus::Accepted));
    assert!(
        acks[1].reason.as_deref().unwrap().contains("joined"),
        "{:?}",
        acks[1]
    );
    assert!(!acks[0].reason.as_deref().unwrap().contains("joined"));
    // Both ids are executed now (a repeat would be a duplicate).
    assert!(store.command_done("r1").unwrap() && store.command_done("r2").unwrap());
}

#[test]
fn a_new_label_is_imprinted_then_trained_without_a_command() {
    let mut rig = Rig::new();
    let mut store = rig.store();
    teach(&mut store, "a", 20, 1);
    teach(&mut store, "b", 20, 2);
    let learning = LearningConfig {
        retrain_after: 10,
        retrain_quiet_ms: 1000,
        imprint_after: 3,
        ..LearningConfig::default()
    };
    let (tx, handle) = rig.spawn(learning);
    // 40 untrained samples at start: trained once things are quiet, no command needed.
    let report = loop {
        if let LearnEvent::Report(r) = rig.next_event() {
            break r;
        }
    };
    assert_eq!((report.trigger.as_str(), report.version), ("auto", Some(1)));
    assert_eq!(rig.classes(), ["a", "b"]);
    rig.drain();

    // A new label, one sample at a time: served as soon as it has 3 samples (imprinted).
    teach(&mut store, "c", 3, 3);
    for _ in 0..3 {
        tx.send(TrainerMsg::Accepted { label: "c".into() }).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !rig.classes().contains(&"c".to_string()) {
        assert!(Instant::now() < deadline, "c never served");
        std::thread::sleep(Duration::from_millis(2));
    }
    let served = rig.head.load_full().unwrap();
    assert!(
        served.provisional && served.version == 1,
        "imprinted, not stored"
    );
    // Then refined by a stored training when samples stop arriving.
    let report = loop {
        if let LearnEvent::Report(r) = rig.next_event() {
            break r;
        }
    };
    assert_eq!(report.trigger, "auto");
    assert!(report.accepted, "{:?}", report.gate);
    let served = rig.head.load_full().unwrap();
    assert!(!served.provisional && served.version == 2);
    assert_eq!(served.head.classes(), ["a", "b", "c"]);
    drop(tx);
    handle.join().unwrap();
}

#[test]
fn enough_new_samples_retrain_without_waiting_for_quiet() {
    let mut rig = Rig::new();
    let mut store = rig.store();
    teach(&mut store, "a", 10, 1);
    teach(&mut store, "b", 10, 2);
    store.set_trained_through(i64::MAX / 2).unwrap();
    let learning = LearningConfig {
        retrain_after: 5,
        retrain_quiet_ms: 0,
        ..LearningConfig::default()
    };
    let (tx, handle) = rig.spawn(learning);
    for _ in 0..4 {
        tx.send(TrainerMsg::Accepted { label: "a".into() }).unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(rig.drain().is_empty(), "4 of 5: no training yet");
    tx.send(TrainerMsg::Accepted { label: "a".into() }).unwrap();
    let report = loop {
        if let LearnEvent::Report(r) = rig.next_event() {
            break r;
        }
    };
    assert_eq!(report.trigger, "auto");
    drop(tx);
    handle.join().unwrap();
}

#[test]
fn a_stored_head_of_another_engine_is_restored_only_when_the_engines_agree() {
    let rig = Rig::new();
    let mut store = rig.store();
    for (label, seed) in [("a", 1), ("b", 2)] {
        teach(&mut store, label, 20, seed);
    }
    let (tx, rx) = channel();
    tx.send(retrain_cmd("r", false)).unwrap();
    drop(tx);
    rig.trainer(manual()).run(rx);
    let other = Fingerprint {
        engine: "onnxruntime/cpu/fp32".into(),
        ..fingerprint()
    };
    let agree = FixedJudge {
        fingerprint: other.clone(),
        verdict: Ok(1e-6),
    };
    let (restored, errors) = super::super::heads::restore_head(&mut store, &agree).unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    let restored = restored.expect("restored after the agreement check");
    assert_eq!(
        restored.head.fingerprint(),
        &other,
        "rebound to this engine"
    );
    let disagree = FixedJudge {
        fingerprint: other,
        verdict: Err("embeddings differ by 5.00e-3".into()),
    };
    let (restored, errors) = super::super::heads::restore_head(&mut store, &disagree).unwrap();
    assert!(restored.is_none());
    assert!(
        errors[0].contains("5.00e-3") && errors[0].contains("retrain it with this engine"),
        "{errors:?}"
    );
}

#[test]
fn a_group_head_of_a_disagreeing_engine_is_refused_with_the_reason() {
    let leader = Rig::new();
    let mut store = leader.store();
    for (label, seed) in [("a", 1), ("b", 2)] {
        teach(&mut store, label, 20, seed);
    }
    let (tx, rx) = channel();
    tx.send(retrain_cmd("r", false)).unwrap();
    drop(tx);
    leader.trainer(manual()).run(rx);
    // The leader's head was trained on tract; this member runs an engine that disagrees.
    let bytes = store.head(1).unwrap().unwrap().bytes;
    let payload = crate::learn::group_head::encode("leader", 7, &bytes);
    let learning = LearningConfig {
        group: Some("g".into()),
        group_leader: false,
        ..manual()
    };
    let judge = FixedJudge {
        fingerprint: Fingerprint {
            engine: "onnxruntime/tensorrt/fp16".into(),
            ..fingerprint()
        },
        verdict: Err("embeddings differ by 5.00e-3".into()),
    };
    let (tx, rx) = channel();
    tx.send(TrainerMsg::Adopt { payload }).unwrap();
    drop(tx);
    let mut member = Rig::new();
    member.trainer_for(learning, judge).run(rx);
    let ack = member.next_ack();
    assert_eq!(
        ack.command.as_deref(),
        Some(crate::daemon::learner::ADOPT_HEAD)
    );
    assert_eq!(ack.status, Some(AckStatus::Rejected), "{ack:?}");
    let reason = ack.reason.unwrap_or_default();
    for part in [
        "head v7 of leader",
        "5.00e-3",
        "retrain it with this engine",
    ] {
        assert!(reason.contains(part), "`{part}` missing from: {reason}");
    }
    assert_eq!(
        member.store().active_version().unwrap(),
        None,
        "nothing stored"
    );
}

#[test]
fn a_forget_interrupted_by_a_crash_is_finished_at_start() {
    let mut rig = Rig::new();
    let mut store = rig.store();
    for (label, seed) in [("a", 1), ("b", 2), ("c", 3)] {
        teach(&mut store, label, 20, seed);
    }
    let trainer = rig.trainer(manual());
    let (tx, rx) = channel();
    tx.send(retrain_cmd("r", false)).unwrap();
    drop(tx);
    trainer.run(rx);
    assert_eq!(rig.classes(), ["a", "b", "c"]);
    // The forget's transaction committed, then the process died before retraining.
    assert_eq!(store.forget_label("c", Some(("f1", "forget"))).unwrap(), 20);
    drop(store);
    // Restart: the head is restored from the store (it still knows c) ...
    let mut store = rig.store();
    let (restored, errors) = restore_head_for_test(&mut store);
    assert!(errors.is_empty(), "{errors:?}");
    rig.head.store(restored.map(Arc::new));
    assert_eq!(rig.classes(), ["a", "b", "c"]);
    // ... and the trainer finishes the owed retrain before anything else.
    let trainer = rig.trainer(manual());
    let (tx, rx) = channel::<TrainerMsg>();
    drop(tx);
    trainer.run(rx);
    assert_eq!(rig.classes(), ["a", "b"]);
    assert_eq!(store.pending_retrain().unwrap(), None);
    assert_eq!(store.active_version().unwrap(), Some(2));
    // A repeated forget with the same id is known; a new one finds nothing.
    assert!(store.command_done("f1").unwrap());
    rig.drain();
    let trainer = rig.trainer(manual());
    let (tx, rx) = channel();
    tx.send(TrainerMsg::Command {
        id: None,
        name: "forget".into(),
        command: Command::Forget { label: "c".into() },
    })
    .unwrap();
    drop(tx);
    trainer.run(rx);
    let ack = rig.next_ack();
    assert_eq!(ack.status, Some(AckStatus::Rejected));
}

#[test]
fn forgetting_down_to_one_label_leaves_no_head() {
    let mut rig = Rig::new();
    let mut store = rig.store();
    teach(&mut store, "a", 10, 1);
    teach(&mut store, "b", 10, 2);
    let trainer = rig.trainer(manual());
    let (tx, rx) = channel();
    tx.send(retrain_cmd("r", false)).unwrap();
    tx.send(TrainerMsg::Command {
        id: Some("f".into()),
        name: "forget".into(),
        command: Command::Forget { label: "b".into() },
    })
    .unwrap();
    drop(tx);
    trainer.run(rx);
    assert!(rig.head.load_full().is_none());
    assert_eq!(store.active_version().unwrap(), None);
    let events = rig.drain();
    assert!(events
        .iter()
        .any(|e| matches!(e, LearnEvent::HeadChanged { version: None })));
    let ack = events
        .iter()
        .rev()
        .find_map(|e| match e {
            LearnEvent::Ack(a) => Some(a.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!((ack.deleted, ack.head_version), (Some(10), None));
}

#[test]
fn head_versions_are_pruned_to_keep_heads() {
    let rig = Rig::new();
    let mut store = rig.store();
    teach(&mut store, "a", 10, 1);
    teach(&mut store, "b", 10, 2);
    let learning = LearningConfig {
        keep_heads: 2,
        ..manual()
    };
    let trainer = rig.trainer(learning);
    let (tx, rx) = channel();
    for i in 0..6 {
        tx.send(retrain_cmd(&format!("r{i}"), true)).unwrap();
        // A non-retrain message between them, so they do not join one another.
        tx.send(TrainerMsg::Command {
            id: None,
            name: "rollback".into(),
            command: Command::Rollback,
        })
        .unwrap();
    }
    drop(tx);
    trainer.run(rx);
    let versions = store.head_versions().unwrap();
    assert!(versions.len() <= 3, "{versions:?}");
    let files = std::fs::read_dir(store.heads_dir()).unwrap().count();
    assert!(files <= 6, "{files} head files");
}

fn restore_head_for_test(store: &mut Store) -> (Option<LoadedHead>, Vec<String>) {
    super::super::heads::restore_head(store, &FixedJudge::refusing(fingerprint())).unwrap()
}
