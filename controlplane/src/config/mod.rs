//! `dso.yaml`: finding it, parsing it, and the typed [`Config`] the rest of dso reads.
//!
//! Loading has three stages: [`raw`] parses the YAML into structs that refuse unknown keys and
//! wrong types; [`model`] expands `${VAR}` and checks values and cross references, collecting
//! every problem; [`locate`] gives each problem its line and column. The CLI (`config
//! validate`, `config show`, vault commands) and the agent call [`load`]. This module never
//! prints: a problem message never contains a credential, and [`Config::redacted_view`] is the
//! only way configuration leaves as text.

pub mod expand;
pub mod locate;
pub mod model;
pub mod raw;

use std::fmt;
use std::fs;
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::home;
use crate::secret::SecretValue;
pub use locate::KeyPath;
pub use model::{
    Agent, Config, DEFAULT_DRAIN_TIMEOUT, DEFAULT_HEALTH_TIMEOUT, DEFAULT_SIGNAL, DEFAULT_STRATEGY,
    Defaults, ProviderSettings, Secret,
};
pub use raw::{Inject, Mode, ProviderKind, Strategy};

/// File name looked for in the working directory and the dso home.
pub const FILE_NAME: &str = "dso.yaml";

/// Largest configuration file read (1 MiB). Real files are a few KiB; the bound keeps
/// `--config /dev/zero` or a runaway generated file from eating all memory.
pub const MAX_FILE_LEN: u64 = 1024 * 1024;

/// Deepest nesting of flow collections (`[` and `{`) accepted. The YAML parser's time grows
/// with the square of this depth (100 000 levels take minutes), while a real file needs a few.
pub const MAX_FLOW_DEPTH: usize = 64;

/// The system-wide configuration used in agent mode.
pub const SYSTEM_PATH: &str = "/etc/dso/dso.yaml";

/// One problem in a configuration file, with its position when known.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// Key path (`secrets[0].provider`); empty when the YAML itself is malformed.
    pub key: String,
    /// 1-based line.
    pub line: Option<usize>,
    /// 1-based column.
    pub column: Option<usize>,
    /// What is wrong and what was expected.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let (Some(line), Some(column)) = (self.line, self.column) {
            write!(f, "{line}:{column}: ")?;
        }
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// Everything that can go wrong finding or loading a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--config` names a file that does not exist.
    #[error("configuration file {path} does not exist")]
    Missing {
        /// The path given.
        path: PathBuf,
    },

    /// No file in any of the standard places.
    #[error("no configuration file found; looked for {}", display_paths(searched))]
    NotFound {
        /// The places looked at, in order.
        searched: Vec<PathBuf>,
    },

    /// Reading failed.
    #[error("could not read configuration file {path}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },

    /// The file is bigger than [`MAX_FILE_LEN`].
    #[error("configuration file {path} is larger than the limit of {MAX_FILE_LEN} bytes")]
    TooLarge {
        /// File.
        path: PathBuf,
    },

    /// The file has problems; the first one is shown, all are in `problems`.
    #[error("{}", describe_invalid(path, problems))]
    Invalid {
        /// File.
        path: PathBuf,
        /// Every problem found (at least one).
        problems: Vec<Problem>,
    },
}

impl ConfigError {
    /// What the user can do about this error, when we know.
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::Missing { .. } => Some("check the path given to --config".into()),
            Self::NotFound { .. } => {
                Some("run `docker dso setup --mode local` to write a starter dso.yaml".into())
            }
            Self::Invalid { problems, .. } if problems.len() > 1 => {
                Some("`docker dso config validate` lists every problem".into())
            }
            Self::Invalid { .. } => Some("see docs/configuration.md for every key".into()),
            Self::TooLarge { .. } => Some("a dso.yaml is a few KiB; check the path".into()),
            Self::Read { .. } => None,
        }
    }
}

fn display_paths(paths: &[PathBuf]) -> String {
    let shown: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    shown.join(", ")
}

fn describe_invalid(path: &Path, problems: &[Problem]) -> String {
    let Some(first) = problems.first() else {
        return format!("{} is invalid", path.display());
    };
    let mut text = format!("{}:{first}", path.display());
    if problems.len() > 1 {
        let more = problems.len() - 1;
        let noun = if more == 1 { "problem" } else { "problems" };
        text.push_str(&format!(" (and {more} more {noun})"));
    }
    text
}

/// The places searched when `--config` is not given, in order: `./dso.yaml`,
/// `$DSO_HOME/dso.yaml` (default `~/.dso/dso.yaml`), `/etc/dso/dso.yaml`.
pub fn search_paths() -> Vec<PathBuf> {
    let mut paths = vec![PathBuf::from(FILE_NAME)];
    if let Some(home) = home::dso_home() {
        paths.push(home.join(FILE_NAME));
    }
    paths.push(PathBuf::from(SYSTEM_PATH));
    paths
}

/// The configuration file to use: `explicit` (which must exist), else the first of
/// [`search_paths`] that exists, else `None`.
pub fn find(explicit: Option<&Path>) -> Result<Option<PathBuf>, ConfigError> {
    if let Some(path) = explicit {
        if !path.exists() {
            return Err(ConfigError::Missing {
                path: path.to_path_buf(),
            });
        }
        return Ok(Some(path.to_path_buf()));
    }
    Ok(search_paths().into_iter().find(|p| p.is_file()))
}

/// Like [`find`], but a missing file is an error that lists the places searched.
pub fn find_required(explicit: Option<&Path>) -> Result<PathBuf, ConfigError> {
    find(explicit)?.ok_or_else(|| ConfigError::NotFound {
        searched: search_paths(),
    })
}

/// Reads and resolves `path`, expanding `${VAR}` from the process environment.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let read_error = |source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    };

    // Bounded read: `take` also stops an endless source such as a device or a FIFO writer.
    let mut bytes = Vec::new();
    fs::File::open(path)
        .and_then(|file| file.take(MAX_FILE_LEN + 1).read_to_end(&mut bytes))
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_FILE_LEN {
        return Err(ConfigError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    let source = String::from_utf8(bytes).map_err(|err| {
        let valid = &err.as_bytes()[..err.utf8_error().valid_up_to()];
        let (line, column) = position_after(valid);
        ConfigError::Invalid {
            path: path.to_path_buf(),
            problems: vec![Problem {
                key: String::new(),
                line: Some(line),
                column: Some(column),
                message: "the file is not valid UTF-8; save it as UTF-8".into(),
            }],
        }
    })?;
    parse(&source, path, &|name| std::env::var(name).ok())
}

/// 1-based line and column of the character that follows `text`.
fn position_after(text: &[u8]) -> (usize, usize) {
    let line = text.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let column = String::from_utf8_lossy(&text[line_start..]).chars().count() + 1;
    (line, column)
}

/// Where flow collections (`[`, `{`) first nest deeper than [`MAX_FLOW_DEPTH`], as 1-based line
/// and column. Quotes and comments are not tracked, so brackets inside a quoted value count
/// too; a real file stays far below the limit either way.
fn too_deep(source: &str) -> Option<(usize, usize)> {
    let mut depth = 0usize;
    let (mut line, mut column) = (1, 0);
    for c in source.chars() {
        column += 1;
        match c {
            '\n' => (line, column) = (line + 1, 0),
            '[' | '{' => {
                depth += 1;
                if depth > MAX_FLOW_DEPTH {
                    return Some((line, column));
                }
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    None
}

/// Parses `source` (the text of `path`), looking variables up with `lookup`.
pub fn parse(
    source: &str,
    path: &Path,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let invalid = |problems| ConfigError::Invalid {
        path: path.to_path_buf(),
        problems,
    };

    // 1. An empty document would otherwise be reported as "EOF while parsing".
    if source.trim().is_empty() {
        return Err(invalid(vec![Problem {
            key: String::new(),
            line: Some(1),
            column: Some(1),
            message: "the file is empty; expected a mapping with at least `version: 1`".into(),
        }]));
    }

    // 2. The parser is slow on deep flow nesting; refuse it before parsing.
    if let Some((line, column)) = too_deep(source) {
        return Err(invalid(vec![Problem {
            key: String::new(),
            line: Some(line),
            column: Some(column),
            message: format!("`[` and `{{` nest deeper than {MAX_FLOW_DEPTH} levels"),
        }]));
    }

    // 3. Structure: syntax, unknown keys, wrong types, unknown keywords.
    let raw: raw::RawConfig =
        yaml_serde::from_str(source).map_err(|err| invalid(vec![parse_problem(&err)]))?;

    // 4. Values and references, each problem located in the source.
    model::resolve(raw, lookup).map_err(|findings| {
        invalid(
            findings
                .into_iter()
                .map(|finding| {
                    let position = locate::locate(source, &finding.key);
                    Problem {
                        key: finding.key.to_string(),
                        line: position.map(|p| p.0),
                        column: position.map(|p| p.1),
                        message: finding.message,
                    }
                })
                .collect(),
        )
    })
}

/// A parser error as a problem: its position moves into the fields, out of the message.
fn parse_problem(err: &yaml_serde::Error) -> Problem {
    let location = err.location();
    let mut message = err.to_string();
    if let Some(l) = &location {
        let suffix = format!(" at line {} column {}", l.line(), l.column());
        message = message.replacen(&suffix, "", 1);
    }
    // The library prefixes the key path ("secrets[0]: unknown field …"); move it to `key`.
    let (key, message) = match message.split_once(": ") {
        Some((key, rest)) if !key.contains(' ') => (key.to_owned(), rest.to_owned()),
        _ => (String::new(), message),
    };
    Problem {
        key,
        line: location.as_ref().map(|l| l.line()),
        column: location.as_ref().map(|l| l.column()),
        message,
    }
}

/// Placeholder shown instead of a credential.
pub const REDACTED: &str = "<redacted>";

/// Shortest credential that [`Config::redacted_view`] also hunts for inside other values.
/// Shorter ones would match ordinary text (a one-letter token would blank every word).
pub const MIN_SCRUBBED_LEN: usize = 6;

impl Config {
    /// The effective configuration as a JSON value, credentials replaced by `<redacted>`.
    pub fn redacted_view(&self) -> serde_json::Value {
        use serde_json::json;

        let credential = |c: &Option<SecretValue>| c.as_ref().map(|_| REDACTED);
        let duration = |d: &std::time::Duration| humantime::format_duration(*d).to_string();
        let providers: serde_json::Map<String, serde_json::Value> = self
            .providers
            .iter()
            .map(|(name, settings)| {
                let value = match settings {
                    ProviderSettings::Local { history } => {
                        json!({ "type": "local", "history": history })
                    }
                    ProviderSettings::Vault {
                        address,
                        token,
                        mount,
                        kv_version,
                        namespace,
                    } => json!({
                        "type": "vault", "address": address, "token": credential(token),
                        "mount": mount, "kv_version": kv_version, "namespace": namespace,
                    }),
                    ProviderSettings::Aws {
                        region,
                        endpoint,
                        profile,
                    } => json!({
                        "type": "aws", "region": region, "endpoint": endpoint, "profile": profile,
                    }),
                    ProviderSettings::Azure {
                        vault_url,
                        tenant_id,
                        client_id,
                        client_secret,
                    } => json!({
                        "type": "azure", "vault_url": vault_url, "tenant_id": tenant_id,
                        "client_id": client_id, "client_secret": credential(client_secret),
                    }),
                };
                (name.clone(), value)
            })
            .collect();
        let secrets: Vec<serde_json::Value> = self
            .secrets
            .iter()
            .map(|s| {
                json!({
                    "name": s.name.as_str(), "provider": s.provider, "inject": s.inject,
                    "mappings": s.mappings,
                    "targets": { "services": s.services, "labels": s.labels },
                    "rotation": {
                        "strategy": s.strategy, "signal": s.signal,
                        "health_timeout": duration(&s.health_timeout),
                        "drain_timeout": duration(&s.drain_timeout),
                    },
                })
            })
            .collect();
        let mut view = json!({
            "version": self.version,
            "mode": self.mode,
            "providers": providers,
            "agent": {
                "watch_interval": duration(&self.agent.watch_interval),
                "api_address": self.agent.api_address.to_string(),
                "socket": self.agent.socket.display().to_string(),
                "webhook": {
                    "enabled": self.agent.webhook_enabled,
                    "token": credential(&self.agent.webhook_token),
                },
            },
            "defaults": {
                "inject": self.defaults.inject,
                "strategy": self.defaults.strategy,
                "signal": self.defaults.signal,
                "health_timeout": duration(&self.defaults.health_timeout),
                "drain_timeout": duration(&self.defaults.drain_timeout),
            },
            "secrets": secrets,
        });

        // A credential from `${VAR}` may also have been written into a key that is not a
        // credential (`namespace: ns-${TOKEN}`, a label value); it is hidden there too.
        let credentials: Vec<&[u8]> = self
            .credentials()
            .map(SecretValue::expose)
            .filter(|value| value.len() >= MIN_SCRUBBED_LEN)
            .collect();
        scrub(&mut view, &credentials);
        view
    }

    /// Every credential value of the configuration.
    fn credentials(&self) -> impl Iterator<Item = &SecretValue> {
        let providers = self.providers.values().flat_map(|p| match p {
            ProviderSettings::Vault { token, .. } => token.as_ref(),
            ProviderSettings::Azure { client_secret, .. } => client_secret.as_ref(),
            ProviderSettings::Local { .. } | ProviderSettings::Aws { .. } => None,
        });
        providers.chain(self.agent.webhook_token.as_ref())
    }

    /// Versions to keep per secret in the local vault (`history` of the `local` provider).
    pub fn local_history(&self) -> Option<usize> {
        self.providers.values().find_map(|p| match p {
            ProviderSettings::Local { history } => Some(*history),
            _ => None,
        })
    }
}

/// Replaces every occurrence of a credential in the strings (keys and values) of `value`.
fn scrub(value: &mut serde_json::Value, credentials: &[&[u8]]) {
    use serde_json::Value;

    if credentials.is_empty() {
        return;
    }
    match value {
        Value::String(text) => scrub_text(text, credentials),
        Value::Array(items) => items.iter_mut().for_each(|item| scrub(item, credentials)),
        Value::Object(map) => {
            let entries = std::mem::take(map);
            for (mut key, mut item) in entries {
                scrub_text(&mut key, credentials);
                scrub(&mut item, credentials);
                map.insert(key, item);
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

fn scrub_text(text: &mut String, credentials: &[&[u8]]) {
    for credential in credentials {
        // Credentials come from YAML strings, so they are UTF-8; anything else cannot match.
        let Ok(credential) = std::str::from_utf8(credential) else {
            continue;
        };
        if text.contains(credential) {
            *text = text.replace(credential, REDACTED);
        }
    }
}

/// The `dso.yaml` that `docker dso setup --mode local` writes.
pub const STARTER_LOCAL: &str = "\
# dso configuration. Every key is described in docs/configuration.md.
version: 1
mode: local

providers:
  local:
    type: local
    # Versions kept per secret, so a change can be rolled back.
    history: 10

defaults:
  inject: env
  strategy: rolling
  health_timeout: 60s
  drain_timeout: 30s

# Secrets that need settings other than the defaults, for example:
# secrets:
#   - name: myapp/db_password
#     rotation:
#       strategy: restart
secrets: []
";

#[cfg(test)]
mod tests;
