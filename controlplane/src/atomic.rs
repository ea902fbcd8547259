//! Replacing a small state file (a rotation journal, the last-seen fingerprints) so that a
//! crash at any point leaves either the old file or the new one, never a mix: a temp file in
//! the same directory with the final mode, fsync, rename over the target, fsync of the
//! directory. Callers map the failed step into their own error type.
//!
//! Never used for secret values: those live on tmpfs only (`files.rs`) or in the encrypted
//! vault, which has its own writer (`vault/store.rs`).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

/// Which step of [`replace`] failed, on which path.
#[derive(Debug)]
pub struct StepFailed {
    /// `create`, `write`, `fsync`, `rename` or `fsync directory`.
    pub step: &'static str,
    /// The file or directory the step acted on.
    pub path: PathBuf,
    /// The cause.
    pub source: io::Error,
}

/// Replaces `target` with `bytes`, the new file created with `mode`.
pub fn replace(target: &Path, bytes: &[u8], mode: u32) -> Result<(), StepFailed> {
    let fail = |step: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| StepFailed { step, path, source }
    };
    let mut temp_name = target.as_os_str().to_owned();
    temp_name.push(format!(".{}.tmp", std::process::id()));
    let temp = PathBuf::from(temp_name);

    // 1. The new content, durable in a file of its own.
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temp)
        .map_err(fail("create", &temp))?;
    file.write_all(bytes).map_err(fail("write", &temp))?;
    file.sync_all().map_err(fail("fsync", &temp))?;
    drop(file);

    // 2. The switch: rename is atomic, and durable once the directory entry is.
    fs::rename(&temp, target).map_err(fail("rename", target))?;
    let dir = target.parent().unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(fail("fsync directory", dir))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn replaces_with_the_mode_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("state.json");
        replace(&target, b"one", 0o600).unwrap();
        replace(&target, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"two");
        let mode = fs::metadata(&target).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "a temp file was left");
    }

    #[test]
    fn a_failure_names_its_step_and_path() {
        let missing = Path::new("/nonexistent-dso-dir/state.json");
        let err = replace(missing, b"x", 0o600).unwrap_err();
        assert_eq!(err.step, "create");
        assert!(err.path.starts_with("/nonexistent-dso-dir"));
    }
}
