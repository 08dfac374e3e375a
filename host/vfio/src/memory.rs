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
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    GuestRegionMmap, MemoryRegionAddress,
};
use wasmvisor_pci::{DmaError, DmaMemory};

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

/// Guest RAM for the `ranges` (address, bytes; sorted, not overlapping),
/// backed by one memfd, each range at the next offset in it. A vfio-user
/// device needs this: the server maps guest RAM from the fd it is sent
/// with each DMA map, so anonymous memory cannot be shared with it.
pub fn memfd_guest_memory(
    ranges: &[(GuestAddress, usize)],
) -> Result<GuestMemoryMmap, MemoryError> {
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
    GuestMemoryMmap::from_ranges_with_files(&with_files)
        .map_err(|e| MemoryError::Map(e.to_string()))
}

/// Every region of `memory` as a DMA range at IOVA = GPA, with its host
/// address and, if file-backed, its fd and offset.
pub fn dma_ranges(memory: &GuestMemoryMmap) -> Vec<DmaRange<'_>> {
    memory
        .iter()
        .map(|region| DmaRange {
            iova: region.start_addr().0,
            size: region.len(),
            host_addr: region.as_ptr() as u64,
            fd: region.file_offset().map(|f| f.file().as_fd()),
            fd_offset: region.file_offset().map_or(0, FileOffset::start),
        })
        .collect()
}

/// DMA-maps all of `memory` into `device`, as the VMM does before the
/// guest runs: device DMA bypasses EPT, so whatever is mapped here is what
/// the device can reach.
pub fn dma_map_guest_memory(
    device: &dyn PassthroughDevice,
    memory: &GuestMemoryMmap,
) -> Result<(), PassthroughError> {
    dma_ranges(memory)
        .iter()
        .try_for_each(|range| device.dma_map(range))
}

/// The memory a vfio-user client DMA-mapped, as the server's device sees
/// it: each mapping is the client's fd mapped here, so device writes land
/// in the client's guest RAM.
#[derive(Debug, Default)]
pub struct MappedDma {
    regions: Mutex<Vec<Arc<GuestRegionMmap>>>,
    /// Every device access that reached the client's memory, as
    /// (write, GPA, bytes): what the server reports.
    accesses: Mutex<Vec<(bool, u64, usize)>>,
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

    /// Takes the log of device accesses to the client's memory, as
    /// (write, GPA, bytes), oldest first.
    pub fn take_accesses(&self) -> Vec<(bool, u64, usize)> {
        std::mem::take(&mut *self.accesses.lock().unwrap_or_else(PoisonError::into_inner))
    }

    fn note(&self, write: bool, gpa: u64, len: usize) {
        self.accesses
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((write, gpa, len));
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

    /// The region holding all of `gpa..gpa + len`, and the offset in it.
    fn find(&self, gpa: u64, len: usize) -> Result<(Arc<GuestRegionMmap>, u64), DmaError> {
        let out = DmaError::OutOfRange { gpa, len };
        let end = gpa.checked_add(len as u64).ok_or(out.clone())?;
        self.lock()
            .iter()
            .find(|r| r.start_addr().0 <= gpa && end <= r.start_addr().0 + r.len())
            .map(|r| (Arc::clone(r), gpa - r.start_addr().0))
            .ok_or(out)
    }
}

impl DmaMemory for MappedDma {
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        let len = buf.len();
        let (region, at) = self.find(gpa, len)?;
        region
            .read_slice(buf, MemoryRegionAddress(at))
            .map_err(|_| DmaError::OutOfRange { gpa, len })?;
        self.note(false, gpa, len);
        Ok(())
    }

    fn write(&self, gpa: u64, buf: &[u8]) -> Result<(), DmaError> {
        let len = buf.len();
        let (region, at) = self.find(gpa, len)?;
        region
            .write_slice(buf, MemoryRegionAddress(at))
            .map_err(|_| DmaError::OutOfRange { gpa, len })?;
        self.note(true, gpa, len);
        Ok(())
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
        let ranges = dma_ranges(&ram);
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
}
