//! `dso-agent`: the control-plane daemon.
//!
//! `dso-agent [run]` loads the configuration first (so a broken `dso.yaml` is caught before any
//! socket is bound), then runs the daemon ([`controlplane::agent::run`]). `rotate` and
//! `recover` are one-shot forms of the rotation engine for operators and tests: they run one
//! rotation (or the crash recovery) in the foreground and exit.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// Command line of `dso-agent`.
#[derive(Debug, Parser)]
#[command(name = "dso-agent", version, about = "The dso control-plane agent")]
struct Args {
    /// Configuration file [default: first of ./dso.yaml, $DSO_HOME/dso.yaml, /etc/dso/dso.yaml]
    #[arg(long, short = 'c', value_name = "PATH", global = true)]
    config: Option<PathBuf>,

    /// Validate the configuration, print a summary and exit (same as `check`).
    #[arg(long)]
    check: bool,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent in the foreground (the default).
    Run(controlplane::agent::RunArgs),

    /// Validate the configuration, print a summary and exit.
    Check,

    /// Rotate one managed service now, in the foreground, and exit.
    Rotate(controlplane::rotation::oneshot::RotateArgs),

    /// Finish or roll back unfinished rotations from the journal, and exit.
    Recover(controlplane::rotation::oneshot::RecoverArgs),
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("dso-agent: error: {err:#}");
            let hint = err
                .chain()
                .find_map(|cause| cause.downcast_ref::<controlplane::config::ConfigError>())
                .and_then(|config_error| config_error.hint());
            if let Some(hint) = hint {
                eprintln!("hint: {hint}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<ExitCode> {
    // 1. Configuration first: nothing starts on a configuration that does not validate.
    let path = controlplane::config::find_required(args.config.as_deref())?;
    let config = controlplane::config::load(&path).context("loading the agent configuration")?;

    // 2. Then the command.
    let command = match (args.check, args.command) {
        (true, _) | (false, Some(Command::Check)) => {
            eprintln!(
                "dso-agent: configuration {} is valid ({} providers, {} secrets, mode {:?})",
                path.display(),
                config.providers.len(),
                config.secrets.len(),
                config.mode
            );
            return Ok(ExitCode::SUCCESS);
        }
        (false, command) => command,
    };
    match command {
        None => controlplane::agent::run(&path, config, controlplane::agent::RunArgs::default()),
        Some(Command::Run(run_args)) => controlplane::agent::run(&path, config, run_args),
        Some(Command::Rotate(rotate_args)) => {
            controlplane::rotation::oneshot::rotate(&path, config, rotate_args)
        }
        Some(Command::Recover(recover_args)) => {
            controlplane::rotation::oneshot::recover(&path, config, recover_args)
        }
        Some(Command::Check) => Ok(ExitCode::SUCCESS),
    }
}
