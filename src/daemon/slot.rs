//! A one-item mailbox where the newest value wins: the hand-off between pipeline stages. When the
//! consumer (inference) is slower than the producer (the camera), older items are replaced and
//! counted as dropped instead of queueing without bound, so latency stays one frame deep.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

struct State<T> {
    item: Option<T>,
    closed: bool,
    replaced: u64,
}

/// Newest-wins single-slot channel shared by one or more producers and one consumer.
pub struct LatestSlot<T> {
    state: Mutex<State<T>>,
    /// Signalled when an item arrives (or the slot closes).
    ready: Condvar,
    /// Signalled when the item is taken (or the slot closes).
    taken: Condvar,
}

impl<T> Default for LatestSlot<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> LatestSlot<T> {
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State {
                item: None,
                closed: false,
                replaced: 0,
            }),
            ready: Condvar::new(),
            taken: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<T>> {
        // A panic in another pipeline thread must not cascade: the slot's state is always valid.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Puts `item` in the slot. Returns true when it replaced an item nobody had taken (a drop).
    pub fn put(&self, item: T) -> bool {
        let mut state = self.lock();
        let dropped = state.item.replace(item).is_some();
        if dropped {
            state.replaced += 1;
        }
        self.ready.notify_one();
        dropped
    }

    /// Waits up to `timeout` for an item. `None` on timeout or when closed and empty.
    pub fn take_timeout(&self, timeout: Duration) -> Option<T> {
        let mut state = self.lock();
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(item) = state.item.take() {
                self.taken.notify_all();
                return Some(item);
            }
            if state.closed {
                return None;
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return None;
            }
            state = self
                .ready
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    /// Waits up to `timeout` until the slot is empty (the consumer took the last item), so a
    /// producer that can choose when to produce (an unpaced replay, a decoder) works only on
    /// what will be consumed. True when empty; false on timeout or when closed.
    pub fn wait_empty(&self, timeout: Duration) -> bool {
        let mut state = self.lock();
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if state.closed {
                return false;
            }
            if state.item.is_none() {
                return true;
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return false;
            }
            state = self
                .taken
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .0;
        }
    }

    /// Wakes the consumer for good: `take_timeout` returns what is left, then `None`.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
        self.taken.notify_all();
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Items replaced before they were taken, since the start.
    pub fn replaced(&self) -> u64 {
        self.lock().replaced
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn newest_wins_and_drops_are_counted() {
        let slot = LatestSlot::new();
        assert!(!slot.put(1));
        assert!(slot.put(2));
        assert!(slot.put(3));
        assert_eq!(slot.take_timeout(Duration::ZERO), Some(3));
        assert_eq!(slot.take_timeout(Duration::from_millis(1)), None);
        assert_eq!(slot.replaced(), 2);
    }

    #[test]
    fn consumer_wakes_on_put_and_on_close() {
        let slot = Arc::new(LatestSlot::new());
        let producer = {
            let slot = slot.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                slot.put(7u32);
                std::thread::sleep(Duration::from_millis(20));
                slot.close();
            })
        };
        assert_eq!(slot.take_timeout(Duration::from_secs(5)), Some(7));
        assert_eq!(slot.take_timeout(Duration::from_secs(5)), None);
        assert!(slot.is_closed());
        producer.join().unwrap();
    }

    #[test]
    fn wait_empty_returns_once_the_item_is_taken() {
        let slot = Arc::new(LatestSlot::new());
        assert!(slot.wait_empty(Duration::ZERO), "a new slot is empty");
        slot.put(1u32);
        assert!(
            !slot.wait_empty(Duration::from_millis(5)),
            "full: times out"
        );
        let consumer = {
            let slot = slot.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(20));
                slot.take_timeout(Duration::ZERO)
            })
        };
        assert!(slot.wait_empty(Duration::from_secs(5)));
        assert_eq!(consumer.join().unwrap(), Some(1));
        slot.put(2);
        slot.close();
        assert!(
            !slot.wait_empty(Duration::from_secs(5)),
            "closed: false at once"
        );
    }
}
