//! The on-disk layout of `vault.enc`: the fixed header, and sealing/opening the payload.
//!
//! The layout is documented byte by byte in `docs/local-vault.md`; keep the two in step. The
//! header is plaintext (magic, version, how the key is obtained, Argon2id parameters, salt,
//! nonce, ciphertext length, key-check value, checksum) and is bound to the ciphertext as
//! AES-GCM associated data, so changing any header byte makes the file fail to open.
//!
//! Checks run from the cheapest and most specific to the cryptographic one, so every kind of
//! damage gets its own answer: foreign file (magic), unsupported version, truncated file,
//! damaged header (checksum), wrong key (key check), damaged ciphertext (GCM tag).

use aes_gcm::aead::AeadInOut as _;
use aes_gcm::{Nonce, Tag};
use blake2::Blake2b;
use blake2::digest::Digest as _;
use blake2::digest::consts::U16;
use zeroize::Zeroizing;

use super::key::{KEY_CHECK_LEN, KdfParams, MasterKey, SALT_LEN};

/// First eight bytes of every vault file.
pub const MAGIC: [u8; 8] = *b"DSOVAULT";

/// The format version this code writes and reads.
pub const FORMAT_VERSION: u16 = 1;

/// Bytes of the AES-GCM nonce.
pub const NONCE_LEN: usize = 12;

/// Bytes of the AES-GCM tag at the end of the file.
pub const TAG_LEN: usize = 16;

/// Bytes of the header checksum.
const CHECKSUM_LEN: usize = 16;

/// Offset of each header field; see `docs/local-vault.md`.
const OFFSET_VERSION: usize = 8;
const OFFSET_KEY_MODE: usize = 10;
const OFFSET_RESERVED: usize = 11;
const OFFSET_MEMORY: usize = 12;
const OFFSET_ITERATIONS: usize = 16;
const OFFSET_PARALLELISM: usize = 20;
const OFFSET_SALT: usize = 24;
const OFFSET_NONCE: usize = OFFSET_SALT + SALT_LEN;
const OFFSET_CIPHERTEXT_LEN: usize = OFFSET_NONCE + NONCE_LEN;
const OFFSET_KEY_CHECK: usize = OFFSET_CIPHERTEXT_LEN + 8;
const OFFSET_CHECKSUM: usize = OFFSET_KEY_CHECK + KEY_CHECK_LEN;

/// Total header length in bytes (92).
pub const HEADER_LEN: usize = OFFSET_CHECKSUM + CHECKSUM_LEN;

/// How the master key of a vault is obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyMode {
    /// A random key from `master.key` or `DSO_MASTER_KEY`.
    KeyFile,
    /// Argon2id of a passphrase, with the parameters and salt in the header.
    Passphrase,
}

impl KeyMode {
    fn to_byte(self) -> u8 {
        match self {
            Self::KeyFile => 1,
            Self::Passphrase => 2,
        }
    }
}

/// The decoded header of a vault file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Where the key comes from.
    pub key_mode: KeyMode,
    /// Argon2id parameters (all zero in key-file mode).
    pub kdf: KdfParams,
    /// Argon2id salt (all zero in key-file mode).
    pub salt: [u8; SALT_LEN],
    /// Nonce of this write.
    pub nonce: [u8; NONCE_LEN],
    /// Length of ciphertext plus tag that follows the header.
    pub ciphertext_len: u64,
    /// Identifies the key (see [`MasterKey::check_value`]).
    pub key_check: [u8; KEY_CHECK_LEN],
}

/// What is wrong with a file, before any key is involved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LayoutError {
    /// The magic bytes are not there: not a vault file.
    Foreign,
    /// A vault of a format version this build does not know.
    UnsupportedVersion(u16),
    /// The file ends before the header or the ciphertext does.
    Truncated {
        /// Bytes the header says the file has.
        expected: u64,
        /// Bytes the file has.
        actual: u64,
    },
    /// Bytes after the end of the ciphertext.
    TrailingBytes {
        /// Bytes the header says the file has.
        expected: u64,
        /// Bytes the file has.
        actual: u64,
    },
    /// The header checksum does not match: the header was changed.
    HeaderChecksum,
    /// The checksum matches but a field holds a value this version refuses.
    HeaderField(&'static str),
}

impl Header {
    /// The header bytes, checksum included.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[..OFFSET_VERSION].copy_from_slice(&MAGIC);
        out[OFFSET_VERSION..OFFSET_KEY_MODE].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[OFFSET_KEY_MODE] = self.key_mode.to_byte();
        out[OFFSET_RESERVED] = 0;
        out[OFFSET_MEMORY..OFFSET_ITERATIONS].copy_from_slice(&self.kdf.memory_kib.to_le_bytes());
        out[OFFSET_ITERATIONS..OFFSET_PARALLELISM]
            .copy_from_slice(&self.kdf.iterations.to_le_bytes());
        out[OFFSET_PARALLELISM..OFFSET_SALT].copy_from_slice(&self.kdf.parallelism.to_le_bytes());
        out[OFFSET_SALT..OFFSET_NONCE].copy_from_slice(&self.salt);
        out[OFFSET_NONCE..OFFSET_CIPHERTEXT_LEN].copy_from_slice(&self.nonce);
        out[OFFSET_CIPHERTEXT_LEN..OFFSET_KEY_CHECK]
            .copy_from_slice(&self.ciphertext_len.to_le_bytes());
        out[OFFSET_KEY_CHECK..OFFSET_CHECKSUM].copy_from_slice(&self.key_check);
        let checksum = checksum(&out[..OFFSET_CHECKSUM]);
        out[OFFSET_CHECKSUM..].copy_from_slice(&checksum);
        out
    }

    /// Reads and checks the header of a whole vault file (`file` is the complete contents).
    pub fn decode(file: &[u8]) -> Result<Self, LayoutError> {
        let actual = file.len() as u64;
        let truncated = |expected: usize| LayoutError::Truncated {
            expected: expected as u64,
            actual,
        };

        // 1. Magic. A short file that is a prefix of the magic is a cut-off vault.
        if file.len() < MAGIC.len() {
            return Err(if MAGIC.starts_with(file) {
                truncated(HEADER_LEN)
            } else {
                LayoutError::Foreign
            });
        }
        if file[..MAGIC.len()] != MAGIC {
            return Err(LayoutError::Foreign);
        }

        // 2. Version, before any other field, whose meaning depends on it.
        if file.len() < OFFSET_KEY_MODE {
            return Err(truncated(HEADER_LEN));
        }
        let version = u16::from_le_bytes([file[OFFSET_VERSION], file[OFFSET_VERSION + 1]]);
        if version != FORMAT_VERSION {
            return Err(LayoutError::UnsupportedVersion(version));
        }

        // 3. Whole header present and unchanged.
        if file.len() < HEADER_LEN {
            return Err(truncated(HEADER_LEN));
        }
        if checksum(&file[..OFFSET_CHECKSUM]) != file[OFFSET_CHECKSUM..HEADER_LEN] {
            return Err(LayoutError::HeaderChecksum);
        }

        // 4. Field values.
        let header = Self::decode_fields(file)?;

        // 5. Length of what follows, so a cut-off file is told apart from a changed one.
        let expected = HEADER_LEN as u64 + header.ciphertext_len;
        if actual < expected {
            return Err(LayoutError::Truncated { expected, actual });
        }
        if actual > expected {
            return Err(LayoutError::TrailingBytes { expected, actual });
        }
        Ok(header)
    }

    fn decode_fields(file: &[u8]) -> Result<Self, LayoutError> {
        let u32_at =
            |at: usize| u32::from_le_bytes([file[at], file[at + 1], file[at + 2], file[at + 3]]);
        let key_mode = match file[OFFSET_KEY_MODE] {
            1 => KeyMode::KeyFile,
            2 => KeyMode::Passphrase,
            _ => return Err(LayoutError::HeaderField("unknown key mode")),
        };
        if file[OFFSET_RESERVED] != 0 {
            return Err(LayoutError::HeaderField("reserved byte is not zero"));
        }
        let kdf = KdfParams {
            memory_kib: u32_at(OFFSET_MEMORY),
            iterations: u32_at(OFFSET_ITERATIONS),
            parallelism: u32_at(OFFSET_PARALLELISM),
        };
        let mut salt = [0u8; SALT_LEN];
        salt.copy_from_slice(&file[OFFSET_SALT..OFFSET_NONCE]);
        match key_mode {
            KeyMode::Passphrase if !kdf.is_within_bounds() => {
                return Err(LayoutError::HeaderField(
                    "Argon2id parameters out of bounds",
                ));
            }
            KeyMode::KeyFile if kdf != ZERO_KDF || salt != [0u8; SALT_LEN] => {
                return Err(LayoutError::HeaderField(
                    "key-file vault with KDF parameters",
                ));
            }
            _ => {}
        }
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&file[OFFSET_NONCE..OFFSET_CIPHERTEXT_LEN]);
        let mut length = [0u8; 8];
        length.copy_from_slice(&file[OFFSET_CIPHERTEXT_LEN..OFFSET_KEY_CHECK]);
        let ciphertext_len = u64::from_le_bytes(length);
        if ciphertext_len < TAG_LEN as u64 {
            return Err(LayoutError::HeaderField("ciphertext shorter than the tag"));
        }
        let mut key_check = [0u8; KEY_CHECK_LEN];
        key_check.copy_from_slice(&file[OFFSET_KEY_CHECK..OFFSET_CHECKSUM]);
        Ok(Self {
            key_mode,
            kdf,
            salt,
            nonce,
            ciphertext_len,
            key_check,
        })
    }
}

/// KDF fields of a key-file vault.
pub const ZERO_KDF: KdfParams = KdfParams {
    memory_kib: 0,
    iterations: 0,
    parallelism: 0,
};

/// Unkeyed BLAKE2b-128 of the header fields. It catches a changed header before the key is
/// derived from fields that may be damaged; tamper-proofing is the job of the GCM tag.
fn checksum(fields: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut out = [0u8; CHECKSUM_LEN];
    out.copy_from_slice(&Blake2b::<U16>::digest(fields));
    out
}

/// Encrypts `plaintext` under `key` with a fresh nonce and returns the complete file.
///
/// `template` supplies the key mode, KDF parameters and salt; nonce, length and key check are
/// filled in here. The plaintext buffer is encrypted in place, so no second plaintext copy is
/// made.
pub fn seal(
    key: &MasterKey,
    template: &Header,
    mut plaintext: Zeroizing<Vec<u8>>,
) -> Result<Vec<u8>, SealError> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(SealError::Random)?;
    let header = Header {
        nonce,
        ciphertext_len: (plaintext.len() + TAG_LEN) as u64,
        key_check: key.check_value(),
        ..template.clone()
    };
    let header_bytes = header.encode();

    let tag = key
        .cipher()
        .encrypt_inout_detached(
            &Nonce::from(nonce),
            &header_bytes,
            plaintext.as_mut_slice().into(),
        )
        .map_err(|_| SealError::Encrypt)?;

    let mut file = Vec::with_capacity(HEADER_LEN + plaintext.len() + TAG_LEN);
    file.extend_from_slice(&header_bytes);
    file.extend_from_slice(&plaintext);
    file.extend_from_slice(&tag);
    Ok(file)
}

/// Why [`seal`] failed.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The OS RNG failed.
    #[error("the operating system's random number generator failed: {0}")]
    Random(getrandom::Error),
    /// AES-GCM refused the input (only possible beyond its 64 GiB message limit).
    #[error("AES-GCM encryption failed")]
    Encrypt,
}

/// Decrypts a file whose header decoded to `header`. `None` means the GCM tag did not verify.
///
/// The caller has already compared the key check, so a failure here means the ciphertext (or
/// the header, in a way that kept its checksum valid) was changed.
pub fn open(key: &MasterKey, header: &Header, file: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
    let body = &file[HEADER_LEN..];
    let (ciphertext, tag) = body.split_at(body.len() - TAG_LEN);
    let tag = Tag::try_from(tag).ok()?;
    let mut buffer = Zeroizing::new(ciphertext.to_vec());
    key.cipher()
        .decrypt_inout_detached(
            &Nonce::from(header.nonce),
            &file[..HEADER_LEN],
            buffer.as_mut_slice().into(),
            &tag,
        )
        .ok()?;
    Some(buffer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealed(plaintext: &[u8]) -> (MasterKey, Vec<u8>) {
        let key = MasterKey::generate().unwrap();
        let template = Header {
            key_mode: KeyMode::KeyFile,
            kdf: ZERO_KDF,
            salt: [0; SALT_LEN],
            nonce: [0; NONCE_LEN],
            ciphertext_len: 0,
            key_check: [0; KEY_CHECK_LEN],
        };
        let file = seal(&key, &template, Zeroizing::new(plaintext.to_vec())).unwrap();
        (key, file)
    }

    #[test]
    fn header_is_92_bytes_and_round_trips() {
        assert_eq!(HEADER_LEN, 92);
        let (key, file) = sealed(b"hello");
        let header = Header::decode(&file).unwrap();
        assert_eq!(header.key_check, key.check_value());
        assert_eq!(header.encode()[..], file[..HEADER_LEN]);
        assert_eq!(&open(&key, &header, &file).unwrap()[..], b"hello");
    }

    #[test]
    fn every_write_uses_a_fresh_nonce() {
        let key = MasterKey::generate().unwrap();
        let (_, first) = sealed(b"x");
        let template = Header::decode(&first).unwrap();
        let a = seal(&key, &template, Zeroizing::new(b"x".to_vec())).unwrap();
        let b = seal(&key, &template, Zeroizing::new(b"x".to_vec())).unwrap();
        assert_ne!(
            a[OFFSET_NONCE..OFFSET_CIPHERTEXT_LEN],
            b[OFFSET_NONCE..OFFSET_CIPHERTEXT_LEN]
        );
        assert_ne!(a[HEADER_LEN..], b[HEADER_LEN..]);
    }

    #[test]
    fn layout_errors_are_distinct() {
        let (_, file) = sealed(b"payload");
        assert_eq!(
            Header::decode(b"not a vault at all"),
            Err(LayoutError::Foreign)
        );
        assert_eq!(Header::decode(b"{}"), Err(LayoutError::Foreign));
        assert!(matches!(
            Header::decode(b"DSOV"),
            Err(LayoutError::Truncated { .. })
        ));
        assert!(matches!(
            Header::decode(&file[..file.len() - 1]),
            Err(LayoutError::Truncated { .. })
        ));
        assert!(matches!(
            Header::decode(&file[..50]),
            Err(LayoutError::Truncated { .. })
        ));

        let mut longer = file.clone();
        longer.push(0);
        assert!(matches!(
            Header::decode(&longer),
            Err(LayoutError::TrailingBytes { .. })
        ));

        let mut version = file.clone();
        version[OFFSET_VERSION] = 9;
        assert_eq!(
            Header::decode(&version),
            Err(LayoutError::UnsupportedVersion(9))
        );

        let mut header = file.clone();
        header[OFFSET_NONCE] ^= 1;
        assert_eq!(Header::decode(&header), Err(LayoutError::HeaderChecksum));
    }

    #[test]
    fn changed_ciphertext_does_not_open() {
        let (key, mut file) = sealed(b"payload");
        let header = Header::decode(&file).unwrap();
        file[HEADER_LEN + 2] ^= 0x40;
        assert!(open(&key, &header, &file).is_none());
    }

    #[test]
    fn header_is_bound_as_associated_data() {
        // Change a field that opening does not otherwise use (the Argon2id pass count, the key
        // is given directly) and repair the checksum: only the GCM tag can refuse this file.
        let key = MasterKey::generate().unwrap();
        let template = Header {
            key_mode: KeyMode::Passphrase,
            kdf: KdfParams::DEFAULT,
            salt: [5; SALT_LEN],
            nonce: [0; NONCE_LEN],
            ciphertext_len: 0,
            key_check: [0; KEY_CHECK_LEN],
        };
        let file = seal(&key, &template, Zeroizing::new(b"payload".to_vec())).unwrap();
        let mut header = Header::decode(&file).unwrap();
        assert!(open(&key, &header, &file).is_some());

        header.kdf.iterations += 1;
        let mut forged = file.clone();
        forged[..HEADER_LEN].copy_from_slice(&header.encode());
        let decoded = Header::decode(&forged).unwrap();
        assert!(open(&key, &decoded, &forged).is_none());
    }
}
