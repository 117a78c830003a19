//! A JSON object of strings as users write it (`auth.headers_to_add`,
//! `jwt.providers[].claims_to_headers`): what serde's `BTreeMap<String, String>` read,
//! the same members in the same order and the same errors, kept in a sorted list.
//! A B-tree of strings (its insertion, iteration and drop, 4 KB) had no other use in
//! the module, and every sidecar's V8 compiles each KB of it. Imports nothing of the crate.

use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};

/// The members in key order (the keys' byte order, as a `BTreeMap<String, _>` iterates),
/// each key once with its last value (as `BTreeMap::insert` keeps it).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StringMap(Vec<(String, String)>);

impl IntoIterator for StringMap {
    type Item = (String, String);
    type IntoIter = std::vec::IntoIter<(String, String)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'de> Deserialize<'de> for StringMap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> Visitor<'de> for Members {
            type Value = StringMap;

            // serde's words for a map, so a wrong type reads as it did.
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map")
            }

            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<StringMap, M::Error> {
                let mut members: Vec<(String, String)> = Vec::new();
                while let Some((key, value)) = map.next_entry::<String, String>()? {
                    match members.binary_search_by(|(k, _)| k.as_str().cmp(&key)) {
                        Ok(i) => members[i].1 = value,
                        Err(i) => members.insert(i, (key, value)),
                    }
                }
                Ok(StringMap(members))
            }
        }
        deserializer.deserialize_map(Members)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::collections::BTreeMap;

    /// What serde's `BTreeMap<String, String>` reads from `json`: its members in order, or
    /// its error text.
    fn btree(json: &str) -> Result<Vec<(String, String)>, String> {
        serde_json::from_str::<BTreeMap<String, String>>(json)
            .map(|m| m.into_iter().collect())
            .map_err(|e| e.to_string())
    }

    fn list(json: &str) -> Result<Vec<(String, String)>, String> {
        serde_json::from_slice::<StringMap>(json.as_bytes()).map(|m| m.into_iter().collect()).map_err(|e| e.to_string())
    }

    #[test]
    fn reads_what_a_btree_map_of_strings_read() {
        let objects = [
            r#"{}"#,
            r#"{"b": "2", "a": "1", "c": "3"}"#,
            r#"{"x": "1", "x": "2", "a": "", "x": "3"}"#,
            r#"{"Z": "upper", "a": "lower", "é": "not ASCII", "": "empty", "a-b": "dash", "a_b": "underscore"}"#,
            r#"{"a": 1}"#,
            r#"{"a": "1", "b": null}"#,
            r#"{"a": ["1"]}"#,
            r#"{"a": "1",}"#,
            r#"{"a" "1"}"#,
            r#"["a", "1"]"#,
            r#""a""#,
            r#"7"#,
            r#"null"#,
            r#"{"a": "1""#,
        ];
        for json in objects {
            assert_eq!(list(json), btree(json), "{json}");
        }
        // Generated: every order of keys drawn from a few, repeats included.
        let keys = ["k", "K", "k2", "a", "", "kk"];
        for n in 0..6 * 6 * 6 * 6 {
            let picks = [n % 6, n / 6 % 6, n / 36 % 6, n / 216 % 6];
            let members: Vec<String> =
                picks.iter().enumerate().map(|(i, k)| format!(r#""{}": "{i}""#, keys[*k])).collect();
            let json = format!("{{{}}}", members.join(", "));
            assert_eq!(list(&json), btree(&json), "{json}");
        }
    }
}
