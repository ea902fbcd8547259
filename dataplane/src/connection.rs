//! One proxied client connection from accept to close: hold (if the route holds), upstream
//! connect with a bounded retry, forwarding, and the end reason that is counted and logged.
//!
//! Owns both sockets; dropping them is what closes the connection, so every path out of
//! [`serve`] closes both.

use std::io;
use std::net::{Shutdown, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tracing::debug;

use crate::end::EndReason;
use crate::forward::{self, Forwarding, Shared};
use crate::hold::Parking;
use crate::route::{Route, Snapshot};

/// First pause between two rounds over all upstreams; doubled per round.
const RETRY_DELAY: Duration = Duration::from_millis(25);
/// Longest pause between two rounds.
const RETRY_DELAY_MAX: Duration = Duration::from_millis(200);
/// Idle time before the first keepalive probe on both legs.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// Time between keepalive probes.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a client closed by the proxy (hold timeout) may take to send its FIN back
/// before the socket is dropped anyway.
const CLOSE_GRACE: Duration = Duration::from_millis(500);

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Serves one accepted client. `_permit` is the route's connection-cap permit, released when
/// this returns; `hold_slot` is a hold-queue place reserved by the accept loop, if any.
pub(crate) async fn serve(
    route: Arc<Route>,
    client: TcpStream,
    peer: SocketAddr,
    _permit: OwnedSemaphorePermit,
    hold_slot: Option<OwnedSemaphorePermit>,
) {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    set_options(&client);

    // Step 1: read the route once; park the client if the route holds.
    let mut snapshot = route.current();
    if snapshot.holding() {
        match hold(&route, hold_slot, &snapshot).await {
            Ok(released) => snapshot = released,
            Err(reason) => {
                finish_unconnected(&route, id, peer, reason);
                close_cleanly(client).await;
                return;
            }
        }
    }

    // Step 2: count the connection into its generation before connecting, so a drain sees
    // it from the start.
    let mut member = snapshot.generation.join();
    let generation = member.generation().clone();
    let upstream = match connect(&route, &snapshot).await {
        Some(upstream) => upstream,
        None => {
            member.set_reason(EndReason::ConnectFailed);
            finish_unconnected(&route, id, peer, EndReason::ConnectFailed);
            close_cleanly(client).await;
            return;
        }
    };
    set_options(&upstream);
    let upstream_addr = upstream.peer_addr().ok();

    // Step 3: forward until both sides are done, a side fails, a timeout fires or the
    // generation's drain deadline cuts the connection.
    let settings = &route.settings;
    let policy = Forwarding {
        mode: settings.forward_mode,
        idle_timeout: settings.idle_timeout,
        half_close_linger: settings.half_close_linger,
        bytes_to_upstream: &route.metrics.bytes_to_upstream,
        bytes_to_client: &route.metrics.bytes_to_client,
        splice_phases: &route.metrics.splice_phases,
    };
    let shared = Shared::new();
    let reason = tokio::select! {
        reason = forward::forward(&client, &upstream, &policy, &shared) => reason,
        _ = generation.cut_signal() => EndReason::DrainDeadline,
    };

    member.set_reason(reason);
    route.metrics.ended(reason).increment(1);
    debug!(
        route = %route.name,
        generation = generation.number,
        conn.id = id,
        client.addr = %peer,
        upstream.addr = ?upstream_addr,
        bytes.to_upstream = shared.to_upstream.load(Ordering::Relaxed),
        bytes.to_client = shared.to_client.load(Ordering::Relaxed),
        reason = reason.as_str(),
        "connection ended"
    );
}

/// Waits in the route's hold queue; returns the snapshot to connect with, or why not.
async fn hold(
    route: &Arc<Route>,
    slot: Option<OwnedSemaphorePermit>,
    parked_under: &Snapshot,
) -> Result<Arc<Snapshot>, EndReason> {
    let Some(_slot) = slot.or_else(|| route.hold.try_slot()) else {
        return Err(EndReason::HoldOverflow);
    };
    let receiver = match route.hold.park(|| route.current()) {
        Parking::Go(snapshot) => return Ok(snapshot),
        Parking::Closed => return Err(EndReason::HoldAborted),
        Parking::Parked(receiver) => receiver,
    };

    route.hold.enter();
    route.metrics.held.increment(1.0);
    let timeout = parked_under.hold_timeout(&route.settings);
    let outcome = match tokio::time::timeout(timeout, receiver).await {
        Ok(Ok(snapshot)) => Ok(snapshot),
        Ok(Err(_closed)) => Err(EndReason::HoldAborted),
        Err(_elapsed) => {
            route.metrics.hold_timeouts.increment(1);
            Err(EndReason::HoldTimeout)
        }
    };
    route.hold.leave();
    route.metrics.held.decrement(1.0);
    outcome
}

/// Tries the route's upstreams in order, round after round, within the connect budget.
async fn connect(route: &Route, snapshot: &Snapshot) -> Option<TcpStream> {
    let deadline = Instant::now() + route.settings.connect_budget;
    let mut delay = RETRY_DELAY;
    loop {
        for addr in snapshot.upstreams.iter() {
            let started = Instant::now();
            let remaining = deadline.saturating_duration_since(started);
            if remaining.is_zero() {
                return None;
            }
            match tokio::time::timeout(remaining, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => {
                    route
                        .metrics
                        .connect_seconds
                        .record(started.elapsed().as_secs_f64());
                    return Some(stream);
                }
                Ok(Err(err)) => {
                    let kind = connect_error_kind(&err);
                    route.metrics.connect_error(kind);
                    debug!(route = %route.name, upstream.addr = %addr, kind, error = %err,
                        "upstream connect failed");
                }
                Err(_elapsed) => {
                    route.metrics.connect_error("timeout");
                    debug!(route = %route.name, upstream.addr = %addr,
                        "upstream connect timed out");
                }
            }
        }
        // The last pause ends at the deadline, so the whole budget is used.
        let pause = delay.min(deadline.saturating_duration_since(Instant::now()));
        if pause.is_zero() {
            return None;
        }
        tokio::time::sleep(pause).await;
        delay = (delay * 2).min(RETRY_DELAY_MAX);
    }
}

/// The `kind` label of a failed connect.
fn connect_error_kind(err: &io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(libc::ECONNREFUSED) => "refused",
        Some(libc::ETIMEDOUT) => "timeout",
        Some(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::EADDRNOTAVAIL) => "unreachable",
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => "resources_exhausted",
        _ => "other",
    }
}

/// TCP_NODELAY (requests must not wait for Nagle) and keepalive (find dead peers of idle
/// pooled connections) on one leg. Failures only cost latency or detection time: ignored.
fn set_options(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL);
    let _ = SockRef::from(stream).set_tcp_keepalive(&keepalive);
}

fn finish_unconnected(route: &Route, id: u64, peer: SocketAddr, reason: EndReason) {
    route.metrics.ended(reason).increment(1);
    debug!(route = %route.name, conn.id = id, client.addr = %peer, reason = reason.as_str(),
        "connection ended");
}

/// Closes a client we never connected: FIN first, then a short wait for the client's FIN
/// while discarding anything it sent, so the client reads a clean end of stream rather than
/// a reset caused by unread bytes.
async fn close_cleanly(mut client: TcpStream) {
    let _ = SockRef::from(&client).shutdown(Shutdown::Write);
    let mut sink = [0u8; 512];
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Ok(n) = client.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}
