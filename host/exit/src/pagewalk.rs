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

use crate::GuestRam;
use vm_memory::{Bytes, GuestAddress};

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
/// Implemented for [`GuestRam`]; tests implement it over crafted
/// memory.
pub trait PhysRead {
    /// The 8 bytes at `gpa`, or `None` if any of them is outside memory.
    fn read_u64(&self, gpa: u64) -> Option<u64>;
    /// The 4 bytes at `gpa`, or `None` if any of them is outside memory.
    fn read_u32(&self, gpa: u64) -> Option<u32>;
}

impl PhysRead for GuestRam {
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
mod tests;
