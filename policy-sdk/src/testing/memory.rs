//! The fake guest's memory: RAM at guest-physical addresses, and a table
//! standing in for the guest's page tables.

use core::fmt;
use std::collections::BTreeMap;

use crate::HostError;

/// The size of a guest page; virtual accesses are split at page
/// boundaries, as the host splits them.
const PAGE: u64 = 4096;

/// One GVA range mapped onto guest-physical memory.
#[derive(Debug, Clone, Copy)]
struct Mapping {
    gva: u64,
    gpa: u64,
    len: u64,
}

impl Mapping {
    /// The GPA of `gva` and the bytes left in this mapping from there.
    fn lookup(&self, gva: u64) -> Option<(u64, u64)> {
        let offset = gva.checked_sub(self.gva)?;
        (offset < self.len).then(|| (self.gpa.wrapping_add(offset), self.len - offset))
    }
}

/// Guest RAM and the GVA→GPA table.
#[derive(Default)]
pub(crate) struct Memory {
    /// RAM regions by base. Touching or overlapping regions are merged on
    /// insertion, so a contiguous range always lies in one region.
    ram: BTreeMap<u64, Vec<u8>>,
    /// Mappings in the order given; a later one wins where they overlap.
    virt: Vec<Mapping>,
}

impl fmt::Debug for Memory {
    // The bytes would drown everything else: show the layout only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ram: Vec<(u64, usize)> = self.ram.iter().map(|(b, r)| (*b, r.len())).collect();
        f.debug_struct("Memory")
            .field("ram", &ram)
            .field("virt", &self.virt)
            .finish()
    }
}

/// `[gpa, gpa + len)` as a pair of bounds; a range past the top of the
/// address space is a mistake in the test.
fn bounds(gpa: u64, len: usize) -> (u64, u64) {
    let end = gpa
        .checked_add(len as u64)
        .unwrap_or_else(|| panic!("FakeHost: {gpa:#x}+{len:#x} wraps the address space"));
    (gpa, end)
}

impl Memory {
    /// Makes `[gpa, gpa + len)` RAM, merged with any RAM it touches;
    /// bytes that were RAM keep their value, the others are zero.
    /// Returns the region now holding the range and the offset of `gpa`.
    /// Callers skip empty ranges, which would leave an empty region.
    pub(crate) fn add_ram(&mut self, gpa: u64, len: usize) -> (&mut Vec<u8>, usize) {
        let (mut start, mut end) = bounds(gpa, len);
        let touching: Vec<u64> = self
            .ram
            .range(..=end)
            .filter(|(base, r)| **base + r.len() as u64 >= gpa)
            .map(|(base, _)| *base)
            .collect();
        for base in &touching {
            start = start.min(*base);
            end = end.max(*base + self.ram[base].len() as u64);
        }
        let mut merged = vec![0u8; (end - start) as usize];
        for base in touching {
            let old = self.ram.remove(&base).unwrap_or_default();
            let at = (base - start) as usize;
            merged[at..at + old.len()].copy_from_slice(&old);
        }
        (
            self.ram.entry(start).or_insert(merged),
            (gpa - start) as usize,
        )
    }

    /// Makes `[gpa, gpa + bytes.len())` RAM holding `bytes`.
    pub(crate) fn map(&mut self, gpa: u64, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let (region, at) = self.add_ram(gpa, bytes.len());
        region[at..at + bytes.len()].copy_from_slice(bytes);
    }

    /// The region holding all of `[gpa, gpa + len)` and the offset of
    /// `gpa` in it.
    fn region(&self, gpa: u64, len: usize) -> Option<(u64, usize)> {
        let end = gpa.checked_add(len as u64)?;
        let (base, bytes) = self.ram.range(..=gpa).next_back()?;
        (end <= base + bytes.len() as u64).then(|| (*base, (gpa - base) as usize))
    }

    /// True when `[gpa, gpa + len)` is RAM.
    pub(crate) fn contains(&self, gpa: u64, len: usize) -> bool {
        self.region(gpa, len).is_some()
    }

    /// The bytes at `[gpa, gpa + len)`, or `out-of-range` if any of them
    /// is not RAM.
    pub(crate) fn read(&self, gpa: u64, len: usize) -> Result<Vec<u8>, HostError> {
        let (base, at) = self.region(gpa, len).ok_or(HostError::OutOfRange)?;
        Ok(self.ram[&base][at..at + len].to_vec())
    }

    /// Writes `data` at `gpa`, or fails with `out-of-range` having
    /// written nothing.
    pub(crate) fn write(&mut self, gpa: u64, data: &[u8]) -> Result<(), HostError> {
        let (base, at) = self.region(gpa, data.len()).ok_or(HostError::OutOfRange)?;
        let region = self.ram.get_mut(&base).ok_or(HostError::OutOfRange)?;
        region[at..at + data.len()].copy_from_slice(data);
        Ok(())
    }

    /// Maps `[gva, gva + len)` onto `[gpa, gpa + len)`.
    pub(crate) fn map_virt(&mut self, gva: u64, gpa: u64, len: u64) {
        bounds(gva, len as usize);
        self.virt.push(Mapping { gva, gpa, len });
    }

    /// The GPA of `gva` and how many bytes from there the same mapping
    /// covers; `not-mapped` if no mapping holds it.
    fn lookup(&self, gva: u64) -> Result<(u64, u64), HostError> {
        self.virt
            .iter()
            .rev()
            .find_map(|m| m.lookup(gva))
            .ok_or(HostError::NotMapped)
    }

    /// The GPA behind `gva`. Like the host's page walk, the GPA itself
    /// need not be RAM.
    pub(crate) fn translate(&self, gva: u64) -> Result<u64, HostError> {
        self.lookup(gva).map(|(gpa, _)| gpa)
    }

    /// Splits `[gva, gva + len)` into `(gpa, len)` pieces that are RAM,
    /// the way the host checks every page before touching any.
    fn virt_chunks(&self, gva: u64, len: usize) -> Result<Vec<(u64, usize)>, HostError> {
        let mut chunks = Vec::new();
        let mut at = gva;
        let mut left = len as u64;
        while left > 0 {
            let (gpa, mapped) = self.lookup(at)?;
            let n = left.min(mapped).min(PAGE - (at % PAGE));
            if !self.contains(gpa, n as usize) {
                return Err(HostError::OutOfRange);
            }
            chunks.push((gpa, n as usize));
            at = at.checked_add(n).ok_or(HostError::OutOfRange)?;
            left -= n;
        }
        Ok(chunks)
    }

    /// The bytes at `[gva, gva + len)` through the table.
    pub(crate) fn read_virt(&self, gva: u64, len: usize) -> Result<Vec<u8>, HostError> {
        let mut out = Vec::with_capacity(len);
        for (gpa, n) in self.virt_chunks(gva, len)? {
            out.extend(self.read(gpa, n)?);
        }
        Ok(out)
    }

    /// Writes `data` at `gva` through the table; nothing is written
    /// unless every page translates to RAM.
    pub(crate) fn write_virt(&mut self, gva: u64, data: &[u8]) -> Result<(), HostError> {
        let mut at = 0;
        for (gpa, n) in self.virt_chunks(gva, data.len())? {
            self.write(gpa, &data[at..at + n])?;
            at += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regions_merge_and_bound_reads() {
        let mut m = Memory::default();
        m.map(0x1000, &[1; 0x1000]);
        m.map(0x3000, &[3; 0x1000]);
        assert_eq!(m.read(0x1ffe, 4), Err(HostError::OutOfRange));
        // Filling the hole joins the three into one region.
        m.map(0x2000, &[2; 0x1000]);
        assert_eq!(m.ram.len(), 1);
        assert_eq!(m.read(0x1fff, 3), Ok(vec![1, 2, 2]));
        assert_eq!(m.read(0x3fff, 1), Ok(vec![3]));
        assert_eq!(m.read(0x3fff, 2), Err(HostError::OutOfRange));
        assert_eq!(m.read(0xfff, 1), Err(HostError::OutOfRange));
        assert_eq!(m.read(u64::MAX, 2), Err(HostError::OutOfRange));
        // Adding RAM over RAM keeps its bytes; mapping bytes writes them.
        m.add_ram(0x1000, 0x4000);
        assert_eq!(m.read(0x3fff, 1), Ok(vec![3]));
        assert_eq!(m.read(0x4000, 0x1000), Ok(vec![0; 0x1000]));
        m.map(0x1ffe, &[9, 9, 9]);
        assert_eq!(m.read(0x1ffd, 5), Ok(vec![1, 9, 9, 9, 2]));
        assert_eq!(m.write(0x5000, &[0]), Err(HostError::OutOfRange));
        assert_eq!(m.write(0x4ffe, &[7, 7]), Ok(()));
        assert_eq!(m.read(0x4ffe, 2), Ok(vec![7, 7]));
    }

    #[test]
    fn virtual_accesses_check_every_page_first() {
        let mut m = Memory::default();
        m.map(0x5000, &[0; 0x1000]);
        m.map_virt(0x10_0000, 0x5000, 0x1000);
        m.map_virt(0x10_1000, 0x9000, 0x1000); // not RAM
        assert_eq!(m.translate(0x10_0010), Ok(0x5010));
        assert_eq!(m.translate(0x10_1010), Ok(0x9010));
        assert_eq!(m.translate(0x10_2000), Err(HostError::NotMapped));
        assert_eq!(
            m.write_virt(0x10_0ffe, &[1, 2, 3, 4]),
            Err(HostError::OutOfRange)
        );
        assert_eq!(m.read(0x5ffe, 2), Ok(vec![0, 0]));
        // A later mapping wins.
        m.map_virt(0x10_1000, 0x5000, 0x1000);
        assert_eq!(m.write_virt(0x10_0ffe, &[1, 2, 3, 4]), Ok(()));
        assert_eq!(m.read(0x5000, 2), Ok(vec![3, 4]));
        assert_eq!(m.read_virt(0x10_0fff, 2), Ok(vec![2, 3]));
        assert_eq!(m.read_virt(0x10_1fff, 2), Err(HostError::NotMapped));
        assert_eq!(m.read_virt(0x77, 0), Ok(vec![]));
    }
}
