//! The CLI's side of `dso-proxy`: finding or starting the proxy for `up`, setting and removing
//! the routes of a project, and stopping a proxy that `up` started once it has no routes.
//!
//! The control socket is `RUNTIME/proxy.sock` (see [`super::files::runtime_dir`]). When nothing
//! answers there, `up` starts `dso-proxy --control RUNTIME/proxy.sock` in its own process
//! group with its output in `RUNTIME/proxy.log`, records its pid in `RUNTIME/proxy.pid`, and
//! waits until `/v1/health` answers. Only a proxy with that pid file is ever stopped by `down`.

use std::fs::{self, OpenOptions};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dataplane::api::{RouteRequest, RouteView};
use dataplane::client::{ClientError, ProxyClient};
use sha2::{Digest as _, Sha256};
use tracing::info;

use super::ComposeError;

/// Environment variable naming the `dso-proxy` binary to start.
pub const PROXY_BIN_ENV: &str = "DSO_PROXY_BIN";

/// How long a started proxy may take to answer its first health check.
const START_DEADLINE: Duration = Duration::from_secs(10);

/// How long a stopped proxy may take to remove its socket.
const STOP_DEADLINE: Duration = Duration::from_secs(15);

/// Poll interval while waiting for the proxy; not an ordering sleep.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Longest route name the proxy accepts.
const MAX_ROUTE_NAME: usize = 64;

/// A proxy reachable on its control socket.
pub struct Proxy {
    client: ProxyClient,
    runtime: tokio::runtime::Runtime,
}

/// The files of the proxy in a runtime directory.
pub struct ProxyFiles {
    /// Control socket.
    pub socket: PathBuf,
    /// Pid file, present only for a proxy started by `up`.
    pub pid: PathBuf,
    /// Log of a proxy started by `up`.
    pub log: PathBuf,
}

impl ProxyFiles {
    /// The files in `runtime`.
    pub fn in_dir(runtime: &Path) -> Self {
        Self {
            socket: runtime.join("proxy.sock"),
            pid: runtime.join("proxy.pid"),
            log: runtime.join("proxy.log"),
        }
    }
}

/// The route name of a proxied port: `PROJECT.SERVICE.PORT`, or, when that is longer than the
/// proxy allows, `PROJECT.` followed by a hash of the whole.
// LIMITATION: a hashed name no longer shows the service and port, so `down` finds it only
// through the containers' labels — a longer route-name limit in the proxy would lift it.
pub fn route_name(project: &str, service: &str, published: u16) -> String {
    let name = format!("{project}.{service}.{published}");
    if name.len() <= MAX_ROUTE_NAME && name.bytes().all(route_byte) {
        return name;
    }
    let hash = hex::encode(&Sha256::digest(name.as_bytes())[..8]);
    let keep: String = project
        .chars()
        .filter(|c| route_byte(*c as u8))
        .take(40)
        .collect();
    format!("{keep}.{hash}")
}

fn route_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

impl Proxy {
    /// Connects to the proxy on `files.socket`, if one answers.
    pub fn connect(files: &ProxyFiles) -> Result<Option<Self>, ComposeError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ComposeError::AsyncRuntime)?;
        let client = ProxyClient::new(&files.socket);
        let proxy = Self { client, runtime };
        Ok(proxy.answers().then_some(proxy))
    }

    /// Connects to the proxy, starting one first when none answers.
    pub fn ensure(files: &ProxyFiles) -> Result<Self, ComposeError> {
        if let Some(proxy) = Self::connect(files)? {
            return Ok(proxy);
        }
        let binary = proxy_binary();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&files.log)
            .map_err(|source| ComposeError::Files {
                step: "open proxy log",
                path: files.log.clone(),
                source,
            })?;
        let log_err = log.try_clone().map_err(|source| ComposeError::Files {
            step: "open proxy log",
            path: files.log.clone(),
            source,
        })?;
        // Own process group, no inherited terminal or pipes: the proxy outlives this command
        // and must not hold a caller's pipe open or get its Ctrl-C.
        let child = Command::new(&binary)
            .arg("--control")
            .arg(&files.socket)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .spawn()
            .map_err(|source| ComposeError::ProxyStart {
                binary: binary.clone(),
                source,
            })?;
        fs::write(&files.pid, format!("{}\n", child.id())).map_err(|source| {
            ComposeError::Files {
                step: "write proxy pid file",
                path: files.pid.clone(),
                source,
            }
        })?;
        info!(path = %files.socket.display(), pid = child.id(), "proxy started");

        let deadline = Instant::now() + START_DEADLINE;
        while Instant::now() < deadline {
            if let Some(proxy) = Self::connect(files)? {
                return Ok(proxy);
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        Err(ComposeError::ProxyNotReady {
            socket: files.socket.clone(),
            log: files.log.clone(),
        })
    }

    fn answers(&self) -> bool {
        self.runtime.block_on(self.client.health()).is_ok()
    }

    /// All routes.
    pub fn routes(&self) -> Result<Vec<RouteView>, ClientError> {
        self.runtime.block_on(self.client.routes())
    }

    /// Creates or updates a route.
    pub fn put_route(&self, name: &str, request: &RouteRequest) -> Result<(), ClientError> {
        self.runtime
            .block_on(self.client.put_route(name, request))
            .map(drop)
    }

    /// Deletes a route (waits until its connections are gone); a missing route is fine.
    pub fn delete_route(&self, name: &str) -> Result<(), ClientError> {
        match self.runtime.block_on(self.client.delete_route(name)) {
            Ok(_) => Ok(()),
            Err(err) if err.status().is_some_and(|s| s.as_u16() == 404) => Ok(()),
            Err(err) => Err(err),
        }
    }
}

/// Stops the proxy `up` started (the one with a pid file), waiting until its socket is gone.
/// A pid that is no longer a `dso-proxy` is not signalled.
pub fn stop_started_proxy(files: &ProxyFiles) -> Result<bool, ComposeError> {
    let Ok(text) = fs::read_to_string(&files.pid) else {
        return Ok(false);
    };
    let _ = fs::remove_file(&files.pid);
    let Ok(pid) = text.trim().parse::<i32>() else {
        return Ok(false);
    };
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let is_proxy = cmdline
        .split(|&b| b == 0)
        .next()
        .is_some_and(|arg0| arg0.ends_with(b"dso-proxy"));
    if !is_proxy {
        return Ok(false);
    }
    // SAFETY: kill has no memory preconditions; pid was checked to be a dso-proxy just now.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + STOP_DEADLINE;
    while files.socket.exists() && Instant::now() < deadline {
        std::thread::sleep(POLL_INTERVAL);
    }
    info!(pid, "proxy stopped");
    Ok(true)
}

fn proxy_binary() -> PathBuf {
    if let Some(path) = std::env::var_os(PROXY_BIN_ENV).filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    // Installed side by side with docker-dso, or found on PATH.
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("dso-proxy")))
        .filter(|path| path.is_file())
        .unwrap_or_else(|| PathBuf::from("dso-proxy"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_names_are_readable_or_hashed() {
        assert_eq!(route_name("shop", "db", 15432), "shop.db.15432");
        let long = route_name(&"p".repeat(50), &"s".repeat(20), 80);
        assert!(long.len() <= MAX_ROUTE_NAME, "{long}");
        assert!(long.starts_with(&format!("{}.", "p".repeat(40))));
        assert_ne!(long, route_name(&"p".repeat(50), &"t".repeat(20), 80));
    }
}
