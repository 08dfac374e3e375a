//! Guest image loaders: flat binaries and ELF64 executables.
//!
//! Both check everything against guest RAM before writing a byte, so a
//! bad image is refused whole: a segment outside RAM or inside the
//! host-reserved low memory, overlapping segments, truncated headers.

use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use wasmvisor_exit::GuestRam;
use wasmvisor_kvm::HOST_RESERVED_END;

/// Why a guest image cannot be loaded.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum LoadError {
    #[error("guest image is empty")]
    Empty,
    #[error("guest image of {size} bytes at {addr:#x} does not fit in {ram} bytes of RAM")]
    TooLarge { size: u64, addr: u64, ram: u64 },
    #[error(
        "guest image at {addr:#x} overlaps the host-reserved area below {HOST_RESERVED_END:#x}"
    )]
    Reserved { addr: u64 },
    #[error("bad ELF header: {0}")]
    BadElf(&'static str),
    #[error("ELF segment {index} (file offset {offset:#x}, {size} bytes) lies outside the file")]
    SegmentOutsideFile {
        index: usize,
        offset: u64,
        size: u64,
    },
    #[error("ELF segments {a} and {b} overlap in guest memory")]
    Overlap { a: usize, b: usize },
    #[error("ELF file has no loadable segments")]
    NoSegments,
    #[error("cannot write the guest image: {0}")]
    Write(String),
}

/// Where a loaded image starts executing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loaded {
    pub entry: u64,
    /// Lowest and highest+1 guest-physical addresses written.
    pub start: u64,
    pub end: u64,
}

fn check_span(mem: &GuestRam, addr: u64, size: u64) -> Result<(), LoadError> {
    let ram = mem.last_addr().0 + 1;
    let end = addr.checked_add(size);
    if end.is_none_or(|e| e > ram) {
        return Err(LoadError::TooLarge { size, addr, ram });
    }
    if addr < HOST_RESERVED_END {
        return Err(LoadError::Reserved { addr });
    }
    Ok(())
}

/// Loads a flat binary at `addr`.
pub fn load_flat(mem: &GuestRam, image: &[u8], addr: u64) -> Result<Loaded, LoadError> {
    if image.is_empty() {
        return Err(LoadError::Empty);
    }
    check_span(mem, addr, image.len() as u64)?;
    mem.write_slice(image, GuestAddress(addr))
        .map_err(|e| LoadError::Write(e.to_string()))?;
    Ok(Loaded {
        entry: addr,
        start: addr,
        end: addr + image.len() as u64,
    })
}

/// True if `image` starts with the ELF magic.
pub fn is_elf(image: &[u8]) -> bool {
    image.starts_with(b"\x7fELF")
}

/// One PT_LOAD segment, checked against the file.
#[derive(Debug, Clone, Copy)]
struct Segment {
    offset: u64,
    filesz: u64,
    paddr: u64,
    memsz: u64,
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// Parses and validates the PT_LOAD segments and entry of an ELF64 image.
fn parse_elf(image: &[u8]) -> Result<(u64, Vec<Segment>), LoadError> {
    const PT_LOAD: u32 = 1;
    if image.len() < 64 || !is_elf(image) {
        return Err(LoadError::BadElf("too short or no ELF magic"));
    }
    if image[4] != 2 {
        return Err(LoadError::BadElf("not a 64-bit ELF (EI_CLASS)"));
    }
    if image[5] != 1 {
        return Err(LoadError::BadElf("not little-endian (EI_DATA)"));
    }
    let bad = LoadError::BadElf("truncated header");
    let e_type = u16_at(image, 16).ok_or(bad.clone())?;
    let machine = u16_at(image, 18).ok_or(bad.clone())?;
    if e_type != 2 {
        return Err(LoadError::BadElf("not an executable (ET_EXEC)"));
    }
    if machine != 62 {
        return Err(LoadError::BadElf("not an x86-64 executable"));
    }
    let entry = u64_at(image, 24).ok_or(bad.clone())?;
    let phoff = u64_at(image, 32).ok_or(bad.clone())?;
    let phentsize = u16_at(image, 54).ok_or(bad.clone())?;
    let phnum = u16_at(image, 56).ok_or(bad)?;
    if phentsize != 56 {
        return Err(LoadError::BadElf("unexpected program header size"));
    }
    phoff
        .checked_add(u64::from(phnum) * 56)
        .filter(|&e| e <= image.len() as u64)
        .ok_or(LoadError::BadElf("program headers lie outside the file"))?;
    let mut segments = Vec::new();
    for i in 0..usize::from(phnum) {
        let base = phoff as usize + i * 56;
        let field = |off: usize| u64_at(image, base + off).unwrap_or(0);
        if u32_at(image, base).unwrap_or(0) != PT_LOAD {
            continue;
        }
        let seg = Segment {
            offset: field(8),
            paddr: field(24),
            filesz: field(32),
            memsz: field(40),
        };
        if seg.filesz > seg.memsz {
            return Err(LoadError::BadElf(
                "segment file size exceeds its memory size",
            ));
        }
        if seg
            .offset
            .checked_add(seg.filesz)
            .is_none_or(|e| e > image.len() as u64)
        {
            return Err(LoadError::SegmentOutsideFile {
                index: i,
                offset: seg.offset,
                size: seg.filesz,
            });
        }
        segments.push((i, seg));
    }
    if segments.is_empty() {
        return Err(LoadError::NoSegments);
    }
    for (x, (ia, a)) in segments.iter().enumerate() {
        for (ib, b) in segments.iter().skip(x + 1) {
            let a_end = a.paddr.saturating_add(a.memsz);
            let b_end = b.paddr.saturating_add(b.memsz);
            if a.memsz > 0 && b.memsz > 0 && a.paddr < b_end && b.paddr < a_end {
                return Err(LoadError::Overlap { a: *ia, b: *ib });
            }
        }
    }
    Ok((entry, segments.into_iter().map(|(_, s)| s).collect()))
}

/// Loads an ELF64 x86-64 executable at its segments' physical addresses.
pub fn load_elf(mem: &GuestRam, image: &[u8]) -> Result<Loaded, LoadError> {
    let (entry, segments) = parse_elf(image)?;
    for s in &segments {
        check_span(mem, s.paddr, s.memsz)?;
    }
    let mut start = u64::MAX;
    let mut end = 0;
    for s in &segments {
        let data = &image[s.offset as usize..(s.offset + s.filesz) as usize];
        mem.write_slice(data, GuestAddress(s.paddr))
            .map_err(|e| LoadError::Write(e.to_string()))?;
        // The rest of memsz is .bss: RAM starts zeroed, but be explicit.
        let zeros = vec![0u8; (s.memsz - s.filesz) as usize];
        mem.write_slice(&zeros, GuestAddress(s.paddr + s.filesz))
            .map_err(|e| LoadError::Write(e.to_string()))?;
        start = start.min(s.paddr);
        end = end.max(s.paddr + s.memsz);
    }
    Ok(Loaded { entry, start, end })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ram() -> GuestRam {
        GuestRam::from_ranges(&[(GuestAddress(0), 0x40000)]).unwrap()
    }

    /// Builds a minimal ELF64 executable with the given (paddr, bytes)
    /// segments.
    pub(crate) fn elf(entry: u64, segs: &[(u64, &[u8])]) -> Vec<u8> {
        let phoff = 64u64;
        let data_start = phoff + 56 * segs.len() as u64;
        let mut out = vec![0u8; data_start as usize];
        out[..4].copy_from_slice(b"\x7fELF");
        out[4] = 2;
        out[5] = 1;
        out[6] = 1;
        out[16..18].copy_from_slice(&2u16.to_le_bytes());
        out[18..20].copy_from_slice(&62u16.to_le_bytes());
        out[24..32].copy_from_slice(&entry.to_le_bytes());
        out[32..40].copy_from_slice(&phoff.to_le_bytes());
        out[54..56].copy_from_slice(&56u16.to_le_bytes());
        out[56..58].copy_from_slice(&(segs.len() as u16).to_le_bytes());
        let mut offset = data_start;
        for (i, (paddr, bytes)) in segs.iter().enumerate() {
            let b = 64 + i * 56;
            out[b..b + 4].copy_from_slice(&1u32.to_le_bytes());
            out[b + 8..b + 16].copy_from_slice(&offset.to_le_bytes());
            out[b + 16..b + 24].copy_from_slice(&paddr.to_le_bytes());
            out[b + 24..b + 32].copy_from_slice(&paddr.to_le_bytes());
            out[b + 32..b + 40].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
            out[b + 40..b + 48].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
            offset += bytes.len() as u64;
        }
        for (_, bytes) in segs {
            out.extend_from_slice(bytes);
        }
        out
    }

    #[test]
    fn flat_loads_at_address() {
        let mem = ram();
        let l = load_flat(&mem, &[0xf4, 0x90], 0x8000).unwrap();
        assert_eq!((l.entry, l.end), (0x8000, 0x8002));
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x8000)).unwrap(), 0xf4);
    }

    #[test]
    fn flat_rejects_oversize_reserved_and_empty() {
        let mem = ram();
        assert!(matches!(
            load_flat(&mem, &vec![0; 0x40000], 0x8000),
            Err(LoadError::TooLarge { .. })
        ));
        assert_eq!(
            load_flat(&mem, &[1], 0x1000),
            Err(LoadError::Reserved { addr: 0x1000 })
        );
        assert_eq!(load_flat(&mem, &[], 0x8000), Err(LoadError::Empty));
        assert!(load_flat(&mem, &[1], u64::MAX).is_err());
    }

    #[test]
    fn elf_loads_segments_and_entry() {
        let mem = ram();
        let img = elf(0x9000, &[(0x9000, &[1, 2, 3]), (0xa000, &[4])]);
        let l = load_elf(&mem, &img).unwrap();
        assert_eq!(l.entry, 0x9000);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x9002)).unwrap(), 3);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0xa000)).unwrap(), 4);
    }

    #[test]
    fn elf_rejects_overlap_bad_headers_and_truncation() {
        let mem = ram();
        let img = elf(0x9000, &[(0x9000, &[1, 2, 3]), (0x9002, &[4])]);
        assert_eq!(load_elf(&mem, &img), Err(LoadError::Overlap { a: 0, b: 1 }));
        let mut bad = elf(0x9000, &[(0x9000, &[1])]);
        bad[4] = 1;
        assert!(matches!(load_elf(&mem, &bad), Err(LoadError::BadElf(_))));
        let mut arm = elf(0x9000, &[(0x9000, &[1])]);
        arm[18] = 183;
        assert!(matches!(load_elf(&mem, &arm), Err(LoadError::BadElf(_))));
        let img = elf(0x9000, &[(0x9000, &[1, 2, 3])]);
        assert!(load_elf(&mem, &img[..img.len() - 2]).is_err());
        assert!(load_elf(&mem, &img[..40]).is_err());
        // A segment that would land in the reserved area or past RAM.
        assert!(load_elf(&mem, &elf(0x100, &[(0x100, &[1])])).is_err());
        assert!(load_elf(&mem, &elf(0x100, &[(0x3ffff, &[1, 2])])).is_err());
    }

    proptest::proptest! {
        #[test]
        fn elf_parser_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let mem = ram();
            let mut img = bytes.clone();
            if img.len() >= 4 { img[..4].copy_from_slice(b"\x7fELF"); }
            let _ = load_elf(&mem, &img);
            let _ = load_elf(&mem, &bytes);
        }
    }
}
