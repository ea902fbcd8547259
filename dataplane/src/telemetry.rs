//! Metric names and the Prometheus recorder. Every metric of the proxy is named here, so the
//! list in `docs/proxy-api.md` has one place to be checked against.
//!
//! Hot-path counters are resolved to handles once per route ([`RouteMetrics`]): incrementing
//! a handle is one atomic add, while `counter!` with labels hashes its key on every call.

use std::fmt::Write;
use std::sync::OnceLock;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::end::EndReason;

pub const CONNECTIONS_ACTIVE: &str = "dso_proxy_connections_active";
pub const CONNECTIONS_ACCEPTED: &str = "dso_proxy_connections_accepted_total";
pub const CONNECTIONS_ENDED: &str = "dso_proxy_connections_ended_total";
pub const BYTES: &str = "dso_proxy_bytes_total";
pub const UPSTREAM_CONNECT_SECONDS: &str = "dso_proxy_upstream_connect_seconds";
pub const UPSTREAM_CONNECT_ERRORS: &str = "dso_proxy_upstream_connect_errors_total";
pub const ROUTE_SWAPS: &str = "dso_proxy_route_swaps_total";
pub const ROUTE_GENERATION: &str = "dso_proxy_route_generation";
pub const DRAINED: &str = "dso_proxy_drained_connections_total";
pub const HELD: &str = "dso_proxy_held_connections";
pub const HOLD_TIMEOUTS: &str = "dso_proxy_hold_timeouts_total";
pub const ACCEPT_ERRORS: &str = "dso_proxy_accept_errors_total";
pub const SPLICE_PHASES: &str = "dso_proxy_splice_phases_total";

/// Every metric name, for documentation and tests.
pub const ALL: [&str; 13] = [
    CONNECTIONS_ACTIVE,
    CONNECTIONS_ACCEPTED,
    CONNECTIONS_ENDED,
    BYTES,
    UPSTREAM_CONNECT_SECONDS,
    UPSTREAM_CONNECT_ERRORS,
    ROUTE_SWAPS,
    ROUTE_GENERATION,
    DRAINED,
    HELD,
    HOLD_TIMEOUTS,
    ACCEPT_ERRORS,
    SPLICE_PHASES,
];

/// Histogram buckets of the upstream connect duration, in seconds: loopback and bridge
/// connects take tens of microseconds, retries within the budget take up to a second.
const CONNECT_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

static RECORDER: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder on first use and returns its handle. `None`
/// when another recorder was installed first (then `/metrics` answers with an empty body).
pub fn recorder() -> Option<&'static PrometheusHandle> {
    RECORDER
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(UPSTREAM_CONNECT_SECONDS.to_owned()),
                    &CONNECT_BUCKETS,
                )
                .ok()?;
            builder.install_recorder().ok()
        })
        .as_ref()
}

/// Renders `dso_proxy_connections_active{route, generation}` from the live generations of
/// every route: `(route, [(generation, active)])`.
///
/// Why not a gauge in the recorder: every swap adds a generation, and the recorder keeps a
/// series for every label value it ever saw (it has no per-series removal), so 1,000 swaps
/// would leave 1,000 series at 0 forever. Rendered from the routes, the series are exactly
/// the generations a route still lists (current, draining, and the few kept after draining),
/// and a deleted route's series disappear with it.
pub fn render_active<'a>(routes: impl IntoIterator<Item = (&'a str, Vec<(u64, u64)>)>) -> String {
    let mut text = format!(
        "# HELP {CONNECTIONS_ACTIVE} Open client connections by route and generation.\n\
         # TYPE {CONNECTIONS_ACTIVE} gauge\n"
    );
    for (route, generations) in routes {
        for (generation, active) in generations {
            // Route names are checked to [A-Za-z0-9._-], so they need no label escaping.
            let _ = writeln!(
                text,
                "{CONNECTIONS_ACTIVE}{{route=\"{route}\",generation=\"{generation}\"}} {active}"
            );
        }
    }
    text.push('\n');
    text
}

/// Pre-resolved metric handles of one route.
// LIMITATION: the series of a deleted route stay at their last values — the recorder has no
// per-series removal; they are bounded by the distinct route names ever used [a recorder with
// removal, or rendering these from route state like the active gauge, would lift it].
pub(crate) struct RouteMetrics {
    route: String,
    pub(crate) accepted: Counter,
    pub(crate) bytes_to_upstream: Counter,
    pub(crate) bytes_to_client: Counter,
    pub(crate) connect_seconds: Histogram,
    pub(crate) held: Gauge,
    pub(crate) hold_timeouts: Counter,
    pub(crate) drained_ended: Counter,
    pub(crate) drained_cut: Counter,
    pub(crate) swaps: Counter,
    pub(crate) generation: Gauge,
    pub(crate) splice_phases: Counter,
    ended: [Counter; EndReason::ALL.len()],
}

impl RouteMetrics {
    pub(crate) fn new(route: &str) -> RouteMetrics {
        let r = route.to_owned();
        RouteMetrics {
            accepted: counter!(CONNECTIONS_ACCEPTED, "route" => r.clone()),
            bytes_to_upstream: counter!(BYTES, "route" => r.clone(), "direction" => "to_upstream"),
            bytes_to_client: counter!(BYTES, "route" => r.clone(), "direction" => "to_client"),
            connect_seconds: histogram!(UPSTREAM_CONNECT_SECONDS, "route" => r.clone()),
            held: gauge!(HELD, "route" => r.clone()),
            hold_timeouts: counter!(HOLD_TIMEOUTS, "route" => r.clone()),
            drained_ended: counter!(DRAINED, "route" => r.clone(), "outcome" => "ended"),
            drained_cut: counter!(DRAINED, "route" => r.clone(), "outcome" => "cut"),
            swaps: counter!(ROUTE_SWAPS, "route" => r.clone()),
            generation: gauge!(ROUTE_GENERATION, "route" => r.clone()),
            splice_phases: counter!(SPLICE_PHASES, "route" => r.clone()),
            ended: EndReason::ALL.map(|reason| {
                counter!(CONNECTIONS_ENDED, "route" => r.clone(), "reason" => reason.as_str())
            }),
            route: r,
        }
    }

    pub(crate) fn ended(&self, reason: EndReason) -> &Counter {
        // INVARIANT: `EndReason::ALL` lists the variants in declaration order (tested in
        // `end`), so the discriminant is the index.
        &self.ended[reason as usize]
    }

    /// Counts a failed upstream connect attempt by kind (refused, timeout, unreachable, ...).
    pub(crate) fn connect_error(&self, kind: &'static str) {
        counter!(UPSTREAM_CONNECT_ERRORS, "route" => self.route.clone(), "kind" => kind)
            .increment(1);
    }

    /// Counts a failed accept by kind.
    pub(crate) fn accept_error(&self, kind: &'static str) {
        counter!(ACCEPT_ERRORS, "route" => self.route.clone(), "kind" => kind).increment(1);
    }
}
