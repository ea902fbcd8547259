//! Command handlers: one module per command group. Each handler turns parsed arguments into
//! calls on the `controlplane` library and writes its result through [`Output`]. Handlers use
//! anyhow with `.context()` naming what was being attempted; library errors keep their own
//! types inside the chain so `main` can find their hints.

mod agent;
mod compose;
mod config;
mod setup;
pub mod vault;

use std::path::PathBuf;

use crate::args::{Cli, Command};
use crate::output::Output;

/// Failures that belong to the CLI itself rather than to the vault or the configuration.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// `setup` would overwrite a configuration file.
    #[error("{path} already exists; refusing to overwrite it")]
    ConfigExists {
        /// The file.
        path: PathBuf,
    },

    /// `config validate` found problems (already printed).
    #[error("{path} is invalid ({count} {})", if *count == 1 { "problem" } else { "problems" })]
    ConfigInvalid {
        /// The file.
        path: PathBuf,
        /// How many problems.
        count: usize,
    },

    /// A request to the agent failed.
    #[error(transparent)]
    Agent(controlplane::ipc::client::IpcClientError),

    /// `agent start` without a configuration file.
    #[error("no dso.yaml found; the agent needs one")]
    NoAgentConfig,
}

impl CommandError {
    /// What the user can do about this error.
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::ConfigExists { .. } => Some("pass --force to replace it".into()),
            Self::ConfigInvalid { .. } => Some("see docs/configuration.md for every key".into()),
            Self::Agent(err) => err.hint(),
            Self::NoAgentConfig => {
                Some("write one with `docker dso setup --mode local`, or pass --config".into())
            }
        }
    }
}

/// True when a compose command's own arguments ask for help: `-h`/`--help` anywhere for
/// `up`, `down` and `plan`; right after `compose` (a later one is the compose command's, e.g.
/// `docker dso compose ps --help`, and goes to compose).
fn asks_for_help(command: &Command, raw: &[std::ffi::OsString]) -> bool {
    let is_help = |a: &std::ffi::OsString| a == "-h" || a == "--help";
    match command {
        Command::Compose(_) => raw.first().is_some_and(is_help),
        _ => raw.iter().any(is_help),
    }
}

/// dso's help of a compose command: its own options, then where compose's options are
/// described. Compose is not run (it would fail without a compose file in the directory).
fn print_compose_help(command: &Command) -> anyhow::Result<()> {
    use clap::CommandFactory as _;

    const COMPOSE: &str =
        "  --compose v1|v2|auto  the compose program (also DSO_COMPOSE; default auto)\n";
    const NO_AGENT: &str =
        "  --no-agent            read the local vault directly, and start no background agent\n";
    let (name, own) = match command {
        Command::Up(_) => (
            "up",
            format!(
                "  --dry-run             show the plan (as `docker dso plan`), run nothing\n\
                 {NO_AGENT}{COMPOSE}"
            ),
        ),
        Command::Down(_) => ("down", COMPOSE.to_owned()),
        Command::Plan(_) => ("plan", format!("{NO_AGENT}{COMPOSE}")),
        _ => ("compose", format!("{NO_AGENT}{COMPOSE}")),
    };
    let mut cli = Cli::command();
    let help = cli
        .find_subcommand_mut(name)
        .map(|c| c.render_long_help().to_string())
        .unwrap_or_default();
    let compose = if name == "compose" {
        "`docker compose --help`".to_owned()
    } else {
        format!(
            "`docker compose {}`",
            if name == "plan" { "up" } else { name }
        )
    };
    // clap names the bare subcommand; the user types it after `docker dso`.
    let mut text = help
        .trim_end()
        .replacen(
            &format!("Usage: {name}"),
            &format!("Usage: docker dso {name}"),
            1,
        )
        .replacen(
            &format!("Usage: docker dso {name}\n"),
            &format!("Usage: docker dso {name} [DSO OPTIONS] [COMPOSE OPTIONS] [ARGS...]\n"),
            1,
        );
    text.push_str("\n\ndso options (removed before compose runs):\n");
    text.push_str(&own);
    text.push('\n');
    text.push_str(&format!(
        "Every other option and argument goes to compose as given: -f FILE, -p NAME, \
         --profile, --env-file, --project-directory, and the options of {compose} (see its \
         --help). Global dso options (--config, -q, -v) go before the command word; --json may \
         come before or after it. More: docs/cli.md.\n"
    ));
    print!("{text}");
    Ok(())
}

/// Runs the parsed command.
pub fn run(cli: &Cli) -> anyhow::Result<()> {
    let out = Output {
        json: cli.json,
        quiet: cli.quiet,
    };
    // A file named by --config must exist, whatever the command: silently falling back to
    // the defaults would hide a typo.
    if let Some(path) = cli.config.as_deref() {
        controlplane::config::find(Some(path))?;
    }
    match &cli.command {
        Command::Init(args) => vault::init(out, args),
        Command::Secret(command) => vault::secret(out, cli.config.as_deref(), command),
        Command::Setup(args) => setup::run(out, cli.config.as_deref(), args),
        Command::Config(command) => config::run(out, cli.config.as_deref(), command),
        Command::Up(raw) | Command::Down(raw) | Command::Plan(raw) | Command::Compose(raw)
            if asks_for_help(&cli.command, &raw.args) =>
        {
            print_compose_help(&cli.command)
        }
        Command::Up(raw) => compose::up(out, cli.config.as_deref(), &raw.args),
        Command::Down(raw) => compose::down(out, &raw.args),
        Command::Plan(raw) => compose::plan(out, cli.config.as_deref(), &raw.args),
        Command::Compose(raw) => compose::compose(out, cli.config.as_deref(), &raw.args),
        Command::Agent(command) => agent::agent(out, cli.config.as_deref(), command),
        Command::Status(args) => agent::status(out, cli.config.as_deref(), args),
        Command::Watch => agent::watch(out, cli.config.as_deref()),
        Command::Rotate(args) => agent::rotate(out, cli.config.as_deref(), args),
        Command::Version => {
            let version = env!("CARGO_PKG_VERSION");
            out.data(&serde_json::json!({ "version": version }), |w| {
                writeln!(w, "docker-dso {version}")
            })?;
            Ok(())
        }
    }
}
