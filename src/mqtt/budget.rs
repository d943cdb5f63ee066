//! `ByteBudget`: how many bytes of incoming payloads may wait between the broker and the learner.
//!
//! A queue bounded by count alone lets its memory follow the senders: 64 waiting samples of
//! 8 MiB are half a GiB. The daemon admits a payload only with a [`BytePermit`] for its size; the
//! permit travels with the message and gives its bytes back when the message is dropped (after
//! the learner is done with it). What does not fit is refused at once (`busy` ack), never held.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

#[derive(Debug)]
struct Inner {
    max: usize,
    used: AtomicUsize,
}

/// A shared byte budget. Cloning shares it.
#[derive(Debug, Clone)]
pub struct ByteBudget {
    inner: Arc<Inner>,
}

/// `bytes` of a [`ByteBudget`], held until dropped.
#[derive(Debug)]
pub struct BytePermit {
    inner: Arc<Inner>,
    bytes: usize,
}

impl ByteBudget {
    pub fn new(max: usize) -> ByteBudget {
        ByteBudget {
            inner: Arc::new(Inner {
                max,
                used: AtomicUsize::new(0),
            }),
        }
    }

    /// A permit for `bytes` if they fit in what is left. A message larger than the whole budget
    /// is admitted only when nothing else waits, so one of any size (up to the packet limit)
    /// can always get through an idle device.
    pub fn try_acquire(&self, bytes: usize) -> Option<BytePermit> {
        let admitted = self
            .inner
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                let fits = used
                    .checked_add(bytes)
                    .is_some_and(|total| total <= self.inner.max);
                (fits || used == 0).then(|| used.saturating_add(bytes))
            });
        admitted.ok().map(|_| BytePermit {
            inner: Arc::clone(&self.inner),
            bytes,
        })
    }

    /// Bytes held by permits now.
    pub fn used(&self) -> usize {
        self.inner.used.load(Ordering::Acquire)
    }

    pub fn max(&self) -> usize {
        self.inner.max
    }
}

impl BytePermit {
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for BytePermit {
    fn drop(&mut self) {
        self.inner.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_hold_bytes_until_dropped() {
        let budget = ByteBudget::new(100);
        let a = budget.try_acquire(60).unwrap();
        assert!(budget.try_acquire(50).is_none(), "60 + 50 > 100");
        let b = budget.try_acquire(40).unwrap();
        assert_eq!(budget.used(), 100);
        drop(a);
        assert_eq!(budget.used(), 40);
        assert_eq!(budget.try_acquire(60).unwrap().bytes(), 60);
        drop(b);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn one_oversized_message_passes_only_an_idle_budget() {
        let budget = ByteBudget::new(100);
        let big = budget.try_acquire(500).expect("idle: admitted");
        assert!(
            budget.try_acquire(1).is_none(),
            "over budget while it waits"
        );
        drop(big);
        let small = budget.try_acquire(1).unwrap();
        assert!(budget.try_acquire(500).is_none(), "not idle: refused");
        drop(small);
    }

    #[test]
    fn shared_across_clones_and_threads() {
        let budget = ByteBudget::new(1_000);
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let budget = budget.clone();
                std::thread::spawn(move || {
                    for _ in 0..1_000 {
                        if let Some(p) = budget.try_acquire(300) {
                            assert!(budget.used() <= 1_000);
                            drop(p);
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(budget.used(), 0);
    }
}
