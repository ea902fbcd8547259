//! `docker-dso`: the Docker CLI plugin of dso, also runnable directly.
//!
//! Start here: this file turns the process arguments into a [`args::Cli`] (answering Docker's
//! plugin metadata probe and dropping the `dso` argument Docker inserts), sets up logging,
//! runs the command from `commands/`, and maps the outcome to the documented exit codes:
//! 0 success, 1 failure, 2 usage error. An error is printed once, as one line with its whole
//! cause chain, followed by a `hint:` line when we know the fix. A closed stdout (`| head`) is
//! not an error.

mod args;
mod commands;
mod compose;
mod keys;
mod output;

use std::ffi::OsString;
use std::io::{self, IsTerminal as _, Write as _};
use std::process::ExitCode;

use clap::Parser as _;
use controlplane::config::ConfigError;
use controlplane::vault::VaultError;

use crate::args::Cli;

/// What Docker's plugin probe expects (`docker-cli-plugin-metadata`).
const PLUGIN_METADATA_COMMAND: &str = "docker-cli-plugin-metadata";

fn main() -> ExitCode {
    let argv = plugin_argv(std::env::args_os().collect());

    // 1. Docker's probe, before clap: it is not a user command and must never fail.
    if argv.get(1).is_some_and(|a| a == PLUGIN_METADATA_COMMAND) {
        let metadata = serde_json::json!({
            "SchemaVersion": "0.1.0",
            "Vendor": "dso",
            "Version": env!("CARGO_PKG_VERSION"),
            "ShortDescription": "Secrets from secret stores into Docker Compose containers",
        });
        println!("{metadata}");
        return ExitCode::SUCCESS;
    }

    // 2. Usage errors exit 2 (clap's code); --help and --version exit 0.
    let (head, raw) = args::split_raw(&argv);
    let cli = match Cli::try_parse_from(head) {
        Ok(mut cli) => {
            cli.set_raw_args(raw);
            cli
        }
        Err(err) => {
            let _ = err.print();
            return ExitCode::from(u8::try_from(err.exit_code()).unwrap_or(2));
        }
    };

    // 3. Logs go to stderr and only when asked for, so stdout stays data.
    init_tracing(cli.verbose);

    match commands::run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            report(&err);
            ExitCode::FAILURE
        }
    }
}

/// Docker's global options that take a value, so a value is never mistaken for `dso`.
const DOCKER_VALUE_FLAGS: &[&str] = &[
    "--config",
    "-c",
    "--context",
    "-H",
    "--host",
    "-l",
    "--log-level",
    "--tlscacert",
    "--tlscert",
    "--tlskey",
];

/// The arguments meant for us. Docker runs a plugin with its own global options and the
/// plugin name first (`docker --config D dso secret list` runs
/// `docker-dso --config D dso secret list`), so everything up to that `dso` is dropped.
/// Run directly, a leading `dso` is dropped too, so both spellings work.
fn plugin_argv(mut argv: Vec<OsString>) -> Vec<OsString> {
    let mut index = 1;
    while let Some(arg) = argv.get(index) {
        if arg == "dso" {
            argv.drain(1..=index);
            return argv;
        }
        let takes_value = arg
            .to_str()
            .is_some_and(|a| DOCKER_VALUE_FLAGS.contains(&a));
        let is_docker_flag = arg.to_str().is_some_and(|a| a.starts_with('-'));
        if !is_docker_flag {
            // The first non-option word is a command of ours: nothing to drop.
            return argv;
        }
        index += if takes_value { 2 } else { 1 };
    }
    argv
}

fn init_tracing(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter =
        tracing_subscriber::EnvFilter::new(format!("warn,controlplane={level},docker_dso={level}"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr)
        // Colour codes only for a person: in a file or a pipe they are noise.
        .with_ansi(io::stderr().is_terminal())
        .with_target(false)
        .init();
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|io_err| io_err.kind() == io::ErrorKind::BrokenPipe)
    })
}

/// Prints `docker-dso: error: <chain>` and, when known, `hint: <fix>`.
fn report(err: &anyhow::Error) {
    let hint = err.chain().find_map(|cause| {
        if let Some(vault) = cause.downcast_ref::<VaultError>() {
            vault.hint()
        } else if let Some(config) = cause.downcast_ref::<ConfigError>() {
            config.hint()
        } else if let Some(compose) = cause.downcast_ref::<compose::ComposeError>() {
            compose.hint()
        } else {
            cause
                .downcast_ref::<commands::CommandError>()
                .and_then(|c| c.hint())
        }
    });
    let mut stderr = io::stderr().lock();
    let _ = writeln!(stderr, "docker-dso: error: {err:#}");
    if let Some(hint) = hint {
        let _ = writeln!(stderr, "hint: {hint}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_plugin_arguments_are_dropped() {
        let argv = |items: &[&str]| items.iter().map(OsString::from).collect::<Vec<_>>();
        let cases: &[(&[&str], &[&str])] = &[
            (
                &["docker-dso", "dso", "version"],
                &["docker-dso", "version"],
            ),
            (&["docker-dso", "version"], &["docker-dso", "version"]),
            (
                &["docker-dso", "secret", "get", "dso"],
                &["docker-dso", "secret", "get", "dso"],
            ),
            (
                &[
                    "docker-dso",
                    "--config",
                    "/d",
                    "dso",
                    "secret",
                    "list",
                    "--config",
                    "x",
                ],
                &["docker-dso", "secret", "list", "--config", "x"],
            ),
            (
                &["docker-dso", "--debug", "-H", "unix:///s", "dso", "-v"],
                &["docker-dso", "-v"],
            ),
            (
                &["docker-dso", "--context", "dso", "dso", "version"],
                &["docker-dso", "version"],
            ),
            (
                &["docker-dso", "--json", "secret", "list"],
                &["docker-dso", "--json", "secret", "list"],
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(plugin_argv(argv(input)), argv(expected), "input {input:?}");
        }
    }
}
