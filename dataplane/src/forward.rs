//! Byte forwarding between the client and upstream sockets of one connection, both directions
//! in one task, with correct half-close, an idle timeout and a linger after half-close.
//!
//! Each direction waits for readiness *before* it takes any buffer, so an idle connection
//! holds no buffer and no pipe. In [`ForwardMode::Auto`] a direction starts by copying
//! through a short-lived 16 KiB buffer (lowest latency for small messages); when one read
//! fills the buffer it switches to splice(2) through a pooled pipe, and goes back to copying
//! after a burst that moved less than one buffer. See `docs/dataplane.md` for measurements.
//!
//! Never blocks a worker thread: every syscall is non-blocking and tied to tokio readiness.

use std::io;
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use metrics::Counter;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::end::EndReason;
use crate::pipe::Pipe;
use crate::settings::ForwardMode;

/// Copy buffer of [`ForwardMode::Auto`]: a read that fills it marks the direction as bulk.
const AUTO_BUFFER: usize = 16 * 1024;
/// Copy buffer of [`ForwardMode::Copy`], sized for throughput.
const COPY_BUFFER: usize = 64 * 1024;

/// Which side of the proxy a direction writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Upstream,
}

/// How a direction failed: which socket, so the end reason can name the side.
struct Failed(Side);

/// What one connection's two directions share.
pub(crate) struct Shared {
    started: Instant,
    /// Milliseconds after `started` of the last byte read in either direction.
    last_read_ms: AtomicU64,
    /// 0 until a direction reached end of stream, then the side that closed first.
    first_close: AtomicU8,
    half_closed: AtomicBool,
    half_close: Notify,
    pub(crate) to_upstream: AtomicU64,
    pub(crate) to_client: AtomicU64,
}

/// Counters and policy one connection forwards with.
pub(crate) struct Forwarding<'a> {
    pub(crate) mode: ForwardMode,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) half_close_linger: Duration,
    pub(crate) bytes_to_upstream: &'a Counter,
    pub(crate) bytes_to_client: &'a Counter,
    pub(crate) splice_phases: &'a Counter,
}

/// One direction: bytes read from `from` are written to `to`.
struct Direction<'a> {
    from: &'a TcpStream,
    to: &'a TcpStream,
    /// The side `to` belongs to; `from` is the other one.
    to_side: Side,
    counter: &'a Counter,
    total: &'a AtomicU64,
}

/// How a splice phase ended.
enum Phase {
    /// End of stream from `from`.
    Eof,
    /// `from` has nothing more to read now; carries the bytes moved in this phase.
    Idle(usize),
    /// No pipe could be had (descriptor limit): copy this burst instead.
    NoPipe,
}

impl Shared {
    pub(crate) fn new() -> Shared {
        Shared {
            started: Instant::now(),
            last_read_ms: AtomicU64::new(0),
            first_close: AtomicU8::new(0),
            half_closed: AtomicBool::new(false),
            half_close: Notify::new(),
            to_upstream: AtomicU64::new(0),
            to_client: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        self.last_read_ms
            .store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn since_last_read(&self) -> Duration {
        let last = Duration::from_millis(self.last_read_ms.load(Ordering::Relaxed));
        self.started.elapsed().saturating_sub(last)
    }

    /// Records the end of stream from `from`. The linger is counted from this moment (or a
    /// later read), not from the last byte before it: a connection that was quiet for longer
    /// than the linger before the half-close must still get its reply.
    fn closed(&self, from: Side) {
        self.touch();
        let code = if from == Side::Client { 1 } else { 2 };
        let _ = self
            .first_close
            .compare_exchange(0, code, Ordering::Relaxed, Ordering::Relaxed);
        self.half_closed.store(true, Ordering::Relaxed);
        self.half_close.notify_one();
    }
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::Client => Side::Upstream,
            Side::Upstream => Side::Client,
        }
    }
}

/// Forwards until both directions reached end of stream, a side fails, or a timeout fires.
/// The caller selects this against the drain cut signal.
pub(crate) async fn forward(
    client: &TcpStream,
    upstream: &TcpStream,
    policy: &Forwarding<'_>,
    shared: &Shared,
) -> EndReason {
    let up = Direction {
        from: client,
        to: upstream,
        to_side: Side::Upstream,
        counter: policy.bytes_to_upstream,
        total: &shared.to_upstream,
    };
    let down = Direction {
        from: upstream,
        to: client,
        to_side: Side::Client,
        counter: policy.bytes_to_client,
        total: &shared.to_client,
    };
    let both = async { tokio::try_join!(pump(up, policy, shared), pump(down, policy, shared)) };

    tokio::select! {
        result = both => match result {
            Ok(_) if shared.first_close.load(Ordering::Relaxed) == 2 => EndReason::UpstreamClosed,
            Ok(_) => EndReason::ClientClosed,
            Err(Failed(Side::Client)) => EndReason::ClientError,
            Err(Failed(Side::Upstream)) => EndReason::UpstreamError,
        },
        reason = watchdog(policy, shared) => reason,
    }
}

/// Ends the connection after `idle_timeout` without a byte read, or after the half-close
/// linger once one direction has ended (this is what stops the CLOSE-WAIT leak of a peer
/// that never closes its side).
async fn watchdog(policy: &Forwarding<'_>, shared: &Shared) -> EndReason {
    loop {
        let half_closed = shared.half_closed.load(Ordering::Relaxed);
        let limit = if half_closed {
            Some(policy.half_close_linger)
        } else {
            policy.idle_timeout
        };
        let Some(limit) = limit else {
            shared.half_close.notified().await;
            continue;
        };
        let quiet = shared.since_last_read();
        if quiet >= limit {
            return if half_closed {
                EndReason::LingerTimeout
            } else {
                EndReason::IdleTimeout
            };
        }
        tokio::select! {
            _ = tokio::time::sleep(limit - quiet) => {}
            _ = shared.half_close.notified(), if !half_closed => {}
        }
    }
}

/// Moves one direction until end of stream, then shuts down the write side of `to` so the
/// peer sees the half-close.
async fn pump(dir: Direction<'_>, policy: &Forwarding<'_>, shared: &Shared) -> Result<(), Failed> {
    let from_side = dir.to_side.other();
    let read_failed = |_: io::Error| Failed(from_side);
    let mut splicing = policy.mode == ForwardMode::Splice;
    let buffer_size = if policy.mode == ForwardMode::Copy {
        COPY_BUFFER
    } else {
        AUTO_BUFFER
    };
    let mut buf: Vec<u8> = Vec::new();

    loop {
        if splicing {
            policy.splice_phases.increment(1);
            match splice_phase(&dir, shared).await? {
                Phase::Eof => break,
                Phase::Idle(moved) => {
                    // A short burst means small messages: copying them is faster.
                    if policy.mode == ForwardMode::Auto && moved < AUTO_BUFFER {
                        splicing = false;
                    }
                }
                Phase::NoPipe => splicing = false,
            }
            continue;
        }

        // Wait before allocating: an idle direction holds no buffer.
        dir.from.readable().await.map_err(read_failed)?;
        if buf.capacity() == 0 {
            buf.reserve_exact(buffer_size);
        }
        buf.clear();
        match dir.from.try_read_buf(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                shared.touch();
                write_all(dir.to, &buf[..n])
                    .await
                    .map_err(|_| Failed(dir.to_side))?;
                dir.counter.increment(n as u64);
                dir.total.fetch_add(n as u64, Ordering::Relaxed);
                if policy.mode == ForwardMode::Auto && n >= AUTO_BUFFER {
                    splicing = true;
                    buf = Vec::new();
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => buf = Vec::new(),
            Err(e) => return Err(read_failed(e)),
        }
    }

    // End of stream: pass the half-close on. ENOTCONN means the peer is gone already, which
    // the other direction reports.
    shared.closed(from_side);
    let _ = socket2::SockRef::from(dir.to).shutdown(Shutdown::Write);
    Ok(())
}

async fn write_all(to: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match to.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => to.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One splice burst: waits for input, takes a pipe, moves bytes socket → pipe → socket until
/// the input runs dry with the pipe empty (the pipe goes back to the pool) or ends.
async fn splice_phase(dir: &Direction<'_>, shared: &Shared) -> Result<Phase, Failed> {
    let from_side = dir.to_side.other();
    dir.from.readable().await.map_err(|_| Failed(from_side))?;
    let Ok(pipe) = Pipe::take() else {
        return Ok(Phase::NoPipe);
    };
    let from_fd = dir.from.as_raw_fd();
    let to_fd = dir.to.as_raw_fd();
    let mut in_pipe = 0usize;
    let mut moved = 0usize;
    let mut input_dry = false;
    let mut eof = false;

    let outcome = loop {
        // Step 1: fill the pipe. With an empty pipe, EAGAIN can only mean "no input", so the
        // call goes through try_io and clears readiness. With bytes in the pipe, EAGAIN may
        // mean "pipe full" instead, so readiness must be left alone: a raw call.
        if !eof && !input_dry && in_pipe < pipe.capacity {
            let room = pipe.capacity - in_pipe;
            let filled = if in_pipe == 0 {
                dir.from
                    .try_io(Interest::READABLE, || pipe.fill_from(from_fd, room))
            } else {
                pipe.fill_from(from_fd, room)
            };
            match filled {
                Ok(0) => eof = true,
                Ok(n) => {
                    in_pipe += n;
                    shared.touch();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if in_pipe == 0 {
                        break Ok(Phase::Idle(moved));
                    }
                    input_dry = true;
                }
                Err(_) => break Err(Failed(from_side)),
            }
        }

        // Step 2: empty the pipe into the destination. EAGAIN here is a full socket buffer.
        if in_pipe > 0 {
            match dir
                .to
                .try_io(Interest::WRITABLE, || pipe.drain_into(to_fd, in_pipe))
            {
                Ok(n) => {
                    in_pipe -= n;
                    moved += n;
                    dir.counter.increment(n as u64);
                    dir.total.fetch_add(n as u64, Ordering::Relaxed);

                    // Why: raw splice calls never return to the scheduler, so a stream whose
                    // input never runs dry and whose output never fills would keep this
                    // worker (the other direction of this connection, other connections,
                    // the control API) waiting; this yields once the task's budget is spent.
                    tokio::task::consume_budget().await;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if dir.to.writable().await.is_err() {
                        break Err(Failed(dir.to_side));
                    }
                }
                Err(_) => break Err(Failed(dir.to_side)),
            }
        }

        // Step 3: end of stream once everything read was written; a dry input is retried
        // (through try_io) once the pipe is empty again.
        if in_pipe == 0 {
            if eof {
                break Ok(Phase::Eof);
            }
            input_dry = false;
        }
    };

    // A pipe that still holds bytes (after an error) is closed, never pooled.
    if in_pipe == 0 {
        pipe.give_back();
    }
    outcome
}
