//! docs/configuration.md against the serde shapes: every field the plugin configuration
//! accepts is documented there, and every field documented there exists.
//!
//! A small recording [`Deserializer`] walks the raw config type the way serde_json would
//! feed it a document that sets every field: `deserialize_struct` hands over the field
//! names as serde knows them (after `rename`/`rename_all`, aliases included), options are
//! `Some`, sequences have one element (`[]` in a path), string enums report their
//! variants. Maps (`claims_to_headers`) are free-form and stop the walk, as do
//! `serde_json::Value` fields (`jwks`, `pem`). A shape it cannot walk (an untagged enum,
//! `flatten`) makes the test fail with serde's error rather than pass silently.

#![allow(clippy::panic)]

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::RawConfig;

/// Field paths (`auth.cluster`, `jwt.providers[].issuer`) and the values of string enums.
#[derive(Debug, Default)]
struct Fields {
    paths: BTreeSet<String>,
    values: BTreeMap<String, Vec<&'static str>>,
}

#[derive(Debug)]
struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error(msg.to_string())
    }
}

/// Recursive config shapes would never end; no real one is this deep.
const MAX_DEPTH: usize = 16;

struct Tracer<'a> {
    path: String,
    depth: usize,
    out: &'a RefCell<Fields>,
}

impl<'a> Tracer<'a> {
    fn child(&self, path: String) -> Result<Tracer<'a>, Error> {
        if self.depth >= MAX_DEPTH {
            return Err(Error(format!("{path}: nested more than {MAX_DEPTH} levels (a recursive type?)")));
        }
        Ok(Tracer { path, depth: self.depth + 1, out: self.out })
    }
}

macro_rules! leaf {
    ($($method:ident => $visit:ident($($value:expr)?)),* $(,)?) => {
        $(fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.$visit($($value)?)
        })*
    };
}

impl<'de> de::Deserializer<'de> for Tracer<'_> {
    type Error = Error;

    /// Not self-describing: a type that accepts several shapes (a `public_paths` entry is
    /// a string or an object) walks its structured one, as serde's own types do.
    fn is_human_readable(&self) -> bool {
        false
    }

    leaf! {
        // `serde_json::Value` (and anything self-describing) gets a null: a free-form leaf.
        deserialize_any => visit_unit(),
        deserialize_ignored_any => visit_unit(),
        deserialize_unit => visit_unit(),
        deserialize_bool => visit_bool(true),
        deserialize_i8 => visit_i64(1),
        deserialize_i16 => visit_i64(1),
        deserialize_i32 => visit_i64(1),
        deserialize_i64 => visit_i64(1),
        deserialize_u8 => visit_u64(1),
        deserialize_u16 => visit_u64(1),
        deserialize_u32 => visit_u64(1),
        deserialize_u64 => visit_u64(1),
        deserialize_f32 => visit_f64(1.0),
        deserialize_f64 => visit_f64(1.0),
        deserialize_char => visit_char('x'),
        deserialize_str => visit_str("x"),
        deserialize_string => visit_str("x"),
        deserialize_identifier => visit_str("x"),
        deserialize_bytes => visit_bytes(b"x"),
        deserialize_byte_buf => visit_bytes(b"x"),
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_some(self)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, _: &'static str, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _: &'static str, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let element = self.child(format!("{}[]", self.path))?;
        visitor.visit_seq(OneElement(Some(element)))
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _: usize, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    /// A map's keys are the user's (claim names): nothing to document below it.
    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_map(de::value::MapDeserializer::new(std::iter::empty::<((), ())>()))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let prefix = if self.path.is_empty() { String::new() } else { format!("{}.", self.path) };
        let mut out = self.out.borrow_mut();
        for field in fields {
            out.paths.insert(format!("{prefix}{field}"));
        }
        drop(out);
        visitor.visit_map(StructFields { tracer: self, prefix, fields: fields.iter() })
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.out.borrow_mut().values.entry(self.path.clone()).or_default().extend(variants);
        let first = variants.first().ok_or_else(|| Error(format!("{}: an enum without variants", self.path)))?;
        visitor.visit_enum((*first).into_deserializer())
    }
}

struct OneElement<'a>(Option<Tracer<'a>>);

impl<'de> SeqAccess<'de> for OneElement<'_> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Error> {
        self.0.take().map(|tracer| seed.deserialize(tracer)).transpose()
    }
}

struct StructFields<'a> {
    tracer: Tracer<'a>,
    prefix: String,
    fields: std::slice::Iter<'static, &'static str>,
}

impl<'de> MapAccess<'de> for StructFields<'_> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Error> {
        match self.fields.as_slice().first() {
            Some(field) => seed.deserialize((*field).into_deserializer()).map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let field = self.fields.next().ok_or_else(|| Error("a value without a key".into()))?;
        seed.deserialize(self.tracer.child(format!("{}{field}", self.prefix))?)
    }
}

/// Every field path of `T` and the values of its string enums.
fn trace<'de, T: Deserialize<'de>>() -> Result<Fields, Error> {
    trace_under::<T>("")
}

/// [`trace`] of a shape read by hand from a `serde_json::Value` field at `path`.
fn trace_under<'de, T: Deserialize<'de>>(path: &str) -> Result<Fields, Error> {
    let out = RefCell::new(Fields::default());
    T::deserialize(Tracer { path: path.to_owned(), depth: 0, out: &out })?;
    Ok(out.into_inner())
}

/// The reference's rows: field paths in backticks in the first column (`jwt.providers[]`
/// counts as `jwt.providers`), with the whole row's text.
fn documented(page: &str) -> BTreeMap<String, String> {
    let mut rows = BTreeMap::new();
    for line in page.lines().filter(|l| l.starts_with("| `")) {
        let first = line.split(" | ").next().unwrap_or_default();
        for name in first.split('`').skip(1).step_by(2) {
            let is_path = !name.is_empty()
                && name.split('.').all(|part| {
                    let part = part.strip_suffix("[]").unwrap_or(part);
                    !part.is_empty() && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                });
            if is_path {
                rows.insert(name.strip_suffix("[]").unwrap_or(name).to_owned(), line.to_owned());
            }
        }
    }
    rows
}

const PAGE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/configuration.md");

/// What is wrong between the traced fields and the page (empty: they agree).
fn disagreements(fields: &Fields, page: &str) -> Vec<String> {
    let rows = documented(page);
    let mut found = Vec::new();
    for path in &fields.paths {
        match rows.get(path) {
            None => found.push(format!("`{path}` is accepted by the filter but not documented")),
            Some(row) => {
                for value in fields.values.get(path).into_iter().flatten() {
                    if !row.contains(&format!("\"{value}\"")) {
                        found.push(format!("`{path}`: its value \"{value}\" is not documented in its row"));
                    }
                }
            }
        }
    }
    for path in rows.keys() {
        if !fields.paths.contains(path) {
            found.push(format!("`{path}` is documented but the filter has no such field"));
        }
    }
    found
}

#[test]
fn every_config_field_is_documented_and_every_documented_field_exists() {
    let mut fields = trace::<RawConfig>().unwrap_or_else(|e| panic!("cannot trace the config shapes: {e}"));
    // `policies` is a list of JSON values the filter reads by hand (authz_policy/policy_config.rs).
    let policies = trace_under::<crate::authz_policy::policy_config::RawPolicy>("policies[]")
        .unwrap_or_else(|e| panic!("cannot trace the policies shape: {e}"));
    fields.paths.extend(policies.paths);
    assert!(fields.paths.len() > 40, "the tracer found too few fields: {:?}", fields.paths);
    let page = std::fs::read_to_string(PAGE).unwrap_or_else(|e| panic!("{PAGE}: {e}"));
    let found = disagreements(&fields, &page);
    assert!(found.is_empty(), "docs/configuration.md and the config structs disagree:\n{}", found.join("\n"));
}

/// The check itself: nested structs, renames, enums of strings, sequences, defaults.
#[test]
fn the_tracer_sees_renames_nesting_enums_and_the_check_can_fail() {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        #[serde(rename = "renamedField")]
        field: u16,
        kind: Option<Kind>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "snake_case")]
    #[allow(dead_code)]
    enum Kind {
        OneWay,
        OtherWay,
    }
    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Outer {
        #[serde(default)]
        list: Vec<Inner>,
        free: Option<serde_json::Value>,
        map: BTreeMap<String, String>,
    }
    let fields = trace::<Outer>().unwrap_or_else(|e| panic!("{e}"));
    let paths: Vec<&str> = fields.paths.iter().map(String::as_str).collect();
    assert_eq!(paths, ["free", "list", "list[].kind", "list[].renamedField", "map"]);
    assert_eq!(fields.values.get("list[].kind").map(Vec::as_slice), Some(&["one_way", "other_way"][..]));

    let good = "| `list[]` | x |\n| `list[].renamedField` | x |\n| `list[].kind` | `\"one_way\"`, `\"other_way\"` |\n\
                | `free` | x |\n| `map` | x |\n";
    assert_eq!(disagreements(&fields, good), Vec::<String>::new());
    let missing = good.replace("| `free` | x |\n", "");
    assert_eq!(disagreements(&fields, &missing), ["`free` is accepted by the filter but not documented"]);
    let stale = format!("{good}| `list[].gone` | x |\n");
    assert_eq!(disagreements(&fields, &stale), ["`list[].gone` is documented but the filter has no such field"]);
    let value = good.replace("`\"other_way\"`", "");
    assert_eq!(disagreements(&fields, &value), ["`list[].kind`: its value \"other_way\" is not documented in its row"]);
}
