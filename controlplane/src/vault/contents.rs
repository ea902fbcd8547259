//! What a vault holds once decrypted: [`Contents`], its secrets and their versions, and the
//! binary encoding of that plaintext.
//!
//! Values are arbitrary bytes, so the plaintext is a small length-prefixed binary format rather
//! than JSON (which would need base64 and leave unzeroized copies in serde's buffers). Encoding
//! writes into one pre-sized zeroizing buffer; decoding copies each value straight into a
//! [`SecretValue`]. This module never logs and never formats a value.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use zeroize::Zeroizing;

use super::path::SecretPath;
use crate::secret::SecretValue;

/// How many versions of a secret are kept when nothing else is configured.
pub const DEFAULT_HISTORY: usize = 10;

/// One stored version of a secret.
#[derive(Clone, Debug)]
pub struct VersionRecord {
    /// 1 for the first value ever set at this path, then counting up; never reused while the
    /// path exists.
    pub number: u64,
    /// When the version was written (whole seconds).
    pub created: SystemTime,
    /// The value.
    pub value: SecretValue,
}

/// Every secret of a vault, each with its versions oldest first.
#[derive(Clone, Debug, Default)]
pub struct Contents {
    entries: BTreeMap<SecretPath, Vec<VersionRecord>>,
}

/// The plaintext did not decode. Only possible after the GCM tag verified, so it means a bug
/// or a file written by an incompatible build, never tampering.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PayloadError(pub &'static str);

impl Contents {
    /// The newest version at `path`.
    pub fn latest(&self, path: &SecretPath) -> Option<&VersionRecord> {
        self.entries.get(path).and_then(|versions| versions.last())
    }

    /// The version `number` at `path`, if it is still kept.
    pub fn version(&self, path: &SecretPath, number: u64) -> Option<&VersionRecord> {
        self.entries.get(path)?.iter().find(|v| v.number == number)
    }

    /// All kept versions at `path`, oldest first.
    pub fn history(&self, path: &SecretPath) -> Option<&[VersionRecord]> {
        self.entries.get(path).map(Vec::as_slice)
    }

    /// Every path with its versions, in path order.
    pub fn iter(&self) -> impl Iterator<Item = (&SecretPath, &[VersionRecord])> {
        self.entries
            .iter()
            .map(|(path, versions)| (path, versions.as_slice()))
    }

    /// Number of secrets.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the vault holds no secret.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Stores `value` as the next version at `path`, dropping the oldest versions beyond
    /// `keep` (at least 1). Returns the new version number.
    pub fn set(
        &mut self,
        path: SecretPath,
        value: SecretValue,
        now: SystemTime,
        keep: usize,
    ) -> u64 {
        let versions = self.entries.entry(path).or_default();
        let number = versions.last().map_or(1, |v| v.number + 1);
        versions.push(VersionRecord {
            number,
            created: whole_seconds(now),
            value,
        });
        let keep = keep.max(1);
        if versions.len() > keep {
            versions.drain(..versions.len() - keep);
        }
        number
    }

    /// Removes `path` with all its versions. Returns false when it did not exist.
    pub fn delete(&mut self, path: &SecretPath) -> bool {
        self.entries.remove(path).is_some()
    }

    /// The binary plaintext (layout in `docs/local-vault.md`).
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        // Size the buffer first: growing it would leave copies of values in freed memory.
        let size = 4 + self
            .entries
            .iter()
            .map(|(path, versions)| {
                2 + path.as_str().len()
                    + 4
                    + versions.iter().map(|v| 20 + v.value.len()).sum::<usize>()
            })
            .sum::<usize>();
        let mut out = Zeroizing::new(Vec::with_capacity(size));

        out.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        for (path, versions) in &self.entries {
            out.extend_from_slice(&(path.as_str().len() as u16).to_le_bytes());
            out.extend_from_slice(path.as_str().as_bytes());
            out.extend_from_slice(&(versions.len() as u32).to_le_bytes());
            for version in versions {
                out.extend_from_slice(&version.number.to_le_bytes());
                out.extend_from_slice(&unix_seconds(version.created).to_le_bytes());
                out.extend_from_slice(&(version.value.len() as u32).to_le_bytes());
                out.extend_from_slice(version.value.expose());
            }
        }
        debug_assert_eq!(out.len(), size);
        out
    }

    /// Parses the binary plaintext.
    pub fn decode(bytes: &[u8]) -> Result<Self, PayloadError> {
        let mut reader = Reader { rest: bytes };
        let mut entries = BTreeMap::new();
        let count = reader.u32()?;
        for _ in 0..count {
            let path_len = usize::from(reader.u16()?);
            let path_text = std::str::from_utf8(reader.take(path_len)?)
                .map_err(|_| PayloadError("path is not UTF-8"))?;
            let path =
                SecretPath::parse(path_text).map_err(|_| PayloadError("path breaks the rules"))?;
            let version_count = reader.u32()?;
            if version_count == 0 {
                return Err(PayloadError("secret without versions"));
            }
            let mut versions = Vec::new();
            for _ in 0..version_count {
                let number = reader.u64()?;
                let created = UNIX_EPOCH + Duration::from_secs(reader.u64()?);
                let value_len = reader.u32()? as usize;
                let value = SecretValue::from_slice(reader.take(value_len)?);
                versions.push(VersionRecord {
                    number,
                    created,
                    value,
                });
            }
            if entries.insert(path, versions).is_some() {
                return Err(PayloadError("duplicate path"));
            }
        }
        if !reader.rest.is_empty() {
            return Err(PayloadError("bytes after the last secret"));
        }
        Ok(Self { entries })
    }
}

/// Seconds since the Unix epoch (0 for times before it).
pub fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn whole_seconds(time: SystemTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(unix_seconds(time))
}

/// A cursor over the plaintext that fails instead of reading past the end.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PayloadError> {
        if self.rest.len() < n {
            return Err(PayloadError("ends in the middle of a record"));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u16(&mut self) -> Result<u16, PayloadError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, PayloadError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, PayloadError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(text: &str) -> SecretPath {
        SecretPath::parse(text).unwrap()
    }

    #[test]
    fn encode_decode_round_trip_keeps_bytes_and_numbers() {
        let mut contents = Contents::default();
        let t = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        contents.set(path("a/b"), SecretValue::from_slice(b"\x00\xff\n"), t, 10);
        contents.set(path("a/b"), SecretValue::from_slice(b""), t, 10);
        contents.set(path("c"), SecretValue::from_slice("ünï".as_bytes()), t, 10);

        let decoded = Contents::decode(&contents.encode()).unwrap();
        let history = decoded.history(&path("a/b")).unwrap();
        assert_eq!(history.len(), 2);
        assert_eq!(history[0].number, 1);
        assert_eq!(history[0].value.expose(), b"\x00\xff\n");
        assert_eq!(history[1].number, 2);
        assert!(history[1].value.is_empty());
        assert_eq!(history[1].created, t);
        assert_eq!(
            decoded.latest(&path("c")).unwrap().value.expose(),
            "ünï".as_bytes()
        );
    }

    #[test]
    fn history_keeps_the_newest_and_numbers_keep_counting() {
        let mut contents = Contents::default();
        for i in 0..5u8 {
            contents.set(
                path("p"),
                SecretValue::from_slice(&[i]),
                SystemTime::now(),
                3,
            );
        }
        let numbers: Vec<u64> = contents
            .history(&path("p"))
            .unwrap()
            .iter()
            .map(|v| v.number)
            .collect();
        assert_eq!(numbers, vec![3, 4, 5]);
        assert_eq!(
            contents.version(&path("p"), 4).unwrap().value.expose(),
            &[3]
        );
        assert!(contents.version(&path("p"), 1).is_none());
    }

    #[test]
    fn delete_reports_whether_the_path_existed() {
        let mut contents = Contents::default();
        contents.set(
            path("p"),
            SecretValue::from_slice(b"v"),
            SystemTime::now(),
            10,
        );
        assert!(contents.delete(&path("p")));
        assert!(!contents.delete(&path("p")));
        assert!(contents.is_empty());
    }

    #[test]
    fn malformed_payloads_are_refused() {
        assert!(Contents::decode(b"").is_err());
        assert!(Contents::decode(&[1, 0, 0, 0]).is_err());
        let mut trailing = Contents::default().encode().to_vec();
        trailing.push(0);
        assert!(Contents::decode(&trailing).is_err());
    }
}
