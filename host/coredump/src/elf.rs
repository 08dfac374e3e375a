//! The ELF core writer.
//!
//! File layout: the ELF header, the program headers (`PT_NOTE` first, then
//! the `PT_LOAD`s of virtual mappings, then one `PT_LOAD` per RAM region
//! by ascending address), the notes, zeros up to the next page boundary,
//! and the RAM regions' bytes one after another, each starting on a page
//! boundary.

use std::io::{self, Write};

use crate::note::{self, Note};
use crate::{CoreError, CoreLayout, MemoryRegion};

/// How many bytes of guest memory [`write_core`] asks its read function for
/// at a time (the last chunk of a region may be shorter).
pub const CHUNK_SIZE: usize = 1 << 20;

/// ELF header size.
pub(crate) const EHDR_SIZE: u64 = 64;
/// ELF64 program header size.
pub(crate) const PHDR_SIZE: u64 = 56;
/// `PT_LOAD`.
pub(crate) const PT_LOAD: u32 = 1;
/// `PT_NOTE`.
pub(crate) const PT_NOTE: u32 = 4;
/// `ET_CORE`.
pub(crate) const ET_CORE: u16 = 4;
/// `EM_X86_64`.
pub(crate) const EM_X86_64: u16 = 62;
/// `e_phnum` value meaning "the count is elsewhere" (`PN_XNUM`).
pub(crate) const PN_XNUM: usize = 0xffff;
/// Alignment of RAM in the file.
const PAGE_SIZE: u64 = 4096;
/// `PF_X | PF_W | PF_R`: RAM may hold anything.
const PF_RWX: u32 = 7;

/// One program header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProgramHeader {
    pub kind: u32,
    pub flags: u32,
    pub offset: u64,
    pub vaddr: u64,
    pub paddr: u64,
    pub filesz: u64,
    pub memsz: u64,
    pub align: u64,
}

impl ProgramHeader {
    fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.kind.to_le_bytes());
        out.extend_from_slice(&self.flags.to_le_bytes());
        for value in [
            self.offset,
            self.vaddr,
            self.paddr,
            self.filesz,
            self.memsz,
            self.align,
        ] {
            out.extend_from_slice(&value.to_le_bytes());
        }
    }
}

/// A RAM region's place in the file, and the address its header gives it.
struct PlacedRegion {
    region: MemoryRegion,
    offset: u64,
    vaddr: Option<u64>,
}

/// The whole file but the RAM bytes: headers and notes, padded to where the
/// first region starts.
struct Plan {
    head: Vec<u8>,
    regions: Vec<PlacedRegion>,
    size: u64,
}

fn checked_end(what: &'static str, addr: u64, len: u64) -> Result<u64, CoreError> {
    addr.checked_add(len)
        .filter(|_| len > 0)
        .ok_or(CoreError::InvalidRange { what, addr, len })
}

fn plan(layout: &CoreLayout) -> Result<Plan, CoreError> {
    // RAM, sorted and checked.
    let mut ram = layout.ram.clone();
    ram.sort_by_key(|region| region.gpa);
    let mut previous_end = 0;
    for (i, region) in ram.iter().enumerate() {
        let end = checked_end("RAM region", region.gpa, region.len)?;
        if i > 0 && region.gpa < previous_end {
            return Err(CoreError::OverlappingRam(region.gpa));
        }
        previous_end = end;
    }
    let mut regions: Vec<PlacedRegion> = ram
        .into_iter()
        .map(|region| PlacedRegion {
            region,
            offset: 0,
            vaddr: None,
        })
        .collect();

    // Mappings: each part over one region either names the region's
    // virtual address (if it covers it whole and no earlier mapping did)
    // or becomes an extra header. Offsets are filled in once known.
    struct Extra {
        region: usize,
        vaddr: u64,
        gpa: u64,
        len: u64,
    }
    let mut extras = Vec::new();
    for mapping in &layout.mappings {
        let end = checked_end("virtual mapping", mapping.gpa, mapping.len)?;
        checked_end("virtual mapping", mapping.vaddr, mapping.len)?;
        let mut mapped_any = false;
        for (index, placed) in regions.iter_mut().enumerate() {
            let region = placed.region;
            let start = mapping.gpa.max(region.gpa);
            let stop = end.min(region.gpa + region.len);
            if start >= stop {
                continue;
            }
            mapped_any = true;
            let vaddr = mapping.vaddr + (start - mapping.gpa);
            if start == region.gpa && stop == region.gpa + region.len && placed.vaddr.is_none() {
                placed.vaddr = Some(vaddr);
            } else {
                extras.push(Extra {
                    region: index,
                    vaddr,
                    gpa: start,
                    len: stop - start,
                });
            }
        }
        if !mapped_any {
            return Err(CoreError::MappingOutsideRam {
                vaddr: mapping.vaddr,
                gpa: mapping.gpa,
            });
        }
    }

    let notes: Vec<Note> = layout
        .cpus
        .iter()
        .map(|cpu| {
            Note::new(
                note::CORE_NAME,
                note::NT_PRSTATUS,
                cpu.to_prstatus().to_vec(),
            )
        })
        .chain(layout.vmcoreinfo.iter().map(|info| {
            Note::new(
                note::VMCOREINFO_NAME,
                note::VMCOREINFO_TYPE,
                info.as_str().as_bytes().to_vec(),
            )
        }))
        .collect();
    let notes = note::encode_notes(&notes);

    let phnum = 1 + extras.len() + regions.len();
    if phnum >= PN_XNUM {
        return Err(CoreError::TooManySegments(phnum));
    }
    let notes_offset = EHDR_SIZE + PHDR_SIZE * phnum as u64;
    let mut offset = (notes_offset + notes.len() as u64).next_multiple_of(PAGE_SIZE);
    for placed in &mut regions {
        placed.offset = offset;
        offset = (offset + placed.region.len).next_multiple_of(PAGE_SIZE);
    }
    let size = regions
        .last()
        .map_or(notes_offset + notes.len() as u64, |last| {
            last.offset + last.region.len
        });

    let mut headers = vec![ProgramHeader {
        kind: PT_NOTE,
        flags: 0,
        offset: notes_offset,
        vaddr: 0,
        paddr: 0,
        filesz: notes.len() as u64,
        memsz: notes.len() as u64,
        align: note::NOTE_ALIGN as u64,
    }];
    headers.extend(extras.iter().map(|extra| {
        let placed = &regions[extra.region];
        ProgramHeader {
            kind: PT_LOAD,
            flags: PF_RWX,
            offset: placed.offset + (extra.gpa - placed.region.gpa),
            vaddr: extra.vaddr,
            paddr: extra.gpa,
            filesz: extra.len,
            memsz: extra.len,
            align: 0,
        }
    }));
    headers.extend(regions.iter().map(|placed| ProgramHeader {
        kind: PT_LOAD,
        flags: PF_RWX,
        offset: placed.offset,
        vaddr: placed.vaddr.unwrap_or(placed.region.gpa),
        paddr: placed.region.gpa,
        filesz: placed.region.len,
        memsz: placed.region.len,
        align: 0,
    }));

    let mut head = Vec::with_capacity(regions.first().map_or(size, |first| first.offset) as usize);
    encode_elf_header(&mut head, phnum as u16);
    for header in &headers {
        header.encode_into(&mut head);
    }
    head.extend_from_slice(&notes);
    if let Some(first) = regions.first() {
        head.resize(first.offset as usize, 0);
    }
    Ok(Plan {
        head,
        regions,
        size,
    })
}

fn encode_elf_header(out: &mut Vec<u8>, phnum: u16) {
    // e_ident: magic, ELFCLASS64, ELFDATA2LSB, EV_CURRENT, ELFOSABI_NONE.
    out.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&ET_CORE.to_le_bytes());
    out.extend_from_slice(&EM_X86_64.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes()); // e_version
    out.extend_from_slice(&0u64.to_le_bytes()); // e_entry
    out.extend_from_slice(&EHDR_SIZE.to_le_bytes()); // e_phoff
    out.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    out.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    out.extend_from_slice(&(EHDR_SIZE as u16).to_le_bytes()); // e_ehsize
    out.extend_from_slice(&(PHDR_SIZE as u16).to_le_bytes()); // e_phentsize
    out.extend_from_slice(&phnum.to_le_bytes());
    out.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    out.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    out.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
}

/// Writes the ELF core file that `layout` describes to `out`, reading
/// guest RAM through `read` as it goes, and returns the number of bytes
/// written.
///
/// `read(gpa, buf)` must fill all of `buf` with guest memory from
/// guest-physical address `gpa`; it is called with consecutive chunks of
/// at most [`CHUNK_SIZE`] bytes, region by region in ascending address
/// order, so the host holds one chunk at a time. Zero pages are written as
/// zeros. `out` is written sequentially (no seeking): wrap a file in a
/// `BufWriter`, or pass a pipe.
///
/// Errors: an invalid layout (empty or overlapping RAM regions, a mapping
/// that maps no RAM) before anything is written; then failures of `read`
/// ([`CoreError::GuestMemory`]) or of `out` ([`CoreError::Write`]), which
/// leave a partial file.
pub fn write_core<W: Write>(
    mut out: W,
    layout: &CoreLayout,
    read: &mut dyn FnMut(u64, &mut [u8]) -> io::Result<()>,
) -> Result<u64, CoreError> {
    let plan = plan(layout)?;
    out.write_all(&plan.head).map_err(CoreError::Write)?;
    let mut written = plan.head.len() as u64;
    let largest = plan
        .regions
        .iter()
        .map(|placed| placed.region.len)
        .max()
        .unwrap_or(0);
    let mut chunk = vec![0u8; largest.min(CHUNK_SIZE as u64) as usize];
    for placed in &plan.regions {
        if written < placed.offset {
            let padding = (placed.offset - written) as usize;
            out.write_all(&vec![0u8; padding])
                .map_err(CoreError::Write)?;
            written += padding as u64;
        }
        let MemoryRegion { gpa, len } = placed.region;
        let mut done = 0;
        while done < len {
            let n = (len - done).min(chunk.len() as u64) as usize;
            let buf = &mut chunk[..n];
            read(gpa + done, buf).map_err(|source| CoreError::GuestMemory {
                gpa: gpa + done,
                source,
            })?;
            out.write_all(buf).map_err(CoreError::Write)?;
            done += n as u64;
        }
        written += len;
    }
    out.flush().map_err(CoreError::Write)?;
    debug_assert_eq!(written, plan.size);
    Ok(written)
}

/// The size in bytes of the file [`write_core`] writes for `layout`, to
/// check free space or show progress before writing.
pub fn core_size(layout: &CoreLayout) -> Result<u64, CoreError> {
    Ok(plan(layout)?.size)
}
