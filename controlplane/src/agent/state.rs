//! What the agent's surfaces (REST API, IPC socket) see: one shared [`AgentState`] with the
//! detector handle, the event channel, readiness and the proxy's state.
//!
//! Holds no secret value except the webhook token, which is only ever compared.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use dataplane::client::ProxyClient;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;

use crate::detect::Detector;
use crate::events::EventSender;
use crate::secret::SecretValue;

/// The proxy as the agent last saw it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ProxyState {
    /// Control socket.
    pub socket: PathBuf,
    /// Whether it answered the last health check.
    pub up: bool,
    /// Pid of the proxy the agent started (none when adopted from `up`).
    pub pid: Option<u32>,
    /// True when the agent found the proxy running and adopted it.
    pub adopted: bool,
    /// How often the agent restarted it.
    pub restarts: u64,
    /// Routes it had at the last reconcile.
    pub routes: usize,
    /// Connections open over all routes at the last health check.
    pub active: u64,
    /// Routes the last reconcile changed.
    pub last_reconcile_changed: usize,
    /// Whether a managed service has a proxied port (a proxy that is down then matters).
    pub needed: bool,
}

/// One managed service as the status shows it.
#[derive(Clone, Debug, Serialize)]
pub struct ServiceView {
    /// `project/service`.
    pub service: String,
    /// Labelled strategy.
    pub strategy: String,
    /// Container names.
    pub containers: Vec<String>,
    /// Reference texts.
    pub references: Vec<String>,
    /// Route names with their generation when known.
    pub routes: Vec<RouteStatus>,
}

/// A route of a managed service.
#[derive(Clone, Debug, Serialize)]
pub struct RouteStatus {
    /// Route name.
    pub route: String,
    /// Listen address.
    pub listen: String,
    /// Generation in the proxy, when it has the route.
    pub generation: Option<u64>,
    /// Open connections, when known.
    pub active: Option<u64>,
}

/// Static facts about this agent.
#[derive(Clone, Debug, Serialize)]
pub struct AgentInfo {
    /// Version.
    pub version: String,
    /// Process id.
    pub pid: u32,
    /// Configuration file.
    pub config: PathBuf,
    /// IPC socket.
    pub socket: PathBuf,
    /// REST address.
    pub api_address: SocketAddr,
    /// Runtime directory.
    pub runtime_dir: PathBuf,
    /// State directory.
    pub state_dir: PathBuf,
    /// Start time, RFC 3339.
    pub started: String,
    /// Base watch interval, seconds.
    pub watch_interval_s: f64,
    /// Provider names.
    pub providers: Vec<String>,
    /// The local vault file it reads (`DSO_HOME/vault.enc`), when one is located: the CLI
    /// resolves through this agent only when it would read the same vault.
    pub vault: Option<PathBuf>,
}

/// Shared by every surface.
pub struct AgentState {
    /// Static facts.
    pub info: AgentInfo,
    /// The event channel (subscribe for `/v1/events`).
    pub events: EventSender,
    /// The change detector.
    pub detector: Detector,
    /// Client of the proxy's control socket.
    pub proxy_client: ProxyClient,
    /// The proxy as last seen.
    pub proxy: Mutex<ProxyState>,
    /// Managed services as last listed.
    pub services: Mutex<Vec<ServiceView>>,
    /// Set once start-up recovery has finished.
    pub recovered: AtomicBool,
    /// Where values come from (the agent's providers): `POST /v1/resolve` reads through it.
    pub values: std::sync::Arc<dyn crate::resolve::ValueSource>,
    /// Bearer token of `POST /v1/webhook`, when the webhook is enabled.
    pub webhook_token: Option<SecretValue>,
    /// The Prometheus recorder of this process.
    pub metrics: Option<PrometheusHandle>,
}

impl AgentState {
    /// Ready: recovery done and the proxy answering (or not needed by any service).
    pub fn ready(&self) -> bool {
        let proxy = lock(&self.proxy);
        self.recovered.load(Ordering::SeqCst) && (proxy.up || !proxy.needed)
    }

    /// The `/v1/status` document.
    pub fn status(&self) -> serde_json::Value {
        let detect = self.detector.status();
        serde_json::json!({
            "agent": self.info,
            "ready": self.ready(),
            "recovered": self.recovered.load(Ordering::SeqCst),
            "proxy": *lock(&self.proxy),
            "services": *lock(&self.services),
            "references": detect.references,
            "pending": {
                "coalescing": detect.coalescing,
                "rotating": detect.rotating,
                "queued": detect.queued,
            },
            "last_rotations": detect.last_rotations,
        })
    }
}

/// Shared handle.
pub type Shared = Arc<AgentState>;

/// Locks a std mutex; a poisoned lock only means a panic elsewhere.
pub fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
