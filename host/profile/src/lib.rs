//! Kernel profiles for VM introspection: where a guest kernel's symbols
//! are and how its types are laid out, read from a stock Linux image.
//!
//! To read a guest's process list or name the function a vCPU is in, the
//! host must know the addresses of symbols such as `init_task` and the
//! offsets of members such as `task_struct.tasks`. Both change with every
//! kernel build, and distribution kernels ship neither an ELF symbol table
//! nor debug info. They do ship what the kernel itself uses:
//!
//! * [`Symbols`]: the kallsyms tables, found and decoded without a symbol
//!   table ([`kallsyms`] explains how);
//! * [`Types`]: the `.BTF` section (`CONFIG_DEBUG_INFO_BTF`).
//!
//! A [`Profile`] holds both, built from the uncompressed `vmlinux` ELF
//! (extracted from a bzImage). [`vaddr_to_file_offset`] and
//! [`read_u64_at_vaddr`] read initial values, such as `sys_call_table`
//! entries or `linux_banner`, out of the same image.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod btf;
pub mod bzimage;
mod elf;
mod error;
pub mod kallsyms;
pub mod symfile;

use std::path::Path;

pub use btf::Types;
pub use elf::{read_u64_at_vaddr, vaddr_to_file_offset};
pub use error::ProfileError;
pub use kallsyms::{Symbol, Symbols};

/// Everything introspection needs to know about one kernel build.
#[derive(Debug)]
pub struct Profile {
    /// The kernel's symbols, from kallsyms.
    pub symbols: Symbols,
    /// The kernel's type layouts, from BTF.
    pub types: Types,
}

impl Profile {
    /// Builds the profile of a `vmlinux` ELF image held in memory.
    pub fn from_elf(image: &[u8]) -> Result<Self, ProfileError> {
        Ok(Profile {
            symbols: Symbols::from_elf(image)?,
            types: Types::from_elf(image)?,
        })
    }

    /// Reads a kernel image from `path` (once) and builds its profile: a
    /// `vmlinux` ELF, or a bzImage whose payload is unpacked first
    /// ([`bzimage`]); errors name the file.
    pub fn from_file(path: &Path) -> Result<Self, ProfileError> {
        let image = std::fs::read(path).map_err(|source| ProfileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let built = if bzimage::is_bzimage(&image) {
            bzimage::vmlinux(&image).and_then(|elf| Self::from_elf(&elf))
        } else {
            Self::from_elf(&image)
        };
        built.map_err(|source| ProfileError::InFile {
            path: path.to_path_buf(),
            source: Box::new(source),
        })
    }
}

/// Pseudo-random bytes (xorshift64) for the robustness tests: the same
/// bytes on every run.
#[cfg(test)]
pub(crate) fn pseudo_random(mut state: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_file() {
        let missing = Path::new("/nonexistent/vmlinux");
        let message = Profile::from_file(missing).unwrap_err().to_string();
        assert!(message.contains("/nonexistent/vmlinux"), "{message}");

        let dir = std::env::temp_dir().join(format!("profile-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty-vmlinux");
        std::fs::write(&empty, b"").unwrap();
        let message = Profile::from_file(&empty).unwrap_err().to_string();
        assert!(message.contains("empty-vmlinux"), "{message}");
        assert!(message.contains("not an ELF"), "{message}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(matches!(Profile::from_elf(&[]), Err(ProfileError::NotElf)));
        let mut random = pseudo_random(0x9e37_79b9_7f4a_7c15, 4096);
        assert!(Profile::from_elf(&random).is_err());
        // An ELF header on top of garbage: its tables point anywhere.
        random[..8].copy_from_slice(b"\x7fELF\x02\x01\x01\x00");
        assert!(Profile::from_elf(&random).is_err());
    }

    #[test]
    fn error_messages_are_one_line() {
        let errors = [
            ProfileError::NotElf,
            ProfileError::NoKallsyms,
            ProfileError::NoBtf,
            ProfileError::Truncated {
                what: "the section headers",
                offset: 0x1234,
            },
        ];
        for error in errors {
            let message = error.to_string();
            assert!(!message.contains('\n'));
            assert!(!message.is_empty());
        }
        assert_eq!(
            ProfileError::NoKallsyms.to_string(),
            "no kallsyms tables found in the image"
        );
        assert_eq!(
            ProfileError::NoBtf.to_string(),
            "the image has no .BTF section"
        );
    }
}
