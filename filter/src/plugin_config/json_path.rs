//! The field a serde error is about, found from where serde_json stopped reading
//! (`auth.timeout_ms`, `public_paths[2]`), so configuration errors name the field.
//!
//! The configuration is deserialized straight from its bytes, and only when that fails
//! is the path worked out: a walk over the (already validated) JSON text up to the error's
//! offset. Tracking the path while deserializing (the `serde_path_to_error` crate) wraps
//! every visitor of every configuration type in a second generic copy: 90 KB of the
//! module, which V8 compiles at every Envoy start (docs/performance.md#footprint).

/// The error's text and the path of the field it is about, in `serde_path_to_error`'s
/// notation (`a.b[1].c`; empty for the document itself).
pub fn locate(json: &[u8], error: &serde_json::Error) -> (String, String) {
    let message = error.to_string();
    // serde_json appends where it stopped; the path replaces that for users.
    let suffix = format!(" at line {} column {}", error.line(), error.column());
    let message = message.strip_suffix(&suffix).map(str::to_owned).unwrap_or(message);
    if error.line() == 0 {
        return (String::new(), message);
    }
    (path_at(json, offset_of(json, error.line(), error.column())), message)
}

/// serde_json's position as a byte offset: `line` counts from 1, `column` is the number
/// of bytes read on that line, so the offset is the first byte not yet read.
fn offset_of(json: &[u8], line: usize, column: usize) -> usize {
    let line_start = if line <= 1 {
        0
    } else {
        json.iter().enumerate().filter(|(_, b)| **b == b'\n').nth(line - 2).map_or(json.len(), |(i, _)| i + 1)
    };
    (line_start + column).min(json.len())
}

/// Where a container is in its current member.
#[derive(Clone, Copy, PartialEq)]
enum Slot {
    /// Before the first member, or after a `,`.
    Empty,
    /// A key was read (objects) or an element started (arrays); its value is not done.
    Open,
    /// The current member's value ended at this offset.
    Ended(usize),
}

enum Frame {
    Object { key: String, slot: Slot },
    Array { index: usize, slot: Slot },
}

impl Frame {
    fn slot(&mut self) -> &mut Slot {
        match self {
            Frame::Object { slot, .. } | Frame::Array { slot, .. } => slot,
        }
    }
}

/// The path of the innermost member open at `offset`, or whose value ended exactly there:
/// serde checks a value once it has read it (a wrong type, an unknown variant, a missing
/// field once it has read the object's `}`), a key as soon as it has read the key.
fn path_at(json: &[u8], offset: usize) -> String {
    let mut stack: Vec<Frame> = Vec::new();
    let mut i = 0;
    while i < offset && i < json.len() {
        match json[i] {
            b' ' | b'\t' | b'\n' | b'\r' | b':' => i += 1,
            b',' => {
                match stack.last_mut() {
                    Some(Frame::Object { key, slot }) => {
                        key.clear();
                        *slot = Slot::Empty;
                    }
                    Some(Frame::Array { index, slot }) => {
                        *index += 1;
                        *slot = Slot::Empty;
                    }
                    None => {}
                }
                i += 1;
            }
            b'{' | b'[' => {
                value_starts(&mut stack);
                stack.push(if json[i] == b'{' {
                    Frame::Object { key: String::new(), slot: Slot::Empty }
                } else {
                    Frame::Array { index: 0, slot: Slot::Empty }
                });
                i += 1;
            }
            b'}' | b']' => {
                stack.pop();
                i += 1;
                value_ends(&mut stack, i);
            }
            b'"' => {
                let end = string_end(json, i);
                if let Some(Frame::Object { key, slot: slot @ Slot::Empty }) = stack.last_mut() {
                    // A key: serde's own decoding, so an escaped key reads as serde saw it.
                    *key = serde_json::from_slice::<String>(&json[i..end])
                        .unwrap_or_else(|_| String::from_utf8_lossy(&json[i..end]).into_owned());
                    *slot = Slot::Open;
                } else {
                    value_starts(&mut stack);
                    value_ends(&mut stack, end);
                }
                i = end;
            }
            _ => {
                // A number, true, false or null: up to the next delimiter.
                value_starts(&mut stack);
                while i < json.len() && !matches!(json[i], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                    i += 1;
                }
                value_ends(&mut stack, i);
            }
        }
    }
    let mut path = String::new();
    let last = stack.len().saturating_sub(1);
    for (depth, frame) in stack.iter().enumerate() {
        let slot = match frame {
            Frame::Object { slot, .. } | Frame::Array { slot, .. } => *slot,
        };
        let counts = depth < last
            || match slot {
                Slot::Empty => false,
                Slot::Open => true,
                Slot::Ended(at) => at == offset,
            };
        if !counts {
            continue;
        }
        match frame {
            Frame::Object { key, .. } => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
            }
            Frame::Array { index, .. } => {
                path.push('[');
                path.push_str(&index.to_string());
                path.push(']');
            }
        }
    }
    path
}

/// An array's element starts (an object's value starts after its key, already open).
fn value_starts(stack: &mut [Frame]) {
    if let Some(Frame::Array { slot, .. }) = stack.last_mut() {
        *slot = Slot::Open;
    }
}

fn value_ends(stack: &mut [Frame], at: usize) {
    if let Some(frame) = stack.last_mut() {
        *frame.slot() = Slot::Ended(at);
    }
}

/// The offset after the closing quote of the string opening at `start`.
fn string_end(json: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while i < json.len() {
        match json[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    json.len()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        a: Inner,
        list: Option<Vec<Inner>>,
        n: Option<u16>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        b: Option<bool>,
        req: u8,
    }

    fn located(json: &str) -> String {
        let err = serde_json::from_str::<Outer>(json).unwrap_err();
        let (path, message) = locate(json.as_bytes(), &err);
        format!("{path}: {message}")
    }

    /// Each kind of serde error, at every depth, with and without whitespace (serde_json
    /// stops right after a value, a key, or at the `}` of an object missing a field).
    #[test]
    fn names_the_field_serde_stopped_at() {
        let cases = [
            (r#"{"a": {"req": 1, "b": "x"}}"#, r#"a.b: invalid type: string "x", expected a boolean"#),
            (r#"{"a":{"req":1,"b":"x"}}"#, r#"a.b: invalid type: string "x", expected a boolean"#),
            (r#"{"a": {"req": 1}, "n": 70000}"#, "n: invalid value: integer `70000`, expected u16"),
            (r#"{"a": {"req": 1}, "nn": 1}"#, "nn: unknown field `nn`, expected one of `a`, `list`, `n`"),
            (r#"{"a": {"b": true}}"#, "a: missing field `req`"),
            (r#"{"a":{"b":true}}"#, "a: missing field `req`"),
            (r#"{"n": 1}"#, ": missing field `a`"),
            (
                r#"{"a": {"req": 1}, "list": [{"req": 1}, {"req": 2, "c": 1}]}"#,
                "list[1].c: unknown field `c`, expected `b` or `req`",
            ),
            (r#"{"a": {"req": 1}, "list": [{"req": 1},{"b":false}]}"#, "list[1]: missing field `req`"),
            (
                r#"{"a": {"req": 1}, "list": [{"req": 1}, 7]}"#,
                "list[1]: invalid type: integer `7`, expected struct Inner",
            ),
            ("{\"a\":\n {\"req\": 1,\n  \"b\": 3}}", "a.b: invalid type: integer `3`, expected a boolean"),
            (r#"{"a": {"req": 1, "b\u0020x": 1}}"#, "a.b x: unknown field `b x`, expected `b` or `req`"),
            (r#"{"a": {"req": "}]\"", "b": 1}}"#, r#"a.req: invalid type: string "}]\"", expected u8"#),
        ];
        for (json, want) in cases {
            assert_eq!(located(json), want, "{json}");
        }
    }

    /// Every field of a document, broken in each way serde reports (a wrong type, an
    /// unknown field beside it, the field missing), compact and pretty-printed: the path
    /// named is the field's (the object's, for a missing field).
    #[test]
    fn every_broken_field_is_named() {
        use serde_json::{json, Value};
        let valid = json!({"a": {"req": 1, "b": true}, "list": [{"req": 2}, {"req": 3, "b": false}], "n": 7});
        // (pointer, path as users read it, whether the field is required)
        let mut fields = vec![("/a/req", "a.req", true), ("/a/b", "a.b", false), ("/n", "n", false)];
        fields.extend([("/list/0/req", "list[0].req", true), ("/list/1/req", "list[1].req", true)]);
        fields.push(("/list/1/b", "list[1].b", false));
        let (mut checked, mut docs) = (0, Vec::new());
        for &(pointer, path, required) in &fields {
            let (parent_pointer, name) = pointer.rsplit_once('/').unwrap();
            let parent = path.rsplit_once('.').map_or("", |(p, _)| p);
            let mut wrong = valid.clone();
            *wrong.pointer_mut(pointer).unwrap() = json!("x");
            docs.push((wrong, path.to_owned(), "invalid type"));
            let mut unknown = valid.clone();
            unknown.pointer_mut(parent_pointer).unwrap().as_object_mut().unwrap().insert(format!("{name}_x"), json!(1));
            docs.push((unknown, format!("{path}_x"), "unknown field"));
            if required {
                let mut missing = valid.clone();
                missing.pointer_mut(parent_pointer).unwrap().as_object_mut().unwrap().remove(name);
                docs.push((missing, parent.to_owned(), "missing field"));
            }
        }
        for (doc, want, kind) in docs {
            for text in [doc.to_string(), serde_json::to_string_pretty(&doc).unwrap()] {
                let err = serde_json::from_str::<Outer>(&text).unwrap_err();
                let (path, message) = locate(text.as_bytes(), &err);
                assert!(message.starts_with(kind), "{message} for {text}");
                assert_eq!(path, want, "{message} in {text}");
                checked += 1;
            }
        }
        assert_eq!(checked, 2 * (2 * fields.len() + 3));
        // The walk relies on nothing but the bytes: truncated, unbalanced or not JSON at
        // all, at any offset, it returns a path (and stays within the document's nesting).
        let odd: [&[u8]; 6] = [b"{\"a\": [1, {\"b\": \"x\\", b"]]]}}}", b"\"\\", b"{\"\xff\": 1}", b"tru", b""];
        for bytes in odd {
            for offset in 0..=bytes.len() + 2 {
                assert!(path_at(bytes, offset).len() <= 4 * bytes.len() + 1, "{bytes:?} at {offset}");
            }
        }
        // The valid document itself deserializes: the cases above differ from it only there.
        assert!(serde_json::from_value::<Outer>(Value::clone(&valid)).is_ok());
    }
}
