//! Loading a Linux kernel for the 64-bit boot protocol
//! (`Documentation/arch/x86/boot.rst`): the bzImage's protected-mode
//! kernel through linux-loader, the zero page (`boot_params`) with an e820
//! map of guest RAM, the command line, and an initrd.
//!
//! Low memory, from the bottom: the host's GDT and identity page tables
//! (0x500-0x6fff, `wasmvisor_kvm::boot`), the zero page at 0x7000, the
//! command line at 0x20000, the EBDA from 0x9fc00 and the BIOS area from
//! 0xf0000 (both reserved in the e820 map), then the kernel at 1 MiB. An
//! initrd goes page-aligned at the top of RAM, below the kernel's
//! `initrd_addr_max`.

use std::fs::File;
use std::path::Path;

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::{load_cmdline, Cmdline, KernelLoader};
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Where the zero page goes; RSI points here at entry.
pub const ZERO_PAGE: u64 = 0x7000;
/// Where the command line goes.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// The longest command line accepted (boot protocol 2.06+ reads
/// `cmdline_size`; 2 KiB is what every x86 kernel accepts).
pub const CMDLINE_MAX: usize = 2048;
/// Where the protected-mode kernel is loaded.
pub const KERNEL_LOAD: u64 = 0x10_0000;
/// The 64-bit entry is this far into the protected-mode kernel.
const ENTRY_64: u64 = 0x200;
/// Start of the extended BIOS data area, the end of low usable RAM.
const EBDA_START: u64 = 0x9_fc00;
const BIOS_START: u64 = 0xf_0000;
const HIGH_RAM: u64 = 0x10_0000;

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;

const BOOT_FLAG: u16 = 0xaa55;
const HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const LOADER_UNDEFINED: u8 = 0xff;
/// Boot protocol 2.10: `kernel_alignment` and relocatable kernels.
const MIN_PROTOCOL: u16 = 0x020a;
/// `xloadflags`: the kernel has the 64-bit entry at 0x200.
const XLF_KERNEL_64: u16 = 1;

// The low-memory areas must not overlap; checked when compiling.
const _: () = {
    assert!(ZERO_PAGE >= wasmvisor_kvm::HOST_RESERVED_END - 0x1000);
    assert!(ZERO_PAGE + 4096 <= CMDLINE_ADDR);
    assert!(CMDLINE_ADDR + CMDLINE_MAX as u64 <= EBDA_START);
    assert!(EBDA_START < KERNEL_LOAD);
};

/// A kernel that cannot be booted as given.
#[derive(Debug, Error)]
pub enum LinuxError {
    #[error("cannot read {what} {path}: {reason}")]
    Read {
        what: &'static str,
        path: String,
        reason: String,
    },
    #[error("kernel {path} is not a bzImage linux-loader can load: {reason}")]
    Kernel { path: String, reason: String },
    #[error(
        "kernel {path} uses boot protocol {version:#x}; wasmvisor needs 2.10 (0x20a) or later"
    )]
    OldProtocol { path: String, version: u16 },
    #[error("kernel {path} has no 64-bit entry point (xloadflags bit 0)")]
    No64BitEntry { path: String },
    #[error("command line is {len} bytes; the limit is {CMDLINE_MAX}")]
    CmdlineTooLong { len: usize },
    #[error("command line: {0}")]
    Cmdline(String),
    #[error("initrd {path} ({size} bytes) does not fit in guest RAM above the kernel")]
    InitrdTooLarge { path: String, size: u64 },
    #[error("cannot write the {what} into guest RAM: {reason}")]
    Write { what: &'static str, reason: String },
}

/// One e820 entry as the VMM builds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820 {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// The e820 map of `ram_size` bytes of RAM at GPA 0: low RAM up to the
/// EBDA, the EBDA and BIOS area reserved, RAM from 1 MiB to the end.
pub fn e820_map(ram_size: u64) -> Vec<E820> {
    vec![
        E820 {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        E820 {
            addr: EBDA_START,
            size: 0xa_0000 - EBDA_START,
            kind: E820_RESERVED,
        },
        E820 {
            addr: BIOS_START,
            size: HIGH_RAM - BIOS_START,
            kind: E820_RESERVED,
        },
        E820 {
            addr: HIGH_RAM,
            size: ram_size - HIGH_RAM,
            kind: E820_RAM,
        },
    ]
}

/// What booting the kernel needs after it is loaded.
#[derive(Debug, Clone)]
pub struct LinuxBoot {
    /// The 64-bit entry point.
    pub entry: u64,
    /// End of the loaded kernel image.
    pub kernel_end: u64,
    pub e820: Vec<E820>,
    /// Where the initrd went, and its size.
    pub initrd: Option<(u64, u64)>,
}

fn read(what: &'static str, path: &Path) -> Result<File, LinuxError> {
    File::open(path).map_err(|e| LinuxError::Read {
        what,
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// Loads the bzImage at `kernel`, an optional initrd and the command line
/// into `mem` (`ram_size` bytes), and writes the zero page.
pub fn load_linux(
    mem: &GuestMemoryMmap,
    ram_size: u64,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
) -> Result<LinuxBoot, LinuxError> {
    let shown = kernel.display().to_string();
    let mut file = read("kernel", kernel)?;
    let loaded = BzImage::load(
        mem,
        Some(GuestAddress(KERNEL_LOAD)),
        &mut file,
        Some(GuestAddress(HIGH_RAM)),
    )
    .map_err(|e| LinuxError::Kernel {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    let Some(hdr) = loaded.setup_header else {
        return Err(LinuxError::Kernel {
            path: shown,
            reason: "no setup header".into(),
        });
    };
    let version = hdr.version;
    if version < MIN_PROTOCOL {
        return Err(LinuxError::OldProtocol {
            path: shown,
            version,
        });
    }
    let xloadflags = hdr.xloadflags;
    if xloadflags & XLF_KERNEL_64 == 0 {
        return Err(LinuxError::No64BitEntry { path: shown });
    }

    if cmdline.len() >= CMDLINE_MAX {
        return Err(LinuxError::CmdlineTooLong { len: cmdline.len() });
    }
    let cmd =
        Cmdline::try_from(cmdline, CMDLINE_MAX).map_err(|e| LinuxError::Cmdline(e.to_string()))?;
    load_cmdline(mem, GuestAddress(CMDLINE_ADDR), &cmd).map_err(|e| LinuxError::Write {
        what: "command line",
        reason: e.to_string(),
    })?;

    let mut params = boot_params {
        hdr,
        ..Default::default()
    };
    params.hdr.type_of_loader = LOADER_UNDEFINED;
    params.hdr.boot_flag = BOOT_FLAG;
    params.hdr.header = HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = cmdline.len() as u32;

    let kernel_end = loaded.kernel_end;
    let initrd = match initrd {
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|e| LinuxError::Read {
                what: "initrd",
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
            let size = bytes.len() as u64;
            let max = u64::from(params.hdr.initrd_addr_max).min(ram_size - 1);
            let top = (max + 1).min(ram_size);
            let addr = top
                .checked_sub(size)
                .map(|a| a & !0xfff)
                .filter(|&a| a >= kernel_end)
                .ok_or_else(|| LinuxError::InitrdTooLarge {
                    path: path.display().to_string(),
                    size,
                })?;
            mem.write_slice(&bytes, GuestAddress(addr))
                .map_err(|e| LinuxError::Write {
                    what: "initrd",
                    reason: e.to_string(),
                })?;
            params.hdr.ramdisk_image = addr as u32;
            params.hdr.ramdisk_size = size as u32;
            Some((addr, size))
        }
        None => None,
    };

    let e820 = e820_map(ram_size);
    for (slot, e) in params.e820_table.iter_mut().zip(&e820) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: e.kind,
        };
    }
    params.e820_entries = e820.len() as u8;
    LinuxBootConfigurator::write_bootparams(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE)),
        mem,
    )
    .map_err(|e| LinuxError::Write {
        what: "zero page",
        reason: e.to_string(),
    })?;
    Ok(LinuxBoot {
        entry: loaded.kernel_load.0 + ENTRY_64,
        kernel_end,
        e820,
        initrd,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    #[test]
    fn the_e820_map_covers_ram_and_reserves_the_bios_areas() {
        let map = e820_map(64 << 20);
        assert_eq!(
            map[0],
            E820 {
                addr: 0,
                size: 0x9fc00,
                kind: E820_RAM
            }
        );
        assert_eq!((map[1].addr, map[1].kind), (0x9fc00, E820_RESERVED));
        assert_eq!((map[2].addr, map[2].size), (0xf0000, 0x10000));
        assert_eq!(
            map[3],
            E820 {
                addr: 0x100000,
                size: (64 << 20) - 0x100000,
                kind: E820_RAM
            }
        );
        // Nothing overlaps, in order.
        for w in map.windows(2) {
            assert!(w[0].addr + w[0].size <= w[1].addr);
        }
    }

    #[test]
    fn boot_params_match_the_boot_protocol_layout() {
        // Offsets from Documentation/arch/x86/zero-page.rst.
        assert_eq!(std::mem::size_of::<boot_params>(), 4096);
        assert_eq!(offset_of!(boot_params, e820_entries), 0x1e8);
        assert_eq!(offset_of!(boot_params, hdr), 0x1f1);
        assert_eq!(offset_of!(boot_params, e820_table), 0x2d0);
        assert_eq!(std::mem::size_of::<boot_e820_entry>(), 20);
    }

    #[test]
    fn a_file_that_is_not_a_bzimage_is_refused() {
        let dir = std::env::temp_dir().join(format!("wasmvisor-linux-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("vmlinuz");
        std::fs::write(&p, vec![0u8; 8192]).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let err = load_linux(&mem, 16 << 20, &p, None, "console=ttyS0").unwrap_err();
        assert!(err.to_string().contains("is not a bzImage"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
