//! The arguments of `docker dso up|down|plan|compose …`, split into what compose needs to load
//! the project (`-f`, `-p`, `--profile`, `--env-file`, `--project-directory`), what dso itself
//! takes (`--dry-run`, `--compose`, `--json`), and the rest, which goes to the compose
//! subcommand unchanged. Pure: no I/O.

use std::ffi::OsString;
use std::path::PathBuf;

/// Which compose implementation to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolChoice {
    /// `docker compose` when it answers, else `docker-compose`.
    Auto,
    /// `docker-compose` (v1).
    V1,
    /// `docker compose` (v2 and later).
    V2,
}

impl ToolChoice {
    /// Parses `auto`, `v1` or `v2`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "auto" | "" => Some(Self::Auto),
            "v1" => Some(Self::V1),
            "v2" => Some(Self::V2),
            _ => None,
        }
    }
}

/// The project-loading options, as compose defines them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProjectOptions {
    /// `-f/--file`, in order.
    pub files: Vec<PathBuf>,
    /// `-p/--project-name`.
    pub project_name: Option<String>,
    /// `--profile`, in order.
    pub profiles: Vec<String>,
    /// `--env-file`.
    pub env_file: Option<PathBuf>,
    /// `--project-directory`.
    pub project_directory: Option<PathBuf>,
}

/// One parsed invocation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invocation {
    /// Project options.
    pub project: ProjectOptions,
    /// `--dry-run` (only `up` takes it).
    pub dry_run: bool,
    /// `--json`.
    pub json: bool,
    /// `--compose v1|v2|auto`, if given.
    pub tool: Option<ToolChoice>,
    /// Everything else, in order.
    pub rest: Vec<OsString>,
}

/// A malformed invocation.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvocationError {
    /// A project option without its value.
    #[error("option {flag} needs a value")]
    MissingValue {
        /// The flag.
        flag: String,
    },
    /// `--compose` with an unknown value.
    #[error("--compose {value:?} is not one of auto, v1, v2")]
    BadTool {
        /// What was given.
        value: String,
    },
    /// A non-UTF-8 argument where text is required.
    #[error("option {flag} needs a UTF-8 value")]
    NotText {
        /// The flag.
        flag: String,
    },
}

/// Options that take a value, long and short spellings.
const VALUE_FLAGS: &[(&str, Option<&str>)] = &[
    ("--file", Some("-f")),
    ("--project-name", Some("-p")),
    ("--profile", None),
    ("--env-file", None),
    ("--project-directory", None),
    ("--compose", None),
];

impl Invocation {
    /// Splits `args`. With `leading_only`, project options are taken only before the first
    /// word that is not an option (the compose subcommand of `docker dso compose …`); otherwise
    /// they are taken anywhere, as `docker dso up -d -f x.yml` expects. `--` ends option
    /// scanning; it and everything after it go to `rest`.
    pub fn parse(args: &[OsString], leading_only: bool) -> Result<Self, InvocationError> {
        let mut parsed = Self {
            project: ProjectOptions::default(),
            dry_run: false,
            json: false,
            tool: None,
            rest: Vec::new(),
        };
        let mut scanning = true;
        let mut index = 0;
        while index < args.len() {
            let arg = &args[index];
            index += 1;
            let Some(text) = arg.to_str().filter(|_| scanning) else {
                parsed.rest.push(arg.clone());
                continue;
            };
            if text == "--" {
                scanning = false;
                parsed.rest.push(arg.clone());
                continue;
            }
            if let Some((flag, value)) = split_value_flag(text) {
                let value = match value {
                    Some(value) => OsString::from(value),
                    None => {
                        let value = args.get(index).cloned().ok_or_else(|| {
                            InvocationError::MissingValue {
                                flag: flag.to_owned(),
                            }
                        })?;
                        index += 1;
                        value
                    }
                };
                parsed.take(flag, value)?;
                continue;
            }
            match text {
                "--dry-run" if !leading_only => parsed.dry_run = true,
                "--json" => parsed.json = true,
                _ => {
                    if leading_only && !text.starts_with('-') {
                        scanning = false;
                    }
                    parsed.rest.push(arg.clone());
                }
            }
        }
        Ok(parsed)
    }

    fn take(&mut self, flag: &str, value: OsString) -> Result<(), InvocationError> {
        let text = |value: OsString| {
            value.into_string().map_err(|_| InvocationError::NotText {
                flag: flag.to_owned(),
            })
        };
        match flag {
            "--file" => self.project.files.push(value.into()),
            "--project-name" => self.project.project_name = Some(text(value)?),
            "--profile" => self.project.profiles.push(text(value)?),
            "--env-file" => self.project.env_file = Some(value.into()),
            "--project-directory" => self.project.project_directory = Some(value.into()),
            _ => {
                let value = text(value)?;
                self.tool = Some(ToolChoice::parse(&value).ok_or(InvocationError::BadTool {
                    value: value.clone(),
                })?);
            }
        }
        Ok(())
    }
}

/// Recognises `--flag value`, `--flag=value`, `-f value` and `-fvalue`; returns the long name
/// and the attached value, if any.
fn split_value_flag(text: &str) -> Option<(&'static str, Option<&str>)> {
    for (long, short) in VALUE_FLAGS {
        if text == *long {
            return Some((long, None));
        }
        if let Some(value) = text.strip_prefix(long).and_then(|r| r.strip_prefix('=')) {
            return Some((long, Some(value)));
        }
        if let Some(short) = short {
            if text == *short {
                return Some((long, None));
            }
            if let Some(value) = text.strip_prefix(short).filter(|v| !v.is_empty()) {
                return Some((long, Some(value.strip_prefix('=').unwrap_or(value))));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(items: &[&str]) -> Vec<OsString> {
        items.iter().map(OsString::from).collect()
    }

    #[test]
    fn project_options_anywhere_for_up() {
        let parsed = Invocation::parse(
            &args(&[
                "-d",
                "-f",
                "a.yml",
                "--file=b.yml",
                "-fc.yml",
                "-p",
                "proj",
                "--profile",
                "x",
                "--profile=y",
                "--env-file",
                "e.env",
                "--project-directory=/srv",
                "--dry-run",
                "--json",
                "--compose",
                "v1",
                "--remove-orphans",
            ]),
            false,
        )
        .unwrap();
        assert_eq!(
            parsed.project.files,
            ["a.yml", "b.yml", "c.yml"].map(PathBuf::from)
        );
        assert_eq!(parsed.project.project_name.as_deref(), Some("proj"));
        assert_eq!(parsed.project.profiles, ["x", "y"]);
        assert_eq!(parsed.project.env_file, Some(PathBuf::from("e.env")));
        assert_eq!(
            parsed.project.project_directory,
            Some(PathBuf::from("/srv"))
        );
        assert!(parsed.dry_run && parsed.json);
        assert_eq!(parsed.tool, Some(ToolChoice::V1));
        assert_eq!(parsed.rest, args(&["-d", "--remove-orphans"]));
    }

    #[test]
    fn compose_passthrough_takes_options_before_the_subcommand_only() {
        let parsed = Invocation::parse(
            &args(&[
                "-p",
                "x",
                "--compose=v2",
                "run",
                "-p",
                "8080:80",
                "app",
                "--dry-run",
            ]),
            true,
        )
        .unwrap();
        assert_eq!(parsed.project.project_name.as_deref(), Some("x"));
        assert_eq!(parsed.tool, Some(ToolChoice::V2));
        assert!(!parsed.dry_run);
        assert_eq!(
            parsed.rest,
            args(&["run", "-p", "8080:80", "app", "--dry-run"])
        );
    }

    #[test]
    fn double_dash_ends_scanning() {
        let parsed = Invocation::parse(&args(&["-d", "--", "-f", "x"]), false).unwrap();
        assert!(parsed.project.files.is_empty());
        assert_eq!(parsed.rest, args(&["-d", "--", "-f", "x"]));
    }

    #[test]
    fn missing_and_bad_values() {
        assert_eq!(
            Invocation::parse(&args(&["-f"]), false),
            Err(InvocationError::MissingValue {
                flag: "--file".into()
            })
        );
        assert_eq!(
            Invocation::parse(&args(&["--compose", "v3"]), false),
            Err(InvocationError::BadTool { value: "v3".into() })
        );
    }

    #[test]
    fn similar_flags_are_not_taken() {
        let parsed = Invocation::parse(&args(&["--force-recreate", "--filex"]), false).unwrap();
        assert_eq!(parsed.rest, args(&["--force-recreate", "--filex"]));
        assert!(parsed.project.files.is_empty());
    }

    #[test]
    fn tool_choice_words() {
        assert_eq!(ToolChoice::parse("v1"), Some(ToolChoice::V1));
        assert_eq!(ToolChoice::parse("v2"), Some(ToolChoice::V2));
        assert_eq!(ToolChoice::parse("auto"), Some(ToolChoice::Auto));
        assert_eq!(ToolChoice::parse("V2"), None);
    }
}
