//! `docker dso up`, `down`, `plan` and `compose`: compose projects with `dso://` and
//! `dsofile://` references (see `docs/references.md` and `docs/cli.md`).
//!
//! `up` runs in four steps, and only the last two change anything:
//! 1. load the project through compose's own `config` ([`project`]);
//! 2. build the [`plan`]: resolve every reference, check every value and label, collect all
//!    problems; stop here with every problem printed if there is any;
//! 3. write the secret files on the tmpfs ([`files`]), edit the project ([`plan::apply`]) and
//!    run compose with it on stdin ([`render`]);
//! 4. hand the proxied ports to `dso-proxy` ([`proxy`]).
//!
//! Values travel only in memory and through the pipe to compose's stdin, and as files on a
//! tmpfs; never in a log line, an error, a temp file or an argument list.

pub mod files;
pub mod invocation;
pub mod owner;
pub mod plan;
pub mod project;
pub mod proxy;
pub mod render;
pub mod tool;

use std::path::PathBuf;

/// Failures of the compose commands. None carries a secret value.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    /// `DSO_COMPOSE` holds an unknown value.
    #[error("{} {value:?} is not one of auto, v1, v2", tool::COMPOSE_ENV)]
    BadToolEnv {
        /// The value.
        value: String,
    },

    /// The compose program does not run.
    #[error("`{tool} version` does not run")]
    ToolMissing {
        /// The program.
        tool: &'static str,
    },

    /// Starting compose failed.
    #[error("could not run {tool}")]
    Spawn {
        /// The program.
        tool: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },

    /// `config` failed.
    #[error("`{tool} config` refused the project: {stderr}")]
    Config {
        /// The program.
        tool: &'static str,
        /// What compose said.
        stderr: String,
    },

    /// The output of `config` is not what we expect.
    #[error("the output of compose's `config` could not be read: {reason}")]
    ConfigOutput {
        /// Why.
        reason: String,
    },

    /// The working directory is unknown.
    #[error("the working directory could not be read")]
    WorkingDirectory(#[source] std::io::Error),

    /// Problems were found; they were printed one per line.
    #[error(
        "{count} {} in the compose project; nothing was created or changed",
        if *count == 1 { "problem" } else { "problems" }
    )]
    Problems {
        /// How many.
        count: usize,
    },

    /// Neither `DSO_RUNTIME_DIR` nor `XDG_RUNTIME_DIR` is set for a non-root user.
    #[error(
        "no runtime directory: {} and XDG_RUNTIME_DIR are not set",
        files::RUNTIME_ENV
    )]
    NoRuntimeDir,

    /// The runtime directory is not on a tmpfs.
    #[error(
        "{path} is not on a tmpfs (filesystem type {fs_type:#x}); refusing to write secret \
         files there"
    )]
    NotTmpfs {
        /// The directory.
        path: PathBuf,
        /// statfs f_type.
        fs_type: i64,
    },

    /// A file step failed.
    #[error("could not {step} {path}")]
    Files {
        /// Which step.
        step: &'static str,
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },

    /// The async runtime for the proxy client could not start.
    #[error("could not start the runtime for the proxy client")]
    AsyncRuntime(#[source] std::io::Error),

    /// `dso-proxy` could not be started.
    #[error("could not start {}", binary.display())]
    ProxyStart {
        /// The binary.
        binary: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },

    /// The started proxy never answered.
    #[error("dso-proxy did not answer on {} in time; see {}", socket.display(), log.display())]
    ProxyNotReady {
        /// Control socket.
        socket: PathBuf,
        /// Its log.
        log: PathBuf,
    },

    /// A proxy call failed.
    #[error("the proxy refused route {route}")]
    Route {
        /// Route name.
        route: String,
        /// Cause.
        #[source]
        source: Box<dataplane::client::ClientError>,
    },

    /// Compose exited non-zero.
    #[error("`{tool} {subcommand}` failed ({status})")]
    ComposeFailed {
        /// The program.
        tool: &'static str,
        /// Subcommand.
        subcommand: String,
        /// Exit status.
        status: std::process::ExitStatus,
    },

    /// Proxied ports need a detached `up`.
    #[error(
        "services with dso.host_ports need `up -d`: the routes are set once the containers run"
    )]
    NeedsDetach,

    /// A proxied container has no address on its network.
    #[error(
        "container {container} of service {service} has no IP address on its network, so the \
         proxy cannot reach container port {target}"
    )]
    NoUpstream {
        /// Service.
        service: String,
        /// Container name.
        container: String,
        /// Container port.
        target: u16,
    },

    /// A proxied service has no running container after compose returned.
    #[error("service {service} has no running container to route to")]
    NoContainers {
        /// Service.
        service: String,
    },
}

impl ComposeError {
    /// What the user can do about this error.
    pub fn hint(&self) -> Option<String> {
        Some(match self {
            Self::BadToolEnv { .. } => format!("set {} to v1, v2 or auto", tool::COMPOSE_ENV),
            Self::ToolMissing { tool } if tool.starts_with("docker compose") => {
                "install the compose plugin into ~/.docker/cli-plugins/docker-compose, or use \
                 --compose v1"
                    .into()
            }
            Self::ToolMissing { .. } => "install docker-compose, or use --compose v2".into(),
            Self::Problems { .. } => {
                "fix the problems listed above and run the command again".into()
            }
            Self::NoRuntimeDir => format!(
                "set {} to a directory on a tmpfs (e.g. under /dev/shm)",
                files::RUNTIME_ENV
            ),
            Self::NotTmpfs { path, .. } if !path.exists() => format!(
                "{} does not exist and would be made on that filesystem: set {} to a \
                 directory on a tmpfs (e.g. /dev/shm/dso), or create it and mount a tmpfs there",
                path.display(),
                files::RUNTIME_ENV
            ),
            Self::NotTmpfs { path, .. } => format!(
                "mount one: `mount -t tmpfs -o mode=0700,size=64m tmpfs {}`, or set {} to a \
                 directory on a tmpfs",
                path.display(),
                files::RUNTIME_ENV
            ),
            Self::ProxyStart { .. } => format!(
                "install dso-proxy next to docker-dso or on PATH, or set {}",
                proxy::PROXY_BIN_ENV
            ),
            Self::NeedsDetach => "run `docker dso up -d`".into(),
            Self::Route { .. } => "`ss -ltnp` shows what holds the address".into(),
            Self::NoUpstream { container, .. } => format!(
                "`docker inspect {container}` shows its state and networks; the container may be \
                 restarting"
            ),
            Self::NoContainers { service } => format!(
                "`docker compose logs {service}` shows why it stopped, or `--scale {service}=0` \
                 was given"
            ),
            _ => return None,
        })
    }
}
