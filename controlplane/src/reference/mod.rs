//! Secret references in compose files: `dso://[provider:]path[#key]` and
//! `dsofile://[provider:]path[#key]`, the grammar of `docs/references.md`.
//!
//! This module owns two pure steps that the CLI (`docker dso up`) and the agent share:
//! [`Reference::parse`] turns the text of an environment value into a [`Reference`], and
//! [`select`] picks the `#key` field out of a JSON secret. Neither does I/O. A reference is a
//! name, never a value, so it may be logged and stored in container labels; [`select`] handles
//! values and never puts one into an error.

use std::fmt;

use serde_json::value::RawValue;
use zeroize::Zeroizing;

use crate::secret::SecretValue;
use crate::vault::{PathRuleError, SecretPath};

/// Scheme of a reference whose value goes into the environment variable itself.
pub const ENV_SCHEME: &str = "dso://";

/// Scheme of a reference whose value goes into a file; the variable receives the file's path.
pub const FILE_SCHEME: &str = "dsofile://";

/// Longest provider name (the same rule as provider names in `dso.yaml`).
pub const MAX_PROVIDER_LEN: usize = 63;

/// Most `.`-separated segments in a `#key`.
pub const MAX_KEY_SEGMENTS: usize = 16;

/// How a resolved value reaches the container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Injection {
    /// `dso://`: the environment variable holds the value.
    Env,
    /// `dsofile://`: a file on a host tmpfs holds the value; the variable holds its path.
    File,
}

impl Injection {
    /// `env` or `file`, as in plans and labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Env => "env",
            Self::File => "file",
        }
    }
}

/// A parsed reference. Its `Display` gives back a canonical text that parses to the same
/// reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Env or file.
    pub injection: Injection,
    /// The provider named before the path, or `None` for the default (local) provider.
    pub provider: Option<String>,
    /// The secret's path (vault path rules).
    pub path: SecretPath,
    /// The JSON field to select, if any.
    pub key: Option<KeyPath>,
}

/// A `#key` selector: the segments of a nested JSON field, outermost first.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KeyPath(Vec<String>);

/// Why a text is not a valid reference. Messages quote only the reference text (a name).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// The value does not start with `dso://` or `dsofile://`.
    #[error("a reference starts with `dso://` or `dsofile://`")]
    NoScheme,

    /// Nothing after the scheme.
    #[error("the reference names no secret path")]
    EmptyPath,

    /// The provider prefix before `:` breaks the provider name rule.
    #[error(
        "provider name {name:?} is invalid: 1 to {MAX_PROVIDER_LEN} characters of a-z 0-9 _ -, \
         starting with a letter or digit"
    )]
    BadProvider {
        /// The text before `:`.
        name: String,
    },

    /// The path breaks a vault path rule.
    #[error("invalid secret path {path:?}")]
    BadPath {
        /// The path text.
        path: String,
        /// The rule.
        #[source]
        rule: PathRuleError,
    },

    /// `#` with nothing after it.
    #[error("`#` must be followed by a key")]
    EmptyKey,

    /// A key segment is empty (`#a..b`, `#.a`, `#a.`).
    #[error("key {key:?} has an empty segment; segments are separated by single `.`")]
    EmptyKeySegment {
        /// The key text.
        key: String,
    },

    /// A backslash not followed by `.` or `\`.
    #[error("key {key:?} has `\\` not followed by `.` or `\\`; write `\\.` for a dot in a name")]
    BadEscape {
        /// The key text.
        key: String,
    },

    /// Too deep a key.
    #[error("key {key:?} has more than {MAX_KEY_SEGMENTS} segments")]
    KeyTooDeep {
        /// The key text.
        key: String,
    },
}

impl ReferenceError {
    /// What the user can do about this error.
    pub fn hint(&self) -> &'static str {
        match self {
            Self::NoScheme | Self::EmptyPath => "write e.g. dso://myapp/db_password",
            Self::BadProvider { .. } => "write e.g. dso://aws:myapp/db_password, or drop `name:`",
            Self::BadPath { .. } => "paths use A-Z a-z 0-9 _ - . and `/` between segments",
            Self::EmptyKey | Self::EmptyKeySegment { .. } | Self::KeyTooDeep { .. } => {
                "write e.g. dso://myapp/db#password or #outer.inner"
            }
            Self::BadEscape { .. } => r"a key with a dot in its name is written `#a\.b`",
        }
    }
}

/// Why [`select`] could not pick a field. Messages name the key, never a value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    /// The secret is not valid UTF-8 JSON.
    #[error("the secret is not a JSON document, so `#{key}` cannot select from it")]
    NotJson {
        /// The whole key.
        key: KeyPath,
    },

    /// A segment names a member that does not exist.
    #[error("the secret has no key `{missing}` (selecting `#{key}`)")]
    MissingKey {
        /// The whole key.
        key: KeyPath,
        /// The key path up to and including the missing segment.
        missing: String,
    },

    /// A segment tried to descend into a string, number, boolean or null.
    #[error("`{at}` is a {kind}, not an object or array (selecting `#{key}`)")]
    NotContainer {
        /// The whole key.
        key: KeyPath,
        /// The key path of the scalar.
        at: String,
        /// JSON type name.
        kind: &'static str,
    },

    /// The selected field is `null`.
    #[error("`#{key}` is null")]
    Null {
        /// The whole key.
        key: KeyPath,
    },
}

impl Reference {
    /// Parses the whole text of an environment value. `Ok(None)` means the text is an ordinary
    /// value (it does not start with a scheme); `Err` means it starts with a scheme but is not
    /// a valid reference.
    pub fn detect(text: &str) -> Result<Option<Self>, ReferenceError> {
        if text.starts_with(ENV_SCHEME) || text.starts_with(FILE_SCHEME) {
            Self::parse(text).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Parses a reference (see `docs/references.md`).
    pub fn parse(text: &str) -> Result<Self, ReferenceError> {
        let (injection, rest) = if let Some(rest) = text.strip_prefix(ENV_SCHEME) {
            (Injection::Env, rest)
        } else if let Some(rest) = text.strip_prefix(FILE_SCHEME) {
            (Injection::File, rest)
        } else {
            return Err(ReferenceError::NoScheme);
        };

        // The key starts at the first `#`; paths and provider names contain no `#`.
        let (locator, key) = match rest.split_once('#') {
            Some((locator, key)) => (locator, Some(KeyPath::parse(key)?)),
            None => (rest, None),
        };

        // Paths contain no `:`, so a `:` before the key always ends a provider name.
        let (provider, path) = match locator.split_once(':') {
            Some((name, path)) => {
                check_provider(name)?;
                (Some(name.to_owned()), path)
            }
            None => (None, locator),
        };
        if path.is_empty() {
            return Err(ReferenceError::EmptyPath);
        }
        let path = SecretPath::parse(path).map_err(|rule| ReferenceError::BadPath {
            path: path.to_owned(),
            rule,
        })?;
        Ok(Self {
            injection,
            provider,
            path,
            key,
        })
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.injection {
            Injection::Env => ENV_SCHEME,
            Injection::File => FILE_SCHEME,
        })?;
        if let Some(provider) = &self.provider {
            write!(f, "{provider}:")?;
        }
        write!(f, "{}", self.path)?;
        if let Some(key) = &self.key {
            write!(f, "#{key}")?;
        }
        Ok(())
    }
}

fn check_provider(name: &str) -> Result<(), ReferenceError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_PROVIDER_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if valid {
        Ok(())
    } else {
        Err(ReferenceError::BadProvider {
            name: name.to_owned(),
        })
    }
}

impl KeyPath {
    /// Parses the text after `#`: segments separated by `.`, with `\.` for a literal dot and
    /// `\\` for a literal backslash.
    pub fn parse(text: &str) -> Result<Self, ReferenceError> {
        if text.is_empty() {
            return Err(ReferenceError::EmptyKey);
        }
        let mut segments = Vec::new();
        let mut current = String::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(escaped @ ('.' | '\\')) => current.push(escaped),
                    _ => {
                        return Err(ReferenceError::BadEscape {
                            key: text.to_owned(),
                        });
                    }
                },
                '.' => segments.push(std::mem::take(&mut current)),
                other => current.push(other),
            }
        }
        segments.push(current);

        if segments.iter().any(String::is_empty) {
            return Err(ReferenceError::EmptyKeySegment {
                key: text.to_owned(),
            });
        }
        if segments.len() > MAX_KEY_SEGMENTS {
            return Err(ReferenceError::KeyTooDeep {
                key: text.to_owned(),
            });
        }
        Ok(Self(segments))
    }

    /// The unescaped segments, outermost first.
    pub fn segments(&self) -> &[String] {
        &self.0
    }

    /// The first `n` segments in reference syntax, for error messages.
    fn prefix(&self, n: usize) -> String {
        Self(self.0[..n].to_vec()).to_string()
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            for c in segment.chars() {
                if c == '.' || c == '\\' {
                    f.write_str("\\")?;
                }
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

/// Selects `key` from the JSON document in `secret`.
///
/// Each segment names a member of an object, or, on an array, a zero-based decimal index.
/// A selected string gives its decoded contents; a number, boolean, object or array gives its
/// JSON text exactly as written in the secret; `null` is refused.
// LIMITATION: the JSON parser's intermediate buffers (member names, the decoded string before
// it is moved into the result) are not zeroized — serde_json allocates them internally [a
// zeroizing JSON reader would lift it].
pub fn select(secret: &SecretValue, key: &KeyPath) -> Result<SecretValue, SelectError> {
    let not_json = || SelectError::NotJson { key: key.clone() };
    let text = std::str::from_utf8(secret.expose()).map_err(|_| not_json())?;
    let mut current: &RawValue = serde_json::from_str(text).map_err(|_| not_json())?;

    for (depth, segment) in key.segments().iter().enumerate() {
        let raw = current.get();
        let at = || key.prefix(depth);
        current = match raw.as_bytes().first() {
            Some(b'{') => {
                let members: Vec<(String, &RawValue)> = object_members(raw).ok_or_else(not_json)?;
                // The last of duplicate members wins, as in most JSON readers.
                members
                    .into_iter()
                    .rev()
                    .find(|(name, _)| name == segment)
                    .map(|(_, value)| value)
                    .ok_or_else(|| SelectError::MissingKey {
                        key: key.clone(),
                        missing: key.prefix(depth + 1),
                    })?
            }
            Some(b'[') => {
                let items: Vec<&RawValue> = serde_json::from_str(raw).map_err(|_| not_json())?;
                parse_index(segment)
                    .and_then(|index| items.get(index).copied())
                    .ok_or_else(|| SelectError::MissingKey {
                        key: key.clone(),
                        missing: key.prefix(depth + 1),
                    })?
            }
            _ => {
                return Err(SelectError::NotContainer {
                    key: key.clone(),
                    at: if depth == 0 {
                        "the secret".to_owned()
                    } else {
                        at()
                    },
                    kind: kind_of(raw),
                });
            }
        };
    }

    let raw = current.get();
    match raw.as_bytes().first() {
        Some(b'"') => {
            let decoded: Zeroizing<String> =
                Zeroizing::new(serde_json::from_str(raw).map_err(|_| not_json())?);
            Ok(SecretValue::from_slice(decoded.as_bytes()))
        }
        Some(b'n') => Err(SelectError::Null { key: key.clone() }),
        _ => Ok(SecretValue::from_slice(raw.as_bytes())),
    }
}

/// The members of a JSON object in document order, duplicates kept.
fn object_members(raw: &str) -> Option<Vec<(String, &RawValue)>> {
    use serde::de::{Deserializer as _, MapAccess, Visitor};

    struct Members;
    impl<'de> Visitor<'de> for Members {
        type Value = Vec<(String, &'de RawValue)>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut members = Vec::new();
            while let Some(entry) = map.next_entry::<String, &'de RawValue>()? {
                members.push(entry);
            }
            Ok(members)
        }
    }
    let mut deserializer = serde_json::Deserializer::from_str(raw);
    deserializer.deserialize_map(Members).ok()
}

/// A decimal array index without sign or leading zeros.
fn parse_index(segment: &str) -> Option<usize> {
    let canonical = segment == "0" || !segment.starts_with('0');
    if canonical && segment.bytes().all(|b| b.is_ascii_digit()) {
        segment.parse().ok()
    } else {
        None
    }
}

fn kind_of(raw: &str) -> &'static str {
    match raw.as_bytes().first() {
        Some(b'"') => "string",
        Some(b't' | b'f') => "boolean",
        Some(b'n') => "null",
        _ => "number",
    }
}

#[cfg(test)]
mod tests;
