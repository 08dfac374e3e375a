//! Just enough ELF64 to find sections by name and to translate the kernel's
//! link-time virtual addresses into offsets in the file.
//!
//! We parse by hand rather than pulling in an ELF crate: a vmlinux needs
//! only the file header, the program headers and the section headers, and
//! every read here is bounds-checked so that a hostile image gives an error.

use crate::ProfileError;

/// `PT_LOAD`: a segment that is mapped at `p_vaddr`.
const PT_LOAD: u32 = 1;
/// `SHT_NOBITS`: a section (`.bss`) that takes no room in the file.
const SHT_NOBITS: u32 = 8;
/// `SHF_ALLOC`: a section that occupies memory at run time.
const SHF_ALLOC: u64 = 2;
/// `SHN_XINDEX`: the section-name table index lives in section 0's `sh_link`.
const SHN_XINDEX: u16 = 0xffff;

const EHDR_SIZE: usize = 64;
const PHDR_SIZE: usize = 56;
const SHDR_SIZE: usize = 64;

/// A stretch of the file that is mapped at a virtual address.
#[derive(Debug, Clone, Copy)]
struct Region {
    vaddr: u64,
    offset: u64,
    size: u64,
}

/// One section header, with its name resolved.
#[derive(Debug, Clone)]
pub(crate) struct Section<'a> {
    pub(crate) name: &'a [u8],
    pub(crate) kind: u32,
    pub(crate) offset: u64,
    pub(crate) size: u64,
}

/// The parsed headers of an ELF64 little-endian image.
#[derive(Debug)]
pub(crate) struct Elf<'a> {
    image: &'a [u8],
    /// Where virtual addresses are backed by file bytes: the `PT_LOAD`
    /// segments, or the allocated sections when there are no segments.
    regions: Vec<Region>,
    sections: Vec<Section<'a>>,
}

fn read_u16(image: &[u8], at: usize) -> Option<u16> {
    let bytes = image.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([bytes[0], bytes[1]]))
}

fn read_u32(image: &[u8], at: usize) -> Option<u32> {
    let bytes = image.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

fn read_u64(image: &[u8], at: usize) -> Option<u64> {
    let bytes = image.get(at..at.checked_add(8)?)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

/// The `count` fixed-size headers at `offset`, or a truncation error.
fn table<'a>(
    image: &'a [u8],
    offset: u64,
    count: usize,
    size: usize,
    what: &'static str,
) -> Result<&'a [u8], ProfileError> {
    let truncated = ProfileError::Truncated { what, offset };
    let start = usize::try_from(offset).map_err(|_| truncated)?;
    let len = count.checked_mul(size);
    let end = len.and_then(|len| start.checked_add(len));
    end.and_then(|end| image.get(start..end))
        .ok_or(ProfileError::Truncated { what, offset })
}

impl<'a> Elf<'a> {
    /// Parses the file header, the program headers and the section headers.
    pub(crate) fn parse(image: &'a [u8]) -> Result<Self, ProfileError> {
        if image.len() < 4 || image[..4] != *b"\x7fELF" {
            return Err(ProfileError::NotElf);
        }
        let header = table(image, 0, 1, EHDR_SIZE, "the ELF header")?;
        // EI_CLASS 2 = 64-bit, EI_DATA 1 = little-endian: the only kind of
        // kernel we introspect (x86-64).
        if header[4] != 2 || header[5] != 1 {
            return Err(ProfileError::UnsupportedElf);
        }
        let field16 = |at| read_u16(header, at).unwrap_or(0);
        let phoff = read_u64(header, 0x20).unwrap_or(0);
        let shoff = read_u64(header, 0x28).unwrap_or(0);
        let phentsize = usize::from(field16(0x36));
        let phnum = usize::from(field16(0x38));
        let shentsize = usize::from(field16(0x3a));
        let mut shnum = usize::from(field16(0x3c));
        let mut shstrndx = field16(0x3e);

        let mut regions = Vec::new();
        if phnum > 0 {
            if phentsize < PHDR_SIZE {
                return Err(ProfileError::Truncated {
                    what: "a program header",
                    offset: phoff,
                });
            }
            let phdrs = table(image, phoff, phnum, phentsize, "the program headers")?;
            for phdr in phdrs.chunks_exact(phentsize) {
                let p_type = read_u32(phdr, 0).unwrap_or(0);
                let offset = read_u64(phdr, 8).unwrap_or(0);
                let vaddr = read_u64(phdr, 16).unwrap_or(0);
                let size = read_u64(phdr, 32).unwrap_or(0);
                if p_type == PT_LOAD && size > 0 {
                    regions.push(Region {
                        vaddr,
                        offset,
                        size,
                    });
                }
            }
        }

        let mut sections = Vec::new();
        if shoff != 0 {
            if shentsize < SHDR_SIZE {
                return Err(ProfileError::Truncated {
                    what: "a section header",
                    offset: shoff,
                });
            }
            // With 0xff00 or more sections the real count and the name
            // table's index are kept in section 0 (extended numbering).
            let first = table(image, shoff, 1, shentsize, "the section headers")?;
            if shnum == 0 {
                shnum = usize::try_from(read_u64(first, 32).unwrap_or(0)).unwrap_or(usize::MAX);
            }
            if shstrndx == SHN_XINDEX {
                shstrndx = u16::try_from(read_u32(first, 40).unwrap_or(0)).unwrap_or(0);
            }
            let shdrs = table(image, shoff, shnum, shentsize, "the section headers")?;
            let raw: Vec<(u32, u32, u64, u64, u64, u64)> = shdrs
                .chunks_exact(shentsize)
                .map(|shdr| {
                    (
                        read_u32(shdr, 0).unwrap_or(0),
                        read_u32(shdr, 4).unwrap_or(0),
                        read_u64(shdr, 8).unwrap_or(0),
                        read_u64(shdr, 16).unwrap_or(0),
                        read_u64(shdr, 24).unwrap_or(0),
                        read_u64(shdr, 32).unwrap_or(0),
                    )
                })
                .collect();
            // A missing or broken name table leaves names empty rather than
            // failing: the addresses are still useful without names.
            let names: &[u8] = raw
                .get(usize::from(shstrndx))
                .and_then(|&(_, _, _, _, offset, size)| {
                    let start = usize::try_from(offset).ok()?;
                    let end = start.checked_add(usize::try_from(size).ok()?)?;
                    image.get(start..end)
                })
                .unwrap_or(&[]);
            for &(name, kind, flags, addr, offset, size) in &raw {
                let name = usize::try_from(name)
                    .ok()
                    .and_then(|at| names.get(at..))
                    .map(|rest| &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())])
                    .unwrap_or(&[]);
                sections.push(Section {
                    name,
                    kind,
                    offset,
                    size,
                });
                // Relocatable or stripped-down images without segments: fall
                // back to the allocated sections for address translation.
                if phnum == 0 && flags & SHF_ALLOC != 0 && kind != SHT_NOBITS && size > 0 {
                    regions.push(Region {
                        vaddr: addr,
                        offset,
                        size,
                    });
                }
            }
        }

        Ok(Elf {
            image,
            regions,
            sections,
        })
    }

    /// The bytes of the first section called `name`, or why they are not
    /// there (`Ok(None)`: no such section).
    pub(crate) fn section_bytes(&self, name: &str) -> Result<Option<&'a [u8]>, ProfileError> {
        let Some(section) = self.sections.iter().find(|s| s.name == name.as_bytes()) else {
            return Ok(None);
        };
        if section.kind == SHT_NOBITS {
            return Ok(Some(&[]));
        }
        let bytes = table(
            self.image,
            section.offset,
            1,
            usize::try_from(section.size).unwrap_or(usize::MAX),
            "a section's contents",
        )?;
        Ok(Some(bytes))
    }

    /// The file offset backing `vaddr`, and how many bytes from there on
    /// belong to the same mapped region (and are inside the file).
    pub(crate) fn map(&self, vaddr: u64) -> Option<(usize, usize)> {
        self.regions.iter().find_map(|r| {
            let delta = vaddr.checked_sub(r.vaddr)?;
            if delta >= r.size {
                return None;
            }
            let offset = usize::try_from(r.offset.checked_add(delta)?).ok()?;
            let region_left = usize::try_from(r.size - delta).unwrap_or(usize::MAX);
            let file_left = self.image.len().checked_sub(offset)?;
            let left = region_left.min(file_left);
            (left > 0).then_some((offset, left))
        })
    }

    /// The virtual address at which file offset `offset` is mapped.
    pub(crate) fn vaddr_of(&self, offset: usize) -> Option<u64> {
        let offset = u64::try_from(offset).ok()?;
        self.regions.iter().find_map(|r| {
            let delta = offset.checked_sub(r.offset)?;
            (delta < r.size).then(|| r.vaddr.wrapping_add(delta))
        })
    }
}

/// The file offset at which the image holds the bytes of virtual address
/// `vaddr` (a link-time address, as in `System.map`), or `None` when the
/// image is not a 64-bit little-endian ELF or nothing in the file backs the
/// address (`.bss`, or an address outside every segment).
///
/// Translation goes through the `PT_LOAD` program headers, or through the
/// allocated sections when the image has no program headers.
pub fn vaddr_to_file_offset(image: &[u8], vaddr: u64) -> Option<usize> {
    Elf::parse(image).ok()?.map(vaddr).map(|(offset, _)| offset)
}

/// The little-endian `u64` stored at virtual address `vaddr` in the image,
/// for instance one entry of `sys_call_table`; `None` when the eight bytes
/// are not all backed by the same mapped part of the file.
pub fn read_u64_at_vaddr(image: &[u8], vaddr: u64) -> Option<u64> {
    let (offset, left) = Elf::parse(image).ok()?.map(vaddr)?;
    if left < 8 {
        return None;
    }
    read_u64(image, offset)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a minimal ELF64 LE: one `PT_LOAD` segment mapping `payload` at
    /// `vaddr`, plus the named sections (which all point into the payload:
    /// `(name, offset within payload, size)`).
    pub(crate) fn tiny_elf(
        vaddr: u64,
        payload: &[u8],
        sections: &[(&str, usize, usize)],
    ) -> Vec<u8> {
        let payload_off = EHDR_SIZE + PHDR_SIZE;
        let mut shstrtab = vec![0u8];
        let mut name_offsets = Vec::new();
        for (name, _, _) in sections {
            name_offsets.push(shstrtab.len() as u32);
            shstrtab.extend_from_slice(name.as_bytes());
            shstrtab.push(0);
        }
        let shstrtab_off = payload_off + payload.len();
        let shoff = shstrtab_off + shstrtab.len();
        let shnum = sections.len() + 2; // null section + sections + .shstrtab

        let mut out = vec![0u8; EHDR_SIZE];
        out[..4].copy_from_slice(b"\x7fELF");
        out[4] = 2;
        out[5] = 1;
        out[6] = 1;
        out[0x10..0x12].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        out[0x12..0x14].copy_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        out[0x20..0x28].copy_from_slice(&(EHDR_SIZE as u64).to_le_bytes());
        out[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        out[0x34..0x36].copy_from_slice(&(EHDR_SIZE as u16).to_le_bytes());
        out[0x36..0x38].copy_from_slice(&(PHDR_SIZE as u16).to_le_bytes());
        out[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        out[0x3a..0x3c].copy_from_slice(&(SHDR_SIZE as u16).to_le_bytes());
        out[0x3c..0x3e].copy_from_slice(&(shnum as u16).to_le_bytes());
        out[0x3e..0x40].copy_from_slice(&((shnum - 1) as u16).to_le_bytes());

        let mut phdr = vec![0u8; PHDR_SIZE];
        phdr[0..4].copy_from_slice(&PT_LOAD.to_le_bytes());
        phdr[8..16].copy_from_slice(&(payload_off as u64).to_le_bytes());
        phdr[16..24].copy_from_slice(&vaddr.to_le_bytes());
        phdr[32..40].copy_from_slice(&(payload.len() as u64).to_le_bytes());
        phdr[40..48].copy_from_slice(&(payload.len() as u64).to_le_bytes());
        out.extend_from_slice(&phdr);
        out.extend_from_slice(payload);
        out.extend_from_slice(&shstrtab);

        let shdr = |name: u32, kind: u32, addr: u64, offset: usize, size: usize| {
            let mut s = vec![0u8; SHDR_SIZE];
            s[0..4].copy_from_slice(&name.to_le_bytes());
            s[4..8].copy_from_slice(&kind.to_le_bytes());
            s[8..16].copy_from_slice(&SHF_ALLOC.to_le_bytes());
            s[16..24].copy_from_slice(&addr.to_le_bytes());
            s[24..32].copy_from_slice(&(offset as u64).to_le_bytes());
            s[32..40].copy_from_slice(&(size as u64).to_le_bytes());
            s
        };
        out.extend_from_slice(&[0u8; SHDR_SIZE]);
        for (i, (_, at, size)) in sections.iter().enumerate() {
            out.extend(shdr(
                name_offsets[i],
                1,
                vaddr + *at as u64,
                payload_off + at,
                *size,
            ));
        }
        out.extend(shdr(0, 3, 0, shstrtab_off, shstrtab.len()));
        out
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        assert!(matches!(Elf::parse(&[]), Err(ProfileError::NotElf)));
        assert!(matches!(
            Elf::parse(b"MZ\x90\x00"),
            Err(ProfileError::NotElf)
        ));
        assert!(matches!(
            Elf::parse(b"\x7fELF\x01\x01\x01"),
            Err(ProfileError::Truncated { .. })
        ));
        let mut elf32 = tiny_elf(0x1000, b"abc", &[]);
        elf32[4] = 1;
        assert!(matches!(
            Elf::parse(&elf32),
            Err(ProfileError::UnsupportedElf)
        ));
    }

    #[test]
    fn every_truncation_is_an_error_or_a_smaller_view() {
        let elf = tiny_elf(0x1000, &[7u8; 64], &[(".data", 0, 64)]);
        for len in 0..elf.len() {
            // Any prefix either fails cleanly or parses; it must not panic.
            if let Ok(parsed) = Elf::parse(&elf[..len]) {
                let _ = parsed.section_bytes(".data");
                let _ = parsed.map(0x1000);
            }
        }
        assert!(matches!(
            Elf::parse(&elf[..100]),
            Err(ProfileError::Truncated { .. })
        ));
    }

    #[test]
    fn maps_addresses_and_finds_sections() {
        let payload: Vec<u8> = (0..32u8).collect();
        let elf = tiny_elf(0xffff_ffff_8100_0000, &payload, &[(".rodata", 8, 16)]);
        let parsed = Elf::parse(&elf).unwrap();
        assert_eq!(
            parsed.section_bytes(".rodata").unwrap(),
            Some(&payload[8..24])
        );
        assert_eq!(parsed.section_bytes(".BTF").unwrap(), None);

        let at = vaddr_to_file_offset(&elf, 0xffff_ffff_8100_0004).unwrap();
        assert_eq!(elf[at], 4);
        assert_eq!(parsed.vaddr_of(at), Some(0xffff_ffff_8100_0004));
        assert_eq!(vaddr_to_file_offset(&elf, 0xffff_ffff_8100_0020), None);
        assert_eq!(vaddr_to_file_offset(&elf, 0x1000), None);
        assert_eq!(
            read_u64_at_vaddr(&elf, 0xffff_ffff_8100_0008),
            Some(u64::from_le_bytes([8, 9, 10, 11, 12, 13, 14, 15]))
        );
        // The last eight bytes fit, one further does not.
        assert!(read_u64_at_vaddr(&elf, 0xffff_ffff_8100_0018).is_some());
        assert_eq!(read_u64_at_vaddr(&elf, 0xffff_ffff_8100_0019), None);
        assert_eq!(read_u64_at_vaddr(b"not an elf", 0), None);
    }
}
