//! `glimpse bench --flood`: the daemon's MQTT edge under a flood. Starts Mosquitto on a free
//! loopback port (or uses `--flood-url`), a real `glimpse run` (this binary) on an idle looping
//! replay, then `--flood-clients` clients publish max-size QoS 1 samples (random bytes just under
//! `mqtt.max_packet_bytes`) as fast as the broker takes them for `--seconds`, and one oversized
//! message per client per second on top. Reports acks per second (by status), the daemon's peak
//! RSS (VmHWM) against [`RSS_CEILING_MB`], whether it stayed connected (`broker_reconnects` from
//! its stats) and whether every sample sent got an ack.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rand::RngCore;
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use serde::Serialize;

use super::pipeline::ScratchDir;
use super::{emit, BenchArgs};
use crate::mqtt::messages::learning::Ack;
use crate::procstat::parse_status_kib;

/// The daemon's stated memory ceiling under any flood, with the default 8 MiB packet limit
/// (docs/mqtt.md "Limits and refusals", docs/performance.md "Flood").
pub const RSS_CEILING_MB: f64 = 512.0;
const DEVICE: &str = "flood";
/// Time the daemon gets to load the model and come online.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// After the flood, acks are awaited until every sample has one, or none came for `STALL`
/// (the broker holds what the device has not read yet: flow control), at most `DRAIN`.
const DRAIN: Duration = Duration::from_secs(300);
const STALL: Duration = Duration::from_secs(20);
/// How long a client waits for the broker's PUBACKs of what it published before disconnecting.
const PUBACK_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Serialize)]
pub struct FloodReport {
    pub clients: usize,
    pub seconds: f64,
    pub sample_bytes: usize,
    pub max_packet_bytes: usize,
    pub samples_sent: u64,
    pub oversized_sent: u64,
    /// Acks received for the samples (by status / reason class), flood window plus drain.
    pub acks: BTreeMap<String, u64>,
    /// All acks over the flood window plus the drain that followed it.
    pub acks_per_s: f64,
    /// Seconds from the start of the flood to the last ack awaited.
    pub elapsed_s: f64,
    /// Samples sent that got no ack at all (must be 0).
    pub unacked: u64,
    pub daemon_peak_rss_mb: Option<f64>,
    pub rss_ceiling_mb: f64,
    pub broker_reconnects: Option<u64>,
    /// The daemon's last `stats` message (its own count of what it refused or dropped).
    pub daemon_stats: Option<serde_json::Value>,
}

/// A child process killed on drop (the broker, the daemon).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}

/// Mosquitto on a free loopback port, in `dir`.
fn start_broker(dir: &Path) -> anyhow::Result<(Killed, String)> {
    let port = free_port()?;
    let config = dir.join("mosquitto.conf");
    std::fs::write(
        &config,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nuser root\n"),
    )?;
    let binary = ["/usr/sbin/mosquitto", "mosquitto"]
        .into_iter()
        .find(|b| Path::new(b).exists() || *b == "mosquitto")
        .unwrap_or("mosquitto");
    let child = Command::new(binary)
        .arg("-c")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| {
            format!("cannot start {binary} (install mosquitto, or pass --flood-url)")
        })?;
    let child = Killed(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("mosquitto did not listen on port {port}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok((child, format!("mqtt://127.0.0.1:{port}")))
}

fn start_daemon(
    args: &BenchArgs,
    dir: &Path,
    url: &str,
    max_packet_bytes: usize,
) -> anyhow::Result<Killed> {
    let replay = ScratchDir::create(1, 320, 240)?;
    let source = dir.join("replay");
    std::fs::create_dir_all(&source)?;
    for entry in std::fs::read_dir(&replay.0)? {
        let entry = entry?;
        std::fs::copy(entry.path(), source.join(entry.file_name()))?;
    }
    let config = dir.join("glimpse.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{state}\"\n[model]\nmanifest = \"{manifest}\"\nthreads = 1\n\
             [source]\nuri = \"dir:{source}\"\nreplay_fps = 2\nreplay_loop = true\n\
             [mqtt]\nurl = \"{url}\"\ndevice_id = \"{DEVICE}\"\nstats_interval_s = 1\n\
             max_packet_bytes = {max_packet_bytes}\n[learning]\nretrain_after = 0\n",
            state = dir.join("state").display(),
            manifest = std::fs::canonicalize(&args.model.model)
                .unwrap_or_else(|_| args.model.model.clone())
                .display(),
            source = source.display(),
        ),
    )?;
    let exe = std::env::current_exe().context("cannot find this binary")?;
    let log = std::fs::File::create(dir.join("daemon.log"))?;
    let child = Command::new(exe)
        .args(["run", "--config"])
        .arg(&config)
        .env_remove("NOTIFY_SOCKET")
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()
        .context("cannot start glimpse run")?;
    Ok(Killed(child))
}

fn options(url: &str, name: &str) -> anyhow::Result<MqttOptions> {
    let mut options = crate::cli::watch::operator_options(
        url,
        name,
        None,
        None,
        (1024 * 1024, 64 * 1024 * 1024),
    )?;
    // A few in flight per client: the client must not hold hundreds of 8 MiB messages itself.
    options.set_inflight(4);
    Ok(options)
}

/// Collects acks and the daemon's last stats.
#[derive(Default)]
struct Observed {
    acks: Mutex<Vec<Ack>>,
    online: AtomicBool,
    reconnects: AtomicU64,
    stats_seen: AtomicBool,
    last_stats: Mutex<Option<serde_json::Value>>,
}

fn observe(url: &str, observed: Arc<Observed>) -> anyhow::Result<Client> {
    let (client, mut connection) = Client::new(options(url, "flood-observer")?, 16);
    let prefix = format!("glimpse/{DEVICE}");
    let filters = ["ack", "availability", "stats"].map(|t| format!("{prefix}/{t}"));
    let sub = client.clone();
    std::thread::spawn(move || {
        for event in connection.iter() {
            match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    for f in &filters {
                        let _ = sub.try_subscribe(f.clone(), QoS::AtLeastOnce);
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if p.topic.ends_with("/ack") {
                        if let Ok(ack) = serde_json::from_slice::<Ack>(&p.payload) {
                            observed
                                .acks
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .push(ack);
                        }
                    } else if p.topic.ends_with("/availability") {
                        observed
                            .online
                            .store(&p.payload[..] == b"online", Ordering::Relaxed);
                    } else if let Ok(stats) =
                        serde_json::from_slice::<serde_json::Value>(&p.payload)
                    {
                        if let Some(n) = stats["broker_reconnects"].as_u64() {
                            observed.reconnects.store(n, Ordering::Relaxed);
                            observed.stats_seen.store(true, Ordering::Relaxed);
                        }
                        *observed
                            .last_stats
                            .lock()
                            .unwrap_or_else(|e| e.into_inner()) = Some(stats);
                    }
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    });
    Ok(client)
}

/// One publishing client: max-size samples back to back, one oversized message a second.
fn flood_client(
    url: String,
    n: usize,
    sample_bytes: usize,
    oversized_bytes: usize,
    until: Instant,
    sent_ids: Arc<Mutex<Vec<String>>>,
) -> anyhow::Result<(u64, u64)> {
    let (client, mut connection) = Client::new(options(&url, &format!("flood-{n}"))?, 4);
    // PUBACKs from the broker: a sample counts as sent once the broker has it.
    let pubacks = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&pubacks);
    let pump = std::thread::spawn(move || {
        for event in connection.iter() {
            match event {
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    counted.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    });
    let topic = format!("glimpse/{DEVICE}/sample/flood{n}");
    let mut rng = rand::thread_rng();
    let (mut samples, mut oversized) = (0u64, 0u64);
    let mut next_oversized = Instant::now();
    while Instant::now() < until {
        let mut payload = vec![0u8; sample_bytes];
        rng.fill_bytes(&mut payload[..64]);
        sent_ids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(crate::learn::cache::content_hash(&payload));
        // Blocks while the client's queue is full: the broker's pace, not ours.
        client.publish(topic.clone(), QoS::AtLeastOnce, false, payload)?;
        samples += 1;
        if Instant::now() >= next_oversized {
            next_oversized += Duration::from_secs(1);
            client.publish(
                topic.clone(),
                QoS::AtLeastOnce,
                false,
                vec![1u8; oversized_bytes],
            )?;
            oversized += 1;
        }
    }
    let deadline = Instant::now() + PUBACK_WAIT;
    while pubacks.load(Ordering::Relaxed) < samples + oversized && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if pubacks.load(Ordering::Relaxed) < samples + oversized {
        bail!("client {n}: the broker did not acknowledge every publish within {PUBACK_WAIT:?}");
    }
    let _ = client.disconnect();
    let _ = pump.join();
    Ok((samples, oversized))
}

fn daemon_peak_rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status_kib(&status, "VmHWM").map(|kib| kib as f64 / 1024.0)
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let scratch = ScratchDir::create(0, 0, 0)?;
    let dir: PathBuf = scratch.0.clone();
    let (_broker, url) = match &args.flood_url {
        Some(url) => (None, url.clone()),
        None => {
            let (broker, url) = start_broker(&dir)?;
            (Some(broker), url)
        }
    };
    let max_packet_bytes = args.flood_max_packet_bytes;
    let topic_len = format!("glimpse/{DEVICE}/sample/flood00").len();
    // Just under the limit once the topic, packet id and header are added.
    let sample_bytes = max_packet_bytes - topic_len - 16;
    let oversized_bytes = max_packet_bytes + 1024;

    let observed = Arc::new(Observed::default());
    let observer = observe(&url, Arc::clone(&observed))?;
    let daemon = start_daemon(args, &dir, &url, max_packet_bytes)?;
    let deadline = Instant::now() + START_TIMEOUT;
    while !observed.online.load(Ordering::Relaxed) {
        if Instant::now() > deadline {
            bail!(
                "the daemon did not come online; its log:\n{}",
                std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2)); // subscribed
    if !args.json {
        eprintln!(
            "flooding {url} with {} clients x {} byte samples for {} s...",
            args.flood_clients, sample_bytes, args.seconds
        );
    }
    let sent_ids = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(args.seconds);
    let handles: Vec<_> = (0..args.flood_clients)
        .map(|n| {
            let (url, ids) = (url.clone(), Arc::clone(&sent_ids));
            std::thread::spawn(move || {
                flood_client(url, n, sample_bytes, oversized_bytes, until, ids)
            })
        })
        .collect();
    let (mut samples_sent, mut oversized_sent) = (0, 0);
    for handle in handles {
        let (s, o) = handle
            .join()
            .map_err(|_| anyhow::anyhow!("a flood client panicked"))??;
        samples_sent += s;
        oversized_sent += o;
    }
    let sent: std::collections::BTreeSet<String> = sent_ids
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .cloned()
        .collect();
    let acked = |observed: &Observed| -> (usize, Vec<Ack>) {
        let acks = observed
            .acks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let n = acks
            .iter()
            .filter(|a| a.id.as_ref().is_some_and(|id| sent.contains(id)))
            .count();
        (n, acks)
    };
    let drain_until = Instant::now() + DRAIN;
    let (mut last_count, mut last_progress) = (0, Instant::now());
    loop {
        let count = observed
            .acks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .len();
        if count != last_count {
            (last_count, last_progress) = (count, Instant::now());
        }
        if acked(&observed).0 >= sent.len()
            || Instant::now() > drain_until
            || last_progress.elapsed() > STALL
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let peak = daemon_peak_rss_mb(daemon.0.id());
    let (acked_samples, acks) = acked(&observed);
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    for ack in &acks {
        let status = match (ack.status, ack.reason.as_deref()) {
            (_, Some(r)) if r.starts_with("too large") => "rejected: too large (link)",
            (_, Some(r)) if r.starts_with("the device is busy") => "rejected: busy",
            (_, Some(r)) if r.starts_with("payload is") => "rejected: over max_sample_bytes",
            (Some(crate::mqtt::messages::learning::AckStatus::Accepted), _) => "accepted",
            _ => "other",
        };
        *by_status.entry(status.to_string()).or_default() += 1;
    }
    if sent.len() > acked_samples {
        let log = std::fs::read_to_string(dir.join("daemon.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        eprintln!("daemon log (last lines):");
        for line in tail.into_iter().rev() {
            eprintln!("  {line}");
        }
    }
    drop(daemon);
    let _ = observer.disconnect();
    let report = FloodReport {
        clients: args.flood_clients,
        seconds: args.seconds,
        sample_bytes,
        max_packet_bytes,
        samples_sent,
        oversized_sent,
        acks_per_s: acks.len() as f64 / elapsed.max(1e-9),
        elapsed_s: elapsed,
        acks: by_status,
        unacked: sent.len().saturating_sub(acked_samples) as u64,
        daemon_peak_rss_mb: peak,
        rss_ceiling_mb: RSS_CEILING_MB,
        broker_reconnects: observed
            .stats_seen
            .load(Ordering::Relaxed)
            .then(|| observed.reconnects.load(Ordering::Relaxed)),
        daemon_stats: observed
            .last_stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
    };
    emit(args, &report, print_report)
}

fn print_report(r: &FloodReport) {
    println!(
        "flood: {} clients x {} byte samples (limit {}), {:.0} s",
        r.clients, r.sample_bytes, r.max_packet_bytes, r.seconds
    );
    println!(
        "sent {} samples + {} oversized (all acked by the broker); {:.1} acks/s over {:.0} s \
         (flood + drain); samples without an ack: {}",
        r.samples_sent, r.oversized_sent, r.acks_per_s, r.elapsed_s, r.unacked
    );
    for (status, n) in &r.acks {
        println!("  {status:<34} {n}");
    }
    let rss = r
        .daemon_peak_rss_mb
        .map(|m| format!("{m:.0} MiB"))
        .unwrap_or_else(|| "unknown".into());
    println!(
        "daemon peak RSS {rss} (ceiling {:.0} MiB); broker reconnects {}",
        r.rss_ceiling_mb,
        r.broker_reconnects
            .map(|n| n.to_string())
            .unwrap_or_else(|| "unknown".into())
    );
    if let Some(stats) = &r.daemon_stats {
        let field = |k: &str| stats[k].as_u64().unwrap_or(0);
        println!(
            "daemon stats: incoming_dropped {} (too_large {}, busy {}, retained {}), mqtt_dropped {}",
            field("incoming_dropped"),
            field("incoming_too_large"),
            field("incoming_busy"),
            field("incoming_retained"),
            field("mqtt_dropped")
        );
    }
}
