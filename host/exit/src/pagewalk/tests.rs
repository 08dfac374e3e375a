//! Tests of the page-table walk ([`super::translate`]), on fake guest memory
//! built page by page.

use super::*;
use crate::GuestRam;
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

/// Clears the present bit of the entry at `level` and checks that the walk
/// of `gva` stops there, naming that entry.
fn assert_walk_stops_when_absent(
    mem: &mut FakeMem,
    paging: &PagingState,
    entries: &[(u8, u64)],
    gva: u64,
    level: u8,
) {
    let (entry_gpa, entry) = entry_at(mem, entries, level);
    mem.write_u64(entry_gpa, entry & !PTE_P);
    assert_eq!(
        translate(mem, paging, gva),
        Err(WalkFault::NotPresent { level, entry_gpa })
    );
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
                assert_walk_stops_when_absent(&mut mem, &paging, &entries, gva, level);
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
            assert_walk_stops_when_absent(&mut mem, &paging, &entries, gva, level);
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
    let mem = GuestRam::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
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
