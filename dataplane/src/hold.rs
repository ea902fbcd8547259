//! Parked clients of a route in hold: accepted, not yet connected, waiting in arrival order
//! for an upstream. Bounded in count (`slots`) and in time (the hold timeout of the snapshot
//! they were parked under).
//!
//! Protocol: a parker takes the queue lock, re-reads the route snapshot and only queues itself
//! if the route still holds; a release stores the new snapshot *before* taking the lock. So a
//! client is either queued before the release (and released by it) or sees the new snapshot;
//! none can be left behind.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::route::Snapshot;

/// The parked clients of one route.
pub(crate) struct HoldQueue {
    /// One sender per parked client, oldest first. `None` once the route is closing: no one
    /// may park any more. A std mutex: held for a push or a drain, never across an await.
    waiting: Mutex<Option<VecDeque<oneshot::Sender<Arc<Snapshot>>>>>,
    /// Free places in the queue; a parked client holds one permit.
    pub(crate) slots: Arc<Semaphore>,
    held: AtomicU64,
}

/// What a client gets when it tries to park.
pub(crate) enum Parking {
    /// The route does not hold (any more): connect with this snapshot.
    Go(Arc<Snapshot>),
    /// Parked: wait on the receiver.
    Parked(oneshot::Receiver<Arc<Snapshot>>),
    /// The route is being removed.
    Closed,
}

impl HoldQueue {
    pub(crate) fn new(max: usize) -> HoldQueue {
        HoldQueue {
            waiting: Mutex::new(Some(VecDeque::new())),
            slots: Arc::new(Semaphore::new(max)),
            held: AtomicU64::new(0),
        }
    }

    /// A free place in the queue, if there is one.
    pub(crate) fn try_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }

    /// Parks a client unless `current()` (read under the lock) says the route stopped
    /// holding.
    pub(crate) fn park(&self, current: impl Fn() -> Arc<Snapshot>) -> Parking {
        let Ok(mut guard) = self.waiting.lock() else {
            return Parking::Closed;
        };
        let Some(queue) = guard.as_mut() else {
            return Parking::Closed;
        };
        let snapshot = current();
        if !snapshot.holding() {
            return Parking::Go(snapshot);
        }
        // Forget clients that gave up (timed out) so the queue stays bounded by the slots.
        queue.retain(|sender| !sender.is_closed());
        let (tx, rx) = oneshot::channel();
        queue.push_back(tx);
        Parking::Parked(rx)
    }

    /// Hands `snapshot` to every parked client in arrival order; returns how many took it.
    // LIMITATION: the clients are woken in arrival order and start connecting in that order,
    // but connect concurrently, so the upstream may accept them in a slightly different order
    // [connecting them one by one would cost one connect time per parked client].
    pub(crate) fn release(&self, snapshot: &Arc<Snapshot>) -> u64 {
        let Ok(mut guard) = self.waiting.lock() else {
            return 0;
        };
        let Some(queue) = guard.as_mut() else {
            return 0;
        };
        let mut released = 0;
        while let Some(sender) = queue.pop_front() {
            if sender.send(snapshot.clone()).is_ok() {
                released += 1;
            }
        }
        released
    }

    /// Closes the queue: parked clients wake with an error and are closed; no one may park
    /// any more. Returns how many were parked.
    pub(crate) fn close(&self) -> u64 {
        let Ok(mut guard) = self.waiting.lock() else {
            return 0;
        };
        guard.take().map_or(0, |queue| {
            queue.iter().filter(|s| !s.is_closed()).count() as u64
        })
    }

    pub(crate) fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }

    pub(crate) fn enter(&self) {
        self.held.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn leave(&self) {
        self.held.fetch_sub(1, Ordering::Relaxed);
    }
}
