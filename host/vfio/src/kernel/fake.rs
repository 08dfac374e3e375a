//! [`FakeVfio`]: a fake VFIO syscall layer under `KernelVfio`, as
//! vfio-ioctls fakes the ioctls in its own tests. A simulated device: its
//! regions are ranges of one memfd, so `pread`/`pwrite` and `mmap` see
//! the same bytes, as with a real device fd; every call is recorded, and
//! any operation can be made to fail.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::{Mutex, MutexGuard, PoisonError};

use vmm_sys_util::eventfd::EventFd;

use super::sys::{IrqAction, SetIrqs, SysRegion, VfioSys};
use crate::memory::memfd;
use crate::passthrough::{MmapArea, RegionInfo};

/// A region of a [`FakeVfio`] device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeRegion {
    /// Its VFIO index.
    pub index: u32,
    /// `VFIO_REGION_INFO_FLAG_*`.
    pub flags: u32,
    /// Bytes.
    pub size: u64,
    /// Where it starts in the device file.
    pub offset: u64,
    /// Its sparse-mmap capability, if any.
    pub sparse_mmap: Option<Vec<MmapArea>>,
}

/// A syscall the fake received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SysCall {
    /// A `pread` of the device fd.
    Pread {
        /// Where in the device file.
        offset: u64,
        /// Bytes.
        len: usize,
    },
    /// A `pwrite` of the device fd.
    Pwrite {
        /// Where in the device file.
        offset: u64,
        /// What.
        data: Vec<u8>,
    },
    /// A `VFIO_DEVICE_SET_IRQS`.
    SetIrqs {
        /// The interrupt index.
        index: u32,
        /// What it asked.
        action: IrqAction,
        /// Eventfds given.
        count: usize,
    },
    /// A `VFIO_IOMMU_MAP_DMA`.
    DmaMap {
        /// IOVA.
        iova: u64,
        /// Bytes.
        size: usize,
        /// The host address behind it.
        host_addr: u64,
    },
    /// A `VFIO_IOMMU_UNMAP_DMA`.
    DmaUnmap {
        /// IOVA.
        iova: u64,
        /// Bytes.
        size: usize,
    },
    /// A `VFIO_DEVICE_RESET`.
    Reset,
    /// A new handle on the device fd (to `mmap`).
    DeviceFile,
}

/// A kind of [`SysCall`], to make fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SysOp {
    /// [`SysCall::Pread`].
    Pread,
    /// [`SysCall::Pwrite`].
    Pwrite,
    /// [`SysCall::SetIrqs`].
    SetIrqs,
    /// [`SysCall::DmaMap`].
    DmaMap,
    /// [`SysCall::DmaUnmap`].
    DmaUnmap,
    /// [`SysCall::Reset`].
    Reset,
    /// [`SysCall::DeviceFile`].
    DeviceFile,
}

impl SysCall {
    /// Its kind.
    pub fn op(&self) -> SysOp {
        match self {
            SysCall::Pread { .. } => SysOp::Pread,
            SysCall::Pwrite { .. } => SysOp::Pwrite,
            SysCall::SetIrqs { .. } => SysOp::SetIrqs,
            SysCall::DmaMap { .. } => SysOp::DmaMap,
            SysCall::DmaUnmap { .. } => SysOp::DmaUnmap,
            SysCall::Reset => SysOp::Reset,
            SysCall::DeviceFile => SysOp::DeviceFile,
        }
    }
}

#[derive(Default)]
struct State {
    calls: Vec<SysCall>,
    failing: Vec<SysOp>,
    /// The eventfds each interrupt index signals, by vector.
    eventfds: HashMap<u32, Vec<EventFd>>,
}

/// A simulated VFIO device and container.
pub struct FakeVfio {
    regions: Vec<FakeRegion>,
    irq_counts: HashMap<u32, u32>,
    /// The device file: every region's bytes at its offset.
    file: File,
    state: Mutex<State>,
}

impl FakeVfio {
    /// A device with `regions` (at most one per index; their offsets and
    /// sizes should not overlap) and `irqs` vectors per interrupt index,
    /// as (index, count). Fails if the memfd cannot be made.
    pub fn new(regions: Vec<FakeRegion>, irqs: &[(u32, u32)]) -> io::Result<FakeVfio> {
        let end = regions
            .iter()
            .map(|r| r.offset.checked_add(r.size))
            .try_fold(0u64, |end, e| e.map(|e| end.max(e)))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "region past 2^64"))?;
        // Sparse, so regions far apart in the file (as vfio-pci places
        // them) cost nothing.
        let file = memfd(c"wasmvisor-fake-vfio", end)?;
        Ok(FakeVfio {
            regions,
            irq_counts: irqs.iter().copied().collect(),
            file,
            state: Mutex::new(State::default()),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The calls so far, in order; the log is emptied.
    pub fn take_calls(&self) -> Vec<SysCall> {
        std::mem::take(&mut self.state().calls)
    }

    /// Makes every later call of `op` fail (and still be recorded).
    pub fn fail(&self, op: SysOp) {
        self.state().failing.push(op);
    }

    /// Makes every operation succeed again.
    pub fn heal(&self) {
        self.state().failing.clear();
    }

    /// The device file's bytes at `offset`, read behind the device's back
    /// (not recorded).
    pub fn peek(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    /// Writes the device file's bytes at `offset`, as the device itself
    /// would (not recorded).
    pub fn poke(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    /// Signals vector `vector` of interrupt index `index` as the device
    /// would; false if no eventfd is set for it.
    pub fn fire(&self, index: u32, vector: usize) -> bool {
        let state = self.state();
        let fd = state.eventfds.get(&index).and_then(|fds| fds.get(vector));
        fd.is_some_and(|fd| fd.write(1).is_ok())
    }

    /// Records `call`, and fails it if told to.
    fn call(&self, call: SysCall) -> io::Result<()> {
        let mut state = self.state();
        let op = call.op();
        state.calls.push(call);
        if state.failing.contains(&op) {
            return Err(io::Error::other(format!("fake {op:?} failure")));
        }
        Ok(())
    }
}

impl VfioSys for FakeVfio {
    fn region_info(&self, index: u32) -> Option<SysRegion> {
        self.regions
            .iter()
            .find(|r| r.index == index)
            .map(|r| SysRegion {
                info: RegionInfo {
                    flags: r.flags,
                    size: r.size,
                    offset: r.offset,
                },
                sparse_mmap: r.sparse_mmap.clone(),
            })
    }

    fn irq_count(&self, index: u32) -> u32 {
        self.irq_counts.get(&index).copied().unwrap_or(0)
    }

    fn pread(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.call(SysCall::Pread {
            offset,
            len: buf.len(),
        })?;
        self.file.read_exact_at(buf, offset)
    }

    fn pwrite(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.call(SysCall::Pwrite {
            offset,
            data: buf.to_vec(),
        })?;
        self.file.write_all_at(buf, offset)
    }

    fn set_irqs(&self, index: u32, action: SetIrqs<'_>) -> io::Result<()> {
        self.call(SysCall::SetIrqs {
            index,
            action: action.action(),
            count: action.count(),
        })?;
        // As VFIO does, refuse an index the device does not have, or more
        // vectors than it has.
        let available = self.irq_count(index) as usize;
        if available == 0 || action.count() > available {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let mut state = self.state();
        match action {
            SetIrqs::Trigger(fds) => {
                let clones = fds
                    .iter()
                    .map(|fd| fd.try_clone())
                    .collect::<io::Result<Vec<_>>>()?;
                state.eventfds.insert(index, clones);
            }
            SetIrqs::Disable => {
                state.eventfds.remove(&index);
            }
            SetIrqs::Unmask => {}
        }
        Ok(())
    }

    fn reset(&self) -> io::Result<()> {
        self.call(SysCall::Reset)
    }

    unsafe fn dma_map(&self, iova: u64, size: usize, host_addr: u64) -> io::Result<()> {
        self.call(SysCall::DmaMap {
            iova,
            size,
            host_addr,
        })
    }

    fn dma_unmap(&self, iova: u64, size: usize) -> io::Result<()> {
        self.call(SysCall::DmaUnmap { iova, size })
    }

    fn device_file(&self) -> io::Result<File> {
        self.call(SysCall::DeviceFile)?;
        self.file.try_clone()
    }
}
