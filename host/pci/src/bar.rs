//! Base address registers: their kinds, how each encodes in configuration
//! space (flag bits and the mask that makes the sizing protocol work), and
//! an allocator that places them in the windows of a [`PciLayout`].
//!
//! Sizing: a guest writes all-ones to a BAR and reads back which address
//! bits stuck. Only the bits at and above the BAR's size are writable, so
//! the read-back is `!(size - 1)` with the read-only flag bits below; a
//! 64-bit BAR does the same with its upper register for the high half.
//! [`ConfigSpace`](crate::ConfigSpace) implements this with the masks
//! [`Bar::register_masks`] gives.

use std::fmt;

use thiserror::Error;

use crate::layout::{PciLayout, Window};

/// Which address space a BAR decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressSpace {
    /// Guest-physical memory.
    Memory,
    /// Ports.
    Io,
}

/// What kind of region a BAR describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BarKind {
    /// Ports, 4 to 256 bytes.
    Io,
    /// Memory below 4 GiB, one register.
    Mmio32 {
        /// Reads have no side effects, so the guest may map it write-combined.
        prefetchable: bool,
    },
    /// Memory anywhere in 64 bits, two registers (low, then high).
    Mmio64 {
        /// Reads have no side effects, so the guest may map it write-combined.
        prefetchable: bool,
    },
}

impl fmt::Display for BarKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BarKind::Io => "I/O",
            BarKind::Mmio32 { .. } => "32-bit MMIO",
            BarKind::Mmio64 { .. } => "64-bit MMIO",
        })
    }
}

/// Register bit 0: the BAR decodes ports.
const FLAG_IO: u32 = 0x1;
/// Register bits 2:1 = 0b10: a 64-bit memory BAR.
const FLAG_MEM64: u32 = 0x4;
/// Register bit 3: prefetchable memory.
const FLAG_PREFETCHABLE: u32 = 0x8;
/// The address bits of a memory BAR's low register.
const MEM_ADDRESS_MASK: u32 = !0xf;
/// The address bits of an I/O BAR. x86 has 64 KiB of ports, so the upper
/// 16 bits are hardwired to zero as on devices that decode 16 bits.
const IO_ADDRESS_MASK: u32 = 0xfffc;

/// The smallest and largest sizes the PCI specification allows.
const MIN_IO: u64 = 4;
const MAX_IO: u64 = 256;
const MIN_MEM: u64 = 16;
const MAX_MEM32: u64 = 1 << 31;

/// A BAR's kind and size: what a device declares, before the guest or the
/// allocator gives it an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Bar {
    kind: BarKind,
    size: u64,
}

impl Bar {
    /// An I/O BAR of `size` ports: a power of two from 4 to 256.
    pub fn io(size: u64) -> Result<Bar, BarError> {
        Bar::new(BarKind::Io, size, MIN_IO, MAX_IO)
    }

    /// A 32-bit memory BAR: a power of two from 16 bytes to 2 GiB.
    pub fn mmio32(size: u64, prefetchable: bool) -> Result<Bar, BarError> {
        Bar::new(BarKind::Mmio32 { prefetchable }, size, MIN_MEM, MAX_MEM32)
    }

    /// A 64-bit memory BAR: a power of two of at least 16 bytes.
    pub fn mmio64(size: u64, prefetchable: bool) -> Result<Bar, BarError> {
        Bar::new(BarKind::Mmio64 { prefetchable }, size, MIN_MEM, 1 << 63)
    }

    fn new(kind: BarKind, size: u64, min: u64, max: u64) -> Result<Bar, BarError> {
        if !size.is_power_of_two() || size < min || size > max {
            return Err(BarError::Size {
                kind,
                size,
                min,
                max,
            });
        }
        Ok(Bar { kind, size })
    }

    /// The kind.
    pub fn kind(&self) -> BarKind {
        self.kind
    }

    /// The size in bytes (or ports).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The address space it decodes.
    pub fn space(&self) -> AddressSpace {
        match self.kind {
            BarKind::Io => AddressSpace::Io,
            BarKind::Mmio32 { .. } | BarKind::Mmio64 { .. } => AddressSpace::Memory,
        }
    }

    /// True for a BAR that takes two registers.
    pub fn is_64bit(&self) -> bool {
        matches!(self.kind, BarKind::Mmio64 { .. })
    }

    /// The read-only flag bits of the (low) register.
    pub fn flags(&self) -> u32 {
        match self.kind {
            BarKind::Io => FLAG_IO,
            BarKind::Mmio32 { prefetchable } => prefetchable_flag(prefetchable),
            BarKind::Mmio64 { prefetchable } => FLAG_MEM64 | prefetchable_flag(prefetchable),
        }
    }

    /// The writable bits of the low register and, for a 64-bit BAR, of the
    /// high one: the address bits at and above the size.
    pub fn register_masks(&self) -> (u32, Option<u32>) {
        let size_mask = !(self.size - 1);
        match self.kind {
            BarKind::Io => (size_mask as u32 & IO_ADDRESS_MASK, None),
            BarKind::Mmio32 { .. } => (size_mask as u32 & MEM_ADDRESS_MASK, None),
            BarKind::Mmio64 { .. } => (
                size_mask as u32 & MEM_ADDRESS_MASK,
                Some((size_mask >> 32) as u32),
            ),
        }
    }

    /// The address bits of `registers` (low, high), without the flags.
    pub fn decode_address(&self, low: u32, high: u32) -> u64 {
        match self.kind {
            BarKind::Io => u64::from(low & IO_ADDRESS_MASK),
            BarKind::Mmio32 { .. } => u64::from(low & MEM_ADDRESS_MASK),
            BarKind::Mmio64 { .. } => u64::from(high) << 32 | u64::from(low & MEM_ADDRESS_MASK),
        }
    }
}

fn prefetchable_flag(prefetchable: bool) -> u32 {
    if prefetchable {
        FLAG_PREFETCHABLE
    } else {
        0
    }
}

/// A declared BAR and the address the guest (or the VMM) programmed into
/// it: what the bus needs to route accesses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BarRegion {
    /// The BAR index, 0-5 (a 64-bit BAR has the index of its low half).
    pub index: u8,
    /// Its kind and size.
    pub bar: Bar,
    /// Its address; 0 means not assigned yet.
    pub address: u64,
}

/// Why a BAR cannot be declared.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BarError {
    /// The size is not a power of two or out of range for the kind.
    #[error("a {kind} BAR must be a power of two from {min:#x} to {max:#x} bytes, not {size:#x}")]
    Size {
        /// The kind asked for.
        kind: BarKind,
        /// The size asked for.
        size: u64,
        /// The smallest size of the kind.
        min: u64,
        /// The largest size of the kind.
        max: u64,
    },
}

/// Why a BAR could not be placed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AllocError {
    /// No aligned gap of the size is left in any window the BAR may use.
    #[error("no room left for a {size:#x}-byte {kind} BAR in the PCI windows")]
    Full {
        /// The BAR's kind.
        kind: BarKind,
        /// The BAR's size.
        size: u64,
    },
}

/// Memory BARs are placed at page granularity at least, so that no two
/// share a page: a passthrough BAR can then be its own KVM memslot, and a
/// trapped one never shares an exit with its neighbour.
const PAGE: u64 = 4096;

/// 64-bit BARs up to this size go below 4 GiB, where guests with a 4 GiB
/// identity map reach them; larger ones go to the 64-bit window so that
/// they cannot starve BARs that only decode 32 bits.
const SMALL_MMIO64: u64 = 16 << 20;

/// Places BARs in the windows of a layout: naturally aligned (memory BARs
/// on at least a page), never overlapping, first fit.
#[derive(Debug, Clone)]
pub struct BarAllocator {
    mmio32: Ranges,
    mmio64: Option<Ranges>,
    io: Ranges,
}

impl BarAllocator {
    /// An allocator for the BAR windows of `layout`, all free.
    pub fn new(layout: &PciLayout) -> Self {
        BarAllocator {
            mmio32: Ranges::new(layout.mmio32),
            mmio64: layout.mmio64.map(Ranges::new),
            io: Ranges::new(layout.io),
        }
    }

    /// Marks `bar` at `address` as taken, so that nothing is placed over
    /// it: a BAR that already has an address (programmed by the guest, or
    /// by an earlier assignment). Parts outside the windows are ignored,
    /// since nothing is placed there.
    pub fn reserve(&mut self, bar: &Bar, address: u64) {
        let span = Window::new(address, span(bar));
        match bar.space() {
            AddressSpace::Io => self.io.reserve(span),
            AddressSpace::Memory => {
                self.mmio32.reserve(span);
                if let Some(high) = &mut self.mmio64 {
                    high.reserve(span);
                }
            }
        }
    }

    /// Reserves a place for `bar` and returns its address.
    ///
    /// I/O BARs go in the I/O window, 32-bit ones in the 32-bit window;
    /// a 64-bit BAR goes below 4 GiB if it is at most 16 MiB and above
    /// otherwise, falling back to the other window when its own is full.
    pub fn allocate(&mut self, bar: &Bar) -> Result<u64, AllocError> {
        let size = bar.size();
        let full = AllocError::Full {
            kind: bar.kind(),
            size,
        };
        let span = span(bar);
        match bar.kind() {
            BarKind::Io => self.io.take(span, span).ok_or(full),
            BarKind::Mmio32 { .. } => self.mmio32.take(span, span).ok_or(full),
            BarKind::Mmio64 { .. } => {
                let (first, second) = match &mut self.mmio64 {
                    Some(high) if size > SMALL_MMIO64 => (high, Some(&mut self.mmio32)),
                    Some(high) => (&mut self.mmio32, Some(high)),
                    None => (&mut self.mmio32, None),
                };
                first
                    .take(span, span)
                    .or_else(|| second.and_then(|s| s.take(span, span)))
                    .ok_or(full)
            }
        }
    }
}

/// How much of a window `bar` takes, which is also its alignment.
fn span(bar: &Bar) -> u64 {
    match bar.space() {
        AddressSpace::Io => bar.size(),
        AddressSpace::Memory => bar.size().max(PAGE),
    }
}

/// The taken parts of one window, sorted by start. Reserved ranges may
/// overlap (two BARs a guest put on top of each other); placement still
/// avoids them all.
#[derive(Debug, Clone)]
struct Ranges {
    window: Window,
    taken: Vec<Window>,
}

impl Ranges {
    fn new(window: Window) -> Self {
        Ranges {
            window,
            taken: Vec::new(),
        }
    }

    /// Marks the part of `range` inside the window as taken.
    fn reserve(&mut self, range: Window) {
        let start = range.base.max(self.window.base);
        let end = range.end().min(self.window.end());
        if start < end {
            let at = self.taken.partition_point(|t| t.base <= start);
            self.taken.insert(at, Window::new(start, end - start));
        }
    }

    /// Takes the first `align`-aligned gap of `len` bytes; `align` is a
    /// power of two.
    fn take(&mut self, len: u64, align: u64) -> Option<u64> {
        let mut start = align_up(self.window.base, align)?;
        let mut at = self.taken.len();
        for (i, used) in self.taken.iter().enumerate() {
            if start.checked_add(len)? <= used.base {
                at = i;
                break;
            }
            start = align_up(start.max(used.end()), align)?;
        }
        if start.checked_add(len)? > self.window.end() {
            return None;
        }
        self.taken.insert(at, Window::new(start, len));
        Some(start)
    }
}

fn align_up(value: u64, align: u64) -> Option<u64> {
    Some(value.checked_add(align - 1)? & !(align - 1))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn sizes_must_be_powers_of_two_within_the_kind_limits() {
        assert!(Bar::io(4).is_ok() && Bar::io(256).is_ok());
        assert!(Bar::io(2).is_err() && Bar::io(512).is_err() && Bar::io(12).is_err());
        assert!(Bar::mmio32(16, false).is_ok() && Bar::mmio32(1 << 31, false).is_ok());
        assert!(Bar::mmio32(8, false).is_err() && Bar::mmio32(1 << 32, false).is_err());
        assert!(Bar::mmio64(1 << 40, true).is_ok() && Bar::mmio64(0, true).is_err());
        assert_eq!(
            Bar::mmio32(0x3000, false).unwrap_err().to_string(),
            "a 32-bit MMIO BAR must be a power of two from 0x10 to 0x80000000 bytes, not 0x3000"
        );
    }

    #[test]
    fn flags_and_masks_encode_each_kind() {
        let io = Bar::io(32).unwrap();
        assert_eq!((io.flags(), io.register_masks()), (0x1, (0xffe0, None)));
        let m32 = Bar::mmio32(0x1000, true).unwrap();
        assert_eq!(
            (m32.flags(), m32.register_masks()),
            (0x8, (0xffff_f000, None))
        );
        let m64 = Bar::mmio64(0x2_0000_0000, false).unwrap();
        assert_eq!(
            (m64.flags(), m64.register_masks()),
            (0x4, (0, Some(0xffff_fffe)))
        );
        assert_eq!(m64.decode_address(0x4 | 0xf000_0000, 0x12), 0x12_f000_0000);
        assert_eq!(io.decode_address(0xdead_c001, 0), 0xc000);
    }

    fn layout() -> PciLayout {
        PciLayout {
            mmio32: Window::new(0xE800_0000, 0x10_0000),
            mmio64: Some(Window::new(0x40_0000_0000, 0x1000_0000)),
            io: Window::new(0xC000, 0x100),
            ..PciLayout::default()
        }
    }

    #[test]
    fn bars_are_naturally_aligned_and_fill_gaps_first_fit() {
        let mut alloc = BarAllocator::new(&layout());
        let small = Bar::mmio32(0x100, false).unwrap();
        let big = Bar::mmio32(0x4_0000, false).unwrap();
        // A small BAR still takes a whole page.
        assert_eq!(alloc.allocate(&small), Ok(0xE800_0000));
        assert_eq!(alloc.allocate(&big), Ok(0xE804_0000));
        // The gap between the two is used next.
        assert_eq!(alloc.allocate(&small), Ok(0xE800_1000));
        let io = Bar::io(0x40).unwrap();
        let io4 = Bar::io(4).unwrap();
        assert_eq!(alloc.allocate(&io4), Ok(0xC000));
        assert_eq!(alloc.allocate(&io), Ok(0xC040));
        assert_eq!(alloc.allocate(&io4), Ok(0xC004));
    }

    #[test]
    fn a_full_window_is_an_error_and_64_bit_bars_pick_their_window() {
        let mut alloc = BarAllocator::new(&layout());
        let half = Bar::mmio32(0x8_0000, false).unwrap();
        assert_eq!(alloc.allocate(&half), Ok(0xE800_0000));
        assert_eq!(alloc.allocate(&half), Ok(0xE808_0000));
        assert_eq!(
            alloc.allocate(&half),
            Err(AllocError::Full {
                kind: half.kind(),
                size: 0x8_0000
            })
        );
        // A small 64-bit BAR falls back to the 64-bit window when the
        // 32-bit one is full; a large one goes there first.
        let small64 = Bar::mmio64(0x1000, true).unwrap();
        assert_eq!(alloc.allocate(&small64), Ok(0x40_0000_0000));
        let large64 = Bar::mmio64(0x800_0000, true).unwrap();
        assert_eq!(alloc.allocate(&large64), Ok(0x40_0800_0000));
        assert!(alloc.allocate(&large64).is_err());
        let mut io = BarAllocator::new(&layout());
        let io_bar = Bar::io(256).unwrap();
        assert_eq!(io.allocate(&io_bar), Ok(0xC000));
        assert!(io.allocate(&Bar::io(4).unwrap()).is_err());
        assert_eq!(
            io.allocate(&Bar::io(4).unwrap()).unwrap_err().to_string(),
            "no room left for a 0x4-byte I/O BAR in the PCI windows"
        );
    }

    #[test]
    fn reserved_ranges_are_never_handed_out() {
        let mut alloc = BarAllocator::new(&layout());
        let page = Bar::mmio32(0x1000, false).unwrap();
        // A small BAR reserves its whole page; one outside the windows
        // reserves nothing.
        alloc.reserve(&Bar::mmio32(0x100, false).unwrap(), 0xE800_1000);
        alloc.reserve(&page, 0xD000_0000);
        alloc.reserve(&Bar::io(0x10).unwrap(), 0xC000);
        assert_eq!(alloc.allocate(&page), Ok(0xE800_0000));
        assert_eq!(alloc.allocate(&page), Ok(0xE800_2000));
        assert_eq!(alloc.allocate(&Bar::io(4).unwrap()), Ok(0xC010));
        // Overlapping reservations (a guest's mistake) are still avoided.
        alloc.reserve(&Bar::mmio32(0x4000, false).unwrap(), 0xE800_4000);
        alloc.reserve(&page, 0xE800_5000);
        assert_eq!(alloc.allocate(&page), Ok(0xE800_3000));
        assert_eq!(alloc.allocate(&page), Ok(0xE800_8000));
    }

    #[test]
    fn without_a_64_bit_window_everything_goes_below_4_gib() {
        let mut alloc = BarAllocator::new(&PciLayout {
            mmio64: None,
            ..layout()
        });
        let large64 = Bar::mmio64(0x8_0000, false).unwrap();
        assert_eq!(alloc.allocate(&large64), Ok(0xE800_0000));
    }

    #[test]
    fn a_window_at_the_top_of_the_address_space_does_not_overflow() {
        let mut r = Ranges::new(Window::new(u64::MAX - 0x2fff, 0x3000));
        assert_eq!(r.take(0x1000, 0x1000), Some(u64::MAX - 0x2fff));
        assert_eq!(r.take(0x1000, 0x1000), Some(u64::MAX - 0x1fff));
        // The last page would end at 2^64: refused, not wrapped to 0.
        assert_eq!(r.take(0x1000, 0x1000), None);
        assert_eq!(r.take(0x4000, 0x4000), None);
    }

    fn any_bar() -> impl Strategy<Value = Bar> {
        prop_oneof![
            (2u32..=8).prop_map(|s| Bar::io(1 << s).unwrap()),
            (4u32..=20, any::<bool>()).prop_map(|(s, p)| Bar::mmio32(1 << s, p).unwrap()),
            (4u32..=28, any::<bool>()).prop_map(|(s, p)| Bar::mmio64(1 << s, p).unwrap()),
        ]
    }

    proptest! {
        #[test]
        fn placed_bars_are_aligned_inside_their_window_and_disjoint(
            bars in proptest::collection::vec(any_bar(), 1..40)
        ) {
            let layout = layout();
            let mut alloc = BarAllocator::new(&layout);
            let mut placed: Vec<(AddressSpace, Window)> = Vec::new();
            for bar in bars {
                let Ok(addr) = alloc.allocate(&bar) else { continue };
                prop_assert_eq!(addr % bar.size(), 0);
                let w = Window::new(addr, bar.size());
                let inside = match bar.space() {
                    AddressSpace::Io => layout.io.contains(addr) && w.end() <= layout.io.end(),
                    AddressSpace::Memory => [Some(layout.mmio32), layout.mmio64]
                        .into_iter()
                        .flatten()
                        .any(|win| win.contains(addr) && w.end() <= win.end()),
                };
                prop_assert!(inside, "{bar:?} at {addr:#x}");
                for (space, other) in &placed {
                    prop_assert!(*space != bar.space() || !w.overlaps(other));
                }
                placed.push((bar.space(), w));
            }
        }
    }
}
