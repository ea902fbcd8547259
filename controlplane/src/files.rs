//! The host side of `dsofile://`: the runtime directory on a tmpfs and one directory of
//! secret files per service generation.
//!
//! Layout: `RUNTIME/compose/PROJECT/SERVICE/gN/VARIABLE`. `RUNTIME` is `$DSO_RUNTIME_DIR`,
//! else `/run/dso` for root, else `$XDG_RUNTIME_DIR/dso`. A generation directory is written
//! completely before compose runs and never changed afterwards; a later rotation writes a new
//! one (the `signal` strategy is the exception: it replaces the files of the mounted
//! generation in place, each by an atomic rename, see [`rewrite_generation`]). It is
//! bind-mounted read-only as a whole, so a container sees a directory, never a single file
//! whose inode a later replacement would leave pinned. Writing refuses any
//! filesystem but tmpfs (checked with statfs), so values never reach a disk.
//!
//! Shared by `docker dso up` (the CLI wraps it in `cli/src/compose/files.rs`) and the rotation
//! engine of the agent, so both write generations with the same rules.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use crate::secret::SecretValue;

/// Environment variable that overrides the runtime directory.
pub const RUNTIME_ENV: &str = "DSO_RUNTIME_DIR";

/// Runtime directory of root.
pub const ROOT_RUNTIME_DIR: &str = "/run/dso";

/// `f_type` of a tmpfs in statfs(2).
const TMPFS_MAGIC: i64 = 0x0102_1994;

/// A file step that failed. Names the path, never a value.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// Neither `DSO_RUNTIME_DIR` nor `XDG_RUNTIME_DIR` is set and we are not root.
    #[error("no runtime directory: not root, and neither {RUNTIME_ENV} nor XDG_RUNTIME_DIR is set")]
    NoRuntimeDir,

    /// The runtime directory is not on a tmpfs.
    #[error(
        "{path} is not on a tmpfs (filesystem type {fs_type:#x}); refusing to write secret \
         files there"
    )]
    NotTmpfs {
        /// The directory.
        path: PathBuf,
        /// statfs f_type.
        fs_type: i64,
    },

    /// A file step failed.
    #[error("could not {step} {path}")]
    Io {
        /// Which step.
        step: &'static str,
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// The runtime directory of this user (not created).
pub fn runtime_dir() -> Result<PathBuf, FilesError> {
    if let Some(dir) = std::env::var_os(RUNTIME_ENV).filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    if is_root() {
        return Ok(PathBuf::from(ROOT_RUNTIME_DIR));
    }
    std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|d| !d.is_empty())
        .map(|d| PathBuf::from(d).join("dso"))
        .ok_or(FilesError::NoRuntimeDir)
}

/// True when this process runs as root (may chown files to the container's user).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Creates `dir` (mode 0700, parents as needed) if missing.
pub fn ensure_dir(dir: &Path) -> Result<(), FilesError> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| FilesError::Io {
            step: "create directory",
            path: dir.to_owned(),
            source,
        })
}

/// Fails unless `dir` is on a tmpfs.
pub fn check_tmpfs(dir: &Path) -> Result<(), FilesError> {
    use std::os::unix::ffi::OsStrExt as _;

    let c_path =
        std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(|_| FilesError::Io {
            step: "statfs",
            path: dir.to_owned(),
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        })?;
    // SAFETY: an all-zero statfs is a valid value of this plain C struct.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is a NUL-terminated string and `stat` a writable statfs, both alive
    // for the duration of the call.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut stat) };
    if rc != 0 {
        return Err(FilesError::Io {
            step: "statfs",
            path: dir.to_owned(),
            source: std::io::Error::last_os_error(),
        });
    }
    #[allow(
        clippy::unnecessary_cast,
        reason = "f_type's width differs between targets"
    )]
    let kind = stat.f_type as i64;
    if kind != TMPFS_MAGIC {
        return Err(FilesError::NotTmpfs {
            path: dir.to_owned(),
            fs_type: kind,
        });
    }
    Ok(())
}

/// Fails unless `dir` is, or once created would be, on a tmpfs: checks `dir` itself when it
/// exists, else its nearest existing ancestor (a directory made inside a tmpfs stays on it).
/// Creates nothing, so a plan can ask before anything changes.
pub fn check_tmpfs_before_create(dir: &Path) -> Result<(), FilesError> {
    let existing = dir
        .ancestors()
        .find(|a| a.exists())
        .unwrap_or(Path::new("/"));
    check_tmpfs(existing).map_err(|error| match error {
        FilesError::NotTmpfs { fs_type, .. } => FilesError::NotTmpfs {
            path: dir.to_owned(),
            fs_type,
        },
        other => other,
    })
}

/// The directory of one project's files.
pub fn project_dir(runtime: &Path, project: &str) -> PathBuf {
    runtime.join("compose").join(project)
}

/// Who owns the files of a generation, and their modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    /// uid and gid to chown to, when running as root.
    pub ids: Option<(u32, u32)>,
}

impl Owner {
    fn file_mode(self) -> u32 {
        // Root hands the file to the container's user; otherwise we cannot chown, and the
        // container's user may differ from ours, so the file must be readable by all.
        if self.ids.is_some() { 0o400 } else { 0o444 }
    }
}

/// Writes a generation of `files` (name, value) for a service, or reuses the newest one when
/// it holds exactly these files with these bytes, owner and mode (so an unchanged `up` does not
/// recreate the container). Returns the generation directory.
pub fn write_generation(
    service_dir: &Path,
    files: &[(String, SecretValue)],
    owner: Owner,
) -> Result<(PathBuf, bool), FilesError> {
    ensure_dir(service_dir)?;
    let generations = generations(service_dir)?;
    if let Some((_, newest)) = generations.last()
        && generation_matches(newest, files, owner)
    {
        return Ok((newest.clone(), false));
    }

    let number = generations.last().map_or(1, |(n, _)| n + 1);
    let dir = service_dir.join(format!("g{number}"));
    let fail = |step, path: &Path| {
        let path = path.to_owned();
        move |source| FilesError::Io { step, path, source }
    };
    DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(fail("create directory", &dir))?;

    for (name, value) in files {
        let path = dir.join(name);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(owner.file_mode())
            .open(&path)
            .map_err(fail("create file", &path))?;
        file.write_all(value.expose())
            .map_err(fail("write file", &path))?;
        if let Some((uid, gid)) = owner.ids {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
                .map_err(fail("chown file", &path))?;
        }
        // The umask may have narrowed the mode given at creation.
        file.set_permissions(fs::Permissions::from_mode(owner.file_mode()))
            .map_err(fail("chmod file", &path))?;
    }

    // Complete: now the container's user may enter it (by name; listing stays private).
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o711))
        .map_err(fail("chmod directory", &dir))?;
    Ok((dir, true))
}

/// Removes every generation of the service except `keep`.
pub fn remove_other_generations(service_dir: &Path, keep: &Path) -> Result<(), FilesError> {
    for (_, dir) in generations(service_dir)? {
        if dir != keep {
            remove_tree(&dir)?;
        }
    }
    Ok(())
}

/// Removes a directory tree if it exists.
pub fn remove_tree(dir: &Path) -> Result<(), FilesError> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(FilesError::Io {
            step: "remove directory",
            path: dir.to_owned(),
            source,
        }),
    }
}

/// The owner the files of an existing generation have: their uid and gid when this process
/// runs as root (and may hand them on), else none. A rotation writes the next generation with
/// the same owner, without asking the image again.
pub fn owner_of_generation(dir: &Path) -> Owner {
    use std::os::unix::fs::MetadataExt as _;

    if !is_root() {
        return Owner { ids: None };
    }
    let first = fs::read_dir(dir)
        .ok()
        .and_then(|mut entries| entries.find_map(Result::ok))
        .and_then(|entry| entry.metadata().ok());
    Owner {
        ids: first.map(|meta| (meta.uid(), meta.gid())),
    }
}

/// Replaces the files of the generation `dir` in place (the `signal` strategy: the running
/// container has `dir` mounted and cannot be given a new one). Each file is written under a
/// temporary name in the same directory, then renamed over the old one, so a reader sees
/// either the old bytes or the new, never a mix. Files of `dir` not in `files` are kept.
pub fn rewrite_generation(
    dir: &Path,
    files: &[(String, SecretValue)],
    owner: Owner,
) -> Result<(), FilesError> {
    let fail = |step, path: &Path| {
        let path = path.to_owned();
        move |source| FilesError::Io { step, path, source }
    };
    for (name, value) in files {
        let path = dir.join(name);
        let temp = dir.join(format!(".{name}.dso-new"));
        let _ = fs::remove_file(&temp);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(owner.file_mode())
            .open(&temp)
            .map_err(fail("create file", &temp))?;
        file.write_all(value.expose())
            .map_err(fail("write file", &temp))?;
        if let Some((uid, gid)) = owner.ids {
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))
                .map_err(fail("chown file", &temp))?;
        }
        file.set_permissions(fs::Permissions::from_mode(owner.file_mode()))
            .map_err(fail("chmod file", &temp))?;
        fs::rename(&temp, &path).map_err(fail("rename file", &path))?;
    }
    Ok(())
}

/// Generation directories `gN` of a service, oldest first.
fn generations(service_dir: &Path) -> Result<Vec<(u64, PathBuf)>, FilesError> {
    let entries = fs::read_dir(service_dir).map_err(|source| FilesError::Io {
        step: "list directory",
        path: service_dir.to_owned(),
        source,
    })?;
    let mut found: Vec<(u64, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let number = name.strip_prefix('g')?.parse().ok()?;
            Some((number, entry.path()))
        })
        .collect();
    found.sort();
    Ok(found)
}

fn generation_matches(dir: &Path, files: &[(String, SecretValue)], owner: Owner) -> bool {
    use std::io::Read as _;
    use std::os::unix::fs::MetadataExt as _;

    // A generation is complete only once its directory is 0711, the last step of
    // write_generation; one left by a killed `up` must not be reused.
    let complete = fs::metadata(dir).is_ok_and(|m| m.mode() & 0o777 == 0o711);
    let Ok(entries) = fs::read_dir(dir) else {
        return false;
    };
    if !complete || entries.count() != files.len() {
        return false;
    }
    files.iter().all(|(name, value)| {
        let Ok(mut file) = File::open(dir.join(name)) else {
            return false;
        };
        let Ok(meta) = file.metadata() else {
            return false;
        };
        let owned = owner
            .ids
            .is_none_or(|(uid, gid)| meta.uid() == uid && meta.gid() == gid);
        if !owned || meta.mode() & 0o777 != owner.file_mode() || meta.len() != value.len() as u64 {
            return false;
        }
        let mut bytes = zeroize::Zeroizing::new(Vec::with_capacity(value.len()));
        file.read_to_end(&mut bytes).is_ok() && bytes.as_slice() == value.expose()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_are_reused_only_for_identical_files() {
        let temp = tempfile::tempdir().unwrap();
        let service = temp.path().join("svc");
        let owner = Owner { ids: None };
        let files = vec![("A".to_owned(), SecretValue::from_slice(b"one"))];

        let (first, created) = write_generation(&service, &files, owner).unwrap();
        assert!(created);
        assert_eq!(first.file_name().unwrap(), "g1");
        assert_eq!(fs::read(first.join("A")).unwrap(), b"one");
        let mode = fs::metadata(first.join("A")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o444);

        let (again, created) = write_generation(&service, &files, owner).unwrap();
        assert_eq!((again.as_path(), created), (first.as_path(), false));

        let changed = vec![("A".to_owned(), SecretValue::from_slice(b"two"))];
        let (second, created) = write_generation(&service, &changed, owner).unwrap();
        assert!(created);
        assert_eq!(second.file_name().unwrap(), "g2");

        remove_other_generations(&service, &second).unwrap();
        assert!(!first.exists());
        assert!(second.exists());
    }

    #[test]
    fn an_incomplete_generation_is_not_reused() {
        let temp = tempfile::tempdir().unwrap();
        let service = temp.path().join("svc");
        let owner = Owner { ids: None };
        let files = vec![("A".to_owned(), SecretValue::from_slice(b"one"))];
        let (first, _) = write_generation(&service, &files, owner).unwrap();

        // As a killed `up` leaves it: every file written, the directory not yet opened up.
        fs::set_permissions(&first, fs::Permissions::from_mode(0o700)).unwrap();
        let (next, created) = write_generation(&service, &files, owner).unwrap();
        assert!(created);
        assert_eq!(next.file_name().unwrap(), "g2");
    }

    #[test]
    fn a_generation_is_rewritten_in_place() {
        let temp = tempfile::tempdir().unwrap();
        let service = temp.path().join("svc");
        let owner = Owner { ids: None };
        let files = vec![
            ("A".to_owned(), SecretValue::from_slice(b"one")),
            ("B".to_owned(), SecretValue::from_slice(b"keep")),
        ];
        let (dir, _) = write_generation(&service, &files, owner).unwrap();
        let changed = vec![("A".to_owned(), SecretValue::from_slice(b"two"))];
        rewrite_generation(&dir, &changed, owner_of_generation(&dir)).unwrap();
        assert_eq!(fs::read(dir.join("A")).unwrap(), b"two");
        assert_eq!(fs::read(dir.join("B")).unwrap(), b"keep");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 2, "no temp file left");
    }

    #[test]
    fn a_disk_directory_is_not_tmpfs() {
        // The crate's own source tree is on the build machine's disk.
        let err = check_tmpfs(Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap_err();
        assert!(matches!(err, FilesError::NotTmpfs { .. }), "{err}");
    }

    #[test]
    fn a_directory_to_be_made_is_judged_by_its_existing_ancestor() {
        let disk = Path::new(env!("CARGO_MANIFEST_DIR")).join("no-such-dir/below");
        let err = check_tmpfs_before_create(&disk).unwrap_err();
        assert!(
            matches!(&err, FilesError::NotTmpfs { path, .. } if path == &disk),
            "{err}"
        );
        assert!(!disk.exists(), "nothing may be created");
        if check_tmpfs(Path::new("/dev/shm")).is_ok() {
            let on_tmpfs = Path::new("/dev/shm/dso-unit-no-such/below");
            check_tmpfs_before_create(on_tmpfs).unwrap();
            assert!(!on_tmpfs.exists());
        }
    }
}
