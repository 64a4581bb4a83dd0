//! Parsing only some members of a resource into a tree.
//!
//! Deciding whether a resource is kept (a `_typeFilter`, a patient's compartment) looks at a
//! few of its top-level elements: `code` and `status`, `subject`. Building the whole tree of a
//! kilobyte of JSON to look at those was most of what a filtered export cost. Here the other
//! members are skipped as they are read (serde's `IgnoredAny`: no allocation), and the tree
//! holds only the members asked for; paths into it answer as they would on the whole.
//!
//! The line must already be known to be valid JSON ([`super::read_head`] checks it): skipped
//! strings are not checked again here.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::{Map, Value};

/// The object `line` holds, with only the members named in `keys`.
pub fn parse_members(line: &[u8], keys: &[&str]) -> Result<Value, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(line);
    let value = Members(keys).deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

struct Members<'k>(&'k [&'k str]);

impl<'de> DeserializeSeed<'de> for Members<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Members<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key_seed(Key)? {
            if self.0.contains(&key.as_ref()) {
                let v: Value = map.next_value()?;
                out.insert(key.into_owned(), v);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(Value::Object(out))
    }
}

/// A member name, borrowed from the line when it has no escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_members_asked_for_as_the_whole_tree_has_them() {
        let line = br#"{"resourceType":"Observation","id":"o1","text":{"div":"<div>x</div>"},"status":"final","code":{"coding":[{"system":"http://loinc.org","code":"8867-4"}]},"subject":{"reference":"Patient/p1"},"valueQuantity":{"value":1.5},"note":[{"text":"a \"quoted\" \u00e9"}]}"#;
        let whole: Value = serde_json::from_slice(line).expect("json");
        let part = parse_members(line, &["code", "subject", "absent"]).expect("parse");
        assert_eq!(part["code"], whole["code"]);
        assert_eq!(part["subject"], whole["subject"]);
        assert_eq!(part.as_object().map(Map::len), Some(2));
        assert!(
            parse_members(line, &[])
                .expect("parse")
                .as_object()
                .is_some_and(Map::is_empty)
        );
        // An escaped member name is still found.
        let escaped = br#"{"co\u0064e":{"text":"t"},"x":[1,{"y":null}]}"#;
        assert_eq!(
            parse_members(escaped, &["code"]).expect("parse")["code"]["text"],
            "t"
        );
        // Not an object, or trailing bytes: an error, as from a whole parse.
        assert!(parse_members(b"[1]", &["code"]).is_err());
        assert!(parse_members(br#"{"a":1} x"#, &["a"]).is_err());
    }
}
