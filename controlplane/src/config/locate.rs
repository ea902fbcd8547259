//! Line and column of a key path (`secrets[1].provider`) in a YAML document.
//!
//! Problems found after parsing (a provider reference that points nowhere, an unset variable,
//! an invalid duration) must still say where they are. The YAML library has no spans, but it
//! stamps the position of the current node on any error a `Deserialize` impl raises. So the
//! locator walks the document along the path and raises an error at the target node; the
//! position on that error is the answer. It runs only when there is a problem to report.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// One step of a key path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    /// A mapping key.
    Key(String),
    /// A sequence index.
    Index(usize),
}

/// A path from the document root to a node, e.g. `providers.vault.address`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyPath(Vec<Segment>);

impl KeyPath {
    /// The root.
    pub fn root() -> Self {
        Self::default()
    }

    /// This path plus a mapping key.
    pub fn key(&self, key: &str) -> Self {
        let mut next = self.clone();
        next.0.push(Segment::Key(key.to_owned()));
        next
    }

    /// This path plus a sequence index.
    pub fn index(&self, index: usize) -> Self {
        let mut next = self.clone();
        next.0.push(Segment::Index(index));
        next
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str(".");
        }
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Key(key) if i == 0 => f.write_str(key)?,
                Segment::Key(key) => write!(f, ".{key}")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// Text of the error the locator raises at its target, to tell it from a real parse error.
const FOUND: &str = "dso-locator: target reached";

/// 1-based line and column of `path` in `source`. When the path does not exist (a missing key),
/// the position of its nearest existing ancestor.
pub fn locate(source: &str, path: &KeyPath) -> Option<(usize, usize)> {
    let mut segments = path.0.as_slice();
    loop {
        if let Some(found) = locate_exact(source, segments) {
            return Some(found);
        }
        if segments.is_empty() {
            return None;
        }
        segments = &segments[..segments.len() - 1];
    }
}

fn locate_exact(source: &str, segments: &[Segment]) -> Option<(usize, usize)> {
    let deserializer = yaml_serde::Deserializer::from_str(source);
    match (Seek { segments }).deserialize(deserializer) {
        Err(err) if err.to_string().contains(FOUND) => {
            err.location().map(|l| (l.line(), l.column()))
        }
        _ => None,
    }
}

/// Walks towards the target node, skipping everything else.
struct Seek<'p> {
    segments: &'p [Segment],
}

impl<'de> DeserializeSeed<'de> for Seek<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        if self.segments.is_empty() {
            deserializer.deserialize_any(Target)
        } else {
            deserializer.deserialize_any(self)
        }
    }
}

impl<'de> Visitor<'de> for Seek<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML node")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((Segment::Key(wanted), rest)) = self.segments.split_first() else {
            return drain_map(map);
        };
        while let Some(key) = map.next_key::<yaml_serde::Value>()? {
            if key.as_str() == Some(wanted.as_str()) {
                map.next_value_seed(Seek { segments: rest })?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((Segment::Index(wanted), rest)) = self.segments.split_first() else {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            return Ok(());
        };
        let mut index = 0;
        loop {
            let more = if index == *wanted {
                seq.next_element_seed(Seek { segments: rest })?.is_some()
            } else {
                seq.next_element::<IgnoredAny>()?.is_some()
            };
            if !more {
                return Ok(());
            }
            index += 1;
        }
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
}

fn drain_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

/// The node the path leads to: raise the marker error so the parser stamps its position.
struct Target;

impl<'de> Visitor<'de> for Target {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML node")
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(FOUND))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        Err(de::Error::custom(FOUND))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Err(E::custom(FOUND))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
version: 1
providers:
  prod:
    type: vault
    address: https://v.example
secrets:
  - name: a
  - name: b
    provider:   prod
";

    #[test]
    fn finds_scalars_in_maps_and_sequences() {
        let at = |p: &KeyPath| locate(DOC, p);
        let root = KeyPath::root();
        assert_eq!(at(&root.key("version")), Some((1, 10)));
        assert_eq!(
            at(&root.key("providers").key("prod").key("address")),
            Some((5, 14))
        );
        assert_eq!(
            at(&root.key("secrets").index(1).key("provider")),
            Some((9, 17))
        );
        assert_eq!(at(&root.key("secrets").index(0).key("name")), Some((7, 11)));
    }

    #[test]
    fn missing_key_falls_back_to_its_parent() {
        let path = KeyPath::root().key("providers").key("prod").key("token");
        assert_eq!(locate(DOC, &path), Some((4, 5)));
    }

    #[test]
    fn displays_as_dotted_path() {
        let path = KeyPath::root()
            .key("secrets")
            .index(2)
            .key("rotation")
            .key("signal");
        assert_eq!(path.to_string(), "secrets[2].rotation.signal");
    }
}
