//! Finds every page-table page reachable from CR3, reading the tables
//! through guest-physical memory.

use std::collections::BTreeSet;

use wasmvisor_policy_sdk::{host, HostError};

/// CR0.PG: paging on.
const CR0_PG: u64 = 1 << 31;
/// CR4.PSE: 4 MiB pages in 32-bit paging.
const CR4_PSE: u64 = 1 << 4;
/// CR4.PAE: 64-bit entries.
const CR4_PAE: u64 = 1 << 5;
/// CR4.LA57: five-level paging.
const CR4_LA57: u64 = 1 << 12;
/// EFER.LMA: long mode active.
const EFER_LMA: u64 = 1 << 10;

/// Present.
const PTE_P: u64 = 1;
/// Page size: the entry maps a large page instead of pointing to a table.
const PTE_PS: u64 = 1 << 7;
/// Physical address bits of a 64-bit entry.
const ADDR_64: u64 = 0x000f_ffff_ffff_f000;
/// Physical address bits of a 32-bit entry.
const ADDR_32: u64 = 0xffff_f000;

pub const PAGE: u64 = 0x1000;

/// The guest's paging mode, from CR0, CR4 and EFER.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Paging {
    Off,
    /// 32-bit, two levels of 4-byte entries.
    Bits32 {
        pse: bool,
    },
    /// PAE: a 4-entry PDPT, then PDs and PTs.
    Pae,
    /// Long mode, four levels.
    Level4,
    /// Long mode, five levels.
    Level5,
}

impl Paging {
    pub fn detect(cr0: u64, cr4: u64, efer: u64) -> Paging {
        if cr0 & CR0_PG == 0 {
            Paging::Off
        } else if efer & EFER_LMA != 0 {
            if cr4 & CR4_LA57 != 0 {
                Paging::Level5
            } else {
                Paging::Level4
            }
        } else if cr4 & CR4_PAE != 0 {
            Paging::Pae
        } else {
            Paging::Bits32 {
                pse: cr4 & CR4_PSE != 0,
            }
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Paging::Off => "off",
            Paging::Bits32 { .. } => "32-bit",
            Paging::Pae => "pae",
            Paging::Level4 => "4-level",
            Paging::Level5 => "5-level",
        }
    }

    /// The level of the table CR3 points to (1 = page table).
    fn top(self) -> u8 {
        match self {
            Paging::Off => 0,
            Paging::Bits32 { .. } => 2,
            Paging::Pae => 3,
            Paging::Level4 => 4,
            Paging::Level5 => 5,
        }
    }

    /// Where the top table starts and how many bytes it has.
    fn root(self, cr3: u64) -> (u64, u32) {
        match self {
            Paging::Off => (0, 0),
            Paging::Bits32 { .. } => (cr3 & ADDR_32, 4096),
            Paging::Pae => (cr3 & 0xffff_ffe0, 32),
            Paging::Level4 | Paging::Level5 => (cr3 & ADDR_64, 4096),
        }
    }

    fn entry_size(self) -> usize {
        match self {
            Paging::Bits32 { .. } => 4,
            _ => 8,
        }
    }

    fn addr_mask(self) -> u64 {
        match self {
            Paging::Bits32 { .. } => ADDR_32,
            _ => ADDR_64,
        }
    }

    /// True when an entry at `level` with PS set maps a page (a leaf)
    /// rather than pointing to the next table.
    fn ps_is_leaf(self, level: u8) -> bool {
        match self {
            Paging::Bits32 { pse } => pse && level == 2,
            Paging::Pae => level == 2,
            Paging::Level4 | Paging::Level5 => level == 2 || level == 3,
            Paging::Off => false,
        }
    }
}

/// What the walk found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tables {
    /// Page-aligned GPAs of the table pages, in the order they were found
    /// (the top table first).
    pub pages: Vec<u64>,
    /// More tables were reachable than the cap allowed.
    pub truncated: bool,
    /// Tables that could not be read, with the reason.
    pub unreadable: Vec<(u64, HostError)>,
}

/// Walks the tables from `cr3` breadth first, reading each with
/// `read-phys`, and returns the pages that hold them, at most `cap`.
/// Leaves (page-table entries and large pages) are not followed.
pub fn table_pages(paging: Paging, cr3: u64, cap: usize) -> Tables {
    let mut out = Tables::default();
    if paging == Paging::Off || cap == 0 {
        return out;
    }
    let (root, root_len) = paging.root(cr3);
    let mut seen = BTreeSet::new();
    let mut queue = std::collections::VecDeque::new();
    queue.push_back((root, root_len, paging.top()));
    seen.insert(root & !(PAGE - 1));
    while let Some((table, len, level)) = queue.pop_front() {
        out.pages.push(table & !(PAGE - 1));
        if level <= 1 {
            continue;
        }
        let bytes = match host::read_phys(table, len) {
            Ok(b) => b,
            Err(e) => {
                out.unreadable.push((table, e));
                continue;
            }
        };
        let size = paging.entry_size();
        for chunk in bytes.chunks_exact(size) {
            let mut raw = [0u8; 8];
            raw[..size].copy_from_slice(chunk);
            let entry = u64::from_le_bytes(raw);
            if entry & PTE_P == 0 || (entry & PTE_PS != 0 && paging.ps_is_leaf(level)) {
                continue;
            }
            let child = entry & paging.addr_mask();
            if seen.contains(&child) {
                continue;
            }
            if seen.len() >= cap {
                out.truncated = true;
                continue;
            }
            seen.insert(child);
            queue.push_back((child, 4096, level - 1));
        }
    }
    out
}

/// Sorted, merged `[base, base + len)` ranges covering `pages`.
pub fn coalesce(pages: &[u64]) -> Vec<(u64, u64)> {
    let mut sorted = pages.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for page in sorted {
        match out.last_mut() {
            Some((base, len)) if *base + *len == page => *len += PAGE,
            _ => out.push((page, PAGE)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::minios::{self, set32, set64};
    use wasmvisor_policy_sdk::testing::FakeHost;

    fn walk(m: &FakeHost, paging: Paging, cr3: u64, cap: usize) -> Tables {
        m.run(|| table_pages(paging, cr3, cap))
    }

    /// 2 MiB of zeroed RAM.
    fn ram() -> FakeHost {
        let m = FakeHost::new();
        m.map_ram(0, minios::RAM);
        m
    }

    #[test]
    fn detects_modes() {
        assert_eq!(Paging::detect(0x11, 0, 0), Paging::Off);
        assert_eq!(
            Paging::detect(CR0_PG | 1, 0, 0),
            Paging::Bits32 { pse: false }
        );
        assert_eq!(
            Paging::detect(CR0_PG, CR4_PSE, 0),
            Paging::Bits32 { pse: true }
        );
        assert_eq!(Paging::detect(CR0_PG, CR4_PAE, 0), Paging::Pae);
        assert_eq!(
            Paging::detect(CR0_PG, CR4_PAE, EFER_LMA | 0x500),
            Paging::Level4
        );
        assert_eq!(
            Paging::detect(CR0_PG, CR4_PAE | CR4_LA57, EFER_LMA),
            Paging::Level5
        );
        assert_eq!(Paging::Level4.name(), "4-level");
    }

    #[test]
    fn minios_tables_are_the_seven_pages() {
        let t = walk(&minios::host(), Paging::Level4, 0x104000, 64);
        assert_eq!(
            t.pages,
            [0x104000, 0x108000, 0x105000, 0x109000, 0x106000, 0x10a000, 0x107000]
        );
        assert!(!t.truncated && t.unreadable.is_empty());
        assert_eq!(coalesce(&t.pages), [(0x104000, 0x7000)]);
        // CR3's low flag bits (PCD, PWT) do not move the root.
        let t = walk(&minios::host(), Paging::Level4, 0x104018, 64);
        assert_eq!(t.pages.len(), 7);
    }

    #[test]
    fn cap_and_unreadable_tables() {
        let t = walk(&minios::host(), Paging::Level4, 0x104000, 3);
        assert_eq!(t.pages, [0x104000, 0x108000, 0x105000]);
        assert!(t.truncated);
        let t = walk(&minios::host(), Paging::Level4, 0x104000, 0);
        assert!(t.pages.is_empty());
        let m = minios::host();
        set64(&m, 0x106000 + 8, 0x7777_7000 | 0x23); // a PT outside RAM
        let t = walk(&m, Paging::Level4, 0x104000, 64);
        // A PT's page is recorded without being read; only upper levels are.
        assert_eq!(t.pages.len(), 8);
        let m = minios::host();
        set64(&m, 0x105000, 0x5555_5000 | 0x23); // a PD outside RAM
        let t = walk(&m, Paging::Level4, 0x104000, 64);
        assert_eq!(t.unreadable, [(0x5555_5000, HostError::OutOfRange)]);
        let t = walk(&minios::host(), Paging::Level4, 0x900000, 64);
        assert_eq!(t.unreadable.len(), 1);
    }

    #[test]
    fn large_pages_and_loops_are_not_followed() {
        let m = ram();
        set64(&m, 0x1000, 0x2023); // PML4[0] -> PDPT
        set64(&m, 0x1008, 0x1023); // PML4[1] -> PML4 itself (recursive slot)
        set64(&m, 0x2000, 0x4000_0083); // PDPT[0]: 1 GiB page
        set64(&m, 0x2008, 0x3023); // PDPT[1] -> PD
        set64(&m, 0x3000, 0x20_0083); // PD[0]: 2 MiB page
        set64(&m, 0x3008, 0x023); // PD[1] -> PT at GPA 0
        set64(&m, 0x3010, 0x5022); // PD[2]: not present
        let t = walk(&m, Paging::Level4, 0x1000, 64);
        assert_eq!(t.pages, [0x1000, 0x2000, 0x3000, 0x0]);
        // 5-level: one more level on top.
        set64(&m, 0x9000, 0x1023);
        let t = walk(&m, Paging::Level5, 0x9000, 64);
        assert_eq!(t.pages, [0x9000, 0x1000, 0x2000, 0x3000, 0x0]);
    }

    #[test]
    fn pae_and_32_bit() {
        let m = ram();
        // PAE: PDPT at 0x1020 (32-byte aligned), PDPTE[0] -> PD 0x2000.
        set64(&m, 0x1020, 0x2001);
        set64(&m, 0x2000, 0x3023); // PD[0] -> PT 0x3000
        set64(&m, 0x2008, 0x20_00e3); // PD[1]: 2 MiB page
        let t = walk(&m, Paging::Pae, 0x1020, 64);
        assert_eq!(t.pages, [0x1000, 0x2000, 0x3000]);
        // 32-bit: PD at 0x4000, PDE[0] -> PT 0x5000, PDE[1] 4 MiB page.
        set32(&m, 0x4000, 0x5023);
        set32(&m, 0x4004, 0x40_0083);
        let t = walk(&m, Paging::Bits32 { pse: true }, 0x4000, 64);
        assert_eq!(t.pages, [0x4000, 0x5000]);
        // Without PSE, bit 7 is ignored and the entry is a table.
        let t = walk(&m, Paging::Bits32 { pse: false }, 0x4000, 64);
        assert_eq!(t.pages, [0x4000, 0x5000, 0x400000]);
        assert!(walk(&m, Paging::Off, 0x4000, 64).pages.is_empty());
    }

    #[test]
    fn coalescing() {
        assert_eq!(coalesce(&[]), []);
        assert_eq!(
            coalesce(&[0x3000, 0x1000, 0x2000, 0x1000, 0x9000]),
            [(0x1000, 0x3000), (0x9000, 0x1000)]
        );
    }
}
