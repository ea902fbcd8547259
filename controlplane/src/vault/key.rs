//! The vault's master key: [`MasterKey`], where it comes from, and the keys derived from it.
//!
//! A master key is 32 random bytes from the OS RNG (key-file mode), or the Argon2id hash of a
//! passphrase (passphrase mode). It is never used directly: keyed BLAKE2b derives one subkey
//! for AES-256-GCM and one key-check value, so the check stored in the header says nothing
//! about the encryption key. All key bytes live in zeroizing buffers.

use std::fmt;

use aes_gcm::{Aes256Gcm, KeyInit as _};
use argon2::{Algorithm, Argon2, Params, Version};
use blake2::Blake2bMac;
use blake2::digest::Mac as _;
use blake2::digest::consts::U32;
use zeroize::Zeroizing;

/// Bytes in a master key.
pub const KEY_LEN: usize = 32;

/// Hex characters in the text form of a key (`master.key`, `DSO_MASTER_KEY`).
pub const KEY_HEX_LEN: usize = KEY_LEN * 2;

/// Bytes of the key-check value kept in the header.
pub const KEY_CHECK_LEN: usize = 16;

/// Bytes of the Argon2id salt kept in the header.
pub const SALT_LEN: usize = 16;

/// Label of the subkey that encrypts the payload.
const ENCRYPTION_LABEL: &[u8] = b"dso vault v1: payload encryption key";

/// Label of the value that tells a wrong key from a damaged file.
const CHECK_LABEL: &[u8] = b"dso vault v1: key check";

/// Argon2id cost parameters, stored in the header so a later version can raise them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over the memory.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl KdfParams {
    /// What `init --passphrase` writes: 64 MiB, 3 passes, 1 lane (RFC 9106's second
    /// recommendation with one lane, since the CLI runs on one thread).
    pub const DEFAULT: Self = Self {
        memory_kib: 64 * 1024,
        iterations: 3,
        parallelism: 1,
    };

    /// Highest memory cost a header may ask for (1 GiB). A damaged header must not make us
    /// allocate without bound.
    pub const MAX_MEMORY_KIB: u32 = 1024 * 1024;

    /// Highest pass count a header may ask for.
    pub const MAX_ITERATIONS: u32 = 64;

    /// Highest lane count a header may ask for.
    pub const MAX_PARALLELISM: u32 = 16;

    /// True when the parameters are inside the bounds this version accepts.
    pub fn is_within_bounds(&self) -> bool {
        (8..=Self::MAX_MEMORY_KIB).contains(&self.memory_kib)
            && (1..=Self::MAX_ITERATIONS).contains(&self.iterations)
            && (1..=Self::MAX_PARALLELISM).contains(&self.parallelism)
            && self.memory_kib >= 8 * self.parallelism
    }
}

/// Why the text of a key was refused. Never contains the text.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyTextError {
    /// Wrong number of characters.
    #[error("expected {KEY_HEX_LEN} hexadecimal characters, found {found}")]
    Length {
        /// Characters found (after trimming whitespace).
        found: usize,
    },

    /// A character outside `0-9a-fA-F`.
    #[error("expected only hexadecimal characters 0-9 a-f")]
    NotHex,
}

/// A 256-bit master key.
pub struct MasterKey(Zeroizing<[u8; KEY_LEN]>);

impl MasterKey {
    /// A fresh random key from the operating system's RNG.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        getrandom::fill(key.as_mut())?;
        Ok(Self(key))
    }

    /// Parses the text form: 64 hex characters, surrounding whitespace ignored.
    pub fn from_hex(text: &[u8]) -> Result<Self, KeyTextError> {
        let text = text.trim_ascii();
        if text.len() != KEY_HEX_LEN {
            return Err(KeyTextError::Length { found: text.len() });
        }
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        hex::decode_to_slice(text, key.as_mut()).map_err(|_| KeyTextError::NotHex)?;
        Ok(Self(key))
    }

    /// The text form: 64 lowercase hex characters and a newline.
    pub fn to_hex_line(&self) -> Zeroizing<Vec<u8>> {
        let mut text = Zeroizing::new(vec![0u8; KEY_HEX_LEN + 1]);
        // The buffer has exactly twice the key length, which is all encode_to_slice needs.
        if hex::encode_to_slice(self.0.as_ref(), &mut text[..KEY_HEX_LEN]).is_err() {
            unreachable!("hex buffer is sized for the key");
        }
        text[KEY_HEX_LEN] = b'\n';
        text
    }

    /// Derives the key of a passphrase-mode vault with Argon2id.
    pub fn derive(
        passphrase: &[u8],
        salt: &[u8; SALT_LEN],
        params: KdfParams,
    ) -> Result<Self, argon2::Error> {
        let params = Params::new(
            params.memory_kib,
            params.iterations,
            params.parallelism,
            Some(KEY_LEN),
        )?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        argon.hash_password_into(passphrase, salt, key.as_mut())?;
        Ok(Self(key))
    }

    /// The value stored in the header that identifies this key without revealing it.
    pub fn check_value(&self) -> [u8; KEY_CHECK_LEN] {
        let full = self.subkey(CHECK_LABEL);
        let mut check = [0u8; KEY_CHECK_LEN];
        check.copy_from_slice(&full[..KEY_CHECK_LEN]);
        check
    }

    /// The AES-256-GCM cipher keyed with the payload subkey.
    pub fn cipher(&self) -> Aes256Gcm {
        let subkey = self.subkey(ENCRYPTION_LABEL);
        Aes256Gcm::new(&(*subkey).into())
    }

    /// Keyed BLAKE2b-256 of `label`: a pseudo-random subkey per purpose.
    fn subkey(&self, label: &[u8]) -> Zeroizing<[u8; KEY_LEN]> {
        let mut mac = match Blake2bMac::<U32>::new_from_slice(self.0.as_ref()) {
            Ok(mac) => mac,
            Err(_) => unreachable!("a 32-byte key is within BLAKE2b's 64-byte key limit"),
        };
        mac.update(label);
        let mut out = Zeroizing::new([0u8; KEY_LEN]);
        out.copy_from_slice(&mac.finalize().into_bytes());
        out
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey([REDACTED])")
    }
}

/// A fresh random salt for a passphrase-mode vault.
pub fn generate_salt() -> Result<[u8; SALT_LEN], getrandom::Error> {
    let mut salt = [0u8; SALT_LEN];
    getrandom::fill(&mut salt)?;
    Ok(salt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_whitespace_tolerance() {
        let key = MasterKey::generate().unwrap();
        let line = key.to_hex_line();
        assert_eq!(line.len(), 65);
        assert_eq!(line[64], b'\n');
        let back = MasterKey::from_hex(&line).unwrap();
        assert_eq!(back.check_value(), key.check_value());
    }

    #[test]
    fn bad_key_text_is_refused_without_echo() {
        assert_eq!(
            MasterKey::from_hex(b"abc").unwrap_err(),
            KeyTextError::Length { found: 3 }
        );
        let not_hex = vec![b'z'; KEY_HEX_LEN];
        assert_eq!(
            MasterKey::from_hex(&not_hex).unwrap_err(),
            KeyTextError::NotHex
        );
    }

    #[test]
    fn different_keys_have_different_check_values() {
        let a = MasterKey::generate().unwrap();
        let b = MasterKey::generate().unwrap();
        assert_ne!(a.check_value(), b.check_value());
    }

    #[test]
    fn passphrase_derivation_depends_on_passphrase_and_salt() {
        let params = KdfParams {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        };
        let salt = [1u8; SALT_LEN];
        let a = MasterKey::derive(b"pass", &salt, params).unwrap();
        let same = MasterKey::derive(b"pass", &salt, params).unwrap();
        let other_pass = MasterKey::derive(b"pasS", &salt, params).unwrap();
        let other_salt = MasterKey::derive(b"pass", &[2u8; SALT_LEN], params).unwrap();
        assert_eq!(a.check_value(), same.check_value());
        assert_ne!(a.check_value(), other_pass.check_value());
        assert_ne!(a.check_value(), other_salt.check_value());
    }

    #[test]
    fn kdf_bounds_refuse_huge_or_zero_costs() {
        assert!(KdfParams::DEFAULT.is_within_bounds());
        let huge = KdfParams {
            memory_kib: u32::MAX,
            ..KdfParams::DEFAULT
        };
        assert!(!huge.is_within_bounds());
        let zero = KdfParams {
            iterations: 0,
            ..KdfParams::DEFAULT
        };
        assert!(!zero.is_within_bounds());
    }

    #[test]
    fn debug_is_redacted() {
        let key = MasterKey::generate().unwrap();
        assert_eq!(format!("{key:?}"), "MasterKey([REDACTED])");
    }
}
