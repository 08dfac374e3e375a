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
//!     .hex("rip", 0xffffffff81000000)
//!     .finish();
//! assert_eq!(
//!     json,
//!     r#"{"pid":42,"name":"sh\"ell","current":false,"args":[1,2],"rip":"0xffffffff81000000"}"#
//! );
//! ```
//!
//! Guest addresses and other 64-bit values go in as `"0x…"` strings
//! ([`hex`], [`Object::hex`]), since JSON numbers above 2^53 lose
//! precision in jq and JavaScript; counts, sizes, ports and the like stay
//! numbers ([`Object::u64`]). See `docs/events.md`.

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

/// `value` as a quoted lowercase hex JSON string: `"0xffffffff81000000"`,
/// `"0x0"`. The events' format for addresses and 64-bit values.
pub fn hex(value: u64) -> String {
    format!("\"{value:#x}\"")
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

    /// Adds an address or 64-bit value as a `"0x…"` string ([`hex`]).
    pub fn hex(self, key: &str, value: u64) -> Self {
        self.raw(key, &hex(value))
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
    fn hex_values_are_quoted_lowercase_strings() {
        assert_eq!(hex(0), r#""0x0""#);
        assert_eq!(hex(0x3f8), r#""0x3f8""#);
        assert_eq!(hex(0xFFFF_FFFF_8100_0000), r#""0xffffffff81000000""#);
        assert_eq!(hex(u64::MAX), r#""0xffffffffffffffff""#);
        assert_eq!(
            Object::new().hex("rip", 0x1000).u64("size", 4).finish(),
            r#"{"rip":"0x1000","size":4}"#
        );
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
