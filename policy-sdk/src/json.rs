//! Building the JSON objects that [`host::emit`](crate::host::emit) takes,
//! without a serializer in the component.
//!
//! ```
//! use wasmvisor_policy_sdk::json::Object;
//!
//! let json = Object::new()
//!     .u64("pid", 42)
//!     .str("name", "sh\"ell")
//!     .bool("current", false)
//!     .raw("args", "[1,2]")
//!     .finish();
//! assert_eq!(json, r#"{"pid":42,"name":"sh\"ell","current":false,"args":[1,2]}"#);
//! ```

use core::fmt::Write;

/// `text` as a quoted JSON string: `"`, `\` and control characters are
/// escaped, everything else is copied.
pub fn string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A JSON object written field by field. Keys are written as given (they
/// are expected to be plain identifiers); string values are escaped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Object {
    body: String,
}

impl Object {
    /// An empty object.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `key` with an already-encoded JSON value.
    pub fn raw(mut self, key: &str, json: &str) -> Self {
        if !self.body.is_empty() {
            self.body.push(',');
        }
        self.body.push_str(&string(key));
        self.body.push(':');
        self.body.push_str(json);
        self
    }

    /// Adds an unsigned number.
    pub fn u64(self, key: &str, value: u64) -> Self {
        self.raw(key, &value.to_string())
    }

    /// Adds a signed number.
    pub fn i64(self, key: &str, value: i64) -> Self {
        self.raw(key, &value.to_string())
    }

    /// Adds a string.
    pub fn str(self, key: &str, value: &str) -> Self {
        self.raw(key, &string(value))
    }

    /// Adds a boolean.
    pub fn bool(self, key: &str, value: bool) -> Self {
        self.raw(key, if value { "true" } else { "false" })
    }

    /// The object's text.
    pub fn finish(self) -> String {
        format!("{{{}}}", self.body)
    }
}

/// A JSON array of already-encoded values.
pub fn array<I, S>(items: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut out = String::from("[");
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(item.as_ref());
    }
    out.push(']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped() {
        assert_eq!(string("plain"), r#""plain""#);
        assert_eq!(string("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(string("l1\nl2\t\r"), r#""l1\nl2\t\r""#);
        assert_eq!(string("\u{0}\u{1b}\u{7f}"), r#""\u0000\u001b\u007f""#);
        assert_eq!(string("é✓"), "\"é✓\"");
    }

    #[test]
    fn objects_and_arrays() {
        assert_eq!(Object::new().finish(), "{}");
        assert_eq!(
            Object::new().u64("a", u64::MAX).i64("b", -38).finish(),
            r#"{"a":18446744073709551615,"b":-38}"#
        );
        let inner = Object::new().u64("base", 4096).finish();
        assert_eq!(array([inner.as_str(), "2"]), r#"[{"base":4096},2]"#);
        assert_eq!(array(Vec::<String>::new()), "[]");
    }
}
