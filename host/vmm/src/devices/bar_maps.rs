//! Passthrough BAR memory mapped into the guest as memslots.
//!
//! A passthrough device's mappable BAR areas (`PciDevice::direct_maps`)
//! become KVM memslots wherever the guest has placed and enabled the BAR,
//! so its accesses there run without exits. Policies come first,
//! though: every page a policy subscribes to with an MMIO range stays
//! trapped (the memslot is split around it), so the policy sees, answers
//! or vetoes those accesses as it does any other. The map follows the
//! guest's BAR programming (the bus's route generation) and the policies
//! loaded (at start and after each hot swap).

use std::collections::HashSet;
use std::sync::Arc;

use wasmvisor_exit::GpaRange;
use wasmvisor_kvm::{DeviceSlot, MemSlots};
use wasmvisor_pci::GuestMapping;

const PAGE: u64 = 4096;

/// The memslots for `maps`, leaving out every page that overlaps one of
/// the `trapped` ranges.
pub fn plan(maps: &[GuestMapping], trapped: &[GpaRange]) -> Vec<DeviceSlot> {
    let holes: Vec<(u64, u64)> = trapped
        .iter()
        .filter(|t| t.len > 0)
        .map(|t| {
            let start = t.base & !(PAGE - 1);
            let end = t.base.saturating_add(t.len).saturating_add(PAGE - 1) & !(PAGE - 1);
            (start, end)
        })
        .collect();
    let mut slots = Vec::new();
    for m in maps {
        let mut pieces = vec![(m.gpa, m.gpa + m.size)];
        for &(hole_start, hole_end) in &holes {
            pieces = pieces
                .into_iter()
                .flat_map(|(start, end)| {
                    if hole_end <= start || end <= hole_start {
                        return vec![(start, end)];
                    }
                    let mut left = Vec::new();
                    if start < hole_start {
                        left.push((start, hole_start));
                    }
                    if hole_end < end {
                        left.push((hole_end, end));
                    }
                    left
                })
                .collect();
        }
        slots.extend(pieces.into_iter().map(|(start, end)| DeviceSlot {
            gpa: start,
            size: end - start,
            host_addr: m.host_addr + (start - m.gpa),
        }));
    }
    slots
}

/// The memslots installed for passthrough BARs.
pub struct BarMaps {
    slots: Arc<MemSlots>,
    installed: Vec<(DeviceSlot, u32)>,
    trapped: Vec<GpaRange>,
    /// The most bytes mapped at once.
    peak: u64,
}

impl BarMaps {
    pub fn new(slots: Arc<MemSlots>) -> BarMaps {
        BarMaps {
            slots,
            installed: Vec::new(),
            trapped: Vec::new(),
            peak: 0,
        }
    }

    /// Sets the MMIO ranges policies subscribe to; call [`BarMaps::sync`]
    /// after.
    pub fn set_trapped(&mut self, trapped: Vec<GpaRange>) {
        self.trapped = trapped;
    }

    /// Installs the memslots `maps` call for and removes the others. A
    /// slot KVM refuses is logged and left trapped: slower, still correct.
    pub fn sync(&mut self, maps: &[GuestMapping]) {
        let wanted: HashSet<DeviceSlot> = plan(maps, &self.trapped).into_iter().collect();
        // Slots cannot overlap: remove the stale ones first.
        let (keep, stale): (Vec<_>, Vec<_>) = std::mem::take(&mut self.installed)
            .into_iter()
            .partition(|(d, _)| wanted.contains(d));
        for (device, slot) in stale {
            if let Err(e) = self.slots.unmap_device(slot) {
                eprintln!(
                    "wasmvisor: warning: cannot unmap BAR memory at {:#x}: {e}",
                    device.gpa
                );
            }
        }
        self.installed = keep;
        for device in wanted {
            if self.installed.iter().any(|(d, _)| *d == device) {
                continue;
            }
            match self.slots.map_device(device) {
                Ok(slot) => self.installed.push((device, slot)),
                Err(e) => eprintln!(
                    "wasmvisor: warning: BAR memory at {:#x} stays trapped: {e}",
                    device.gpa
                ),
            }
        }
        self.peak = self.peak.max(self.mapped_bytes());
    }

    /// Bytes mapped now.
    pub fn mapped_bytes(&self) -> u64 {
        self.installed.iter().map(|(d, _)| d.size).sum()
    }

    /// The most bytes mapped at once so far.
    pub fn peak_bytes(&self) -> u64 {
        self.peak
    }

    /// Removes every slot: before the memory behind them is unmapped.
    pub fn clear(&mut self) {
        self.sync(&[]);
    }
}

impl Drop for BarMaps {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(gpa: u64, size: u64, host_addr: u64) -> GuestMapping {
        GuestMapping {
            gpa,
            size,
            host_addr,
        }
    }

    fn slot(gpa: u64, size: u64, host_addr: u64) -> DeviceSlot {
        DeviceSlot {
            gpa,
            size,
            host_addr,
        }
    }

    #[test]
    fn nothing_trapped_maps_everything() {
        let maps = [map(0xe801_0000, 0x1_0000, 0x7f00_0000_0000)];
        assert_eq!(
            plan(&maps, &[]),
            [slot(0xe801_0000, 0x1_0000, 0x7f00_0000_0000)]
        );
    }

    #[test]
    fn a_trapped_range_splits_the_slot_at_page_bounds() {
        let maps = [map(0xe801_0000, 0x1_0000, 0x7f00_0000_0000)];
        // Eight bytes in the third page trap the whole page.
        let trapped = [GpaRange {
            base: 0xe801_2010,
            len: 8,
        }];
        assert_eq!(
            plan(&maps, &trapped),
            [
                slot(0xe801_0000, 0x2000, 0x7f00_0000_0000),
                slot(0xe801_3000, 0xd000, 0x7f00_0000_3000),
            ]
        );
    }

    #[test]
    fn ranges_at_the_edges_and_across_pages_and_outside() {
        let maps = [map(0x1_0000, 0x4000, 0x10_0000)];
        let trapped = [
            GpaRange {
                base: 0x1_0000,
                len: 1,
            },
            GpaRange {
                base: 0x1_2fff,
                len: 2,
            },
            GpaRange {
                base: 0x9_0000,
                len: 0x1000,
            },
            GpaRange { base: 0, len: 0 },
        ];
        // Pages 0, 2 and 3 are trapped; page 1 stays mapped.
        assert_eq!(plan(&maps, &trapped), [slot(0x1_1000, 0x1000, 0x10_1000)]);
        let everything = [GpaRange {
            base: 0,
            len: u64::MAX,
        }];
        assert!(plan(&maps, &everything).is_empty());
    }
}
