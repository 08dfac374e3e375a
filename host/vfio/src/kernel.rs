//! Kernel VFIO (`--device vfio=...`): a [`PassthroughDevice`] over
//! vfio-ioctls' `VfioContainer` (legacy type-1 IOMMU container) and
//! `VfioDevice`. The only code here that needs `/dev/vfio`; everything
//! above it is what the vfio-user backend already runs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use vfio_ioctls::{VfioContainer, VfioDevice, VfioOps};
use vmm_sys_util::eventfd::EventFd;

use crate::passthrough::{DmaRange, IrqKind, PassthroughDevice, PassthroughError, RegionInfo};

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
    device: VfioDevice,
    container: Arc<VfioContainer>,
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
        let container =
            Arc::new(VfioContainer::new(None).map_err(|e| kernel("open container", e))?);
        let ops: Arc<dyn VfioOps> = container.clone();
        let device = VfioDevice::new(sysfs, ops, false).map_err(|e| kernel("open device", e))?;
        Ok(KernelVfio { device, container })
    }
}

impl KernelVfio {
    /// Refuses an access that does not fit in the region: vfio-ioctls
    /// logs a failed `pread`/`pwrite` instead of returning it.
    fn check(&self, index: u32, offset: u64, len: usize) -> Result<(), PassthroughError> {
        let size = self.region_info(index).map_or(0, |r| r.size);
        match offset.checked_add(len as u64) {
            Some(end) if end <= size => Ok(()),
            _ => Err(PassthroughError::OutOfRegion { index, offset, len }),
        }
    }
}

impl PassthroughDevice for KernelVfio {
    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        let size = self.device.get_region_size(index);
        (size > 0).then(|| RegionInfo {
            flags: self.device.get_region_flags(index),
            size,
            offset: self.device.get_region_offset(index),
        })
    }

    fn region_read(&self, index: u32, offset: u64, buf: &mut [u8]) -> Result<(), PassthroughError> {
        self.check(index, offset, buf.len())?;
        self.device.region_read(index, buf, offset);
        Ok(())
    }

    fn region_write(&self, index: u32, offset: u64, buf: &[u8]) -> Result<(), PassthroughError> {
        self.check(index, offset, buf.len())?;
        self.device.region_write(index, buf, offset);
        Ok(())
    }

    fn irq_count(&self, kind: IrqKind) -> u32 {
        self.device
            .get_irq_info(kind.vfio_index())
            .map_or(0, |i| i.count)
    }

    fn enable_irq(&self, kind: IrqKind, fds: &[&EventFd]) -> Result<(), PassthroughError> {
        PassthroughError::check_irq_count(kind, self.irq_count(kind), fds.len())?;
        self.device
            .enable_irq(kind.vfio_index(), fds.to_vec())
            .map_err(|e| kernel("enable interrupts", e))
    }

    fn disable_irq(&self, kind: IrqKind) -> Result<(), PassthroughError> {
        self.device
            .disable_irq(kind.vfio_index())
            .map_err(|e| kernel("disable interrupts", e))
    }

    fn unmask_irq(&self, kind: IrqKind) -> Result<(), PassthroughError> {
        self.device
            .unmask_irq(kind.vfio_index())
            .map_err(|e| kernel("unmask interrupts", e))
    }

    fn dma_map(&self, range: &DmaRange<'_>) -> Result<(), PassthroughError> {
        let size = usize::try_from(range.size).map_err(|e| kernel("DMA map", e))?;
        // SAFETY: `host_addr..host_addr + size` is guest RAM the VMM mapped
        // for the VM's lifetime (`dma_ranges` takes it from the guest
        // memory's own regions); the IOMMU pins it until `dma_unmap` or
        // the container is closed, which happens before that memory is
        // unmapped since the VM owns both.
        unsafe {
            self.container
                .vfio_dma_map(range.iova, size, range.host_addr as *mut u8)
        }
        .map_err(|e| kernel("DMA map", e))
    }

    fn dma_unmap(&self, iova: u64, size: u64) -> Result<(), PassthroughError> {
        let size = usize::try_from(size).map_err(|e| kernel("DMA unmap", e))?;
        self.container
            .vfio_dma_unmap(iova, size)
            .map_err(|e| kernel("DMA unmap", e))
    }

    fn reset(&self) -> Result<(), PassthroughError> {
        self.device.reset();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_become_sysfs_paths() {
        assert_eq!(
            sysfs_path("0000:01:00.0"),
            Path::new("/sys/bus/pci/devices/0000:01:00.0")
        );
        assert_eq!(sysfs_path("/sys/devices/x"), Path::new("/sys/devices/x"));
    }

    #[test]
    fn a_host_without_vfio_is_named_first() {
        if Path::new("/dev/vfio/vfio").exists() {
            return;
        }
        let why = missing_support(Path::new("/sys/bus/pci/devices/0000:01:00.0")).unwrap();
        assert!(why.starts_with("/dev/vfio/vfio is missing"), "{why}");
        let err = KernelVfio::open(Path::new("/sys/bus/pci/devices/0000:01:00.0"))
            .err()
            .expect("no container without /dev/vfio");
        assert!(err.to_string().contains("open container"), "{err}");
    }

    /// Real passthrough: config space and BAR sizes of a device bound to
    /// vfio-pci, through the same function the vfio-user backend uses.
    #[test]
    #[ignore = "needs /dev/vfio and a device bound to vfio-pci: set WASMVISOR_VFIO_BDF"]
    fn a_bound_device_shows_its_config_space_through_the_function() {
        let bdf = std::env::var("WASMVISOR_VFIO_BDF").expect("WASMVISOR_VFIO_BDF=0000:BB:DD.F");
        let path = sysfs_path(&bdf);
        if let Some(why) = missing_support(&path) {
            panic!("{why}");
        }
        let device: Arc<dyn PassthroughDevice> = Arc::new(KernelVfio::open(&path).unwrap());
        let mut id = [0u8; 4];
        device
            .region_read(crate::passthrough::CONFIG_REGION, 0, &mut id)
            .unwrap();
        let vendor = std::fs::read_to_string(path.join("vendor")).unwrap();
        let vendor = u16::from_str_radix(vendor.trim().trim_start_matches("0x"), 16).unwrap();
        assert_eq!(u16::from_le_bytes([id[0], id[1]]), vendor);
        let sink = Arc::new(wasmvisor_pci::RecordedInterrupts::default());
        let mut function = crate::VfioPciFunction::new(device, sink).unwrap();
        use wasmvisor_pci::PciDevice;
        assert_eq!(function.config_read(0, 2), u32::from(vendor));
    }
}
