//! Request and response bodies of the control API (`docs/proxy-api.md`), shared by the server
//! in [`crate::control`] and the client in [`crate::client`] so the two can never disagree.
//!
//! Requests reject unknown fields: a misspelt field is an error, not a silent default.

use serde::{Deserialize, Serialize};

/// Body of `PUT /v1/routes/{name}`: creates the route or changes its upstreams.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteRequest {
    /// Address to listen on, `IP:PORT` (`[IPv6]:PORT` for IPv6). Fixed for the route's life.
    pub listen: String,
    /// Upstreams in order of preference, `IP:PORT` each. Empty puts the route in hold.
    pub upstreams: Vec<String>,
    /// How long connections of the generations this change retires may keep running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_timeout_ms: Option<u64>,
}

/// Body of `POST /v1/routes/{name}/hold` (the body may be empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldRequest {
    /// How long a parked client waits for an upstream before it is closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// Body of `POST /v1/routes/{name}/drain` (the body may be empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    /// Bring every old generation's deadline forward to at most this many ms from now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
}

/// One generation of a route as seen now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GenerationView {
    pub generation: u64,
    /// Connections of this generation still open.
    pub active: u64,
    /// True for generations replaced by a newer one (they are draining or drained).
    pub draining: bool,
    /// Connections that ended on their own after the generation started draining.
    pub ended: u64,
    /// Connections closed by the proxy at the drain deadline.
    pub cut: u64,
    /// Milliseconds left until the drain deadline, for draining generations with open
    /// connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_in_ms: Option<u64>,
}

/// One route as it is now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteView {
    pub name: String,
    /// The listen address as requested.
    pub listen: String,
    /// The address the listener is bound to (differs from `listen` only for port 0).
    pub local_addr: String,
    pub upstreams: Vec<String>,
    pub generation: u64,
    /// True when new clients are parked instead of connected.
    pub holding: bool,
    /// Clients parked now.
    pub held: u64,
    pub drain_timeout_ms: u64,
    /// The current generation first, then older ones that still have connections or were
    /// retired recently.
    pub generations: Vec<GenerationView>,
}

/// Response of `GET /v1/routes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteList {
    pub routes: Vec<RouteView>,
}

/// Response of `PUT /v1/routes/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteChange {
    /// True when the route did not exist before this request.
    pub created: bool,
    /// True when the upstreams changed and a new generation started.
    pub swapped: bool,
    /// The route's generation after the change.
    pub generation: u64,
    /// Clients that were parked in hold and are now being connected.
    pub released: u64,
    pub route: RouteView,
}

/// Final counts of one drained generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainedGeneration {
    pub generation: u64,
    pub ended: u64,
    pub cut: u64,
}

/// Response of `POST /v1/routes/{name}/drain` and `DELETE /v1/routes/{name}`: sent once every
/// old generation has no connections left.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainReport {
    pub route: String,
    pub generations: Vec<DrainedGeneration>,
    /// Parked clients closed because the route went away (DELETE only).
    #[serde(default)]
    pub held_closed: u64,
}

/// Response of `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub version: String,
    pub routes: u64,
    /// Connections open over all routes and generations.
    pub active: u64,
    pub held: u64,
}

/// Error body of every 4xx and 5xx response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What failed and why, naming the field, address or route.
    pub error: String,
    /// What to do about it, when we know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// What `run` returns after a shutdown, also logged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShutdownReport {
    pub ended: u64,
    pub cut: u64,
    pub held_closed: u64,
}
