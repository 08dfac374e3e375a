//! A kernel's kallsyms as an ELF symbol file that gdb loads with
//! `add-symbol-file` (or `symbol-file`): the symbols of a distribution
//! kernel that ships no symbol table, by name, in a debugger.
//!
//! The file has no contents, only section headers and a symbol table:
//! each run of consecutive symbols of one class (code, data, bss) becomes
//! one `SHT_NOBITS` section spanning their addresses, so that gdb types
//! the symbols as functions or variables, and absolute symbols (per-CPU
//! offsets) are `SHN_ABS`. Sizes run to the next symbol, so gdb names an
//! address as `symbol+offset`.

use crate::kallsyms::Symbols;

/// One symbol to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSymbol {
    /// Its name.
    pub name: String,
    /// Its address (already relocated, if it is to be).
    pub address: u64,
    /// Its `nm`-style type letter: upper case is global.
    pub kind: char,
    /// Absolute (a per-CPU offset, an `A` symbol): in no section.
    pub absolute: bool,
}

/// The ELF symbol file of `symbols`, each address moved by `slide` (a
/// KASLR offset; 0 for the link-time addresses).
pub fn symbol_file(symbols: &Symbols, slide: u64) -> Vec<u8> {
    let entries = symbols
        .iter()
        .map(|s| FileSymbol {
            name: s.name().to_string(),
            address: if s.is_absolute() {
                s.address()
            } else {
                s.address().wrapping_add(slide)
            },
            kind: s.kind(),
            absolute: s.is_absolute(),
        })
        .collect();
    write_symbol_file(entries)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Code,
    Data,
    Bss,
}

fn class(kind: char) -> Class {
    match kind.to_ascii_lowercase() {
        't' | 'w' => Class::Code,
        'b' | 's' => Class::Bss,
        _ => Class::Data,
    }
}

/// A section: a run of symbols of one class.
struct Section {
    class: Class,
    start: u64,
    end: u64,
}

const SHT_SYMTAB: u32 = 2;
const SHT_STRTAB: u32 = 3;
const SHT_NOBITS: u32 = 8;
const SHF_WRITE: u64 = 1;
const SHF_ALLOC: u64 = 2;
const SHF_EXECINSTR: u64 = 4;
const SHN_ABS: u16 = 0xfff1;
const STB_LOCAL: u8 = 0;
const STB_GLOBAL: u8 = 1;
const STT_NOTYPE: u8 = 0;
const STT_OBJECT: u8 = 1;
const STT_FUNC: u8 = 2;
const EHDR: usize = 64;
const SHDR: usize = 64;
const SYM: usize = 24;

/// Writes `symbols` as an ELF64 x86-64 symbol file (see the module docs).
pub fn write_symbol_file(mut symbols: Vec<FileSymbol>) -> Vec<u8> {
    symbols.sort_by_key(|s| (s.absolute, s.address));
    // Runs of one class; symbols at the address a run starts at join it,
    // so that no section is empty.
    let mut sections: Vec<Section> = Vec::new();
    let mut section_of = Vec::with_capacity(symbols.len());
    for s in &symbols {
        if s.absolute {
            section_of.push(None);
            continue;
        }
        let c = class(s.kind);
        match sections.last_mut() {
            Some(last) if last.class == c || last.start == s.address => {}
            _ => {
                if let Some(last) = sections.last_mut() {
                    last.end = s.address;
                }
                sections.push(Section {
                    class: c,
                    start: s.address,
                    end: s.address,
                });
            }
        }
        section_of.push(Some(sections.len() - 1));
    }
    if let Some(last) = sections.last_mut() {
        let top = symbols
            .iter()
            .filter(|s| !s.absolute)
            .map(|s| s.address)
            .max()
            .unwrap_or(last.start);
        last.end = top.saturating_add(1).max(last.start + 1);
    }

    // Section names, then the symbol names.
    let mut shstrtab = vec![0u8];
    let name_at = |table: &mut Vec<u8>, name: &str| {
        let at = table.len() as u32;
        table.extend_from_slice(name.as_bytes());
        table.push(0);
        at
    };
    let section_names: Vec<u32> = sections
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let base = match s.class {
                Class::Code => ".text",
                Class::Data => ".data",
                Class::Bss => ".bss",
            };
            name_at(&mut shstrtab, &format!("{base}.{i}"))
        })
        .collect();
    let symtab_name = name_at(&mut shstrtab, ".symtab");
    let strtab_name = name_at(&mut shstrtab, ".strtab");
    let shstrtab_name = name_at(&mut shstrtab, ".shstrtab");

    // Locals first, as ELF requires; `sh_info` is the first global.
    let mut order: Vec<usize> = (0..symbols.len()).collect();
    order.sort_by_key(|&i| symbols[i].kind.is_ascii_uppercase());
    let first_global = 1 + order
        .iter()
        .take_while(|&&i| !symbols[i].kind.is_ascii_uppercase())
        .count();
    let mut strtab = vec![0u8];
    let mut symtab = vec![0u8; SYM];
    for &i in &order {
        let s = &symbols[i];
        let name = name_at(&mut strtab, &s.name);
        let (shndx, ty) = match section_of[i] {
            None => (SHN_ABS, STT_NOTYPE),
            Some(n) => (
                (n + 1) as u16,
                if sections[n].class == Class::Code {
                    STT_FUNC
                } else {
                    STT_OBJECT
                },
            ),
        };
        // To the next higher address in the same section.
        let size = match section_of[i] {
            None => 0,
            Some(n) => symbols[i + 1..]
                .iter()
                .map(|t| t.address)
                .find(|&a| a > s.address)
                .unwrap_or(sections[n].end)
                .min(sections[n].end)
                .saturating_sub(s.address),
        };
        let bind = if s.kind.is_ascii_uppercase() {
            STB_GLOBAL
        } else {
            STB_LOCAL
        };
        symtab.extend_from_slice(&name.to_le_bytes());
        symtab.push((bind << 4) | ty);
        symtab.push(0);
        symtab.extend_from_slice(&shndx.to_le_bytes());
        symtab.extend_from_slice(&s.address.to_le_bytes());
        symtab.extend_from_slice(&size.to_le_bytes());
    }

    // Layout: header, the three tables, then the section headers.
    let symtab_off = EHDR;
    let strtab_off = symtab_off + symtab.len();
    let shstrtab_off = strtab_off + strtab.len();
    let shdr_off = (shstrtab_off + shstrtab.len()).next_multiple_of(8);
    let count = 1 + sections.len() + 3;
    let symtab_index = 1 + sections.len();

    let mut out = Vec::with_capacity(shdr_off + count * SHDR);
    out.extend_from_slice(b"\x7fELF");
    out.extend_from_slice(&[2, 1, 1, 0]); // 64-bit, little-endian, version 1, System V
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    out.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes()); // e_entry
    out.extend_from_slice(&0u64.to_le_bytes()); // e_phoff
    out.extend_from_slice(&(shdr_off as u64).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    out.extend_from_slice(&(EHDR as u16).to_le_bytes());
    out.extend_from_slice(&56u16.to_le_bytes()); // e_phentsize
    out.extend_from_slice(&0u16.to_le_bytes()); // e_phnum
    out.extend_from_slice(&(SHDR as u16).to_le_bytes());
    out.extend_from_slice(&(count as u16).to_le_bytes());
    out.extend_from_slice(&((count - 1) as u16).to_le_bytes()); // e_shstrndx
    out.extend_from_slice(&symtab);
    out.extend_from_slice(&strtab);
    out.extend_from_slice(&shstrtab);
    out.resize(shdr_off, 0);

    // Section headers: the null one, the runs, the three tables.
    out.extend_from_slice(&[0; SHDR]);
    let mut header = |name: u32, ty: u32, flags: u64, addr: u64, place: (usize, u64), rest| {
        let (off, size) = place;
        let (link, info, align, entsize): (u32, u32, u64, u64) = rest;
        out.extend_from_slice(&name.to_le_bytes());
        out.extend_from_slice(&ty.to_le_bytes());
        out.extend_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(&addr.to_le_bytes());
        out.extend_from_slice(&(off as u64).to_le_bytes());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&link.to_le_bytes());
        out.extend_from_slice(&info.to_le_bytes());
        out.extend_from_slice(&align.to_le_bytes());
        out.extend_from_slice(&entsize.to_le_bytes());
    };
    for (s, &name) in sections.iter().zip(&section_names) {
        let flags = match s.class {
            Class::Code => SHF_ALLOC | SHF_EXECINSTR,
            Class::Data | Class::Bss => SHF_ALLOC | SHF_WRITE,
        };
        let place = (0, s.end - s.start);
        header(name, SHT_NOBITS, flags, s.start, place, (0, 0, 1, 0));
    }
    let strtab_index = symtab_index as u32 + 1;
    let place = (symtab_off, symtab.len() as u64);
    let rest = (strtab_index, first_global as u32, 8, SYM as u64);
    header(symtab_name, SHT_SYMTAB, 0, 0, place, rest);
    let place = (strtab_off, strtab.len() as u64);
    header(strtab_name, SHT_STRTAB, 0, 0, place, (0, 0, 1, 0));
    let place = (shstrtab_off, shstrtab.len() as u64);
    header(shstrtab_name, SHT_STRTAB, 0, 0, place, (0, 0, 1, 0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sym(name: &str, address: u64, kind: char) -> FileSymbol {
        FileSymbol {
            name: name.into(),
            address,
            kind,
            absolute: kind == 'A',
        }
    }

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
    }
    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }
    fn cstr(b: &[u8], at: usize) -> String {
        let end = b[at..].iter().position(|&c| c == 0).unwrap();
        String::from_utf8(b[at..at + end].to_vec()).unwrap()
    }

    /// (name, value, size, bind, type, shndx) of every symbol, and the
    /// (name, flags, addr, size) of every section.
    type Parsed = (
        Vec<(String, u64, u64, u8, u8, u16)>,
        Vec<(String, u64, u64, u64)>,
        u32,
    );

    fn parse(elf: &[u8]) -> Parsed {
        assert_eq!(&elf[..4], b"\x7fELF");
        let shoff = u64_at(elf, 0x28) as usize;
        let count = usize::from(u16_at(elf, 0x3c));
        let shstrndx = usize::from(u16_at(elf, 0x3e));
        let head = |i: usize| shoff + i * SHDR;
        let shstr = u64_at(elf, head(shstrndx) + 0x18) as usize;
        let mut sections = Vec::new();
        let mut symtab = None;
        for i in 1..count {
            let h = head(i);
            let name = cstr(elf, shstr + u32_at(elf, h) as usize);
            if u32_at(elf, h + 4) == SHT_SYMTAB {
                symtab = Some(h);
            }
            sections.push((
                name,
                u64_at(elf, h + 8),
                u64_at(elf, h + 0x10),
                u64_at(elf, h + 0x20),
            ));
        }
        let h = symtab.expect("a .symtab");
        let (off, size) = (
            u64_at(elf, h + 0x18) as usize,
            u64_at(elf, h + 0x20) as usize,
        );
        let strtab = u64_at(elf, head(u32_at(elf, h + 0x28) as usize) + 0x18) as usize;
        let first_global = u32_at(elf, h + 0x2c);
        let symbols = (1..size / SYM)
            .map(|i| {
                let s = off + i * SYM;
                (
                    cstr(elf, strtab + u32_at(elf, s) as usize),
                    u64_at(elf, s + 8),
                    u64_at(elf, s + 16),
                    elf[s + 4] >> 4,
                    elf[s + 4] & 0xf,
                    u16_at(elf, s + 6),
                )
            })
            .collect();
        (symbols, sections, first_global)
    }

    #[test]
    fn runs_of_one_class_become_sections_and_sizes_reach_the_next_symbol() {
        let elf = write_symbol_file(vec![
            sym("linux_banner", 0x2000, 'D'),
            sym("_stext", 0x1000, 'T'),
            sym("helper", 0x1040, 't'),
            sym("init_task", 0x2100, 'd'),
            sym("__bss_start", 0x3000, 'B'),
            sym("fixed_percpu_data", 0x0, 'A'),
        ]);
        let (symbols, sections, first_global) = parse(&elf);
        let names: Vec<&str> = sections.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(
            names,
            [
                ".text.0",
                ".data.1",
                ".bss.2",
                ".symtab",
                ".strtab",
                ".shstrtab"
            ]
        );
        assert_eq!((sections[0].2, sections[0].3), (0x1000, 0x1000));
        assert_eq!((sections[1].2, sections[1].3), (0x2000, 0x1000));
        assert_eq!(sections[0].1, SHF_ALLOC | SHF_EXECINSTR);
        let find = |n: &str| symbols.iter().find(|s| s.0 == n).unwrap().clone();
        assert_eq!(
            find("_stext"),
            ("_stext".into(), 0x1000, 0x40, STB_GLOBAL, STT_FUNC, 1)
        );
        assert_eq!(
            find("helper"),
            ("helper".into(), 0x1040, 0xfc0, STB_LOCAL, STT_FUNC, 1)
        );
        assert_eq!(find("init_task").5, 2);
        assert_eq!(find("init_task").4, STT_OBJECT);
        assert_eq!(find("__bss_start").2, 1, "the last symbol gets one byte");
        assert_eq!(find("fixed_percpu_data").5, SHN_ABS);
        // Locals come first.
        let locals = symbols.iter().take_while(|s| s.3 == STB_LOCAL).count();
        assert_eq!(first_global as usize, 1 + locals);
        assert!(symbols[locals..].iter().all(|s| s.3 == STB_GLOBAL));
    }
}
