//! Kernel VFIO (`--device vfio=...`): a [`PassthroughDevice`] over the
//! VFIO syscalls, behind [`VfioSys`] so that all of its logic (bounds,
//! interrupt counts, mmap areas, DMA sizes, errors) is tested against
//! [`FakeVfio`]. Only [`IoctlSys`], the syscalls through vfio-ioctls,
//! needs `/dev/vfio`.

mod fake;
mod sys;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use vmm_sys_util::eventfd::EventFd;

pub use fake::{FakeRegion, FakeVfio, SysCall, SysOp};
pub use sys::{IoctlSys, IrqAction, SetIrqs, SysRegion, VfioSys};

use crate::passthrough::{
    usable_areas, DmaRange, IrqKind, MmapArea, PassthroughDevice, PassthroughError, RegionInfo,
    RegionMapping,
};

/// The sysfs directory of a PCI device given as `0000:01:00.0` or as a
/// path.
pub fn sysfs_path(target: &str) -> PathBuf {
    if target.contains('/') {
        PathBuf::from(target)
    } else {
        Path::new("/sys/bus/pci/devices").join(target)
    }
}

/// What is missing on this host for kernel VFIO, if anything: the first
/// thing an operator has to fix.
pub fn missing_support(device: &Path) -> Option<String> {
    if !Path::new("/dev/vfio/vfio").exists() {
        return Some(
            "/dev/vfio/vfio is missing: load the vfio-pci module and enable the IOMMU \
             (intel_iommu=on or amd_iommu=on), see docs/pci.md"
                .into(),
        );
    }
    if !device.exists() {
        return Some(format!("{} does not exist", device.display()));
    }
    if !device.join("iommu_group").exists() {
        return Some(format!(
            "{} is in no IOMMU group: is the IOMMU on?",
            device.display()
        ));
    }
    let driver = std::fs::read_link(device.join("driver")).ok();
    let bound = driver
        .as_deref()
        .and_then(Path::file_name)
        .is_some_and(|d| d == "vfio-pci");
    if !bound {
        return Some(format!(
            "{} is not bound to vfio-pci (see docs/pci.md)",
            device.display()
        ));
    }
    None
}

/// A device passed through with kernel VFIO.
pub struct KernelVfio {
    sys: Box<dyn VfioSys>,
}

fn kernel(op: &'static str, e: impl std::fmt::Display) -> PassthroughError {
    PassthroughError::Kernel {
        op,
        reason: e.to_string(),
    }
}

impl KernelVfio {
    /// Opens the VFIO container and the device at `sysfs` (its group must
    /// be viable: every device in it bound to vfio-pci).
    pub fn open(sysfs: &Path) -> Result<KernelVfio, PassthroughError> {
        Ok(KernelVfio::with_sys(IoctlSys::open(sysfs)?))
    }

    /// The device behind `sys`: [`IoctlSys`], or [`FakeVfio`] in tests
    /// (an `Arc<FakeVfio>` too, to keep inspecting it).
    pub fn with_sys(sys: impl VfioSys + 'static) -> KernelVfio {
        KernelVfio { sys: Box::new(sys) }
    }

    /// Where `len` bytes at `offset` of region `index` are in the device
    /// fd, if they are all in the region.
    fn locate(&self, index: u32, offset: u64, len: usize) -> Result<u64, PassthroughError> {
        let region = self.check_access(index, offset, len)?;
        region
            .offset
            .checked_add(offset)
            .ok_or(PassthroughError::OutOfRegion { index, offset, len })
    }
}

impl PassthroughDevice for KernelVfio {
    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        self.sys
            .region_info(index)
            .map(|r| r.info)
            .filter(|info| info.size > 0)
    }

    fn region_read(&self, index: u32, offset: u64, buf: &mut [u8]) -> Result<(), PassthroughError> {
        let at = self.locate(index, offset, buf.len())?;
        self.sys
            .pread(at, buf)
            .map_err(|e| kernel("region read", e))
    }

    fn region_write(&self, index: u32, offset: u64, buf: &[u8]) -> Result<(), PassthroughError> {
        let at = self.locate(index, offset, buf.len())?;
        self.sys
            .pwrite(at, buf)
            .map_err(|e| kernel("region write", e))
    }

    /// The sparse-mmap areas if the region has them, else the whole
    /// region, if it is mmappable at all; an area that is not whole pages
    /// or runs past the region is left out, since it could not back a
    /// memslot without exposing what lies beside it.
    fn mmap_areas(&self, index: u32) -> Vec<MmapArea> {
        let Some(region) = self.sys.region_info(index) else {
            return Vec::new();
        };
        let info = region.info;
        if info.size == 0 || !info.mmappable() {
            return Vec::new();
        }
        let areas = region.sparse_mmap.unwrap_or_else(|| {
            vec![MmapArea {
                offset: 0,
                size: info.size,
            }]
        });
        usable_areas(areas, info.size)
    }

    fn mmap(&self, index: u32, area: MmapArea) -> Result<RegionMapping, PassthroughError> {
        let fail = |reason: String| PassthroughError::Map {
            index,
            offset: area.offset,
            reason,
        };
        if !self.mmap_areas(index).contains(&area) {
            return Err(fail(format!(
                "{:#x} bytes at {:#x} is not an mmap area of the region",
                area.size, area.offset
            )));
        }
        let region = self
            .region_info(index)
            .ok_or_else(|| fail("the region is gone".into()))?;
        let file = self.sys.device_file().map_err(|e| fail(e.to_string()))?;
        RegionMapping::map(file, region.offset, index, area)
    }

    fn irq_count(&self, kind: IrqKind) -> u32 {
        self.sys.irq_count(kind.vfio_index())
    }

    fn enable_irq(&self, kind: IrqKind, fds: &[&EventFd]) -> Result<(), PassthroughError> {
        PassthroughError::check_irq_count(kind, self.irq_count(kind), fds.len())?;
        self.sys
            .set_irqs(kind.vfio_index(), SetIrqs::Trigger(fds))
            .map_err(|e| kernel("enable interrupts", e))
    }

    fn disable_irq(&self, kind: IrqKind) -> Result<(), PassthroughError> {
        self.sys
            .set_irqs(kind.vfio_index(), SetIrqs::Disable)
            .map_err(|e| kernel("disable interrupts", e))
    }

    fn unmask_irq(&self, kind: IrqKind) -> Result<(), PassthroughError> {
        self.sys
            .set_irqs(kind.vfio_index(), SetIrqs::Unmask)
            .map_err(|e| kernel("unmask interrupts", e))
    }

    fn dma_map(&self, range: &DmaRange<'_>) -> Result<(), PassthroughError> {
        let size = usize::try_from(range.size).map_err(|e| kernel("DMA map", e))?;
        // SAFETY: `host_addr..host_addr + size` is guest RAM the VMM mapped
        // for the VM's lifetime (`dma_ranges` takes it from the guest
        // memory's own regions); the IOMMU pins it until `dma_unmap` or
        // the container is closed, which happens before that memory is
        // unmapped since the VM owns both.
        unsafe { self.sys.dma_map(range.iova, size, range.host_addr) }
            .map_err(|e| kernel("DMA map", e))
    }

    fn dma_unmap(&self, iova: u64, size: u64) -> Result<(), PassthroughError> {
        let size = usize::try_from(size).map_err(|e| kernel("DMA unmap", e))?;
        self.sys
            .dma_unmap(iova, size)
            .map_err(|e| kernel("DMA unmap", e))
    }

    fn reset(&self) -> Result<(), PassthroughError> {
        self.sys.reset().map_err(|e| kernel("reset", e))
    }
}
