//! The Docker CLI as the tests use it: a checked runner, labelled containers and networks that
//! remove themselves on drop, and a sweep of what crashed test processes left behind.
//!
//! Everything created here carries `dso.test=1` plus `dso.test.pid=<pid of the test process>`,
//! so cleanup only ever touches our own objects: a guard removes its container or network when it
//! goes out of scope (also while a failing test unwinds), and [`sweep_stale`] removes labelled
//! objects whose owning process is gone. Nothing else on the daemon is touched.
//!
//! Ports are only ever published on 127.0.0.1, and values of environment variables are handed to
//! the CLI through its own environment (`-e NAME`), so they never show up in an argument list,
//! in `ps`, or in an error message of this module.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

/// Label that marks every object the tests create (images included).
pub const TEST_LABEL: &str = "dso.test=1";

/// Label key holding the pid of the test process that owns a container or network.
pub const OWNER_LABEL: &str = "dso.test.pid";

/// Pause between two polls of a container's state; a poll interval, not an ordering sleep.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Runs `docker ARGS` and returns its trimmed stdout, or an error naming the command and
/// carrying docker's stderr.
pub fn docker<I, S>(args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut command = Command::new("docker");
    command.args(args);
    run(&mut command)
}

/// Runs a prepared command and returns its trimmed stdout; fails on a non-zero exit.
pub fn run(command: &mut Command) -> Result<String> {
    let shown = show(command);
    let output = command
        .output()
        .with_context(|| format!("starting `{shown}`"))?;
    check(&shown, &output)?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Fails with the command, its exit status and its stderr when `output` is not a success.
pub fn check(shown: &str, output: &Output) -> Result<()> {
    if !output.status.success() {
        bail!(
            "`{shown}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// A command line for messages. Only program and arguments: never the environment.
pub fn show(command: &Command) -> String {
    let mut shown = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        shown.push(' ');
        shown.push_str(&arg.to_string_lossy());
    }
    shown
}

/// Fails with a clear message and a hint when the Docker daemon cannot be reached. Tests that
/// need Docker call this first (the image builders do), so they fail instead of passing
/// vacuously. Checked once per process; also sweeps objects of dead test processes.
pub fn ensure_daemon() -> Result<()> {
    static DAEMON: OnceLock<Result<(), String>> = OnceLock::new();
    let checked = DAEMON.get_or_init(|| {
        let version = docker(["version", "--format", "{{.Server.Version}}"]).map_err(|error| {
            format!(
                "the Docker daemon is not reachable: {error:#}\nhint: these tests need a running \
                 Docker Engine: start dockerd (or `systemctl start docker`), check DOCKER_HOST, \
                 and make sure this user may use the socket (root or group docker)"
            )
        })?;
        if version.is_empty() {
            return Err("the Docker daemon did not report a server version".to_owned());
        }
        sweep_stale().map_err(|error| format!("{error:#}"))
    });
    checked.clone().map_err(anyhow::Error::msg)
}

/// Removes containers and networks labelled [`TEST_LABEL`] whose owning test process no longer
/// exists on this host (a test killed before its guards could run).
// LIMITATION: ownership is a pid checked in this host's /proc, so two test runs in different pid
// namespaces sharing one daemon could sweep each other's objects — a run id kept in a lock file
// beside the pid would lift it.
pub fn sweep_stale() -> Result<()> {
    let format = format!("{{{{.ID}}}} {{{{.Label \"{OWNER_LABEL}\"}}}}");
    let label_filter = format!("label={TEST_LABEL}");

    let containers = docker(["ps", "-a", "--filter", &label_filter, "--format", &format])?;
    let stale: Vec<&str> = orphans(&containers).collect();
    if !stale.is_empty() {
        docker(["rm", "-f", "-v"].into_iter().chain(stale.iter().copied()))?;
    }

    let networks = docker([
        "network",
        "ls",
        "--filter",
        &label_filter,
        "--format",
        &format,
    ])?;
    // LIMITATION: Docker 20.10 can keep a ghost endpoint on a network whose container was
    // removed while it was being attached (a test that SIGKILLs the agent at each step can
    // cause that); such a network refuses `rm` until the daemon restarts. It is reported and
    // left: its name is unique to its dead test process, so it is in nobody's way.
    for id in orphans(&networks) {
        if let Err(err) = docker(["network", "rm", id]) {
            eprintln!("note: a stale test network could not be removed: {err:#}");
        }
    }
    Ok(())
}

/// IDs from "ID PID" lines whose pid is not a live process (a missing pid counts as dead).
fn orphans(listing: &str) -> impl Iterator<Item = &str> {
    listing.lines().filter_map(|line| {
        let (id, pid) = line.split_once(' ').unwrap_or((line, ""));
        let alive = pid
            .parse::<u32>()
            .is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        (!id.is_empty() && !alive).then_some(id)
    })
}

/// A name unique to this process and call, for containers and networks.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("dso-test-{prefix}-{}-{n}", std::process::id())
}

/// The labels every test object carries.
fn owner_labels() -> [String; 4] {
    [
        "--label".to_owned(),
        TEST_LABEL.to_owned(),
        "--label".to_owned(),
        format!("{OWNER_LABEL}={}", std::process::id()),
    ]
}

/// What to run: a builder for `docker run -d`.
#[derive(Default)]
pub struct ContainerSpec {
    image: String,
    name: Option<String>,
    env: Vec<(String, Vec<u8>)>,
    published: Vec<u16>,
    mounts: Vec<(PathBuf, String)>,
    network: Option<String>,
    extra: Vec<String>,
    command: Vec<String>,
}

impl ContainerSpec {
    pub fn new(image: &str) -> Self {
        Self {
            image: image.to_owned(),
            ..Self::default()
        }
    }

    /// Sets the container name (default: a unique `dso-test-…` name).
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    /// Sets an environment variable; the value may hold any bytes but NUL.
    pub fn env(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.env.push((name.to_owned(), value.as_ref().to_vec()));
        self
    }

    /// Publishes a container TCP port on an ephemeral port of 127.0.0.1 (never all interfaces).
    pub fn publish_loopback(mut self, container_port: u16) -> Self {
        self.published.push(container_port);
        self
    }

    /// Bind-mounts a host path read-only.
    pub fn mount_read_only(mut self, host: &Path, target: &str) -> Self {
        self.mounts.push((host.to_owned(), target.to_owned()));
        self
    }

    /// Attaches the container to a network instead of the default bridge.
    pub fn network(mut self, network: &Network) -> Self {
        self.network = Some(network.name.clone());
        self
    }

    /// Adds raw `docker run` options. Port publishing must go through `publish_loopback`.
    pub fn option(mut self, option: &str) -> Self {
        self.extra.push(option.to_owned());
        self
    }

    /// Sets the command (arguments after the image).
    pub fn command(mut self, args: &[&str]) -> Self {
        self.command = args.iter().map(|&arg| arg.to_owned()).collect();
        self
    }

    /// Starts the container detached and returns its guard.
    pub fn run(self) -> Result<Container> {
        ensure_daemon()?;
        ensure!(
            !self
                .extra
                .iter()
                .any(|o| o == "-p" || o.starts_with("--publish") || o == "-P"),
            "publish ports with ContainerSpec::publish_loopback, which binds 127.0.0.1 only"
        );
        let name = self.name.clone().unwrap_or_else(|| unique_name("c"));

        let mut command = Command::new("docker");
        command
            .args(["run", "-d", "--name", &name])
            .args(owner_labels());
        for (key, value) in &self.env {
            // The value travels in the CLI's environment, not on its command line.
            use std::os::unix::ffi::OsStrExt;
            command.env(key, OsStr::from_bytes(value)).args(["-e", key]);
        }
        for port in &self.published {
            command.args(["-p", &format!("127.0.0.1::{port}")]);
        }
        for (host, target) in &self.mounts {
            let mount = format!(
                "type=bind,source={},target={target},readonly",
                host.display()
            );
            command.args(["--mount", &mount]);
        }
        if let Some(network) = &self.network {
            command.args(["--network", network]);
        }
        command
            .args(&self.extra)
            .arg(&self.image)
            .args(&self.command);

        let id = run(&mut command).with_context(|| format!("starting container {name}"))?;
        Ok(Container { id, name })
    }
}

/// A running test container; dropping it removes it (`docker rm -f -v`).
pub struct Container {
    pub id: String,
    pub name: String,
}

impl Container {
    /// The loopback address where `container_port` is published.
    pub fn host_addr(&self, container_port: u16) -> Result<SocketAddr> {
        let ports = docker(["port", &self.id, &format!("{container_port}/tcp")])?;
        let addr: SocketAddr = ports
            .lines()
            .find_map(|line| line.trim().parse().ok())
            .with_context(|| {
                format!(
                    "no published address for {}/tcp in {ports:?}",
                    container_port
                )
            })?;
        ensure!(
            addr.ip().is_loopback(),
            "{} published {container_port} on {addr}",
            self.name
        );
        Ok(addr)
    }

    /// Waits until Docker reports the container's HEALTHCHECK as healthy; fails early when the
    /// container stops or turns unhealthy, with its last log lines.
    pub fn wait_healthy(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let state = docker([
                "inspect",
                "--format",
                "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}",
                &self.id,
            ])?;
            match state.split_once(' ').unwrap_or((&state, "")) {
                (_, "healthy") => return Ok(()),
                ("running", "starting") => {}
                ("running", "") => bail!("{} has no HEALTHCHECK", self.name),
                _ => bail!("{} is {state}; logs:\n{}", self.name, self.logs_tail()),
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} not healthy after {timeout:?}; logs:\n{}",
                    self.name,
                    self.logs_tail()
                );
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Sends a signal to the container's main process.
    pub fn signal(&self, signal: &str) -> Result<()> {
        docker(["kill", "--signal", signal, &self.id]).map(drop)
    }

    /// `docker stop` with a grace period; returns the exit code.
    pub fn stop(&self, grace: Duration) -> Result<i64> {
        docker(["stop", "--time", &grace.as_secs().to_string(), &self.id])?;
        let code = docker(["inspect", "--format", "{{.State.ExitCode}}", &self.id])?;
        code.parse()
            .with_context(|| format!("exit code {code:?} of {}", self.name))
    }

    /// Everything the container wrote to stdout and stderr.
    pub fn logs(&self) -> Result<String> {
        let output = Command::new("docker")
            .args(["logs", &self.id])
            .output()
            .context("running docker logs")?;
        check(&format!("docker logs {}", self.id), &output)?;
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        Ok(text)
    }

    /// The last lines of the logs, for error messages.
    fn logs_tail(&self) -> String {
        let logs = self
            .logs()
            .unwrap_or_else(|error| format!("(no logs: {error:#})"));
        let lines: Vec<&str> = logs.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if let Err(error) = docker(["rm", "-f", "-v", &self.id]) {
            eprintln!("test cleanup: removing container {}: {error:#}", self.name);
        }
    }
}

/// A labelled user-defined bridge network; dropping it removes it.
pub struct Network {
    pub name: String,
}

impl Network {
    pub fn create() -> Result<Network> {
        ensure_daemon()?;
        let name = unique_name("net");
        let mut command = Command::new("docker");
        command
            .args(["network", "create"])
            .args(owner_labels())
            .arg(&name);
        run(&mut command)?;
        Ok(Network { name })
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        if let Err(error) = docker(["network", "rm", &self.name]) {
            eprintln!("test cleanup: removing network {}: {error:#}", self.name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orphans_keep_live_owners_only() {
        let me = std::process::id();
        let listing = format!("aaa {me}\nbbb 4294967295\nccc \nddd notapid");
        let found: Vec<&str> = orphans(&listing).collect();
        assert_eq!(found, ["bbb", "ccc", "ddd"]);
    }
}
