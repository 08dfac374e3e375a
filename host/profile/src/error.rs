//! The one error type of this crate.

use std::path::PathBuf;

/// Why a kernel profile could not be built.
///
/// Every malformed, truncated or unexpected input ends here rather than in a
/// panic: the images we read come from outside (a guest's kernel, a
/// download), so they are untrusted.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The input does not start with the ELF magic.
    #[error("the image is not an ELF file")]
    NotElf,
    /// The ELF is 32-bit or big-endian.
    #[error("only 64-bit little-endian ELF images are supported")]
    UnsupportedElf,
    /// A header or table runs past the end of the file.
    #[error("the ELF is truncated at {what} (offset {offset:#x})")]
    Truncated {
        /// Which structure was cut off.
        what: &'static str,
        /// The file offset at which it was expected.
        offset: u64,
    },
    /// No kallsyms token table (or none whose neighbouring tables check out).
    #[error("no kallsyms tables found in the image")]
    NoKallsyms,
    /// The token table was found, but the other kallsyms tables were not.
    #[error("kallsyms tables are incomplete: {0}")]
    BadKallsyms(&'static str),
    /// The ELF has no section named `.BTF`.
    #[error("the image has no .BTF section")]
    NoBtf,
    /// The `.BTF` section is there but cannot be parsed.
    #[error("the .BTF section is malformed: {0}")]
    BadBtf(String),
    /// A bzImage whose payload wasmvisor cannot unpack.
    #[error("the bzImage's payload cannot be unpacked: {0}; pass the vmlinux inside it instead (scripts/fetch-kernel.sh shows how to extract it)")]
    BzImage(String),
    /// Reading the image from disk failed.
    #[error("cannot read kernel image {}: {source}", path.display())]
    Io {
        /// The file we tried to read.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file was read, but building the profile from it failed.
    #[error("kernel image {}: {source}", path.display())]
    InFile {
        /// The file the image came from.
        path: PathBuf,
        /// What was wrong with it.
        source: Box<ProfileError>,
    },
}
