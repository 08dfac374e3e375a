//! The operator's configuration: `key=value` pairs, a key may repeat.

use crate::{MsrRange, PortRange};

/// A policy's configuration, as the operator wrote it.
///
/// Keys keep their order and may repeat; a repeated key is how a list is
/// given (`allow=0x10` twice). Numbers are decimal or `0x` hex, with `_`
/// allowed between digits.
///
/// ```
/// use wasmvisor_policy_sdk::Config;
///
/// let config = Config::from_pairs([("port", "0x2f8"), ("allow", "1-3"), ("allow", "7")]);
/// assert_eq!(config.u64("port"), Ok(Some(0x2f8)));
/// assert_eq!(config.ranges("allow"), Ok(vec![(1, 3), (7, 7)]));
/// assert_eq!(config.check_keys(&["port"]), Err("unknown config key `allow`".to_string()));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pairs: Vec<(String, String)>,
}

impl Config {
    /// Wraps the pairs the host passed to `init`.
    pub fn new(pairs: Vec<(String, String)>) -> Self {
        Self { pairs }
    }

    /// Builds a config from anything that yields key/value pairs.
    pub fn from_pairs<K, V>(pairs: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        Self::new(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    /// Every pair, in the order given.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// True when no key was given.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// True when `key` was given at least once.
    pub fn contains(&self, key: &str) -> bool {
        self.pairs.iter().any(|(k, _)| k == key)
    }

    /// The value of `key`; the last one wins if it repeats.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.all(key).last()
    }

    /// Every value of `key`, in order.
    pub fn all<'a, 'k>(&'a self, key: &'k str) -> impl Iterator<Item = &'a str> + use<'a, 'k> {
        self.pairs
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every key that starts with `prefix`, as (rest of the key, value).
    /// `prefixed("msr.")` turns `msr.0x10=5` into `("0x10", "5")`.
    pub fn prefixed<'a, 'p>(
        &'a self,
        prefix: &'p str,
    ) -> impl Iterator<Item = (&'a str, &'a str)> + use<'a, 'p> {
        self.pairs
            .iter()
            .filter_map(move |(k, v)| Some((k.strip_prefix(prefix)?, v.as_str())))
    }

    /// Rejects any key not in `known`. An entry ending in `*` matches every
    /// key with that prefix (`"msr.*"`).
    pub fn check_keys(&self, known: &[&str]) -> Result<(), String> {
        let is_known = |key: &str| {
            known.iter().any(|k| match k.strip_suffix('*') {
                Some(prefix) => key.starts_with(prefix),
                None => *k == key,
            })
        };
        match self.pairs.iter().find(|(k, _)| !is_known(k)) {
            Some((k, _)) => Err(format!("unknown config key `{k}`")),
            None => Ok(()),
        }
    }

    /// `key` as a number (the last value if it repeats).
    pub fn u64(&self, key: &str) -> Result<Option<u64>, String> {
        self.get(key)
            .map(|v| parse_u64(v).map_err(|e| in_key(key, e)))
            .transpose()
    }

    /// `key` as a number, or `default` when it is absent.
    pub fn u64_or(&self, key: &str, default: u64) -> Result<u64, String> {
        Ok(self.u64(key)?.unwrap_or(default))
    }

    /// `key` as a number that must fit in 32 bits.
    pub fn u32(&self, key: &str) -> Result<Option<u32>, String> {
        self.narrow(key)
    }

    /// `key` as a number that must fit in 16 bits.
    pub fn u16(&self, key: &str) -> Result<Option<u16>, String> {
        self.narrow(key)
    }

    fn narrow<T: TryFrom<u64>>(&self, key: &str) -> Result<Option<T>, String> {
        match self.u64(key)? {
            None => Ok(None),
            Some(v) => T::try_from(v)
                .map(Some)
                .map_err(|_| in_key(key, format!("{v:#x} is too large"))),
        }
    }

    /// `key` as a boolean: `true`/`false`, `yes`/`no`, `on`/`off`, `1`/`0`.
    pub fn bool(&self, key: &str) -> Result<Option<bool>, String> {
        self.get(key)
            .map(|v| match v.trim() {
                "true" | "yes" | "on" | "1" => Ok(true),
                "false" | "no" | "off" | "0" => Ok(false),
                other => Err(in_key(key, format!("`{other}` is not true or false"))),
            })
            .transpose()
    }

    /// Every value of `key` as inclusive ranges `A-B` or single numbers
    /// `A`; a value may also hold several, separated by commas.
    pub fn ranges(&self, key: &str) -> Result<Vec<(u64, u64)>, String> {
        let mut out = Vec::new();
        for value in self.all(key) {
            for part in value.split(',') {
                out.push(parse_range(part).map_err(|e| in_key(key, e))?);
            }
        }
        Ok(out)
    }

    /// [`ranges`](Self::ranges) checked to be I/O ports.
    pub fn port_ranges(&self, key: &str) -> Result<Vec<PortRange>, String> {
        self.ranges(key)?
            .into_iter()
            .map(|(first, last)| {
                let port = |v: u64| {
                    u16::try_from(v)
                        .map_err(|_| in_key(key, format!("port {v:#x} is above 0xffff")))
                };
                Ok(PortRange {
                    first: port(first)?,
                    last: port(last)?,
                })
            })
            .collect()
    }

    /// [`ranges`](Self::ranges) checked to be MSR indices.
    pub fn msr_ranges(&self, key: &str) -> Result<Vec<MsrRange>, String> {
        self.ranges(key)?
            .into_iter()
            .map(|(first, last)| {
                let msr = |v: u64| {
                    u32::try_from(v)
                        .map_err(|_| in_key(key, format!("MSR {v:#x} is above 0xffffffff")))
                };
                Ok(MsrRange {
                    first: msr(first)?,
                    last: msr(last)?,
                })
            })
            .collect()
    }

    /// Every value of `key` as a region `BASE+LEN`, returned as (base, len).
    pub fn regions(&self, key: &str) -> Result<Vec<(u64, u64)>, String> {
        self.all(key)
            .map(|v| parse_region(v).map_err(|e| in_key(key, e)))
            .collect()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Config {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self::from_pairs(iter)
    }
}

fn in_key(key: &str, err: String) -> String {
    format!("config key `{key}`: {err}")
}

/// Parses a decimal or `0x` hex number; `_` may separate digits.
pub fn parse_u64(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, radix) = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => (hex, 16),
        None => (t, 10),
    };
    let digits = digits.replace('_', "");
    if digits.is_empty() || digits.starts_with('+') {
        return Err(format!("`{t}` is not a number"));
    }
    u64::from_str_radix(&digits, radix).map_err(|e| match e.kind() {
        core::num::IntErrorKind::PosOverflow => format!("`{t}` does not fit in 64 bits"),
        _ => format!("`{t}` is not a number"),
    })
}

/// Parses an inclusive range `A-B`, or `A` meaning `A-A`.
pub fn parse_range(text: &str) -> Result<(u64, u64), String> {
    let t = text.trim();
    let (first, last) = match t.split_once('-') {
        Some((a, b)) => (parse_u64(a)?, parse_u64(b)?),
        None => {
            let v = parse_u64(t)?;
            (v, v)
        }
    };
    if first > last {
        return Err(format!("range `{t}` ends before it starts"));
    }
    Ok((first, last))
}

/// Parses a region `BASE+LEN` into (base, len); `LEN` must be non-zero and
/// the region must not wrap around the address space.
pub fn parse_region(text: &str) -> Result<(u64, u64), String> {
    let t = text.trim();
    let Some((base, len)) = t.split_once('+') else {
        return Err(format!("`{t}` is not BASE+LEN"));
    };
    let (base, len) = (parse_u64(base)?, parse_u64(len)?);
    if len == 0 {
        return Err(format!("region `{t}` is empty"));
    }
    if base.checked_add(len - 1).is_none() {
        return Err(format!("region `{t}` wraps around"));
    }
    Ok((base, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> Config {
        pairs.iter().copied().collect()
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_u64("42"), Ok(42));
        assert_eq!(parse_u64(" 0x3F8 "), Ok(0x3f8));
        assert_eq!(parse_u64("0XfF"), Ok(0xff));
        assert_eq!(parse_u64("1_000"), Ok(1000));
        assert_eq!(parse_u64("0xffff_ffff_ffff_ffff"), Ok(u64::MAX));
        assert!(parse_u64("").is_err());
        assert!(parse_u64("0x").is_err());
        assert!(parse_u64("-1").is_err());
        assert!(parse_u64("+1").is_err());
        assert!(parse_u64("12a").is_err());
        assert!(parse_u64("0x1_0000_0000_0000_0000")
            .unwrap_err()
            .contains("64 bits"));
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("5"), Ok((5, 5)));
        assert_eq!(parse_range("0x10-0x1f"), Ok((0x10, 0x1f)));
        assert_eq!(parse_range(" 1 - 2 "), Ok((1, 2)));
        assert!(parse_range("3-2").unwrap_err().contains("ends before"));
        assert!(parse_range("1-").is_err());
        let c = cfg(&[("r", "1-2,4"), ("x", "9"), ("r", "0x10")]);
        assert_eq!(c.ranges("r"), Ok(vec![(1, 2), (4, 4), (0x10, 0x10)]));
        assert_eq!(c.ranges("none"), Ok(vec![]));
        assert_eq!(
            cfg(&[("r", "1-x")]).ranges("r"),
            Err("config key `r`: `x` is not a number".to_string())
        );
    }

    #[test]
    fn typed_ranges() {
        let c = cfg(&[("p", "0x3f8-0x3ff"), ("m", "0xc0000080")]);
        let p = c.port_ranges("p").unwrap();
        assert_eq!((p[0].first, p[0].last), (0x3f8, 0x3ff));
        let m = c.msr_ranges("m").unwrap();
        assert_eq!((m[0].first, m[0].last), (0xc000_0080, 0xc000_0080));
        assert!(cfg(&[("p", "0x10000")])
            .port_ranges("p")
            .unwrap_err()
            .contains("above 0xffff"));
        assert!(cfg(&[("m", "0x1_0000_0000")]).msr_ranges("m").is_err());
    }

    #[test]
    fn regions() {
        assert_eq!(parse_region("0xd0000000+0x1000"), Ok((0xd000_0000, 0x1000)));
        assert!(parse_region("0x1000").is_err());
        assert!(parse_region("0x1000+0").is_err());
        assert!(parse_region("0xffffffffffffffff+2").is_err());
        assert_eq!(parse_region("0xffffffffffffffff+1"), Ok((u64::MAX, 1)));
        let c = cfg(&[("mmio", "1+2"), ("mmio", "10+1")]);
        assert_eq!(c.regions("mmio"), Ok(vec![(1, 2), (10, 1)]));
    }

    #[test]
    fn getters() {
        let c = cfg(&[("a", "1"), ("b", "x"), ("a", "0x2"), ("t", "yes")]);
        assert_eq!(c.get("a"), Some("0x2"));
        assert_eq!(c.all("a").collect::<Vec<_>>(), ["1", "0x2"]);
        assert_eq!(c.get("zz"), None);
        assert!(c.contains("b") && !c.contains("zz"));
        assert_eq!(c.u64("a"), Ok(Some(2)));
        assert_eq!(c.u64("zz"), Ok(None));
        assert_eq!(c.u64_or("zz", 7), Ok(7));
        assert_eq!(
            c.u64("b"),
            Err("config key `b`: `x` is not a number".to_string())
        );
        assert_eq!(c.bool("t"), Ok(Some(true)));
        assert!(c.bool("b").is_err());
        assert_eq!(
            cfg(&[("n", "0x10000")]).u16("n").unwrap_err(),
            "config key `n`: 0x10000 is too large"
        );
        assert_eq!(cfg(&[("n", "0xffff")]).u16("n"), Ok(Some(0xffff)));
        assert_eq!(cfg(&[("n", "0xffffffff")]).u32("n"), Ok(Some(u32::MAX)));
        assert!(c
            .iter()
            .eq([("a", "1"), ("b", "x"), ("a", "0x2"), ("t", "yes")]));
        assert!(Config::default().is_empty());
    }

    #[test]
    fn prefixes_and_unknown_keys() {
        let c = cfg(&[("msr.0x10", "5"), ("log", "all"), ("msr.11", "6")]);
        assert_eq!(
            c.prefixed("msr.").collect::<Vec<_>>(),
            [("0x10", "5"), ("11", "6")]
        );
        assert_eq!(c.check_keys(&["log", "msr.*"]), Ok(()));
        assert_eq!(
            c.check_keys(&["log"]),
            Err("unknown config key `msr.0x10`".to_string())
        );
        assert_eq!(
            c.check_keys(&["msr.*"]),
            Err("unknown config key `log`".to_string())
        );
    }
}
