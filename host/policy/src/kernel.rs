//! The guest kernel's profile as policies see it (`kernel-symbol`,
//! `kernel-symbolize`, `kernel-type-size`, `kernel-member-offset`): a
//! [`wasmvisor_profile::Profile`] built once per VM from the kernel image,
//! plus the kernel's relocation in the running guest.
//!
//! A KASLR kernel runs at its link-time addresses plus a slide the
//! decompressor chose. The guest tells it once it has set up its syscall
//! entry: LSTAR then holds the relocated `entry_SYSCALL_64`, and the
//! difference from the link-time address is the slide (checked to be a
//! multiple of the 2 MiB the kernel aligns itself to). Until then the
//! slide reads as 0, which is also what a PVH boot (no decompressor, so
//! no KASLR) has; once known it is kept for the VM's life.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use wasmvisor_profile::Profile;

/// `IA32_LSTAR`, the 64-bit SYSCALL entry point.
pub const MSR_LSTAR: u32 = 0xc000_0082;
/// KASLR moves the kernel in steps of `CONFIG_PHYSICAL_ALIGN`.
const SLIDE_ALIGN: u64 = 0x20_0000;

/// One VM's kernel profile, read on first use (or eagerly, with
/// [`KernelProfile::load`]).
pub struct KernelProfile {
    source: PathBuf,
    parsed: OnceLock<Result<Profile, String>>,
    /// Serialises the one parse.
    parsing: Mutex<()>,
    slide: OnceLock<u64>,
    entry_syscall: OnceLock<Option<u64>>,
}

impl KernelProfile {
    /// A profile to be read from the kernel image at `source` (a vmlinux
    /// or a bzImage).
    pub fn from_image(source: &Path) -> KernelProfile {
        KernelProfile {
            source: source.to_path_buf(),
            parsed: OnceLock::new(),
            parsing: Mutex::new(()),
            slide: OnceLock::new(),
            entry_syscall: OnceLock::new(),
        }
    }

    /// Where the profile comes from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Reads the image now (once); the error is one line naming the file.
    pub fn load(&self) -> Result<&Profile, String> {
        if let Some(done) = self.parsed.get() {
            return done.as_ref().map_err(Clone::clone);
        }
        let _one = self.parsing.lock().unwrap_or_else(|p| p.into_inner());
        self.parsed
            .get_or_init(|| Profile::from_file(&self.source).map_err(|e| e.to_string()))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The slide, learning it from `lstar` (the vCPU's LSTAR) until known.
    pub fn slide(&self, lstar: impl FnOnce() -> Option<u64>) -> u64 {
        if let Some(&s) = self.slide.get() {
            return s;
        }
        let Ok(profile) = self.load() else {
            return 0;
        };
        let entry = *self
            .entry_syscall
            .get_or_init(|| profile.symbols.lookup("entry_SYSCALL_64"));
        let (Some(entry), Some(lstar)) = (entry, lstar()) else {
            return 0;
        };
        let slide = lstar.wrapping_sub(entry);
        if lstar == 0 || slide % SLIDE_ALIGN != 0 {
            return 0;
        }
        *self.slide.get_or_init(|| slide)
    }

    /// `name`'s address with `slide` applied (absolute symbols, such as
    /// per-CPU offsets, do not move).
    pub fn symbol(profile: &Profile, slide: u64, name: &str) -> Option<u64> {
        let symbol = profile.symbols.get(name)?;
        Some(if symbol.is_absolute() {
            symbol.address()
        } else {
            symbol.address().wrapping_add(slide)
        })
    }

    /// The symbol at or below relocated `addr`, and the offset.
    pub fn symbolize(profile: &Profile, slide: u64, addr: u64) -> Option<(String, u64)> {
        profile
            .symbols
            .symbolize(addr.wrapping_sub(slide))
            .map(|(name, off)| (name.to_string(), off))
    }
}

impl std::fmt::Debug for KernelProfile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelProfile")
            .field("source", &self.source)
            .field("slide", &self.slide.get())
            .finish_non_exhaustive()
    }
}
