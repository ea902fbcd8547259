//! Opening, creating and updating the vault files: [`Vault`] and [`VaultFiles`].
//!
//! Reads need no lock: the vault file is only ever replaced by `rename(2)`, so a reader sees
//! either the old or the new file, whole. Writers take an exclusive `flock` on `vault.lock`
//! (std's `File::lock`) and hold it from reading the current file to renaming the new one, so
//! two processes that each add a secret both see their secret in the end. A file that fails
//! any check is reported and never rewritten.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{
    DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _,
};
use std::path::{Path, PathBuf};

use tracing::{debug, info, warn};
use zeroize::Zeroizing;

use super::contents::Contents;
use super::format::{self, Header, KeyMode, LayoutError, NONCE_LEN, ZERO_KDF};
use super::key::{self, KEY_CHECK_LEN, KdfParams, MasterKey, SALT_LEN};
use super::{KeyOrigin, VaultError};
use crate::home;
use crate::secret::SecretValue;

/// Largest vault file we read (1 GiB). Beyond it the file is certainly not ours, and reading
/// it whole would only exhaust memory.
const MAX_VAULT_FILE_LEN: u64 = 1 << 30;

/// Largest master key file we read (4 KiB): the key is 65 bytes; anything far bigger is not a
/// key file, and reading it whole (say a symlink to `/dev/zero`) would never end.
const MAX_KEY_FILE_LEN: u64 = 4096;

/// Prefix of the temporary files of [`write_atomically`]. Only writers holding the lock create
/// them, so a holder of the lock may delete any it finds: they are left over from a killed
/// process.
const TEMP_PREFIX: &str = ".dso-write-";

/// Mode of the dso home directory.
const DIR_MODE: u32 = 0o700;

/// Mode of the vault, the key and the lock file.
const FILE_MODE: u32 = 0o600;

/// The files of one dso home directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VaultFiles {
    /// The directory (`~/.dso` or `$DSO_HOME`).
    pub dir: PathBuf,
    /// `vault.enc`.
    pub vault: PathBuf,
    /// `master.key`.
    pub key: PathBuf,
    /// `vault.lock`, the cross-process write lock.
    pub lock: PathBuf,
}

impl VaultFiles {
    /// The files inside `dir`.
    pub fn in_dir(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        Self {
            vault: dir.join("vault.enc"),
            key: dir.join("master.key"),
            lock: dir.join("vault.lock"),
            dir,
        }
    }

    /// The files of the current user's dso home (`$DSO_HOME`, else `~/.dso`).
    pub fn locate() -> Result<Self, VaultError> {
        home::dso_home()
            .map(Self::in_dir)
            .ok_or(VaultError::HomeUnknown)
    }

    /// True when a vault file exists.
    pub fn vault_exists(&self) -> bool {
        self.vault.exists()
    }
}

/// The key for a new vault.
pub enum NewKey {
    /// Generate a random key and write it to `master.key`.
    Random,
    /// Use this key (from `DSO_MASTER_KEY`); nothing is written to disk.
    Given(MasterKey),
    /// Derive the key from this passphrase with Argon2id; nothing is written to disk.
    Passphrase(SecretValue),
}

/// An opened vault: its files, its key and the header fields every write keeps.
#[derive(Debug)]
pub struct Vault {
    files: VaultFiles,
    key: MasterKey,
    origin: KeyOrigin,
    template: Header,
}

/// The lock on `vault.lock`, released when dropped (closing the file releases the `flock`).
struct WriteLock {
    _file: File,
}

impl Vault {
    /// Creates a new, empty vault. Refuses to replace an existing vault or key file unless
    /// `force`. Returns the vault and whether a key file was written.
    pub fn create(
        files: VaultFiles,
        new_key: NewKey,
        force: bool,
    ) -> Result<(Self, bool), VaultError> {
        // 1. The directory, private to the user.
        create_private_dir(&files.dir)?;
        let _lock = lock(&files)?;
        remove_stale_temp_files(&files.dir);

        // 2. Never destroy a vault or a key by accident: either may be the only copy.
        if !force {
            for existing in [&files.vault, &files.key] {
                if existing.exists() {
                    return Err(VaultError::AlreadyExists {
                        path: existing.clone(),
                    });
                }
            }
        }

        // 3. The key and the header fields that go with it.
        let (key, template, key_file_text) = match new_key {
            NewKey::Random => {
                let key = MasterKey::generate().map_err(VaultError::Random)?;
                let text = key.to_hex_line();
                (
                    key,
                    header_template(KeyMode::KeyFile, ZERO_KDF, [0; SALT_LEN]),
                    Some(text),
                )
            }
            NewKey::Given(key) => (
                key,
                header_template(KeyMode::KeyFile, ZERO_KDF, [0; SALT_LEN]),
                None,
            ),
            NewKey::Passphrase(passphrase) => {
                let salt = key::generate_salt().map_err(VaultError::Random)?;
                let params = KdfParams::DEFAULT;
                let key = MasterKey::derive(passphrase.expose(), &salt, params)
                    .map_err(VaultError::Kdf)?;
                (
                    key,
                    header_template(KeyMode::Passphrase, params, salt),
                    None,
                )
            }
        };

        // 4. Key file first: a vault whose key was never written would be lost at once. A key
        //    file left from an older vault is removed when the new vault does not use it, so
        //    it cannot be mistaken for this vault's key later.
        let wrote_key_file = match key_file_text {
            Some(text) => {
                write_atomically(&files.dir, &files.key, &text)?;
                true
            }
            None => {
                remove_if_present(&files.key)?;
                false
            }
        };

        // 5. The empty vault.
        let origin = match template.key_mode {
            KeyMode::KeyFile if wrote_key_file => KeyOrigin::KeyFile(files.key.clone()),
            KeyMode::KeyFile => KeyOrigin::Environment,
            KeyMode::Passphrase => KeyOrigin::Passphrase,
        };
        let vault = Self {
            files,
            key,
            origin,
            template,
        };
        vault.write(&Contents::default())?;
        info!(path = %vault.files.vault.display(), "vault created");
        Ok((vault, wrote_key_file))
    }

    /// Opens an existing vault and decrypts it once, which proves the key.
    ///
    /// In key-file mode the key is `env_key` when given (from `DSO_MASTER_KEY`), else the key
    /// file. In passphrase mode `passphrase` is called once to obtain the passphrase.
    pub fn open(
        files: VaultFiles,
        env_key: Option<MasterKey>,
        passphrase: &mut dyn FnMut() -> Result<SecretValue, VaultError>,
    ) -> Result<(Self, Contents), VaultError> {
        let bytes = read_vault_file(&files)?;
        let header = decode_header(&files.vault, &bytes)?;

        let (key, origin) = match header.key_mode {
            KeyMode::KeyFile => match env_key {
                Some(key) => (key, KeyOrigin::Environment),
                None => (
                    read_key_file(&files.key)?,
                    KeyOrigin::KeyFile(files.key.clone()),
                ),
            },
            KeyMode::Passphrase => {
                let passphrase = passphrase()?;
                let key = MasterKey::derive(passphrase.expose(), &header.salt, header.kdf)
                    .map_err(VaultError::Kdf)?;
                (key, KeyOrigin::Passphrase)
            }
        };
        if key.check_value() != header.key_check {
            return Err(VaultError::WrongKey {
                path: files.vault.clone(),
                origin,
            });
        }

        let vault = Self {
            files,
            key,
            origin,
            template: header,
        };
        let contents = vault.decrypt(&bytes)?;
        debug!(path = %vault.files.vault.display(), secrets = contents.len(), "vault opened");
        Ok((vault, contents))
    }

    /// The files of this vault.
    pub fn files(&self) -> &VaultFiles {
        &self.files
    }

    /// How this vault's key is obtained.
    pub fn key_mode(&self) -> KeyMode {
        self.template.key_mode
    }

    /// Reads the current contents (another process may have written since `open`).
    pub fn read(&self) -> Result<Contents, VaultError> {
        let bytes = read_vault_file(&self.files)?;
        self.decrypt(&bytes)
    }

    /// Read-modify-write under the cross-process lock. `change` sees the newest contents; when
    /// it fails nothing is written.
    pub fn update<T>(
        &self,
        change: impl FnOnce(&mut Contents) -> Result<T, VaultError>,
    ) -> Result<T, VaultError> {
        let _lock = lock(&self.files)?;
        remove_stale_temp_files(&self.files.dir);
        let mut contents = self.read()?;
        let result = change(&mut contents)?;
        self.write(&contents)?;
        Ok(result)
    }

    /// Checks and decrypts the bytes of a vault file with this vault's key.
    fn decrypt(&self, bytes: &[u8]) -> Result<Contents, VaultError> {
        let path = &self.files.vault;
        let header = decode_header(path, bytes)?;

        // The file may have been replaced by a vault with another key since `open`.
        if header.key_check != self.key.check_value() {
            return Err(VaultError::WrongKey {
                path: path.clone(),
                origin: self.origin.clone(),
            });
        }
        let plaintext = format::open(&self.key, &header, bytes)
            .ok_or_else(|| VaultError::CiphertextTampered { path: path.clone() })?;
        Contents::decode(&plaintext).map_err(|source| VaultError::Payload {
            path: path.clone(),
            source,
        })
    }

    /// Seals `contents` with a fresh nonce and replaces the vault file atomically.
    fn write(&self, contents: &Contents) -> Result<(), VaultError> {
        let file =
            format::seal(&self.key, &self.template, contents.encode()).map_err(VaultError::Seal)?;
        write_atomically(&self.files.dir, &self.files.vault, &file)?;
        debug!(path = %self.files.vault.display(), secrets = contents.len(), "vault written");
        Ok(())
    }
}

fn header_template(key_mode: KeyMode, kdf: KdfParams, salt: [u8; SALT_LEN]) -> Header {
    Header {
        key_mode,
        kdf,
        salt,
        nonce: [0; NONCE_LEN],
        ciphertext_len: 0,
        key_check: [0; KEY_CHECK_LEN],
    }
}

/// Maps a layout problem to the vault error that names it.
fn decode_header(path: &Path, bytes: &[u8]) -> Result<Header, VaultError> {
    let path = path.to_path_buf();
    Header::decode(bytes).map_err(|err| match err {
        LayoutError::Foreign => VaultError::ForeignFile { path },
        LayoutError::UnsupportedVersion(version) => {
            VaultError::UnsupportedVersion { path, version }
        }
        LayoutError::Truncated { expected, actual } => VaultError::Truncated {
            path,
            expected,
            actual,
        },
        LayoutError::TrailingBytes { expected, actual } => VaultError::TrailingData {
            path,
            expected,
            actual,
        },
        LayoutError::HeaderChecksum => VaultError::HeaderTampered { path },
        LayoutError::HeaderField(reason) => VaultError::HeaderInvalid { path, reason },
    })
}

fn read_vault_file(files: &VaultFiles) -> Result<Vec<u8>, VaultError> {
    let path = &files.vault;
    match read_regular_file(path, MAX_VAULT_FILE_LEN) {
        Ok(bytes) => Ok(bytes),
        Err(ReadFailure::Missing) => Err(VaultError::NotInitialized { path: path.clone() }),
        Err(ReadFailure::NotRegular) => Err(VaultError::NotAFile { path: path.clone() }),
        Err(ReadFailure::TooLarge) => Err(VaultError::ForeignFile { path: path.clone() }),
        Err(ReadFailure::Io(source)) => Err(VaultError::ReadVault {
            path: path.clone(),
            source,
        }),
    }
}

fn read_key_file(path: &Path) -> Result<MasterKey, VaultError> {
    let text = match read_regular_file(path, MAX_KEY_FILE_LEN) {
        Ok(text) => Zeroizing::new(text),
        Err(ReadFailure::Missing) => {
            return Err(VaultError::KeyMissing {
                path: path.to_path_buf(),
            });
        }
        Err(ReadFailure::NotRegular) => {
            return Err(VaultError::NotAFile {
                path: path.to_path_buf(),
            });
        }
        // Too long to be a key: report it as malformed, by its length only.
        Err(ReadFailure::TooLarge) => {
            return Err(VaultError::KeyText {
                origin: KeyOrigin::KeyFile(path.to_path_buf()),
                source: key::KeyTextError::Length {
                    found: usize::try_from(MAX_KEY_FILE_LEN + 1).unwrap_or(usize::MAX),
                },
            });
        }
        Err(ReadFailure::Io(source)) => {
            return Err(VaultError::ReadKey {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    if let Ok(metadata) = fs::metadata(path) {
        let mode = metadata.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            warn!(
                path = %path.display(),
                mode = format!("{mode:o}"),
                "master key file is readable by other users"
            );
        }
    }
    MasterKey::from_hex(&text).map_err(|source| VaultError::KeyText {
        origin: KeyOrigin::KeyFile(path.to_path_buf()),
        source,
    })
}

/// Why [`read_regular_file`] returned no bytes.
enum ReadFailure {
    Missing,
    NotRegular,
    TooLarge,
    Io(io::Error),
}

/// Reads a regular file (a symlink to one is followed) of at most `limit` bytes. A FIFO, a
/// device or a directory is refused before it is opened: reading one could block forever
/// or never end.
fn read_regular_file(path: &Path, limit: u64) -> Result<Vec<u8>, ReadFailure> {
    let metadata = match fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Err(ReadFailure::Missing),
        Err(err) => return Err(ReadFailure::Io(err)),
    };
    if !metadata.is_file() {
        return Err(ReadFailure::NotRegular);
    }
    if metadata.len() > limit {
        return Err(ReadFailure::TooLarge);
    }

    // The file may grow between the check and the read; `take` keeps the bound anyway.
    let file = File::open(path).map_err(ReadFailure::Io)?;
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(ReadFailure::Io)?;
    if bytes.len() as u64 > limit {
        return Err(ReadFailure::TooLarge);
    }
    Ok(bytes)
}

/// Makes sure `dir` exists and only its owner can enter it.
///
/// A missing directory is created with mode 0700 from the start (no window in which the umask
/// decides). An existing real directory of ours is tightened to 0700. Anything else (a
/// symlink, a directory of another user) is never chmod-ed, because that would change a
/// directory we do not own, e.g. `/tmp` behind a symlinked `~/.dso`; it is accepted only
/// when it is already closed to other users.
pub fn create_private_dir(dir: &Path) -> Result<(), VaultError> {
    let error = |source| VaultError::CreateDir {
        path: dir.to_path_buf(),
        source,
    };
    match fs::symlink_metadata(dir) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(dir)
                .map_err(error);
        }
        Err(err) => return Err(error(err)),
        Ok(link) if link.is_dir() && link.uid() == effective_uid() => {
            return fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE)).map_err(error);
        }
        Ok(_) => {}
    }

    // A symlink or a directory owned by someone else: check the real directory behind it.
    let target = match fs::metadata(dir) {
        Ok(target) => target,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return Err(VaultError::HomeNotDirectory {
                path: dir.to_path_buf(),
            });
        }
        Err(err) => return Err(error(err)),
    };
    if !target.is_dir() {
        return Err(VaultError::HomeNotDirectory {
            path: dir.to_path_buf(),
        });
    }
    let mode = target.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(VaultError::HomeNotPrivate {
            path: dir.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid takes no arguments, touches no memory of ours and cannot fail.
    unsafe { libc::geteuid() }
}

/// Deletes temporary files that a killed writer left behind. Called with the lock held, when
/// no other writer can be between creating and renaming its temporary file. Failing to delete
/// one only costs disk space, so it is logged, not returned.
fn remove_stale_temp_files(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let is_temp = entry
            .file_name()
            .to_str()
            .is_some_and(|name| name.starts_with(TEMP_PREFIX));
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if is_temp && is_file {
            let path = entry.path();
            match fs::remove_file(&path) {
                Ok(()) => debug!(path = %path.display(), "stale temporary file removed"),
                Err(err) => warn!(
                    path = %path.display(),
                    error = %err,
                    "could not remove a stale temporary file"
                ),
            }
        }
    }
}

fn lock(files: &VaultFiles) -> Result<WriteLock, VaultError> {
    let error = |source| VaultError::Lock {
        path: files.lock.clone(),
        source,
    };
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(FILE_MODE)
        .open(&files.lock)
        .map_err(error)?;
    file.lock().map_err(error)?;
    Ok(WriteLock { _file: file })
}

fn remove_if_present(path: &Path) -> Result<(), VaultError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(VaultError::Remove {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Replaces `target` with `bytes` so that a crash at any point leaves either the old file or
/// the new one: temp file in the same directory (mode 0600), fsync, rename, fsync directory.
fn write_atomically(dir: &Path, target: &Path, bytes: &[u8]) -> Result<(), VaultError> {
    let error = |step: &'static str| {
        move |source| VaultError::Write {
            path: target.to_path_buf(),
            step,
            source,
        }
    };
    let mut temp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .permissions(fs::Permissions::from_mode(FILE_MODE))
        .tempfile_in(dir)
        .map_err(error("create a temporary file"))?;
    temp.write_all(bytes)
        .map_err(error("write the temporary file"))?;
    temp.as_file()
        .sync_all()
        .map_err(error("fsync the temporary file"))?;
    temp.persist(target)
        .map_err(|err| error("rename the temporary file")(err.error))?;

    // The rename is durable only once the directory entry is.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(error("fsync the directory"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_passphrase() -> Result<SecretValue, VaultError> {
        Err(VaultError::PassphraseRequired)
    }

    #[test]
    fn create_then_open_in_key_file_mode() {
        let dir = tempfile::tempdir().unwrap();
        let files = VaultFiles::in_dir(dir.path().join("home"));
        let (_, wrote_key) = Vault::create(files.clone(), NewKey::Random, false).unwrap();
        assert!(wrote_key);

        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&files.dir), 0o700);
        assert_eq!(mode(&files.key), 0o600);
        assert_eq!(mode(&files.vault), 0o600);

        let (_, contents) = Vault::open(files, None, &mut no_passphrase).unwrap();
        assert!(contents.is_empty());
    }

    #[test]
    fn create_refuses_to_overwrite_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let files = VaultFiles::in_dir(dir.path());
        Vault::create(files.clone(), NewKey::Random, false).unwrap();
        let before = fs::read(&files.vault).unwrap();
        let err = Vault::create(files.clone(), NewKey::Random, false).unwrap_err();
        assert!(matches!(err, VaultError::AlreadyExists { .. }), "{err}");
        assert_eq!(fs::read(&files.vault).unwrap(), before);
        Vault::create(files, NewKey::Random, true).unwrap();
    }

    #[test]
    fn update_is_visible_to_a_fresh_open() {
        let dir = tempfile::tempdir().unwrap();
        let files = VaultFiles::in_dir(dir.path());
        let (vault, _) = Vault::create(files.clone(), NewKey::Random, false).unwrap();
        let path = super::super::parse_path("a/b").unwrap();
        vault
            .update(|c| {
                c.set(
                    path.clone(),
                    SecretValue::from_slice(b"v1"),
                    std::time::SystemTime::now(),
                    10,
                );
                Ok(())
            })
            .unwrap();
        let (_, contents) = Vault::open(files, None, &mut no_passphrase).unwrap();
        assert_eq!(contents.latest(&path).unwrap().value.expose(), b"v1");
    }

    #[test]
    fn passphrase_mode_needs_the_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let files = VaultFiles::in_dir(dir.path());
        let pass = SecretValue::from_slice(b"correct horse");
        let (vault, wrote_key) =
            Vault::create(files.clone(), NewKey::Passphrase(pass.clone()), false).unwrap();
        assert!(!wrote_key);
        assert_eq!(vault.key_mode(), KeyMode::Passphrase);
        assert!(!files.key.exists());

        assert!(matches!(
            Vault::open(files.clone(), None, &mut no_passphrase),
            Err(VaultError::PassphraseRequired)
        ));
        let mut wrong = || Ok(SecretValue::from_slice(b"wrong"));
        assert!(matches!(
            Vault::open(files.clone(), None, &mut wrong),
            Err(VaultError::WrongKey {
                origin: KeyOrigin::Passphrase,
                ..
            })
        ));
        let mut right = || Ok(pass.clone());
        Vault::open(files, None, &mut right).unwrap();
    }

    #[test]
    fn missing_vault_and_missing_key_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let files = VaultFiles::in_dir(dir.path());
        assert!(matches!(
            Vault::open(files.clone(), None, &mut no_passphrase),
            Err(VaultError::NotInitialized { .. })
        ));
        Vault::create(files.clone(), NewKey::Random, false).unwrap();
        fs::remove_file(&files.key).unwrap();
        assert!(matches!(
            Vault::open(files, None, &mut no_passphrase),
            Err(VaultError::KeyMissing { .. })
        ));
    }

    #[test]
    fn create_never_changes_a_shared_directory_behind_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        fs::create_dir(&shared).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
        let home = dir.path().join("home");
        std::os::unix::fs::symlink(&shared, &home).unwrap();

        let err = Vault::create(VaultFiles::in_dir(&home), NewKey::Random, false).unwrap_err();
        assert!(
            matches!(err, VaultError::HomeNotPrivate { mode: 0o1777, .. }),
            "{err}"
        );
        let mode = fs::metadata(&shared).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o1777, "the shared directory was chmod-ed");
        assert!(!shared.join("master.key").exists());

        // A private directory behind a symlink is fine.
        fs::set_permissions(&shared, fs::Permissions::from_mode(0o700)).unwrap();
        Vault::create(VaultFiles::in_dir(&home), NewKey::Random, false).unwrap();
    }

    #[test]
    fn create_refuses_a_home_that_is_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        fs::write(&home, b"x").unwrap();
        let err = Vault::create(VaultFiles::in_dir(&home), NewKey::Random, false).unwrap_err();
        assert!(matches!(err, VaultError::HomeNotDirectory { .. }), "{err}");
        assert!(err.to_string().contains("is not a directory"), "{err}");
    }

    #[test]
    fn open_refuses_devices_instead_of_reading_forever() {
        let dir = tempfile::tempdir().unwrap();
        let files = VaultFiles::in_dir(dir.path());
        Vault::create(files.clone(), NewKey::Random, false).unwrap();

        fs::remove_file(&files.key).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &files.key).unwrap();
        let err = Vault::open(files.clone(), None, &mut no_passphrase).unwrap_err();
        assert!(matches!(err, VaultError::NotAFile { .. }), "{err}");

        fs::remove_file(&files.vault).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &files.vault).unwrap();
        let err = Vault::open(files, None, &mut no_passphrase).unwrap_err();
        assert!(matches!(err, VaultError::NotAFile { .. }), "{err}");
    }

    #[test]
    fn oversized_key_file_is_malformed_not_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let files = VaultFiles::in_dir(dir.path());
        Vault::create(files.clone(), NewKey::Random, false).unwrap();
        fs::write(&files.key, vec![b'a'; 1 << 20]).unwrap();
        let err = Vault::open(files, None, &mut no_passphrase).unwrap_err();
        assert!(matches!(err, VaultError::KeyText { .. }), "{err}");
    }

    #[test]
    fn stale_temp_files_of_killed_writers_are_removed_by_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let files = VaultFiles::in_dir(dir.path());
        let (vault, _) = Vault::create(files.clone(), NewKey::Random, false).unwrap();
        let stale = files.dir.join(format!("{TEMP_PREFIX}killed"));
        fs::write(&stale, b"half a vault").unwrap();
        let unrelated = files.dir.join("notes.txt");
        fs::write(&unrelated, b"mine").unwrap();

        vault.update(|_| Ok(())).unwrap();
        assert!(!stale.exists());
        assert!(unrelated.exists());
    }
}
