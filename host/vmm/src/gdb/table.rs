//! gdb's breakpoints and watchpoints, and which debug-register slots they
//! hold: the same slots on every vCPU, never one a policy uses on any
//! vCPU (the sharing rule, docs/gdb.md).

use gdbstub::target::ext::breakpoints::WatchKind;
use wasmvisor_exit::{HwBreakpoint, HwBreakpointKind};

/// What gdb asked for that a slot carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// `hbreak` (Z1).
    Hardware,
    /// `break` (Z0) on a backend that does not trap int3.
    Software,
    /// `watch`, `rwatch`, `awatch` (Z2-Z4).
    Watch(WatchKind),
}

/// One slot of gdb's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Entry {
    pub bp: HwBreakpoint,
    pub origin: Origin,
    /// The length gdb gave (a watchpoint's).
    pub len: u64,
}

/// An int3 gdb planted: where, and the byte it replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Int3 {
    pub addr: u64,
    pub gpa: u64,
    pub original: u8,
}

/// A write watchpoint kept by write-protecting its pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Watched {
    pub addr: u64,
    pub len: u64,
    /// Its guest-physical pieces, one per page it spans.
    pub pieces: Vec<(u64, u64)>,
}

/// Why a slot cannot be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotError {
    /// All four are taken (by gdb or by policies).
    Full,
    /// DR0-3 watch 1, 2, 4 or 8 aligned bytes.
    BadLength,
}

/// gdb's breakpoints.
#[derive(Debug, Default)]
pub(crate) struct Table {
    pub slots: [Option<Entry>; 4],
    pub int3: Vec<Int3>,
    pub watched: Vec<Watched>,
}

impl Table {
    /// Takes the first slot neither gdb nor a policy (`policy_slots`, the
    /// slots any vCPU's policies use) holds.
    pub fn add(&mut self, entry: Entry, policy_slots: u8) -> Result<u8, SlotError> {
        let (kind, len) = (entry.bp.kind, entry.bp.len);
        if kind != HwBreakpointKind::Execute
            && (!matches!(len, 1 | 2 | 4 | 8) || !entry.bp.gva.is_multiple_of(u64::from(len)))
        {
            return Err(SlotError::BadLength);
        }
        let free = (0..4).find(|&i| self.slots[i].is_none() && policy_slots & (1 << i) == 0);
        let i = free.ok_or(SlotError::Full)?;
        self.slots[i] = Some(entry);
        Ok(i as u8)
    }

    /// Frees the slot holding `bp` for `origin`; whether there was one.
    pub fn remove(&mut self, bp: HwBreakpoint, origin: Origin) -> bool {
        let at = self.slots.iter().position(
            |s| matches!(s, Some(e) if e.origin == origin && e.bp.gva == bp.gva && e.bp.kind == bp.kind),
        );
        match at {
            Some(i) => {
                self.slots[i] = None;
                true
            }
            None => false,
        }
    }

    /// The slots gdb holds, as DR-style bits.
    pub fn mask(&self) -> u8 {
        (0..4)
            .filter(|&i| self.slots[i].is_some())
            .fold(0, |m, i| m | (1 << i))
    }

    /// The breakpoints to program, by slot.
    pub fn hw(&self) -> [Option<HwBreakpoint>; 4] {
        self.slots.map(|s| s.map(|e| e.bp))
    }

    /// Whether gdb has an execute breakpoint (any kind) at `addr`.
    pub fn breaks_at(&self, addr: u64) -> bool {
        self.int3.iter().any(|b| b.addr == addr)
            || self.slots.iter().flatten().any(|e| {
                e.bp.gva == addr && matches!(e.origin, Origin::Hardware | Origin::Software)
            })
    }

    /// Whether the breakpoint at `addr` is one gdb asked for as `break`.
    pub fn software_at(&self, addr: u64) -> bool {
        self.int3.iter().any(|b| b.addr == addr)
            || self
                .slots
                .iter()
                .flatten()
                .any(|e| e.bp.gva == addr && e.origin == Origin::Software)
    }

    /// The kind of gdb's watchpoint at `addr`, if it has one.
    pub fn watch_at(&self, addr: u64) -> Option<WatchKind> {
        if self.watched.iter().any(|w| w.addr == addr) {
            return Some(WatchKind::Write);
        }
        self.slots.iter().flatten().find_map(|e| match e.origin {
            Origin::Watch(k) if e.bp.gva == addr => Some(k),
            _ => None,
        })
    }

    /// The guest-physical pages the page watches span.
    pub fn watched_pages(&self) -> Vec<u64> {
        let mut pages: Vec<u64> = self
            .watched
            .iter()
            .flat_map(|w| w.pieces.iter().map(|&(gpa, _)| gpa & !0xfff))
            .collect();
        pages.sort_unstable();
        pages.dedup();
        pages
    }
}

/// The DR kind for a gdb watch kind: x86 has no read-only breakpoint, so
/// `rwatch` watches accesses and gdb sorts out the reads.
pub(crate) fn dr_kind(kind: WatchKind) -> HwBreakpointKind {
    match kind {
        WatchKind::Write => HwBreakpointKind::Write,
        WatchKind::Read | WatchKind::ReadWrite => HwBreakpointKind::ReadWrite,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(gva: u64, origin: Origin) -> Entry {
        Entry {
            bp: HwBreakpoint {
                kind: HwBreakpointKind::Execute,
                gva,
                len: 1,
            },
            origin,
            len: 1,
        }
    }

    #[test]
    fn slots_skip_the_policies_and_run_out_at_four() {
        let mut t = Table::default();
        // A policy holds slot 1 on some vCPU.
        assert_eq!(t.add(exec(0x10, Origin::Hardware), 0b0010), Ok(0));
        assert_eq!(t.add(exec(0x20, Origin::Software), 0b0010), Ok(2));
        assert_eq!(t.add(exec(0x30, Origin::Hardware), 0b0010), Ok(3));
        assert_eq!(
            t.add(exec(0x40, Origin::Hardware), 0b0010),
            Err(SlotError::Full)
        );
        assert_eq!(t.mask(), 0b1101);
        assert!(t.breaks_at(0x20) && t.software_at(0x20) && !t.software_at(0x10));
        assert!(!t.remove(exec(0x20, Origin::Hardware).bp, Origin::Hardware));
        assert!(t.remove(exec(0x20, Origin::Software).bp, Origin::Software));
        assert_eq!(t.add(exec(0x40, Origin::Hardware), 0), Ok(1));
    }

    #[test]
    fn watchpoints_need_an_aligned_length_of_1_2_4_or_8() {
        let mut t = Table::default();
        let watch = |gva, len| Entry {
            bp: HwBreakpoint {
                kind: HwBreakpointKind::Write,
                gva,
                len,
            },
            origin: Origin::Watch(WatchKind::Write),
            len: u64::from(len),
        };
        assert_eq!(t.add(watch(0x1004, 8), 0), Err(SlotError::BadLength));
        assert_eq!(t.add(watch(0x1004, 3), 0), Err(SlotError::BadLength));
        assert_eq!(t.add(watch(0x1008, 8), 0), Ok(0));
        assert_eq!(t.watch_at(0x1008), Some(WatchKind::Write));
        assert_eq!(dr_kind(WatchKind::Read), HwBreakpointKind::ReadWrite);
        t.watched.push(Watched {
            addr: 0x2ff8,
            len: 16,
            pieces: vec![(0x5ff8, 8), (0x6000, 8)],
        });
        assert_eq!(t.watched_pages(), vec![0x5000, 0x6000]);
    }
}
