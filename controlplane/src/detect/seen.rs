//! Last-seen fingerprints, persisted: which value each service last got for each reference,
//! as a keyed BLAKE2b hash ([`crate::resolve::fingerprint`]), never the value.
//!
//! The key is 32 random bytes in `detect.key` (mode 0600) beside the state file, so a stored
//! fingerprint of a weak value cannot be guessed by someone who reads the state. The state
//! (`seen.json`) is written atomically (temp file, fsync, rename), so an agent killed at any
//! moment finds either the old or the new map, and an agent restarted with nothing changed
//! finds every fingerprint equal and rotates nothing.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::resolve::fingerprint;
use crate::secret::SecretValue;

/// File name of the fingerprint key.
pub const KEY_FILE: &str = "detect.key";
/// File name of the fingerprint map.
pub const STATE_FILE: &str = "seen.json";

/// Why the fingerprint state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SeenError {
    /// A file operation failed.
    #[error("{step} {} failed", path.display())]
    Io {
        /// What was being done.
        step: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The key file has the wrong size.
    #[error("{} is not a 32-byte key file", path.display())]
    BadKey {
        /// The file.
        path: PathBuf,
    },
    /// The state file is not a fingerprint map.
    #[error("{} is not a fingerprint map", path.display())]
    BadState {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
}

/// The persisted map `SERVICE|REFERENCE` → fingerprint.
pub struct Seen {
    dir: PathBuf,
    key: Zeroizing<Vec<u8>>,
    map: BTreeMap<String, String>,
}

impl std::fmt::Debug for Seen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seen")
            .field("dir", &self.dir)
            .field("entries", &self.map.len())
            .finish_non_exhaustive()
    }
}

impl Seen {
    /// Opens (or creates) the key and the map in `dir` (which must exist).
    pub fn open(dir: &Path) -> Result<Self, SeenError> {
        let key_path = dir.join(KEY_FILE);
        let key = match fs::read(&key_path) {
            Ok(bytes) if bytes.len() == 32 => Zeroizing::new(bytes),
            Ok(_) => return Err(SeenError::BadKey { path: key_path }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => create_key(&key_path)?,
            Err(source) => {
                return Err(SeenError::Io {
                    step: "read",
                    path: key_path,
                    source,
                });
            }
        };
        let state_path = dir.join(STATE_FILE);
        let map = match fs::read(&state_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| SeenError::BadState {
                path: state_path.clone(),
                source,
            })?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => {
                return Err(SeenError::Io {
                    step: "read",
                    path: state_path,
                    source,
                });
            }
        };
        Ok(Self {
            dir: dir.to_owned(),
            key,
            map,
        })
    }

    /// The fingerprint of `value` under this state's key.
    pub fn fingerprint(&self, value: &SecretValue) -> String {
        fingerprint(&self.key, value)
    }

    /// The last fingerprint `service` got for `reference`.
    pub fn get(&self, service: &str, reference: &str) -> Option<&str> {
        self.map.get(&entry(service, reference)).map(String::as_str)
    }

    /// Records a fingerprint and writes the map. Returns whether anything changed.
    pub fn set(&mut self, service: &str, reference: &str, print: &str) -> Result<bool, SeenError> {
        let previous = self.map.insert(entry(service, reference), print.to_owned());
        if previous.as_deref() == Some(print) {
            return Ok(false);
        }
        self.save()?;
        Ok(true)
    }

    /// Forgets entries of services that are no longer managed and writes the map.
    pub fn retain_services(&mut self, keep: &dyn Fn(&str) -> bool) -> Result<(), SeenError> {
        let before = self.map.len();
        self.map
            .retain(|k, _| keep(k.split_once('|').map_or(k.as_str(), |(s, _)| s)));
        if self.map.len() != before {
            self.save()?;
        }
        Ok(())
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether there is no entry.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn save(&self) -> Result<(), SeenError> {
        let text = serde_json::to_vec_pretty(&self.map).unwrap_or_default();
        crate::atomic::replace(&self.dir.join(STATE_FILE), &text, 0o600).map_err(|failed| {
            SeenError::Io {
                step: failed.step,
                path: failed.path,
                source: failed.source,
            }
        })
    }
}

fn entry(service: &str, reference: &str) -> String {
    format!("{service}|{reference}")
}

fn create_key(path: &Path) -> Result<Zeroizing<Vec<u8>>, SeenError> {
    let mut key = Zeroizing::new(vec![0u8; 32]);
    getrandom::fill(&mut key).map_err(|err| SeenError::Io {
        step: "generate key for",
        path: path.to_owned(),
        source: std::io::Error::other(err.to_string()),
    })?;
    let io = |step: &'static str| {
        let path = path.to_owned();
        move |source| SeenError::Io { step, path, source }
    };
    // create_new: two agents racing on one state directory must not overwrite each other's key.
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io("create"))?;
    file.write_all(&key).map_err(io("write"))?;
    file.sync_all().map_err(io("fsync"))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn fingerprints_survive_a_restart_and_never_hold_values() {
        let dir = tempfile::tempdir().unwrap();
        let sentinel = SecretValue::from_slice(b"SENTINEL-seen-value-5d1c");
        let print = {
            let mut seen = Seen::open(dir.path()).unwrap();
            let print = seen.fingerprint(&sentinel);
            assert!(seen.set("p/app", "dso://p/pw", &print).unwrap());
            assert!(
                !seen.set("p/app", "dso://p/pw", &print).unwrap(),
                "unchanged"
            );
            print
        };

        let seen = Seen::open(dir.path()).unwrap();
        assert_eq!(seen.get("p/app", "dso://p/pw"), Some(print.as_str()));
        assert_eq!(seen.fingerprint(&sentinel), print, "same key after restart");

        let key_mode = fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions();
        assert_eq!(key_mode.mode() & 0o777, 0o600);
        for name in [KEY_FILE, STATE_FILE] {
            let bytes = fs::read(dir.path().join(name)).unwrap();
            assert!(
                !bytes.windows(8).any(|w| w == b"SENTINEL"),
                "{name} holds the value"
            );
        }
    }

    #[test]
    fn different_state_dirs_give_different_fingerprints() {
        let one = tempfile::tempdir().unwrap();
        let two = tempfile::tempdir().unwrap();
        let value = SecretValue::from_slice(b"1234");
        assert_ne!(
            Seen::open(one.path()).unwrap().fingerprint(&value),
            Seen::open(two.path()).unwrap().fingerprint(&value)
        );
    }

    #[test]
    fn entries_of_gone_services_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut seen = Seen::open(dir.path()).unwrap();
        seen.set("p/a", "dso://x", "aa").unwrap();
        seen.set("p/b", "dso://x", "bb").unwrap();
        seen.retain_services(&|s| s == "p/a").unwrap();
        let seen = Seen::open(dir.path()).unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen.get("p/a", "dso://x"), Some("aa"));
    }

    #[test]
    fn a_broken_key_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(KEY_FILE), b"short").unwrap();
        let err = Seen::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains(KEY_FILE), "{err}");
    }
}
