//! Guest RAM in a snapshot: the sparse file (`memory.bin`), the in-memory
//! baseline a fast reset copies pages back from, and the pages the host
//! wrote (the RAM mapping's bitmap).

use std::io::{self, Write};

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use wasmvisor_exit::GuestRam;

/// Bytes in a page, the unit of every copy.
pub const PAGE: u64 = 4096;
/// The first eight bytes of `memory.bin`.
pub const MAGIC: &[u8; 8] = b"WVRAM001";
/// Magic, page size (u32), reserved (u32), RAM bytes (u64), runs (u64).
const HEADER: usize = 8 + 4 + 4 + 8 + 8;

/// Reads page `page` of `ram` into `buf`.
fn read_page(ram: &GuestRam, page: u64, buf: &mut [u8; PAGE as usize]) -> io::Result<()> {
    ram.read_slice(buf, GuestAddress(page * PAGE))
        .map_err(|e| io::Error::other(format!("reading guest page {page:#x}: {e}")))
}

/// The pages of `ram`, as runs of pages that are not all zero.
fn nonzero_runs(ram: &GuestRam, pages: u64) -> io::Result<Vec<(u64, u64)>> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut buf = [0u8; PAGE as usize];
    for page in 0..pages {
        read_page(ram, page, &mut buf)?;
        if buf.iter().all(|&b| b == 0) {
            continue;
        }
        match runs.last_mut() {
            Some((first, count)) if *first + *count == page => *count += 1,
            _ => runs.push((page, 1)),
        }
    }
    Ok(runs)
}

/// Writes `ram_bytes` of `ram` as the sparse file: the header, then per
/// run of non-zero pages its first page (u64), its page count (u64) and
/// its bytes. Returns the bytes written.
pub fn write_sparse(ram: &GuestRam, ram_bytes: u64, out: &mut dyn Write) -> io::Result<u64> {
    let pages = ram_bytes / PAGE;
    let runs = nonzero_runs(ram, pages)?;
    let mut header = Vec::with_capacity(HEADER);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&(PAGE as u32).to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    header.extend_from_slice(&ram_bytes.to_le_bytes());
    header.extend_from_slice(&(runs.len() as u64).to_le_bytes());
    out.write_all(&header)?;
    let mut written = HEADER as u64;
    let mut buf = [0u8; PAGE as usize];
    for (first, count) in runs {
        out.write_all(&first.to_le_bytes())?;
        out.write_all(&count.to_le_bytes())?;
        for page in first..first + count {
            read_page(ram, page, &mut buf)?;
            out.write_all(&buf)?;
        }
        written += 16 + count * PAGE;
    }
    Ok(written)
}

/// Fills `ram` (fresh, all zero) from a sparse file's bytes; every length
/// and bound is checked first, so a damaged file changes nothing it
/// should not and says what is wrong.
pub fn read_sparse(bytes: &[u8], ram: &GuestRam, ram_bytes: u64) -> Result<(), String> {
    let head = bytes
        .get(..HEADER)
        .ok_or("memory.bin is shorter than its header")?;
    if &head[..8] != MAGIC {
        return Err("memory.bin is not a wasmvisor RAM file".into());
    }
    let u32_at = |at: usize| u32::from_le_bytes(head[at..at + 4].try_into().expect("4"));
    let u64_at = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8"));
    if u64::from(u32_at(8)) != PAGE {
        return Err(format!("memory.bin has {}-byte pages, not 4096", u32_at(8)));
    }
    if u64_at(head, 16) != ram_bytes {
        return Err(format!(
            "memory.bin holds {} bytes of RAM, the snapshot's VM {ram_bytes}",
            u64_at(head, 16)
        ));
    }
    let runs = u64_at(head, 24);
    let mut at = HEADER;
    for _ in 0..runs {
        let run = bytes.get(at..at + 16).ok_or("memory.bin is truncated")?;
        let (first, count) = (u64_at(run, 0), u64_at(run, 8));
        let len = count
            .checked_mul(PAGE)
            .filter(|_| {
                first
                    .checked_add(count)
                    .is_some_and(|end| end * PAGE <= ram_bytes)
            })
            .ok_or_else(|| {
                format!("memory.bin has a run of {count} pages at page {first:#x} outside RAM")
            })?;
        at += 16;
        let data = bytes
            .get(at..at + len as usize)
            .ok_or("memory.bin is truncated")?;
        ram.write_slice(data, GuestAddress(first * PAGE))
            .map_err(|e| format!("writing guest RAM: {e}"))?;
        at += len as usize;
    }
    if at != bytes.len() {
        return Err("memory.bin has bytes after its last run".into());
    }
    Ok(())
}

/// A copy of guest RAM kept in memory for fast resets: non-zero pages
/// only.
pub struct SparseRam {
    /// Per page: index into `data` (in pages), or `ZERO`.
    pages: Vec<u32>,
    data: Vec<u8>,
}

const ZERO: u32 = u32::MAX;

impl SparseRam {
    /// Copies the first `ram_bytes` of `ram`.
    pub fn capture(ram: &GuestRam, ram_bytes: u64) -> io::Result<SparseRam> {
        let count = ram_bytes / PAGE;
        let mut pages = Vec::with_capacity(count as usize);
        let mut data = Vec::new();
        let mut buf = [0u8; PAGE as usize];
        for page in 0..count {
            read_page(ram, page, &mut buf)?;
            if buf.iter().all(|&b| b == 0) {
                pages.push(ZERO);
            } else {
                pages.push((data.len() as u64 / PAGE) as u32);
                data.extend_from_slice(&buf);
            }
        }
        Ok(SparseRam { pages, data })
    }

    /// Bytes of non-zero pages held.
    pub fn held_bytes(&self) -> u64 {
        self.data.len() as u64
    }

    /// Copies pages `pages` back into `ram`; pages past the copy are
    /// ignored.
    pub fn restore(&self, ram: &GuestRam, pages: &[u64]) -> Result<(), String> {
        const ZEROS: [u8; PAGE as usize] = [0; PAGE as usize];
        for &page in pages {
            let Some(&slot) = self.pages.get(page as usize) else {
                continue;
            };
            let bytes = if slot == ZERO {
                &ZEROS[..]
            } else {
                let at = slot as usize * PAGE as usize;
                &self.data[at..at + PAGE as usize]
            };
            ram.write_slice(bytes, GuestAddress(page * PAGE))
                .map_err(|e| format!("restoring guest page {page:#x}: {e}"))?;
        }
        Ok(())
    }
}

/// The pages the host wrote into `ram` since the last call (policy
/// imports and actions, device DMA, a reset's own copies), read from the
/// mapping's bitmap and cleared.
pub fn take_host_dirty(ram: &GuestRam) -> Vec<u64> {
    let mut pages = Vec::new();
    for region in ram.iter() {
        let first = region.start_addr().0 / PAGE;
        // The mapping's own bitmap (`MmapRegion::bitmap`), not the
        // region-relative view `GuestMemoryRegion::bitmap` gives.
        let words = (**region).bitmap().get_and_reset();
        for (w, word) in words.iter().enumerate() {
            let mut bits = *word;
            while bits != 0 {
                pages.push(first + w as u64 * 64 + u64::from(bits.trailing_zeros()));
                bits &= bits - 1;
            }
        }
    }
    pages
}

/// Clears the host-write bitmap of `ram`.
pub fn clear_host_dirty(ram: &GuestRam) {
    for region in ram.iter() {
        (**region).bitmap().reset();
    }
}

/// Whether any page of the region holding `gpa` is marked (for tests).
#[cfg(test)]
fn marked(ram: &GuestRam, gpa: u64) -> bool {
    ram.find_region(GuestAddress(gpa)).is_some_and(|r| {
        (**r)
            .bitmap()
            .is_addr_set((gpa - r.start_addr().0) as usize)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ram(bytes: usize) -> GuestRam {
        GuestRam::from_ranges(&[(GuestAddress(0), bytes)]).unwrap()
    }

    #[test]
    fn the_sparse_file_round_trips_and_skips_zero_pages() {
        let src = ram(64 * PAGE as usize);
        src.write_slice(&[1, 2, 3], GuestAddress(5 * PAGE + 7))
            .unwrap();
        src.write_slice(&[9; 5000], GuestAddress(6 * PAGE)).unwrap();
        src.write_slice(&[4], GuestAddress(63 * PAGE + 4095))
            .unwrap();
        let mut file = Vec::new();
        let n = write_sparse(&src, 64 * PAGE, &mut file).unwrap();
        assert_eq!(n as usize, file.len());
        // Pages 5, 6, 7 in one run and page 63 in another.
        assert_eq!(file.len(), HEADER + 2 * 16 + 4 * PAGE as usize);
        let dst = ram(64 * PAGE as usize);
        read_sparse(&file, &dst, 64 * PAGE).unwrap();
        let mut a = vec![0u8; 64 * PAGE as usize];
        let mut b = a.clone();
        src.read_slice(&mut a, GuestAddress(0)).unwrap();
        dst.read_slice(&mut b, GuestAddress(0)).unwrap();
        assert!(a == b);
    }

    #[test]
    fn a_damaged_sparse_file_is_refused() {
        let src = ram(8 * PAGE as usize);
        src.write_slice(&[1], GuestAddress(PAGE)).unwrap();
        let mut file = Vec::new();
        write_sparse(&src, 8 * PAGE, &mut file).unwrap();
        let dst = ram(8 * PAGE as usize);
        for cut in [0, 10, HEADER, HEADER + 8, file.len() - 1] {
            assert!(
                read_sparse(&file[..cut], &dst, 8 * PAGE).is_err(),
                "cut {cut}"
            );
        }
        assert!(read_sparse(&file, &dst, 16 * PAGE)
            .unwrap_err()
            .contains("holds"));
        let mut outside = file.clone();
        outside[HEADER..HEADER + 8].copy_from_slice(&7u64.to_le_bytes());
        outside[HEADER + 8..HEADER + 16].copy_from_slice(&2u64.to_le_bytes());
        assert!(read_sparse(&outside, &dst, 8 * PAGE).is_err());
    }

    #[test]
    fn a_reset_copy_puts_back_the_pages_asked_for() {
        let r = ram(16 * PAGE as usize);
        r.write_slice(&[7; 100], GuestAddress(2 * PAGE)).unwrap();
        let base = SparseRam::capture(&r, 16 * PAGE).unwrap();
        assert_eq!(base.held_bytes(), PAGE);
        r.write_slice(&[1; 10], GuestAddress(2 * PAGE)).unwrap();
        r.write_slice(&[1; 10], GuestAddress(9 * PAGE)).unwrap();
        base.restore(&r, &[2, 9, 99]).unwrap();
        let mut page = [0u8; 100];
        r.read_slice(&mut page, GuestAddress(2 * PAGE)).unwrap();
        assert_eq!(page, [7; 100]);
        r.read_slice(&mut page, GuestAddress(9 * PAGE)).unwrap();
        assert_eq!(page, [0; 100]);
    }

    #[test]
    fn host_writes_are_marked_until_taken() {
        let r = ram(16 * PAGE as usize);
        clear_host_dirty(&r);
        r.write_slice(&[1; 2], GuestAddress(3 * PAGE + 4095))
            .unwrap();
        assert!(marked(&r, 3 * PAGE));
        assert_eq!(take_host_dirty(&r), vec![3, 4]);
        assert!(take_host_dirty(&r).is_empty());
    }
}
