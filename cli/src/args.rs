//! The command line of `docker-dso`: clap structs only, no behaviour.
//!
//! Raw parsing lives here; `commands/` turns the parsed values into actions. Global options are
//! `global = true`, so `docker dso secret list --json` and `docker dso --json secret list` mean
//! the same.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

/// Text after `--help`: exit codes and environment, documented once here and in docs/cli.md.
const AFTER_HELP: &str = "\
Exit codes: 0 success, 1 failure, 2 usage error.

Environment:
  DSO_HOME        dso home directory (default ~/.dso): vault.enc, master.key, dso.yaml
  DSO_MASTER_KEY  master key as 64 hex characters; used instead of master.key
  DSO_PASSPHRASE  passphrase of a passphrase-protected vault (instead of the prompt)
  DSO_COMPOSE     compose program for up/down/plan/compose: v1, v2 or auto (default)
  DSO_RUNTIME_DIR runtime directory on a tmpfs (default /run/dso as root, else
                  $XDG_RUNTIME_DIR/dso): secret files, proxy socket
  DSO_PROXY_BIN   dso-proxy binary that `up` starts (default: next to docker-dso, or PATH)
  DSO_AGENT_BIN   dso-agent binary that `up` and `agent start` start (same default)";

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

impl Cli {
    /// Stores the unparsed arguments of a compose command (see [`split_raw`]).
    pub fn set_raw_args(&mut self, raw: Vec<OsString>) {
        if let Command::Up(a) | Command::Down(a) | Command::Plan(a) | Command::Compose(a) =
            &mut self.command
        {
            a.args = raw;
        }
    }
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

    /// Resolve dso:// and dsofile:// references, then run `compose up` (see docs/cli.md)
    Up(RawArgs),

    /// Run `compose down`, then remove the project's routes and secret files
    Down(RawArgs),

    /// Show what `up` would do: every reference, resolved or not, never a value
    Plan(RawArgs),

    /// Any compose command on the resolved project: `docker dso compose [OPTIONS] COMMAND ..`
    Compose(RawArgs),

    /// Start, stop or show the background agent (dso-agent) of this user
    #[command(subcommand)]
    Agent(AgentCommand),

    /// Agent, proxy, managed services, watched secrets and pending work
    Status(StatusArgs),

    /// Follow the agent's events live (rotation steps, swaps, drains, errors)
    Watch,

    /// Rotate a managed service now, or every service using a secret
    Rotate(RotateArgs),

    /// Print the version
    Version,
}

/// Commands whose arguments go to compose unparsed (see [`split_raw`]).
pub const RAW_COMMANDS: &[&str] = &["up", "down", "plan", "compose"];

/// Arguments of a compose command, kept as given; `commands::compose` splits them.
#[derive(Debug, Default, Args)]
pub struct RawArgs {
    /// Compose options and arguments
    #[arg(skip)]
    pub args: Vec<OsString>,
}

/// Splits `argv` at a compose command (`up`, `down`, `plan`, `compose`): clap parses the part
/// up to and including the command word, and everything after it is returned unparsed, so
/// compose flags such as `down -v` never meet our own `-v`.
pub fn split_raw(argv: &[OsString]) -> (Vec<OsString>, Vec<OsString>) {
    let mut index = 1;
    while let Some(arg) = argv.get(index) {
        let Some(text) = arg.to_str() else { break };
        if RAW_COMMANDS.contains(&text) {
            return (argv[..=index].to_vec(), argv[index + 1..].to_vec());
        }
        if text == "--config" {
            index += 2;
        } else if text.starts_with('-') {
            index += 1;
        } else {
            break;
        }
    }
    (argv.to_vec(), Vec::new())
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

/// `agent …`.
#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Start `dso-agent run` in the background unless one answers (log: RUNTIME/agent.log)
    Start,
    /// Stop the agent of RUNTIME/agent.pid (SIGTERM) and wait until it exited
    Stop,
    /// Whether the agent runs, with its pid, sockets and readiness
    Status,
}

/// `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the status again every 2 seconds until interrupted
    #[arg(long)]
    pub watch: bool,
}

/// `rotate`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["service", "secret"])))]
pub struct RotateArgs {
    /// The service, as PROJECT/SERVICE (or SERVICE when one project has it)
    pub service: Option<String>,
    /// Rotate every service that uses this secret (path or reference)
    #[arg(long, value_name = "NAME")]
    pub secret: Option<String>,
    /// Return once the rotation is queued instead of waiting for its result
    #[arg(long)]
    pub no_wait: bool,
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
    fn compose_commands_keep_their_arguments_raw() {
        let argv = |items: &[&str]| items.iter().map(OsString::from).collect::<Vec<_>>();
        let (head, rest) = split_raw(&argv(&["docker-dso", "--config", "c", "-v", "down", "-v"]));
        assert_eq!(head, argv(&["docker-dso", "--config", "c", "-v", "down"]));
        assert_eq!(rest, argv(&["-v"]));
        let cli = Cli::try_parse_from(head).unwrap();
        assert_eq!(cli.verbose, 1);
        assert!(matches!(cli.command, Command::Down(_)));

        let (head, rest) = split_raw(&argv(&["docker-dso", "secret", "get", "up"]));
        assert_eq!(head.len(), 4);
        assert!(rest.is_empty());
        let (_, rest) = split_raw(&argv(&["docker-dso", "up", "-d", "--json"]));
        assert_eq!(rest, argv(&["-d", "--json"]));
    }

    #[test]
    fn agent_commands_and_flags() {
        assert!(matches!(
            parse(&["agent", "start"]).unwrap().command,
            Command::Agent(AgentCommand::Start)
        ));
        assert!(matches!(
            parse(&["agent", "stop"]).unwrap().command,
            Command::Agent(AgentCommand::Stop)
        ));
        assert!(matches!(
            parse(&["status", "--watch", "--json"]).unwrap().command,
            Command::Status(StatusArgs { watch: true })
        ));
        assert!(matches!(parse(&["watch"]).unwrap().command, Command::Watch));
        match parse(&["rotate", "shop/web"]).unwrap().command {
            Command::Rotate(args) => {
                assert_eq!(args.service.as_deref(), Some("shop/web"));
                assert!(!args.no_wait);
            }
            other => panic!("{other:?}"),
        }
        match parse(&["rotate", "--secret", "shop/db", "--no-wait"])
            .unwrap()
            .command
        {
            Command::Rotate(args) => {
                assert_eq!(args.secret.as_deref(), Some("shop/db"));
                assert!(args.no_wait && args.service.is_none());
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse(&["rotate"]).unwrap_err().exit_code(),
            2,
            "names nothing"
        );
        assert!(
            parse(&["rotate", "a/b", "--secret", "x"]).is_err(),
            "names both"
        );
    }

    #[test]
    fn unknown_command_is_a_usage_error() {
        let err = parse(&["frobnicate"]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }
}
