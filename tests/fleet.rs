//! Fleet learning end to end (docs/fleet.md): real Mosquitto brokers (one, or two bridged), real
//! `glimpse run` daemons with `dir:` sources in one group, taught once with `glimpse send
//! --group`. The leader trains and publishes its head retained on the group topic; members adopt
//! it; late members catch up from the retained head; a foreign backbone and a corrupt message
//! are refused; a crash while a head is being stored leaves the previous head (none, or the old
//! one), complete, and the next start adopts the new one.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::daemon::{Daemon, DaemonConfig, GLIMPSE};
use common::{Mosquitto, Msg, Subscriber};
use serde_json::Value;
use sha2::{Digest, Sha256};

const GROUP: &str = "line-3";
/// Per class: photos taught, then photos held back for predictions.
const TAUGHT: usize = 20;
const HELD: usize = 6;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Sorted images of one class of the small rps set.
fn class_files(class: &str) -> Vec<PathBuf> {
    let dir = repo().join("../shared/datasets/rps").join(class);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("test data {} is missing: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    files.sort();
    files
}

/// A running group member, killed on drop.
struct Member {
    name: String,
    daemon: Daemon,
}

struct Setup<'a> {
    root: &'a Path,
    broker: &'a Mosquitto,
    manifest: &'a str,
    leader: bool,
    fault: Option<&'a str>,
}

impl Member {
    fn start(name: &str, source: &Path, looping: bool, setup: &Setup) -> Member {
        let config = DaemonConfig::new(setup.root, setup.broker, name)
            .state_dir(&setup.root.join(format!("state-{name}")))
            .model(setup.manifest)
            .source_dir(source)
            .set("source.replay_fps", if looping { 1 } else { 3 })
            .set("source.replay_loop", looping)
            .set("learning.group", GROUP)
            .set("learning.group_leader", setup.leader)
            .set("learning.retrain_after", 1000)
            .set("learning.retrain_quiet_ms", 3000);
        let config = match setup.fault {
            Some(fault) => config.env("GLIMPSE_FAULT", fault),
            None => config,
        };
        Member {
            name: name.to_string(),
            daemon: Daemon::start(config),
        }
    }

    /// Starts the (stopped) member again, with the fault injected or not.
    fn spawn(&mut self, fault: Option<&str>) {
        let config = self.daemon.config().clone();
        self.daemon.restart(match fault {
            Some(fault) => config.env("GLIMPSE_FAULT", fault),
            None => config.env_remove("GLIMPSE_FAULT"),
        });
    }

    fn log(&self) -> String {
        self.daemon.log()
    }

    fn topic(&self, kind: &str) -> String {
        format!("glimpse/{}/{kind}", self.name)
    }

    fn stop(&mut self) {
        self.daemon.stop();
    }

    fn wait_exit(&mut self, timeout: Duration) {
        self.daemon.wait_exit(timeout);
    }

    /// The next `adopt_head` ack this member publishes.
    fn adopt_ack(&self, sub: &Subscriber) -> Value {
        let topic = self.topic("ack");
        let msg = sub
            .wait_for(Duration::from_secs(120), |m| {
                m.topic == topic && json_of(m)["command"] == "adopt_head"
            })
            .unwrap_or_else(|| panic!("{} sent no adopt_head ack:\n{}", self.name, self.log()));
        json_of(&msg)
    }

    /// Row count of samples, and the active head's version, report and file bytes.
    fn store(&self) -> (usize, Option<(u64, Value, Vec<u8>)>) {
        let state = self.daemon.config().state();
        let conn = rusqlite::Connection::open(state.join("glimpse.db")).unwrap();
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        let samples: i64 = conn
            .query_row("SELECT count(*) FROM samples", [], |r| r.get(0))
            .unwrap();
        let active = conn
            .query_row(
                "SELECT version, report, file FROM heads WHERE active = 1",
                [],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)? as u64,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                    ))
                },
            )
            .ok()
            .map(|(version, report, file)| {
                let bytes = std::fs::read(state.join("heads").join(file)).unwrap();
                (version, serde_json::from_str(&report).unwrap(), bytes)
            });
        (samples as usize, active)
    }
}

fn json_of(msg: &Msg) -> Value {
    serde_json::from_slice(&msg.payload).unwrap_or(Value::Null)
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Copies the taught and held-back photos: `teach/{class}/...` and a replay folder of the
/// held-back ones named `NNN_{class}` (frame N is file N). Returns the replay's labels in order.
fn prepare(root: &Path) -> (PathBuf, PathBuf, Vec<String>) {
    let teach = root.join("teach");
    let held = root.join("held");
    std::fs::create_dir_all(&held).unwrap();
    let mut labels = Vec::new();
    for class in ["paper", "rock", "scissors"] {
        let files = class_files(class);
        std::fs::create_dir_all(teach.join(class)).unwrap();
        for f in &files[..TAUGHT] {
            std::fs::copy(f, teach.join(class).join(f.file_name().unwrap())).unwrap();
        }
        for f in &files[TAUGHT..TAUGHT + HELD] {
            let ext = f.extension().and_then(|e| e.to_str()).unwrap_or("png");
            std::fs::copy(f, held.join(format!("{:03}_{class}.{ext}", labels.len()))).unwrap();
            labels.push(class.to_string());
        }
    }
    (teach, held, labels)
}

/// A second, smaller lesson: photos neither taught nor held back, `more/{class}/...`.
fn second_lesson(root: &Path) -> PathBuf {
    let more = root.join("more");
    for class in ["paper", "rock", "scissors"] {
        std::fs::create_dir_all(more.join(class)).unwrap();
        for f in &class_files(class)[TAUGHT + HELD..TAUGHT + HELD + 4] {
            std::fs::copy(f, more.join(class).join(f.file_name().unwrap())).unwrap();
        }
    }
    more
}

fn idle_source(root: &Path) -> PathBuf {
    let dir = root.join("idle");
    std::fs::create_dir_all(&dir).unwrap();
    let photo = &class_files("rock")[0];
    std::fs::copy(photo, dir.join(photo.file_name().unwrap())).unwrap();
    dir
}

fn send_group(broker: &Mosquitto, teach: &Path) -> String {
    let out = Command::new(GLIMPSE)
        .args(["send", "--group", GROUP, "--timeout-s", "120", "--url"])
        .arg(broker.url())
        .arg(teach)
        .output()
        .expect("run glimpse send");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "glimpse send --group failed:\n{text}");
    text
}

/// Restarts each stopped member over the held-back photos (no loop) and returns the accuracy of
/// its predictions; all run at once.
fn accuracies(
    broker: &Mosquitto,
    members: &mut [&mut Member],
    held: &Path,
    labels: &[String],
) -> Vec<f32> {
    let filters: Vec<String> = members.iter().map(|m| m.topic("prediction")).collect();
    let refs: Vec<&str> = filters.iter().map(String::as_str).collect();
    let sub = Subscriber::connect(broker.port(), &refs);
    for member in members.iter_mut() {
        let config = member
            .daemon
            .config()
            .clone()
            .source_dir(held)
            .set("source.replay_loop", false)
            .set("source.replay_fps", 3)
            .env_remove("GLIMPSE_FAULT");
        member.daemon.restart(config);
    }
    for member in members.iter_mut() {
        member.wait_exit(Duration::from_secs(300));
    }
    members
        .iter()
        .map(|member| {
            let mut predicted = BTreeMap::new();
            for msg in sub.messages(&member.topic("prediction")) {
                let v = json_of(&msg);
                if let (Some(frame), Some(label)) = (v["frame_id"].as_u64(), v["label"].as_str()) {
                    predicted.insert(frame as usize, label.to_string());
                }
            }
            assert!(
                predicted.len() * 10 >= labels.len() * 8,
                "{}: only {} of {} frames predicted with a head:\n{}",
                member.name,
                predicted.len(),
                labels.len(),
                member.log()
            );
            let right = predicted
                .iter()
                .filter(|(frame, label)| labels.get(**frame) == Some(label))
                .count();
            right as f32 / predicted.len() as f32
        })
        .collect()
}

/// Waits until every member serves the leader's active head, byte for byte (the leader may
/// train more than once while samples arrive; members follow each version).
fn same_head(lead: &Member, members: &[&Member]) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let want = lead.store().1.map(|h| sha256(&h.2));
        let have: Vec<Option<String>> = members
            .iter()
            .map(|m| m.store().1.map(|h| sha256(&h.2)))
            .collect();
        if want.is_some() && have.iter().all(|h| *h == want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "members never served the leader's head ({want:?} vs {have:?}):\n{}",
            lead.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until each member is online and has announced itself in the group.
fn wait_online(sub: &Subscriber, members: &[&Member]) {
    for member in members {
        let topic = member.topic("availability");
        sub.wait_for(Duration::from_secs(60), |m| {
            m.topic == topic && m.payload == b"online"
        })
        .unwrap_or_else(|| panic!("{} never came online:\n{}", member.name, member.log()));
        let announce = format!("glimpse/group/{GROUP}/members/{}", member.name);
        sub.wait_for(Duration::from_secs(60), |m| m.topic == announce)
            .unwrap_or_else(|| panic!("{} never announced itself:\n{}", member.name, member.log()));
    }
}

/// One table of `glimpse watch --group`.
fn watch_group(broker: &Mosquitto) -> String {
    let out = Command::new(GLIMPSE)
        .args(["watch", "--group", GROUP, "--count", "1", "--url"])
        .arg(broker.url())
        .output()
        .expect("run glimpse watch");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn one_teaching_reaches_the_group_and_late_members_catch_up() {
    let broker = Mosquitto::start();
    let tmp = tempfile::tempdir().unwrap();
    let (teach, held, labels) = prepare(tmp.path());
    let idle = idle_source(tmp.path());
    let sub = Subscriber::connect(broker.port(), &["glimpse/#"]);
    let setup = |leader, manifest, fault| Setup {
        root: tmp.path(),
        broker: &broker,
        manifest,
        leader,
        fault,
    };
    let default = "mobilenet_v2_1.0_224.toml";
    let mut lead = Member::start("lead", &idle, true, &setup(true, default, None));
    let mut m1 = Member::start("m1", &idle, true, &setup(false, default, None));
    let mut m2 = Member::start("m2", &idle, true, &setup(false, default, None));
    wait_online(&sub, &[&lead, &m1, &m2]);

    let out = send_group(&broker, &teach);
    assert!(
        out.contains("online members lead, m1, m2") && out.contains("60 accepted, 0 duplicate"),
        "{out}"
    );
    for member in [&m1, &m2] {
        let ack = member.adopt_ack(&sub);
        assert_eq!(ack["status"], "accepted", "{}: {ack}", member.name);
        assert!(ack["reason"].as_str().unwrap().contains("of lead"), "{ack}");
    }
    // Every member stored the group's samples (its own gate and a leader's stand-in); the
    // members' head is the leader's, byte for byte, stored as their own version.
    same_head(&lead, &[&m1, &m2]);
    let (lead_samples, lead_head) = lead.store();
    let (_, lead_report, lead_bytes) = lead_head.expect("the leader trained a head");
    assert_eq!(lead_samples, 60);
    assert!(lead_report.get("adopted_from").is_none(), "{lead_report}");
    for member in [&m1, &m2] {
        let (samples, head) = member.store();
        let (_, report, _) = head.expect("an adopted head");
        assert_eq!(samples, 60, "{}", member.name);
        assert_eq!(report["adopted_from"], "lead", "{report}");
    }

    let table = watch_group(&broker);
    for member in ["lead", "m1", "m2"] {
        assert!(table.contains(&format!("{member:<16} online")), "{table}");
    }
    assert!(
        !table.contains("LAGGING") && table.contains("of lead"),
        "{table}"
    );

    // Late: a member that missed the teaching gets the retained head, with no sample; one with
    // another backbone refuses it; one that crashes while storing it comes back complete.
    let mut late = Member::start("late", &idle, true, &setup(false, default, None));
    let ack = late.adopt_ack(&sub);
    assert_eq!(ack["status"], "accepted", "{ack}\n{}", late.log());
    let foreign = Member::start(
        "foreign",
        &idle,
        true,
        &setup(false, "mobilenet_v2_zoo_style.toml", None),
    );
    let ack = foreign.adopt_ack(&sub);
    assert_eq!(ack["status"], "rejected", "{ack}");
    let table = watch_group(&broker);
    let foreign_line = table
        .lines()
        .find(|l| l.starts_with("foreign "))
        .unwrap_or("");
    assert!(foreign_line.ends_with("LAGGING"), "{table}");
    assert!(
        ack["reason"]
            .as_str()
            .unwrap()
            .contains("was trained for backbone"),
        "{ack}"
    );
    assert!(
        foreign.store().1.is_none(),
        "the foreign member has no head"
    );
    let mut crash = Member::start(
        "crash",
        &idle,
        true,
        &setup(false, default, Some("head-commit-abort")),
    );
    crash.wait_exit(Duration::from_secs(120));
    let (_, head) = crash.store();
    assert!(head.is_none(), "an uncommitted head is not active");
    crash.spawn(None);
    let ack = crash.adopt_ack(&sub);
    assert_eq!(ack["status"], "accepted", "{ack}\n{}", crash.log());
    let (samples, head) = crash.store();
    assert_eq!(samples, 0);
    assert_eq!(
        sha256(&head.expect("adopted after the restart").2),
        sha256(&lead_bytes)
    );

    // A corrupt head (one flipped byte, checksum no longer matches) is refused; m1 keeps its head.
    let head_topic = format!("glimpse/group/{GROUP}/head");
    let mut corrupt = sub
        .messages(&head_topic)
        .last()
        .expect("the leader's head message")
        .payload
        .clone();
    *corrupt.last_mut().unwrap() ^= 0x40;
    let (_, before) = m1.store();
    sub.clear();
    sub.publish(&head_topic, corrupt, false);
    let ack = m1.adopt_ack(&sub);
    assert_eq!(ack["status"], "rejected", "{ack}");
    assert!(
        ack["reason"].as_str().unwrap().contains("checksum"),
        "{ack}"
    );
    assert_eq!(m1.store().1.map(|h| h.0), before.map(|h| h.0));

    // A member that serves a head and crashes while adopting the next one comes back serving the
    // old head, complete, and then adopts the new one.
    crash.stop();
    sub.clear();
    crash.spawn(Some("head-commit-abort"));
    let ack = crash.adopt_ack(&sub);
    assert_eq!(ack["status"], "duplicate", "{ack}\n{}", crash.log());
    let more = second_lesson(tmp.path());
    sub.clear();
    send_group(&broker, &more);
    crash.wait_exit(Duration::from_secs(120));
    let (_, head) = crash.store();
    let (old_version, _, old_bytes) = head.expect("the old head is still active");
    assert_eq!(
        sha256(&old_bytes),
        sha256(&lead_bytes),
        "the old head, complete"
    );
    crash.spawn(None);
    let ack = crash.adopt_ack(&sub);
    assert_eq!(ack["status"], "accepted", "{ack}\n{}", crash.log());
    let (new_version, _, new_bytes) = crash.store().1.expect("the new head");
    assert!(new_version > old_version);
    let (_, lead_head) = lead.store();
    assert_eq!(
        sha256(&new_bytes),
        sha256(&lead_head.expect("leader's head").2)
    );
    assert_ne!(
        sha256(&new_bytes),
        sha256(&lead_bytes),
        "a new head was adopted"
    );

    // Every member predicts the taught classes on the held-back photos with that head.
    for member in [&mut lead, &mut m1, &mut m2, &mut late] {
        member.stop();
    }
    drop(foreign);
    drop(crash);
    let scores = accuracies(
        &broker,
        &mut [&mut lead, &mut m1, &mut m2, &mut late],
        &held,
        &labels,
    );
    for score in &scores {
        assert!(*score >= 0.85, "accuracies {scores:?}");
    }
}

#[test]
fn teaching_on_one_bridged_broker_reaches_members_on_both() {
    let central = Mosquitto::start();
    let site = Mosquitto::start_bridged_to(&central);
    let tmp = tempfile::tempdir().unwrap();
    let (teach, _, _) = prepare(tmp.path());
    let idle = idle_source(tmp.path());
    let default = "mobilenet_v2_1.0_224.toml";
    let on = |broker, leader| Setup {
        root: tmp.path(),
        broker,
        manifest: default,
        leader,
        fault: None,
    };
    let lead = Member::start("lead", &idle, true, &on(&central, true));
    let remote = Member::start("remote", &idle, true, &on(&site, false));
    let sub_central = Subscriber::connect(central.port(), &["glimpse/#"]);
    let sub_site = Subscriber::connect(site.port(), &["glimpse/#"]);
    wait_online(&sub_site, &[&lead, &remote]);

    // Taught on the site broker: the samples cross the bridge to the leader, its head comes back.
    let out = send_group(&site, &teach);
    assert!(
        out.contains("online members lead, remote") && out.contains("60 accepted"),
        "{out}"
    );
    let ack = remote.adopt_ack(&sub_site);
    assert_eq!(ack["status"], "accepted", "{ack}\n{}", remote.log());
    same_head(&lead, &[&remote]);
    assert_eq!((lead.store().0, remote.store().0), (60, 60));
    // No loop: every head message on either side was published by the leader, never by the
    // member that adopted it.
    let topic = format!("glimpse/group/{GROUP}/head");
    let heads: Vec<Msg> = [&sub_central, &sub_site]
        .iter()
        .flat_map(|s| s.messages(&topic))
        .collect();
    assert!(!heads.is_empty());
    for msg in heads {
        let line = msg.payload.split(|&b| b == b'\n').next().unwrap();
        let header: Value = serde_json::from_slice(line).unwrap();
        assert_eq!(header["origin"], "lead", "{header}");
    }
}
