//! The local encrypted vault (`~/.dso/vault.enc`): dso's embedded secret store.
//!
//! [`Vault`] owns the files of one dso home directory: the vault, its master key and a lock
//! file. It is used by the CLI (`docker dso init`, `secret …`) and, later, by the agent as its
//! `local` provider. Submodules: [`path`] (secret path rules), [`key`] (master key, Argon2id,
//! subkeys), [`format`] (header and AES-256-GCM sealing), [`contents`] (decrypted secrets and
//! versions), [`store`] (opening, locking and atomic writes).
//!
//! Guarantees: a write is all-or-nothing (temp file, fsync, rename, fsync of the directory);
//! concurrent writers in different processes are serialized by an exclusive lock on
//! `vault.lock` held across read-modify-write, so none loses another's update; a damaged or
//! foreign file is reported with its own error and never modified. Nothing here logs or
//! formats a secret value.

pub mod contents;
pub mod format;
pub mod key;
pub mod path;
pub mod store;

use std::io;
use std::path::PathBuf;

pub use contents::{Contents, DEFAULT_HISTORY, VersionRecord};
pub use format::KeyMode;
pub use path::{PathRuleError, SecretPath};
pub use store::{NewKey, Vault, VaultFiles};

use crate::home::HOME_ENV;

/// Largest value `secret set` accepts, in bytes (4 MiB).
pub const MAX_VALUE_LEN: usize = 4 * 1024 * 1024;

/// Environment variable that supplies the master key as 64 hex characters.
pub const MASTER_KEY_ENV: &str = "DSO_MASTER_KEY";

/// Environment variable that supplies the passphrase of a passphrase-mode vault.
pub const PASSPHRASE_ENV: &str = "DSO_PASSPHRASE";

/// Environment variables that carry key material. Programs dso starts that never open the
/// vault (the proxy, compose, docker) get them removed, so the key does not sit in their
/// `/proc/PID/environ` for their whole life.
pub const KEY_ENV: &[&str] = &[MASTER_KEY_ENV, PASSPHRASE_ENV];

/// Removes [`KEY_ENV`] from the environment of `command`.
pub fn without_key_env(command: &mut std::process::Command) -> &mut std::process::Command {
    for name in KEY_ENV {
        command.env_remove(name);
    }
    command
}

/// Where a master key came from; named in errors so the user knows which one to fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyOrigin {
    /// The `DSO_MASTER_KEY` environment variable.
    Environment,
    /// The key file at this path.
    KeyFile(PathBuf),
    /// A passphrase (prompt or `DSO_PASSPHRASE`).
    Passphrase,
}

impl std::fmt::Display for KeyOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Environment => write!(f, "the key in {MASTER_KEY_ENV}"),
            Self::KeyFile(path) => write!(f, "the key in {}", path.display()),
            Self::Passphrase => f.write_str("the passphrase"),
        }
    }
}

/// Everything that can go wrong with the local vault. No variant carries a secret value.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// Neither `DSO_HOME` nor `HOME` is set.
    #[error("cannot find the dso home directory: neither {HOME_ENV} nor HOME is set")]
    HomeUnknown,

    /// `init` found no vault to open.
    #[error("no vault at {path}")]
    NotInitialized {
        /// Expected vault path.
        path: PathBuf,
    },

    /// `init` would overwrite an existing file.
    #[error("{path} already exists; refusing to overwrite it")]
    AlreadyExists {
        /// The existing file.
        path: PathBuf,
    },

    /// Creating the dso home directory failed.
    #[error("could not create directory {path}")]
    CreateDir {
        /// Directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },

    /// The dso home exists but is not a directory (a file, or a symlink to nothing).
    #[error("{path} is not a directory")]
    HomeNotDirectory {
        /// The dso home.
        path: PathBuf,
    },

    /// The dso home is not ours and other users may enter it.
    #[error("{path} is accessible by other users (mode {mode:o}); refusing to keep keys there")]
    HomeNotPrivate {
        /// The dso home.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },

    /// The vault or key path is a directory, FIFO, socket or device instead of a file.
    #[error("{path} is not a regular file")]
    NotAFile {
        /// The path.
        path: PathBuf,
    },

    /// Reading the vault file failed.
    #[error("could not read {path}")]
    ReadVault {
        /// Vault file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },

    /// One step of an atomic file write failed; the old file is still in place.
    #[error("could not {step} while writing {path}")]
    Write {
        /// File being replaced.
        path: PathBuf,
        /// The step: "create a temporary file", "write the temporary file", "fsync the
        /// temporary file", "rename the temporary file", "fsync the directory".
        step: &'static str,
        /// Cause.
        #[source]
        source: io::Error,
    },

    /// Taking the cross-process lock failed.
    #[error("could not lock {path}")]
    Lock {
        /// Lock file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },

    /// Removing a stale file failed.
    #[error("could not remove {path}")]
    Remove {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },

    /// The file does not start with the vault magic.
    #[error("{path} is not a dso vault (its first bytes are not the vault magic `DSOVAULT`)")]
    ForeignFile {
        /// File.
        path: PathBuf,
    },

    /// A newer format.
    #[error("{path} uses vault format version {version}; this build reads version 1")]
    UnsupportedVersion {
        /// File.
        path: PathBuf,
        /// Version found.
        version: u16,
    },

    /// The file is shorter than its header says.
    #[error("{path} is truncated: {actual} bytes, expected {expected}")]
    Truncated {
        /// File.
        path: PathBuf,
        /// Bytes expected.
        expected: u64,
        /// Bytes present.
        actual: u64,
    },

    /// The file is longer than its header says.
    #[error("{path} has unexpected data after its end: {actual} bytes, expected {expected}")]
    TrailingData {
        /// File.
        path: PathBuf,
        /// Bytes expected.
        expected: u64,
        /// Bytes present.
        actual: u64,
    },

    /// The header checksum does not match.
    #[error("the header of {path} was modified or damaged (header checksum mismatch)")]
    HeaderTampered {
        /// File.
        path: PathBuf,
    },

    /// A header field holds a value this build refuses.
    #[error("the header of {path} is invalid: {reason}")]
    HeaderInvalid {
        /// File.
        path: PathBuf,
        /// Which field.
        reason: &'static str,
    },

    /// The key does not belong to this vault.
    #[error("{origin} does not open {path} (wrong key)")]
    WrongKey {
        /// Vault file.
        path: PathBuf,
        /// Which key was tried.
        origin: KeyOrigin,
    },

    /// The GCM tag did not verify although the key is right.
    #[error(
        "the encrypted contents of {path} were modified or damaged (authentication tag mismatch)"
    )]
    CiphertextTampered {
        /// File.
        path: PathBuf,
    },

    /// The decrypted payload did not decode.
    #[error("the decrypted contents of {path} are malformed")]
    Payload {
        /// File.
        path: PathBuf,
        /// What was wrong.
        #[source]
        source: contents::PayloadError,
    },

    /// Key-file mode, no `DSO_MASTER_KEY`, no key file.
    #[error("no master key: {path} does not exist and {MASTER_KEY_ENV} is not set")]
    KeyMissing {
        /// Expected key file.
        path: PathBuf,
    },

    /// Reading the key file failed.
    #[error("could not read the master key file {path}")]
    ReadKey {
        /// Key file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },

    /// The key text is malformed.
    #[error("{origin} is malformed")]
    KeyText {
        /// Which key.
        origin: KeyOrigin,
        /// What is wrong.
        #[source]
        source: key::KeyTextError,
    },

    /// Passphrase mode and no passphrase available.
    #[error("the vault is protected by a passphrase and none was given")]
    PassphraseRequired,

    /// Two passphrase entries differ.
    #[error("the two passphrases do not match")]
    PassphraseMismatch,

    /// Argon2id refused its input.
    #[error("Argon2id key derivation failed: {0}")]
    Kdf(argon2::Error),

    /// Sealing failed.
    #[error("could not encrypt the vault")]
    Seal(#[source] format::SealError),

    /// The OS RNG failed.
    #[error("the operating system's random number generator failed: {0}")]
    Random(getrandom::Error),

    /// A path broke a rule.
    #[error("invalid secret path {path:?}")]
    InvalidPath {
        /// The path as given.
        path: String,
        /// The rule it broke.
        #[source]
        rule: PathRuleError,
    },

    /// No secret at this path.
    #[error("no secret at {path}")]
    SecretNotFound {
        /// Path.
        path: SecretPath,
    },

    /// The version is not (or no longer) kept.
    #[error("secret {path} has no version {version}")]
    VersionNotFound {
        /// Path.
        path: SecretPath,
        /// Version asked for.
        version: u64,
    },
}

impl VaultError {
    /// What the user can do about this error, when we know.
    pub fn hint(&self) -> Option<String> {
        let hint = match self {
            Self::HomeUnknown => format!("set {HOME_ENV} to the directory that holds the vault"),
            Self::NotInitialized { .. } => "run `docker dso init` to create the vault".into(),
            Self::HomeNotDirectory { .. } => {
                format!("move it away, or set {HOME_ENV} to a directory of your own")
            }
            Self::HomeNotPrivate { path, .. } => format!(
                "run `chmod 700 {}`, or set {HOME_ENV} to a private directory",
                path.display()
            ),
            Self::NotAFile { .. } => "move it away; dso reads and writes only regular files".into(),
            Self::AlreadyExists { .. } => {
                "pass --force to replace it (the old secrets are lost)".into()
            }
            Self::ForeignFile { .. } | Self::UnsupportedVersion { .. } => {
                format!("point {HOME_ENV} at the right directory, or move the file away")
            }
            Self::Truncated { .. }
            | Self::TrailingData { .. }
            | Self::HeaderTampered { .. }
            | Self::HeaderInvalid { .. }
            | Self::CiphertextTampered { .. } => {
                "the file was left untouched; restore vault.enc from a backup".into()
            }
            Self::WrongKey { origin, .. } => match origin {
                KeyOrigin::Environment => {
                    format!("unset {MASTER_KEY_ENV} or set it to the key this vault was made with")
                }
                KeyOrigin::KeyFile(_) => {
                    format!("restore the master.key made with this vault, or set {MASTER_KEY_ENV}")
                }
                KeyOrigin::Passphrase => "check the passphrase and try again".into(),
            },
            Self::KeyMissing { .. } => {
                format!("restore master.key, or set {MASTER_KEY_ENV} to the 64-hex-digit key")
            }
            Self::KeyText { .. } => {
                "a key is 64 hexadecimal characters (32 bytes), e.g. from `openssl rand -hex 32`"
                    .into()
            }
            Self::PassphraseRequired => {
                format!("run on a terminal to be prompted, or set {PASSPHRASE_ENV}")
            }
            Self::InvalidPath { .. } => "example of a valid path: myapp/db_password".into(),
            Self::SecretNotFound { .. } => "`docker dso secret list` shows the stored paths".into(),
            Self::VersionNotFound { .. } => {
                "`docker dso secret history PATH` shows the kept versions".into()
            }
            _ => return None,
        };
        Some(hint)
    }
}

/// Parses a secret path, mapping a broken rule to [`VaultError::InvalidPath`].
pub fn parse_path(text: &str) -> Result<SecretPath, VaultError> {
    SecretPath::parse(text).map_err(|rule| VaultError::InvalidPath {
        path: text.to_owned(),
        rule,
    })
}
