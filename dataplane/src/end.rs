//! Why a proxied connection ended. A plain enum, not an error: ending is the normal outcome of
//! every connection, so it must be cheap to produce, count and log.

/// How one client connection ended. Counted in `dso_proxy_connections_ended_total{reason}`
/// and logged at debug.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndReason {
    /// The client closed its side first and the exchange finished.
    ClientClosed,
    /// The upstream closed its side first and the exchange finished.
    UpstreamClosed,
    /// Reading from or writing to the client failed (reset, broken pipe).
    ClientError,
    /// Reading from or writing to the upstream failed (reset, broken pipe).
    UpstreamError,
    /// No upstream accepted a connection within the retry budget.
    ConnectFailed,
    /// The connection's generation was replaced and its drain deadline passed.
    DrainDeadline,
    /// The client waited in hold longer than the hold timeout.
    HoldTimeout,
    /// The route was in hold and its queue of parked clients was full.
    HoldOverflow,
    /// The route was deleted or the proxy shut down while the client was parked.
    HoldAborted,
    /// Neither side sent a byte for the idle timeout.
    IdleTimeout,
    /// One side had closed and the other stayed silent for the half-close linger.
    LingerTimeout,
}

impl EndReason {
    /// Every reason, for documentation and tests.
    pub const ALL: [EndReason; 11] = [
        EndReason::ClientClosed,
        EndReason::UpstreamClosed,
        EndReason::ClientError,
        EndReason::UpstreamError,
        EndReason::ConnectFailed,
        EndReason::DrainDeadline,
        EndReason::HoldTimeout,
        EndReason::HoldOverflow,
        EndReason::HoldAborted,
        EndReason::IdleTimeout,
        EndReason::LingerTimeout,
    ];

    /// The metric label and log value.
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::ClientClosed => "client_closed",
            EndReason::UpstreamClosed => "upstream_closed",
            EndReason::ClientError => "client_error",
            EndReason::UpstreamError => "upstream_error",
            EndReason::ConnectFailed => "connect_failed",
            EndReason::DrainDeadline => "drain_deadline",
            EndReason::HoldTimeout => "hold_timeout",
            EndReason::HoldOverflow => "hold_overflow",
            EndReason::HoldAborted => "hold_aborted",
            EndReason::IdleTimeout => "idle_timeout",
            EndReason::LingerTimeout => "linger_timeout",
        }
    }
}

impl std::fmt::Display for EndReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_unique_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for reason in EndReason::ALL {
            let label = reason.as_str();
            assert!(
                label.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{label}"
            );
            assert!(seen.insert(label), "duplicate label {label}");
        }
        for (index, reason) in EndReason::ALL.into_iter().enumerate() {
            assert_eq!(reason as usize, index, "ALL must follow declaration order");
        }
    }
}
