//! Guest RAM as passthrough devices need it: file-backed so a vfio-user
//! server can map it too, described as [`DmaRange`]s for DMA mapping, and,
//! on the server side, the client's mappings read and written as a
//! device's [`DmaMemory`].

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::{AsFd, FromRawFd};
use std::sync::{Arc, Mutex, PoisonError};

use thiserror::Error;
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap,
    MemoryRegionAddress,
};
use wasmvisor_pci::{DmaDomain, DmaError, DmaMemory, Window};

use crate::passthrough::{DmaRange, PassthroughDevice, PassthroughError};

/// Why guest RAM could not be built or mapped.
#[derive(Debug, Error)]
pub enum MemoryError {
    /// `memfd_create` or sizing the memfd failed.
    #[error("cannot create the memfd for guest RAM: {0}")]
    Memfd(#[source] std::io::Error),
    /// vm-memory refused the ranges (overlap, order, mmap).
    #[error("cannot map guest RAM: {0}")]
    Map(String),
}

/// A new memfd of `size` zero bytes: memory another process can map.
pub fn memfd(name: &CStr, size: u64) -> std::io::Result<File> {
    // SAFETY: `name` is a NUL-terminated string that outlives the call,
    // and the flags are valid; the kernel returns a new fd or -1.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by memfd_create, is open, and nothing
    // else owns it.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)?;
    Ok(file)
}

/// Guest RAM as the VMM maps it: the same type as `wasmvisor_exit::GuestRam`,
/// with a bitmap of the pages the host wrote.
pub type GuestRam = vm_memory::GuestMemoryMmap<vm_memory::bitmap::AtomicBitmap>;

/// Guest RAM for the `ranges` (address, bytes; sorted, not overlapping),
/// backed by one memfd, each range at the next offset in it. A vfio-user
/// device needs this: the server maps guest RAM from the fd it is sent
/// with each DMA map, so anonymous memory cannot be shared with it.
pub fn memfd_guest_memory(ranges: &[(GuestAddress, usize)]) -> Result<GuestRam, MemoryError> {
    let total: u64 = ranges.iter().map(|&(_, len)| len as u64).sum();
    let file = Arc::new(memfd(c"wasmvisor-guest-ram", total).map_err(MemoryError::Memfd)?);
    let mut offset = 0;
    let with_files: Vec<_> = ranges
        .iter()
        .map(|&(gpa, len)| {
            let range = (
                gpa,
                len,
                Some(FileOffset::from_arc(Arc::clone(&file), offset)),
            );
            offset += len as u64;
            range
        })
        .collect();
    GuestRam::from_ranges_with_files(&with_files).map_err(|e| MemoryError::Map(e.to_string()))
}

/// The parts of `memory` inside `domain` as DMA ranges at IOVA = GPA,
/// each with its host address and, if file-backed, its fd and offset.
pub fn dma_ranges<'m>(memory: &'m GuestRam, domain: &DmaDomain) -> Vec<DmaRange<'m>> {
    memory
        .iter()
        .flat_map(|region| {
            let start = region.start_addr().0;
            let file = region.file_offset();
            domain
                .clip(Window::new(start, region.len()))
                .into_iter()
                .map(move |part| {
                    // Where the part starts in the region: its host
                    // address and file offset move by the same amount.
                    let skip = part.base - start;
                    DmaRange {
                        iova: part.base,
                        size: part.size,
                        host_addr: region.as_ptr() as u64 + skip,
                        fd: file.map(|f| f.file().as_fd()),
                        fd_offset: file.map_or(0, FileOffset::start) + skip,
                    }
                })
        })
        .collect()
}

/// DMA-maps the parts of `memory` inside `domain` into `device`, as the
/// VMM does before the guest runs: device DMA bypasses EPT, so whatever
/// is mapped here is what the device can reach.
pub fn dma_map_guest_memory(
    device: &dyn PassthroughDevice,
    memory: &GuestRam,
    domain: &DmaDomain,
) -> Result<(), PassthroughError> {
    dma_ranges(memory, domain)
        .iter()
        .try_for_each(|range| device.dma_map(range))
}

/// The memory a vfio-user client DMA-mapped, as the server's device sees
/// it: each mapping is the client's fd mapped here, so device writes land
/// in the client's guest RAM.
#[derive(Debug, Default)]
pub struct MappedDma {
    regions: Mutex<Vec<Arc<GuestRegionMmap>>>,
    /// Every device access, in order: what the server reports.
    accesses: Mutex<Vec<DmaAccess>>,
}

/// One DMA a server's device made, or tried to make, into the client's
/// memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DmaAccess {
    /// A write (into guest memory) rather than a read.
    pub write: bool,
    /// Where it started (an IOVA, which is the guest-physical address).
    pub gpa: u64,
    /// Bytes.
    pub len: usize,
    /// False if the client had not mapped all of it: the access failed,
    /// as an IOMMU fault would, and guest memory was not touched.
    pub mapped: bool,
}

impl std::fmt::Display for DmaAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = if self.write { "write" } else { "read" };
        write!(
            f,
            "device dma {what} of {} bytes at {:#x}",
            self.len, self.gpa
        )?;
        if !self.mapped {
            f.write_str(" refused: not DMA-mapped")?;
        }
        Ok(())
    }
}

impl MappedDma {
    /// Maps `size` bytes of `file` from `offset` at IOVA `iova`.
    pub fn map(&self, iova: u64, size: u64, file: File, offset: u64) -> Result<(), MemoryError> {
        let len = usize::try_from(size).map_err(|e| MemoryError::Map(e.to_string()))?;
        let region = GuestRegionMmap::from_range(
            GuestAddress(iova),
            len,
            Some(FileOffset::new(file, offset)),
        )
        .map_err(|e| MemoryError::Map(e.to_string()))?;
        self.lock().push(Arc::new(region));
        Ok(())
    }

    /// Drops the mappings that start inside `iova..iova + size`.
    pub fn unmap(&self, iova: u64, size: u64) {
        let end = iova.saturating_add(size);
        self.lock()
            .retain(|r| !(iova..end).contains(&r.start_addr().0));
    }

    /// Drops every mapping (the client went away).
    pub fn clear(&self) {
        self.lock().clear();
    }

    /// Takes the log of device accesses to the client's memory, refused
    /// ones included, oldest first.
    pub fn take_accesses(&self) -> Vec<DmaAccess> {
        std::mem::take(&mut *self.accesses.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn note(&self, write: bool, gpa: u64, len: usize, mapped: bool) {
        self.accesses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(DmaAccess {
                write,
                gpa,
                len,
                mapped,
            });
    }

    /// The mappings, as (IOVA, bytes).
    pub fn mappings(&self) -> Vec<(u64, u64)> {
        self.lock()
            .iter()
            .map(|r| (r.start_addr().0, r.len()))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Arc<GuestRegionMmap>>> {
        self.regions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `op` on the region holding all of `gpa..gpa + len` at its
    /// offset there, and logs the access, refused if no mapping holds it.
    fn access(
        &self,
        write: bool,
        gpa: u64,
        len: usize,
        op: impl FnOnce(&GuestRegionMmap, MemoryRegionAddress) -> bool,
    ) -> Result<(), DmaError> {
        let found = gpa.checked_add(len as u64).and_then(|end| {
            self.lock()
                .iter()
                .find(|r| r.start_addr().0 <= gpa && end <= r.start_addr().0 + r.len())
                .map(|r| (Arc::clone(r), gpa - r.start_addr().0))
        });
        self.note(write, gpa, len, found.is_some());
        match found {
            Some((region, at)) if op(&region, MemoryRegionAddress(at)) => Ok(()),
            _ => Err(DmaError::OutOfRange { gpa, len }),
        }
    }
}

impl DmaMemory for MappedDma {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        self.access(false, gpa, buf.len(), |r, at| r.read_slice(buf, at).is_ok())
    }

    fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), DmaError> {
        self.access(true, gpa, buf.len(), |r, at| r.write_slice(buf, at).is_ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memfd_ram_is_shared_with_a_second_mapping() {
        let ram =
            memfd_guest_memory(&[(GuestAddress(0), 0x2000), (GuestAddress(0x10_0000), 0x1000)])
                .unwrap();
        let ranges = dma_ranges(&ram, &DmaDomain::unrestricted());
        assert_eq!(ranges.len(), 2);
        assert_eq!(
            (ranges[1].iova, ranges[1].size, ranges[1].fd_offset),
            (0x10_0000, 0x1000, 0x2000)
        );
        let region = ram.iter().nth(1).unwrap();
        let file = region.file_offset().unwrap().file().try_clone().unwrap();
        let dma = MappedDma::default();
        dma.map(0x10_0000, 0x1000, file, 0x2000).unwrap();
        dma.write(0x10_0010, b"dma").unwrap();
        let mut back = [0u8; 3];
        ram.read_slice(&mut back, GuestAddress(0x10_0010)).unwrap();
        assert_eq!(&back, b"dma");
        assert_eq!(
            dma.write(0x10_0ffe, b"dma"),
            Err(DmaError::OutOfRange {
                gpa: 0x10_0ffe,
                len: 3
            })
        );
        dma.unmap(0x10_0000, 0x1000);
        assert!(dma.mappings().is_empty());
    }

    #[test]
    fn a_dma_window_maps_only_its_part_of_each_region() {
        let ram =
            memfd_guest_memory(&[(GuestAddress(0), 0x4000), (GuestAddress(0x10_0000), 0x2000)])
                .unwrap();
        let domain =
            DmaDomain::new(&[Window::new(0x1000, 0x2000), Window::new(0x10_1000, 0x8000)]).unwrap();
        let ranges = dma_ranges(&ram, &domain);
        let first = ram.iter().next().unwrap().as_ptr() as u64;
        let second = ram.iter().nth(1).unwrap().as_ptr() as u64;
        let got: Vec<_> = ranges
            .iter()
            .map(|r| (r.iova, r.size, r.host_addr, r.fd_offset))
            .collect();
        // The second region starts at offset 0x4000 of the memfd.
        assert_eq!(
            got,
            [
                (0x1000, 0x2000, first + 0x1000, 0x1000),
                (0x10_1000, 0x1000, second + 0x1000, 0x5000),
            ]
        );
        // The mapped part holds the same bytes as guest RAM there.
        ram.write_slice(b"window", GuestAddress(0x10_1008)).unwrap();
        let file = ranges[1].fd.unwrap().try_clone_to_owned().unwrap();
        let dma = MappedDma::default();
        dma.map(
            ranges[1].iova,
            ranges[1].size,
            File::from(file),
            ranges[1].fd_offset,
        )
        .unwrap();
        let mut back = [0u8; 6];
        dma.read(0x10_1008, &mut back).unwrap();
        assert_eq!(&back, b"window");
        assert!(dma.read(0x10_0008, &mut back).is_err());
        let log: Vec<String> = dma.take_accesses().iter().map(|a| a.to_string()).collect();
        assert_eq!(
            log,
            [
                "device dma read of 6 bytes at 0x101008",
                "device dma read of 6 bytes at 0x100008 refused: not DMA-mapped",
            ]
        );
    }
}
