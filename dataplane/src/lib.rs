//! The dso data plane: the TCP proxy `dso-proxy` that owns the host ports of managed services.
//!
//! A *route* is one listening socket plus an ordered list of upstream addresses and a
//! *generation* number that grows whenever the upstreams change. Routes live in
//! [`arc_swap::ArcSwap`] snapshots so that a swap is one atomic store that never blocks an
//! accept. Connections of older generations keep flowing until they end or their drain
//! deadline passes; a route in *hold* parks new clients until an upstream arrives.
//!
//! Layout, by what each module owns:
//! - [`spec`]: route specifications (name, listen address, upstreams) and their validation,
//!   shared by the command line and the control API.
//! - [`settings`]: process-wide limits and timeouts with their defaults.
//! - [`listener`]: creating listening sockets with socket2 and explaining bind failures.
//! - [`proxy`]: the route registry and every change to it (put, hold, drain, delete, shutdown).
//! - `route`, `generation`, `hold`: one route's snapshot, its generations and its held clients.
//! - `connection`, `forward`, `pipe`: one proxied connection: upstream connect with retry,
//!   byte forwarding (copy or splice), half-close, idle and linger handling.
//! - [`end`]: why a connection ended, as a cheap enum counted in metrics.
//! - [`telemetry`]: metric names and the Prometheus recorder.
//! - [`control`]: the HTTP/1.1 control API on a unix socket; [`api`] holds its wire types and
//!   [`client`] a small async client for it.
//!
//! The binary (`src/main.rs`) parses flags, validates everything, binds the listeners and then
//! hands them to [`run`], so tests can run the same proxy in-process.

pub mod api;
pub mod client;
mod connection;
pub mod control;
pub mod end;
mod forward;
mod generation;
mod hold;
pub mod listener;
mod pipe;
pub mod proxy;
mod route;
pub mod settings;
pub mod spec;
pub mod telemetry;

use std::future::Future;
use std::sync::Arc;

pub use control::{ControlError, ControlSocket};
pub use end::EndReason;
pub use listener::ListenError;
pub use proxy::{Proxy, RouteError};
pub use settings::{ForwardMode, Settings};
pub use spec::RouteSpec;

/// Serves the control API (when given) and the routes of `proxy` until `shutdown` completes,
/// then stops accepting, drains every connection within the shutdown deadline and returns.
///
/// Routes are added to `proxy` before calling this (see [`Proxy::add_route`]) or later over
/// the control API.
pub async fn run(
    proxy: Arc<Proxy>,
    control: Option<ControlSocket>,
    shutdown: impl Future<Output = ()>,
) -> api::ShutdownReport {
    let control_task = control.map(|socket| tokio::spawn(control::serve(socket, proxy.clone())));

    shutdown.await;
    tracing::info!("shutdown requested");

    // Why the control server stops first: a route change arriving mid-shutdown would bind a
    // listener that nobody drains.
    if let Some(task) = control_task {
        task.abort();
        let _ = task.await;
    }
    proxy.shutdown().await
}
