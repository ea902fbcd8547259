//! The one type that holds a secret value in memory: [`SecretValue`].
//!
//! Every value read from a store, a prompt, a file or the environment travels in this type. It
//! zeroizes its buffer when dropped, prints `[REDACTED]` from `Debug`, and deliberately has no
//! `Display` and no `Serialize`, so a value cannot reach a log line, an error or a JSON document
//! by accident: the only way out is [`SecretValue::expose`], which is easy to find in review.

use std::fmt;
use std::io::{self, Read};

use zeroize::Zeroizing;

/// Size of the first buffer [`read_secret`] allocates, in bytes.
const READ_CHUNK: usize = 8 * 1024;

/// Bytes of a secret value. Exact bytes: nothing is trimmed, added or re-encoded.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(Zeroizing<Vec<u8>>);

impl SecretValue {
    /// Takes ownership of `bytes` without copying them.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// Copies `bytes` into a new value. The caller stays responsible for its own copy.
    pub fn from_slice(bytes: &[u8]) -> Self {
        Self::new(bytes.to_vec())
    }

    /// The raw bytes. Every call site is a place where the value leaves its wrapper on purpose.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Number of bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for the empty value (which is a valid secret).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The value with leading and trailing ASCII whitespace removed (`secret set --trim`).
    pub fn trimmed(&self) -> Self {
        Self::from_slice(self.0.trim_ascii())
    }
}

impl From<String> for SecretValue {
    fn from(text: String) -> Self {
        Self::new(text.into_bytes())
    }
}

impl fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretValue([REDACTED])")
    }
}

/// Why [`read_secret`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum ReadSecretError {
    /// The source held more than the allowed number of bytes.
    #[error("the value is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },

    /// Reading failed.
    #[error("reading the value failed")]
    Io(#[source] io::Error),
}

/// Reads all of `reader` into a [`SecretValue`], at most `limit` bytes.
///
/// Growing a plain `Vec` would leave copies of the value in freed memory. Here every buffer is
/// a `Zeroizing` one: when a bigger buffer is needed the old one is copied over and wiped.
pub fn read_secret(mut reader: impl Read, limit: usize) -> Result<SecretValue, ReadSecretError> {
    let mut buffer = Zeroizing::new(vec![0u8; READ_CHUNK.min(limit + 1).max(1)]);
    let mut filled = 0;
    loop {
        // One spare byte past the limit lets us tell "exactly limit" from "more than limit".
        if filled == buffer.len() {
            if buffer.len() > limit {
                return Err(ReadSecretError::TooLarge { limit });
            }
            let mut bigger = Zeroizing::new(vec![0u8; (buffer.len() * 2).min(limit + 1)]);
            bigger[..filled].copy_from_slice(&buffer[..filled]);
            buffer = bigger;
        }

        match reader.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(ReadSecretError::Io(err)),
        }
    }
    if filled > limit {
        return Err(ReadSecretError::TooLarge { limit });
    }
    Ok(SecretValue::from_slice(&buffer[..filled]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let value = SecretValue::from_slice(b"sentinel-6f1c");
        let shown = format!("{value:?} {:?}", vec![value.clone()]);
        assert!(!shown.contains("sentinel"), "{shown}");
        assert!(shown.contains("REDACTED"));
    }

    #[test]
    fn read_secret_keeps_exact_bytes_across_buffer_growth() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let value = read_secret(&data[..], 1 << 20).unwrap();
        assert_eq!(value.expose(), &data[..]);
    }

    #[test]
    fn read_secret_accepts_exactly_the_limit_and_refuses_one_more() {
        let data = vec![7u8; 1000];
        assert_eq!(read_secret(&data[..], 1000).unwrap().len(), 1000);
        assert!(matches!(
            read_secret(&data[..], 999),
            Err(ReadSecretError::TooLarge { limit: 999 })
        ));
    }

    #[test]
    fn read_secret_of_nothing_is_empty() {
        assert!(read_secret(&b""[..], 10).unwrap().is_empty());
    }

    #[test]
    fn trimmed_removes_only_outer_whitespace() {
        let value = SecretValue::from_slice(b" \n a b \r\n");
        assert_eq!(value.trimmed().expose(), b"a b");
    }
}
