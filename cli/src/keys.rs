//! Where the CLI gets key material: `DSO_MASTER_KEY`, `DSO_PASSPHRASE`, or a no-echo prompt
//! on the terminal. Every value read here goes straight into a zeroizing type.

use std::fs::File;
use std::os::unix::ffi::OsStringExt as _;

use anyhow::Context as _;
use controlplane::secret::SecretValue;
use controlplane::vault::key::MasterKey;
use controlplane::vault::{KeyOrigin, MASTER_KEY_ENV, PASSPHRASE_ENV, VaultError};

/// Shortest passphrase `init --passphrase` accepts, in bytes.
const MIN_PASSPHRASE_LEN: usize = 8;

/// The key in `DSO_MASTER_KEY`, if set.
pub fn env_master_key() -> Result<Option<MasterKey>, VaultError> {
    let Some(text) = std::env::var_os(MASTER_KEY_ENV).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let text = SecretValue::new(text.into_vec());
    MasterKey::from_hex(text.expose())
        .map(Some)
        .map_err(|source| VaultError::KeyText {
            origin: KeyOrigin::Environment,
            source,
        })
}

/// True when a terminal is available for prompting, even if stdin is a pipe.
pub fn has_terminal() -> bool {
    File::open("/dev/tty").is_ok()
}

/// The passphrase of an existing vault: `DSO_PASSPHRASE`, else a prompt on the terminal.
pub fn passphrase() -> Result<SecretValue, VaultError> {
    if let Some(value) = std::env::var_os(PASSPHRASE_ENV) {
        return Ok(SecretValue::new(value.into_vec()));
    }
    if !has_terminal() {
        return Err(VaultError::PassphraseRequired);
    }
    prompt("Vault passphrase: ").map_err(|_| VaultError::PassphraseRequired)
}

/// A new passphrase: `DSO_PASSPHRASE`, else asked twice on the terminal when `may_prompt`.
pub fn new_passphrase(may_prompt: bool) -> anyhow::Result<SecretValue> {
    let passphrase = match std::env::var_os(PASSPHRASE_ENV) {
        Some(value) => SecretValue::new(value.into_vec()),
        None => {
            if !may_prompt || !has_terminal() {
                return Err(VaultError::PassphraseRequired.into());
            }
            let first = prompt("New vault passphrase: ").context("reading the passphrase")?;
            let second = prompt("Repeat the passphrase: ").context("reading the passphrase")?;
            if first != second {
                return Err(VaultError::PassphraseMismatch.into());
            }
            first
        }
    };
    if passphrase.len() < MIN_PASSPHRASE_LEN {
        anyhow::bail!("the passphrase must be at least {MIN_PASSPHRASE_LEN} bytes long");
    }
    Ok(passphrase)
}

/// One line from the terminal without echo (the newline is not part of the value).
pub fn prompt(text: &str) -> std::io::Result<SecretValue> {
    // LIMITATION: rpassword reads into its own String; we take that String over without a
    // copy and zeroize it on drop, but intermediate buffers inside rpassword are not wiped
    // [a terminal reader that fills a zeroizing buffer would lift this].
    rpassword::prompt_password(text).map(SecretValue::from)
}
