//! The kernel's own symbol table, kallsyms, decoded from the image bytes.
//!
//! Distribution kernels ship without an ELF symbol table (and Debian's
//! `System.map` is a stub), but every kernel built with `CONFIG_KALLSYMS`
//! carries a compressed table of all its symbols for `/proc/kallsyms` and
//! oopses. `scripts/kallsyms` emits it as a run of read-only tables, each
//! aligned to 8 bytes on 64-bit:
//!
//! * `kallsyms_token_table`: 256 NUL-terminated strings; byte `b` of a
//!   compressed name stands for token `b`. Bytes that occur in symbol names
//!   keep standing for themselves, so `'0'..='9'` and `'a'..='z'` are
//!   one-character tokens at their own ASCII positions: that is how we find
//!   the table without any symbol.
//! * `kallsyms_token_index`: 256 `u16` offsets of the tokens, right after.
//! * `kallsyms_names`: per symbol a length (one byte; with the 0x80 bit set,
//!   two bytes, seven bits each, for long Rust names in newer kernels)
//!   followed by that many token bytes. The first decoded character is the
//!   symbol's type letter (`t`, `T`, `d`, `D`, ...).
//! * `kallsyms_markers`: the offset in `kallsyms_names` of every 256th name.
//! * `kallsyms_num_syms`: the symbol count, right before the names.
//! * the addresses: `kallsyms_addresses` (absolute `u64`s) or, with
//!   `CONFIG_KALLSYMS_BASE_RELATIVE`, `kallsyms_offsets` (`s32`s) followed
//!   by `kallsyms_relative_base` (`u64`).
//!
//! The order has changed over time. Mainline up to 6.1 has `offsets,
//! relative_base, num_syms, names, markers, token_table, token_index`;
//! 6.2 and 6.3 (and Debian's 6.1 stable kernel, as we found it) put
//! `kallsyms_seqs_of_names` (three bytes per symbol) between the markers and
//! the token table; from 6.4 the addresses come after the token index. We
//! anchor on the token table, confirm it with the token index, walk back to
//! the markers (over the seqs table, trying each size it could have), find
//! `num_syms` before the names by decoding candidates against the markers,
//! then try both address layouts and keep the one whose addresses are
//! sorted, as kallsyms sorts them.
//!
//! The technique is the one `vmlinux-to-elf` uses; this is our own code.

use std::collections::HashMap;

use crate::elf::Elf;
use crate::ProfileError;

/// The longest compressed name we accept (`KSYM_NAME_LEN` is 512 in 6.1),
/// used only to bound the search for the start of `kallsyms_names`.
const MAX_NAME_BYTES: usize = 512;
/// How far apart two tables may be because of alignment padding.
const MAX_PADDING: usize = 16;
/// The most symbols we look for (kernels have some 100,000 to 300,000).
const MAX_SYMBOLS: usize = 1 << 22;
/// At least this share of consecutive addresses must be ascending for an
/// address table candidate to be believed (kallsyms sorts by address).
const SORTED_PERCENT: usize = 95;

/// One kernel symbol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbol {
    name: String,
    address: u64,
    kind: char,
    absolute: bool,
}

impl Symbol {
    /// The symbol's name, without the type letter.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its link-time virtual address (for an absolute per-CPU symbol, its
    /// offset in the per-CPU area).
    pub fn address(&self) -> u64 {
        self.address
    }

    /// Its `nm`-style type letter as kallsyms records it: `T`/`t` text,
    /// `D`/`d` data, `R`/`r` read-only data, `B`/`b` bss, `W`, `V`, `A`...
    pub fn kind(&self) -> char {
        self.kind
    }

    /// Whether the address is absolute rather than a place in the image:
    /// per-CPU offsets (`CONFIG_KALLSYMS_ABSOLUTE_PERCPU`) and `A` symbols.
    pub fn is_absolute(&self) -> bool {
        self.absolute
    }
}

/// How the kernel stores symbol addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressEncoding {
    /// `kallsyms_addresses`: one absolute `u64` per symbol.
    Absolute,
    /// `kallsyms_offsets`: `kallsyms_relative_base + (u32)offset`.
    BaseRelative,
    /// `kallsyms_offsets` with `CONFIG_KALLSYMS_ABSOLUTE_PERCPU`: offsets
    /// `>= 0` are absolute per-CPU addresses, negative ones mean
    /// `kallsyms_relative_base - 1 - offset`.
    BaseRelativeAbsolutePercpu,
}

/// Where one table lies in the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableLocation {
    /// Offset of its first byte in the file.
    pub file_offset: usize,
    /// The virtual address it is linked at, when a segment maps it.
    pub vaddr: Option<u64>,
    /// Its length in bytes.
    pub len: usize,
}

/// Where the kallsyms tables were found, and how addresses are encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KallsymsTables {
    /// `kallsyms_token_table`.
    pub token_table: TableLocation,
    /// `kallsyms_token_index`.
    pub token_index: TableLocation,
    /// `kallsyms_markers`.
    pub markers: TableLocation,
    /// `kallsyms_seqs_of_names`, where it lies between the markers and the
    /// token table (6.2, 6.3 and 6.1 stable); `None` where it is absent or
    /// after the addresses (6.4 on), as nothing here needs it.
    pub seqs_of_names: Option<TableLocation>,
    /// `kallsyms_names`.
    pub names: TableLocation,
    /// `kallsyms_num_syms`.
    pub num_syms: TableLocation,
    /// `kallsyms_offsets` or `kallsyms_addresses`.
    pub addresses: TableLocation,
    /// `kallsyms_relative_base`, with base-relative addresses.
    pub relative_base: Option<TableLocation>,
    /// How [`Self::addresses`] is to be read.
    pub encoding: AddressEncoding,
}

/// All symbols of a kernel, decoded from its kallsyms tables.
#[derive(Debug, Clone)]
pub struct Symbols {
    symbols: Vec<Symbol>,
    /// Name to index in `symbols`, for [`Symbols::lookup`].
    by_name: HashMap<String, usize>,
    /// `(address, index)` of the symbols that have a place in the image,
    /// sorted by address and, at one address, by preference, for
    /// [`Symbols::symbolize`].
    by_address: Vec<(u64, usize)>,
    tables: KallsymsTables,
}

fn u16_at(image: &[u8], at: usize) -> Option<u16> {
    let b = image.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([b[0], b[1]]))
}

fn u32_at(image: &[u8], at: usize) -> Option<u32> {
    let b = image.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(b.try_into().ok()?))
}

fn u64_at(image: &[u8], at: usize) -> Option<u64> {
    let b = image.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(b.try_into().ok()?))
}

fn align_up(value: usize, align: usize) -> Option<usize> {
    Some(value.checked_add(align - 1)? / align * align)
}

/// The token table and its index.
struct Tokens {
    /// Byte offset of the table in the image.
    start: usize,
    /// `(start, end)` of each token, absolute in the image.
    spans: Vec<(usize, usize)>,
    /// Where `kallsyms_token_index` is.
    index: usize,
}

impl Tokens {
    fn end(&self) -> usize {
        self.spans.last().map_or(self.start, |&(_, end)| end + 1)
    }
}

/// Every offset at which `needle` occurs in `haystack`.
fn find_all<'h>(haystack: &'h [u8], needle: &'h [u8]) -> impl Iterator<Item = usize> + 'h {
    let mut from = 0;
    std::iter::from_fn(move || {
        let first = *needle.first()?;
        while from < haystack.len() {
            let at = from + haystack[from..].iter().position(|&b| b == first)?;
            from = at + 1;
            if haystack[at..].starts_with(needle) {
                return Some(at);
            }
        }
        None
    })
}

/// Reads `count` tokens from `start` on, each non-empty and NUL-terminated.
fn token_spans(image: &[u8], start: usize, count: usize) -> Option<Vec<(usize, usize)>> {
    let mut spans = Vec::with_capacity(count);
    let mut at = start;
    for _ in 0..count {
        let rest = image.get(at..)?;
        let len = rest.iter().take(MAX_NAME_BYTES).position(|&b| b == 0)?;
        if len == 0 {
            return None;
        }
        spans.push((at, at + len));
        at += len + 1;
    }
    Some(spans)
}

/// Confirms a token table candidate whose token `'0'` starts at `zero`: the
/// tokens before it lead back to token 1, the digits and the lower-case
/// letters are themselves, and `kallsyms_token_index` follows with exactly
/// the tokens' offsets.
///
/// Token 0 is found through the index rather than by walking back to it:
/// the table may follow other data without padding, so nothing marks where
/// token 0 begins.
fn token_table_at(image: &[u8], zero: usize) -> Option<Tokens> {
    // Walk back over tokens 0x2f..=0x01: each is a non-empty run of
    // non-NUL bytes followed by a NUL.
    let mut first = zero;
    for _ in 1..usize::from(b'0') {
        let end = first.checked_sub(1)?; // the previous token's NUL
        if image[end] != 0 {
            return None;
        }
        let before = &image[end.saturating_sub(MAX_NAME_BYTES)..end];
        let len = before.iter().rev().position(|&b| b == 0)?;
        if len == 0 {
            return None;
        }
        first = end - len;
    }
    // `first` is where token 1 starts; the NUL before it ends token 0.
    let mut spans = token_spans(image, first, 255)?;
    let is_itself = |c: u8| {
        let (s, e) = spans[usize::from(c) - 1];
        image[s..e] == [c]
    };
    if !(b'0'..=b'9').chain(b'a'..=b'z').all(is_itself) {
        return None;
    }
    let end = spans.last()?.1 + 1;
    let (index, start) = (align_up(end, 2)?..=end + MAX_PADDING)
        .step_by(2)
        .find_map(|index| {
            if u16_at(image, index)? != 0 {
                return None;
            }
            let start = first.checked_sub(usize::from(u16_at(image, index + 2)?))?;
            let token0 = image.get(start..first.checked_sub(1)?)?;
            if token0.is_empty() || token0.contains(&0) {
                return None;
            }
            let offsets_match = spans.iter().enumerate().all(|(i, &(s, _))| {
                u16_at(image, index + 2 * (i + 1)).map(usize::from) == Some(s - start)
            });
            offsets_match.then_some((index, start))
        })?;
    spans.insert(0, (start, first - 1));
    Some(Tokens {
        start,
        spans,
        index,
    })
}

/// A candidate `kallsyms_markers`: where it starts and its values.
struct Markers {
    start: usize,
    width: usize,
    values: Vec<u64>,
    /// Where `kallsyms_seqs_of_names` starts when it sits between the
    /// markers and the token table.
    seqs: Option<usize>,
}

/// Reads markers backwards from `end` (exclusive): the values fall
/// strictly until the first marker, which is 0. With `expect`, there must
/// be exactly that many (checked cheaply first, as this is tried often).
fn markers_ending_at(
    image: &[u8],
    end: usize,
    width: usize,
    expect: Option<usize>,
) -> Option<Markers> {
    let read = |at: usize| match width {
        4 => u32_at(image, at).map(u64::from),
        _ => u64_at(image, at),
    };
    if let Some(count) = expect {
        if read(end.checked_sub(count.checked_mul(width)?)?)? != 0 {
            return None;
        }
    }
    let mut at = end;
    let mut values = Vec::new();
    let mut previous = u64::MAX;
    loop {
        at = at.checked_sub(width)?;
        let value = read(at)?;
        values.push(value);
        if value == 0 {
            break;
        }
        // Offsets into the names grow, and the names fit the image.
        if value >= previous
            || value >= image.len() as u64
            || Some(values.len()) == expect
            || values.len() > MAX_SYMBOLS / 256
        {
            return None;
        }
        previous = value;
    }
    if expect.is_some_and(|count| count != values.len()) {
        return None;
    }
    values.reverse();
    Some(Markers {
        start: at,
        width,
        values,
        seqs: None,
    })
}

/// Candidates for `kallsyms_markers` that end, up to zero padding, where
/// the token table starts (mainline up to 6.1, and 6.4 on). Markers are
/// `u32` in current kernels and were pointer-sized in old ones, so both
/// widths are tried.
fn markers_before(image: &[u8], table_start: usize) -> Vec<Markers> {
    let mut found = Vec::new();
    for width in [4usize, 8] {
        for padding in (0..=8).step_by(width) {
            let Some(end) = table_start.checked_sub(padding) else {
                continue;
            };
            if image[end..table_start].iter().all(|&b| b == 0) {
                found.extend(markers_ending_at(image, end, width, None));
            }
        }
    }
    found
}

/// Candidates for `kallsyms_markers` followed by `kallsyms_seqs_of_names`
/// (three bytes per symbol) before the token table: 6.2 and 6.3, and 6.1
/// stable kernels such as Debian's, which got it backported. The count is
/// not known yet, so every size of the seqs table is tried, with the
/// number of markers that symbol count implies.
fn markers_before_seqs(image: &[u8], table_start: usize) -> impl Iterator<Item = Markers> + '_ {
    (1..=3 * MAX_SYMBOLS / 8 + 1)
        .map_while(move |eighths| Some((eighths, table_start.checked_sub(8 * eighths)?)))
        .flat_map(move |(eighths, seqs)| {
            // The seqs table is 8-aligned and 3 * count bytes long, rounded
            // up to 8: these are the counts, and so the numbers of markers,
            // that give it this size.
            let least = (8 * eighths - 7).div_ceil(3);
            let most = 8 * eighths / 3;
            let mut found = Vec::new();
            for blocks in least.div_ceil(256)..=most.div_ceil(256) {
                for padding in [0, 4] {
                    let Some(end) = seqs.checked_sub(padding) else {
                        continue;
                    };
                    if image[end..seqs].iter().any(|&b| b != 0) {
                        continue;
                    }
                    if let Some(mut markers) = markers_ending_at(image, end, 4, Some(blocks)) {
                        markers.seqs = Some(seqs);
                        found.push(markers);
                    }
                }
            }
            found
        })
}

/// Walks `count` compressed names from `start`, checking each 256th
/// against the markers; returns each name's token bytes and where the
/// names end.
fn walk_names(
    image: &[u8],
    start: usize,
    count: usize,
    markers: &[u64],
    limit: usize,
) -> Option<(Vec<(usize, usize)>, usize)> {
    // Every name takes at least two bytes: do not let a bogus count
    // reserve more than the bytes could hold.
    let mut names = Vec::with_capacity(count.min(limit.saturating_sub(start) / 2));
    let mut at = start;
    for i in 0..count {
        if i.is_multiple_of(256) && markers.get(i / 256).copied() != Some((at - start) as u64) {
            return None;
        }
        let first = *image.get(at)?;
        let (len, prefix) = if first & 0x80 != 0 {
            let second = *image.get(at + 1)?;
            ((usize::from(first & 0x7f)) | (usize::from(second) << 7), 2)
        } else {
            (usize::from(first), 1)
        };
        let begin = at + prefix;
        let end = begin + len;
        if len == 0 || end > limit {
            return None;
        }
        names.push((begin, end));
        at = end;
    }
    Some((names, at))
}

/// What we learn from the names: where `kallsyms_num_syms` and the names
/// are, and each name's token bytes.
struct Names {
    num_syms: usize,
    start: usize,
    end: usize,
    spans: Vec<(usize, usize)>,
}

/// Finds `kallsyms_num_syms` and `kallsyms_names` before the markers: the
/// count must need exactly as many markers as there are, and decoding that
/// many names from just after it must hit every marker and end right
/// before the markers (and fill the seqs table, if there is one, up to the
/// token table at `table_start`).
fn names_before(image: &[u8], markers: &Markers, table_start: usize) -> Option<Names> {
    let blocks = markers.values.len();
    let last = usize::try_from(*markers.values.last()?).ok()?;
    // The names are at least `last` bytes long, plus up to 256 names.
    let newest = markers.start.checked_sub(last)?.checked_sub(4)? / 4 * 4;
    let oldest = newest.saturating_sub(256 * (MAX_NAME_BYTES + 2) + MAX_PADDING);
    (oldest..=newest).rev().step_by(4).find_map(|num_syms| {
        let count = usize::try_from(u32_at(image, num_syms)?).ok()?;
        if count == 0 || count > MAX_SYMBOLS || count.div_ceil(256) != blocks {
            return None;
        }
        if let Some(seqs) = markers.seqs {
            let seqs_end = seqs.checked_add(count.checked_mul(3)?)?;
            if seqs_end > table_start || table_start - seqs_end >= 8 {
                return None;
            }
        }
        // The names follow the count directly or at the next 8 bytes.
        [num_syms + 4, num_syms + 8].into_iter().find_map(|start| {
            let (spans, end) = walk_names(image, start, count, &markers.values, markers.start)?;
            (markers.start - end < MAX_PADDING).then_some(Names {
                num_syms,
                start,
                end,
                spans,
            })
        })
    })
}

/// A decoded address table.
struct Addresses {
    encoding: AddressEncoding,
    start: usize,
    len: usize,
    relative_base: Option<usize>,
    /// `(address, absolute)` per symbol.
    values: Vec<(u64, bool)>,
}

/// Whether nearly all consecutive addresses ascend, as kallsyms sorts them.
fn mostly_sorted(values: &[(u64, bool)]) -> bool {
    let ascending = values.windows(2).filter(|w| w[0].0 <= w[1].0).count();
    ascending * 100 >= values.len().saturating_sub(1) * SORTED_PERCENT
}

/// Reads `kallsyms_offsets` at `start` and `kallsyms_relative_base` at
/// `base`, if they make sense: the base is mapped by the image and the
/// offsets give sorted addresses.
fn base_relative(
    elf: &Elf<'_>,
    image: &[u8],
    start: usize,
    base: usize,
    count: usize,
) -> Option<Addresses> {
    let bytes = image.get(start..start.checked_add(count.checked_mul(4)?)?)?;
    let relative_base = u64_at(image, base)?;
    elf.map(relative_base)?;
    let offsets: Vec<i32> = bytes
        .chunks_exact(4)
        .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let negative = offsets.iter().filter(|&&o| o < 0).count();
    // With absolute per-CPU symbols, everything but the per-CPU variables
    // is negative; without, offsets are unsigned distances from the base.
    let (encoding, values): (_, Vec<_>) = if negative == 0 {
        let values = offsets
            .iter()
            .map(|&o| (relative_base.wrapping_add(u64::from(o as u32)), false))
            .collect();
        (AddressEncoding::BaseRelative, values)
    } else if negative * 2 > count {
        let values = offsets
            .iter()
            .map(|&o| {
                if o >= 0 {
                    (o as u64, true)
                } else {
                    // -1 - o is non-negative for every negative i32.
                    (
                        relative_base.wrapping_sub(1).wrapping_sub(o as i64 as u64),
                        false,
                    )
                }
            })
            .collect();
        (AddressEncoding::BaseRelativeAbsolutePercpu, values)
    } else {
        return None;
    };
    mostly_sorted(&values).then_some(Addresses {
        encoding,
        start,
        len: bytes.len(),
        relative_base: Some(base),
        values,
    })
}

/// Reads `kallsyms_addresses` at `start`, if the addresses are sorted and
/// mostly mapped by the image.
fn absolute(elf: &Elf<'_>, image: &[u8], start: usize, count: usize) -> Option<Addresses> {
    let bytes = image.get(start..start.checked_add(count.checked_mul(8)?)?)?;
    let values: Vec<(u64, bool)> = bytes
        .chunks_exact(8)
        .map(|c| (u64::from_le_bytes(c.try_into().unwrap_or_default()), false))
        .collect();
    let mapped = values
        .iter()
        .filter(|&&(a, _)| elf.map(a).is_some())
        .count();
    (mostly_sorted(&values) && mapped * 2 > count).then_some(Addresses {
        encoding: AddressEncoding::Absolute,
        start,
        len: bytes.len(),
        relative_base: None,
        values,
    })
}

/// Finds the address table: before `kallsyms_num_syms` (up to 6.3) or
/// after `kallsyms_token_index` (6.4 on), base-relative or absolute.
fn addresses(elf: &Elf<'_>, image: &[u8], names: &Names, tokens: &Tokens) -> Option<Addresses> {
    let count = names.spans.len();
    let offsets_len = count.checked_mul(4)?;
    let after_index = align_up(tokens.index.checked_add(512)?, 8)?;
    let before_count = || {
        let base = names.num_syms.checked_sub(8)?;
        let unaligned = base.checked_sub(offsets_len)?;
        base_relative(elf, image, unaligned / 8 * 8, base, count)
            .or_else(|| base_relative(elf, image, unaligned, base, count))
    };
    let after_index_relative = || {
        let base = align_up(after_index.checked_add(offsets_len)?, 8)?;
        base_relative(elf, image, after_index, base, count)
    };
    let before_count_absolute = || {
        let start = names.num_syms.checked_sub(count.checked_mul(8)?)? / 8 * 8;
        absolute(elf, image, start, count)
    };
    before_count()
        .or_else(after_index_relative)
        .or_else(before_count_absolute)
        .or_else(|| absolute(elf, image, after_index, count))
}

/// Everything found, before the names are expanded.
struct Found {
    tokens: Tokens,
    markers: Markers,
    names: Names,
    addresses: Addresses,
}

fn find(elf: &Elf<'_>, image: &[u8]) -> Result<Found, ProfileError> {
    let mut tables_seen = false;
    // '0' is rarer than NUL in an image, so the needle starts there; the
    // NUL before it is checked while walking back.
    for at in find_all(image, b"0\x001\x002\x003\x004\x005\x006\x007\x008\x009\x00") {
        let Some(tokens) = token_table_at(image, at) else {
            continue;
        };
        tables_seen = true;
        let direct = markers_before(image, tokens.start).into_iter();
        for markers in direct.chain(markers_before_seqs(image, tokens.start)) {
            let Some(names) = names_before(image, &markers, tokens.start) else {
                continue;
            };
            if let Some(addresses) = addresses(elf, image, &names, &tokens) {
                return Ok(Found {
                    tokens,
                    markers,
                    names,
                    addresses,
                });
            }
        }
    }
    Err(if tables_seen {
        ProfileError::BadKallsyms(
            "found the token table but no markers, names and addresses that fit it",
        )
    } else {
        ProfileError::NoKallsyms
    })
}

/// Whether `a` is a better name than `b` for an address or a name clash:
/// global symbols beat local ones.
fn preferred(a: &Symbol) -> u8 {
    u8::from(!a.kind.is_ascii_uppercase())
}

impl Symbols {
    /// Finds and decodes the kallsyms tables of a kernel ELF image.
    pub fn from_elf(image: &[u8]) -> Result<Self, ProfileError> {
        let elf = Elf::parse(image)?;
        let found = find(&elf, image)?;
        let tokens: Vec<&[u8]> = found
            .tokens
            .spans
            .iter()
            .map(|&(s, e)| &image[s..e])
            .collect();

        let mut symbols = Vec::with_capacity(found.names.spans.len());
        let mut expanded = Vec::with_capacity(64);
        for (&(start, end), &(address, percpu)) in
            found.names.spans.iter().zip(&found.addresses.values)
        {
            expanded.clear();
            for &byte in &image[start..end] {
                expanded.extend_from_slice(tokens[usize::from(byte)]);
            }
            let text = String::from_utf8_lossy(&expanded);
            let mut chars = text.chars();
            let kind = chars.next().unwrap_or('?');
            symbols.push(Symbol {
                name: chars.as_str().to_owned(),
                address,
                kind,
                absolute: percpu || kind == 'A' || kind == 'a',
            });
        }

        let mut by_name: HashMap<String, usize> = HashMap::with_capacity(symbols.len());
        for (i, symbol) in symbols.iter().enumerate() {
            // Static symbols may share a name; keep the global one, else
            // the first.
            by_name
                .entry(symbol.name.clone())
                .and_modify(|kept| {
                    if preferred(symbol) < preferred(&symbols[*kept]) {
                        *kept = i;
                    }
                })
                .or_insert(i);
        }
        let mut by_address: Vec<(u64, usize)> = symbols
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.absolute)
            .map(|(i, s)| (s.address, i))
            .collect();
        by_address.sort_by_key(|&(address, i)| (address, preferred(&symbols[i]), i));

        let location = |file_offset: usize, len: usize| TableLocation {
            file_offset,
            vaddr: elf.vaddr_of(file_offset),
            len,
        };
        let t = &found.tokens;
        let tables = KallsymsTables {
            token_table: location(t.start, t.end() - t.start),
            token_index: location(t.index, 512),
            markers: location(
                found.markers.start,
                found.markers.values.len() * found.markers.width,
            ),
            seqs_of_names: found
                .markers
                .seqs
                .map(|at| location(at, 3 * found.names.spans.len())),
            names: location(found.names.start, found.names.end - found.names.start),
            num_syms: location(found.names.num_syms, 4),
            addresses: location(found.addresses.start, found.addresses.len),
            relative_base: found.addresses.relative_base.map(|at| location(at, 8)),
            encoding: found.addresses.encoding,
        };
        Ok(Symbols {
            symbols,
            by_name,
            by_address,
            tables,
        })
    }

    /// The link-time virtual address of the symbol `name` (a global one if
    /// several symbols share the name).
    pub fn lookup(&self, name: &str) -> Option<u64> {
        self.by_name.get(name).map(|&i| self.symbols[i].address)
    }

    /// The symbol `name`, with its type and whether it is absolute.
    pub fn get(&self, name: &str) -> Option<&Symbol> {
        self.by_name.get(name).map(|&i| &self.symbols[i])
    }

    /// The type letter of the symbol `name`.
    pub fn kind(&self, name: &str) -> Option<char> {
        self.by_name.get(name).map(|&i| self.symbols[i].kind)
    }

    /// The nearest symbol at or below `addr` and the distance from it, for
    /// turning a guest RIP into `function+offset`. Absolute (per-CPU)
    /// symbols are left out: their values are not places in the image. At
    /// an address with several symbols a global one is named.
    pub fn symbolize(&self, addr: u64) -> Option<(&str, u64)> {
        let below = self.by_address.partition_point(|&(a, _)| a <= addr);
        let (found, _) = *self.by_address.get(below.checked_sub(1)?)?;
        let first = self.by_address.partition_point(|&(a, _)| a < found);
        let symbol = &self.symbols[self.by_address[first].1];
        Some((&symbol.name, addr - found))
    }

    /// How many symbols there are.
    pub fn len(&self) -> usize {
        self.symbols.len()
    }

    /// Whether there are none (never true for a decoded table).
    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }

    /// All symbols, in kallsyms order (by address).
    pub fn iter(&self) -> impl Iterator<Item = &Symbol> + '_ {
        self.symbols.iter()
    }

    /// Where the tables were found in the image.
    pub fn tables(&self) -> &KallsymsTables {
        &self.tables
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::tests::tiny_elf;

    const BASE: u64 = 0xffff_ffff_8100_0000;

    fn pad8(out: &mut Vec<u8>) {
        while !out.len().is_multiple_of(8) {
            out.push(0);
        }
    }

    /// The table orders `scripts/kallsyms` has used.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Layout {
        /// Mainline up to 6.1: addresses, num_syms, names, markers, tokens.
        Before62,
        /// 6.2, 6.3 and 6.1 stable: `kallsyms_seqs_of_names` after markers.
        SeqsAfterMarkers,
        /// 6.4 on: num_syms, names, markers, tokens, addresses, seqs.
        Since64,
    }

    /// How the synthetic table stores addresses.
    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Encoding {
        Percpu,
        Relative,
        Absolute,
    }

    /// Appends the address table (and relative base) for `symbols`.
    fn push_addresses(out: &mut Vec<u8>, symbols: &[(String, u64, bool)], encoding: Encoding) {
        pad8(out);
        for (_, address, percpu) in symbols {
            match encoding {
                Encoding::Absolute => out.extend_from_slice(&address.to_le_bytes()),
                Encoding::Relative => {
                    out.extend_from_slice(&((address - BASE) as u32).to_le_bytes())
                }
                Encoding::Percpu => {
                    let offset: i32 = if *percpu {
                        *address as i32
                    } else {
                        -1 - (address - BASE) as i32
                    };
                    out.extend_from_slice(&offset.to_le_bytes());
                }
            }
        }
        if encoding != Encoding::Absolute {
            pad8(out);
            out.extend_from_slice(&BASE.to_le_bytes());
        }
    }

    fn push_seqs(out: &mut Vec<u8>, count: usize) {
        pad8(out);
        for i in 0..count as u32 {
            out.extend_from_slice(&i.to_be_bytes()[1..]);
        }
    }

    /// Builds kallsyms tables the way `scripts/kallsyms` lays them out,
    /// in an ELF. No compression beyond the identity tokens, except token
    /// 0x01 = "ab" to exercise expansion. `symbols` are `(type letter +
    /// name, address, per-CPU)`; `long_names` gives every name a two-byte
    /// length.
    fn kallsyms_image(
        symbols: &[(String, u64, bool)],
        layout: Layout,
        encoding: Encoding,
        long_names: bool,
    ) -> Vec<u8> {
        let mut out = vec![0xccu8; 64]; // "text" before the tables
        let mut tokens: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        tokens[0] = b"z_".to_vec(); // tokens must not be empty or NUL
        tokens[1] = b"ab".to_vec();

        if layout != Layout::Since64 {
            push_addresses(&mut out, symbols, encoding);
        }
        pad8(&mut out);
        out.extend_from_slice(&(symbols.len() as u32).to_le_bytes());
        pad8(&mut out);
        let names_start = out.len();
        let mut markers = Vec::new();
        for (i, (name, _, _)) in symbols.iter().enumerate() {
            if i.is_multiple_of(256) {
                markers.push((out.len() - names_start) as u32);
            }
            let compressed = name.replace("ab", "\u{1}").into_bytes();
            if long_names || compressed.len() >= 0x80 {
                out.push(0x80 | (compressed.len() & 0x7f) as u8);
                out.push((compressed.len() >> 7) as u8);
            } else {
                out.push(compressed.len() as u8);
            }
            out.extend_from_slice(&compressed);
        }
        pad8(&mut out);
        for marker in markers {
            out.extend_from_slice(&marker.to_le_bytes());
        }
        if layout == Layout::SeqsAfterMarkers {
            push_seqs(&mut out, symbols.len());
        }
        pad8(&mut out);
        let mut index = Vec::new();
        let table_start = out.len();
        for token in &tokens {
            index.push((out.len() - table_start) as u16);
            out.extend_from_slice(token);
            out.push(0);
        }
        pad8(&mut out);
        for i in index {
            out.extend_from_slice(&i.to_le_bytes());
        }
        if layout == Layout::Since64 {
            push_addresses(&mut out, symbols, encoding);
            push_seqs(&mut out, symbols.len());
        }
        out.extend_from_slice(&[0xcc; 64]);
        tiny_elf(BASE, &out, &[(".rodata", 0, out.len())])
    }

    fn sample(count: usize) -> Vec<(String, u64, bool)> {
        let mut symbols = vec![
            ("Dfixed_percpu_data".to_string(), 0, true),
            ("Dcpu_number".to_string(), 0x40, true),
            ("T_stext".to_string(), BASE, false),
            ("Tstartup_64".to_string(), BASE, false),
        ];
        for i in 0..count {
            symbols.push((
                format!("tfunc_abc_{i}"),
                BASE + 0x10 + 0x10 * i as u64,
                false,
            ));
        }
        symbols.push(("Tentry_SYSCALL_64".to_string(), BASE + 0x10_0000, false));
        symbols.push(("T_etext".to_string(), BASE + 0x20_0000, false));
        symbols
    }

    fn check(symbols: &Symbols, count: usize) {
        assert_eq!(symbols.len(), count + 6);
        assert_eq!(symbols.lookup("_stext"), Some(BASE));
        assert_eq!(symbols.kind("_stext"), Some('T'));
        assert_eq!(symbols.lookup("func_abc_3"), Some(BASE + 0x40));
        assert_eq!(symbols.kind("func_abc_3"), Some('t'));
        assert_eq!(symbols.lookup("nonexistent"), None);
        let entry = symbols.lookup("entry_SYSCALL_64").unwrap();
        assert_eq!(symbols.symbolize(entry + 3), Some(("entry_SYSCALL_64", 3)));
        assert_eq!(symbols.symbolize(BASE - 1), None);
        assert_eq!(symbols.symbolize(BASE + 5).map(|(_, o)| o), Some(5));
        let tables = symbols.tables();
        assert!(tables.names.file_offset < tables.markers.file_offset);
        assert!(tables.markers.file_offset < tables.token_table.file_offset);
        assert!(tables.token_table.file_offset < tables.token_index.file_offset);
        assert_eq!(tables.markers.len, (count + 6).div_ceil(256) * 4);
        assert_eq!(tables.num_syms.file_offset + 8, tables.names.file_offset);
    }

    #[test]
    fn decodes_every_layout_and_encoding() {
        for layout in [Layout::Before62, Layout::SeqsAfterMarkers, Layout::Since64] {
            for (count, long_names) in [(10, false), (700, false), (300, true)] {
                let image = kallsyms_image(&sample(count), layout, Encoding::Percpu, long_names);
                let symbols =
                    Symbols::from_elf(&image).unwrap_or_else(|e| panic!("{layout:?} {count}: {e}"));
                check(&symbols, count);
                let tables = symbols.tables();
                assert_eq!(tables.encoding, AddressEncoding::BaseRelativeAbsolutePercpu);
                assert_eq!(
                    tables.seqs_of_names.is_some(),
                    layout == Layout::SeqsAfterMarkers
                );
                assert_eq!(
                    tables.addresses.file_offset < tables.num_syms.file_offset,
                    layout != Layout::Since64
                );
                // Per-CPU symbols have an address but are not places.
                assert_eq!(symbols.lookup("cpu_number"), Some(0x40));
                assert_eq!(symbols.symbolize(0x40), None);
                assert!(symbols
                    .iter()
                    .any(|s| s.name() == "cpu_number" && s.is_absolute()));
            }
        }
    }

    #[test]
    fn decodes_relative_and_absolute_addresses() {
        // Without per-CPU symbols: plain base-relative, and absolute.
        let symbols: Vec<_> = sample(400).into_iter().filter(|s| !s.2).collect();
        for (encoding, expected) in [
            (Encoding::Relative, AddressEncoding::BaseRelative),
            (Encoding::Absolute, AddressEncoding::Absolute),
        ] {
            for layout in [Layout::Before62, Layout::Since64] {
                let image = kallsyms_image(&symbols, layout, encoding, false);
                let decoded = Symbols::from_elf(&image)
                    .unwrap_or_else(|e| panic!("{layout:?} {encoding:?}: {e}"));
                assert_eq!(decoded.tables().encoding, expected);
                assert_eq!(decoded.len(), symbols.len());
                assert_eq!(decoded.lookup("func_abc_3"), Some(BASE + 0x40));
                assert_eq!(
                    decoded.tables().relative_base.is_some(),
                    encoding != Encoding::Absolute
                );
            }
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(Symbols::from_elf(&[]).is_err());
        assert!(matches!(
            Symbols::from_elf(&tiny_elf(BASE, &[0u8; 4096], &[])),
            Err(ProfileError::NoKallsyms)
        ));
        // Pseudo-random bytes (xorshift), with and without an ELF around them.
        let random = crate::pseudo_random(0x2545_f491_4f6c_dd1d, 65536);
        assert!(Symbols::from_elf(&random).is_err());
        assert!(Symbols::from_elf(&tiny_elf(BASE, &random, &[])).is_err());
    }

    #[test]
    fn truncated_or_damaged_tables_do_not_panic() {
        let image = kallsyms_image(
            &sample(300),
            Layout::SeqsAfterMarkers,
            Encoding::Percpu,
            false,
        );
        // Cutting the file anywhere must give an error (or, if only the
        // trailing padding went, still decode).
        for len in (0..image.len()).step_by(7) {
            let _ = Symbols::from_elf(&image[..len]);
        }
        // Flipping any single byte must not panic either.
        for at in (0..image.len()).step_by(3) {
            let mut damaged = image.clone();
            damaged[at] ^= 0x5a;
            let _ = Symbols::from_elf(&damaged);
        }
    }
}
