//! The host side of `dsofile://` for the CLI: the runtime directory on a tmpfs and one
//! directory of secret files per service generation.
//!
//! The code lives in the control-plane library ([`controlplane::files`]) so that the agent's
//! rotation engine writes new generations with the same rules; this module re-exports it with
//! the CLI's error type.

use std::path::{Path, PathBuf};

use controlplane::files::{self as shared, FilesError};
pub use controlplane::files::{Owner, RUNTIME_ENV, is_root};
use controlplane::secret::SecretValue;

use super::ComposeError;

impl From<FilesError> for ComposeError {
    fn from(error: FilesError) -> Self {
        match error {
            FilesError::NoRuntimeDir => ComposeError::NoRuntimeDir,
            FilesError::NotTmpfs { path, fs_type } => ComposeError::NotTmpfs { path, fs_type },
            FilesError::Io { step, path, source } => ComposeError::Files { step, path, source },
        }
    }
}

/// The runtime directory of this user (not created).
pub fn runtime_dir() -> Result<PathBuf, ComposeError> {
    Ok(shared::runtime_dir()?)
}

/// Creates `dir` (mode 0700, parents as needed) if missing.
pub fn ensure_dir(dir: &Path) -> Result<(), ComposeError> {
    Ok(shared::ensure_dir(dir)?)
}

/// Fails unless `dir` is on a tmpfs.
pub fn check_tmpfs(dir: &Path) -> Result<(), ComposeError> {
    Ok(shared::check_tmpfs(dir)?)
}

/// Fails unless `dir` is, or once created would be, on a tmpfs; creates nothing.
pub fn check_tmpfs_before_create(dir: &Path) -> Result<(), ComposeError> {
    Ok(shared::check_tmpfs_before_create(dir)?)
}

/// The directory of one project's files.
pub fn project_dir(runtime: &Path, project: &str) -> PathBuf {
    shared::project_dir(runtime, project)
}

/// Writes a generation of `files`, or reuses the newest identical one
/// ([`controlplane::files::write_generation`]).
pub fn write_generation(
    service_dir: &Path,
    files: &[(String, SecretValue)],
    owner: Owner,
) -> Result<(PathBuf, bool), ComposeError> {
    Ok(shared::write_generation(service_dir, files, owner)?)
}

/// Removes every generation of the service except `keep`.
pub fn remove_other_generations(service_dir: &Path, keep: &Path) -> Result<(), ComposeError> {
    Ok(shared::remove_other_generations(service_dir, keep)?)
}

/// Removes a directory tree if it exists.
pub fn remove_tree(dir: &Path) -> Result<(), ComposeError> {
    Ok(shared::remove_tree(dir)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disk_directory_is_not_tmpfs_for_the_cli_either() {
        let err = check_tmpfs(Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap_err();
        assert!(matches!(err, ComposeError::NotTmpfs { .. }), "{err}");
    }
}
