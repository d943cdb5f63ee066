//! [`OutboxHandle`]: a way into the link's outbox for a producer that must not lose messages to
//! a full queue (the export's numbered parts: one dropped part makes the whole archive useless).
//! Instead of dropping the oldest message, the producer waits until the outbox has room. It is a
//! blocking call, for a thread of its own (the daemon streams an export on a blocking task), so
//! the daemon's event loop never waits on the broker.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::QoS;

use super::{publish_packet_size, LinkError, OutMessage, Shared};
use crate::mqtt::topics::{Outgoing, Topics};

/// How often a waiting producer looks at the outbox again.
const POLL: Duration = Duration::from_millis(5);

/// A cloneable, thread-safe handle on the outbox of one [`super::MqttLink`].
#[derive(Clone)]
pub struct OutboxHandle {
    pub(super) shared: Arc<Shared>,
    pub(super) topics: Topics,
    pub(super) qos: QoS,
    pub(super) max_packet_bytes: usize,
}

impl OutboxHandle {
    /// The largest payload one message on `kind`'s topic may carry (the packet limit less the
    /// topic and header bytes).
    pub fn max_payload(&self, kind: Outgoing) -> usize {
        let topic = self.topics.outgoing(kind);
        let overhead = publish_packet_size(&topic, 0, self.qos);
        self.max_packet_bytes.saturating_sub(overhead + 8)
    }

    /// Queues `payload` on `kind`'s topic once fewer than `room` messages wait in the outbox
    /// (and the broker is connected, so waiting messages are moving). The message is kept when
    /// the outbox later fills (like an ack). Fails when the link shuts down, or when no room came
    /// for `patience` (the broker is away or the link is stuck): the caller abandons its stream.
    pub fn publish_waiting(
        &self,
        kind: Outgoing,
        payload: Vec<u8>,
        room: usize,
        patience: Duration,
    ) -> Result<(), LinkError> {
        let topic = self.topics.outgoing(kind);
        let size = publish_packet_size(&topic, payload.len(), self.qos);
        if size > self.max_packet_bytes {
            return Err(LinkError::TooLarge {
                topic,
                size,
                max: self.max_packet_bytes,
            });
        }
        let room = room.clamp(1, self.shared.capacity.max(1));
        let started = Instant::now();
        loop {
            if self.shared.closing.load(Ordering::Relaxed) {
                return Err(LinkError::Closing { topic });
            }
            let connected = self.shared.connected.load(Ordering::Relaxed);
            if connected && self.shared.outbox().len() < room {
                break;
            }
            if started.elapsed() > patience {
                return Err(LinkError::NoRoom {
                    topic,
                    waited: patience,
                });
            }
            std::thread::sleep(POLL);
        }
        self.shared.push(OutMessage {
            topic,
            payload,
            retain: kind.retained(),
            keep: true,
        });
        Ok(())
    }

    /// Queues a message without waiting (an ack is kept when the outbox is full).
    pub fn publish_to(&self, kind: Outgoing, payload: Vec<u8>) -> Result<(), LinkError> {
        let topic = self.topics.outgoing(kind);
        if self.shared.closing.load(Ordering::Relaxed) {
            return Err(LinkError::Closing { topic });
        }
        self.shared.push(OutMessage {
            topic,
            payload,
            retain: kind.retained(),
            keep: kind == Outgoing::Ack,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(capacity: usize) -> OutboxHandle {
        OutboxHandle {
            shared: Arc::new(Shared::new(capacity)),
            topics: Topics::new("glimpse", "cam1").unwrap(),
            qos: QoS::AtLeastOnce,
            max_packet_bytes: 1 << 20,
        }
    }

    #[test]
    fn a_producer_waits_for_room_instead_of_dropping() {
        let outbox = handle(8);
        outbox.shared.connected.store(true, Ordering::Relaxed);
        let drainer = {
            let shared = Arc::clone(&outbox.shared);
            std::thread::spawn(move || {
                let mut got = Vec::new();
                while got.len() < 50 {
                    match shared.pop() {
                        Some(m) => got.push(m.payload[0]),
                        None => std::thread::sleep(Duration::from_millis(1)),
                    }
                }
                got
            })
        };
        for i in 0..50u8 {
            outbox
                .publish_waiting(Outgoing::Export, vec![i], 2, Duration::from_secs(10))
                .unwrap();
            assert!(outbox.shared.outbox().len() <= 2);
        }
        let got = drainer.join().unwrap();
        assert_eq!(got, (0..50).collect::<Vec<u8>>(), "none dropped, in order");
        assert_eq!(outbox.shared.counters().dropped_outgoing, 0);
    }

    #[test]
    fn no_room_and_shutdown_end_the_wait() {
        let outbox = handle(4);
        // Disconnected: nothing moves, so the wait gives up after its patience.
        let err = outbox
            .publish_waiting(Outgoing::Export, vec![1], 2, Duration::from_millis(30))
            .unwrap_err();
        assert!(matches!(err, LinkError::NoRoom { .. }), "{err}");
        outbox.shared.closing.store(true, Ordering::Relaxed);
        let err = outbox
            .publish_waiting(Outgoing::Export, vec![1], 2, Duration::from_secs(10))
            .unwrap_err();
        assert!(matches!(err, LinkError::Closing { .. }), "{err}");
        // The packet limit counts the topic and header: a payload of the limit itself is over.
        assert!(outbox.max_payload(Outgoing::Export) < 1 << 20);
        let err = outbox
            .publish_waiting(
                Outgoing::Export,
                vec![0; 1 << 20],
                2,
                Duration::from_secs(1),
            )
            .unwrap_err();
        assert!(matches!(err, LinkError::TooLarge { .. }), "{err}");
    }
}
