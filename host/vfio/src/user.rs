//! [`VfioUserDevice`]: a device served by another process over the
//! vfio-user protocol (a Unix socket), through the `vfio_user` crate's
//! client. Regions, interrupts, DMA and reset map one to one onto
//! protocol messages. DMA maps carry the fd of guest RAM, so the VMM must
//! back guest RAM with a memfd ([`crate::memfd_guest_memory`]).

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

use vfio_bindings::bindings::vfio::{
    VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_ACTION_UNMASK, VFIO_IRQ_SET_DATA_EVENTFD,
    VFIO_IRQ_SET_DATA_NONE, VFIO_REGION_INFO_FLAG_MMAP,
};
use vfio_user::Client;
use vmm_sys_util::eventfd::EventFd;

use crate::passthrough::{
    usable_areas, DmaRange, IrqKind, MmapArea, PassthroughDevice, PassthroughError, RegionInfo,
    RegionMapping,
};

/// A vfio-user device, connected.
pub struct VfioUserDevice {
    client: Mutex<Client>,
    irq_counts: [u32; 3],
}

fn user(op: &'static str) -> impl FnOnce(vfio_user::Error) -> PassthroughError {
    move |source| PassthroughError::User { op, source }
}

impl VfioUserDevice {
    /// Connects to the server listening on `socket` and learns its
    /// regions and interrupts.
    pub fn connect(socket: &Path) -> Result<VfioUserDevice, PassthroughError> {
        let mut client = Client::new(socket).map_err(user("connect"))?;
        let mut irq_counts = [0; 3];
        for kind in [IrqKind::Intx, IrqKind::Msi, IrqKind::Msix] {
            let info = client
                .get_irq_info(kind.vfio_index())
                .map_err(user("get IRQ info"))?;
            irq_counts[kind.vfio_index() as usize] = info.count;
        }
        Ok(VfioUserDevice {
            client: Mutex::new(client),
            irq_counts,
        })
    }

    fn client(&self) -> MutexGuard<'_, Client> {
        self.client.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl PassthroughDevice for VfioUserDevice {
    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        self.client().region(index).map(|r| RegionInfo {
            flags: r.flags,
            size: r.size,
            offset: r.file_offset.as_ref().map_or(0, |f| f.start()),
        })
    }

    fn region_read(&self, index: u32, offset: u64, buf: &mut [u8]) -> Result<(), PassthroughError> {
        // The protocol has no error reply the client can parse for a bad
        // region access, so bad accesses never go out.
        self.check_access(index, offset, buf.len())?;
        self.client()
            .region_read(index, offset, buf)
            .map_err(user("region read"))
    }

    fn region_write(&self, index: u32, offset: u64, buf: &[u8]) -> Result<(), PassthroughError> {
        self.check_access(index, offset, buf.len())?;
        self.client()
            .region_write(index, offset, buf)
            .map_err(user("region write"))
    }

    fn mmap_areas(&self, index: u32) -> Vec<MmapArea> {
        let client = self.client();
        let Some(region) = client.region(index) else {
            return Vec::new();
        };
        // Only a region the server sent an fd for can be mapped.
        if region.flags & VFIO_REGION_INFO_FLAG_MMAP == 0 || region.file_offset.is_none() {
            return Vec::new();
        }
        let areas: Vec<MmapArea> = if region.sparse_areas.is_empty() {
            vec![MmapArea {
                offset: 0,
                size: region.size,
            }]
        } else {
            region
                .sparse_areas
                .iter()
                .map(|a| MmapArea {
                    offset: a.offset,
                    size: a.size,
                })
                .collect()
        };
        usable_areas(areas, region.size)
    }

    fn mmap(&self, index: u32, area: MmapArea) -> Result<RegionMapping, PassthroughError> {
        if !self.mmap_areas(index).contains(&area) {
            return Err(PassthroughError::Map {
                index,
                offset: area.offset,
                reason: "not an area the server offers for mapping".into(),
            });
        }
        let client = self.client();
        let file_offset = client
            .region(index)
            .and_then(|r| r.file_offset.as_ref())
            .expect("mmap_areas checked the fd");
        let file = file_offset
            .file()
            .try_clone()
            .map_err(|e| PassthroughError::Map {
                index,
                offset: area.offset,
                reason: e.to_string(),
            })?;
        RegionMapping::map(file, file_offset.start(), index, area)
    }

    fn irq_count(&self, kind: IrqKind) -> u32 {
        self.irq_counts[kind.vfio_index() as usize]
    }

    fn enable_irq(&self, kind: IrqKind, fds: &[&EventFd]) -> Result<(), PassthroughError> {
        PassthroughError::check_irq_count(kind, self.irq_count(kind), fds.len())?;
        let raw: Vec<_> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
        self.client()
            .set_irqs(
                kind.vfio_index(),
                VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
                0,
                raw.len() as u32,
                &raw,
            )
            .map_err(user("enable IRQ"))
    }

    fn disable_irq(&self, kind: IrqKind) -> Result<(), PassthroughError> {
        self.client()
            .set_irqs(
                kind.vfio_index(),
                VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_TRIGGER,
                0,
                0,
                &[],
            )
            .map_err(user("disable IRQ"))
    }

    fn unmask_irq(&self, kind: IrqKind) -> Result<(), PassthroughError> {
        self.client()
            .set_irqs(
                kind.vfio_index(),
                VFIO_IRQ_SET_DATA_NONE | VFIO_IRQ_SET_ACTION_UNMASK,
                0,
                1,
                &[],
            )
            .map_err(user("unmask IRQ"))
    }

    fn dma_map(&self, range: &DmaRange<'_>) -> Result<(), PassthroughError> {
        let fd = range.fd.ok_or(PassthroughError::DmaNeedsFd {
            iova: range.iova,
            size: range.size,
        })?;
        self.client()
            .dma_map(range.fd_offset, range.iova, range.size, fd.as_raw_fd())
            .map_err(user("DMA map"))
    }

    fn dma_unmap(&self, iova: u64, size: u64) -> Result<(), PassthroughError> {
        self.client()
            .dma_unmap(iova, size)
            .map_err(user("DMA unmap"))
    }

    fn reset(&self) -> Result<(), PassthroughError> {
        self.client().reset().map_err(user("reset"))
    }
}

impl Drop for VfioUserDevice {
    fn drop(&mut self) {
        // Tells the server the VMM is gone, so it drops its mappings of
        // guest RAM.
        let _ = self.client().shutdown();
    }
}
