//! Which compose program runs: `docker compose` (v2 and later, a Docker CLI plugin) or
//! `docker-compose` (v1). Chosen by `--compose`, else `DSO_COMPOSE`, else detected: v2 when
//! `docker compose version` answers, v1 otherwise.

use std::process::{Command, Stdio};

use super::ComposeError;
use super::invocation::ToolChoice;

/// Environment variable that forces the compose program: `v1`, `v2` or `auto`.
pub const COMPOSE_ENV: &str = "DSO_COMPOSE";

/// A compose program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    /// `docker-compose` (Python, 1.x).
    V1,
    /// `docker compose` (Go, 2.x and later).
    V2,
}

impl Tool {
    /// Picks the program from the flag, the environment or detection.
    pub fn select(flag: Option<ToolChoice>) -> Result<Self, ComposeError> {
        let choice = match flag {
            Some(choice) => choice,
            None => match std::env::var(COMPOSE_ENV) {
                Ok(value) => ToolChoice::parse(&value).ok_or(ComposeError::BadToolEnv { value })?,
                Err(_) => ToolChoice::Auto,
            },
        };
        let tool = match choice {
            ToolChoice::V1 => Self::V1,
            ToolChoice::V2 => Self::V2,
            ToolChoice::Auto if Self::V2.answers() => Self::V2,
            ToolChoice::Auto => Self::V1,
        };
        if !tool.answers() {
            return Err(ComposeError::ToolMissing { tool: tool.name() });
        }
        Ok(tool)
    }

    /// `v1` or `v2`, as in plans.
    pub fn label(self) -> &'static str {
        match self {
            Self::V1 => "v1",
            Self::V2 => "v2",
        }
    }

    /// The command as a user would type it.
    pub fn name(self) -> &'static str {
        match self {
            Self::V1 => "docker-compose",
            Self::V2 => "docker compose",
        }
    }

    /// A command for this program, without arguments yet.
    pub fn command(self) -> Command {
        let mut command = match self {
            Self::V1 => Command::new("docker-compose"),
            Self::V2 => {
                let mut command = Command::new("docker");
                command.arg("compose");
                command
            }
        };
        controlplane::vault::without_key_env(&mut command);
        command
    }

    /// True when `version` runs and exits 0.
    fn answers(self) -> bool {
        self.command()
            .arg("version")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }
}
