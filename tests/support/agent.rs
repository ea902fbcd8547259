//! Running the `dso-agent` daemon for a test: a `dso.yaml` with a free API port and a webhook
//! token in the [`Home`]'s directory, `docker-dso agent start|stop`, the status document, and
//! a raw HTTP/1.0 request with headers and a body for the REST API (loopback only).
//!
//! The agent is stopped by `Home`'s drop (pid file `RUNTIME/agent.pid`).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use super::docker;
use super::dso::{Home, binary};

/// A webhook token for tests (not a secret value of any test).
pub const TOKEN: &str = "test-webhook-token-0123456789";

/// The agent's settings for a test.
pub struct AgentConfig {
    /// REST address (a free loopback port).
    pub api: SocketAddr,
    /// The written `dso.yaml`.
    pub path: PathBuf,
}

/// A free loopback port below the kernel's ephemeral range (32768 and up by default), so an
/// outgoing connection of a parallel test cannot take it between this check and its use.
/// Each call of a process gets a different port; free means bindable right now.
pub fn free_port() -> Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    let base = std::process::id().wrapping_mul(97) % SPAN;
    for _ in 0..SPAN {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + (base + offset) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free loopback port between {FIRST} and {}", FIRST + SPAN)
}

/// Writes `./dso.yaml` in the home's directory (where `docker-dso` runs), with the REST API
/// on a free port, the webhook on with [`TOKEN`], and `watch_interval`.
pub fn write_config(home: &Home, watch_interval: &str) -> Result<AgentConfig> {
    binary("dso-agent")?;
    let api = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let text = format!(
        "version: 1\nagent:\n  watch_interval: {watch_interval}\n  api_address: \"{api}\"\n  \
         webhook:\n    enabled: true\n    token: \"{TOKEN}\"\n"
    );
    let path = home.dir().join("dso.yaml");
    std::fs::write(&path, text)?;
    Ok(AgentConfig { api, path })
}

/// `docker-dso ARGS` in the home; fails with its output when it fails; returns stdout.
pub fn dso_ok(home: &Home, args: &[&str]) -> Result<String> {
    let out = home.command(args).output()?;
    docker::check(&format!("docker-dso {}", args.join(" ")), &out)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Starts the agent and waits until `/ready` answers 200.
pub fn start(home: &Home, config: &AgentConfig) -> Result<()> {
    dso_ok(home, &["agent", "start"])?;
    wait_ready(config.api, Duration::from_secs(60))
}

/// Waits until `GET /ready` answers 200.
pub fn wait_ready(api: SocketAddr, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok((200, _)) = request(api, "GET", "/ready", &[], b"") {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the agent on {api} was not ready in {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The status document over IPC (`docker-dso status --json`).
pub fn status(home: &Home) -> Result<serde_json::Value> {
    let text = dso_ok(home, &["status", "--json"])?;
    serde_json::from_str(&text).context("status --json is not JSON")
}

/// The agent's log (`RUNTIME/agent.log`).
pub fn log(home: &Home) -> String {
    std::fs::read_to_string(home.runtime.join("agent.log")).unwrap_or_default()
}

/// One HTTP/1.0 request; returns status and body.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, String)> {
    ensure!(addr.ip().is_loopback(), "refusing non-loopback {addr}");
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("no HTTP response from {addr}{path}: {text:?}");
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status code")?;
    Ok((status, body.to_owned()))
}

/// Polls `check` until it returns `Some`, or fails naming `what`.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return Ok(value);
        }
        ensure!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
