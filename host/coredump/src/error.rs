//! The one error type of this crate.

use std::io;

/// Why a core could not be written or read back.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// Writing the core file failed.
    #[error("cannot write the core file: {0}")]
    Write(#[source] io::Error),
    /// Reading the core file failed (or it ended early).
    #[error("cannot read the core file: {0}")]
    Read(#[source] io::Error),
    /// The caller's function could not read guest memory.
    #[error("cannot read guest memory at {gpa:#x}: {source}")]
    GuestMemory {
        /// Guest-physical address of the chunk that failed.
        gpa: u64,
        /// What the read function returned.
        #[source]
        source: io::Error,
    },
    /// A RAM region or mapping is empty or runs past the end of the
    /// address space.
    #[error("invalid {what} at {addr:#x}, length {len:#x}")]
    InvalidRange {
        /// `RAM region` or `virtual mapping`.
        what: &'static str,
        /// Its start address.
        addr: u64,
        /// Its length.
        len: u64,
    },
    /// Two RAM regions overlap.
    #[error("RAM regions overlap at {0:#x}")]
    OverlappingRam(u64),
    /// A virtual mapping covers no RAM at all.
    #[error("virtual mapping at {vaddr:#x} (guest-physical {gpa:#x}) maps no RAM")]
    MappingOutsideRam {
        /// The mapping's virtual address.
        vaddr: u64,
        /// The guest-physical address it maps.
        gpa: u64,
    },
    /// More program headers than an ELF header can count.
    #[error("{0} program headers are more than an ELF core can hold without extended numbering")]
    TooManySegments(usize),
    /// A VMCOREINFO key or value that would break its line format.
    #[error("invalid VMCOREINFO line {key:?}: {why}")]
    InvalidVmcoreinfo {
        /// The key (up to `=`).
        key: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A symbol that the VMCOREINFO note must hold is not in the kernel.
    #[error("the kernel has no symbol {0}, which VMCOREINFO needs")]
    MissingSymbol(&'static str),
    /// The file is not an x86-64 ELF64 little-endian core file.
    #[error("not an x86-64 ELF core file: {0}")]
    NotCore(&'static str),
    /// The file's headers or notes are malformed.
    #[error("malformed core file: {0}")]
    Malformed(String),
    /// A read of guest memory from a core that does not hold the address.
    #[error("the core file holds no memory at {addr:#x}")]
    NotInCore {
        /// The address asked for.
        addr: u64,
    },
}
