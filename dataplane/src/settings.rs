//! Process-wide limits and timeouts of the proxy, with their defaults. The command line fills
//! them in; tests build them directly. Per-route values (drain timeout, hold timeout) start
//! from these defaults and may be overridden through the control API.

use std::time::Duration;

/// Default drain deadline for connections of a replaced generation.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time a parked client waits for an upstream.
pub const HOLD_TIMEOUT: Duration = Duration::from_secs(30);
/// Default cap of parked clients per route.
pub const HOLD_MAX: usize = 1024;
/// Default cap of open client connections per route (held ones included).
pub const MAX_CONNECTIONS: usize = 16_384;
/// Default budget for connecting to an upstream, retries across all upstreams included.
///
/// Three seconds, not one: Linux resends a SYN that got no answer after 1 s, so an upstream
/// whose listen backlog is momentarily full (it drops the SYN) answers only on that resend. A
/// one-second budget turned each such drop into a failed client (measured: 10 % of requests
/// failed with 200 concurrent clients against a small busybox backlog; none with 3 s).
pub const CONNECT_BUDGET: Duration = Duration::from_secs(3);
/// Default size of the splice(2) pipes, in bytes.
///
/// 1 MiB, the largest an unprivileged process may ask for (`fs.pipe-max-size`): each splice
/// moves up to that much per system call and wake-up. Measured on loopback with iperf3, one
/// stream through the proxy: 64 KiB pipes 9.8–11.0 Gb/s, 256 KiB 10.7–12.4, 1 MiB 12.9–13.9
/// (direct 29–32, three interleaved rounds). A pipe is held only while a direction moves bulk
/// data, and its pages only while they hold bytes in flight.
pub const PIPE_SIZE: usize = 1024 * 1024;
/// Smallest accepted `--pipe-size`: one page.
pub const PIPE_SIZE_MIN: usize = 4096;
/// Default deadline for draining every connection on SIGTERM.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(10);
/// Default silence allowed after one side closed before the other is closed too.
pub const HALF_CLOSE_LINGER: Duration = Duration::from_secs(60);
/// Default listen backlog (the kernel caps it at net.core.somaxconn).
pub const BACKLOG: i32 = 4096;
/// Default time a control client has to send a request's headers, and then its body.
pub const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest accepted value for any millisecond setting: one day.
pub const MAX_MS: u64 = 24 * 60 * 60 * 1000;

/// How bytes are moved between the two sockets of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardMode {
    /// Copy small reads through a short-lived buffer and switch a direction to splice(2)
    /// while it moves bulk data.
    #[default]
    Auto,
    /// Always copy through userspace buffers.
    Copy,
    /// Always splice(2) through pipes (for measurements; small messages pay extra).
    Splice,
}

impl std::str::FromStr for ForwardMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "auto" => Ok(ForwardMode::Auto),
            "copy" => Ok(ForwardMode::Copy),
            "splice" => Ok(ForwardMode::Splice),
            other => Err(format!(
                "unknown forwarding mode {other:?}; use auto, copy or splice"
            )),
        }
    }
}

/// Limits and timeouts shared by every route of one proxy.
#[derive(Debug, Clone)]
pub struct Settings {
    pub drain_timeout: Duration,
    pub hold_timeout: Duration,
    pub hold_max: usize,
    pub max_connections: usize,
    pub connect_budget: Duration,
    pub shutdown_drain: Duration,
    /// `None` disables the idle timeout (the default: database pools idle for hours).
    pub idle_timeout: Option<Duration>,
    pub half_close_linger: Duration,
    pub backlog: i32,
    pub forward_mode: ForwardMode,
    /// Size asked for each splice pipe, in bytes (the kernel may grant less).
    pub pipe_size: usize,
    /// Time a control client has to send a request's headers (counted from the connection or
    /// the previous response), and then again its body; a slower client is disconnected.
    pub control_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            drain_timeout: DRAIN_TIMEOUT,
            hold_timeout: HOLD_TIMEOUT,
            hold_max: HOLD_MAX,
            max_connections: MAX_CONNECTIONS,
            connect_budget: CONNECT_BUDGET,
            shutdown_drain: SHUTDOWN_DRAIN,
            idle_timeout: None,
            half_close_linger: HALF_CLOSE_LINGER,
            backlog: BACKLOG,
            forward_mode: ForwardMode::Auto,
            pipe_size: PIPE_SIZE,
            control_timeout: CONTROL_TIMEOUT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_mode_parses_known_names_only() {
        assert_eq!("auto".parse::<ForwardMode>(), Ok(ForwardMode::Auto));
        assert_eq!("copy".parse::<ForwardMode>(), Ok(ForwardMode::Copy));
        assert_eq!("splice".parse::<ForwardMode>(), Ok(ForwardMode::Splice));
        let err = "zero-copy".parse::<ForwardMode>().unwrap_err();
        assert!(err.contains("zero-copy") && err.contains("auto"), "{err}");
    }
}
