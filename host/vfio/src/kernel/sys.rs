//! [`VfioSys`]: the VFIO device and container operations `KernelVfio`
//! needs, one method per ioctl or file operation, and [`IoctlSys`], their
//! implementation over vfio-ioctls. Everything above this trait is tested
//! against `FakeVfio`; only [`IoctlSys`] needs `/dev/vfio`.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use vfio_ioctls::{VfioContainer, VfioDevice, VfioOps, VfioRegionInfoCap};
use vmm_sys_util::eventfd::EventFd;

use crate::passthrough::{MmapArea, PassthroughError, RegionInfo};

/// What `VFIO_DEVICE_GET_REGION_INFO` says about a region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysRegion {
    /// Flags, size and offset in the device fd.
    pub info: RegionInfo,
    /// The areas of `VFIO_REGION_INFO_CAP_SPARSE_MMAP`, if the region has
    /// that capability: then only they may be mapped (the rest, such as an
    /// MSI-X table, must be trapped); without it the whole region may.
    pub sparse_mmap: Option<Vec<MmapArea>>,
}

/// What a `VFIO_DEVICE_SET_IRQS` asks of an interrupt index.
#[derive(Debug, Clone, Copy)]
pub enum SetIrqs<'a> {
    /// `ACTION_TRIGGER | DATA_EVENTFD`: vector `i` signals `fds[i]`.
    Trigger(&'a [&'a EventFd]),
    /// `ACTION_TRIGGER | DATA_NONE` with count 0: the index stops
    /// signalling.
    Disable,
    /// `ACTION_UNMASK | DATA_NONE`: unmask (INTx, which VFIO masks each
    /// time it fires).
    Unmask,
}

/// A [`SetIrqs`] without its eventfds, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqAction {
    /// [`SetIrqs::Trigger`].
    Trigger,
    /// [`SetIrqs::Disable`].
    Disable,
    /// [`SetIrqs::Unmask`].
    Unmask,
}

impl SetIrqs<'_> {
    /// The action, without the eventfds.
    pub fn action(&self) -> IrqAction {
        match self {
            SetIrqs::Trigger(_) => IrqAction::Trigger,
            SetIrqs::Disable => IrqAction::Disable,
            SetIrqs::Unmask => IrqAction::Unmask,
        }
    }

    /// How many eventfds it carries.
    pub fn count(&self) -> usize {
        match self {
            SetIrqs::Trigger(fds) => fds.len(),
            SetIrqs::Disable | SetIrqs::Unmask => 0,
        }
    }
}

/// The VFIO syscalls behind `KernelVfio`: a device fd and the container
/// its group is in. Errors are the syscall's; `KernelVfio` names the
/// operation. Info queries are infallible because VFIO answers them once
/// at open (vfio-ioctls caches them).
pub trait VfioSys: Send + Sync {
    /// `VFIO_DEVICE_GET_REGION_INFO`: region `index`, if the device has
    /// one there.
    fn region_info(&self, index: u32) -> Option<SysRegion>;

    /// `VFIO_DEVICE_GET_IRQ_INFO`: the vectors of interrupt index `index`
    /// (0: none).
    fn irq_count(&self, index: u32) -> u32;

    /// `pread` of all of `buf` at `offset` in the device fd.
    fn pread(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;

    /// `pwrite` of all of `buf` at `offset` in the device fd.
    fn pwrite(&self, offset: u64, buf: &[u8]) -> io::Result<()>;

    /// `VFIO_DEVICE_SET_IRQS` on interrupt index `index`.
    fn set_irqs(&self, index: u32, action: SetIrqs<'_>) -> io::Result<()>;

    /// `VFIO_DEVICE_RESET`.
    fn reset(&self) -> io::Result<()>;

    /// `VFIO_IOMMU_MAP_DMA` on the container: the device may DMA to
    /// `iova..iova + size`, which is `host_addr..host_addr + size` here.
    ///
    /// # Safety
    ///
    /// `host_addr..host_addr + size` must stay mapped in this process,
    /// and be memory nothing relies on the device leaving alone, until it
    /// is unmapped or the container is closed: the device writes it
    /// behind the compiler's back.
    unsafe fn dma_map(&self, iova: u64, size: usize, host_addr: u64) -> io::Result<()>;

    /// `VFIO_IOMMU_UNMAP_DMA` on the container.
    fn dma_unmap(&self, iova: u64, size: usize) -> io::Result<()>;

    /// A new handle on the device fd, to `mmap` regions from.
    fn device_file(&self) -> io::Result<File>;
}

/// Shared syscall layers (a test keeps one `Arc<FakeVfio>` to inspect
/// and hands a clone to `KernelVfio`).
impl<S: VfioSys + ?Sized> VfioSys for Arc<S> {
    fn region_info(&self, index: u32) -> Option<SysRegion> {
        (**self).region_info(index)
    }

    fn irq_count(&self, index: u32) -> u32 {
        (**self).irq_count(index)
    }

    fn pread(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        (**self).pread(offset, buf)
    }

    fn pwrite(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        (**self).pwrite(offset, buf)
    }

    fn set_irqs(&self, index: u32, action: SetIrqs<'_>) -> io::Result<()> {
        (**self).set_irqs(index, action)
    }

    fn reset(&self) -> io::Result<()> {
        (**self).reset()
    }

    unsafe fn dma_map(&self, iova: u64, size: usize, host_addr: u64) -> io::Result<()> {
        // SAFETY: the caller upholds the contract, which is the same.
        unsafe { (**self).dma_map(iova, size, host_addr) }
    }

    fn dma_unmap(&self, iova: u64, size: usize) -> io::Result<()> {
        (**self).dma_unmap(iova, size)
    }

    fn device_file(&self) -> io::Result<File> {
        (**self).device_file()
    }
}

/// The real syscalls, through vfio-ioctls' `VfioContainer` (legacy
/// type-1 IOMMU container) and `VfioDevice`.
pub struct IoctlSys {
    /// A second handle on the device fd: vfio-ioctls' own region accesses
    /// only log their errors, and it lends no fd to `mmap` from. Declared
    /// before `device` so it is closed first: vfio-ioctls releases the
    /// group after closing its device fd, which fails (EBUSY) while
    /// another handle keeps the device open.
    file: File,
    device: VfioDevice,
    container: Arc<VfioContainer>,
}

fn open_failed(op: &'static str, e: impl std::fmt::Display) -> PassthroughError {
    PassthroughError::Kernel {
        op,
        reason: e.to_string(),
    }
}

impl IoctlSys {
    /// Opens the VFIO container and the device at `sysfs` (its group must
    /// be viable: every device in it bound to vfio-pci).
    pub fn open(sysfs: &Path) -> Result<IoctlSys, PassthroughError> {
        let container =
            Arc::new(VfioContainer::new(None).map_err(|e| open_failed("open container", e))?);
        let ops: Arc<dyn VfioOps> = container.clone();
        let device =
            VfioDevice::new(sysfs, ops, false).map_err(|e| open_failed("open device", e))?;
        // SAFETY: the fd is `device`'s, open until `device` is dropped,
        // and the borrow ends within this statement, once duplicated.
        let borrowed = unsafe { BorrowedFd::borrow_raw(device.as_raw_fd()) };
        let file = File::from(
            borrowed
                .try_clone_to_owned()
                .map_err(|e| open_failed("duplicate device fd", e))?,
        );
        Ok(IoctlSys {
            file,
            device,
            container,
        })
    }
}

impl VfioSys for IoctlSys {
    fn region_info(&self, index: u32) -> Option<SysRegion> {
        let size = self.device.get_region_size(index);
        if size == 0 {
            return None;
        }
        let sparse_mmap =
            self.device
                .get_region_caps(index)
                .into_iter()
                .find_map(|cap| match cap {
                    VfioRegionInfoCap::SparseMmap(sparse) => Some(
                        sparse
                            .areas
                            .iter()
                            .map(|a| MmapArea {
                                offset: a.offset,
                                size: a.size,
                            })
                            .collect(),
                    ),
                    _ => None,
                });
        Some(SysRegion {
            info: RegionInfo {
                flags: self.device.get_region_flags(index),
                size,
                offset: self.device.get_region_offset(index),
            },
            sparse_mmap,
        })
    }

    fn irq_count(&self, index: u32) -> u32 {
        self.device.get_irq_info(index).map_or(0, |i| i.count)
    }

    fn pread(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn pwrite(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    fn set_irqs(&self, index: u32, action: SetIrqs<'_>) -> io::Result<()> {
        match action {
            SetIrqs::Trigger(fds) => self.device.enable_irq(index, fds.to_vec()),
            SetIrqs::Disable => self.device.disable_irq(index),
            SetIrqs::Unmask => self.device.unmask_irq(index),
        }
        .map_err(io::Error::other)
    }

    /// vfio-ioctls resets only a device that says it can, and does not
    /// report the ioctl's result.
    fn reset(&self) -> io::Result<()> {
        self.device.reset();
        Ok(())
    }

    unsafe fn dma_map(&self, iova: u64, size: usize, host_addr: u64) -> io::Result<()> {
        // SAFETY: the caller keeps `host_addr..host_addr + size` mapped
        // and free for the device until it is unmapped; the IOMMU pins it
        // until then or until the container is closed.
        unsafe {
            self.container
                .vfio_dma_map(iova, size, host_addr as *mut u8)
        }
        .map_err(io::Error::other)
    }

    fn dma_unmap(&self, iova: u64, size: usize) -> io::Result<()> {
        self.container
            .vfio_dma_unmap(iova, size)
            .map_err(io::Error::other)
    }

    fn device_file(&self) -> io::Result<File> {
        self.file.try_clone()
    }
}
