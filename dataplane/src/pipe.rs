//! Kernel pipes for splice(2) and a small pool of them.
//!
//! A pipe costs two file descriptors, so a connection only holds one while a direction is
//! moving bulk data: idle connections hold none, and a direction returns its pipe (always
//! empty) to the pool as soon as it has nothing left to move. The pool keeps a few pipes so
//! that a busy direction does not pay pipe2 + fcntl on every burst.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Pipe size asked for, set once at start from the settings ([`set_size`]); see
/// [`crate::settings::PIPE_SIZE`] for why the default is 1 MiB.
static SIZE: AtomicUsize = AtomicUsize::new(crate::settings::PIPE_SIZE);
/// Empty pipes kept for reuse; the rest are closed.
const POOL_MAX: usize = 64;

// LIMITATION: Linux only (splice(2), F_SETPIPE_SZ); the crate does not build elsewhere —
// the product targets Linux Docker hosts [a cfg-gated copy-only path would lift it].
static POOL: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());

/// Sets the size new pipes ask for. Pipes already pooled keep theirs.
pub(crate) fn set_size(bytes: usize) {
    SIZE.store(bytes, Ordering::Relaxed);
}

/// One pipe: bytes spliced into `write` come out of `read`.
pub(crate) struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes the pipe can take (what the kernel granted).
    pub(crate) capacity: usize,
}

impl Pipe {
    /// Takes an empty pipe from the pool or creates one.
    pub(crate) fn take() -> io::Result<Pipe> {
        if let Some(pipe) = POOL.lock().ok().and_then(|mut pool| pool.pop()) {
            return Ok(pipe);
        }
        Pipe::create()
    }

    /// Returns an empty pipe to the pool. Only call with no bytes left in it: a pipe with
    /// data in it must be dropped instead, or the next user would forward stale bytes.
    pub(crate) fn give_back(self) {
        if let Ok(mut pool) = POOL.lock()
            && pool.len() < POOL_MAX
        {
            pool.push(self);
        }
    }

    fn create() -> io::Result<Pipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: `fds` is a valid array of two ints for pipe2 to fill.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both fds are open and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };

        // A failed resize (the per-user pipe page quota is spent) keeps the pipe usable at
        // whatever size the kernel gave it.
        let size = libc::c_int::try_from(SIZE.load(Ordering::Relaxed)).unwrap_or(libc::c_int::MAX);
        // SAFETY: fcntl on a valid open fd with integer arguments.
        let granted = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, size) };
        let capacity = if granted > 0 {
            granted as usize
        } else {
            // SAFETY: as above.
            let current = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ) };
            if current > 0 { current as usize } else { 4096 }
        };
        Ok(Pipe {
            read,
            write,
            capacity,
        })
    }

    /// Moves up to `len` bytes from socket `from` into the pipe. Ok(0) means end of stream.
    pub(crate) fn fill_from(&self, from: RawFd, len: usize) -> io::Result<usize> {
        splice(from, self.write.as_raw_fd(), len)
    }

    /// Moves up to `len` bytes from the pipe into socket `to`.
    pub(crate) fn drain_into(&self, to: RawFd, len: usize) -> io::Result<usize> {
        splice(self.read.as_raw_fd(), to, len)
    }
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: both fds are open for the duration of the call (borrowed from live owners);
    // null offsets are required for pipes and sockets; the flags ask for no blocking.
    let moved = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if moved < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(moved as usize)
    }
}
