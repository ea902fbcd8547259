//! The dso home directory: where the vault, its key and the per-user `dso.yaml` live.
//!
//! `DSO_HOME` wins when set (tests and CI point it at a temporary directory); otherwise it is
//! `$HOME/.dso`. Nothing here creates the directory: the vault does that on `init`.

use std::env;
use std::path::PathBuf;

/// Environment variable that overrides the dso home directory (default `~/.dso`).
pub const HOME_ENV: &str = "DSO_HOME";

/// The dso home directory, or `None` when neither `DSO_HOME` nor `HOME` is set.
pub fn dso_home() -> Option<PathBuf> {
    if let Some(dir) = env::var_os(HOME_ENV).filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir));
    }
    env::var_os("HOME")
        .filter(|d| !d.is_empty())
        .map(|home| PathBuf::from(home).join(".dso"))
}
