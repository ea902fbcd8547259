//! The route registry and every change to it: create or change (`put`), hold, drain, delete,
//! shutdown. Changes are serialised by one async mutex so two control calls never interleave
//! half-way; the accept loops and connections never take it.
//!
//! Every change validates its whole input before touching anything, so a refused request
//! leaves the proxy exactly as it was.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use thiserror::Error;
use tracing::info;

use crate::api::{
    DrainReport, DrainRequest, Health, HoldRequest, RouteChange, RouteRequest, RouteView,
    ShutdownReport,
};
use crate::listener::{self, ListenError};
use crate::route::Route;
use crate::settings::{MAX_MS, Settings};
use crate::spec::{RouteSpec, SpecError};

/// Why a route change was refused. Nothing was changed when any of these is returned.
#[derive(Debug, Error)]
pub enum RouteError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("field {field} = {value} is out of range 1..={MAX_MS}")]
    OutOfRange { field: &'static str, value: u64 },
    #[error("route {name:?} does not exist")]
    NotFound { name: String },
    #[error("route {name:?} listens on {current}; its listen address cannot change to {requested}")]
    ListenChanged {
        name: String,
        current: SocketAddr,
        requested: SocketAddr,
    },
    #[error("listen address {addr} is already used by route {other:?}")]
    ListenConflict { addr: SocketAddr, other: String },
    #[error("route {name:?} already exists")]
    Duplicate { name: String },
    #[error("cannot create route {name:?}")]
    Bind {
        name: String,
        #[source]
        source: ListenError,
    },
    #[error("registering the listener of route {name:?} with the runtime failed")]
    Register {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the proxy is shutting down")]
    ShuttingDown,
}

impl RouteError {
    /// The HTTP status of this error in the control API.
    pub fn status(&self) -> u16 {
        match self {
            RouteError::Spec(_) | RouteError::OutOfRange { .. } => 400,
            RouteError::NotFound { .. } => 404,
            RouteError::ListenChanged { .. }
            | RouteError::ListenConflict { .. }
            | RouteError::Duplicate { .. } => 409,
            RouteError::Bind { source, .. } if source.is_in_use() => 409,
            RouteError::Bind { source, .. } => match source {
                ListenError::Bind { source: io, .. }
                    if io.kind() == std::io::ErrorKind::PermissionDenied =>
                {
                    403
                }
                _ => 400,
            },
            RouteError::Register { .. } => 500,
            RouteError::ShuttingDown => 503,
        }
    }

    /// What to do about it, when we know.
    pub fn hint(&self) -> Option<String> {
        match self {
            RouteError::ListenChanged { name, .. } => Some(format!(
                "DELETE /v1/routes/{name} first, then PUT it with the new address"
            )),
            RouteError::ListenConflict { other, .. } => Some(format!(
                "use another address or change route {other:?} instead"
            )),
            RouteError::Bind { source, .. } => source.hint(),
            _ => None,
        }
    }
}

/// The proxy: routes by name plus the settings they share.
pub struct Proxy {
    settings: Arc<Settings>,
    /// Routes by name. A std mutex: only held to look up, insert or remove, never across an
    /// await.
    routes: Mutex<BTreeMap<String, Arc<Route>>>,
    /// Serialises changes (put, hold, delete, shutdown).
    changes: tokio::sync::Mutex<()>,
    closing: AtomicBool,
}

impl Proxy {
    pub fn new(settings: Settings) -> Arc<Proxy> {
        crate::pipe::set_size(settings.pipe_size);
        Arc::new(Proxy {
            settings: Arc::new(settings),
            routes: Mutex::new(BTreeMap::new()),
            changes: tokio::sync::Mutex::new(()),
            closing: AtomicBool::new(false),
        })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Adds a route whose listener was bound beforehand (the command line binds every
    /// listener before starting). Must be called inside the tokio runtime.
    pub fn add_route(
        &self,
        spec: RouteSpec,
        listener: std::net::TcpListener,
    ) -> Result<RouteView, RouteError> {
        let mut routes = self.routes.lock().map_err(|_| RouteError::ShuttingDown)?;
        if routes.contains_key(&spec.name) {
            return Err(RouteError::Duplicate { name: spec.name });
        }
        let route = Route::start(
            &spec.name,
            spec.listen,
            listener,
            spec.upstreams,
            self.settings.drain_timeout,
            self.settings.clone(),
        )
        .map_err(|source| RouteError::Register {
            name: spec.name.clone(),
            source,
        })?;
        let view = route.view();
        routes.insert(spec.name, route);
        Ok(view)
    }

    fn get(&self, name: &str) -> Result<Arc<Route>, RouteError> {
        self.routes
            .lock()
            .ok()
            .and_then(|routes| routes.get(name).cloned())
            .ok_or_else(|| RouteError::NotFound {
                name: name.to_owned(),
            })
    }

    fn all(&self) -> Vec<Arc<Route>> {
        self.routes
            .lock()
            .map(|routes| routes.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn routes(&self) -> Vec<RouteView> {
        self.all().iter().map(|route| route.view()).collect()
    }

    pub fn route(&self, name: &str) -> Result<RouteView, RouteError> {
        Ok(self.get(name)?.view())
    }

    /// `dso_proxy_connections_active` for every live generation of every route, in the
    /// Prometheus text format (see [`crate::telemetry::render_active`]).
    pub fn active_metrics(&self) -> String {
        let routes = self.all();
        crate::telemetry::render_active(routes.iter().map(|route| {
            let generations = route.generations();
            let counts = generations.iter().map(|g| (g.number, g.active())).collect();
            (&*route.name, counts)
        }))
    }

    pub fn health(&self) -> Health {
        let routes = self.all();
        Health {
            status: if self.closing.load(Ordering::Relaxed) {
                "stopping"
            } else {
                "ok"
            }
            .into(),
            version: env!("CARGO_PKG_VERSION").into(),
            routes: routes.len() as u64,
            active: routes.iter().map(|r| r.active()).sum(),
            held: routes.iter().map(|r| r.hold.held()).sum(),
        }
    }

    /// Creates the route or changes its upstreams (`PUT /v1/routes/{name}`). Changing only
    /// the upstreams never touches the listener.
    pub async fn put_route(
        &self,
        name: &str,
        request: &RouteRequest,
    ) -> Result<RouteChange, RouteError> {
        let spec = RouteSpec::from_parts(name, &request.listen, &request.upstreams)?;
        let drain_timeout = check_ms("drain_timeout_ms", request.drain_timeout_ms)?
            .unwrap_or(self.settings.drain_timeout);

        let _change = self.changes.lock().await;
        if self.closing.load(Ordering::Relaxed) {
            return Err(RouteError::ShuttingDown);
        }

        if let Ok(route) = self.get(name) {
            // The address a port-0 route was given, or the one it got: both mean "unchanged".
            if route.listen != spec.listen && route.local_addr != spec.listen {
                return Err(RouteError::ListenChanged {
                    name: name.to_owned(),
                    current: route.listen,
                    requested: spec.listen,
                });
            }
            let update = route.update(spec.upstreams, drain_timeout);
            let view = route.view();
            return Ok(RouteChange {
                created: false,
                swapped: update.swapped,
                generation: view.generation,
                released: update.released,
                route: view,
            });
        }

        // A new route: refuse an address another route holds (the same one, or the same port
        // on the wildcard address of its family) before asking the kernel, so the message
        // names the route.
        if spec.listen.port() != 0
            && let Some(other) = self
                .all()
                .into_iter()
                .find(|r| overlaps(r.local_addr, spec.listen))
        {
            return Err(RouteError::ListenConflict {
                addr: spec.listen,
                other: other.name.to_string(),
            });
        }
        let listener = listener::bind(spec.listen, self.settings.backlog).map_err(|source| {
            RouteError::Bind {
                name: name.to_owned(),
                source,
            }
        })?;
        let route = Route::start(
            name,
            spec.listen,
            listener,
            spec.upstreams,
            drain_timeout,
            self.settings.clone(),
        )
        .map_err(|source| RouteError::Register {
            name: name.to_owned(),
            source,
        })?;
        let view = route.view();
        if let Ok(mut routes) = self.routes.lock() {
            routes.insert(name.to_owned(), route);
        }
        info!(route = %name, listen.addr = %view.local_addr, upstreams = ?view.upstreams,
            "route created");
        Ok(RouteChange {
            created: true,
            swapped: false,
            generation: view.generation,
            released: 0,
            route: view,
        })
    }

    /// Puts the route into hold (`POST /v1/routes/{name}/hold`) until the next PUT.
    pub async fn hold_route(
        &self,
        name: &str,
        request: &HoldRequest,
    ) -> Result<RouteView, RouteError> {
        let timeout =
            check_ms("timeout_ms", request.timeout_ms)?.unwrap_or(self.settings.hold_timeout);
        let _change = self.changes.lock().await;
        let route = self.get(name)?;
        route.hold(timeout);
        Ok(route.view())
    }

    /// Waits until every replaced generation of the route has no connection left
    /// (`POST /v1/routes/{name}/drain`), optionally bringing their deadlines forward.
    pub async fn drain_route(
        &self,
        name: &str,
        request: &DrainRequest,
    ) -> Result<DrainReport, RouteError> {
        let deadline = check_ms("deadline_ms", request.deadline_ms)?;
        let route = self.get(name)?;
        let retired = route.retired();
        if let Some(deadline) = deadline {
            for generation in &retired {
                generation.retire(deadline);
            }
        }
        for generation in &retired {
            generation.idle().await;
        }
        Ok(DrainReport {
            route: name.to_owned(),
            generations: retired.iter().map(|g| g.drained()).collect(),
            held_closed: 0,
        })
    }

    /// Removes the route (`DELETE /v1/routes/{name}`): stops accepting and closes the
    /// listener, closes parked clients, then drains every generation within the route's drain
    /// timeout.
    pub async fn delete_route(&self, name: &str) -> Result<DrainReport, RouteError> {
        let route = {
            let _change = self.changes.lock().await;
            let route = self
                .routes
                .lock()
                .ok()
                .and_then(|mut routes| routes.remove(name))
                .ok_or_else(|| RouteError::NotFound {
                    name: name.to_owned(),
                })?;
            route.stop_accepting().await;
            route
        };
        let held_closed = begin_close(&route, route.current().drain_timeout);
        let report = finish_close(&route, held_closed).await;
        info!(route = %name, held_closed = report.held_closed, "route deleted");
        Ok(report)
    }

    /// Stops accepting on every route, closes parked clients and drains every connection
    /// within the shutdown deadline.
    pub async fn shutdown(&self) -> ShutdownReport {
        self.closing.store(true, Ordering::Relaxed);
        let _change = self.changes.lock().await;
        let routes: Vec<Arc<Route>> = self
            .routes
            .lock()
            .map(|mut r| std::mem::take(&mut *r).into_values().collect())
            .unwrap_or_default();
        for route in &routes {
            route.stop_accepting().await;
        }

        // Every deadline starts now, for all routes at once; then wait for each in turn.
        let deadline = self.settings.shutdown_drain;
        let held: Vec<u64> = routes
            .iter()
            .map(|route| begin_close(route, deadline))
            .collect();
        let mut total = ShutdownReport::default();
        for (route, held_closed) in routes.iter().zip(held) {
            let report = finish_close(route, held_closed).await;
            total.held_closed += report.held_closed;
            for generation in report.generations {
                total.ended += generation.ended;
                total.cut += generation.cut;
            }
        }
        info!(
            drain.ended = total.ended,
            drain.cut = total.cut,
            held_closed = total.held_closed,
            "shutdown drained"
        );
        total
    }
}

/// Closes the hold queue of a route that no longer accepts and starts draining all of its
/// generations with `deadline`; returns how many parked clients were closed.
fn begin_close(route: &Route, deadline: Duration) -> u64 {
    let held_closed = route.hold.close();
    for generation in route.generations() {
        generation.retire(deadline);
    }
    held_closed
}

/// Waits until every generation of a closing route is empty.
async fn finish_close(route: &Route, held_closed: u64) -> DrainReport {
    let generations = route.generations();
    for generation in &generations {
        generation.idle().await;
    }
    DrainReport {
        route: route.name.to_string(),
        generations: generations.iter().map(|g| g.drained()).collect(),
        held_closed,
    }
}

/// True when listening on `a` and on `b` cannot both succeed: same port and family, and the
/// same IP or either one the wildcard (`0.0.0.0`, or `[::]` which is IPv6-only here).
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port()
        && a.is_ipv4() == b.is_ipv4()
        && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

/// Checks an optional millisecond field and turns it into a duration.
fn check_ms(field: &'static str, value: Option<u64>) -> Result<Option<Duration>, RouteError> {
    match value {
        None => Ok(None),
        Some(ms) if (1..=MAX_MS).contains(&ms) => Ok(Some(Duration::from_millis(ms))),
        Some(ms) => Err(RouteError::OutOfRange { field, value: ms }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn wildcard_and_specific_addresses_on_one_port_overlap() {
        assert!(overlaps(addr("127.0.0.1:80"), addr("127.0.0.1:80")));
        assert!(overlaps(addr("0.0.0.0:80"), addr("127.0.0.1:80")));
        assert!(overlaps(addr("127.0.0.2:80"), addr("0.0.0.0:80")));
        assert!(overlaps(addr("[::]:80"), addr("[::1]:80")));
        assert!(!overlaps(addr("127.0.0.1:80"), addr("127.0.0.2:80")));
        assert!(!overlaps(addr("0.0.0.0:80"), addr("0.0.0.0:81")));
        assert!(
            !overlaps(addr("[::]:80"), addr("0.0.0.0:80")),
            "[::] is IPv6-only"
        );
    }
}
