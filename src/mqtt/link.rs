//! `MqttLink`: the one connection to the broker, over rumqttc's `AsyncClient` + `EventLoop`.
//!
//! Two tokio tasks:
//! - the *poll task* owns the `EventLoop` and polls it forever (rumqttc only makes progress,
//!   pings and reconnects while polled). On an error it logs, counts, sleeps a capped jittered
//!   backoff and polls again, which reconnects. The backoff starts over only after a connection
//!   stayed up for [`STABLE_CONNECTION`], so a broker that accepts and then drops us at once
//!   (a storm) is retried ever more slowly. Incoming publishes are parsed against the topic
//!   grammar and handed to the daemon on a small bounded mpsc channel. When it is full the poll
//!   task waits: the socket is not read meanwhile and TCP pushes back to the broker (QoS 1 flow
//!   control), instead of dropping a message nobody would ever ack. The daemon drains the
//!   channel without blocking (it refuses what it cannot queue with a `busy` ack).
//! - A publish over `mqtt.max_packet_bytes` does not break the connection: the patched rumqttc
//!   (vendor/rumqttc/PATCHED.md) acks it to the broker, skips its payload unread and reports it;
//!   it is handed on as a [`Received`] with `too_large` set and an empty payload, so the daemon
//!   can answer it with a `rejected` ack.
//! - the *pump task* greets every new connection (retained `online`, re-subscribe; the session may
//!   be gone after a broker restart) and then moves messages from our outbox into the client.
//!
//! The outbox is a bounded ring: [`MqttLink::publish`] never blocks and never fails because the
//! broker is away; when full, the oldest message is dropped and counted. A producer that must not
//! lose a message (the export's parts) uses an [`OutboxHandle`], which waits for room instead. rumqttc's own buffers are
//! bounded too: a small request channel, and its `pending` replay list is trimmed to
//! `outbox_capacity` after each connection error. So memory stays bounded however long the broker
//! is down.
//!
//! The last will is `offline` (retained): the broker publishes it if we vanish. A clean
//! [`MqttLink::shutdown`] publishes `stopped` and disconnects, so the will is not sent.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use rand::{Rng, SeedableRng};
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, LastWill, MqttOptions, Packet, QoS,
    TlsConfiguration, Transport,
};
use serde::Serialize;
use thiserror::Error;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

use super::backoff::Backoff;
use super::budget::BytePermit;
use super::config::{read_bytes, MqttConfig, MqttConfigError, Scheme, SYSTEM_CA_BUNDLE};
use super::messages::Availability;
use super::topics::{Incoming, Outgoing, TopicError, Topics};

mod outbox;
pub use outbox::OutboxHandle;

/// Incoming messages waiting for the daemon. Small because each may be a multi-MiB image; the
/// daemon drains it at once (its own queue has a byte budget), so more would only hold memory.
pub const INCOMING_CAPACITY: usize = 4;
/// A connection that lasted this long was a real one: the next outage backs off from the start.
/// Shorter ones (refused right after CONNACK, kicked by the broker) keep the backoff growing.
pub const STABLE_CONNECTION: Duration = Duration::from_secs(10);
/// While the daemon's channel is full the poll task re-checks for shutdown this often.
const DELIVER_RETRY: Duration = Duration::from_millis(100);
/// rumqttc's request channel; our outbox does the real buffering.
const REQUEST_CHANNEL_CAPACITY: usize = 16;
const BACKOFF_BASE: Duration = Duration::from_millis(250);
/// Up to half of each reconnect delay is random, to spread a fleet's reconnects.
const BACKOFF_JITTER: f64 = 0.5;
/// How long `shutdown` waits for each step (drain, disconnect) before giving up.
const SHUTDOWN_STEP: Duration = Duration::from_secs(3);

#[derive(Debug, Error)]
pub enum LinkError {
    #[error(transparent)]
    Config(#[from] MqttConfigError),
    #[error(transparent)]
    Topic(#[from] TopicError),
    #[error("mqtt message for {topic} is {size} bytes, over mqtt.max_packet_bytes = {max}")]
    TooLarge {
        topic: String,
        size: usize,
        max: usize,
    },
    #[error("mqtt link is shutting down; message for {topic} not sent")]
    Closing { topic: String },
    #[error("no room in the mqtt outbox for {topic} within {waited:?} (is the broker reachable?)")]
    NoRoom { topic: String, waited: Duration },
    #[error("cannot encode the {kind} payload as JSON: {source}")]
    Json {
        kind: &'static str,
        source: serde_json::Error,
    },
    #[error("mqtt link must be started inside a tokio runtime")]
    NoRuntime,
}

/// A message from the broker on one of our subscriptions.
#[derive(Debug)]
pub struct Received {
    pub topic: String,
    pub incoming: Incoming,
    pub payload: Vec<u8>,
    /// The broker's stored copy of a retained message (sent on subscribe), not a live publish.
    pub retained: bool,
    /// The packet was over `mqtt.max_packet_bytes`: its size on the wire. `payload` is empty
    /// (it was skipped unread).
    pub too_large: Option<usize>,
    /// The share of the daemon's incoming byte budget this payload holds; released when the
    /// message is dropped (after the learner handled it). `None` until the daemon admits it.
    pub permit: Option<BytePermit>,
}

impl Received {
    /// A live message with its payload (what tests and benchmarks feed the learner).
    pub fn new(topic: impl Into<String>, incoming: Incoming, payload: Vec<u8>) -> Received {
        Received {
            topic: topic.into(),
            incoming,
            payload,
            retained: false,
            too_large: None,
            permit: None,
        }
    }
}

/// A snapshot of the link's counters (all since start).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LinkCounters {
    pub connected: bool,
    /// Successful connections (ConnAck received), the first included.
    pub connections: u64,
    /// Successful connections after the first: how often the link came back.
    pub reconnects: u64,
    /// Poll errors: lost connections plus failed connection attempts.
    pub connection_errors: u64,
    /// Outgoing messages dropped because the outbox (or rumqttc's replay list) was full.
    pub dropped_outgoing: u64,
    /// Incoming messages dropped because the daemon's channel was closed (shutdown).
    pub dropped_incoming: u64,
    /// Incoming publishes over `max_packet_bytes`, skipped unread (and handed on for an ack).
    pub too_large_incoming: u64,
    /// Incoming messages whose topic did not parse.
    pub rejected_incoming: u64,
    /// Messages waiting in the outbox now (never above `outbox_capacity`).
    pub queued: usize,
    /// Messages held by rumqttc for replay after the last connection error.
    pub replay_pending: usize,
}

#[derive(Debug)]
struct OutMessage {
    topic: String,
    payload: Vec<u8>,
    retain: bool,
    /// An ack: the outbox drops other messages before it (every sample gets its ack).
    keep: bool,
}

/// Acks may take the outbox past `outbox_capacity` up to this many times it (they are small,
/// and only arrive while connected); beyond it even acks are dropped, oldest first.
const KEEP_OVERFLOW: usize = 16;

/// The bounded outbox plus counters, shared by the handle and the two tasks.
#[derive(Debug)]
struct Shared {
    outbox: Mutex<VecDeque<OutMessage>>,
    capacity: usize,
    wake_pump: Notify,
    closing: AtomicBool,
    connected: AtomicBool,
    connections: AtomicU64,
    connection_errors: AtomicU64,
    dropped_outgoing: AtomicU64,
    dropped_incoming: AtomicU64,
    too_large_incoming: AtomicU64,
    rejected_incoming: AtomicU64,
    replay_pending: AtomicUsize,
    /// When the poll task last made progress: a poll returned, or it waited its turn on the
    /// daemon's channel. A task that is alive but wedged stops moving this (see
    /// [`MqttLink::poll_silent_for`]).
    last_progress: Mutex<Instant>,
}

impl Shared {
    fn new(capacity: usize) -> Shared {
        Shared {
            outbox: Mutex::new(VecDeque::with_capacity(capacity.min(1024))),
            capacity,
            wake_pump: Notify::new(),
            closing: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            connections: AtomicU64::new(0),
            connection_errors: AtomicU64::new(0),
            dropped_outgoing: AtomicU64::new(0),
            dropped_incoming: AtomicU64::new(0),
            too_large_incoming: AtomicU64::new(0),
            rejected_incoming: AtomicU64::new(0),
            replay_pending: AtomicUsize::new(0),
            last_progress: Mutex::new(Instant::now()),
        }
    }

    fn progressed(&self) {
        *self.last_progress.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    /// The queue holds plain data; a panic elsewhere while holding the lock cannot leave it
    /// inconsistent, so a poisoned lock is used as is.
    fn outbox(&self) -> MutexGuard<'_, VecDeque<OutMessage>> {
        self.outbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a message; when full, drops the oldest message that is not an ack (an ack only
    /// past `KEEP_OVERFLOW` times the capacity).
    fn push(&self, message: OutMessage) {
        {
            let mut queue = self.outbox();
            while queue.len() >= self.capacity {
                let victim = match queue.iter().position(|m| !m.keep) {
                    Some(i) => i,
                    None if queue.len() >= self.capacity * KEEP_OVERFLOW => 0,
                    None => break,
                };
                queue.remove(victim);
                self.dropped_outgoing.fetch_add(1, Ordering::Relaxed);
            }
            queue.push_back(message);
        }
        self.wake_pump.notify_one();
    }

    fn pop(&self) -> Option<OutMessage> {
        self.outbox().pop_front()
    }

    fn counters(&self) -> LinkCounters {
        let connections = self.connections.load(Ordering::Relaxed);
        LinkCounters {
            connected: self.connected.load(Ordering::Relaxed),
            connections,
            reconnects: connections.saturating_sub(1),
            connection_errors: self.connection_errors.load(Ordering::Relaxed),
            dropped_outgoing: self.dropped_outgoing.load(Ordering::Relaxed),
            dropped_incoming: self.dropped_incoming.load(Ordering::Relaxed),
            too_large_incoming: self.too_large_incoming.load(Ordering::Relaxed),
            rejected_incoming: self.rejected_incoming.load(Ordering::Relaxed),
            queued: self.outbox().len(),
            replay_pending: self.replay_pending.load(Ordering::Relaxed),
        }
    }
}

/// The size of a v3.1.1 PUBLISH packet on the wire (what rumqttc checks against its limit).
pub fn publish_packet_size(topic: &str, payload_len: usize, qos: QoS) -> usize {
    let packet_id = if qos == QoS::AtMostOnce { 0 } else { 2 };
    let remaining = 2 + topic.len() + packet_id + payload_len;
    let remaining_len_bytes = match remaining {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    1 + remaining_len_bytes + remaining
}

/// `0|1|2` to rumqttc's QoS (validation guarantees the range; anything else is 1).
pub fn qos_from(level: u8) -> QoS {
    match level {
        0 => QoS::AtMostOnce,
        2 => QoS::ExactlyOnce,
        _ => QoS::AtLeastOnce,
    }
}

/// Builds rumqttc's options from a validated config: identity, persistent session, will,
/// packet limits, credentials and TLS files (read here, so a missing file fails at start with
/// its key and path rather than on every reconnect).
pub fn mqtt_options(config: &MqttConfig, topics: &Topics) -> Result<MqttOptions, LinkError> {
    let broker = config.broker()?;
    let mut options = MqttOptions::new(config.client_id(), broker.host.clone(), broker.port);
    // A persistent session keeps our subscriptions and queues QoS 1 samples while we are away;
    // it needs the stable client id `validate` guarantees is not empty.
    options.set_clean_session(false);
    options.set_keep_alive(Duration::from_secs(config.keepalive_s));
    // rumqttc defaults to 10 KiB both ways, which would drop every image sample.
    options.set_max_packet_size(config.max_packet_bytes, config.max_packet_bytes);
    options.set_request_channel_capacity(REQUEST_CHANNEL_CAPACITY);
    options.set_last_will(LastWill::new(
        topics.availability(),
        Availability::Offline.as_str(),
        qos_from(config.qos),
        true,
    ));
    if let Some(username) = &config.username {
        let password = config.password()?;
        options.set_credentials(
            username.clone(),
            password.as_ref().map(|p| p.expose()).unwrap_or(""),
        );
    }
    if broker.scheme == Scheme::Mqtts {
        let ca = match &config.ca_file {
            Some(path) => read_bytes("ca_file", path)?,
            None => read_bytes("ca_file", SYSTEM_CA_BUNDLE.as_ref())?,
        };
        let client_auth = match (&config.client_cert, &config.client_key) {
            (Some(cert), Some(key)) => Some((
                read_bytes("client_cert", cert)?,
                read_bytes("client_key", key)?,
            )),
            _ => None,
        };
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
            ca,
            alpn: None,
            client_auth,
        }));
    }
    Ok(options)
}

/// The handle the daemon holds. Dropping it without [`MqttLink::shutdown`] aborts nothing: the
/// tasks end when the runtime does, and the broker then sends the `offline` will.
pub struct MqttLink {
    client: AsyncClient,
    topics: Topics,
    qos: QoS,
    max_packet_bytes: usize,
    shared: Arc<Shared>,
    poll_task: JoinHandle<()>,
    pump_task: JoinHandle<()>,
    /// Bumped on every ConnAck (see [`MqttLink::connections`]).
    generation: watch::Receiver<u64>,
}

impl MqttLink {
    /// Validates the config, builds the options and starts both tasks (inside the current tokio
    /// runtime). Returns at once; the connection is made in the background and retried forever.
    pub fn start(config: &MqttConfig) -> Result<(MqttLink, mpsc::Receiver<Received>), LinkError> {
        config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| LinkError::NoRuntime)?;
        let topics = config.topics()?;
        let options = mqtt_options(config, &topics)?;
        let (client, eventloop) = AsyncClient::new(options, REQUEST_CHANNEL_CAPACITY);
        let shared = Arc::new(Shared::new(config.outbox_capacity));
        let (incoming_tx, incoming_rx) = mpsc::channel(INCOMING_CAPACITY);
        let (generation_tx, generation_rx) = watch::channel(0u64);
        let generation = generation_rx.clone();
        let qos = qos_from(config.qos);
        let poll = PollTask {
            eventloop,
            shared: Arc::clone(&shared),
            incoming: incoming_tx,
            topics: topics.clone(),
            generation: generation_tx,
            backoff: Backoff::new(
                BACKOFF_BASE,
                Duration::from_secs(config.reconnect_backoff_max_s),
                BACKOFF_JITTER,
            ),
            connected_at: None,
            broker: format!("{} as {}", config.url, config.client_id()),
            first_contact: Some(config.url.clone()),
        };
        let poll_task = runtime.spawn(poll.run());
        let pump_task = runtime.spawn(run_pump(
            client.clone(),
            Arc::clone(&shared),
            generation_rx,
            topics.clone(),
            qos,
        ));
        Ok((
            MqttLink {
                client,
                topics,
                qos,
                max_packet_bytes: config.max_packet_bytes,
                shared,
                poll_task,
                pump_task,
                generation,
            },
            incoming_rx,
        ))
    }

    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    pub fn counters(&self) -> LinkCounters {
        self.shared.counters()
    }

    /// A handle on the outbox for a producer that waits for room rather than losing messages
    /// (see [`OutboxHandle`]).
    pub fn outbox(&self) -> OutboxHandle {
        OutboxHandle {
            shared: Arc::clone(&self.shared),
            topics: self.topics.clone(),
            qos: self.qos,
            max_packet_bytes: self.max_packet_bytes,
        }
    }

    /// Changes on every successful (re)connection: what must be republished on each one
    /// (retained Home Assistant configs a broker without persistence forgot) waits on this.
    pub fn connections(&self) -> watch::Receiver<u64> {
        self.generation.clone()
    }

    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Relaxed)
    }

    /// How long the poll task has gone without progress at `now`. Connected, rumqttc's poll
    /// returns at least once per keep-alive (the ping); disconnected, once per connect timeout
    /// plus backoff. Far longer means the task is wedged: see [`MqttLink::stall_limit`].
    pub fn poll_silent_for(&self, now: Instant) -> Duration {
        let last = *self
            .shared
            .last_progress
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        now.saturating_duration_since(last)
    }

    /// The silence after which the poll task counts as wedged: three keep-alives, the longest
    /// backoff and a connect timeout, with room to spare.
    pub fn stall_limit(config: &MqttConfig) -> Duration {
        Duration::from_secs(3 * config.keepalive_s + config.reconnect_backoff_max_s + 30)
    }

    /// Queues a message for any topic. Never blocks; while the broker is away the message waits
    /// in the outbox (the oldest is dropped when full). Refused only if it can never be sent
    /// (over the packet limit: rumqttc would drop the whole connection for it) or during shutdown.
    pub fn publish(
        &self,
        topic: impl Into<String>,
        payload: impl Into<Vec<u8>>,
        retain: bool,
    ) -> Result<(), LinkError> {
        self.queue(topic.into(), payload.into(), retain, false)
    }

    fn queue(
        &self,
        topic: String,
        payload: Vec<u8>,
        retain: bool,
        keep: bool,
    ) -> Result<(), LinkError> {
        if self.shared.closing.load(Ordering::Relaxed) {
            return Err(LinkError::Closing { topic });
        }
        let size = publish_packet_size(&topic, payload.len(), self.qos);
        if size > self.max_packet_bytes {
            return Err(LinkError::TooLarge {
                topic,
                size,
                max: self.max_packet_bytes,
            });
        }
        self.shared.push(OutMessage {
            topic,
            payload,
            retain,
            keep,
        });
        Ok(())
    }

    /// Queues a payload on one of the device's outgoing topics, retained as the grammar says.
    /// Acks are kept when the outbox is full (see `Shared::push`).
    pub fn publish_to(&self, kind: Outgoing, payload: impl Into<Vec<u8>>) -> Result<(), LinkError> {
        self.queue(
            self.topics.outgoing(kind),
            payload.into(),
            kind.retained(),
            kind == Outgoing::Ack,
        )
    }

    /// Serializes `value` to JSON and queues it on `kind`'s topic.
    pub fn publish_json<T: Serialize>(&self, kind: Outgoing, value: &T) -> Result<(), LinkError> {
        let payload = serde_json::to_vec(value).map_err(|source| LinkError::Json {
            kind: kind.suffix(),
            source,
        })?;
        self.publish_to(kind, payload)
    }

    /// Sends what is queued (briefly), publishes `stopped` (retained) and disconnects cleanly,
    /// so the broker does not send the `offline` will. Bounded in time: if the broker is away,
    /// the queue is abandoned and the tasks are stopped.
    pub async fn shutdown(self) {
        self.shared.closing.store(true, Ordering::Relaxed);
        let drained = tokio::time::timeout(SHUTDOWN_STEP, async {
            while self.shared.connected.load(Ordering::Relaxed) && self.shared.counters().queued > 0
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        if drained.is_err() {
            warn!("mqtt shutdown: outbox not drained in {SHUTDOWN_STEP:?}; abandoning it");
        }
        self.pump_task.abort();
        if self.shared.connected.load(Ordering::Relaxed) {
            let sent = tokio::time::timeout(SHUTDOWN_STEP, async {
                self.client
                    .publish(
                        self.topics.availability(),
                        self.qos,
                        true,
                        Availability::Stopped.as_str(),
                    )
                    .await?;
                self.client.disconnect().await
            })
            .await;
            match sent {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!("mqtt shutdown: cannot queue stopped/disconnect: {e}"),
                Err(_) => warn!("mqtt shutdown: request channel full for {SHUTDOWN_STEP:?}"),
            }
            let mut poll_task = self.poll_task;
            if tokio::time::timeout(SHUTDOWN_STEP, &mut poll_task)
                .await
                .is_err()
            {
                warn!("mqtt shutdown: no clean disconnect within {SHUTDOWN_STEP:?}");
                poll_task.abort();
            }
        } else {
            info!("mqtt shutdown: broker not connected; `stopped` not published");
            self.poll_task.abort();
        }
    }
}

/// The event loop owner; see the module doc.
struct PollTask {
    eventloop: EventLoop,
    shared: Arc<Shared>,
    incoming: mpsc::Sender<Received>,
    topics: Topics,
    /// Bumped on every ConnAck so the pump greets each new connection once.
    generation: watch::Sender<u64>,
    backoff: Backoff,
    /// When the current connection's CONNACK came (None while disconnected).
    connected_at: Option<Instant>,
    /// `url as client_id`, for log lines (never the password).
    broker: String,
    /// The broker URL until the first failed attempt has explained itself (hints::no_broker):
    /// taken then, so the explanation is said once per process.
    first_contact: Option<String>,
}

impl PollTask {
    async fn run(mut self) {
        let mut rng = rand::rngs::StdRng::from_entropy();
        loop {
            let polled = self.eventloop.poll().await;
            self.shared.progressed();
            match polled {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    self.connected_at = Some(Instant::now());
                    self.shared.connected.store(true, Ordering::Relaxed);
                    self.shared.connections.fetch_add(1, Ordering::Relaxed);
                    self.shared.replay_pending.store(0, Ordering::Relaxed);
                    self.first_contact = None;
                    info!(
                        "mqtt connected to {} (session present: {})",
                        self.broker, ack.session_present
                    );
                    self.generation.send_modify(|g| *g += 1);
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    if crate::fault::armed(crate::fault::Fault::MqttPollEnd) {
                        return; // test-only: the task ends as a bug or a panic would end it
                    }
                    if crate::fault::armed(crate::fault::Fault::MqttPollHang) {
                        // test-only: the task lives on but never polls again (a wedged await)
                        std::future::pending::<()>().await;
                    }
                    let retained = publish.retain;
                    self.hand_over(publish.topic, publish.payload.to_vec(), retained, None)
                        .await;
                }
                Ok(Event::IncomingTooLarge(head)) => {
                    self.shared
                        .too_large_incoming
                        .fetch_add(1, Ordering::Relaxed);
                    warn!(
                        "mqtt: skipped a {} byte message on {} (over mqtt.max_packet_bytes)",
                        head.size, head.topic
                    );
                    self.hand_over(head.topic, Vec::new(), head.retain, Some(head.size))
                        .await;
                }
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                    if self.shared.closing.load(Ordering::Relaxed) {
                        self.shared.connected.store(false, Ordering::Relaxed);
                        debug!("mqtt disconnected cleanly from {}", self.broker);
                        return;
                    }
                }
                Ok(_) => {}
                Err(error) if self.shared.closing.load(Ordering::Relaxed) => {
                    // Shutting down: no reconnect loop, `shutdown` gives up on this connection.
                    self.shared.connected.store(false, Ordering::Relaxed);
                    debug!(
                        "mqtt connection to {} ended during shutdown: {error}",
                        self.broker
                    );
                    return;
                }
                Err(error) => self.on_error(error, rng.gen::<f64>()).await,
            }
        }
    }

    /// Hands a message to the daemon (see [`deliver`]). Borrows only the `Sync` fields: the
    /// event loop is not `Sync`, and the poll task's future must be `Send`.
    async fn hand_over(
        &mut self,
        topic: String,
        payload: Vec<u8>,
        retained: bool,
        too_large: Option<usize>,
    ) {
        let incoming = match self.topics.parse_incoming(&topic) {
            Ok(incoming) => incoming,
            Err(e) => {
                self.shared
                    .rejected_incoming
                    .fetch_add(1, Ordering::Relaxed);
                warn!("mqtt: ignoring message: {e}");
                return;
            }
        };
        let received = Received {
            topic,
            incoming,
            payload,
            retained,
            too_large,
            permit: None,
        };
        deliver(&self.incoming, &self.shared, received).await;
    }

    async fn on_error(&mut self, error: ConnectionError, random: f64) {
        let was_connected = self.shared.connected.swap(false, Ordering::Relaxed);
        if let Some(since) = self.connected_at.take() {
            self.backoff
                .connection_ended(since.elapsed(), STABLE_CONNECTION);
        }
        self.shared
            .connection_errors
            .fetch_add(1, Ordering::Relaxed);
        // rumqttc moves unacked and queued requests into `pending` for replay; trim it so a
        // flapping broker cannot grow it without bound (the newest messages are kept).
        let pending = &mut self.eventloop.pending;
        let capacity = self.shared.capacity;
        if pending.len() > capacity {
            let excess = pending.len() - capacity;
            pending.drain(..excess);
            self.shared
                .dropped_outgoing
                .fetch_add(excess as u64, Ordering::Relaxed);
        }
        self.shared
            .replay_pending
            .store(pending.len(), Ordering::Relaxed);
        let delay = self.backoff.next_delay(random);
        if was_connected {
            warn!(
                "mqtt connection to {} lost: {error}; reconnecting in {delay:.1?}",
                self.broker
            );
        } else {
            warn!(
                "mqtt cannot connect to {} (attempt {}): {error}; retrying in {delay:.1?}",
                self.broker,
                self.backoff.attempts()
            );
            if let Some(url) = self.first_contact.take() {
                let refused = matches!(error, ConnectionError::ConnectionRefused(_));
                warn!("{}", super::hints::no_broker(&url, refused));
            }
        }
        tokio::time::sleep(delay).await;
    }
}

/// Sends a message on the daemon's channel, waiting while it is full (the socket is not read
/// meanwhile: flow control, see the module doc). Dropped and counted only when the daemon is
/// stopping.
async fn deliver(incoming: &mpsc::Sender<Received>, shared: &Shared, mut received: Received) {
    loop {
        match incoming.send_timeout(received, DELIVER_RETRY).await {
            Ok(()) => return,
            Err(mpsc::error::SendTimeoutError::Timeout(r))
                if !shared.closing.load(Ordering::Relaxed) =>
            {
                // Waiting for the daemon is flow control, not a wedged link.
                shared.progressed();
                received = r;
            }
            Err(
                mpsc::error::SendTimeoutError::Timeout(r)
                | mpsc::error::SendTimeoutError::Closed(r),
            ) => {
                shared.dropped_incoming.fetch_add(1, Ordering::Relaxed);
                warn!(
                    "mqtt: dropped incoming message on {}: the daemon is stopping",
                    r.topic
                );
                return;
            }
        }
    }
}

/// Greets each new connection, then drains the outbox while connected.
async fn run_pump(
    client: AsyncClient,
    shared: Arc<Shared>,
    mut generation: watch::Receiver<u64>,
    topics: Topics,
    qos: QoS,
) {
    let mut greeted = 0u64;
    loop {
        let current = *generation.borrow_and_update();
        if current == greeted {
            if generation.changed().await.is_err() {
                return; // the poll task is gone
            }
            continue;
        }
        greeted = current;
        // Errors below mean rumqttc's request channel is closed: the event loop is gone.
        let online = client
            .publish(
                topics.availability(),
                qos,
                true,
                Availability::Online.as_str(),
            )
            .await;
        let subscribed = client
            .subscribe_many(
                topics
                    .subscriptions()
                    .into_iter()
                    .map(|filter| rumqttc::SubscribeFilter::new(filter, qos)),
            )
            .await;
        if online.is_err() || subscribed.is_err() {
            return;
        }
        loop {
            if !shared.connected.load(Ordering::Relaxed) || *generation.borrow() != greeted {
                break;
            }
            match shared.pop() {
                Some(m) => {
                    if client
                        .publish(m.topic, qos, m.retain, m.payload)
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                None => {
                    tokio::select! {
                        _ = shared.wake_pump.notified() => {}
                        changed = generation.changed() => if changed.is_err() { return },
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packet_size_matches_rumqttc() {
        for (topic, len, qos) in [
            ("a", 0, QoS::AtMostOnce),
            ("glimpse/cam1/prediction", 100, QoS::AtLeastOnce),
            ("glimpse/cam1/sample/daisy", 16_000, QoS::AtLeastOnce),
            ("t", 2_000_000, QoS::ExactlyOnce),
            ("t", 3_000_000, QoS::AtLeastOnce),
        ] {
            let mut publish = rumqttc::Publish::new(topic, qos, vec![0u8; len]);
            // rumqttc counts the packet id only once one is assigned (on the wire it always is).
            publish.pkid = 1;
            let reference = publish.size();
            assert_eq!(
                publish_packet_size(topic, len, qos),
                reference,
                "{topic} {len}"
            );
        }
    }

    #[test]
    fn outbox_drops_the_oldest_when_full() {
        let shared = Shared::new(3);
        for i in 0..5u8 {
            shared.push(OutMessage {
                topic: format!("t/{i}"),
                payload: vec![i],
                retain: false,
                keep: false,
            });
        }
        let c = shared.counters();
        assert_eq!((c.queued, c.dropped_outgoing), (3, 2));
        let kept: Vec<String> = std::iter::from_fn(|| shared.pop())
            .map(|m| m.topic)
            .collect();
        assert_eq!(kept, vec!["t/2", "t/3", "t/4"]);
    }

    #[test]
    fn acks_survive_a_full_outbox_up_to_the_overflow_cap() {
        let shared = Shared::new(2);
        let message = |topic: &str, keep| OutMessage {
            topic: topic.into(),
            payload: Vec::new(),
            retain: false,
            keep,
        };
        shared.push(message("ack/0", true));
        for i in 0..5 {
            shared.push(message(&format!("prediction/{i}"), false));
        }
        shared.push(message("ack/1", true));
        shared.push(message("ack/2", true));
        let kept: Vec<String> = std::iter::from_fn(|| shared.pop())
            .map(|m| m.topic)
            .collect();
        assert_eq!(kept, vec!["ack/0", "ack/1", "ack/2"]);
        // Past KEEP_OVERFLOW x capacity even acks go, oldest first.
        for i in 0..2 * KEEP_OVERFLOW + 1 {
            shared.push(message(&format!("ack/{i}"), true));
        }
        assert_eq!(shared.counters().queued, 2 * KEEP_OVERFLOW);
        assert_eq!(shared.pop().unwrap().topic, "ack/1");
    }

    #[test]
    fn options_carry_identity_will_and_limits() {
        let config = MqttConfig {
            device_id: "cam1".into(),
            url: "mqtt://broker.lan:1999".into(),
            max_packet_bytes: 4 * 1024 * 1024,
            ..MqttConfig::default()
        };
        let topics = config.topics().unwrap();
        let options = mqtt_options(&config, &topics).unwrap();
        assert_eq!(options.client_id(), "glimpse-cam1");
        assert_eq!(options.broker_address(), ("broker.lan".to_string(), 1999));
        assert!(!options.clean_session());
        assert_eq!(options.max_packet_size(), 4 * 1024 * 1024);
        let will = options.last_will().unwrap();
        assert_eq!(will.topic, "glimpse/cam1/availability");
        assert_eq!(&will.message[..], b"offline");
        assert!(will.retain);
        assert!(options.credentials().is_none());
    }

    #[test]
    fn tls_files_are_read_at_start_and_named_when_missing() {
        let config = MqttConfig {
            device_id: "cam1".into(),
            url: "mqtts://broker.lan".into(),
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..MqttConfig::default()
        };
        let topics = config.topics().unwrap();
        let err = mqtt_options(&config, &topics).unwrap_err().to_string();
        assert!(
            err.contains("mqtt.ca_file") && err.contains("/nonexistent/ca.pem"),
            "{err}"
        );
    }

    #[test]
    fn start_outside_a_runtime_is_an_error() {
        let config = MqttConfig {
            device_id: "cam1".into(),
            ..MqttConfig::default()
        };
        assert!(matches!(
            MqttLink::start(&config),
            Err(LinkError::NoRuntime)
        ));
    }
}
