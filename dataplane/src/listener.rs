//! Listening sockets: created with socket2 so that the backlog, SO_REUSEADDR and IPv6-only
//! are explicit, and bind failures are explained (which address, which cause, what to do).
//!
//! The host IP of the listen address is kept as given: `127.0.0.1:5432` never listens on all
//! interfaces, and `[::]:5432` is IPv6 only (bind `0.0.0.0:5432` as its own route for IPv4).

use std::io;
use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};
use thiserror::Error;

/// Lowest port that needs no privilege on a default Linux system.
const UNPRIVILEGED_PORT_START: u16 = 1024;

/// Why a listener could not be created. `addr` is the requested address.
#[derive(Debug, Error)]
pub enum ListenError {
    #[error("creating a socket for listen address {addr} failed")]
    Socket {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("binding listen address {addr} failed")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("listening on {addr} failed")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

impl ListenError {
    /// The address that failed.
    pub fn addr(&self) -> SocketAddr {
        match self {
            ListenError::Socket { addr, .. }
            | ListenError::Bind { addr, .. }
            | ListenError::Listen { addr, .. } => *addr,
        }
    }

    fn io(&self) -> &io::Error {
        match self {
            ListenError::Socket { source, .. }
            | ListenError::Bind { source, .. }
            | ListenError::Listen { source, .. } => source,
        }
    }

    /// True when another socket already holds the address.
    pub fn is_in_use(&self) -> bool {
        self.io().kind() == io::ErrorKind::AddrInUse
    }

    /// What the operator can do about the failure, when we know.
    pub fn hint(&self) -> Option<String> {
        let addr = self.addr();
        match self.io().kind() {
            io::ErrorKind::AddrInUse => Some(format!(
                "another process or route already listens on {addr}; \
                 find it with `ss -ltnp 'sport = :{}'`",
                addr.port()
            )),
            io::ErrorKind::PermissionDenied if addr.port() < UNPRIVILEGED_PORT_START => {
                Some(format!(
                    "port {} is below 1024: run as root or grant the capability with \
                     `setcap cap_net_bind_service=+ep /path/to/dso-proxy` \
                     (AmbientCapabilities=CAP_NET_BIND_SERVICE under systemd)",
                    addr.port()
                ))
            }
            io::ErrorKind::AddrNotAvailable => Some(format!(
                "{} is not an address of this host; use one shown by `ip addr`",
                addr.ip()
            )),
            _ => None,
        }
    }
}

/// Creates a non-blocking listening socket on exactly `addr` with SO_REUSEADDR (so a restart
/// does not wait for TIME_WAIT) and the given backlog.
pub fn bind(addr: SocketAddr, backlog: i32) -> Result<std::net::TcpListener, ListenError> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|source| ListenError::Socket { addr, source })?;

    // Why each option: REUSEADDR lets a restarted proxy bind while old connections sit in
    // TIME_WAIT; V6ONLY keeps `[::]` from also taking the IPv4 port, so the address given is
    // the address served; non-blocking is what tokio expects.
    let configure = || -> io::Result<()> {
        socket.set_reuse_address(true)?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.set_nonblocking(true)?;
        socket.set_cloexec(true)
    };
    configure().map_err(|source| ListenError::Socket { addr, source })?;

    socket
        .bind(&addr.into())
        .map_err(|source| ListenError::Bind { addr, source })?;
    socket
        .listen(backlog)
        .map_err(|source| ListenError::Listen { addr, source })?;
    Ok(socket.into())
}

/// How the accept loop reacts to an accept error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AcceptFailure {
    /// The process or system ran out of file descriptors or memory: back off, then retry.
    Exhausted,
    /// The connection died in the backlog or a signal interrupted: retry at once.
    Transient,
    /// Anything else: back off too, so an unknown error can never spin the loop.
    Other,
}

impl AcceptFailure {
    pub(crate) fn classify(err: &io::Error) -> AcceptFailure {
        match err.raw_os_error() {
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                AcceptFailure::Exhausted
            }
            Some(
                libc::ECONNABORTED | libc::EINTR | libc::EPROTO | libc::EPERM | libc::ECONNRESET,
            ) => AcceptFailure::Transient,
            _ => AcceptFailure::Other,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            AcceptFailure::Exhausted => "resources_exhausted",
            AcceptFailure::Transient => "transient",
            AcceptFailure::Other => "other",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_keeps_the_host_ip() {
        let listener = bind("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let local = listener.local_addr().unwrap();
        assert_eq!(local.ip().to_string(), "127.0.0.1");
        assert_ne!(local.port(), 0);
    }

    #[test]
    fn bind_twice_reports_address_in_use_with_hint() {
        let first = bind("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = first.local_addr().unwrap();
        let err = bind(addr, 16).unwrap_err();
        assert!(err.is_in_use(), "{err:?}");
        assert!(err.to_string().contains(&addr.to_string()));
        assert!(err.hint().unwrap().contains("ss -ltnp"));
    }

    #[test]
    fn permission_hint_names_the_capability_below_1024_only() {
        let denied = |port: u16| ListenError::Bind {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        };
        assert!(denied(80).hint().unwrap().contains("CAP_NET_BIND_SERVICE"));
        assert!(denied(8080).hint().is_none());
    }

    #[test]
    fn fd_exhaustion_is_classified_for_backoff() {
        let emfile = io::Error::from_raw_os_error(libc::EMFILE);
        assert_eq!(AcceptFailure::classify(&emfile), AcceptFailure::Exhausted);
        let aborted = io::Error::from_raw_os_error(libc::ECONNABORTED);
        assert_eq!(AcceptFailure::classify(&aborted), AcceptFailure::Transient);
    }
}
