//! `${VAR}` expansion in configuration strings.
//!
//! Syntax: `${NAME}` is the value of the environment variable NAME and an error when it is not
//! set; `${NAME:-default}` is its value, or `default` when it is unset or empty; `$$` is one
//! literal `$`. Any other `$` is an error, so a typo never passes through silently. The default
//! is literal text up to the first `}` (no nesting). Expansion runs once, after YAML parsing, so
//! an expanded value can never inject YAML structure. Errors name the variable, never a value.

/// Why a string could not be expanded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExpandError {
    /// `${NAME}` with NAME unset.
    #[error(
        "environment variable `{name}` is not set (write `${{{name}:-default}}` to give a default)"
    )]
    Unset {
        /// The variable.
        name: String,
    },

    /// `${` without its `}`.
    #[error("`${{` at byte {offset} is not closed by `}}`")]
    Unclosed {
        /// Byte offset of the `$` in the string.
        offset: usize,
    },

    /// The text between `${` and `}` (or `:-`) is not a variable name.
    #[error("`{name}` is not a variable name (letters, digits and `_`, not starting with a digit)")]
    BadName {
        /// What was found.
        name: String,
    },

    /// A `$` not followed by `{` or `$`.
    #[error("a lone `$` at byte {offset}; write `$$` for a literal `$`")]
    LoneDollar {
        /// Byte offset of the `$`.
        offset: usize,
    },
}

/// Expands `text`, looking variables up with `lookup`.
pub fn expand(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, ExpandError> {
    // Fast path: most strings have no `$`.
    if !text.contains('$') {
        return Ok(text.to_owned());
    }

    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut offset = 0;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let dollar = offset + at;
        let after = &rest[at + 1..];

        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            offset = dollar + 2;
            rest = tail;
            continue;
        }
        let Some(body_and_tail) = after.strip_prefix('{') else {
            return Err(ExpandError::LoneDollar { offset: dollar });
        };
        let Some(close) = body_and_tail.find('}') else {
            return Err(ExpandError::Unclosed { offset: dollar });
        };
        let body = &body_and_tail[..close];
        let (name, default) = match body.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (body, None),
        };
        if !is_variable_name(name) {
            return Err(ExpandError::BadName {
                name: name.to_owned(),
            });
        }
        match (lookup(name), default) {
            (Some(value), Some(default)) if value.is_empty() => out.push_str(default),
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => {
                return Err(ExpandError::Unset {
                    name: name.to_owned(),
                });
            }
        }

        // Skip `${`, the body and `}`.
        let consumed = at + 1 + 1 + close + 1;
        offset += consumed;
        rest = &rest[consumed..];
    }
    out.push_str(rest);
    Ok(out)
}

fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TOKEN" => Some("t0k".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_set_unset_default_and_literal_dollar() {
        let cases = [
            ("plain", "plain"),
            ("${TOKEN}", "t0k"),
            ("a-${TOKEN}-b", "a-t0k-b"),
            ("${MISSING:-dflt}", "dflt"),
            ("${EMPTY:-dflt}", "dflt"),
            ("${EMPTY}", ""),
            ("${TOKEN:-dflt}", "t0k"),
            ("${MISSING:-}", ""),
            ("cost $$5", "cost $5"),
            ("$${TOKEN}", "${TOKEN}"),
            ("${MISSING:-a:-b}", "a:-b"),
            ("ünï${TOKEN}ç", "ünït0kç"),
        ];
        for (input, expected) in cases {
            assert_eq!(expand(input, &env).unwrap(), expected, "input {input:?}");
        }
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(
            expand("x${MISSING}", &env).unwrap_err(),
            ExpandError::Unset {
                name: "MISSING".into()
            }
        );
        assert_eq!(
            expand("ab${TOKEN", &env).unwrap_err(),
            ExpandError::Unclosed { offset: 2 }
        );
        assert_eq!(
            expand("${1X}", &env).unwrap_err(),
            ExpandError::BadName { name: "1X".into() }
        );
        assert_eq!(
            expand("${}", &env).unwrap_err(),
            ExpandError::BadName {
                name: String::new()
            }
        );
        assert_eq!(
            expand("pa$s", &env).unwrap_err(),
            ExpandError::LoneDollar { offset: 2 }
        );
        assert_eq!(
            expand("end$", &env).unwrap_err(),
            ExpandError::LoneDollar { offset: 3 }
        );
    }

    #[test]
    fn unset_message_suggests_a_default() {
        let message = expand("${VAULT_TOKEN}", &env).unwrap_err().to_string();
        assert!(message.contains("`VAULT_TOKEN` is not set"), "{message}");
        assert!(message.contains("${VAULT_TOKEN:-default}"), "{message}");
    }
}
