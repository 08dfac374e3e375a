//! [`FakeDevice`]: a [`PassthroughDevice`] in memory that records every
//! call, standing in for the VFIO syscall layer in tests of the PCI logic
//! above it (here and in the VMM). Its configuration space and BARs are
//! plain bytes; its interrupts fire when a test says so.

use std::sync::{Mutex, MutexGuard, PoisonError};

use vfio_bindings::bindings::vfio::{VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE};
use vmm_sys_util::eventfd::EventFd;

use crate::passthrough::{
    DmaRange, IrqKind, PassthroughDevice, PassthroughError, RegionInfo, CONFIG_REGION,
};

/// One call the fake received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FakeCall {
    /// A region read.
    Read {
        /// The region.
        index: u32,
        /// Where.
        offset: u64,
        /// Bytes.
        len: usize,
    },
    /// A region write.
    Write {
        /// The region.
        index: u32,
        /// Where.
        offset: u64,
        /// What.
        data: Vec<u8>,
    },
    /// Interrupts enabled with this many eventfds.
    EnableIrq(IrqKind, usize),
    /// Interrupts disabled.
    DisableIrq(IrqKind),
    /// Interrupts unmasked.
    UnmaskIrq(IrqKind),
    /// A DMA map.
    DmaMap {
        /// IOVA.
        iova: u64,
        /// Bytes.
        size: u64,
        /// Whether it came with an fd.
        with_fd: bool,
        /// The offset in the fd.
        fd_offset: u64,
    },
    /// A DMA unmap.
    DmaUnmap {
        /// IOVA.
        iova: u64,
        /// Bytes.
        size: u64,
    },
    /// A reset.
    Reset,
}

#[derive(Default)]
struct State {
    regions: Vec<Vec<u8>>,
    calls: Vec<FakeCall>,
    msi: Vec<EventFd>,
    msix: Vec<EventFd>,
    intx: Option<EventFd>,
}

/// A device made of bytes.
pub struct FakeDevice {
    state: Mutex<State>,
    irq_counts: [u32; 3],
}

impl FakeDevice {
    /// A device with configuration space `config` (256 bytes or more) and
    /// BARs of `bar_sizes` (0 for none), with INTx and `msi_vectors` MSI
    /// vectors.
    pub fn new(config: &[u8], bar_sizes: [u64; 6], msi_vectors: u32) -> FakeDevice {
        let mut regions = vec![Vec::new(); CONFIG_REGION as usize + 1];
        for (region, size) in regions.iter_mut().zip(bar_sizes) {
            *region = vec![0; size as usize];
        }
        regions[CONFIG_REGION as usize] = config.to_vec();
        FakeDevice {
            state: Mutex::new(State {
                regions,
                ..State::default()
            }),
            irq_counts: [1, msi_vectors, 0],
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The calls so far, in order; the log is emptied.
    pub fn take_calls(&self) -> Vec<FakeCall> {
        std::mem::take(&mut self.state().calls)
    }

    /// The bytes of region `index` now.
    pub fn region(&self, index: u32) -> Vec<u8> {
        self.state().regions[index as usize].clone()
    }

    /// The same device with `vectors` MSI-X vectors to signal.
    pub fn with_msix_vectors(mut self, vectors: u32) -> FakeDevice {
        self.irq_counts[IrqKind::Msix.vfio_index() as usize] = vectors;
        self
    }

    /// Fires vector `vector` of `kind` (INTx: the line) as the device
    /// would; false if no eventfd is set for it.
    pub fn fire(&self, kind: IrqKind, vector: usize) -> bool {
        let state = self.state();
        let fd = match kind {
            IrqKind::Msi => state.msi.get(vector),
            IrqKind::Intx => state.intx.as_ref(),
            IrqKind::Msix => state.msix.get(vector),
        };
        fd.is_some_and(|fd| fd.write(1).is_ok())
    }

    /// The bytes of region `index` an access covers, once checked.
    fn access(
        &self,
        index: u32,
        offset: u64,
        len: usize,
    ) -> Result<std::ops::Range<usize>, PassthroughError> {
        self.check_access(index, offset, len)?;
        // Inside a region held in memory, so it fits in usize.
        let start = offset as usize;
        Ok(start..start + len)
    }
}

impl PassthroughDevice for FakeDevice {
    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        let size = self.state().regions.get(index as usize)?.len() as u64;
        Some(RegionInfo {
            flags: VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE,
            size,
            offset: u64::from(index) << 40,
        })
    }

    fn region_read(&self, index: u32, offset: u64, buf: &mut [u8]) -> Result<(), PassthroughError> {
        let range = self.access(index, offset, buf.len())?;
        let mut state = self.state();
        buf.copy_from_slice(&state.regions[index as usize][range]);
        state.calls.push(FakeCall::Read {
            index,
            offset,
            len: buf.len(),
        });
        Ok(())
    }

    fn region_write(&self, index: u32, offset: u64, buf: &[u8]) -> Result<(), PassthroughError> {
        let range = self.access(index, offset, buf.len())?;
        let mut state = self.state();
        state.regions[index as usize][range].copy_from_slice(buf);
        state.calls.push(FakeCall::Write {
            index,
            offset,
            data: buf.to_vec(),
        });
        Ok(())
    }

    fn irq_count(&self, kind: IrqKind) -> u32 {
        self.irq_counts[kind.vfio_index() as usize]
    }

    fn enable_irq(&self, kind: IrqKind, fds: &[&EventFd]) -> Result<(), PassthroughError> {
        PassthroughError::check_irq_count(kind, self.irq_count(kind), fds.len())?;
        let clones = fds
            .iter()
            .map(|fd| fd.try_clone())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| PassthroughError::Kernel {
                op: "dup eventfd",
                reason: e.to_string(),
            })?;
        let mut state = self.state();
        match kind {
            IrqKind::Msi => state.msi = clones,
            IrqKind::Intx => state.intx = clones.into_iter().next(),
            IrqKind::Msix => state.msix = clones,
        }
        state.calls.push(FakeCall::EnableIrq(kind, fds.len()));
        Ok(())
    }

    fn disable_irq(&self, kind: IrqKind) -> Result<(), PassthroughError> {
        let mut state = self.state();
        match kind {
            IrqKind::Msi => state.msi.clear(),
            IrqKind::Msix => state.msix.clear(),
            IrqKind::Intx => state.intx = None,
        }
        state.calls.push(FakeCall::DisableIrq(kind));
        Ok(())
    }

    fn unmask_irq(&self, kind: IrqKind) -> Result<(), PassthroughError> {
        self.state().calls.push(FakeCall::UnmaskIrq(kind));
        Ok(())
    }

    fn dma_map(&self, range: &DmaRange<'_>) -> Result<(), PassthroughError> {
        self.state().calls.push(FakeCall::DmaMap {
            iova: range.iova,
            size: range.size,
            with_fd: range.fd.is_some(),
            fd_offset: range.fd_offset,
        });
        Ok(())
    }

    fn dma_unmap(&self, iova: u64, size: u64) -> Result<(), PassthroughError> {
        self.state().calls.push(FakeCall::DmaUnmap { iova, size });
        Ok(())
    }

    fn reset(&self) -> Result<(), PassthroughError> {
        self.state().calls.push(FakeCall::Reset);
        Ok(())
    }
}
