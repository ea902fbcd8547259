//! Writes the resolved project as the text compose reads from stdin.
//!
//! The text is JSON, which both YAML readers of compose (PyYAML for v1, go-yaml for v2) parse
//! as a flow mapping. JSON strings are double-quoted YAML scalars, but YAML treats a few raw
//! characters differently from JSON: NEL, LINE SEPARATOR and PARAGRAPH SEPARATOR are line
//! breaks that a quoted scalar folds, and C1 controls, the BOM and U+FFFE/U+FFFF are not
//! "printable" and make the readers fail. Those are written as `\uXXXX` escapes, which mean
//! the same character in both languages, so every value reaches compose byte-exact. All
//! characters outside the BMP stay raw UTF-8 (a `\u` surrogate pair is JSON-only).
//!
//! The output holds secret values: it only ever goes into a pipe, never to disk or a log.

use std::io::{self, Write};

use serde::Serialize as _;
use serde_json::ser::Formatter;

/// A `serde_json` formatter with YAML-safe string escapes.
struct ComposeFormatter;

impl Formatter for ComposeFormatter {
    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (index, c) in fragment.char_indices() {
            if needs_escape(c) {
                writer.write_all(&fragment.as_bytes()[start..index])?;
                write!(writer, "\\u{:04X}", u32::from(c))?;
                start = index + c.len_utf8();
            }
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }
}

/// Characters serde_json leaves raw but YAML would not read back as the same character.
fn needs_escape(c: char) -> bool {
    matches!(
        c,
        '\u{7F}'..='\u{9F}' | '\u{2028}' | '\u{2029}' | '\u{FEFF}' | '\u{FFFE}' | '\u{FFFF}'
    )
}

/// The project as compose input text.
pub fn render(project: &serde_json::Value) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, ComposeFormatter);
    project
        .serialize(&mut serializer)
        .map_err(io::Error::other)?;
    out.push(b'\n');
    Ok(out)
}

/// Escapes `$` as `$$`, so compose's interpolation gives back the exact text.
pub fn escape_dollars(text: &str) -> String {
    text.replace('$', "$$")
}

/// Undoes [`escape_dollars`]: compose's `config` writes every literal `$` as `$$`.
pub fn unescape_dollars(text: &str) -> String {
    text.replace("$$", "$")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_sensitive_characters_are_escaped_and_others_stay_raw() {
        let value = serde_json::json!({
            "k": "a\u{85}b\u{2028}c\u{2029}d\u{FEFF}e\u{7F}f\u{9F}g🔑ż\t\n\"\\<>&"
        });
        let text = String::from_utf8(render(&value).unwrap()).unwrap();
        assert_eq!(
            text,
            "{\"k\":\"a\\u0085b\\u2028c\\u2029d\\uFEFFe\\u007Ff\\u009Fg🔑ż\\t\\n\\\"\\\\<>&\"}\n"
        );
        // And it is still JSON that gives back the same string.
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, value);
    }

    #[test]
    fn dollars_round_trip() {
        let text = "p$HOME#x'y\"z$$1";
        assert_eq!(escape_dollars(text), "p$$HOME#x'y\"z$$$$1");
        assert_eq!(unescape_dollars(&escape_dollars(text)), text);
    }
}
