//! Guest page-table walks: guest-virtual to guest-physical translation.
//!
//! This module owns [`translate`], which resolves a guest-virtual address
//! the way the CPU would, from the guest's own paging state ([`PagingState`]:
//! CR0, CR3, CR4 and EFER) and its page tables in guest memory, read through
//! [`PhysRead`]. It follows the Intel SDM, volume 3, chapter 4: 32-bit
//! paging (with PSE and PSE-36 4 MiB pages), PAE paging, and 4-level and
//! 5-level paging (4 KiB, 2 MiB and 1 GiB pages). A failed walk says why in a
//! [`WalkFault`], naming the level and the entry that stopped it.
//!
//! The walk is for introspection: it never writes guest memory (accessed
//! and dirty bits are left alone), does not check an access against the
//! rights it reports (WP, SMEP, SMAP and protection keys are the caller's
//! business), and assumes the CPU supports every page size the mode allows.
//! Reserved bits are checked as the SDM lists them, against a MAXPHYADDR of
//! [`DEFAULT_MAXPHYADDR`] unless [`translate_with_maxphyaddr`] is given the
//! guest's real one.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// CR0.PG: paging enabled.
const CR0_PG: u64 = 1 << 31;
/// CR4.PSE: 4 MiB pages in 32-bit paging.
const CR4_PSE: u64 = 1 << 4;
/// CR4.PAE: 64-bit page-table entries.
const CR4_PAE: u64 = 1 << 5;
/// CR4.LA57: 5-level paging.
const CR4_LA57: u64 = 1 << 12;
/// EFER.LMA: long mode active.
const EFER_LMA: u64 = 1 << 10;
/// EFER.NXE: the XD bit (63) of PAE and long-mode entries is honoured.
const EFER_NXE: u64 = 1 << 11;

/// Entry bit 0: present.
const PTE_P: u64 = 1 << 0;
/// Entry bit 1: writable.
const PTE_RW: u64 = 1 << 1;
/// Entry bit 2: user-accessible.
const PTE_US: u64 = 1 << 2;
/// Entry bit 7 (PDPTE and PDE): maps a large page.
const PTE_PS: u64 = 1 << 7;
/// Entry bit 63 (PAE and long mode): execute-disable.
const PTE_XD: u64 = 1 << 63;

/// The MAXPHYADDR [`translate`] assumes: the architectural maximum.
pub const DEFAULT_MAXPHYADDR: u8 = 52;
/// The smallest MAXPHYADDR [`translate_with_maxphyaddr`] honours; smaller
/// values are raised to it.
pub const MIN_MAXPHYADDR: u8 = 32;

/// The paging-relevant control state of a vCPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PagingState {
    /// CR0; only PG (bit 31) matters here.
    pub cr0: u64,
    /// CR3: the physical address of the top-level paging structure.
    pub cr3: u64,
    /// CR4; PSE (bit 4), PAE (bit 5) and LA57 (bit 12) matter here.
    pub cr4: u64,
    /// IA32_EFER; LMA (bit 10) and NXE (bit 11) matter here.
    pub efer: u64,
}

/// Which paging mode that state selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PagingMode {
    /// CR0.PG = 0: linear addresses are physical addresses.
    None,
    /// 32-bit paging: 2 levels of 32-bit entries, 4 KiB pages and, with
    /// CR4.PSE, 4 MiB pages.
    Bits32,
    /// PAE paging: a 4-entry PDPT and 2 levels of 64-bit entries, 4 KiB and
    /// 2 MiB pages.
    Pae,
    /// 4-level paging (long mode): 48-bit linear addresses, 4 KiB, 2 MiB and
    /// 1 GiB pages.
    Level4,
    /// 5-level paging (long mode with CR4.LA57): 57-bit linear addresses.
    Level5,
}

impl PagingState {
    /// The paging mode the CPU would use in this state.
    ///
    /// The bits are read in the order the SDM decides the mode: CR0.PG, then
    /// CR4.PAE, then EFER.LMA, then CR4.LA57. A state no CPU can be in (long
    /// mode without PAE) therefore reads as 32-bit paging.
    pub fn mode(&self) -> PagingMode {
        if self.cr0 & CR0_PG == 0 {
            PagingMode::None
        } else if self.cr4 & CR4_PAE == 0 {
            PagingMode::Bits32
        } else if self.efer & EFER_LMA == 0 {
            PagingMode::Pae
        } else if self.cr4 & CR4_LA57 == 0 {
            PagingMode::Level4
        } else {
            PagingMode::Level5
        }
    }

    /// True if EFER.NXE is set, so that bit 63 of PAE and long-mode entries
    /// means execute-disable rather than reserved.
    fn nxe(&self) -> bool {
        self.efer & EFER_NXE != 0
    }
}

/// The result of a successful walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// The guest-physical address the guest-virtual one maps to.
    pub gpa: u64,
    /// The size of the page that maps it: 4 KiB, 2 MiB, 4 MiB or 1 GiB
    /// (4 KiB when paging is disabled).
    pub page_size: u64,
    /// Every level allows writes (R/W = 1).
    pub writable: bool,
    /// Every level allows user-mode access (U/S = 1).
    pub user: bool,
    /// No level forbids instruction fetches: no XD bit set on any level.
    /// Only EFER.NXE makes XD meaningful, so without it (and in 32-bit
    /// paging, which has no XD bit) this is always true.
    pub executable: bool,
}

/// Why a walk failed.
///
/// Levels are numbered as the SDM does: 5 = PML5E, 4 = PML4E, 3 = PDPTE
/// (including PAE's PDPTEs), 2 = PDE, 1 = PTE. `entry_gpa` is the
/// guest-physical address of the entry that stopped the walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WalkFault {
    /// The entry at `level` has its present bit clear.
    #[error("not mapped: {} at gpa {entry_gpa:#x} not present", level_name(*level))]
    NotPresent {
        /// The level of the non-present entry.
        level: u8,
        /// Where that entry lies in guest-physical memory.
        entry_gpa: u64,
    },
    /// The entry at `level` is present but sets a bit that must be zero.
    #[error(
        "{} at gpa {entry_gpa:#x} sets reserved bits: {entry:#x}",
        level_name(*level)
    )]
    ReservedBits {
        /// The level of the faulty entry.
        level: u8,
        /// Where that entry lies in guest-physical memory.
        entry_gpa: u64,
        /// The entry as read.
        entry: u64,
    },
    /// The address is not canonical for 4-level or 5-level paging.
    #[error("gva {gva:#x} is not canonical")]
    NonCanonical {
        /// The address that was to be translated.
        gva: u64,
    },
    /// A paging structure lies (at least partly) outside guest memory.
    #[error("page-table entry at gpa {gpa:#x} lies outside guest memory")]
    OutsideRam {
        /// The guest-physical address of the entry that could not be read.
        gpa: u64,
    },
    /// The address has bits above 31 while paging is off, 32-bit or PAE.
    #[error("gva {gva:#x} is wider than 32 bits in a 32-bit paging mode")]
    AddressTooWide {
        /// The address that was to be translated.
        gva: u64,
    },
}

/// The SDM's name for a paging-structure entry at `level`.
fn level_name(level: u8) -> &'static str {
    match level {
        5 => "PML5E",
        4 => "PML4E",
        3 => "PDPTE",
        2 => "PDE",
        1 => "PTE",
        _ => "paging entry",
    }
}

/// Reads guest-physical memory, little-endian, for the walker.
///
/// Implemented for [`GuestMemoryMmap`]; tests implement it over crafted
/// memory.
pub trait PhysRead {
    /// The 8 bytes at `gpa`, or `None` if any of them is outside memory.
    fn read_u64(&self, gpa: u64) -> Option<u64>;
    /// The 4 bytes at `gpa`, or `None` if any of them is outside memory.
    fn read_u32(&self, gpa: u64) -> Option<u32>;
}

impl PhysRead for GuestMemoryMmap {
    fn read_u64(&self, gpa: u64) -> Option<u64> {
        self.read_obj::<[u8; 8]>(GuestAddress(gpa))
            .ok()
            .map(u64::from_le_bytes)
    }

    fn read_u32(&self, gpa: u64) -> Option<u32> {
        self.read_obj::<[u8; 4]>(GuestAddress(gpa))
            .ok()
            .map(u32::from_le_bytes)
    }
}

/// Translates `gva` to a guest-physical address by walking the guest's page
/// tables from its CR3, assuming a MAXPHYADDR of [`DEFAULT_MAXPHYADDR`].
///
/// See [`translate_with_maxphyaddr`].
pub fn translate(
    mem: &impl PhysRead,
    paging: &PagingState,
    gva: u64,
) -> Result<Translation, WalkFault> {
    translate_with_maxphyaddr(mem, paging, gva, DEFAULT_MAXPHYADDR)
}

/// Translates `gva` to a guest-physical address by walking the guest's page
/// tables from its CR3, for a CPU whose MAXPHYADDR is `maxphyaddr` (clamped
/// to [`MIN_MAXPHYADDR`]..=[`DEFAULT_MAXPHYADDR`]).
///
/// Physical-address bits at or above MAXPHYADDR in an entry are reserved
/// (bits 62:MAXPHYADDR in PAE paging, 51:MAXPHYADDR in long mode, PSE-36's
/// limit of 40 bits in 32-bit paging), as are the frame bits below a large
/// page (except PAT, bit 12), PS in PML5Es and PML4Es, bit 63 when EFER.NXE
/// is clear, and bits 2:1, 8:5 and 63:MAXPHYADDR of PAE PDPTEs. CR3's own
/// reserved bits are ignored (the CPU would not have loaded such a value).
/// Never panics, whatever the memory, state or address.
pub fn translate_with_maxphyaddr(
    mem: &impl PhysRead,
    paging: &PagingState,
    gva: u64,
    maxphyaddr: u8,
) -> Result<Translation, WalkFault> {
    let maxphyaddr = u32::from(maxphyaddr.clamp(MIN_MAXPHYADDR, DEFAULT_MAXPHYADDR));
    match paging.mode() {
        PagingMode::None => {
            narrow(gva)?;
            Ok(Translation {
                gpa: gva,
                page_size: 1 << 12,
                writable: true,
                user: true,
                executable: true,
            })
        }
        PagingMode::Bits32 => walk_32(mem, paging, narrow(gva)?, maxphyaddr),
        PagingMode::Pae => walk_pae(mem, paging, narrow(gva)?, maxphyaddr),
        PagingMode::Level4 => walk_long(mem, paging, gva, 4, maxphyaddr),
        PagingMode::Level5 => walk_long(mem, paging, gva, 5, maxphyaddr),
    }
}

/// `gva` as a 32-bit linear address, or [`WalkFault::AddressTooWide`].
fn narrow(gva: u64) -> Result<u32, WalkFault> {
    u32::try_from(gva).map_err(|_| WalkFault::AddressTooWide { gva })
}

/// Bits `lo..=hi` set, or none if the range is empty.
fn bits(lo: u32, hi: u32) -> u64 {
    if lo > hi || hi > 63 {
        0
    } else {
        (u64::MAX >> (63 - hi)) & (u64::MAX << lo)
    }
}

/// Access rights accumulated over the levels of a walk.
#[derive(Clone, Copy)]
struct Rights {
    writable: bool,
    user: bool,
    executable: bool,
}

impl Rights {
    /// No level has restricted anything yet.
    const ALL: Rights = Rights {
        writable: true,
        user: true,
        executable: true,
    };

    /// Restricts the rights by one entry's R/W, U/S and (if `nxe`) XD bits.
    fn absorb(&mut self, entry: u64, nxe: bool) {
        self.writable &= entry & PTE_RW != 0;
        self.user &= entry & PTE_US != 0;
        if nxe {
            self.executable &= entry & PTE_XD == 0;
        }
    }

    /// The translation of `gva` into a page of `page_size` bytes at `frame`.
    fn translation(self, frame: u64, page_size: u64, gva: u64) -> Translation {
        let offset = page_size.wrapping_sub(1);
        Translation {
            gpa: (frame & !offset) | (gva & offset),
            page_size,
            writable: self.writable,
            user: self.user,
            executable: self.executable,
        }
    }
}

/// 32-bit paging (SDM 4.3): a page directory and page tables of 32-bit
/// entries.
fn walk_32(
    mem: &impl PhysRead,
    paging: &PagingState,
    gva: u32,
    maxphyaddr: u32,
) -> Result<Translation, WalkFault> {
    const FRAME_4K: u64 = 0xffff_f000;
    const FRAME_4M: u64 = 0xffc0_0000;
    let gva = u64::from(gva);
    let mut rights = Rights::ALL;

    let pde_gpa = (paging.cr3 & FRAME_4K) | (((gva >> 22) & 0x3ff) << 2);
    let pde = read_entry_u32(mem, pde_gpa)?;
    present(pde, 2, pde_gpa)?;
    if paging.cr4 & CR4_PSE != 0 && pde & PTE_PS != 0 {
        // PSE-36: bits 20:13 hold physical-address bits 39:32, and bits
        // 21:(M - 19) are reserved, where M = min(MAXPHYADDR, 40).
        let m = maxphyaddr.min(40);
        reserved(pde, bits(m - 19, 21), 2, pde_gpa)?;
        rights.absorb(pde, false);
        let frame = (pde & FRAME_4M) | (((pde >> 13) & 0xff) << 32);
        return Ok(rights.translation(frame, 4 << 20, gva));
    }
    rights.absorb(pde, false);

    let pte_gpa = (pde & FRAME_4K) | (((gva >> 12) & 0x3ff) << 2);
    let pte = read_entry_u32(mem, pte_gpa)?;
    present(pte, 1, pte_gpa)?;
    rights.absorb(pte, false);
    Ok(rights.translation(pte & FRAME_4K, 1 << 12, gva))
}

/// PAE paging (SDM 4.4): four PDPTEs at CR3 bits 31:5, then a page directory
/// and page tables of 64-bit entries.
fn walk_pae(
    mem: &impl PhysRead,
    paging: &PagingState,
    gva: u32,
    maxphyaddr: u32,
) -> Result<Translation, WalkFault> {
    let gva = u64::from(gva);
    let pdpte_gpa = (paging.cr3 & 0xffff_ffe0) | (((gva >> 30) & 0x3) << 3);
    let pdpte = read_entry_u64(mem, pdpte_gpa)?;
    present(pdpte, 3, pdpte_gpa)?;
    // PDPTEs have no R/W, U/S or XD bits: 2:1 and 8:5 are reserved, and so
    // is everything from MAXPHYADDR up, bit 63 included.
    reserved(
        pdpte,
        bits(1, 2) | bits(5, 8) | bits(maxphyaddr, 63),
        3,
        pdpte_gpa,
    )?;
    let directory = pdpte & bits(12, maxphyaddr - 1);
    walk_tables(
        mem,
        paging,
        gva,
        directory,
        2,
        bits(maxphyaddr, 62),
        maxphyaddr,
    )
}

/// 4-level and 5-level paging (SDM 4.5), from the PML4 or PML5 at CR3.
fn walk_long(
    mem: &impl PhysRead,
    paging: &PagingState,
    gva: u64,
    levels: u8,
    maxphyaddr: u32,
) -> Result<Translation, WalkFault> {
    // Canonical: bits 63:(width - 1) all equal.
    let unused = if levels == 5 { 64 - 57 } else { 64 - 48 };
    if (((gva << unused) as i64) >> unused) as u64 != gva {
        return Err(WalkFault::NonCanonical { gva });
    }
    let top = paging.cr3 & bits(12, maxphyaddr - 1);
    walk_tables(
        mem,
        paging,
        gva,
        top,
        levels,
        bits(maxphyaddr, 51),
        maxphyaddr,
    )
}

/// Walks 64-bit paging structures from the table at `table` (a level-`level`
/// structure) down to the page that maps `gva`.
///
/// `reserved_high` holds the physical-address bits reserved in every entry;
/// bit 63 is added when EFER.NXE is clear, PS at levels 5 and 4, and the
/// frame bits below a large page at levels 3 and 2.
fn walk_tables(
    mem: &impl PhysRead,
    paging: &PagingState,
    gva: u64,
    mut table: u64,
    mut level: u8,
    reserved_high: u64,
    maxphyaddr: u32,
) -> Result<Translation, WalkFault> {
    let nxe = paging.nxe();
    let always_reserved = reserved_high | if nxe { 0 } else { PTE_XD };
    let frame_mask = bits(12, maxphyaddr - 1);
    let mut rights = Rights::ALL;
    loop {
        // Level n indexes with linear-address bits (12 + 9n - 1):(12 + 9(n - 1)).
        let shift = 12 + 9 * u32::from(level.saturating_sub(1));
        let entry_gpa = table | (((gva >> shift) & 0x1ff) << 3);
        let entry = read_entry_u64(mem, entry_gpa)?;
        present(entry, level, entry_gpa)?;
        let large = matches!(level, 2 | 3) && entry & PTE_PS != 0;
        let mut must_be_zero = always_reserved;
        if level >= 4 {
            must_be_zero |= PTE_PS;
        } else if large {
            // Frame bits below the page, except PAT (bit 12).
            must_be_zero |= bits(13, shift - 1);
        }
        reserved(entry, must_be_zero, level, entry_gpa)?;
        rights.absorb(entry, nxe);
        if level <= 1 || large {
            return Ok(rights.translation(entry & frame_mask, 1 << shift, gva));
        }
        table = entry & frame_mask;
        level -= 1;
    }
}

/// Reads a 32-bit entry, or faults with [`WalkFault::OutsideRam`].
fn read_entry_u32(mem: &impl PhysRead, gpa: u64) -> Result<u64, WalkFault> {
    mem.read_u32(gpa)
        .map(u64::from)
        .ok_or(WalkFault::OutsideRam { gpa })
}

/// Reads a 64-bit entry, or faults with [`WalkFault::OutsideRam`].
fn read_entry_u64(mem: &impl PhysRead, gpa: u64) -> Result<u64, WalkFault> {
    mem.read_u64(gpa).ok_or(WalkFault::OutsideRam { gpa })
}

/// Faults with [`WalkFault::NotPresent`] unless `entry` is present.
fn present(entry: u64, level: u8, entry_gpa: u64) -> Result<(), WalkFault> {
    if entry & PTE_P == 0 {
        return Err(WalkFault::NotPresent { level, entry_gpa });
    }
    Ok(())
}

/// Faults with [`WalkFault::ReservedBits`] if `entry` sets any bit of `mask`.
fn reserved(entry: u64, mask: u64, level: u8, entry_gpa: u64) -> Result<(), WalkFault> {
    if entry & mask != 0 {
        return Err(WalkFault::ReservedBits {
            level,
            entry_gpa,
            entry,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KIB4: u64 = 1 << 12;
    const MIB2: u64 = 1 << 21;
    const MIB4: u64 = 1 << 22;
    const GIB1: u64 = 1 << 30;

    /// Present, writable, user: the flags most test entries carry.
    const PWU: u64 = PTE_P | PTE_RW | PTE_US;

    /// Guest memory as a flat, zeroed byte array starting at GPA 0, with a
    /// bump allocator for page tables.
    struct FakeMem {
        bytes: Vec<u8>,
        next_table: u64,
    }

    impl FakeMem {
        fn new(size: usize) -> Self {
            FakeMem {
                bytes: vec![0; size],
                next_table: 0x1000,
            }
        }

        fn write_u64(&mut self, gpa: u64, value: u64) {
            let at = usize::try_from(gpa).unwrap();
            self.bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
        }

        fn write_u32(&mut self, gpa: u64, value: u32) {
            let at = usize::try_from(gpa).unwrap();
            self.bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
        }

        /// A fresh zeroed 4 KiB table.
        fn table(&mut self) -> u64 {
            let table = self.next_table;
            self.next_table += 0x1000;
            assert!(self.next_table as usize <= self.bytes.len());
            table
        }

        fn slice(&self, gpa: u64, len: usize) -> Option<&[u8]> {
            let at = usize::try_from(gpa).ok()?;
            self.bytes.get(at..at.checked_add(len)?)
        }
    }

    impl PhysRead for FakeMem {
        fn read_u64(&self, gpa: u64) -> Option<u64> {
            Some(u64::from_le_bytes(self.slice(gpa, 8)?.try_into().ok()?))
        }

        fn read_u32(&self, gpa: u64) -> Option<u32> {
            Some(u32::from_le_bytes(self.slice(gpa, 4)?.try_into().ok()?))
        }
    }

    fn state(mode: PagingMode, cr3: u64, extra_cr4: u64, nxe: bool) -> PagingState {
        let (cr0, cr4, efer) = match mode {
            PagingMode::None => (0, 0, 0),
            PagingMode::Bits32 => (CR0_PG, 0, 0),
            PagingMode::Pae => (CR0_PG, CR4_PAE, 0),
            PagingMode::Level4 => (CR0_PG, CR4_PAE, EFER_LMA),
            PagingMode::Level5 => (CR0_PG, CR4_PAE | CR4_LA57, EFER_LMA),
        };
        // Real guests also have PE and LME set; the walker must not care.
        PagingState {
            cr0: cr0 | 1,
            cr3,
            cr4: cr4 | extra_cr4,
            efer: efer | if efer != 0 { 1 << 8 } else { 0 } | if nxe { EFER_NXE } else { 0 },
        }
    }

    /// The GPA of the level-`level` entry for `gva` in the 64-bit table at
    /// `table`.
    fn slot(table: u64, gva: u64, level: u8) -> u64 {
        table + ((gva >> (12 + 9 * (u32::from(level) - 1))) & 0x1ff) * 8
    }

    /// Builds a long-mode or PAE hierarchy below `root` (a level-`top`
    /// table) mapping `gva` with a leaf at `leaf_level` holding
    /// `leaf_frame | leaf_flags` (PS added above level 1). Intermediate
    /// entries get `table_flags`. Returns each level's entry GPA, top first.
    #[allow(clippy::too_many_arguments)]
    fn map(
        mem: &mut FakeMem,
        root: u64,
        top: u8,
        gva: u64,
        leaf_level: u8,
        leaf_frame: u64,
        leaf_flags: u64,
        table_flags: u64,
    ) -> Vec<(u8, u64)> {
        let mut entries = Vec::new();
        let mut table = root;
        for level in (leaf_level..=top).rev() {
            let entry_gpa = slot(table, gva, level);
            entries.push((level, entry_gpa));
            if level == leaf_level {
                let ps = if level > 1 { PTE_PS } else { 0 };
                mem.write_u64(entry_gpa, leaf_frame | leaf_flags | ps);
            } else {
                let next = mem.table();
                mem.write_u64(entry_gpa, next | table_flags);
                table = next;
            }
        }
        entries
    }

    /// A long-mode hierarchy for `gva` with the leaf at `leaf_level`;
    /// returns the paging state and each level's entry GPA.
    fn long_mode(
        mem: &mut FakeMem,
        levels: u8,
        gva: u64,
        leaf_level: u8,
        frame: u64,
    ) -> (PagingState, Vec<(u8, u64)>) {
        let root = mem.table();
        let mode = if levels == 5 {
            PagingMode::Level5
        } else {
            PagingMode::Level4
        };
        let entries = map(mem, root, levels, gva, leaf_level, frame, PWU, PWU);
        (state(mode, root, 0, true), entries)
    }

    fn page_size(leaf_level: u8) -> u64 {
        1 << (12 + 9 * (u32::from(leaf_level) - 1))
    }

    fn entry_at(mem: &FakeMem, entries: &[(u8, u64)], level: u8) -> (u64, u64) {
        let (_, gpa) = entries.iter().find(|(l, _)| *l == level).unwrap();
        (*gpa, mem.read_u64(*gpa).unwrap())
    }

    #[test]
    fn mode_follows_cr0_cr4_and_efer() {
        for mode in [
            PagingMode::None,
            PagingMode::Bits32,
            PagingMode::Pae,
            PagingMode::Level4,
            PagingMode::Level5,
        ] {
            assert_eq!(state(mode, 0, 0, false).mode(), mode);
        }
        // LA57 means nothing outside long mode, LMA nothing without PAE.
        let la57_pae = PagingState {
            cr0: CR0_PG,
            cr3: 0,
            cr4: CR4_PAE | CR4_LA57,
            efer: 0,
        };
        assert_eq!(la57_pae.mode(), PagingMode::Pae);
        let lma_no_pae = PagingState {
            cr0: CR0_PG,
            cr3: 0,
            cr4: CR4_LA57,
            efer: EFER_LMA,
        };
        assert_eq!(lma_no_pae.mode(), PagingMode::Bits32);
    }

    #[test]
    fn paging_disabled_is_identity() {
        let mem = FakeMem::new(0);
        let paging = state(PagingMode::None, 0xdead_b000, 0, false);
        for gva in [0, 0x1234, 0xffff_ffff] {
            assert_eq!(
                translate(&mem, &paging, gva),
                Ok(Translation {
                    gpa: gva,
                    page_size: KIB4,
                    writable: true,
                    user: true,
                    executable: true,
                })
            );
        }
        assert_eq!(
            translate(&mem, &paging, 1 << 32),
            Err(WalkFault::AddressTooWide { gva: 1 << 32 })
        );
    }

    #[test]
    fn long_mode_every_page_size_and_offset() {
        let cases: [(u8, u64); 4] = [
            (4, 0x0000_7f12_3456_7abc),
            (4, 0xffff_8000_1234_5678),
            (5, 0x00ab_cdef_1234_5678),
            (5, 0xff80_0000_dead_beef),
        ];
        for (levels, gva) in cases {
            for leaf_level in 1..=3 {
                let size = page_size(leaf_level);
                let frame = 5 * GIB1;
                let mut mem = FakeMem::new(0x10_0000);
                let (paging, _) = long_mode(&mut mem, levels, gva, leaf_level, frame);
                let t = translate(&mem, &paging, gva).unwrap();
                assert_eq!(t.gpa, frame + (gva & (size - 1)), "{levels} {leaf_level}");
                assert_eq!(t.page_size, size);
                assert!(t.writable && t.user && t.executable);
            }
        }
    }

    #[test]
    fn long_mode_pat_bit_is_not_part_of_a_large_frame() {
        for leaf_level in [2, 3] {
            let gva = 0x0000_0040_1234_5678;
            let mut mem = FakeMem::new(0x10_0000);
            let (paging, entries) = long_mode(&mut mem, 4, gva, leaf_level, 3 * GIB1);
            let (leaf_gpa, leaf) = entry_at(&mem, &entries, leaf_level);
            mem.write_u64(leaf_gpa, leaf | 1 << 12);
            let size = page_size(leaf_level);
            assert_eq!(
                translate(&mem, &paging, gva).unwrap().gpa,
                3 * GIB1 + (gva & (size - 1))
            );
        }
    }

    #[test]
    fn long_mode_not_present_names_level_and_entry() {
        for levels in [4, 5] {
            for leaf_level in 1..=3 {
                for level in leaf_level..=levels {
                    let gva = 0x0000_1234_5678_9abc;
                    let mut mem = FakeMem::new(0x10_0000);
                    let (paging, entries) = long_mode(&mut mem, levels, gva, leaf_level, GIB1);
                    let (entry_gpa, entry) = entry_at(&mem, &entries, level);
                    mem.write_u64(entry_gpa, entry & !PTE_P);
                    assert_eq!(
                        translate(&mem, &paging, gva),
                        Err(WalkFault::NotPresent { level, entry_gpa })
                    );
                }
            }
        }
    }

    #[test]
    fn not_present_ignores_reserved_bits() {
        let gva = 0x7000;
        let mut mem = FakeMem::new(0x10_0000);
        let (paging, entries) = long_mode(&mut mem, 4, gva, 1, 0x9000);
        let (pte_gpa, _) = entry_at(&mem, &entries, 1);
        mem.write_u64(pte_gpa, !PTE_P);
        assert_eq!(
            translate(&mem, &paging, gva),
            Err(WalkFault::NotPresent {
                level: 1,
                entry_gpa: pte_gpa
            })
        );
    }

    #[test]
    fn rights_are_the_and_of_every_level() {
        let gva = 0x0000_0012_3456_7000;
        // Clearing R/W, U/S or setting XD at any one level restricts the page.
        for level in 1..=4 {
            for (clear, set) in [(PTE_RW, 0), (PTE_US, 0), (0, PTE_XD)] {
                let mut mem = FakeMem::new(0x10_0000);
                let (paging, entries) = long_mode(&mut mem, 4, gva, 1, 0x8000);
                let (entry_gpa, entry) = entry_at(&mem, &entries, level);
                mem.write_u64(entry_gpa, (entry & !clear) | set);
                let t = translate(&mem, &paging, gva).unwrap();
                assert_eq!(t.gpa, 0x8000);
                assert_eq!(t.writable, clear != PTE_RW, "level {level}");
                assert_eq!(t.user, clear != PTE_US, "level {level}");
                assert_eq!(t.executable, set != PTE_XD, "level {level}");
            }
        }
    }

    #[test]
    fn xd_is_reserved_without_nxe() {
        let gva = 0x0000_0012_3456_7000;
        for level in 1..=4 {
            let mut mem = FakeMem::new(0x10_0000);
            let (mut paging, entries) = long_mode(&mut mem, 4, gva, 1, 0x8000);
            paging.efer &= !EFER_NXE;
            assert!(translate(&mem, &paging, gva).unwrap().executable);
            let (entry_gpa, entry) = entry_at(&mem, &entries, level);
            mem.write_u64(entry_gpa, entry | PTE_XD);
            assert_eq!(
                translate(&mem, &paging, gva),
                Err(WalkFault::ReservedBits {
                    level,
                    entry_gpa,
                    entry: entry | PTE_XD
                })
            );
        }
    }

    #[test]
    fn large_page_frame_low_bits_are_reserved() {
        let gva = 0x0000_0040_1234_5678;
        for (leaf_level, low_bits) in [(2, [13, 16, 20]), (3, [13, 21, 29])] {
            for bit in low_bits {
                let mut mem = FakeMem::new(0x10_0000);
                let (paging, entries) = long_mode(&mut mem, 4, gva, leaf_level, GIB1);
                let (entry_gpa, entry) = entry_at(&mem, &entries, leaf_level);
                let bad = entry | 1 << bit;
                mem.write_u64(entry_gpa, bad);
                assert_eq!(
                    translate(&mem, &paging, gva),
                    Err(WalkFault::ReservedBits {
                        level: leaf_level,
                        entry_gpa,
                        entry: bad
                    }),
                    "level {leaf_level} bit {bit}"
                );
            }
        }
    }

    #[test]
    fn ps_is_reserved_in_pml4e_and_pml5e() {
        for levels in [4, 5] {
            for level in 4..=levels {
                let gva = 0x0000_0012_3456_7000;
                let mut mem = FakeMem::new(0x10_0000);
                let (paging, entries) = long_mode(&mut mem, levels, gva, 1, 0x8000);
                let (entry_gpa, entry) = entry_at(&mem, &entries, level);
                mem.write_u64(entry_gpa, entry | PTE_PS);
                assert_eq!(
                    translate(&mem, &paging, gva),
                    Err(WalkFault::ReservedBits {
                        level,
                        entry_gpa,
                        entry: entry | PTE_PS
                    })
                );
            }
        }
    }

    #[test]
    fn bits_above_maxphyaddr_are_reserved() {
        let gva = 0x0000_0012_3456_7000;
        let mut mem = FakeMem::new(0x10_0000);
        let (paging, entries) = long_mode(&mut mem, 4, gva, 1, 0x8000);
        let (pte_gpa, pte) = entry_at(&mem, &entries, 1);
        let high = pte | 1 << 45;
        mem.write_u64(pte_gpa, high);
        // Bit 45 is an address bit with a 52-bit MAXPHYADDR...
        assert_eq!(translate(&mem, &paging, gva).unwrap().gpa, 0x8000 | 1 << 45);
        // ...and reserved with a 40-bit one.
        assert_eq!(
            translate_with_maxphyaddr(&mem, &paging, gva, 40),
            Err(WalkFault::ReservedBits {
                level: 1,
                entry_gpa: pte_gpa,
                entry: high
            })
        );
        // Long-mode bits 62:52 are ignored (or protection keys), not
        // reserved, and not part of the address.
        mem.write_u64(pte_gpa, pte | 0x7ff << 52);
        assert_eq!(translate(&mem, &paging, gva).unwrap().gpa, 0x8000);
    }

    #[test]
    fn non_canonical_addresses_fault() {
        let mem = FakeMem::new(0x1000);
        let four = state(PagingMode::Level4, 0x10_0000, 0, true);
        let five = state(PagingMode::Level5, 0x10_0000, 0, true);
        for gva in [
            1 << 47,
            0xffff_7fff_ffff_ffff,
            1 << 63,
            0x0001_0000_0000_0000,
        ] {
            assert_eq!(
                translate(&mem, &four, gva),
                Err(WalkFault::NonCanonical { gva })
            );
        }
        for gva in [1 << 56, 0xfeff_ffff_ffff_ffff, 1 << 63] {
            assert_eq!(
                translate(&mem, &five, gva),
                Err(WalkFault::NonCanonical { gva })
            );
        }
        // Canonical addresses get as far as reading the (missing) PML4/PML5.
        for (paging, gva) in [
            (four, 0xffff_8000_0000_0000),
            (five, 1 << 47),
            (five, 0xff00_0000_0000_0000),
        ] {
            assert!(matches!(
                translate(&mem, &paging, gva),
                Err(WalkFault::OutsideRam { .. })
            ));
        }
    }

    #[test]
    fn tables_outside_ram_fault() {
        let gva = 0x0000_0012_3456_7000;
        // The PML4 itself.
        let mem = FakeMem::new(0x1000);
        let paging = state(PagingMode::Level4, 0x20_0000, 0, true);
        assert_eq!(
            translate(&mem, &paging, gva),
            Err(WalkFault::OutsideRam {
                gpa: slot(0x20_0000, gva, 4)
            })
        );
        // A page directory the PDPTE points past the end of RAM.
        let mut mem = FakeMem::new(0x10_0000);
        let (paging, entries) = long_mode(&mut mem, 4, gva, 1, 0x8000);
        let (pdpte_gpa, _) = entry_at(&mem, &entries, 3);
        mem.write_u64(pdpte_gpa, 0x4000_0000 | PWU);
        assert_eq!(
            translate(&mem, &paging, gva),
            Err(WalkFault::OutsideRam {
                gpa: slot(0x4000_0000, gva, 2)
            })
        );
    }

    #[test]
    fn leaf_gpa_outside_ram_is_still_a_translation() {
        // The data page may be MMIO; only the tables must be in RAM.
        let gva = 0x5000;
        let mut mem = FakeMem::new(0x10_0000);
        let (paging, _) = long_mode(&mut mem, 4, gva, 1, 0xfee0_0000);
        assert_eq!(translate(&mem, &paging, gva).unwrap().gpa, 0xfee0_0000);
    }

    /// A PAE hierarchy: the PDPT at `pdpt` (32-byte aligned), the rest from
    /// the bump allocator.
    fn pae(
        mem: &mut FakeMem,
        pdpt: u64,
        gva: u64,
        leaf_level: u8,
        frame: u64,
        nxe: bool,
    ) -> (PagingState, Vec<(u8, u64)>) {
        let pdpte_gpa = pdpt + ((gva >> 30) & 3) * 8;
        let directory = mem.table();
        // PDPTEs have no R/W or U/S bits: only P.
        mem.write_u64(pdpte_gpa, directory | PTE_P);
        let mut entries = vec![(3, pdpte_gpa)];
        entries.extend(map(mem, directory, 2, gva, leaf_level, frame, PWU, PWU));
        (state(PagingMode::Pae, pdpt, 0, nxe), entries)
    }

    #[test]
    fn pae_4k_and_2m_pages() {
        for gva in [0x0040_1abc_u64, 0xc012_3456, 0xffff_ffff] {
            for leaf_level in [1, 2] {
                let mut mem = FakeMem::new(0x10_0000);
                let (paging, _) = pae(&mut mem, 0xfe0, gva, leaf_level, 0x1_2340_0000, true);
                let size = page_size(leaf_level);
                let t = translate(&mem, &paging, gva).unwrap();
                assert_eq!(t.gpa, 0x1_2340_0000 + (gva & (size - 1)));
                assert_eq!(t.page_size, size);
                assert!(t.writable && t.user && t.executable);
            }
        }
    }

    #[test]
    fn pae_not_present_at_each_level() {
        let gva = 0x8040_5123;
        for leaf_level in [1, 2] {
            for level in leaf_level..=3 {
                let mut mem = FakeMem::new(0x10_0000);
                let (paging, entries) = pae(&mut mem, 0x20, gva, leaf_level, 0x40_0000, true);
                let (entry_gpa, entry) = entry_at(&mem, &entries, level);
                mem.write_u64(entry_gpa, entry & !PTE_P);
                assert_eq!(
                    translate(&mem, &paging, gva),
                    Err(WalkFault::NotPresent { level, entry_gpa })
                );
            }
        }
    }

    #[test]
    fn pae_pdpte_reserved_bits() {
        let gva = 0x4000_0000;
        for bit in [1, 2, 5, 8, 52, 63] {
            let mut mem = FakeMem::new(0x10_0000);
            let (paging, entries) = pae(&mut mem, 0x20, gva, 1, 0x40_0000, true);
            let (entry_gpa, entry) = entry_at(&mem, &entries, 3);
            mem.write_u64(entry_gpa, entry | 1 << bit);
            assert_eq!(
                translate(&mem, &paging, gva),
                Err(WalkFault::ReservedBits {
                    level: 3,
                    entry_gpa,
                    entry: entry | 1 << bit
                }),
                "bit {bit}"
            );
        }
    }

    #[test]
    fn pae_entry_reserved_bits() {
        let gva = 0x4020_3000;
        // 62:52 above MAXPHYADDR, XD without NXE, 2 MiB frame low bits.
        for (leaf_level, level, bit, nxe) in [
            (1, 1, 52, true),
            (1, 2, 62, true),
            (1, 1, 63, false),
            (2, 2, 63, false),
            (2, 2, 13, true),
            (2, 2, 20, true),
        ] {
            let mut mem = FakeMem::new(0x10_0000);
            let (paging, entries) = pae(&mut mem, 0x20, gva, leaf_level, 0x40_0000, nxe);
            let (entry_gpa, entry) = entry_at(&mem, &entries, level);
            mem.write_u64(entry_gpa, entry | 1 << bit);
            assert_eq!(
                translate(&mem, &paging, gva),
                Err(WalkFault::ReservedBits {
                    level,
                    entry_gpa,
                    entry: entry | 1 << bit
                }),
                "leaf {leaf_level} level {level} bit {bit}"
            );
        }
    }

    #[test]
    fn pae_rights_and_width() {
        let gva = 0x4020_3000;
        let mut mem = FakeMem::new(0x10_0000);
        let (paging, entries) = pae(&mut mem, 0x20, gva, 1, 0x40_0000, true);
        // The PDPTE carries only P, yet the page is writable and user.
        let t = translate(&mem, &paging, gva).unwrap();
        assert!(t.writable && t.user && t.executable);
        let (pde_gpa, pde) = entry_at(&mem, &entries, 2);
        mem.write_u64(pde_gpa, (pde & !PTE_US) | PTE_XD);
        let t = translate(&mem, &paging, gva).unwrap();
        assert!(t.writable && !t.user && !t.executable);
        assert_eq!(
            translate(&mem, &paging, 1 << 32),
            Err(WalkFault::AddressTooWide { gva: 1 << 32 })
        );
    }

    /// A 32-bit hierarchy: the page directory at 0x1000 and, for 4 KiB
    /// leaves, one page table. Returns the state and the PDE's and (if any)
    /// the PTE's GPA.
    fn bits32(mem: &mut FakeMem, gva: u64, leaf: u32, pse: bool) -> (PagingState, u64, u64) {
        let directory = mem.table();
        let pde_gpa = directory + ((gva >> 22) & 0x3ff) * 4;
        let mut pte_gpa = 0;
        if pse {
            mem.write_u32(pde_gpa, leaf | PTE_PS as u32 | PWU as u32);
        } else {
            let table = mem.table();
            mem.write_u32(pde_gpa, table as u32 | PWU as u32);
            pte_gpa = table + ((gva >> 12) & 0x3ff) * 4;
            mem.write_u32(pte_gpa, leaf | PWU as u32);
        }
        let paging = state(PagingMode::Bits32, directory, CR4_PSE, false);
        (paging, pde_gpa, pte_gpa)
    }

    #[test]
    fn bits32_4k_and_4m_pages() {
        for gva in [0x0012_3abc_u64, 0xc000_0001, 0xffff_ffff] {
            let mut mem = FakeMem::new(0x10_0000);
            let (paging, _, _) = bits32(&mut mem, gva, 0x0abc_d000, false);
            let t = translate(&mem, &paging, gva).unwrap();
            assert_eq!((t.gpa, t.page_size), (0x0abc_d000 | (gva & 0xfff), KIB4));
            assert!(t.writable && t.user && t.executable);

            let mut mem = FakeMem::new(0x10_0000);
            let (paging, _, _) = bits32(&mut mem, gva, 0x0ac0_0000, true);
            let t = translate(&mem, &paging, gva).unwrap();
            assert_eq!(
                (t.gpa, t.page_size),
                (0x0ac0_0000 | (gva & (MIB4 - 1)), MIB4)
            );
        }
    }

    #[test]
    fn bits32_pse36_and_pat() {
        let gva = 0x0050_1234;
        let mut mem = FakeMem::new(0x10_0000);
        // Bits 20:13 = 0xa5 give physical bits 39:32; bit 12 is PAT.
        let (paging, pde_gpa, _) = bits32(&mut mem, gva, 0x0ac0_0000 | 0xa5 << 13 | 1 << 12, true);
        assert_eq!(
            translate(&mem, &paging, gva).unwrap().gpa,
            0xa5_0ac0_0000 | (gva & (MIB4 - 1))
        );
        // Bit 21 is reserved (M = 40), and so are 21:17 with MAXPHYADDR 36.
        let pde = u64::from(mem.read_u32(pde_gpa).unwrap());
        mem.write_u32(pde_gpa, (pde | 1 << 21) as u32);
        assert_eq!(
            translate(&mem, &paging, gva),
            Err(WalkFault::ReservedBits {
                level: 2,
                entry_gpa: pde_gpa,
                entry: pde | 1 << 21
            })
        );
        mem.write_u32(pde_gpa, pde as u32);
        assert_eq!(
            translate_with_maxphyaddr(&mem, &paging, gva, 36),
            Err(WalkFault::ReservedBits {
                level: 2,
                entry_gpa: pde_gpa,
                entry: pde
            })
        );
    }

    #[test]
    fn bits32_ps_is_ignored_without_cr4_pse() {
        let gva = 0x0040_2345;
        let mut mem = FakeMem::new(0x10_0000);
        let (mut paging, pde_gpa, pte_gpa) = bits32(&mut mem, gva, 0x0009_9000, false);
        let pde = mem.read_u32(pde_gpa).unwrap();
        mem.write_u32(pde_gpa, pde | PTE_PS as u32);
        paging.cr4 &= !CR4_PSE;
        let t = translate(&mem, &paging, gva).unwrap();
        assert_eq!((t.gpa, t.page_size), (0x0009_9345, KIB4));
        // With CR4.PSE the same PDE maps a 4 MiB page at its own frame.
        paging.cr4 |= CR4_PSE;
        let t = translate(&mem, &paging, gva).unwrap();
        assert_eq!(t.page_size, MIB4);
        assert_ne!(pte_gpa, 0);
    }

    #[test]
    fn bits32_not_present_rights_and_width() {
        let gva = 0x8040_2345;
        let mut mem = FakeMem::new(0x10_0000);
        let (paging, pde_gpa, pte_gpa) = bits32(&mut mem, gva, 0x0009_9000, false);
        let pde = mem.read_u32(pde_gpa).unwrap();
        let pte = mem.read_u32(pte_gpa).unwrap();

        mem.write_u32(pde_gpa, pde & !(PTE_RW as u32));
        mem.write_u32(pte_gpa, pte & !(PTE_US as u32));
        let t = translate(&mem, &paging, gva).unwrap();
        assert!(!t.writable && !t.user && t.executable);

        mem.write_u32(pte_gpa, pte & !(PTE_P as u32));
        assert_eq!(
            translate(&mem, &paging, gva),
            Err(WalkFault::NotPresent {
                level: 1,
                entry_gpa: pte_gpa
            })
        );
        mem.write_u32(pde_gpa, 0);
        assert_eq!(
            translate(&mem, &paging, gva),
            Err(WalkFault::NotPresent {
                level: 2,
                entry_gpa: pde_gpa
            })
        );
        assert_eq!(
            translate(&mem, &paging, 0x1_0000_0000),
            Err(WalkFault::AddressTooWide { gva: 0x1_0000_0000 })
        );
    }

    #[test]
    fn faults_display_on_one_line() {
        let faults = [
            (
                WalkFault::NotPresent {
                    level: 2,
                    entry_gpa: 0x3008,
                },
                "not mapped: PDE at gpa 0x3008 not present",
            ),
            (
                WalkFault::ReservedBits {
                    level: 5,
                    entry_gpa: 0x1000,
                    entry: 0x83,
                },
                "PML5E at gpa 0x1000 sets reserved bits: 0x83",
            ),
            (
                WalkFault::NonCanonical { gva: 1 << 47 },
                "gva 0x800000000000 is not canonical",
            ),
            (
                WalkFault::OutsideRam { gpa: 0x4000_0000 },
                "page-table entry at gpa 0x40000000 lies outside guest memory",
            ),
            (
                WalkFault::AddressTooWide { gva: 1 << 32 },
                "gva 0x100000000 is wider than 32 bits in a 32-bit paging mode",
            ),
        ];
        for (fault, text) in faults {
            assert_eq!(fault.to_string(), text);
        }
    }

    #[test]
    fn guest_memory_mmap_reads_tables() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let gva = 0xffff_8000_0020_1234_u64;
        // PML4 at 0x1000, PDPT at 0x2000, PD at 0x3000, 2 MiB page at 6 MiB.
        let writes = [
            (slot(0x1000, gva, 4), 0x2000 | PWU),
            (slot(0x2000, gva, 3), 0x3000 | PWU),
            (slot(0x3000, gva, 2), 0x60_0000 | PTE_PS | PTE_P),
        ];
        for (gpa, entry) in writes {
            mem.write_obj(entry, GuestAddress(gpa)).unwrap();
        }
        let paging = state(PagingMode::Level4, 0x1000, 0, true);
        let t = translate(&mem, &paging, gva).unwrap();
        assert_eq!(t.gpa, 0x60_1234);
        assert_eq!(t.page_size, MIB2);
        assert!(!t.writable && !t.user && t.executable);

        assert_eq!(mem.read_u32(0x1000 + 8 * 256 + 4), Some(0));
        assert_eq!(mem.read_u64(0x10_0000 - 4), None);
        let outside = state(PagingMode::Level4, 0x20_0000, 0, true);
        assert_eq!(
            translate(&mem, &outside, gva),
            Err(WalkFault::OutsideRam {
                gpa: slot(0x20_0000, gva, 4)
            })
        );
    }

    /// Memory whose every aligned word is noise derived from a seed, up to
    /// `limit`; `addr_mask` keeps the noise's frame bits small so that
    /// walks mostly stay inside memory and go deep.
    #[derive(Debug)]
    struct NoiseMem {
        seed: u64,
        limit: u64,
        addr_mask: u64,
    }

    impl NoiseMem {
        fn word(&self, gpa: u64) -> u64 {
            // splitmix64
            let mut z = self.seed ^ gpa.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            (z & !bits(12, 51)) | (z & self.addr_mask)
        }
    }

    impl PhysRead for NoiseMem {
        fn read_u64(&self, gpa: u64) -> Option<u64> {
            (gpa.checked_add(8)? <= self.limit).then(|| self.word(gpa))
        }

        fn read_u32(&self, gpa: u64) -> Option<u32> {
            (gpa.checked_add(4)? <= self.limit).then(|| self.word(gpa) as u32)
        }
    }

    fn noise_mem() -> impl Strategy<Value = NoiseMem> {
        (
            any::<u64>(),
            prop_oneof![Just(0u64), 0..0x10_0000u64, Just(u64::MAX)],
            prop_oneof![Just(bits(12, 19)), Just(bits(12, 51)), Just(0)],
        )
            .prop_map(|(seed, limit, addr_mask)| NoiseMem {
                seed,
                limit,
                addr_mask,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn translate_never_panics(
            mem in noise_mem(),
            cr0 in any::<u64>(),
            cr3 in prop_oneof![any::<u64>(), 0..0x10_0000u64],
            cr4 in any::<u64>(),
            efer in any::<u64>(),
            gva in prop_oneof![any::<u64>(), 0..0x1_0000_0000u64, Just(u64::MAX)],
            maxphyaddr in any::<u8>(),
        ) {
            let paging = PagingState { cr0, cr3, cr4, efer };
            let result = translate_with_maxphyaddr(&mem, &paging, gva, maxphyaddr);
            let _ = translate(&mem, &paging, gva);
            if let Ok(t) = result {
                prop_assert!(t.page_size.is_power_of_two() && t.page_size >= KIB4);
                prop_assert_eq!(t.gpa & (t.page_size - 1), gva & (t.page_size - 1));
                prop_assert!(t.gpa < 1 << 52);
            }
            if let Err(fault) = result {
                prop_assert!(!fault.to_string().contains('\n'));
            }
        }
    }
}
