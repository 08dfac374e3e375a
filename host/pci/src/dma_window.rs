//! The VM's DMA domain: which guest-physical ranges devices may reach by
//! DMA. Device DMA bypasses the CPU's page tables and EPT, so the IOMMU
//! mapping (IOVA = GPA) is the only thing that confines it; by default
//! it is all of guest RAM, and `--dma-window` narrows it.
//!
//! [`DmaDomain`] is that set of windows; the VMM DMA-maps only the parts
//! of guest RAM inside it ([`DmaDomain::clip`]) into a passthrough device,
//! and [`ConfinedDma`] applies the same rule to an emulated device, so
//! both kinds fail the same way on an address outside the domain.

use std::sync::Arc;

use thiserror::Error;

use crate::device::{DmaError, DmaMemory};
use crate::layout::Window;

/// The IOMMU page size windows are aligned to: mappings are made in
/// whole pages.
pub const DMA_PAGE_SIZE: u64 = 0x1000;

/// A DMA window is unusable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DmaWindowError {
    /// Base or size is not a multiple of [`DMA_PAGE_SIZE`].
    #[error("DMA window {base:#x}+{size:#x} is not aligned to 4 KiB pages")]
    Unaligned {
        /// The window's base.
        base: u64,
        /// Its size.
        size: u64,
    },
    /// The size is zero.
    #[error("DMA window at {0:#x} is empty")]
    Empty(u64),
    /// The window runs past the end of the address space.
    #[error("DMA window {base:#x}+{size:#x} wraps around the address space")]
    Wraps {
        /// The window's base.
        base: u64,
        /// Its size.
        size: u64,
    },
}

/// What devices may reach by DMA: everything, or the union of some
/// page-aligned windows (kept sorted and merged).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DmaDomain {
    /// `None`: no restriction.
    windows: Option<Vec<Window>>,
}

impl DmaDomain {
    /// No restriction: all of guest RAM.
    pub fn unrestricted() -> DmaDomain {
        DmaDomain::default()
    }

    /// The union of `windows`; each must be page-aligned, non-empty and
    /// must not wrap. An empty list means no restriction.
    pub fn new(windows: &[Window]) -> Result<DmaDomain, DmaWindowError> {
        if windows.is_empty() {
            return Ok(DmaDomain::unrestricted());
        }
        let mut sorted = Vec::with_capacity(windows.len());
        for &w in windows {
            if w.size == 0 {
                return Err(DmaWindowError::Empty(w.base));
            }
            if w.base % DMA_PAGE_SIZE != 0 || w.size % DMA_PAGE_SIZE != 0 {
                return Err(DmaWindowError::Unaligned {
                    base: w.base,
                    size: w.size,
                });
            }
            if w.base.checked_add(w.size).is_none() {
                return Err(DmaWindowError::Wraps {
                    base: w.base,
                    size: w.size,
                });
            }
            sorted.push(w);
        }
        sorted.sort_by_key(|w| w.base);
        let mut merged: Vec<Window> = Vec::with_capacity(sorted.len());
        for w in sorted {
            match merged.last_mut() {
                // Touching windows merge too: one mapping instead of two.
                Some(last) if w.base <= last.end() => {
                    last.size = last.size.max(w.end() - last.base);
                }
                _ => merged.push(w),
            }
        }
        Ok(DmaDomain {
            windows: Some(merged),
        })
    }

    /// The windows, sorted and merged; `None` when unrestricted.
    pub fn windows(&self) -> Option<&[Window]> {
        self.windows.as_deref()
    }

    /// The parts of `region` inside the domain, in address order.
    pub fn clip(&self, region: Window) -> Vec<Window> {
        let Some(windows) = &self.windows else {
            return vec![region];
        };
        windows
            .iter()
            .filter(|w| w.overlaps(&region))
            .map(|w| {
                let base = w.base.max(region.base);
                Window::new(base, w.end().min(region.end()) - base)
            })
            .collect()
    }

    /// True if all of `gpa..gpa + len` lies inside one window (windows
    /// are merged, so a range across two separate windows has a gap).
    pub fn allows(&self, gpa: u64, len: usize) -> bool {
        let Some(windows) = &self.windows else {
            return true;
        };
        let Some(end) = gpa.checked_add(len as u64) else {
            return false;
        };
        windows.iter().any(|w| w.base <= gpa && end <= w.end())
    }

    fn check(&self, gpa: u64, len: usize) -> Result<(), DmaError> {
        if self.allows(gpa, len) {
            return Ok(());
        }
        Err(DmaError::Refused {
            gpa,
            len,
            reason: "outside the VM's DMA windows".into(),
        })
    }
}

/// An emulated device's DMA, held to a [`DmaDomain`] as an IOMMU holds a
/// passthrough device: accesses outside it are refused before they reach
/// guest memory.
pub struct ConfinedDma {
    inner: Arc<dyn DmaMemory>,
    domain: DmaDomain,
}

impl ConfinedDma {
    /// `inner`, reachable only inside `domain`.
    pub fn new(inner: Arc<dyn DmaMemory>, domain: DmaDomain) -> ConfinedDma {
        ConfinedDma { inner, domain }
    }
}

impl DmaMemory for ConfinedDma {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        self.domain.check(gpa, buf.len())?;
        self.inner.read(gpa, buf)
    }

    fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), DmaError> {
        self.domain.check(gpa, buf.len())?;
        self.inner.write(gpa, buf)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn w(base: u64, size: u64) -> Window {
        Window::new(base, size)
    }

    #[test]
    fn windows_are_checked_sorted_and_merged() {
        assert_eq!(
            DmaDomain::new(&[w(0x1001, 0x1000)]),
            Err(DmaWindowError::Unaligned {
                base: 0x1001,
                size: 0x1000
            })
        );
        assert_eq!(
            DmaDomain::new(&[w(0x1000, 0x10)]).unwrap_err().to_string(),
            "DMA window 0x1000+0x10 is not aligned to 4 KiB pages"
        );
        assert_eq!(
            DmaDomain::new(&[w(0x2000, 0)]),
            Err(DmaWindowError::Empty(0x2000))
        );
        assert!(matches!(
            DmaDomain::new(&[w(u64::MAX - 0xfff, 0x2000)]),
            Err(DmaWindowError::Wraps { .. })
        ));
        let d = DmaDomain::new(&[
            w(0x10_0000, 0x1000),
            w(0, 0x1000),
            w(0x1000, 0x1000),
            w(0x10_0000, 0x3000),
        ])
        .unwrap();
        assert_eq!(d.windows().unwrap(), &[w(0, 0x2000), w(0x10_0000, 0x3000)]);
        assert_eq!(DmaDomain::new(&[]).unwrap(), DmaDomain::unrestricted());
        assert_eq!(DmaDomain::unrestricted().windows(), None);
    }

    #[test]
    fn clip_keeps_the_parts_of_a_region_inside_the_windows() {
        let region = w(0, 0x400_0000);
        assert_eq!(DmaDomain::unrestricted().clip(region), vec![region]);
        let d = DmaDomain::new(&[w(0x10_0000, 0x10_0000), w(0x3ff_f000, 0x2000)]).unwrap();
        assert_eq!(
            d.clip(region),
            vec![w(0x10_0000, 0x10_0000), w(0x3ff_f000, 0x1000)]
        );
        // A region beside every window keeps nothing.
        assert!(d.clip(w(0x1_0000_0000, 0x1000)).is_empty());
    }

    #[test]
    fn allows_needs_the_whole_access_in_one_window() {
        let d = DmaDomain::new(&[w(0x1000, 0x1000), w(0x3000, 0x1000)]).unwrap();
        assert!(d.allows(0x1000, 0x1000));
        assert!(d.allows(0x1ff8, 8));
        assert!(!d.allows(0x1ff8, 9));
        assert!(!d.allows(0x2000, 1));
        assert!(!d.allows(0x1800, 0x2000), "the gap between windows");
        assert!(!d.allows(u64::MAX, 2));
        assert!(DmaDomain::unrestricted().allows(u64::MAX - 1, 1));
    }

    #[derive(Default)]
    struct Ram(Mutex<Vec<(u64, usize)>>);

    impl DmaMemory for Ram {
        fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), DmaError> {
            self.0.lock().unwrap().push((gpa, buf.len()));
            Ok(())
        }
        fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), DmaError> {
            self.0.lock().unwrap().push((gpa, buf.len()));
            Ok(())
        }
    }

    #[test]
    fn confined_dma_refuses_what_lies_outside_before_memory_sees_it() {
        let ram = Arc::new(Ram::default());
        let domain = DmaDomain::new(&[w(0x10_0000, 0x1000)]).unwrap();
        let dma = ConfinedDma::new(ram.clone(), domain);
        dma.write(0x10_0000, &[1; 64]).unwrap();
        let mut buf = [0u8; 16];
        dma.read(0x10_0ff0, &mut buf).unwrap();
        let refused = dma.write(0x6_0000, &[1; 64]).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "DMA of 64 bytes at 0x60000 was refused: outside the VM's DMA windows"
        );
        assert!(dma.read(0x10_0ff0, &mut [0u8; 17]).is_err());
        assert_eq!(*ram.0.lock().unwrap(), [(0x10_0000, 64), (0x10_0ff0, 16)]);
    }
}
