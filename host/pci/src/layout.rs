//! Where PCI lives in the guest's address spaces, and the check that it
//! collides with nothing else the platform puts there.
//!
//! The default layout, below 4 GiB (guest RAM ends at or below
//! 0xC000_0000, the start of the MMIO hole):
//!
//! | range | what |
//! |---|---|
//! | 0xC000_0000..0xE800_0000 | left to MMIO devices that policies model (e.g. 0xD000_0000, 0xD100_0000), and unclaimed (tests read 0xE000_0000 as all-ones) |
//! | 0xE800_0000..0xF800_0000 | 32-bit BAR window, 256 MiB |
//! | 0xF800_0000..0xF810_0000 | ECAM, bus 0 only (1 MiB) |
//! | 0xFEC0_0000, 0xFED0_0000, 0xFEE0_0000.. | IOAPIC, HPET, LAPIC and the MSI address range |
//! | 0xFFFB_C000..0xFFFC_0000 | KVM's identity-map page and TSS |
//!
//! Above 4 GiB, 0x40_0000_0000..0x80_0000_0000 (256 GiB..512 GiB) holds
//! 64-bit BARs too large for the 32-bit window; it needs a guest
//! MAXPHYADDR of at least 39 bits. Port I/O BARs go in 0xC000..0x10000,
//! clear of the legacy ISA ports and of 0xCF8-0xCFF.

use thiserror::Error;

use crate::ecam::ECAM_BUS_SIZE;
use crate::host_bridge::CONFIG_ADDRESS_PORT;

/// A range of guest-physical addresses or of ports: `base..base + size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Window {
    /// The first address.
    pub base: u64,
    /// The length in bytes.
    pub size: u64,
}

impl Window {
    /// `base..base + size`.
    pub const fn new(base: u64, size: u64) -> Window {
        Window { base, size }
    }

    /// One past the last address; saturates for a window that wraps
    /// around, which [`PciLayout::check`] refuses.
    pub const fn end(&self) -> u64 {
        self.base.saturating_add(self.size)
    }

    /// True if `addr` lies in the window.
    pub const fn contains(&self, addr: u64) -> bool {
        addr >= self.base && addr < self.end()
    }

    /// True if the two windows share an address.
    pub const fn overlaps(&self, other: &Window) -> bool {
        self.base < other.end() && other.base < self.end()
    }
}

/// One MiB, the ECAM and page-table granularity the checks use.
const MIB: u64 = 1 << 20;
/// The first address above the 32-bit space.
const FOUR_GIB: u64 = 1 << 32;

/// Fixed parts of the x86 PC platform (as KVM and the VMM set it up) that
/// no PCI window may cover, by name.
pub const PLATFORM_RESERVED: &[(&str, Window)] = &[
    ("the IOAPIC", Window::new(0xFEC0_0000, 0x1000)),
    ("the HPET", Window::new(0xFED0_0000, 0x1000)),
    // A DMA write here is an interrupt, not a memory access: no BAR may
    // sit in it, or a device's MSI would land in another device.
    (
        "the LAPIC and MSI address range",
        Window::new(0xFEE0_0000, 0x10_0000),
    ),
    (
        "KVM's identity-map and TSS pages",
        Window::new(0xFFFB_C000, 0x4000),
    ),
];

/// Ports the I/O window must avoid: the legacy ISA devices (PIC, PIT,
/// keyboard controller, UARTs, ...) and the configuration ports.
const RESERVED_PORTS: &[(&str, Window)] = &[
    ("the legacy ISA ports", Window::new(0, 0x1000)),
    (
        "the PCI configuration ports",
        Window::new(CONFIG_ADDRESS_PORT as u64, 8),
    ),
];

/// The guest-physical and port windows of the PCI segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciLayout {
    /// The ECAM window; the bus decodes bus 0, its first MiB.
    pub ecam: Window,
    /// Where BARs that must stay below 4 GiB go.
    pub mmio32: Window,
    /// Where large 64-bit BARs go; `None` puts every BAR below 4 GiB.
    pub mmio64: Option<Window>,
    /// Where I/O BARs go.
    pub io: Window,
}

impl PciLayout {
    /// The 32-bit BAR window: 256 MiB, ending where ECAM starts.
    pub const MMIO32: Window = Window::new(0xE800_0000, 0x1000_0000);
    /// The ECAM window: bus 0 only.
    pub const ECAM: Window = Window::new(0xF800_0000, ECAM_BUS_SIZE);
    /// The 64-bit BAR window: 256 GiB at 256 GiB, inside a 39-bit
    /// physical address space.
    pub const MMIO64: Window = Window::new(0x40_0000_0000, 0x40_0000_0000);
    /// The I/O BAR window.
    pub const IO: Window = Window::new(0xC000, 0x4000);

    /// Checks that the windows are well formed and overlap neither each
    /// other, the platform's fixed ranges, nor guest RAM `0..ram_end`.
    pub fn check(&self, ram_end: u64) -> Result<(), LayoutError> {
        let mmio = [
            ("ECAM", Some(self.ecam)),
            ("32-bit MMIO", Some(self.mmio32)),
            ("64-bit MMIO", self.mmio64),
        ];
        let mmio: Vec<(&'static str, Window)> = mmio
            .into_iter()
            .filter_map(|(name, w)| w.map(|w| (name, w)))
            .collect();
        for &(name, w) in &mmio {
            if w.size == 0 || w.base.checked_add(w.size).is_none() {
                return Err(invalid(name, w, "is empty or wraps around"));
            }
        }
        if self.mmio32.end() > FOUR_GIB {
            return Err(invalid(
                "32-bit MMIO",
                self.mmio32,
                "must end at or below 4 GiB",
            ));
        }
        // ECAM decodes bus numbers from address bits 27:20, so it must
        // start on a bus boundary and hold whole buses.
        if !self.ecam.base.is_multiple_of(MIB)
            || !self.ecam.size.is_multiple_of(MIB)
            || self.ecam.size > 256 * MIB
        {
            return Err(invalid(
                "ECAM",
                self.ecam,
                "must be 1 MiB aligned and hold 1 to 256 whole buses",
            ));
        }
        let ram = Window::new(0, ram_end);
        for (i, &(name, w)) in mmio.iter().enumerate() {
            let others = mmio[i + 1..]
                .iter()
                .copied()
                .chain(PLATFORM_RESERVED.iter().copied())
                .chain(std::iter::once(("guest RAM", ram)));
            for (other, o) in others {
                if o.size != 0 && w.overlaps(&o) {
                    return Err(LayoutError::Overlap {
                        window: name,
                        base: w.base,
                        size: w.size,
                        other,
                    });
                }
            }
        }
        let io = self.io;
        if io.size == 0 || io.end() > 0x1_0000 {
            return Err(invalid(
                "I/O",
                io,
                "must be non-empty and below port 0x10000",
            ));
        }
        if let Some(&(other, _)) = RESERVED_PORTS.iter().find(|(_, r)| io.overlaps(r)) {
            return Err(LayoutError::Overlap {
                window: "I/O",
                base: io.base,
                size: io.size,
                other,
            });
        }
        Ok(())
    }
}

impl Default for PciLayout {
    fn default() -> Self {
        PciLayout {
            ecam: PciLayout::ECAM,
            mmio32: PciLayout::MMIO32,
            mmio64: Some(PciLayout::MMIO64),
            io: PciLayout::IO,
        }
    }
}

fn invalid(window: &'static str, w: Window, reason: &'static str) -> LayoutError {
    LayoutError::Invalid {
        window,
        base: w.base,
        size: w.size,
        reason,
    }
}

/// Why a [`PciLayout`] cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LayoutError {
    /// A window collides with another window, the platform or RAM.
    #[error("the {window} window {base:#x}+{size:#x} overlaps {other}")]
    Overlap {
        /// The window at fault.
        window: &'static str,
        /// Its base.
        base: u64,
        /// Its size.
        size: u64,
        /// What it overlaps.
        other: &'static str,
    },
    /// A window is malformed.
    #[error("the {window} window {base:#x}+{size:#x} {reason}")]
    Invalid {
        /// The window at fault.
        window: &'static str,
        /// Its base.
        base: u64,
        /// Its size.
        size: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The largest RAM the VMM gives a guest: up to the MMIO hole.
    const RAM_END: u64 = 0xC000_0000;

    #[test]
    fn the_default_layout_fits_the_platform() {
        PciLayout::default().check(RAM_END).unwrap();
        let layout = PciLayout::default();
        for fixed in [0xFEC0_0000u64, 0xFEE0_0000, 0xFED0_0000] {
            assert!(!layout.mmio32.contains(fixed) && !layout.ecam.contains(fixed));
        }
        // Addresses that existing policies and guests use stay outside.
        for used in [0xD000_0000u64, 0xD100_0000, 0xE000_0000] {
            assert!(!layout.mmio32.contains(used) && !layout.ecam.contains(used));
        }
        assert!(!layout.io.contains(0xCF8) && !layout.io.contains(0x3F8));
    }

    #[test]
    fn windows_over_the_platform_ram_or_each_other_are_refused() {
        let over_ioapic = PciLayout {
            mmio32: Window::new(0xFE00_0000, 0x100_0000),
            ..PciLayout::default()
        };
        assert!(matches!(
            over_ioapic.check(RAM_END),
            Err(LayoutError::Overlap {
                other: "the IOAPIC",
                ..
            })
        ));
        let over_ecam = PciLayout {
            mmio32: Window::new(0xF000_0000, 0x900_0000),
            ..PciLayout::default()
        };
        assert!(matches!(
            over_ecam.check(RAM_END),
            Err(LayoutError::Overlap {
                window: "ECAM",
                other: "32-bit MMIO",
                ..
            })
        ));
        assert!(matches!(
            PciLayout::default().check(0xF000_0000),
            Err(LayoutError::Overlap {
                other: "guest RAM",
                ..
            })
        ));
        let over_cf8 = PciLayout {
            io: Window::new(0xC00, 0x1000),
            ..PciLayout::default()
        };
        assert!(over_cf8.check(RAM_END).is_err());
    }

    #[test]
    fn malformed_windows_are_refused() {
        let unaligned_ecam = PciLayout {
            ecam: Window::new(0xF808_0000, ECAM_BUS_SIZE),
            ..PciLayout::default()
        };
        assert!(matches!(
            unaligned_ecam.check(RAM_END),
            Err(LayoutError::Invalid { window: "ECAM", .. })
        ));
        let above_4g = PciLayout {
            mmio32: Window::new(0xF900_0000, 0x1000_0000),
            ..PciLayout::default()
        };
        assert!(above_4g.check(RAM_END).is_err());
        let wraps = PciLayout {
            mmio64: Some(Window::new(u64::MAX - 0xfff, 0x2000)),
            ..PciLayout::default()
        };
        assert!(wraps.check(RAM_END).is_err());
        let message = above_4g.check(RAM_END).unwrap_err().to_string();
        assert_eq!(
            message,
            "the 32-bit MMIO window 0xf9000000+0x10000000 must end at or below 4 GiB"
        );
    }
}
