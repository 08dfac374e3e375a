//! Guest core dumps: a guest's RAM and vCPU registers written as an ELF
//! core file in the format of a kdump vmcore (`/proc/vmcore`), which
//! drgn, crash, gdb and readelf read.
//!
//! The file is an ELF64 little-endian `ET_CORE` for `EM_X86_64`:
//!
//! * one `PT_NOTE` segment holding an `NT_PRSTATUS` note (name `CORE`)
//!   per vCPU ([`CpuRegisters`], [`regs`]) and, when given, a
//!   `VMCOREINFO` note ([`VmcoreInfo`]), which is what tells drgn and
//!   crash that the file is a Linux kernel core and where the kernel is;
//! * one `PT_LOAD` segment per RAM region ([`MemoryRegion`]), its
//!   `p_paddr` the guest-physical address;
//! * extra `PT_LOAD` segments for [`VirtualMapping`]s, which map the same
//!   file bytes at a virtual address, as kdump does for the kernel text
//!   (`__START_KERNEL_map`) so that a reader can translate kernel
//!   addresses without walking page tables.
//!
//! [`write_core`] streams RAM through a caller's read function in chunks,
//! so dumping a large guest needs little host memory; [`CoreFile`] parses a
//! core back (headers and notes, then memory on demand).
//!
//! ## `p_vaddr` conventions
//!
//! A kdump vmcore gives each RAM segment its direct-map address
//! (`PAGE_OFFSET + p_paddr`) and adds one segment for the kernel text
//! (`_text` to `_end`). [`write_core`] does the same when given those
//! mappings, the direct map first: a RAM region that a mapping covers
//! whole takes the mapping's address as its `p_vaddr` (the first such
//! mapping in [`CoreLayout::mappings`] order); every other part of a
//! mapping gets an extra segment. A RAM region that no mapping covers
//! whole gets `p_vaddr == p_paddr`, so that segments never overlap in
//! virtual space (QEMU's `dump-guest-memory` writes 0 instead).
//!
//! What readers do with them: drgn maps every `PT_LOAD` at both its
//! `p_vaddr` and (when the core has a VMCOREINFO note) its `p_paddr`, and
//! walks the kernel's page tables (`SYMBOL(swapper_pg_dir)`) for virtual
//! addresses no segment covers; crash reads RAM by `p_paddr` and takes
//! `phys_base` from the first segment whose `p_vaddr` is in the kernel
//! text map (`0xffffffff80000000` up); gdb reads by `p_vaddr` only, so
//! without mappings it sees no kernel addresses.
//!
//! Pages of zeros are written out as zeros: the file is as large as the
//! RAM it holds (a filesystem that supports holes can sparsify it with
//! `fallocate --dig-holes`).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod elf;
mod error;
pub mod note;
mod reader;
pub mod regs;
pub mod vmcoreinfo;

#[cfg(test)]
mod tests;

pub use elf::{core_size, write_core, CHUNK_SIZE};
pub use error::CoreError;
pub use note::Note;
pub use reader::{CoreFile, LoadSegment};
pub use regs::CpuRegisters;
pub use vmcoreinfo::{LinuxKernel, VmcoreInfo};

/// A range of guest RAM, by guest-physical address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryRegion {
    /// Guest-physical address of its first byte.
    pub gpa: u64,
    /// Its length in bytes (not zero).
    pub len: u64,
}

/// A guest-virtual range that maps guest RAM linearly: `vaddr + i` is
/// guest-physical `gpa + i` for `i < len`.
///
/// It does not add bytes to the file; it adds `PT_LOAD` headers that point
/// at the RAM already there. The parts of the range not backed by a
/// [`MemoryRegion`] (holes in RAM) are left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtualMapping {
    /// Guest-virtual address of the first byte.
    pub vaddr: u64,
    /// Guest-physical address it maps to.
    pub gpa: u64,
    /// Length of the range in bytes.
    pub len: u64,
}

/// What a core file holds: everything but the RAM contents, which
/// [`write_core`] reads as it writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoreLayout {
    /// One entry per vCPU, in vCPU order, each written as an
    /// `NT_PRSTATUS` note ([`CpuRegisters::pid`] says which is which).
    pub cpus: Vec<CpuRegisters>,
    /// The text of the `VMCOREINFO` note; `None` writes no such note (and
    /// readers then take the file for a plain, non-kernel core).
    pub vmcoreinfo: Option<VmcoreInfo>,
    /// Guest RAM: regions must not overlap; they are written in ascending
    /// address order whatever their order here.
    pub ram: Vec<MemoryRegion>,
    /// Virtual mappings of RAM, for the kernel's text map and direct map.
    pub mappings: Vec<VirtualMapping>,
}
