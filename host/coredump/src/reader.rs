//! Reading an ELF core back: its headers and notes at once, memory on
//! demand.
//!
//! It reads what [`crate::write_core`] writes and any other x86-64 ELF64
//! little-endian core with at most `PN_XNUM - 1` program headers (kdump
//! vmcores, QEMU's `dump-guest-memory` files). The file is untrusted:
//! every size is checked against the file's length before anything is
//! allocated.

use std::io::{self, Read, Seek, SeekFrom};

use crate::elf::{EHDR_SIZE, EM_X86_64, ET_CORE, PHDR_SIZE, PN_XNUM, PT_LOAD, PT_NOTE};
use crate::note::{self, Note};
use crate::{CoreError, CpuRegisters};

/// The most note bytes this reads (a kdump of a large machine has a few
/// hundred KiB).
const MAX_NOTES_SIZE: u64 = 64 << 20;

/// One `PT_LOAD` segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadSegment {
    /// Where its bytes start in the file.
    pub offset: u64,
    /// The virtual address of its first byte.
    pub vaddr: u64,
    /// The physical address of its first byte.
    pub paddr: u64,
    /// How many bytes the file holds.
    pub filesz: u64,
    /// How many bytes it maps (bytes past `filesz` were not saved).
    pub memsz: u64,
    /// `p_flags` (`PF_R`, `PF_W`, `PF_X`).
    pub flags: u32,
}

/// The headers and notes of an ELF core file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreFile {
    /// The `PT_LOAD` segments, in header order.
    pub segments: Vec<LoadSegment>,
    /// The notes of all `PT_NOTE` segments, in order.
    pub notes: Vec<Note>,
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
}

fn read_at<R: Read + Seek>(file: &mut R, offset: u64, buf: &mut [u8]) -> Result<(), CoreError> {
    file.seek(SeekFrom::Start(offset))
        .map_err(CoreError::Read)?;
    file.read_exact(buf).map_err(CoreError::Read)
}

impl CoreFile {
    /// Parses the ELF header, the program headers and the notes.
    pub fn parse<R: Read + Seek>(file: &mut R) -> Result<Self, CoreError> {
        let file_len = file.seek(SeekFrom::End(0)).map_err(CoreError::Read)?;
        let mut ehdr = [0u8; EHDR_SIZE as usize];
        read_at(file, 0, &mut ehdr).map_err(|error| match error {
            CoreError::Read(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                CoreError::NotCore("shorter than an ELF header")
            }
            other => other,
        })?;
        if ehdr[..4] != *b"\x7fELF" {
            return Err(CoreError::NotCore("no ELF magic"));
        }
        if ehdr[4] != 2 || ehdr[5] != 1 {
            return Err(CoreError::NotCore("not ELF64 little-endian"));
        }
        if u16_at(&ehdr, 16) != ET_CORE {
            return Err(CoreError::NotCore("not ET_CORE"));
        }
        if u16_at(&ehdr, 18) != EM_X86_64 {
            return Err(CoreError::NotCore("not EM_X86_64"));
        }
        let phoff = u64_at(&ehdr, 32);
        let phentsize = u16_at(&ehdr, 54) as u64;
        let phnum = u16_at(&ehdr, 56) as usize;
        if phentsize != PHDR_SIZE {
            return Err(CoreError::Malformed(format!(
                "program header size {phentsize}, not {PHDR_SIZE}"
            )));
        }
        if phnum == PN_XNUM {
            return Err(CoreError::Malformed(
                "extended program header numbering is not supported".into(),
            ));
        }
        let table_len = PHDR_SIZE * phnum as u64;
        if phoff
            .checked_add(table_len)
            .is_none_or(|end| end > file_len)
        {
            return Err(CoreError::Malformed(
                "the program headers run past the end of the file".into(),
            ));
        }
        let mut table = vec![0u8; table_len as usize];
        read_at(file, phoff, &mut table)?;

        let mut segments = Vec::new();
        let mut notes = Vec::new();
        let mut notes_read = 0u64;
        for header in table.chunks_exact(PHDR_SIZE as usize) {
            let kind = u32_at(header, 0);
            let segment = LoadSegment {
                flags: u32_at(header, 4),
                offset: u64_at(header, 8),
                vaddr: u64_at(header, 16),
                paddr: u64_at(header, 24),
                filesz: u64_at(header, 32),
                memsz: u64_at(header, 40),
            };
            if segment
                .offset
                .checked_add(segment.filesz)
                .is_none_or(|end| end > file_len)
            {
                return Err(CoreError::Malformed(format!(
                    "a segment at file offset {:#x} (size {:#x}) runs past the end of the file",
                    segment.offset, segment.filesz
                )));
            }
            match kind {
                PT_LOAD => segments.push(segment),
                PT_NOTE => {
                    notes_read += segment.filesz;
                    if notes_read > MAX_NOTES_SIZE {
                        return Err(CoreError::Malformed(
                            "the notes are larger than 64 MiB".into(),
                        ));
                    }
                    let mut bytes = vec![0u8; segment.filesz as usize];
                    read_at(file, segment.offset, &mut bytes)?;
                    notes.extend(note::parse_notes(&bytes)?);
                }
                _ => {}
            }
        }
        Ok(CoreFile { segments, notes })
    }

    /// The registers of the `NT_PRSTATUS` notes (name `CORE`), in order;
    /// notes too short to hold them are skipped.
    pub fn cpus(&self) -> Vec<CpuRegisters> {
        self.notes
            .iter()
            .filter(|note| note.name == note::CORE_NAME && note.kind == note::NT_PRSTATUS)
            .filter_map(|note| CpuRegisters::from_prstatus(&note.desc))
            .collect()
    }

    /// The text of the first `VMCOREINFO` note, if it is UTF-8.
    pub fn vmcoreinfo(&self) -> Option<&str> {
        self.notes
            .iter()
            .find(|note| note.name == note::VMCOREINFO_NAME)
            .and_then(|note| std::str::from_utf8(&note.desc).ok())
    }

    /// Reads memory at physical address `paddr` from the segments' file
    /// bytes (by `p_paddr`); the whole range must be in the file.
    pub fn read_physical<R: Read + Seek>(
        &self,
        file: &mut R,
        paddr: u64,
        buf: &mut [u8],
    ) -> Result<(), CoreError> {
        self.read_by(file, paddr, buf, |segment| segment.paddr)
    }

    /// Reads memory at virtual address `vaddr` from the segments' file
    /// bytes (by `p_vaddr`, no page tables); the whole range must be in
    /// the file.
    pub fn read_virtual<R: Read + Seek>(
        &self,
        file: &mut R,
        vaddr: u64,
        buf: &mut [u8],
    ) -> Result<(), CoreError> {
        self.read_by(file, vaddr, buf, |segment| segment.vaddr)
    }

    fn read_by<R: Read + Seek>(
        &self,
        file: &mut R,
        mut addr: u64,
        mut buf: &mut [u8],
        start_of: impl Fn(&LoadSegment) -> u64,
    ) -> Result<(), CoreError> {
        while !buf.is_empty() {
            let segment = self
                .segments
                .iter()
                .find(|segment| {
                    addr.checked_sub(start_of(segment))
                        .is_some_and(|into| into < segment.filesz)
                })
                .ok_or(CoreError::NotInCore { addr })?;
            let into = addr - start_of(segment);
            let n = (segment.filesz - into).min(buf.len() as u64) as usize;
            let (now, rest) = buf.split_at_mut(n);
            read_at(file, segment.offset + into, now)?;
            buf = rest;
            addr += n as u64;
        }
        Ok(())
    }
}
