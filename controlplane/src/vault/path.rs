//! Secret paths of the local vault: [`SecretPath`] and the rules it enforces.
//!
//! A path names a secret, e.g. `myapp/db_password`. It also appears in references
//! (`dso://myapp/db_password`), in Docker labels and in log lines, so the rules keep it to a
//! small character set that needs no quoting or escaping anywhere. A path is a name, never a
//! value: it may be logged.

use std::fmt;

/// Longest path in bytes.
pub const MAX_PATH_LEN: usize = 255;

/// Longest segment in bytes.
pub const MAX_SEGMENT_LEN: usize = 64;

/// Most segments in one path.
pub const MAX_SEGMENTS: usize = 8;

/// A validated secret path.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SecretPath(String);

/// Which path rule a candidate broke. The message states the rule, so the user can fix it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathRuleError {
    /// Empty path.
    #[error("a secret path must not be empty")]
    Empty,

    /// Too long.
    #[error("a secret path is at most {MAX_PATH_LEN} bytes long (this one has {len})")]
    TooLong {
        /// Length of the candidate.
        len: usize,
    },

    /// Starts or ends with `/`, or has `//`.
    #[error(
        "segments are separated by single `/`; a path must not start or end with `/` or \
         contain `//`"
    )]
    EmptySegment,

    /// Too many segments.
    #[error("a secret path has at most {MAX_SEGMENTS} segments separated by `/`")]
    TooManySegments,

    /// A segment over the length limit.
    #[error("each segment is at most {MAX_SEGMENT_LEN} bytes long")]
    SegmentTooLong,

    /// `.` or `..` as a segment.
    #[error("`.` and `..` are not allowed as segments")]
    DotSegment,

    /// A character outside the allowed set.
    #[error(
        "character {found:?} is not allowed; use letters A-Z a-z, digits 0-9, `_`, `-`, `.`, \
         and `/` between segments"
    )]
    BadCharacter {
        /// The offending character.
        found: char,
    },
}

impl SecretPath {
    /// Checks `candidate` against the path rules.
    pub fn parse(candidate: &str) -> Result<Self, PathRuleError> {
        if candidate.is_empty() {
            return Err(PathRuleError::Empty);
        }
        if candidate.len() > MAX_PATH_LEN {
            return Err(PathRuleError::TooLong {
                len: candidate.len(),
            });
        }
        if let Some(found) = candidate
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/')))
        {
            return Err(PathRuleError::BadCharacter { found });
        }

        let segments: Vec<&str> = candidate.split('/').collect();
        if segments.iter().any(|s| s.is_empty()) {
            return Err(PathRuleError::EmptySegment);
        }
        if segments.len() > MAX_SEGMENTS {
            return Err(PathRuleError::TooManySegments);
        }
        if segments.iter().any(|s| s.len() > MAX_SEGMENT_LEN) {
            return Err(PathRuleError::SegmentTooLong);
        }
        if segments.iter().any(|s| *s == "." || *s == "..") {
            return Err(PathRuleError::DotSegment);
        }
        Ok(Self(candidate.to_owned()))
    }

    /// The path text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SecretPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_typical_paths() {
        for ok in [
            "db",
            "myapp/db_password",
            "a.b-c_d/E/f9",
            "x/.hidden",
            "-lead",
        ] {
            assert_eq!(SecretPath::parse(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_each_rule_with_its_own_error() {
        let cases: &[(&str, PathRuleError)] = &[
            ("", PathRuleError::Empty),
            ("/a", PathRuleError::EmptySegment),
            ("a/", PathRuleError::EmptySegment),
            ("a//b", PathRuleError::EmptySegment),
            ("a/../b", PathRuleError::DotSegment),
            ("./a", PathRuleError::DotSegment),
            ("a b", PathRuleError::BadCharacter { found: ' ' }),
            ("a:b", PathRuleError::BadCharacter { found: ':' }),
            ("a#k", PathRuleError::BadCharacter { found: '#' }),
            ("é", PathRuleError::BadCharacter { found: 'é' }),
            ("a/b/c/d/e/f/g/h/i", PathRuleError::TooManySegments),
        ];
        for (input, expected) in cases {
            assert_eq!(
                &SecretPath::parse(input).unwrap_err(),
                expected,
                "input {input:?}"
            );
        }
        let long_segment = "a".repeat(MAX_SEGMENT_LEN + 1);
        assert_eq!(
            SecretPath::parse(&long_segment).unwrap_err(),
            PathRuleError::SegmentTooLong
        );
        let long_path = vec!["a".repeat(60); 5].join("/");
        assert!(matches!(
            SecretPath::parse(&long_path).unwrap_err(),
            PathRuleError::TooLong { .. }
        ));
    }

    #[test]
    fn error_message_states_the_rule() {
        let message = SecretPath::parse("a b").unwrap_err().to_string();
        assert!(message.contains("letters A-Z a-z"), "{message}");
    }
}
