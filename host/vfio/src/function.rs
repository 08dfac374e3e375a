//! [`VfioPciFunction`]: a device behind [`PassthroughDevice`] as a
//! [`PciDevice`] on wasmvisor's bus. The guest sees a shadow of the
//! device's configuration space (see `shadow`); of its writes only the
//! command register reaches the device. BAR areas the backend can mmap
//! are offered to the VMM as direct maps (memslots, except where policies
//! subscribe); the rest is trapped and forwarded as region reads and
//! writes. MSI and MSI-X are emulated here (the MSI-X table and PBA
//! included) and the device's vectors enabled to match.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use thiserror::Error;
use tracing::warn;
use wasmvisor_pci::{
    reg, AddressSpace, BarRegion, ConfigSpace, DirectMap, InterruptSink, Msi, Msix, MsixEmulation,
    PciDevice,
};

use crate::bypass::IrqBypass;
use crate::interrupts::{Interrupts, Targets, Vectors};
use crate::passthrough::{IrqKind, MmapArea, PassthroughDevice, RegionMapping, CONFIG_REGION};
use crate::shadow::{self, ShadowError, MSI_CONTROL};

/// Why a function could not be set up.
#[derive(Debug, Error)]
pub enum FunctionError {
    /// The configuration space could not be virtualized.
    #[error(transparent)]
    Shadow(#[from] ShadowError),
    /// No eventfds.
    #[error("cannot create the interrupt eventfds: {0}")]
    EventFd(#[source] std::io::Error),
    /// The device refused the INTx eventfd.
    #[error("cannot enable INTx: {0}")]
    Intx(#[source] crate::PassthroughError),
}

/// A passed-through PCI function.
pub struct VfioPciFunction {
    device: Arc<dyn PassthroughDevice>,
    config: Arc<Mutex<ConfigSpace>>,
    msi: Option<Msi>,
    interrupts: Arc<Interrupts>,
    /// MSI vectors now enabled on the device (0: MSI off there).
    msi_on_device: u32,
    msix: Option<Msix>,
    /// MSI-X is enabled on the device, every vector on its eventfd.
    msix_on_device: bool,
    hidden: Vec<u8>,
    /// BAR areas the backend mapped into the VMM, which the VMM may map
    /// into the guest (`PciDevice::direct_maps`).
    mappings: Vec<RegionMapping>,
}

impl VfioPciFunction {
    /// Virtualizes `device`, whose interrupts go to `sink`. INTx is wired
    /// at once if the device has a pin; MSI when the guest enables it.
    pub fn new(
        device: Arc<dyn PassthroughDevice>,
        sink: Arc<dyn InterruptSink>,
    ) -> Result<VfioPciFunction, FunctionError> {
        Self::with_bypass(device, sink, None)
    }

    /// Like [`VfioPciFunction::new`], with the interrupts routed through
    /// `bypass` whenever the guest's programming allows (see `bypass`).
    pub fn with_bypass(
        device: Arc<dyn PassthroughDevice>,
        sink: Arc<dyn InterruptSink>,
        bypass: Option<Arc<dyn IrqBypass>>,
    ) -> Result<VfioPciFunction, FunctionError> {
        let shadow = shadow::build(device.as_ref())?;
        let config = Arc::new(Mutex::new(shadow.config));
        let msi_vectors = match shadow.msi {
            Some(msi) => {
                let config = config.lock().unwrap_or_else(PoisonError::into_inner);
                // What the capability offers, bounded by what the backend
                // can signal.
                let capable = 1u32 << ((config.word(msi.offset() + MSI_CONTROL) >> 1) & 0x7).min(5);
                capable.min(device.irq_count(IrqKind::Msi))
            }
            None => 0,
        };
        let has_pin = config
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .interrupt_pin()
            .is_some();
        let intx = has_pin && device.irq_count(IrqKind::Intx) > 0;
        let (msix, msix_vectors, msix_trapped) = match shadow.msix {
            Some(msix) => {
                let config = config.lock().unwrap_or_else(PoisonError::into_inner);
                let emulation = MsixEmulation::new(&config, msix);
                let vectors =
                    u32::from(emulation.table().table_size()).min(device.irq_count(IrqKind::Msix));
                let trapped = emulation.trapped(&config).to_vec();
                (Some(emulation), vectors, trapped)
            }
            None => (None, 0, Vec::new()),
        };
        let interrupts = Interrupts::new(
            Arc::clone(&config),
            Vectors {
                msi: shadow.msi,
                msi_vectors,
                msix,
                msix_vectors,
                intx,
            },
            Targets {
                device: Arc::clone(&device),
                sink,
                bypass,
            },
        )
        .map_err(FunctionError::EventFd)?;
        if let Some(fd) = &interrupts.intx_fd {
            device
                .enable_irq(IrqKind::Intx, &[fd])
                .map_err(FunctionError::Intx)?;
            interrupts.attach_intx();
        }
        let bars = config
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .bar_regions();
        let mappings = map_bars(device.as_ref(), &bars, &msix_trapped);
        Ok(VfioPciFunction {
            device,
            config,
            msi: shadow.msi,
            msix: shadow.msix,
            interrupts: Arc::new(interrupts),
            msi_on_device: 0,
            msix_on_device: false,
            hidden: shadow.hidden,
            mappings,
        })
    }

    /// The function's interrupt path: call [`Interrupts::poll`] when the
    /// VMM has time, or [`Interrupts::spawn`] a thread for it.
    pub fn interrupts(&self) -> Arc<Interrupts> {
        Arc::clone(&self.interrupts)
    }

    /// The device's capabilities the guest does not see, by ID.
    pub fn hidden_capabilities(&self) -> &[u8] {
        &self.hidden
    }

    /// The device behind the function.
    pub fn device(&self) -> &Arc<dyn PassthroughDevice> {
        &self.device
    }

    fn config(&self) -> MutexGuard<'_, ConfigSpace> {
        self.config.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Brings MSI on the device in line with the shadow's enable bit and
    /// vector count.
    fn sync_msi(&mut self) {
        let Some(msi) = self.msi else { return };
        let wanted = {
            let config = self.config();
            if msi.is_enabled(&config) {
                msi.vectors(&config)
                    .min(self.interrupts.msi_fds.len() as u32)
            } else {
                0
            }
        };
        if wanted == self.msi_on_device {
            return;
        }
        let result = if wanted == 0 {
            self.device.disable_irq(IrqKind::Msi)
        } else {
            let fds: Vec<_> = self.interrupts.msi_fds[..wanted as usize].iter().collect();
            self.device.enable_irq(IrqKind::Msi, &fds)
        };
        match result {
            Ok(()) => self.msi_on_device = wanted,
            Err(e) => warn!("passthrough MSI with {wanted} vectors: {e}"),
        }
    }

    /// Runs `f` on the MSI-X table with the shadow, if the function has
    /// one; `None` also when `f` says the access is not the table's.
    fn msix_access<T>(
        &self,
        f: impl FnOnce(&ConfigSpace, &mut MsixEmulation) -> Option<T>,
    ) -> Option<T> {
        let msix = self.interrupts.msix.as_ref()?;
        let config = self.config();
        let mut msix = msix.lock().unwrap_or_else(PoisonError::into_inner);
        f(&config, &mut msix)
    }

    /// Brings MSI-X on the device in line with the shadow's enable bit.
    /// All vectors are enabled at once; masking is the VMM's, in its own
    /// table, so the device never needs reprogramming for it.
    fn sync_msix(&mut self) {
        let Some(msix) = self.msix else { return };
        let wanted = msix.is_enabled(&self.config()) && !self.interrupts.msix_fds.is_empty();
        if wanted == self.msix_on_device {
            return;
        }
        let result = if wanted {
            let fds: Vec<_> = self.interrupts.msix_fds.iter().collect();
            self.device.enable_irq(IrqKind::Msix, &fds)
        } else {
            self.device.disable_irq(IrqKind::Msix)
        };
        match result {
            Ok(()) => self.msix_on_device = wanted,
            Err(e) => warn!("passthrough MSI-X: {e}"),
        }
    }

    /// Stops the device's interrupts and resets it: on guest reset and
    /// when the VM shuts down, so the device does not DMA into memory the
    /// host reuses.
    pub fn shutdown(&mut self) {
        self.interrupts.detach_all();
        if self.msi_on_device != 0 {
            let _ = self.device.disable_irq(IrqKind::Msi);
            self.msi_on_device = 0;
        }
        if self.msix_on_device {
            let _ = self.device.disable_irq(IrqKind::Msix);
            self.msix_on_device = false;
        }
        self.interrupts.clear();
        if let Err(e) = self.device.reset() {
            warn!("passthrough device reset: {e}");
        }
    }
}

/// Maps what the backend can map of each memory BAR; whatever fails to
/// map stays trapped, which is slower but correct. Areas holding any of
/// the `trapped` (bar, offset, len) ranges (the MSI-X table and PBA, which
/// the VMM emulates) are not mapped at all.
fn map_bars(
    device: &dyn PassthroughDevice,
    bars: &[BarRegion],
    trapped: &[(u8, u64, u64)],
) -> Vec<RegionMapping> {
    let mut mappings = Vec::new();
    for bar in bars
        .iter()
        .filter(|b| b.bar.space() == AddressSpace::Memory)
    {
        let index = u32::from(bar.index);
        let clear = |area: &MmapArea| {
            !trapped.iter().any(|&(b, start, len)| {
                b == bar.index && start < area.offset + area.size && area.offset < start + len
            })
        };
        for area in device.mmap_areas(index).into_iter().filter(clear) {
            match device.mmap(index, area) {
                Ok(mapping) => mappings.push(mapping),
                Err(e) => warn!("passthrough BAR {index} stays trapped: {e}"),
            }
        }
    }
    mappings
}

/// True if `offset..offset + size` overlaps `start..start + len`.
fn overlaps(offset: u16, size: u8, start: u16, len: u16) -> bool {
    offset < start + len && start < offset + u16::from(size)
}

impl PciDevice for VfioPciFunction {
    fn config_read(&mut self, offset: u16, size: u8) -> u32 {
        self.config().read(offset, size)
    }

    fn config_write(&mut self, offset: u16, size: u8, value: u32) {
        let command = {
            let mut config = self.config();
            config.write(offset, size, value);
            overlaps(offset, size, reg::COMMAND, 2).then(|| config.word(reg::COMMAND))
        };
        // Memory and I/O decoding, bus mastering and INTx disable are the
        // device's to act on; the shadow's masks have already dropped the
        // reserved bits.
        if let Some(command) = command {
            let write = self.device.region_write(
                CONFIG_REGION,
                reg::COMMAND.into(),
                &command.to_le_bytes(),
            );
            if let Err(e) = write {
                warn!("passthrough command register: {e}");
            }
        }
        let msi = self
            .msi
            .is_some_and(|m| overlaps(offset, size, m.offset(), 24));
        let msix = self
            .msix
            .is_some_and(|m| overlaps(offset, size, m.offset(), 12));
        if msi || msix {
            self.sync_msi();
            self.sync_msix();
            self.interrupts.send_unmasked();
            self.interrupts.sync_routes();
        }
    }

    fn bar_regions(&self) -> Vec<BarRegion> {
        self.config().bar_regions()
    }

    fn bar_read(&mut self, bar: u8, offset: u64, size: u8) -> u64 {
        if let Some(value) =
            self.msix_access(|config, msix| msix.bar_read(config, bar, offset, size))
        {
            return value;
        }
        let mut buf = [0u8; 8];
        let Some(buf) = buf
            .get_mut(..usize::from(size))
            .filter(|_| matches!(size, 1 | 2 | 4 | 8))
        else {
            return u64::MAX;
        };
        let value = match self.device.region_read(bar.into(), offset, buf) {
            Ok(()) => buf.iter().rev().fold(0u64, |v, &b| v << 8 | u64::from(b)),
            Err(e) => {
                warn!("passthrough BAR {bar} read at {offset:#x}: {e}");
                u64::MAX >> (64 - 8 * u32::from(size))
            }
        };
        self.interrupts.end_of_intx();
        value
    }

    fn bar_write(&mut self, bar: u8, offset: u64, size: u8, value: u64) {
        let table = self.msix_access(|config, msix| {
            msix.bar_write(config, bar, offset, size, value)
                .then_some(())
        });
        if table.is_some() {
            // The write may have unmasked or re-aimed a vector.
            self.interrupts.send_unmasked();
            self.interrupts.sync_routes();
            return;
        }
        if !matches!(size, 1 | 2 | 4 | 8) {
            return;
        }
        let bytes = value.to_le_bytes();
        if let Err(e) = self
            .device
            .region_write(bar.into(), offset, &bytes[..usize::from(size)])
        {
            warn!("passthrough BAR {bar} write at {offset:#x}: {e}");
        }
        self.interrupts.end_of_intx();
    }

    fn direct_maps(&self) -> Vec<DirectMap> {
        self.mappings
            .iter()
            .map(|m| DirectMap {
                bar: m.index() as u8,
                offset: m.area().offset,
                size: m.area().size,
                host_addr: m.host_addr(),
            })
            .collect()
    }

    fn reset(&mut self) {
        self.shutdown();
        self.config().reset();
        if let Some(msix) = &self.interrupts.msix {
            msix.lock().unwrap_or_else(PoisonError::into_inner).reset();
        }
        if let Some(fd) = &self.interrupts.intx_fd {
            if let Err(e) = self.device.enable_irq(IrqKind::Intx, &[fd]) {
                warn!("passthrough INTx after reset: {e}");
            }
            self.interrupts.attach_intx();
        }
    }
}

impl Drop for VfioPciFunction {
    fn drop(&mut self) {
        if self.interrupts.intx_fd.is_some() {
            let _ = self.device.disable_irq(IrqKind::Intx);
        }
        self.shutdown();
    }
}
