//! The command line of `docker-dso`: clap structs only, no behaviour.
//!
//! Raw parsing lives here; `commands/` turns the parsed values into actions. Global options are
//! `global = true`, so `docker dso secret list --json` and `docker dso --json secret list` mean
//! the same.

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

/// Text after `--help`: exit codes and environment, documented once here and in docs/cli.md.
const AFTER_HELP: &str = "\
Exit codes: 0 success, 1 failure, 2 usage error.

Environment:
  DSO_HOME        dso home directory (default ~/.dso): vault.enc, master.key, dso.yaml
  DSO_MASTER_KEY  master key as 64 hex characters; used instead of master.key
  DSO_PASSPHRASE  passphrase of a passphrase-protected vault (instead of the prompt)";

/// `docker dso`: secrets from secret stores into Docker Compose containers.
#[derive(Debug, Parser)]
#[command(
    name = "docker-dso",
    bin_name = "docker dso",
    version,
    about = "Secrets from secret stores into Docker Compose containers",
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// Configuration file [default: first of ./dso.yaml, $DSO_HOME/dso.yaml, /etc/dso/dso.yaml]
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Print data as JSON
    #[arg(long, global = true)]
    pub json: bool,

    /// Print nothing but data and errors
    #[arg(long, short, global = true)]
    pub quiet: bool,

    /// Log to stderr: -v info, -vv debug, -vvv trace
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the local vault and its master key
    Init(InitArgs),

    /// Store, read, list and delete secrets in the local vault
    #[command(subcommand)]
    Secret(SecretCommand),

    /// Write a starter dso.yaml and create the local vault
    Setup(SetupArgs),

    /// Check or print the configuration
    #[command(subcommand)]
    Config(ConfigCommand),

    /// Print the version
    Version,
}

/// `init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Derive the key from a passphrase (Argon2id) instead of writing master.key
    #[arg(long)]
    pub passphrase: bool,

    /// Replace an existing vault and key (their secrets are lost)
    #[arg(long)]
    pub force: bool,
}

/// `secret …`.
#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Store a new version of a secret (value from a prompt, stdin or --from-file)
    Set {
        /// Secret path, e.g. myapp/db_password
        path: String,
        /// Read the value from this file (exact bytes)
        #[arg(long, value_name = "FILE")]
        from_file: Option<PathBuf>,
        /// Remove leading and trailing whitespace (and newlines) from the value
        #[arg(long)]
        trim: bool,
    },

    /// Write the value of a secret to stdout, exact bytes
    Get {
        /// Secret path
        path: String,
        /// A kept older version instead of the newest
        #[arg(long, value_name = "N")]
        version: Option<u64>,
    },

    /// List secret paths with their newest version and its time (never values)
    List,

    /// Delete a secret with all its versions
    Delete {
        /// Secret path
        path: String,
    },

    /// List the kept versions of a secret
    History {
        /// Secret path
        path: String,
    },
}

/// `setup`.
#[derive(Debug, Args)]
pub struct SetupArgs {
    /// Operating mode to set up
    #[arg(long, value_enum)]
    pub mode: SetupMode,

    /// Never prompt; fail instead of asking
    #[arg(long)]
    pub non_interactive: bool,

    /// Replace an existing dso.yaml
    #[arg(long)]
    pub force: bool,

    /// Protect a newly created vault with a passphrase
    #[arg(long)]
    pub passphrase: bool,
}

/// Modes `setup` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SetupMode {
    /// The CLI reads the local vault; no agent
    Local,
}

/// `config …`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check the configuration; exit 1 and list every problem when it is invalid
    Validate,
    /// Print the effective configuration (defaults applied, credentials redacted)
    Show,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("docker-dso").chain(args.iter().copied()))
    }

    #[test]
    fn definitions_are_consistent() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
    }

    #[test]
    fn global_options_work_after_the_subcommand() {
        let cli = parse(&["secret", "list", "--json", "-vv", "--config", "x.yaml"]).unwrap();
        assert!(cli.json);
        assert_eq!(cli.verbose, 2);
        assert_eq!(cli.config.as_deref(), Some(std::path::Path::new("x.yaml")));
    }

    #[test]
    fn secret_set_flags() {
        let cli = parse(&["secret", "set", "a/b", "--from-file", "f", "--trim"]).unwrap();
        match cli.command {
            Command::Secret(SecretCommand::Set {
                path,
                from_file,
                trim,
            }) => {
                assert_eq!(path, "a/b");
                assert_eq!(from_file.as_deref(), Some(std::path::Path::new("f")));
                assert!(trim);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn secret_get_version_flag() {
        let cli = parse(&["secret", "get", "a", "--version", "3"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Secret(SecretCommand::Get {
                version: Some(3),
                ..
            })
        ));
    }

    #[test]
    fn init_flags() {
        let cli = parse(&["init", "--passphrase", "--force"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Init(InitArgs {
                passphrase: true,
                force: true
            })
        ));
    }

    #[test]
    fn setup_accepts_only_known_modes() {
        let cli = parse(&["setup", "--mode", "local", "--non-interactive"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::Setup(SetupArgs {
                mode: SetupMode::Local,
                non_interactive: true,
                ..
            })
        ));
        assert!(parse(&["setup", "--mode", "cloud"]).is_err());
        assert!(parse(&["setup"]).is_err());
    }

    #[test]
    fn config_subcommands() {
        assert!(matches!(
            parse(&["config", "validate", "--json"]).unwrap().command,
            Command::Config(ConfigCommand::Validate)
        ));
        assert!(matches!(
            parse(&["config", "show"]).unwrap().command,
            Command::Config(ConfigCommand::Show)
        ));
    }

    #[test]
    fn unknown_command_is_a_usage_error() {
        let err = parse(&["frobnicate"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }
}
