//! One route: its listener and accept loop, its current [`Snapshot`] in an `ArcSwap`, its
//! generations and its hold queue.
//!
//! Why `ArcSwap`: the accept loop reads the snapshot once per connection, lock-free, while a
//! swap is one atomic store; neither ever waits for the other. A connection keeps the `Arc`
//! it read, so its generation and upstreams cannot change under it.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::api::RouteView;
use crate::connection;
use crate::generation::Generation;
use crate::hold::HoldQueue;
use crate::listener::AcceptFailure;
use crate::settings::Settings;
use crate::telemetry::RouteMetrics;

/// First pause of the accept loop after a failed accept; doubled per failure in a row.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
/// Longest pause of the accept loop.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Replaced generations kept for `GET /v1/routes` and drain reports once they are empty.
const RETIRED_KEPT: usize = 8;

/// What a connection reads once at accept: immutable, replaced as a whole.
pub(crate) struct Snapshot {
    pub(crate) generation: Arc<Generation>,
    pub(crate) upstreams: Arc<[SocketAddr]>,
    /// `Some` while told to hold (`POST .../hold`), with the timeout for parked clients.
    pub(crate) hold: Option<Duration>,
    pub(crate) drain_timeout: Duration,
}

impl Snapshot {
    /// True when new clients are parked: told to hold, or no upstream to go to.
    pub(crate) fn holding(&self) -> bool {
        self.hold.is_some() || self.upstreams.is_empty()
    }

    pub(crate) fn hold_timeout(&self, settings: &Settings) -> Duration {
        self.hold.unwrap_or(settings.hold_timeout)
    }
}

/// One route of the proxy.
pub(crate) struct Route {
    pub(crate) name: Arc<str>,
    /// The listen address as requested (port 0 stays 0 here).
    pub(crate) listen: SocketAddr,
    /// The address actually bound.
    pub(crate) local_addr: SocketAddr,
    pub(crate) settings: Arc<Settings>,
    state: ArcSwap<Snapshot>,
    /// The current generation first, then replaced ones (newest first). Changed only by the
    /// proxy's control operations, which are serialised; read for views and drains.
    generations: Mutex<VecDeque<Arc<Generation>>>,
    pub(crate) hold: HoldQueue,
    /// The connection cap: the accept loop takes a permit *before* accepting, so a full route
    /// leaves new clients in the kernel backlog (back-pressure) instead of closing them.
    permits: Arc<Semaphore>,
    /// Set to true to make the accept loop return, which closes the listener.
    stop: watch::Sender<bool>,
    accept_task: Mutex<Option<JoinHandle<()>>>,
    pub(crate) metrics: Arc<RouteMetrics>,
}

/// What a change of a route did.
pub(crate) struct Update {
    pub(crate) swapped: bool,
    pub(crate) released: u64,
}

impl Route {
    /// Creates the route and starts accepting on `listener` (must be called in a runtime).
    pub(crate) fn start(
        name: &str,
        listen: SocketAddr,
        listener: std::net::TcpListener,
        upstreams: Vec<SocketAddr>,
        drain_timeout: Duration,
        settings: Arc<Settings>,
    ) -> std::io::Result<Arc<Route>> {
        let listener = TcpListener::from_std(listener)?;
        let local_addr = listener.local_addr()?;
        let name: Arc<str> = Arc::from(name);
        let metrics = Arc::new(RouteMetrics::new(&name));
        let generation = Generation::new(name.clone(), 1, metrics.clone());
        metrics.generation.set(1.0);
        let snapshot = Snapshot {
            generation: generation.clone(),
            upstreams: upstreams.into(),
            hold: None,
            drain_timeout,
        };
        let route = Arc::new(Route {
            name,
            listen,
            local_addr,
            state: ArcSwap::from_pointee(snapshot),
            generations: Mutex::new(VecDeque::from([generation])),
            hold: HoldQueue::new(settings.hold_max),
            permits: Arc::new(Semaphore::new(settings.max_connections)),
            stop: watch::Sender::new(false),
            accept_task: Mutex::new(None),
            metrics,
            settings,
        });
        let task = tokio::spawn(accept_loop(route.clone(), listener));
        if let Ok(mut slot) = route.accept_task.lock() {
            *slot = Some(task);
        }
        info!(route = %route.name, listen.addr = %route.local_addr, "listener bound");
        Ok(route)
    }

    /// The snapshot new connections use now.
    pub(crate) fn current(&self) -> Arc<Snapshot> {
        self.state.load_full()
    }

    /// Sets the upstreams and drain timeout. New upstreams start a new generation and retire
    /// the old one with `drain_timeout`; a route that held is released.
    pub(crate) fn update(&self, upstreams: Vec<SocketAddr>, drain_timeout: Duration) -> Update {
        let current = self.current();
        let swapped = current.upstreams[..] != upstreams[..];
        let generation = if swapped {
            let next = Generation::new(
                self.name.clone(),
                current.generation.number + 1,
                self.metrics.clone(),
            );
            self.remember(next.clone());
            next
        } else {
            current.generation.clone()
        };
        let next = Arc::new(Snapshot {
            generation: generation.clone(),
            upstreams: upstreams.into(),
            hold: None,
            drain_timeout,
        });

        // The store is the swap: from here on every accept uses `next`.
        self.state.store(next.clone());

        if swapped {
            current.generation.retire(drain_timeout);
            self.metrics.swaps.increment(1);
            self.metrics.generation.set(generation.number as f64);
            info!(route = %self.name, generation = generation.number,
                upstreams = ?next.upstreams, "route swapped");
        }
        let released = if next.holding() {
            0
        } else {
            self.hold.release(&next)
        };
        if released > 0 {
            info!(route = %self.name, generation = generation.number, released, "hold released");
        }
        Update { swapped, released }
    }

    /// Puts the route into hold: new clients are parked for at most `timeout`.
    pub(crate) fn hold(&self, timeout: Duration) {
        let current = self.current();
        self.state.store(Arc::new(Snapshot {
            generation: current.generation.clone(),
            upstreams: current.upstreams.clone(),
            hold: Some(timeout),
            drain_timeout: current.drain_timeout,
        }));
        info!(route = %self.name, generation = current.generation.number,
            timeout_ms = timeout.as_millis() as u64, "route holding");
    }

    fn remember(&self, generation: Arc<Generation>) {
        let Ok(mut list) = self.generations.lock() else {
            return;
        };
        list.push_front(generation);

        // Forget the oldest empty replaced generations beyond the few kept for reports.
        while list.len() > RETIRED_KEPT + 1 {
            match list.iter().rposition(|g| g.active() == 0) {
                Some(index) if index > 0 => {
                    list.remove(index);
                }
                _ => break,
            }
        }
    }

    /// All generations, current first.
    pub(crate) fn generations(&self) -> Vec<Arc<Generation>> {
        self.generations
            .lock()
            .map(|list| list.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Replaced generations (draining or drained).
    pub(crate) fn retired(&self) -> Vec<Arc<Generation>> {
        self.generations()
            .into_iter()
            .filter(|g| g.is_draining())
            .collect()
    }

    /// Stops the accept loop and waits until the listener is closed.
    pub(crate) async fn stop_accepting(&self) {
        self.stop.send_replace(true);
        let task = self
            .accept_task
            .lock()
            .ok()
            .and_then(|mut slot| slot.take());
        if let Some(task) = task {
            let _ = task.await;
        }
        info!(route = %self.name, listen.addr = %self.local_addr, "listener closed");
    }

    pub(crate) fn view(&self) -> RouteView {
        let current = self.current();
        RouteView {
            name: self.name.to_string(),
            listen: self.listen.to_string(),
            local_addr: self.local_addr.to_string(),
            upstreams: current.upstreams.iter().map(|a| a.to_string()).collect(),
            generation: current.generation.number,
            holding: current.holding(),
            held: self.hold.held(),
            drain_timeout_ms: current.drain_timeout.as_millis() as u64,
            generations: self.generations().iter().map(|g| g.view()).collect(),
        }
    }

    /// Open connections over all generations.
    pub(crate) fn active(&self) -> u64 {
        self.generations().iter().map(|g| g.active()).sum()
    }
}

/// Accepts clients until told to stop. Takes a cap permit first (back-pressure), a hold slot
/// too while the route holds, and never spins on a failing accept.
async fn accept_loop(route: Arc<Route>, listener: TcpListener) {
    let mut stop = route.stop.subscribe();
    let mut backoff = ACCEPT_BACKOFF;
    loop {
        let permit = tokio::select! {
            _ = stop.wait_for(|stop| *stop) => break,
            permit = route.permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_closed) => break,
            },
        };
        let hold_slot = if route.current().holding() {
            tokio::select! {
                _ = stop.wait_for(|stop| *stop) => break,
                slot = route.hold.slots.clone().acquire_owned() => slot.ok(),
            }
        } else {
            None
        };

        let accepted = tokio::select! {
            _ = stop.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = ACCEPT_BACKOFF;
                route.metrics.accepted.increment(1);
                tokio::spawn(connection::serve(
                    route.clone(),
                    stream,
                    peer,
                    permit,
                    hold_slot,
                ));
            }
            Err(err) => {
                let failure = AcceptFailure::classify(&err);
                route.metrics.accept_error(failure.as_str());
                if failure == AcceptFailure::Transient {
                    debug!(route = %route.name, error = %err, "accept failed, retrying");
                    continue;
                }

                // Why a pause: with no descriptor left the listener stays readable, so an
                // immediate retry would spin a core; closing connections frees descriptors.
                warn!(route = %route.name, error = %err, backoff_ms = backoff.as_millis() as u64,
                    "accept failed, backing off");
                tokio::select! {
                    _ = stop.wait_for(|stop| *stop) => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
}
