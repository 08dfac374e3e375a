//! Numbers and sizes as users write them (`0x8000`, `64M`), for the
//! command line, config files and sandbox settings alike. Its own module
//! so that `config` and `sandbox` can both use it without depending on
//! each other.

use thiserror::Error;

/// A number or size that does not parse.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum UnitError {
    #[error("invalid size `{0}`: use a number with an optional K, M or G suffix, e.g. 64M")]
    Size(String),
    #[error("invalid number `{0}`: use decimal or 0x-prefixed hex")]
    Number(String),
}

/// Formats a byte count the way `parse_size` reads it.
pub fn format_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{}G", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{}M", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{}K", b >> 10),
        b => b.to_string(),
    }
}

/// Parses `64M`, `1G`, `4096`, `512K`.
pub fn parse_size(s: &str) -> Result<u64, UnitError> {
    let err = || UnitError::Size(s.to_string());
    let t = s.trim();
    let (num, shift) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 10),
        Some('M') => (&t[..t.len() - 1], 20),
        Some('G') => (&t[..t.len() - 1], 30),
        _ => (t, 0),
    };
    let n: u64 = num.parse().map_err(|_| err())?;
    n.checked_mul(1 << shift).ok_or_else(err)
}

/// Parses decimal or 0x-hex.
pub fn parse_number(s: &str) -> Result<u64, UnitError> {
    let t = s.trim().replace('_', "");
    let r = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => t.parse(),
    };
    r.map_err(|_| UnitError::Number(s.to_string()))
}
