//! Generations of a route: every change of upstreams starts a new one. A generation counts its
//! open connections; once replaced it *drains*: its connections keep flowing until they end
//! or its deadline passes, then the rest are cut.
//!
//! Protocol, carried by the fields of [`Generation`]:
//! - each connection holds a [`Member`] for its whole life; dropping it decrements `active`
//!   (a watch channel, so a drain waiter cannot miss the last decrement);
//! - [`Generation::retire`] sets a deadline (a watch channel too, so it can be brought
//!   forward) and starts one drain task that waits for `active == 0` or the deadline;
//! - at the deadline the drain task flips `cut`; every connection task selects on it and
//!   closes both sockets.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::api::{DrainedGeneration, GenerationView};
use crate::end::EndReason;
use crate::telemetry::RouteMetrics;

/// One generation of one route.
pub(crate) struct Generation {
    pub(crate) number: u64,
    route: Arc<str>,
    /// Open connections. A watch so that waiters see the moment it reaches zero.
    active: watch::Sender<u64>,
    /// `None` while current; the drain deadline once replaced.
    deadline: watch::Sender<Option<Instant>>,
    /// Flipped to true at the drain deadline; connections select on it.
    cut: watch::Sender<bool>,
    /// Connections that ended on their own while draining.
    ended: AtomicU64,
    /// Connections closed at the deadline.
    cut_count: AtomicU64,
    metrics: Arc<RouteMetrics>,
}

/// Membership of one connection in a generation; dropping it counts the connection out.
pub(crate) struct Member {
    generation: Arc<Generation>,
    reason: Option<EndReason>,
}

impl Generation {
    pub(crate) fn new(route: Arc<str>, number: u64, metrics: Arc<RouteMetrics>) -> Arc<Self> {
        Arc::new(Generation {
            number,
            route,
            active: watch::Sender::new(0),
            deadline: watch::Sender::new(None),
            cut: watch::Sender::new(false),
            ended: AtomicU64::new(0),
            cut_count: AtomicU64::new(0),
            metrics,
        })
    }

    /// Counts a new connection in; the returned member counts it out when dropped.
    pub(crate) fn join(self: &Arc<Self>) -> Member {
        self.active.send_modify(|n| *n += 1);
        Member {
            generation: self.clone(),
            reason: None,
        }
    }

    pub(crate) fn active(&self) -> u64 {
        *self.active.borrow()
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.deadline.borrow().is_some()
    }

    /// Resolves when this generation's connections must be cut.
    pub(crate) async fn cut_signal(&self) {
        let mut rx = self.cut.subscribe();
        // An error means the sender is gone, which cannot happen while `self` lives.
        let _ = rx.wait_for(|cut| *cut).await;
    }

    /// Resolves when no connection of this generation is open.
    pub(crate) async fn idle(&self) {
        let mut rx = self.active.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// Starts draining with `timeout`, or brings an existing deadline forward to it. The first
    /// call spawns the drain task; a later call only ever shortens the deadline.
    pub(crate) fn retire(self: &Arc<Self>, timeout: Duration) {
        let wanted = Instant::now() + timeout;
        let mut first = false;
        self.deadline.send_modify(|deadline| match deadline {
            Some(current) if *current <= wanted => {}
            Some(current) => *current = wanted,
            None => {
                *deadline = Some(wanted);
                first = true;
            }
        });
        if first {
            tokio::spawn(self.clone().drain());
        }
    }

    /// The drain task: waits for the connections to end, cuts the rest at the deadline.
    async fn drain(self: Arc<Self>) {
        let started = Instant::now();
        info!(route = %self.route, generation = self.number, active = self.active(),
            "drain started");
        let mut deadline_rx = self.deadline.subscribe();
        loop {
            let Some(deadline) = *deadline_rx.borrow_and_update() else {
                return;
            };
            tokio::select! {
                _ = self.idle() => break,
                _ = tokio::time::sleep_until(deadline) => {
                    let open = self.active();
                    self.cut.send_replace(true);
                    if open > 0 {
                        warn!(route = %self.route, generation = self.number, open,
                            "drain deadline passed, cutting connections");
                    }
                    self.idle().await;
                    break;
                }
                _ = deadline_rx.changed() => continue,
            }
        }
        info!(
            route = %self.route,
            generation = self.number,
            drain.ended = self.ended.load(Ordering::Relaxed),
            drain.cut = self.cut_count.load(Ordering::Relaxed),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "drain finished"
        );
    }

    pub(crate) fn view(&self) -> GenerationView {
        let active = self.active();
        let deadline_in_ms = match *self.deadline.borrow() {
            Some(deadline) if active > 0 => Some(
                deadline
                    .saturating_duration_since(Instant::now())
                    .as_millis() as u64,
            ),
            _ => None,
        };
        GenerationView {
            generation: self.number,
            active,
            draining: self.is_draining(),
            ended: self.ended.load(Ordering::Relaxed),
            cut: self.cut_count.load(Ordering::Relaxed),
            deadline_in_ms,
        }
    }

    pub(crate) fn drained(&self) -> DrainedGeneration {
        DrainedGeneration {
            generation: self.number,
            ended: self.ended.load(Ordering::Relaxed),
            cut: self.cut_count.load(Ordering::Relaxed),
        }
    }
}

impl Member {
    pub(crate) fn generation(&self) -> &Arc<Generation> {
        &self.generation
    }

    /// Records how the connection ended; read when the member is dropped.
    pub(crate) fn set_reason(&mut self, reason: EndReason) {
        self.reason = Some(reason);
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let generation = &self.generation;
        if generation.is_draining() {
            if self.reason == Some(EndReason::DrainDeadline) {
                generation.cut_count.fetch_add(1, Ordering::Relaxed);
                generation.metrics.drained_cut.increment(1);
            } else {
                generation.ended.fetch_add(1, Ordering::Relaxed);
                generation.metrics.drained_ended.increment(1);
            }
        }
        generation.active.send_modify(|n| *n = n.saturating_sub(1));
    }
}
