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
pub use controlplane::agent::proxy::PROXY_BIN_ENV;

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

/// The upstream of one container for container port `target`: its address on
/// `default_network` when it is attached there, else on the first of its networks in name
/// order. `networks` is `NetworkSettings.Networks` of `docker inspect` (network name → settings
/// with `IPAddress` and `GlobalIPv6Address`); IPv4 is preferred. Returns the network and the
/// `IP:PORT` (`[IPv6]:PORT`), or `None` when the chosen network gives no address.
pub fn container_upstream(
    networks: &serde_json::Map<String, serde_json::Value>,
    default_network: &str,
    target: u16,
) -> Option<(String, String)> {
    let network = if networks.contains_key(default_network) {
        default_network.to_owned()
    } else {
        networks.keys().min()?.clone()
    };
    let settings = &networks[&network];
    let text = |key: &str| {
        settings
            .get(key)
            .and_then(serde_json::Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let address = match (text("IPAddress"), text("GlobalIPv6Address")) {
        (Some(v4), _) => format!("{v4}:{target}"),
        (None, Some(v6)) => format!("[{v6}]:{target}"),
        (None, None) => return None,
    };
    Some((network, address))
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
        let child = controlplane::vault::without_key_env(&mut Command::new(&binary))
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
    /// Returns whether the route existed.
    pub fn delete_route(&self, name: &str) -> Result<bool, ClientError> {
        match self.runtime.block_on(self.client.delete_route(name)) {
            Ok(_) => Ok(true),
            Err(err) if err.status().is_some_and(|s| s.as_u16() == 404) => Ok(false),
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
    if !is_proxy(pid) {
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

/// After a proxy `up` started has died (killed, crashed): removes its pid file and its socket,
/// so neither points at a process that is gone. A live `dso-proxy` is left alone. Returns
/// whether anything was removed.
pub fn forget_dead_proxy(files: &ProxyFiles) -> bool {
    let Ok(text) = fs::read_to_string(&files.pid) else {
        return false;
    };
    if text.trim().parse::<i32>().is_ok_and(is_proxy) {
        return false;
    }
    let _ = fs::remove_file(&files.socket);
    let _ = fs::remove_file(&files.pid);
    info!(path = %files.pid.display(), "dead proxy forgotten");
    true
}

/// True when `pid` runs a program named `dso-proxy`.
fn is_proxy(pid: i32) -> bool {
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    cmdline
        .split(|&b| b == 0)
        .next()
        .is_some_and(|arg0| arg0.ends_with(b"dso-proxy"))
}

fn proxy_binary() -> PathBuf {
    controlplane::agent::proxy::proxy_binary()
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

    #[test]
    fn a_dead_proxy_is_forgotten_and_a_live_one_kept() {
        let temp = tempfile::tempdir().unwrap();
        let files = ProxyFiles::in_dir(temp.path());
        fs::write(&files.socket, "").unwrap();
        // This test process is alive but not a dso-proxy: its pid counts as dead.
        fs::write(&files.pid, format!("{}\n", std::process::id())).unwrap();
        assert!(forget_dead_proxy(&files));
        assert!(!files.pid.exists() && !files.socket.exists());
        assert!(!forget_dead_proxy(&files), "no pid file: nothing to do");
    }

    #[test]
    fn upstreams_prefer_the_default_network_then_name_order() {
        let networks = serde_json::json!({
            "zeta": {"IPAddress": "172.30.0.2", "GlobalIPv6Address": ""},
            "p_default": {"IPAddress": "172.31.0.5", "GlobalIPv6Address": "fd00::5"},
            "alpha": {"IPAddress": "", "GlobalIPv6Address": "fd01::7"},
        });
        let networks = networks.as_object().unwrap();
        assert_eq!(
            container_upstream(networks, "p_default", 5432),
            Some(("p_default".into(), "172.31.0.5:5432".into()))
        );
        // Not on the default network: the first name in order, IPv6 when it has only that.
        assert_eq!(
            container_upstream(networks, "other_default", 80),
            Some(("alpha".into(), "[fd01::7]:80".into()))
        );
        let bare = serde_json::json!({"n": {"IPAddress": ""}});
        assert_eq!(container_upstream(bare.as_object().unwrap(), "n", 80), None);
        assert_eq!(container_upstream(&serde_json::Map::new(), "n", 80), None);
    }
}
