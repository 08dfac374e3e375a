//! A vfio-user server for [`TestDevice`]: the emulated test device served
//! to another process as if it were hardware. Configuration space is
//! region [`CONFIG_REGION`], BAR 0 (the registers) region 0; the device's
//! DMA goes to the memory the client maps, and its interrupts to the
//! eventfds the client sets. BAR 2 is plain memory shared with the
//! client through a memfd (a sparse mmap area covering the region), as a
//! device's on-board memory or a doorbell page would be, so the client can
//! map it into its guest instead of trapping every access. It is the other end of [`crate::VfioUserDevice`] in tests and
//! the example for writing other device servers.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use thiserror::Error;
use tracing::warn;
use vfio_bindings::bindings::vfio::{
    vfio_region_info, vfio_region_sparse_mmap_area, VFIO_IRQ_INFO_EVENTFD,
    VFIO_IRQ_SET_ACTION_MASK, VFIO_IRQ_SET_ACTION_TRIGGER, VFIO_IRQ_SET_ACTION_TYPE_MASK,
    VFIO_IRQ_SET_ACTION_UNMASK, VFIO_PCI_NUM_IRQS, VFIO_PCI_NUM_REGIONS,
    VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_user::{
    DmaMapFlags, DmaUnmapFlags, IrqInfo, Server, ServerBackend, ServerRegion, SparseArea,
};
use vmm_sys_util::eventfd::EventFd;
use wasmvisor_pci::{
    reg, InterruptError, InterruptSink, MsiMessage, PciDevice, TestDevice, CAP_ID_MSI, CAP_ID_MSIX,
    CONFIG_SPACE_SIZE,
};

use crate::memory::{memfd, DmaAccess, MappedDma};
use crate::passthrough::{IrqKind, CONFIG_REGION};

/// The region of the shared-memory BAR.
pub const SHARED_BAR: u32 = 2;
/// Its size: 64 KiB, sixteen pages, so a policy can trap one of them and
/// leave the others mapped.
pub const SHARED_BAR_SIZE: u64 = 0x1_0000;

/// Why the server stopped.
#[derive(Debug, Error)]
pub enum ServerError {
    /// The socket could not be bound.
    #[error("cannot listen on {path}: {source}")]
    Bind {
        /// The socket.
        path: String,
        /// Why.
        #[source]
        source: vfio_user::Error,
    },
    /// The connection failed.
    #[error("vfio-user connection: {0}")]
    Connection(#[source] vfio_user::Error),
}

/// The eventfds the client set, and the INTx state VFIO keeps: the line
/// masks itself each time it fires until the client unmasks it.
#[derive(Default)]
struct IrqFds {
    msi: Vec<EventFd>,
    /// MSI-X vectors' eventfds; while set, messages go to these.
    msix: Vec<EventFd>,
    intx: Option<EventFd>,
    intx_level: bool,
    intx_masked: bool,
}

/// The device's [`InterruptSink`]: MSI messages back to vectors (the
/// server programs data 0, so the data is the vector), INTx onto its
/// eventfd.
#[derive(Default)]
struct EventFdSink(Mutex<IrqFds>);

impl EventFdSink {
    fn lock(&self) -> MutexGuard<'_, IrqFds> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Signals INTx if it is raised and not masked.
    fn fire_intx(fds: &mut IrqFds) {
        if fds.intx_level && !fds.intx_masked {
            if let Some(fd) = &fds.intx {
                let _ = fd.write(1);
                fds.intx_masked = true;
            }
        }
    }
}

impl InterruptSink for EventFdSink {
    fn send_msi(&self, message: MsiMessage) -> Result<(), InterruptError> {
        let fds = self.lock();
        let vectors = if fds.msix.is_empty() {
            &fds.msi
        } else {
            &fds.msix
        };
        let fd = vectors.get(message.data as usize).ok_or(InterruptError {
            reason: format!("no eventfd for vector {}", message.data),
        })?;
        fd.write(1).map_err(|e| InterruptError {
            reason: e.to_string(),
        })
    }

    fn set_intx(&self, asserted: bool) -> Result<(), InterruptError> {
        let mut fds = self.lock();
        fds.intx_level = asserted;
        Self::fire_intx(&mut fds);
        Ok(())
    }
}

/// The test device as a vfio-user backend.
pub struct TestDeviceBackend {
    device: TestDevice,
    /// BAR 2's memory, shared with the client.
    shared: File,
    dma: Arc<MappedDma>,
    irqs: Arc<EventFdSink>,
    /// Every DMA map received, as (IOVA, bytes), across clients.
    dma_history: Vec<(u64, u64)>,
}

impl TestDeviceBackend {
    /// A test device at power-on, with no memory mapped; fails only if
    /// BAR 2's memfd cannot be made.
    pub fn new() -> std::io::Result<TestDeviceBackend> {
        let dma = Arc::new(MappedDma::default());
        let irqs = Arc::new(EventFdSink::default());
        let device = TestDevice::new(dma.clone(), Some(irqs.clone()));
        let shared = memfd(c"wasmvisor-testdev-bar2", SHARED_BAR_SIZE)?;
        Ok(TestDeviceBackend {
            device,
            shared,
            dma,
            irqs,
            dma_history: Vec::new(),
        })
    }

    /// The memory the client has mapped, as (IOVA, bytes).
    pub fn dma_mappings(&self) -> Vec<(u64, u64)> {
        self.dma.mappings()
    }

    /// The device's accesses to the client's memory since the last call,
    /// refused ones included.
    pub fn take_dma_accesses(&self) -> Vec<DmaAccess> {
        self.dma.take_accesses()
    }

    /// Every DMA map it received, as (IOVA, bytes), in order.
    pub fn dma_history(&self) -> &[(u64, u64)] {
        &self.dma_history
    }

    /// The sum of BAR 2's little-endian dwords: what the guest left in
    /// the shared memory, in one number for the server's report.
    pub fn shared_sum(&self) -> std::io::Result<u32> {
        let mut bytes = vec![0u8; SHARED_BAR_SIZE as usize];
        self.shared.read_exact_at(&mut bytes, 0)?;
        Ok(bytes
            .chunks_exact(4)
            .map(|d| u32::from_le_bytes([d[0], d[1], d[2], d[3]]))
            .fold(0u32, u32::wrapping_add))
    }

    /// The regions it serves: BAR 0, BAR 2 (mappable, by the memfd) and
    /// configuration space; the others exist with size 0, since the
    /// protocol indexes regions by position.
    pub fn regions(&self) -> Vec<ServerRegion> {
        (0..VFIO_PCI_NUM_REGIONS)
            .map(|index| {
                let size = match index {
                    0 => TestDevice::BAR_SIZE,
                    SHARED_BAR => SHARED_BAR_SIZE,
                    CONFIG_REGION => CONFIG_SPACE_SIZE as u64,
                    _ => 0,
                };
                let mut flags = if size > 0 {
                    VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE
                } else {
                    0
                };
                let mut sparse_areas = Vec::new();
                let mut mmap_fd = None;
                if index == SHARED_BAR {
                    flags |= VFIO_REGION_INFO_FLAG_MMAP;
                    // The protocol only sends the fd with a sparse mmap
                    // capability, so the whole region is one area.
                    sparse_areas.push(SparseArea {
                        area: vfio_region_sparse_mmap_area { offset: 0, size },
                    });
                    mmap_fd = Some(self.shared.as_raw_fd());
                }
                ServerRegion {
                    region_info: vfio_region_info {
                        argsz: std::mem::size_of::<vfio_region_info>() as u32,
                        flags,
                        index,
                        cap_offset: 0,
                        size,
                        offset: 0,
                    },
                    sparse_areas,
                    mmap_fd,
                }
            })
            .collect()
    }

    /// Its interrupts: INTx and the MSI vectors, by eventfd.
    pub fn irqs() -> Vec<IrqInfo> {
        (0..VFIO_PCI_NUM_IRQS)
            .map(|index| IrqInfo {
                index,
                flags: VFIO_IRQ_INFO_EVENTFD,
                count: match index {
                    i if i == IrqKind::Intx.vfio_index() => 1,
                    i if i == IrqKind::Msi.vfio_index() => TestDevice::MSI_VECTORS.into(),
                    i if i == IrqKind::Msix.vfio_index() => TestDevice::MSIX_VECTORS.into(),
                    _ => 0,
                },
            })
            .collect()
    }

    /// Programs the device's own MSI capability for `vectors` (0: off),
    /// as a host driver does for a device passed through: the guest's
    /// messages live in the client's shadow, the device only needs to
    /// say which vector fired.
    fn program_msi(&mut self, vectors: u32) {
        let Some(at) = self.msi_offset() else { return };
        if vectors == 0 {
            self.device.config_write(at + 2, 2, 0);
            return;
        }
        self.device.config_write(at + 4, 4, 0xfee0_0000);
        self.device.config_write(at + 8, 4, 0);
        self.device.config_write(at + 0x0c, 2, 0);
        self.device.config_write(at + 0x10, 4, 0);
        let mme = vectors.next_power_of_two().trailing_zeros();
        self.device.config_write(at + 2, 2, 1 | mme << 4);
    }

    /// Programs the device's own MSI-X table for `vectors` (0: off): entry
    /// i sends data i, which the sink turns back into eventfd i.
    fn program_msix(&mut self, vectors: u32) {
        let Some(at) = self.capability(CAP_ID_MSIX) else {
            return;
        };
        if vectors == 0 {
            self.device.config_write(at + 2, 2, 0);
            return;
        }
        for vector in 0..vectors.min(TestDevice::MSIX_VECTORS.into()) {
            let entry = TestDevice::MSIX_TABLE + 16 * u64::from(vector);
            self.device.bar_write(0, entry, 8, 0xfee0_0000);
            self.device.bar_write(0, entry + 8, 4, vector.into());
            self.device.bar_write(0, entry + 12, 4, 0);
        }
        self.device.config_write(at + 2, 2, 0x8000);
    }

    fn msi_offset(&mut self) -> Option<u16> {
        self.capability(CAP_ID_MSI)
    }

    /// Where the device's capability `id` is.
    fn capability(&mut self, id: u8) -> Option<u16> {
        let mut at = self.device.config_read(reg::CAPABILITIES, 1) as u16 & 0xfc;
        for _ in 0..48 {
            if at < 0x40 {
                return None;
            }
            if self.device.config_read(at, 1) as u8 == id {
                return Some(at);
            }
            at = self.device.config_read(at + 1, 1) as u16 & 0xfc;
        }
        None
    }
}

/// Splits `offset..offset + len` into naturally aligned accesses of at
/// most `max` bytes, as the device's registers want them.
fn chunks(offset: u64, len: usize, max: usize) -> impl Iterator<Item = (u64, usize)> {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        if at >= len {
            return None;
        }
        let o = offset + at as u64;
        let size = [8usize, 4, 2, 1]
            .into_iter()
            .find(|&s| s <= max && s <= len - at && o.is_multiple_of(s as u64))?;
        at += size;
        Some((o, size))
    })
}

fn out_of_range() -> std::io::Error {
    std::io::Error::from(std::io::ErrorKind::InvalidInput)
}

/// Refuses a trapped access to BAR 2 that is not inside it.
fn check_shared(offset: u64, len: usize) -> std::io::Result<()> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= SHARED_BAR_SIZE => Ok(()),
        _ => Err(out_of_range()),
    }
}

impl ServerBackend for TestDeviceBackend {
    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> std::io::Result<()> {
        if region == SHARED_BAR {
            check_shared(offset, data.len())?;
            return self.shared.read_exact_at(data, offset);
        }
        let mut pos = 0;
        for (o, size) in chunks(offset, data.len(), if region == 0 { 8 } else { 4 }) {
            let value = match region {
                0 => self.device.bar_read(0, o, size as u8),
                CONFIG_REGION => {
                    let o = u16::try_from(o).map_err(|_| out_of_range())?;
                    self.device.config_read(o, size as u8).into()
                }
                _ => return Err(out_of_range()),
            };
            data[pos..pos + size].copy_from_slice(&value.to_le_bytes()[..size]);
            pos += size;
        }
        Ok(())
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> std::io::Result<()> {
        if region == SHARED_BAR {
            check_shared(offset, data.len())?;
            return self.shared.write_all_at(data, offset);
        }
        let mut pos = 0;
        for (o, size) in chunks(offset, data.len(), if region == 0 { 8 } else { 4 }) {
            let mut bytes = [0u8; 8];
            bytes[..size].copy_from_slice(&data[pos..pos + size]);
            let value = u64::from_le_bytes(bytes);
            match region {
                0 => self.device.bar_write(0, o, size as u8, value),
                CONFIG_REGION => {
                    let o = u16::try_from(o).map_err(|_| out_of_range())?;
                    self.device.config_write(o, size as u8, value as u32);
                }
                _ => return Err(out_of_range()),
            }
            pos += size;
        }
        Ok(())
    }

    fn dma_map(
        &mut self,
        _flags: DmaMapFlags,
        offset: u64,
        address: u64,
        size: u64,
        fd: Option<File>,
    ) -> std::io::Result<()> {
        let file = fd.ok_or_else(out_of_range)?;
        self.dma_history.push((address, size));
        self.dma
            .map(address, size, file, offset)
            .map_err(std::io::Error::other)
    }

    fn dma_unmap(&mut self, _flags: DmaUnmapFlags, address: u64, size: u64) -> std::io::Result<()> {
        self.dma.unmap(address, size);
        Ok(())
    }

    fn reset(&mut self) -> std::io::Result<()> {
        self.device.reset();
        Ok(())
    }

    fn set_irqs(
        &mut self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        fds: Vec<File>,
    ) -> std::io::Result<()> {
        let action = flags & VFIO_IRQ_SET_ACTION_TYPE_MASK;
        let fds: Vec<EventFd> = fds
            .into_iter()
            // An eventfd passed over the socket arrives as a plain file.
            .map(|f| {
                // SAFETY: `into_raw_fd` hands over the fd the socket gave
                // us, owned by nothing else from here on; if the client
                // sent something that is not an eventfd, writes to it just
                // fail.
                unsafe { EventFd::from_raw_fd(f.into_raw_fd()) }
            })
            .collect();
        match (index, action) {
            (i, VFIO_IRQ_SET_ACTION_TRIGGER) if i == IrqKind::Msi.vfio_index() => {
                if start != 0 {
                    return Err(out_of_range());
                }
                let vectors = if fds.is_empty() { 0 } else { count };
                self.irqs.lock().msi = fds;
                self.program_msi(vectors);
            }
            (i, VFIO_IRQ_SET_ACTION_TRIGGER) if i == IrqKind::Msix.vfio_index() => {
                if start != 0 {
                    return Err(out_of_range());
                }
                let vectors = if fds.is_empty() { 0 } else { count };
                self.irqs.lock().msix = fds;
                self.program_msix(vectors);
            }
            (i, VFIO_IRQ_SET_ACTION_TRIGGER) if i == IrqKind::Intx.vfio_index() => {
                let mut irqs = self.irqs.lock();
                irqs.intx = fds.into_iter().next();
                irqs.intx_masked = false;
                EventFdSink::fire_intx(&mut irqs);
            }
            (i, VFIO_IRQ_SET_ACTION_UNMASK) if i == IrqKind::Intx.vfio_index() => {
                let mut irqs = self.irqs.lock();
                irqs.intx_masked = false;
                EventFdSink::fire_intx(&mut irqs);
            }
            (i, VFIO_IRQ_SET_ACTION_MASK) if i == IrqKind::Intx.vfio_index() => {
                self.irqs.lock().intx_masked = true;
            }
            _ => return Err(out_of_range()),
        }
        Ok(())
    }
}

/// A bound vfio-user socket serving a [`TestDeviceBackend`].
pub struct TestDeviceServer {
    server: Server,
}

impl TestDeviceServer {
    /// Listens on `socket`, which must not exist yet, for `backend`
    /// (whose shared memory the regions name).
    pub fn bind(
        socket: &Path,
        backend: &TestDeviceBackend,
    ) -> Result<TestDeviceServer, ServerError> {
        let server = Server::new(socket, true, TestDeviceBackend::irqs(), backend.regions())
            .map_err(|source| ServerError::Bind {
                path: socket.display().to_string(),
                source,
            })?;
        Ok(TestDeviceServer { server })
    }

    /// Serves one client until it disconnects. The client finds BAR 2
    /// zeroed, as at power-on.
    pub fn serve_one(&self, backend: &mut TestDeviceBackend) -> Result<(), ServerError> {
        if let Err(e) = backend
            .shared
            .write_all_at(&[0; SHARED_BAR_SIZE as usize], 0)
        {
            warn!("cannot clear BAR 2: {e}");
        }
        let result = self.server.run(backend).map_err(ServerError::Connection);
        // The next client starts from a device at power-on.
        backend.dma.clear();
        *backend.irqs.lock() = IrqFds::default();
        backend.device.reset();
        result
    }
}
