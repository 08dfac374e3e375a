//! PVH images in either ELF class. The PVH boot ABI starts a kernel in
//! 32-bit protected mode at the address its `XEN_ELFNOTE_PHYS32_ENTRY`
//! note gives, with the image loaded at its segments' physical addresses;
//! it does not care whether the ELF container is 32- or 64-bit (Linux's
//! vmlinux is ELF64, small kernels and test guests built for QEMU's
//! microvm are often ELF32). linux-loader reads only ELF64, so wasmvisor
//! reads both itself: the header, the `PT_LOAD` segments and the notes in
//! `PT_NOTE` segments, and says in words what is wrong with an image it
//! refuses.
//!
//! Parsing ([`parse`]) is pure and checks everything before [`load`]
//! writes a byte of guest RAM.

use thiserror::Error;
use vm_memory::{Bytes, GuestAddress};
use wasmvisor_exit::GuestRam;

/// `XEN_ELFNOTE_PHYS32_ENTRY`, in a note named "Xen".
const PHYS32_ENTRY: u32 = 18;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const EM_386: u16 = 3;
const EM_X86_64: u16 = 62;
/// The first MiB holds wasmvisor's boot data (GDT, page tables, the
/// start_info, the command line, ACPI); a kernel is loaded above it.
pub const LOAD_MIN: u64 = 0x10_0000;
/// Segments one image may have; real kernels have a handful.
const MAX_SEGMENTS: usize = 64;

/// Why an image cannot be booted through PVH.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PvhError {
    #[error("it is not an ELF file")]
    NotElf,
    #[error("its ELF header is cut short ({0} bytes)")]
    Truncated(usize),
    #[error("it is neither a 32-bit nor a 64-bit ELF (class byte {0})")]
    Class(u8),
    #[error("it is a big-endian ELF; x86 images are little-endian")]
    BigEndian,
    #[error(
        "it is built for another processor (ELF machine {0}); PVH needs x86 (3) or x86-64 (62)"
    )]
    Machine(u16),
    #[error("its program headers are {got} bytes each; a {class}-bit ELF has {want}")]
    PhentSize { class: u8, got: u16, want: u16 },
    #[error("its program header table lies outside the file")]
    PhdrsOutside,
    #[error("it has {0} program headers; wasmvisor reads at most {MAX_SEGMENTS}")]
    TooManySegments(usize),
    #[error("segment {index}'s file bytes lie outside the file")]
    SegmentOutside { index: usize },
    #[error("segment {index} is larger in the file ({filesz:#x}) than in memory ({memsz:#x})")]
    SegmentSizes {
        index: usize,
        filesz: u64,
        memsz: u64,
    },
    #[error("segment {index} at {paddr:#x} is below 1 MiB, where wasmvisor puts the boot data; link the image at 0x100000 or above")]
    SegmentLow { index: usize, paddr: u64 },
    #[error("segment {index} ({paddr:#x}+{memsz:#x}) does not fit in {ram:#x} bytes of guest RAM; give the VM more --mem")]
    SegmentBeyondRam {
        index: usize,
        paddr: u64,
        memsz: u64,
        ram: u64,
    },
    #[error("it has no loadable (PT_LOAD) segment")]
    NoSegments,
    #[error("it has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); build it with CONFIG_PVH=y, or boot a bzImage")]
    NoEntry,
    #[error("its PVH entry note is malformed: {0}")]
    BadNote(&'static str),
    #[error("its PVH entry {0:#x} is not a 32-bit address")]
    EntryAbove4G(u64),
    #[error("its PVH entry {entry:#x} lies in no loaded segment")]
    EntryOutside { entry: u64 },
}

/// One segment to load: `data` at `paddr`, then zeros up to `memsz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment<'a> {
    pub paddr: u64,
    pub data: &'a [u8],
    pub memsz: u64,
}

/// A PVH image, checked against guest RAM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PvhImage<'a> {
    /// 32 or 64.
    pub class: u8,
    /// The 32-bit entry point.
    pub entry: u32,
    pub segments: Vec<Segment<'a>>,
    /// The end of the highest segment.
    pub end: u64,
}

/// Little-endian reads at an offset, `None` past the end.
fn u16_at(b: &[u8], at: u64) -> Option<u16> {
    let at = usize::try_from(at).ok()?;
    Some(u16::from_le_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}
fn u32_at(b: &[u8], at: u64) -> Option<u32> {
    let at = usize::try_from(at).ok()?;
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}
fn u64_at(b: &[u8], at: u64) -> Option<u64> {
    let at = usize::try_from(at).ok()?;
    Some(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// A program header, whatever the class.
struct Phdr {
    p_type: u32,
    offset: u64,
    paddr: u64,
    filesz: u64,
    memsz: u64,
}

/// `len` bytes of `image` at `offset`, if they are all there.
fn slice(image: &[u8], offset: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    image.get(start..end)
}

/// Reads an image for a VM with `ram` bytes of RAM at GPA 0.
pub fn parse(image: &[u8], ram: u64) -> Result<PvhImage<'_>, PvhError> {
    if image.len() < 4 || image[..4] != *b"\x7fELF" {
        return Err(PvhError::NotElf);
    }
    if image.len() < 6 {
        return Err(PvhError::Truncated(image.len()));
    }
    let class = match image[4] {
        1 => 32u8,
        2 => 64,
        other => return Err(PvhError::Class(other)),
    };
    if image[5] != 1 {
        return Err(PvhError::BigEndian);
    }
    let header = if class == 32 { 52 } else { 64 };
    if image.len() < header {
        return Err(PvhError::Truncated(image.len()));
    }
    let machine = u16_at(image, 18).unwrap_or(0);
    if machine != EM_386 && machine != EM_X86_64 {
        return Err(PvhError::Machine(machine));
    }
    let (phoff, phentsize, phnum, want) = if class == 32 {
        (
            u64::from(u32_at(image, 28).unwrap_or(0)),
            u16_at(image, 42).unwrap_or(0),
            u16_at(image, 44).unwrap_or(0),
            32,
        )
    } else {
        (
            u64_at(image, 32).unwrap_or(0),
            u16_at(image, 54).unwrap_or(0),
            u16_at(image, 56).unwrap_or(0),
            56,
        )
    };
    let phnum = usize::from(phnum);
    if phnum > MAX_SEGMENTS {
        return Err(PvhError::TooManySegments(phnum));
    }
    if phnum > 0 && phentsize != want {
        return Err(PvhError::PhentSize {
            class,
            got: phentsize,
            want,
        });
    }
    let table =
        slice(image, phoff, u64::from(want) * phnum as u64).ok_or(PvhError::PhdrsOutside)?;
    let phdrs = table.chunks_exact(usize::from(want)).map(|h| {
        let r32 = |at| u64::from(u32_at(h, at).unwrap_or(0));
        let r64 = |at| u64_at(h, at).unwrap_or(0);
        if class == 32 {
            Phdr {
                p_type: r32(0) as u32,
                offset: r32(4),
                paddr: r32(12),
                filesz: r32(16),
                memsz: r32(20),
            }
        } else {
            Phdr {
                p_type: r32(0) as u32,
                offset: r64(8),
                paddr: r64(24),
                filesz: r64(32),
                memsz: r64(40),
            }
        }
    });

    let mut segments = Vec::new();
    let mut entry = None;
    for (index, ph) in phdrs.enumerate() {
        match ph.p_type {
            PT_LOAD => {
                let data =
                    slice(image, ph.offset, ph.filesz).ok_or(PvhError::SegmentOutside { index })?;
                if ph.filesz > ph.memsz {
                    return Err(PvhError::SegmentSizes {
                        index,
                        filesz: ph.filesz,
                        memsz: ph.memsz,
                    });
                }
                if ph.memsz == 0 {
                    continue;
                }
                if ph.paddr < LOAD_MIN {
                    return Err(PvhError::SegmentLow {
                        index,
                        paddr: ph.paddr,
                    });
                }
                if ph.paddr.checked_add(ph.memsz).is_none_or(|end| end > ram) {
                    return Err(PvhError::SegmentBeyondRam {
                        index,
                        paddr: ph.paddr,
                        memsz: ph.memsz,
                        ram,
                    });
                }
                segments.push(Segment {
                    paddr: ph.paddr,
                    data,
                    memsz: ph.memsz,
                });
            }
            PT_NOTE => {
                let notes =
                    slice(image, ph.offset, ph.filesz).ok_or(PvhError::SegmentOutside { index })?;
                if let Some(e) = find_entry(notes)? {
                    entry = Some(e);
                }
            }
            _ => {}
        }
    }
    if segments.is_empty() {
        return Err(PvhError::NoSegments);
    }
    let entry = entry.ok_or(PvhError::NoEntry)?;
    let entry32 = u32::try_from(entry).map_err(|_| PvhError::EntryAbove4G(entry))?;
    if !segments
        .iter()
        .any(|s| (s.paddr..s.paddr + s.memsz).contains(&entry))
    {
        return Err(PvhError::EntryOutside { entry });
    }
    let end = segments
        .iter()
        .map(|s| s.paddr + s.memsz)
        .max()
        .unwrap_or(0);
    Ok(PvhImage {
        class,
        entry: entry32,
        segments,
        end,
    })
}

/// The PHYS32_ENTRY address in one PT_NOTE segment's notes, if there.
/// Notes are 4-byte aligned in both classes on x86.
fn find_entry(mut notes: &[u8]) -> Result<Option<u64>, PvhError> {
    let align = |n: u32| (u64::from(n) + 3) & !3;
    while notes.len() >= 12 {
        let namesz = u32_at(notes, 0).unwrap_or(0);
        let descsz = u32_at(notes, 4).unwrap_or(0);
        let kind = u32_at(notes, 8).unwrap_or(0);
        let name = slice(notes, 12, u64::from(namesz));
        let desc_at = 12 + align(namesz);
        let desc = slice(notes, desc_at, u64::from(descsz));
        let (Some(name), Some(desc)) = (name, desc) else {
            // A cut note ends the list; only ours must be whole.
            break;
        };
        if name.strip_suffix(b"\0").unwrap_or(name) == b"Xen" && kind == PHYS32_ENTRY {
            return match desc.len() {
                4 => Ok(Some(u64::from(u32_at(desc, 0).unwrap_or(0)))),
                8 => Ok(Some(u64_at(desc, 0).unwrap_or(0))),
                _ => Err(PvhError::BadNote("its address is neither 4 nor 8 bytes")),
            };
        }
        let next = usize::try_from(desc_at + align(descsz)).unwrap_or(usize::MAX);
        notes = notes.get(next..).unwrap_or_default();
    }
    Ok(None)
}

/// Writes a parsed image into guest RAM: each segment's bytes, then zeros.
pub fn load(mem: &GuestRam, image: &PvhImage<'_>) -> Result<(), String> {
    for s in &image.segments {
        mem.write_slice(s.data, GuestAddress(s.paddr))
            .map_err(|e| e.to_string())?;
        let zeros = s.memsz - s.data.len() as u64;
        if zeros > 0 {
            let at = s.paddr + s.data.len() as u64;
            // In chunks, so a large .bss costs no large allocation.
            let chunk = vec![0u8; zeros.min(1 << 20) as usize];
            let mut done = 0;
            while done < zeros {
                let n = (zeros - done).min(chunk.len() as u64);
                mem.write_slice(&chunk[..n as usize], GuestAddress(at + done))
                    .map_err(|e| e.to_string())?;
                done += n;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal PVH image of `class` with one segment of `code` at
    /// `paddr`, and a PT_NOTE with the entry note (`entry_len` bytes).
    pub(crate) fn image(
        class: u8,
        paddr: u64,
        code: &[u8],
        entry: u64,
        entry_len: usize,
    ) -> Vec<u8> {
        let (ehsize, phsize) = if class == 32 {
            (52usize, 32usize)
        } else {
            (64, 56)
        };
        let mut note = Vec::new();
        note.extend_from_slice(&4u32.to_le_bytes());
        note.extend_from_slice(&(entry_len as u32).to_le_bytes());
        note.extend_from_slice(&PHYS32_ENTRY.to_le_bytes());
        note.extend_from_slice(b"Xen\0");
        note.extend_from_slice(&entry.to_le_bytes()[..entry_len]);
        let phoff = ehsize;
        let note_at = phoff + 2 * phsize;
        let code_at = note_at + note.len();
        let mut out = vec![0u8; code_at];
        out[..4].copy_from_slice(b"\x7fELF");
        out[4] = if class == 32 { 1 } else { 2 };
        out[5] = 1;
        out[6] = 1;
        let machine: u16 = if class == 32 { EM_386 } else { EM_X86_64 };
        out[18..20].copy_from_slice(&machine.to_le_bytes());
        let phdr = |out: &mut Vec<u8>, i: usize, t: u32, off: usize, pa: u64, len: usize| {
            let b = phoff + i * phsize;
            if class == 32 {
                out[b..b + 4].copy_from_slice(&t.to_le_bytes());
                out[b + 4..b + 8].copy_from_slice(&(off as u32).to_le_bytes());
                out[b + 12..b + 16].copy_from_slice(&(pa as u32).to_le_bytes());
                out[b + 16..b + 20].copy_from_slice(&(len as u32).to_le_bytes());
                out[b + 20..b + 24].copy_from_slice(&(len as u32 + 0x10).to_le_bytes());
            } else {
                out[b..b + 4].copy_from_slice(&t.to_le_bytes());
                out[b + 8..b + 16].copy_from_slice(&(off as u64).to_le_bytes());
                out[b + 24..b + 32].copy_from_slice(&pa.to_le_bytes());
                out[b + 32..b + 40].copy_from_slice(&(len as u64).to_le_bytes());
                out[b + 40..b + 48].copy_from_slice(&(len as u64 + 0x10).to_le_bytes());
            }
        };
        if class == 32 {
            out[28..32].copy_from_slice(&(phoff as u32).to_le_bytes());
            out[42..44].copy_from_slice(&(phsize as u16).to_le_bytes());
            out[44..46].copy_from_slice(&2u16.to_le_bytes());
        } else {
            out[32..40].copy_from_slice(&(phoff as u64).to_le_bytes());
            out[54..56].copy_from_slice(&(phsize as u16).to_le_bytes());
            out[56..58].copy_from_slice(&2u16.to_le_bytes());
        }
        phdr(&mut out, 0, PT_NOTE, note_at, 0, note.len());
        phdr(&mut out, 1, PT_LOAD, code_at, paddr, code.len());
        out[note_at..code_at].copy_from_slice(&note);
        out.extend_from_slice(code);
        out
    }

    #[test]
    fn both_classes_give_the_entry_and_segments() {
        for (class, len) in [(32, 4), (64, 8), (64, 4)] {
            let img = image(class, 0x20_0000, b"\xf4\xf4", 0x20_0001, len);
            let p = parse(&img, 64 << 20).unwrap();
            assert_eq!((p.class, p.entry), (class, 0x20_0001));
            assert_eq!(p.segments.len(), 1);
            assert_eq!(p.segments[0].data, b"\xf4\xf4");
            assert_eq!(
                (p.segments[0].paddr, p.segments[0].memsz),
                (0x20_0000, 0x12)
            );
            assert_eq!(p.end, 0x20_0012);
        }
    }

    #[test]
    fn load_writes_the_bytes_and_zeros_the_rest() {
        let mem = GuestRam::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        mem.write_slice(&[0xaa; 0x20], GuestAddress(0x20_0000))
            .unwrap();
        let img = image(32, 0x20_0000, b"\x90\xf4", 0x20_0000, 4);
        load(&mem, &parse(&img, 4 << 20).unwrap()).unwrap();
        let mut got = [0u8; 0x14];
        mem.read_slice(&mut got, GuestAddress(0x20_0000)).unwrap();
        assert_eq!(&got[..2], b"\x90\xf4");
        assert!(got[2..0x12].iter().all(|&b| b == 0), "{got:x?}");
        assert_eq!(&got[0x12..], &[0xaa, 0xaa], "beyond memsz untouched");
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        let ram = 64 << 20;
        let good = image(32, 0x20_0000, b"\xf4", 0x20_0000, 4);
        assert_eq!(parse(b"MZ\0\0", ram), Err(PvhError::NotElf));
        assert_eq!(parse(&good[..40], ram), Err(PvhError::Truncated(40)));
        let mut bad = good.clone();
        bad[4] = 3;
        assert_eq!(parse(&bad, ram), Err(PvhError::Class(3)));
        let mut bad = good.clone();
        bad[5] = 2;
        assert_eq!(parse(&bad, ram), Err(PvhError::BigEndian));
        let mut bad = good.clone();
        bad[18] = 40; // ARM
        assert_eq!(parse(&bad, ram), Err(PvhError::Machine(40)));
        let mut bad = good.clone();
        bad[42] = 56;
        assert!(matches!(
            parse(&bad, ram),
            Err(PvhError::PhentSize {
                class: 32,
                got: 56,
                want: 32
            })
        ));
        let low = image(64, 0x8000, b"\xf4", 0x8000, 8);
        assert!(matches!(parse(&low, ram), Err(PvhError::SegmentLow { .. })));
        let high = image(64, 0x3ff_0000, &[0; 0x100], 0x3ff_0000, 8);
        assert!(matches!(
            parse(&high, 0x200_0000),
            Err(PvhError::SegmentBeyondRam { .. })
        ));
        let outside = image(32, 0x20_0000, b"\xf4", 0x30_0000, 4);
        assert_eq!(
            parse(&outside, ram),
            Err(PvhError::EntryOutside { entry: 0x30_0000 })
        );
        let far = image(64, 0x20_0000, b"\xf4", 0x1_0020_0000, 8);
        assert_eq!(parse(&far, ram), Err(PvhError::EntryAbove4G(0x1_0020_0000)));
        let bad_note = image(32, 0x20_0000, b"\xf4", 0x20_0000, 2);
        assert!(matches!(parse(&bad_note, ram), Err(PvhError::BadNote(_))));
        let mut no_note = good.clone();
        no_note[52 + 2 * 32 + 12] = b'Y'; // the note's name: "Yen"
        assert_eq!(parse(&no_note, ram), Err(PvhError::NoEntry));
        // Every prefix of a good image is refused without a panic.
        for n in 0..good.len() {
            assert!(parse(&good[..n], ram).is_err(), "prefix {n}");
        }
    }
}
