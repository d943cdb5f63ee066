//! Operator tools for teaching a device over MQTT: `glimpse send` (images -> samples, several in
//! flight, a progress bar and a final tally), `glimpse samples` (labels and counts), `glimpse
//! retrain` and `glimpse rollback`.
//!
//! Every request is matched with its ack by id: a raw image's id is the sha256 of its bytes (what
//! the device computes too), a command's id is made here. Nothing is fire-and-forget: a missing
//! ack is reported as `no ack`, and any sample not `accepted`/`duplicate` makes the exit code 1.
//! A sample refused because the device was busy, or whose ack did not come, is sent again (up to
//! `--retries` times): samples are idempotent, so a retry of one that was stored after all is
//! answered `duplicate`. Every tool first reads the device's retained availability and stops at
//! once, with exit code 1, when it is not `online` (nothing would answer).

mod batch;
mod group;
mod tally;

pub use group::member_of;

use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use rumqttc::{Client, Event, Packet, QoS, SubscribeFilter};
use serde_json::{json, Value};

use crate::learn::identity::{Label, SampleId};
use crate::mqtt::messages::availability::Availability;
use crate::mqtt::messages::learning::{Ack, AckStatus};
use crate::mqtt::topics::{parse_outgoing, validate_level, Outgoing, Topics};

use super::broker::BrokerArgs;

pub use tally::{Outcome, Tally};

/// How long to wait, after subscribing, for the broker to hand over the device's retained
/// availability. Retained messages follow the SUBACK at once; this only covers a slow link.
const AVAILABILITY_GRACE: Duration = Duration::from_secs(3);

/// Which device, on which broker.
#[derive(Debug, Clone, Args)]
pub struct DeviceArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// The device id.
    #[arg(long, required_unless_present = "group", conflicts_with = "group")]
    pub device: Option<String>,
    /// A fleet group (`learning.group`): send to every member at once and wait for the ack of
    /// each online member (docs/fleet.md).
    #[arg(long)]
    pub group: Option<String>,
    /// Seconds to wait for each ack.
    #[arg(long, default_value_t = 60)]
    pub timeout_s: u64,
}

#[derive(Debug, Clone, Args)]
pub struct SendArgs {
    #[command(flatten)]
    pub device: DeviceArgs,
    /// The label of every file; without it each DIR is read as class-per-folder.
    #[arg(long)]
    pub label: Option<String>,
    /// Images (JPEG, PNG, BMP) or directories.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Times to send a sample again when the device answers busy (after 1, 2, 4... s) or its
    /// ack does not come within --timeout-s.
    #[arg(long, default_value_t = 3)]
    pub retries: u32,
    /// Samples sent before their acks came back (bounded, so the device's queue never fills).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub in_flight: u32,
    /// No progress bar and no line per failed file: only the final tally.
    #[arg(long, short)]
    pub quiet: bool,
    /// Print the tally (counts, rejection reasons, failed files) as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// The device's limit for one image, used when the device does not report its own
    /// `learning.max_sample_bytes` (in its `labels` ack): larger files are refused here, before
    /// publishing.
    #[arg(long, default_value_t = 4 << 20)]
    pub max_bytes: usize,
}

/// Why an operator tool stops before sending anything: the device cannot answer.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DeviceUnavailable {
    #[error(
        "device {device} is {state} (retained availability on {topic}); nothing was sent. \
         Start the device or check its network"
    )]
    NotOnline {
        device: String,
        state: String,
        topic: String,
    },
    #[error(
        "device {device} has never announced itself on this broker (no retained message on \
         {topic}); nothing was sent. Check --device, --prefix and --url"
    )]
    Unknown { device: String, topic: String },
}

/// Decides from the retained availability payload (if any) whether the device can answer. Pure.
pub fn check_availability(
    device: &str,
    topic: &str,
    payload: Option<&[u8]>,
) -> Result<(), DeviceUnavailable> {
    match payload {
        None => Err(DeviceUnavailable::Unknown {
            device: device.to_string(),
            topic: topic.to_string(),
        }),
        Some(p) if Availability::parse(p) == Some(Availability::Online) => Ok(()),
        Some(p) => Err(DeviceUnavailable::NotOnline {
            device: device.to_string(),
            state: String::from_utf8_lossy(p).chars().take(40).collect(),
            topic: topic.to_string(),
        }),
    }
}

/// Why a file is not sent at all: over the device's size limit (it would be refused unread).
fn too_large_for_device(len: usize, max_bytes: usize) -> Option<String> {
    (len > max_bytes).then(|| {
        format!(
            "the file is {len} bytes, over the device's limit of {max_bytes} bytes \
             (learning.max_sample_bytes; --max-bytes if the device allows more); not sent"
        )
    })
}

/// The device's answer to an image it refused unread (over `mqtt.max_packet_bytes`): it carries
/// the label but no id, since the id is the hash of the bytes it did not read.
fn is_too_large_for(ack: &Ack, label: &str) -> bool {
    ack.id.is_none()
        && ack.command.is_none()
        && ack.label.as_deref() == Some(label)
        && ack
            .reason
            .as_deref()
            .is_some_and(|r| r.starts_with("too large"))
}

/// A busy refusal: the learner's queue was full, nothing was stored, sending again is right.
fn is_busy(ack: &Ack) -> bool {
    ack.status == Some(AckStatus::Rejected)
        && ack
            .reason
            .as_deref()
            .is_some_and(|r| r.starts_with("the device is busy"))
}

#[derive(Debug, Clone, Args)]
pub struct RetrainArgs {
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Accept the new head even if the gate would keep the active one.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Clone, Args)]
pub struct ForgetArgs {
    /// The label whose samples are deleted; the device then retrains without it.
    pub label: String,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// A connected client that sees the device's acks (and, when asked, its export archives).
pub(super) struct Session {
    client: Client,
    /// Where requests go: the device's topics, or the group's (`{p}/group/{g}` in place of
    /// `{p}/{d}`).
    topics: Topics,
    /// Acks with the device that sent each.
    acks: Receiver<(String, Ack)>,
    /// With `--group`: the online members, whose acks are merged per request.
    group: Option<std::cell::RefCell<group::GroupAcks>>,
    /// Payloads published on `export` (only with `connect_with_exports`).
    pub(super) exports: Receiver<Vec<u8>>,
    pub(super) timeout: Duration,
}

impl Session {
    fn connect(args: &DeviceArgs) -> anyhow::Result<Session> {
        Session::open(args, false)
    }

    /// Connects and also subscribes to `export` (an archive's parts: only when asked).
    pub(super) fn connect_with_exports(args: &DeviceArgs) -> anyhow::Result<Session> {
        Session::open(args, true)
    }

    fn open(args: &DeviceArgs, exports: bool) -> anyhow::Result<Session> {
        let (url, options) = args
            .broker
            .connect_options("send", (256 * 1024, 64 * 1024 * 1024))?;
        let prefix = args.broker.prefix.as_str();
        let (topics, group_name) = match (&args.device, &args.group) {
            (Some(device), None) => {
                validate_level("device id", device).context("--device")?;
                (Topics::new(prefix, device)?, None)
            }
            (None, Some(group)) => {
                validate_level("group", group).context("--group")?;
                if exports {
                    bail!("export takes --device: one device's samples, not a group's");
                }
                // The group's topics are `{p}/group/{g}/...`: the device part is `group/{g}`.
                (
                    Topics::new(&format!("{prefix}/group"), group)?,
                    Some(group.clone()),
                )
            }
            _ => bail!("give --device or --group"),
        };
        let (client, mut connection) = Client::new(options, 64);
        let (ack_tx, acks) = channel();
        let (export_tx, export_rx) = channel();
        let (ready_tx, ready) = channel();
        let (availability_tx, availability) = channel::<(String, Vec<u8>)>();
        let (member_tx, member_rx) = channel::<String>();
        let export_topic = topics.outgoing(Outgoing::Export);
        let device_filter = |kind: Outgoing| match &args.device {
            Some(device) => format!("{prefix}/{device}/{}", kind.suffix()),
            None => format!("{prefix}/+/{}", kind.suffix()),
        };
        let mut filters = vec![
            SubscribeFilter::new(device_filter(Outgoing::Ack), QoS::AtLeastOnce),
            SubscribeFilter::new(device_filter(Outgoing::Availability), QoS::AtLeastOnce),
        ];
        if let Some(group) = &group_name {
            filters.push(SubscribeFilter::new(
                format!("{prefix}/group/{group}/members/+"),
                QoS::AtLeastOnce,
            ));
        }
        if exports {
            filters.push(SubscribeFilter::new(export_topic.clone(), QoS::AtLeastOnce));
        }
        {
            let client = client.clone();
            let prefix = prefix.to_string();
            let group_name = group_name.clone();
            std::thread::spawn(move || {
                for event in connection.iter() {
                    match event {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            let _ = client.try_subscribe_many(filters.clone());
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            let _ = ready_tx.send(Ok(()));
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) if p.topic == export_topic => {
                            let _ = export_tx.send(p.payload.to_vec());
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            if let Some(member) = group_name
                                .as_deref()
                                .and_then(|g| group::member_of(&prefix, g, &p.topic))
                            {
                                let _ = member_tx.send(member);
                                continue;
                            }
                            match parse_outgoing(&prefix, &p.topic) {
                                Some((device, Outgoing::Availability)) => {
                                    let _ = availability_tx.send((device, p.payload.to_vec()));
                                }
                                Some((device, Outgoing::Ack)) => {
                                    if let Ok(ack) = serde_json::from_slice::<Ack>(&p.payload) {
                                        if ack_tx.send((device, ack)).is_err() {
                                            return;
                                        }
                                    }
                                }
                                _ => {}
                            }
                        }
                        Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                        Ok(_) => {}
                        Err(err) => {
                            let _ = ready_tx.send(Err(err.to_string()));
                            std::thread::sleep(Duration::from_millis(500));
                        }
                    }
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(args.timeout_s.max(1));
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match ready.recv_timeout(left) {
                Ok(Ok(())) => break,
                Ok(Err(err)) => log::warn!("broker {url}: {err}"),
                Err(_) => bail!("cannot reach the broker at {url} (subscribe not acknowledged)"),
            }
        }
        let group = match (&args.device, &group_name) {
            (Some(device), _) => {
                let retained = availability.recv_timeout(AVAILABILITY_GRACE).ok();
                if let Err(unavailable) = check_availability(
                    device,
                    &format!("{prefix}/{device}/availability"),
                    retained.as_ref().map(|(_, p)| p.as_slice()),
                ) {
                    let _ = client.disconnect();
                    return Err(unavailable.into());
                }
                None
            }
            (None, Some(group)) => {
                let online = online_members(&member_rx, &availability);
                if online.is_empty() {
                    let _ = client.disconnect();
                    bail!(
                        "group {group} has no online member on this broker (members announce \
                         themselves retained on {prefix}/group/{group}/members/<device>); \
                         nothing was sent"
                    );
                }
                eprintln!("group {group}: online members {}", online.join(", "));
                Some(std::cell::RefCell::new(group::GroupAcks::new(online)))
            }
            (None, None) => None,
        };
        Ok(Session {
            client,
            topics,
            acks,
            group,
            exports: export_rx,
            timeout: Duration::from_secs(args.timeout_s.max(1)),
        })
    }

    /// The next ack to arrive within `timeout`; `None` on timeout (or a lost connection thread).
    /// With `--group`, an ack is returned once every online member answered its request (see
    /// `group::GroupAcks`).
    fn next_ack(&self, timeout: Duration) -> Option<Ack> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (device, ack) = self.acks.recv_timeout(left).ok()?;
            match &self.group {
                None => return Some(ack),
                Some(group) => {
                    if let Some(merged) = group.borrow_mut().add(&device, ack) {
                        return Some(merged);
                    }
                }
            }
        }
    }

    /// The members that have not answered request `id` (empty without `--group`).
    fn missing(&self, id: &str) -> Vec<String> {
        self.group
            .as_ref()
            .map(|g| g.borrow().missing(id))
            .unwrap_or_default()
    }

    /// Waits for the first ack matching `pred`.
    fn wait(&self, pred: impl Fn(&Ack) -> bool) -> Option<Ack> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_ack(left) {
                Some(ack) if pred(&ack) => return Some(ack),
                Some(_) => continue,
                None => return None,
            }
        }
    }

    /// Sends a command and waits for its ack.
    pub(super) fn command(&self, name: &str, args: Value) -> anyhow::Result<Ack> {
        let id = self.send_command(name, args)?;
        self.wait(|a| a.id.as_deref() == Some(id.as_str()) && a.command.as_deref() == Some(name))
            .with_context(|| match self.missing(&id) {
                missing if missing.is_empty() => {
                    format!("no ack for {name} within {:?}", self.timeout)
                }
                missing => format!(
                    "no ack for {name} within {:?} from {}",
                    self.timeout,
                    missing.join(", ")
                ),
            })
    }

    /// Publishes a command with a fresh id (which follows the device's id rule) and returns the
    /// id; the caller collects the ack (see [`Session::try_ack`]).
    pub(super) fn send_command(&self, name: &str, mut args: Value) -> anyhow::Result<String> {
        let id = SampleId::new(format!(
            "cli-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos()
        ))?;
        args["id"] = Value::String(id.to_string());
        self.client
            .publish(
                self.topics.command(name),
                QoS::AtLeastOnce,
                false,
                serde_json::to_vec(&args)?,
            )
            .context("queueing the command")?;
        Ok(id.into_string())
    }

    /// An ack that already arrived, without waiting.
    pub(super) fn try_ack(&self) -> Option<Ack> {
        self.acks.try_recv().ok().map(|(_, ack)| ack)
    }

    pub(super) fn close(self) {
        let _ = self.client.disconnect();
    }
}

/// Members whose request would be answered: announced in the group and `online`. Gathers the
/// retained announcements until none arrived for a moment (they follow the SUBACK at once).
fn online_members(
    members: &Receiver<String>,
    availability: &Receiver<(String, Vec<u8>)>,
) -> Vec<String> {
    const QUIET: Duration = Duration::from_millis(300);
    let until = Instant::now() + AVAILABILITY_GRACE;
    let mut announced = std::collections::BTreeSet::new();
    let mut online = std::collections::BTreeSet::new();
    let mut last = Instant::now();
    while Instant::now() < until && last.elapsed() < QUIET {
        std::thread::sleep(Duration::from_millis(20));
        for member in members.try_iter() {
            announced.insert(member);
            last = Instant::now();
        }
        for (device, payload) in availability.try_iter() {
            if Availability::parse(&payload) == Some(Availability::Online) {
                online.insert(device);
            } else {
                online.remove(&device);
            }
            last = Instant::now();
        }
    }
    for member in announced.difference(&online) {
        eprintln!("member {member} is not online: not waited for");
    }
    announced.intersection(&online).cloned().collect()
}

/// Image files to send with their labels: files take `--label`; a directory takes `--label` for
/// its images, or without it is class-per-folder (each subfolder a label).
pub fn collect_files(
    paths: &[PathBuf],
    label: Option<&str>,
) -> anyhow::Result<Vec<(PathBuf, Label)>> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            match label {
                Some(label) => {
                    for file in images_in(path)? {
                        out.push((file, label.to_string()));
                    }
                }
                None => {
                    let mut classes: Vec<PathBuf> = std::fs::read_dir(path)
                        .with_context(|| format!("reading {}", path.display()))?
                        .filter_map(|e| e.ok().map(|e| e.path()))
                        .filter(|p| p.is_dir())
                        .collect();
                    classes.sort();
                    for class in classes {
                        let name = class
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default();
                        for file in images_in(&class)? {
                            out.push((file, name.clone()));
                        }
                    }
                }
            }
        } else {
            let label =
                label.with_context(|| format!("{}: a file needs --label", path.display()))?;
            out.push((path.clone(), label.to_string()));
        }
    }
    // The device's one label rule, checked before anything is sent.
    out.into_iter()
        .map(|(file, label)| {
            let checked = Label::new(label.as_str())
                .with_context(|| format!("{}: label {label:?}", file.display()))?;
            Ok((file, checked))
        })
        .collect()
}

fn images_in(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .map(|e| {
                    matches!(
                        e.to_ascii_lowercase().as_str(),
                        "jpg" | "jpeg" | "png" | "bmp"
                    )
                })
                .unwrap_or(false)
        })
        .collect();
    files.sort();
    Ok(files)
}

/// `glimpse send`: true when every file was accepted (or was already stored).
pub fn send(args: &SendArgs) -> anyhow::Result<bool> {
    let files = collect_files(&args.paths, args.label.as_deref())?;
    if files.is_empty() {
        bail!("no images found in the given paths");
    }
    let session = Session::connect(&args.device)?;
    // The device's sample size limit (in the `labels` ack), so oversized files are refused here,
    // before a byte is published.
    let limit = match session.command("labels", json!({})) {
        Ok(ack) => ack.max_sample_bytes.map(|b| b as usize),
        Err(err) => {
            log::warn!("{err:#}: using --max-bytes as the device's size limit");
            None
        }
    }
    .unwrap_or(args.max_bytes);
    let started = Instant::now();
    let tally = batch::send_all(&session, &files, args, limit)?;
    session.close();
    let elapsed = started.elapsed();
    if args.json {
        println!("{}", tally.to_json(elapsed));
    } else {
        println!("{}", tally.summary(elapsed));
    }
    Ok(tally.all_stored())
}

fn print_ack(ack: &Ack) -> bool {
    let ok = ack.status == Some(AckStatus::Accepted);
    println!(
        "{}: {}{}{}",
        ack.command.as_deref().unwrap_or("?"),
        if ok { "accepted" } else { "rejected" },
        ack.head_version
            .map(|v| format!(", head v{v}"))
            .unwrap_or_default(),
        ack.reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    );
    ok
}

/// `glimpse samples`: labels and their sample counts.
pub fn samples(args: &DeviceArgs) -> anyhow::Result<bool> {
    let session = Session::connect(args)?;
    let ack = session.command("labels", json!({}))?;
    session.close();
    if ack.status != Some(AckStatus::Accepted) {
        return Ok(print_ack(&ack));
    }
    let labels = ack.labels.unwrap_or_default();
    for (label, count) in &labels {
        println!("{count:>6}  {label}");
    }
    println!("{:>6}  total", labels.values().sum::<u64>());
    Ok(true)
}

/// `glimpse retrain`
pub fn retrain(args: &RetrainArgs) -> anyhow::Result<bool> {
    let session = Session::connect(&args.device)?;
    let ack = session.command("retrain", json!({ "force": args.force }))?;
    session.close();
    Ok(print_ack(&ack))
}

/// `glimpse forget LABEL`: deletes the label's samples on the device, which retrains without it.
pub fn forget(args: &ForgetArgs) -> anyhow::Result<bool> {
    let session = Session::connect(&args.device)?;
    let ack = session.command("forget", json!({ "label": args.label }))?;
    session.close();
    Ok(print_ack(&ack))
}

/// `glimpse rollback`
pub fn rollback(args: &DeviceArgs) -> anyhow::Result<bool> {
    let session = Session::connect(args)?;
    let ack = session.command("rollback", json!({}))?;
    session.close();
    Ok(print_ack(&ack))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_online_device_is_talked_to() {
        let topic = "glimpse/cam1/availability";
        assert_eq!(check_availability("cam1", topic, Some(b"online")), Ok(()));
        let offline = check_availability("cam1", topic, Some(b"offline")).unwrap_err();
        assert_eq!(
            offline.to_string(),
            "device cam1 is offline (retained availability on glimpse/cam1/availability); \
             nothing was sent. Start the device or check its network"
        );
        assert!(check_availability("cam1", topic, Some(b"stopped"))
            .unwrap_err()
            .to_string()
            .contains("is stopped"));
        let unknown = check_availability("cam1", topic, None).unwrap_err();
        assert!(
            unknown.to_string().contains("never announced itself"),
            "{unknown}"
        );
    }

    #[test]
    fn files_over_the_device_limit_are_refused_with_the_limit() {
        assert_eq!(too_large_for_device(4 << 20, 4 << 20), None);
        let reason = too_large_for_device((4 << 20) + 1, 4 << 20).unwrap();
        assert!(
            reason.contains("4194305") && reason.contains("4194304"),
            "{reason}"
        );
        let too_large = Ack::sample(None, Some("cat".into()), AckStatus::Rejected)
            .with_reason("too large: the message was 9000000 bytes");
        assert!(is_too_large_for(&too_large, "cat"));
        assert!(!is_too_large_for(&too_large, "dog"));
    }

    #[test]
    fn only_busy_refusals_are_retried() {
        let ack = |status, reason: Option<&str>| Ack {
            status: Some(status),
            reason: reason.map(String::from),
            ..Ack::default()
        };
        let busy = crate::learn::ingest::Rejection::Busy("ingest queue full".into()).to_string();
        assert!(is_busy(&ack(AckStatus::Rejected, Some(&busy))));
        assert!(!is_busy(&ack(
            AckStatus::Rejected,
            Some("label contains '/'")
        )));
        assert!(!is_busy(&ack(AckStatus::Accepted, None)));
    }

    #[test]
    fn collects_class_per_folder_and_labeled_files() {
        let dir = tempfile::tempdir().unwrap();
        for (class, file) in [("rock", "a.png"), ("rock", "b.jpg"), ("paper", "c.PNG")] {
            std::fs::create_dir_all(dir.path().join(class)).unwrap();
            std::fs::write(dir.path().join(class).join(file), b"x").unwrap();
        }
        std::fs::write(dir.path().join("rock/notes.txt"), b"x").unwrap();
        let files = collect_files(&[dir.path().to_path_buf()], None).unwrap();
        let labels: Vec<&str> = files.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(labels, ["paper", "rock", "rock"]);
        let files = collect_files(&[dir.path().join("rock")], Some("stone")).unwrap();
        assert_eq!(files.len(), 2);
        assert!(collect_files(&[dir.path().join("rock/a.png")], None).is_err());
        assert!(collect_files(&[dir.path().join("rock/a.png")], Some("a+b")).is_err());
    }
}
