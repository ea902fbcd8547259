//! Where the agent keeps its files.
//!
//! - Runtime directory (tmpfs; `DSO_RUNTIME_DIR`, else `/run/dso` for root, else
//!   `$XDG_RUNTIME_DIR/dso`): the IPC socket `dso.sock` (unless `agent.socket` names another),
//!   `agent.pid`, and the proxy's `proxy.sock`, `proxy.pid`, `proxy.log`.
//! - State directory (`DSO_HOME` when set, else `/var/lib/dso` for root, else `~/.dso`):
//!   `journal/` (rotation journals) and `agent/` (the fingerprint key and map).
//!
//! Per user in local mode: two users never share a socket, a journal or a state file.

use std::path::PathBuf;

use crate::config::Config;
use crate::config::model::DEFAULT_SOCKET;
use crate::files::{self, FilesError};

/// State directory of root.
pub const ROOT_STATE_DIR: &str = "/var/lib/dso";

/// The agent's paths.
#[derive(Clone, Debug)]
pub struct Paths {
    /// Runtime directory.
    pub runtime: PathBuf,
    /// IPC socket.
    pub socket: PathBuf,
    /// Pid file of the agent.
    pub pid: PathBuf,
    /// Proxy control socket.
    pub proxy_socket: PathBuf,
    /// Pid file of a proxy started by dso.
    pub proxy_pid: PathBuf,
    /// Log of a proxy started by dso.
    pub proxy_log: PathBuf,
    /// State directory.
    pub state: PathBuf,
    /// Rotation journals.
    pub journal: PathBuf,
    /// Fingerprint key and map.
    pub detect: PathBuf,
}

/// Why the paths could not be decided.
#[derive(Debug, thiserror::Error)]
pub enum PathsError {
    /// No runtime directory.
    #[error(transparent)]
    Runtime(#[from] FilesError),
    /// No home directory.
    #[error("no state directory: neither DSO_HOME nor HOME is set")]
    NoHome,
}

impl Paths {
    /// The paths of this user for `config`.
    pub fn decide(config: &Config) -> Result<Self, PathsError> {
        let runtime = files::runtime_dir()?;
        Ok(Self::with(
            runtime,
            state_dir().ok_or(PathsError::NoHome)?,
            config,
        ))
    }

    /// The paths under explicit directories.
    pub fn with(runtime: PathBuf, state: PathBuf, config: &Config) -> Self {
        // The default socket follows the runtime directory, so a user-level agent (and every
        // test with its own DSO_RUNTIME_DIR) gets a socket of its own; an explicit
        // `agent.socket` is used as written.
        let socket = if config.agent.socket == std::path::Path::new(DEFAULT_SOCKET) {
            runtime.join("dso.sock")
        } else {
            config.agent.socket.clone()
        };
        Self {
            socket,
            pid: runtime.join("agent.pid"),
            proxy_socket: runtime.join("proxy.sock"),
            proxy_pid: runtime.join("proxy.pid"),
            proxy_log: runtime.join("proxy.log"),
            journal: state.join("journal"),
            detect: state.join("agent"),
            runtime,
            state,
        }
    }
}

/// The state directory (see the module docs).
pub fn state_dir() -> Option<PathBuf> {
    if std::env::var_os(crate::home::HOME_ENV).is_some_and(|d| !d.is_empty()) {
        return crate::home::dso_home();
    }
    if files::is_root() {
        return Some(PathBuf::from(ROOT_STATE_DIR));
    }
    crate::home::dso_home()
}

/// A dso program to start: the path in environment variable `env` when set, else `name` next
/// to the running program (the three are installed side by side), else `name` on `PATH`.
pub fn sibling_binary(env: &str, name: &str) -> PathBuf {
    if let Some(path) = std::env::var_os(env).filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(name)))
        .filter(|path| path.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}
