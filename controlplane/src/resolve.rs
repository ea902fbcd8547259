//! Where the rotation engine gets the newest value of a reference: the [`ValueSource`] trait,
//! the local vault as one ([`LocalVault`]), and a keyed [`fingerprint`] of a value for change
//! detection.
//!
//! A source is asked again for every rotation, so a rotation always runs with the values that
//! are current when it starts (a second change that waited for the service lock is never
//! lost). Values stay in [`SecretValue`]s; errors name the reference, never a value.

use std::sync::Mutex;

use blake2::Blake2bMac;
use blake2::digest::consts::U32;
use blake2::digest::{KeyInit as _, Mac as _};

use crate::config::{Config, ProviderSettings};
use crate::reference::{self, Reference};
use crate::secret::SecretValue;
use crate::vault::key::MasterKey;
use crate::vault::{KeyOrigin, MASTER_KEY_ENV, PASSPHRASE_ENV, Vault, VaultError, VaultFiles};

/// Name of the local provider when `dso.yaml` defines none.
pub const DEFAULT_LOCAL_PROVIDER: &str = "local";

/// Why a reference could not be resolved. Names the reference, never a value.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The reference names a provider this source does not serve.
    #[error("{reference}: provider `{provider}` is not served here")]
    Provider {
        /// Reference text.
        reference: String,
        /// Provider name.
        provider: String,
    },

    /// The vault could not be opened or read.
    #[error("{reference}: the local vault could not be read")]
    Vault {
        /// Reference text.
        reference: String,
        /// Cause.
        #[source]
        source: VaultError,
    },

    /// No secret at the path.
    #[error("{reference}: no secret at this path")]
    Missing {
        /// Reference text.
        reference: String,
    },

    /// `#key` could not select a field.
    #[error("{reference}: the key does not select a value")]
    Select {
        /// Reference text.
        reference: String,
        /// Cause.
        #[source]
        source: reference::SelectError,
    },
}

impl ResolveError {
    /// What to do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::Missing { reference } => Some(format!(
                "store it with `docker dso secret set` (reference {reference})"
            )),
            Self::Vault { source, .. } => source.hint(),
            Self::Provider { .. } => Some("only the local vault is read by this agent".into()),
            Self::Select { .. } => Some("see docs/references.md for what #key selects".into()),
        }
    }
}

/// Something that gives the current value of a reference (`#key` already selected).
pub trait ValueSource: Send + Sync {
    /// The current value of `reference`.
    fn resolve(&self, reference: &Reference) -> Result<SecretValue, ResolveError>;

    /// The current values of several references, in order. A source that reads a whole store
    /// per call (the local vault decrypts its file) reads it once here.
    fn resolve_many(&self, references: &[Reference]) -> Vec<Result<SecretValue, ResolveError>> {
        references.iter().map(|r| self.resolve(r)).collect()
    }
}

/// The local vault as a value source. The vault is opened on first use and its file is read
/// again on every call, because the CLI (`docker dso secret set`) changes it behind our back.
pub struct LocalVault {
    files: VaultFiles,
    /// Names under which references reach this vault (besides no provider at all).
    providers: Vec<String>,
    /// The opened vault (holds the key); `None` until the first call.
    opened: Mutex<Option<Vault>>,
}

impl LocalVault {
    /// A source over the vault in `files`, answering references without a provider and those
    /// naming one of `providers`.
    pub fn new(files: VaultFiles, providers: Vec<String>) -> Self {
        Self {
            files,
            providers,
            opened: Mutex::new(None),
        }
    }

    /// The vault of the current dso home, serving the local providers of `config`.
    pub fn from_config(config: &Config) -> Result<Self, VaultError> {
        let mut providers: Vec<String> = config
            .providers
            .iter()
            .filter(|(_, p)| matches!(p, ProviderSettings::Local { .. }))
            .map(|(name, _)| name.clone())
            .collect();
        if providers.is_empty() {
            providers.push(DEFAULT_LOCAL_PROVIDER.into());
        }
        Ok(Self::new(VaultFiles::locate()?, providers))
    }

    fn open(&self) -> Result<Vault, VaultError> {
        let env_key = match std::env::var_os(MASTER_KEY_ENV).filter(|v| !v.is_empty()) {
            None => None,
            Some(text) => {
                use std::os::unix::ffi::OsStringExt as _;
                let text = SecretValue::new(text.into_vec());
                let key =
                    MasterKey::from_hex(text.expose()).map_err(|source| VaultError::KeyText {
                        origin: KeyOrigin::Environment,
                        source,
                    })?;
                Some(key)
            }
        };
        // A daemon has no terminal: the passphrase comes from the environment or not at all.
        let mut passphrase = || {
            use std::os::unix::ffi::OsStringExt as _;
            std::env::var_os(PASSPHRASE_ENV)
                .map(|v| SecretValue::new(v.into_vec()))
                .ok_or(VaultError::PassphraseRequired)
        };
        let (vault, _) = Vault::open(self.files.clone(), env_key, &mut passphrase)?;
        Ok(vault)
    }
}

impl LocalVault {
    /// The vault's contents as they are now: the key is opened once, the file read each time.
    fn contents(&self) -> Result<crate::vault::Contents, VaultError> {
        // A poisoned lock only means another call panicked; the slot is still usable.
        let mut slot = self.opened.lock().unwrap_or_else(|p| p.into_inner());
        let vault = match &mut *slot {
            Some(vault) => vault,
            empty @ None => empty.insert(self.open()?),
        };
        vault.read()
    }

    /// Whether this source serves the reference's provider.
    fn serves(&self, reference: &Reference) -> Result<(), ResolveError> {
        match &reference.provider {
            Some(provider) if !self.providers.contains(provider) => Err(ResolveError::Provider {
                reference: reference.to_string(),
                provider: provider.clone(),
            }),
            _ => Ok(()),
        }
    }
}

/// One reference's value from already read vault contents.
fn select_from(
    contents: &crate::vault::Contents,
    reference: &Reference,
) -> Result<SecretValue, ResolveError> {
    let text = reference.to_string();
    let record = contents
        .latest(&reference.path)
        .ok_or_else(|| ResolveError::Missing {
            reference: text.clone(),
        })?;
    match &reference.key {
        None => Ok(record.value.clone()),
        Some(key) => reference::select(&record.value, key).map_err(|source| ResolveError::Select {
            reference: text,
            source,
        }),
    }
}

impl ValueSource for LocalVault {
    fn resolve(&self, reference: &Reference) -> Result<SecretValue, ResolveError> {
        self.serves(reference)?;
        let contents = self.contents().map_err(|source| ResolveError::Vault {
            reference: reference.to_string(),
            source,
        })?;
        select_from(&contents, reference)
    }

    fn resolve_many(&self, references: &[Reference]) -> Vec<Result<SecretValue, ResolveError>> {
        let contents = match self.contents() {
            Ok(contents) => contents,
            // The same vault error for each: the file could not be read at all.
            Err(_) => return references.iter().map(|r| self.resolve(r)).collect(),
        };
        references
            .iter()
            .map(|r| self.serves(r).and_then(|()| select_from(&contents, r)))
            .collect()
    }
}

/// A keyed fingerprint of a value: hex of BLAKE2b-256 keyed with `key` (up to 64 bytes).
/// With a key private to the agent, a stored fingerprint reveals nothing about a weak value;
/// equal values give equal fingerprints under one key.
pub fn fingerprint(key: &[u8], value: &SecretValue) -> String {
    let mut mac = match Blake2bMac::<U32>::new_from_slice(&key[..key.len().min(64)]) {
        Ok(mac) => mac,
        Err(_) => unreachable!("a key of at most 64 bytes is within BLAKE2b's limit"),
    };
    mac.update(value.expose());
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_depend_on_key_and_value() {
        let one = SecretValue::from_slice(b"one");
        let two = SecretValue::from_slice(b"two");
        assert_eq!(fingerprint(b"k", &one), fingerprint(b"k", &one));
        assert_ne!(fingerprint(b"k", &one), fingerprint(b"k", &two));
        assert_ne!(fingerprint(b"k", &one), fingerprint(b"j", &one));
        assert_eq!(fingerprint(b"k", &one).len(), 64);
    }
}
