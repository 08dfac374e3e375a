//! The seam between the virtualized PCI function and whatever really
//! drives the device: kernel VFIO, a vfio-user server in another process,
//! or a fake in tests. Everything device-specific the VMM needs goes
//! through [`PassthroughDevice`], so the PCI logic above it is written
//! and tested once.

use std::fmt;
use std::fs::File;
use std::os::fd::BorrowedFd;

use thiserror::Error;
use vfio_bindings::bindings::vfio::{
    VFIO_PCI_INTX_IRQ_INDEX, VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_MSI_IRQ_INDEX,
    VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vm_memory::{FileOffset, MmapRegion};
use vmm_sys_util::eventfd::EventFd;

/// The region index of configuration space, as VFIO numbers regions:
/// BARs 0-5 are regions 0-5, then the expansion ROM, then this.
pub const CONFIG_REGION: u32 = vfio_bindings::bindings::vfio::VFIO_PCI_CONFIG_REGION_INDEX;

/// What a device says about one of its regions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionInfo {
    /// `VFIO_REGION_INFO_FLAG_*`: readable, writable, mmappable, has caps.
    pub flags: u32,
    /// Bytes; 0 means the region does not exist (an unused BAR).
    pub size: u64,
    /// Where the region starts in the device fd, for `pread`/`mmap`
    /// (kernel VFIO) or in the fd the server gave (vfio-user).
    pub offset: u64,
}

impl RegionInfo {
    /// The guest may read it.
    pub fn readable(&self) -> bool {
        self.flags & VFIO_REGION_INFO_FLAG_READ != 0
    }

    /// The guest may write it.
    pub fn writable(&self) -> bool {
        self.flags & VFIO_REGION_INFO_FLAG_WRITE != 0
    }

    /// Parts of it can be mapped into the guest instead of trapped (see
    /// [`PassthroughDevice::mmap_areas`]).
    pub fn mmappable(&self) -> bool {
        self.flags & VFIO_REGION_INFO_FLAG_MMAP != 0
    }
}

/// An interrupt type of a PCI device, as VFIO indexes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IrqKind {
    /// The legacy pin, level-triggered; VFIO masks it when it fires.
    Intx,
    /// MSI: up to 32 vectors, programmed in configuration space.
    Msi,
    /// MSI-X: vectors programmed in a BAR table (which the VMM emulates
    /// for passthrough devices).
    Msix,
}

impl IrqKind {
    /// The `VFIO_PCI_*_IRQ_INDEX`.
    pub fn vfio_index(self) -> u32 {
        match self {
            IrqKind::Intx => VFIO_PCI_INTX_IRQ_INDEX,
            IrqKind::Msi => VFIO_PCI_MSI_IRQ_INDEX,
            IrqKind::Msix => VFIO_PCI_MSIX_IRQ_INDEX,
        }
    }
}

impl fmt::Display for IrqKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IrqKind::Intx => "INTx",
            IrqKind::Msi => "MSI",
            IrqKind::Msix => "MSI-X",
        })
    }
}

/// A range of guest RAM to make visible to the device's DMA at
/// IOVA = GPA. Kernel VFIO pins it through the host virtual address;
/// vfio-user hands the server the fd and offset to map it itself, so
/// guest RAM must be file-backed (a memfd) for a vfio-user device.
#[derive(Debug, Clone, Copy)]
pub struct DmaRange<'a> {
    /// The guest-physical address, which is also the IOVA.
    pub iova: u64,
    /// Bytes.
    pub size: u64,
    /// Where the VMM maps it (kernel VFIO).
    pub host_addr: u64,
    /// The file behind it, if any (vfio-user).
    pub fd: Option<BorrowedFd<'a>>,
    /// Where the range starts in `fd`.
    pub fd_offset: u64,
}

/// A part of a region, relative to the region's start, that the backend
/// can map into the VMM (a sparse mmap area, or the whole region).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MmapArea {
    /// Where the area starts in the region.
    pub offset: u64,
    /// Bytes.
    pub size: u64,
}

/// An area of a region mapped into the VMM's address space, shared with
/// the device (its BAR memory, or the server's memory behind it), so it
/// can back a KVM memslot. Unmapped on drop.
pub struct RegionMapping {
    mmap: MmapRegion<()>,
    index: u32,
    area: MmapArea,
}

impl fmt::Debug for RegionMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegionMapping")
            .field("index", &self.index)
            .field("area", &self.area)
            .field("host_addr", &format_args!("{:#x}", self.host_addr()))
            .finish()
    }
}

impl RegionMapping {
    /// Maps `area` of region `index`, found at `region_offset` in `file`,
    /// shared and read-write.
    pub fn map(
        file: File,
        region_offset: u64,
        index: u32,
        area: MmapArea,
    ) -> Result<RegionMapping, PassthroughError> {
        let fail = |reason: String| PassthroughError::Map {
            index,
            offset: area.offset,
            reason,
        };
        let size = usize::try_from(area.size).map_err(|e| fail(e.to_string()))?;
        if size == 0 || !area.size.is_multiple_of(PAGE) || !area.offset.is_multiple_of(PAGE) {
            return Err(fail(format!(
                "{:#x} bytes at {:#x} is not whole pages",
                area.size, area.offset
            )));
        }
        let start = region_offset
            .checked_add(area.offset)
            .ok_or_else(|| fail("offset overflows".into()))?;
        let mmap = MmapRegion::build(
            Some(FileOffset::new(file, start)),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
        )
        .map_err(|e| fail(e.to_string()))?;
        Ok(RegionMapping { mmap, index, area })
    }

    /// Where the mapping starts in the VMM.
    pub fn host_addr(&self) -> u64 {
        self.mmap.as_ptr() as u64
    }

    /// The region it maps.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The part of the region it maps.
    pub fn area(&self) -> MmapArea {
        self.area
    }
}

/// Mappings are whole host pages.
const PAGE: u64 = 4096;

/// The areas a backend offers that can really be mapped: whole pages,
/// inside the region of `region_size` bytes. The others stay trapped.
pub fn usable_areas(areas: Vec<MmapArea>, region_size: u64) -> Vec<MmapArea> {
    areas
        .into_iter()
        .filter(|a| {
            a.size > 0
                && a.offset.is_multiple_of(PAGE)
                && a.size.is_multiple_of(PAGE)
                && a.offset
                    .checked_add(a.size)
                    .is_some_and(|end| end <= region_size)
        })
        .collect()
}

/// A device a PCI function is passed through from. Object-safe, so the
/// function holds an `Arc<dyn PassthroughDevice>` whatever the backend.
/// Accesses take `&self`: backends serialize internally, and interrupt
/// threads hold the device too.
pub trait PassthroughDevice: Send + Sync {
    /// Region `index` (0-5 BARs, 6 ROM, [`CONFIG_REGION`]), if the device
    /// has it.
    fn region_info(&self, index: u32) -> Option<RegionInfo>;

    /// Reads `buf.len()` bytes at `offset` of region `index`.
    fn region_read(&self, index: u32, offset: u64, buf: &mut [u8]) -> Result<(), PassthroughError>;

    /// Writes `buf` at `offset` of region `index`.
    fn region_write(&self, index: u32, offset: u64, buf: &[u8]) -> Result<(), PassthroughError>;

    /// The parts of region `index` that [`PassthroughDevice::mmap`] can
    /// map, page-aligned; empty if every access must be trapped.
    fn mmap_areas(&self, index: u32) -> Vec<MmapArea> {
        let _ = index;
        Vec::new()
    }

    /// The region's info if `len` bytes at `offset` all lie in region
    /// `index`. Backends check before any access reaches the device: a
    /// bad access fails the same way whatever the device would have done
    /// with it (vfio-ioctls only logs, and the vfio-user protocol has no
    /// error reply the client can parse).
    fn check_access(
        &self,
        index: u32,
        offset: u64,
        len: usize,
    ) -> Result<RegionInfo, PassthroughError> {
        let out = || PassthroughError::OutOfRegion { index, offset, len };
        let region = self.region_info(index).ok_or_else(out)?;
        match offset.checked_add(len as u64) {
            Some(end) if end <= region.size => Ok(region),
            _ => Err(out()),
        }
    }

    /// Maps `area` (one of [`PassthroughDevice::mmap_areas`]) of region
    /// `index` into the VMM.
    fn mmap(&self, index: u32, area: MmapArea) -> Result<RegionMapping, PassthroughError> {
        Err(PassthroughError::Map {
            index,
            offset: area.offset,
            reason: "the backend maps nothing".into(),
        })
    }

    /// How many vectors of `kind` the device has (0: none).
    fn irq_count(&self, kind: IrqKind) -> u32;

    /// Makes the device signal vector `i` of `kind` on `fds[i]`.
    fn enable_irq(&self, kind: IrqKind, fds: &[&EventFd]) -> Result<(), PassthroughError>;

    /// Stops the device signalling `kind`.
    fn disable_irq(&self, kind: IrqKind) -> Result<(), PassthroughError>;

    /// Unmasks `kind` (INTx: VFIO masks the line each time it fires, and
    /// the VMM unmasks it once the guest has serviced it).
    fn unmask_irq(&self, kind: IrqKind) -> Result<(), PassthroughError>;

    /// Lets the device DMA to `range`.
    fn dma_map(&self, range: &DmaRange<'_>) -> Result<(), PassthroughError>;

    /// Revokes a mapping made by [`PassthroughDevice::dma_map`].
    fn dma_unmap(&self, iova: u64, size: u64) -> Result<(), PassthroughError>;

    /// Resets the device (function-level reset or the backend's
    /// equivalent).
    fn reset(&self) -> Result<(), PassthroughError>;
}

/// A device operation that failed.
#[derive(Debug, Error)]
pub enum PassthroughError {
    /// The region does not exist or the access runs past its end.
    #[error("region {index} has no {len} bytes at {offset:#x}")]
    OutOfRegion {
        /// The region.
        index: u32,
        /// Where the access starts.
        offset: u64,
        /// Its length.
        len: usize,
    },
    /// More vectors asked for than the device has.
    #[error("{kind} has {available} vectors, not {requested}")]
    IrqCount {
        /// The interrupt type.
        kind: IrqKind,
        /// The vectors the device has.
        available: u32,
        /// The vectors asked for.
        requested: usize,
    },
    /// A region area could not be mapped.
    #[error("cannot map region {index} at {offset:#x}: {reason}")]
    Map {
        /// The region.
        index: u32,
        /// Where the area starts in it.
        offset: u64,
        /// Why.
        reason: String,
    },
    /// vfio-user maps DMA by file descriptor.
    #[error(
        "DMA map of {size:#x} bytes at {iova:#x} needs a file descriptor: a vfio-user device \
         maps guest RAM by fd, so guest RAM must be a memfd (see `memfd_guest_memory`)"
    )]
    DmaNeedsFd {
        /// The IOVA.
        iova: u64,
        /// Its size.
        size: u64,
    },
    /// The vfio-user protocol failed.
    #[error("vfio-user {op}: {source}")]
    User {
        /// What was asked.
        op: &'static str,
        /// Why it failed.
        #[source]
        source: vfio_user::Error,
    },
    /// Kernel VFIO refused.
    #[error("VFIO {op}: {reason}")]
    Kernel {
        /// What was asked.
        op: &'static str,
        /// Why it failed.
        reason: String,
    },
}

impl PassthroughError {
    /// Fails unless `requested` eventfds fit the `available` vectors of
    /// `kind`: a backend checks before asking, since neither VFIO nor the
    /// vfio-user protocol says which vector was refused.
    pub fn check_irq_count(
        kind: IrqKind,
        available: u32,
        requested: usize,
    ) -> Result<(), PassthroughError> {
        if requested > available as usize {
            return Err(PassthroughError::IrqCount {
                kind,
                available,
                requested,
            });
        }
        Ok(())
    }
}
