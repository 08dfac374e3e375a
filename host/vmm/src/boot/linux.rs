//! Loading a Linux kernel (or any kernel with a PVH note) in one of two
//! ways:
//!
//! - a bzImage, for the 64-bit boot protocol
//!   (`Documentation/arch/x86/boot.rst`): the protected-mode kernel at
//!   1 MiB, the zero page (`boot_params`) in RSI, entry in long mode;
//! - an ELF image, 32- or 64-bit, with a PVH note
//!   (`XEN_ELFNOTE_PHYS32_ENTRY`; `pvh`), such as a `vmlinux`, for
//!   the PVH boot protocol: the kernel at its physical addresses, an
//!   `hvm_start_info` in EBX, entry in 32-bit protected mode with paging
//!   off. It skips the bzImage's decompressor.
//!
//! Both get an e820 map of guest RAM, the command line, an initrd, and the
//! ACPI tables (`acpi`) that describe the CPUs and the IOAPIC.
//!
//! Low memory, from the bottom: the host's GDT and identity page tables
//! (0x500-0x6fff, `wasmvisor_kvm::boot`), the zero page or start_info at
//! 0x7000, the command line at 0x20000, the EBDA from 0x9fc00 and the
//! BIOS area from 0xe0000 with the ACPI tables (both reserved in the e820
//! map), then the kernel at 1 MiB. An initrd goes page-aligned at the top
//! of RAM, below the kernel's `initrd_addr_max` (4 GiB for PVH).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use wasmvisor_exit::GuestRam;

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{load_cmdline, Cmdline, KernelLoader};
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress};
use wasmvisor_kvm::{BootMode, LinuxEntry};

use crate::{boot::acpi, boot::pvh};

/// Where the zero page (or PVH start_info) goes.
pub const ZERO_PAGE: u64 = 0x7000;
/// The PVH memory map and module list follow the start_info.
const PVH_MEMMAP: u64 = ZERO_PAGE + 0x100;
const PVH_MODLIST: u64 = ZERO_PAGE + 0x800;
/// `hvm_start_info.magic`.
const PVH_MAGIC: u32 = 0x336e_c578;
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
/// The BIOS area, reserved; the ACPI tables are at its start.
const BIOS_START: u64 = acpi::RSDP_ADDR;
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
    assert!(PVH_MODLIST + 0x100 <= ZERO_PAGE + 0x1000);
    assert!(acpi::ACPI_END == HIGH_RAM);
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
    #[error("kernel {path} is neither an ELF image nor a bzImage wasmvisor can boot: {reason}")]
    Kernel { path: String, reason: String },
    #[error("kernel {path} is an ELF without a PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY); build it with CONFIG_PVH=y or boot its bzImage")]
    NoPvhEntry { path: String },
    #[error("kernel {path} cannot be booted through PVH: {reason}")]
    Pvh { path: String, reason: String },
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
    /// The entry point: 64-bit for a bzImage, 32-bit for PVH.
    pub entry: u64,
    /// The CPU mode at the entry.
    pub mode: BootMode,
    /// Where the boot information is, and which protocol.
    pub info: LinuxEntry,
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

/// What a kernel is booted with besides the kernel itself.
#[derive(Debug, Clone, Copy)]
pub struct LinuxArgs<'a> {
    /// Guest RAM in bytes (at GPA 0).
    pub ram_size: u64,
    /// vCPUs the ACPI tables describe.
    pub vcpus: u32,
    pub initrd: Option<&'a Path>,
    pub cmdline: &'a str,
}

/// Loads the kernel at `kernel` (a bzImage, or an ELF vmlinux with a PVH
/// note), an optional initrd, the command line and the ACPI tables into
/// `mem`, and writes the zero page or start_info.
pub fn load_linux(
    mem: &GuestRam,
    kernel: &Path,
    args: &LinuxArgs<'_>,
) -> Result<LinuxBoot, LinuxError> {
    let mut file = read("kernel", kernel)?;
    let mut magic = [0u8; 4];
    let elf = file.read_exact(&mut magic).is_ok() && magic == *b"\x7fELF";
    if args.cmdline.len() >= CMDLINE_MAX {
        return Err(LinuxError::CmdlineTooLong {
            len: args.cmdline.len(),
        });
    }
    let cmd = Cmdline::try_from(args.cmdline, CMDLINE_MAX)
        .map_err(|e| LinuxError::Cmdline(e.to_string()))?;
    load_cmdline(mem, GuestAddress(CMDLINE_ADDR), &cmd).map_err(|e| LinuxError::Write {
        what: "command line",
        reason: e.to_string(),
    })?;
    let rsdp = acpi::write_tables(mem, args.vcpus).map_err(|reason| LinuxError::Write {
        what: "ACPI tables",
        reason,
    })?;
    let load = Load {
        mem,
        shown: kernel.display().to_string(),
        file: &mut file,
        args,
        rsdp,
    };
    if elf {
        load_pvh(load)
    } else {
        load_bzimage(load)
    }
}

/// What either boot protocol loads from: the kernel file (named as the
/// user gave it) and where it goes.
struct Load<'a> {
    mem: &'a GuestRam,
    shown: String,
    file: &'a mut File,
    args: &'a LinuxArgs<'a>,
    rsdp: u64,
}

/// A bzImage for the 64-bit boot protocol.
fn load_bzimage(load: Load<'_>) -> Result<LinuxBoot, LinuxError> {
    let loaded = BzImage::load(
        load.mem,
        Some(GuestAddress(KERNEL_LOAD)),
        load.file,
        Some(GuestAddress(HIGH_RAM)),
    )
    .map_err(|e| LinuxError::Kernel {
        path: load.shown.clone(),
        reason: e.to_string(),
    })?;
    let Some(hdr) = loaded.setup_header else {
        return Err(LinuxError::Kernel {
            path: load.shown,
            reason: "no setup header".into(),
        });
    };
    let version = hdr.version;
    if version < MIN_PROTOCOL {
        return Err(LinuxError::OldProtocol {
            path: load.shown,
            version,
        });
    }
    let xloadflags = hdr.xloadflags;
    if xloadflags & XLF_KERNEL_64 == 0 {
        return Err(LinuxError::No64BitEntry { path: load.shown });
    }

    let mut params = boot_params {
        hdr,
        ..Default::default()
    };
    params.hdr.type_of_loader = LOADER_UNDEFINED;
    params.hdr.boot_flag = BOOT_FLAG;
    params.hdr.header = HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = load.args.cmdline.len() as u32;
    params.acpi_rsdp_addr = load.rsdp;

    let kernel_end = loaded.kernel_end;
    let max = u64::from(params.hdr.initrd_addr_max);
    let initrd = place_initrd(load.mem, load.args, max, kernel_end)?;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }

    let e820 = e820_map(load.args.ram_size);
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
        load.mem,
    )
    .map_err(|e| LinuxError::Write {
        what: "zero page",
        reason: e.to_string(),
    })?;
    Ok(LinuxBoot {
        entry: loaded.kernel_load.0 + ENTRY_64,
        mode: BootMode::Long,
        info: LinuxEntry::ZeroPage(ZERO_PAGE),
        kernel_end,
        e820,
        initrd,
    })
}

/// An ELF image (a vmlinux, or any kernel with a PVH note, 32- or
/// 64-bit) for the PVH boot protocol.
fn load_pvh(load: Load<'_>) -> Result<LinuxBoot, LinuxError> {
    let mut bytes = Vec::new();
    load.file
        .seek(SeekFrom::Start(0))
        .and_then(|_| load.file.read_to_end(&mut bytes))
        .map_err(|e| LinuxError::Read {
            what: "kernel",
            path: load.shown.clone(),
            reason: e.to_string(),
        })?;
    // PVH kernels run at their link-time physical addresses.
    let image = pvh::parse(&bytes, load.args.ram_size).map_err(|e| match e {
        pvh::PvhError::NoEntry => LinuxError::NoPvhEntry {
            path: load.shown.clone(),
        },
        e => LinuxError::Pvh {
            path: load.shown.clone(),
            reason: e.to_string(),
        },
    })?;
    pvh::load(load.mem, &image).map_err(|reason| LinuxError::Write {
        what: "kernel",
        reason,
    })?;
    let entry = u64::from(image.entry);
    let kernel_end = image.end;
    // The kernel maps the initrd itself; keep it below 4 GiB.
    let initrd = place_initrd(load.mem, load.args, u64::from(u32::MAX), kernel_end)?;

    let e820 = e820_map(load.args.ram_size);
    let memmap: Vec<hvm_memmap_table_entry> = e820
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        })
        .collect();
    let modules: Vec<hvm_modlist_entry> = initrd
        .iter()
        .map(|&(paddr, size)| hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        })
        .collect();
    let start_info = hvm_start_info {
        magic: PVH_MAGIC,
        version: 1,
        nr_modules: modules.len() as u32,
        modlist_paddr: if modules.is_empty() { 0 } else { PVH_MODLIST },
        cmdline_paddr: CMDLINE_ADDR,
        rsdp_paddr: load.rsdp,
        memmap_paddr: PVH_MEMMAP,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let mut params = BootParams::new(&start_info, GuestAddress(ZERO_PAGE));
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP));
    if !modules.is_empty() {
        params.set_modules(&modules, GuestAddress(PVH_MODLIST));
    }
    PvhBootConfigurator::write_bootparams(&params, load.mem).map_err(|e| LinuxError::Write {
        what: "PVH start_info",
        reason: e.to_string(),
    })?;
    Ok(LinuxBoot {
        entry,
        mode: BootMode::Protected,
        info: LinuxEntry::StartInfo(ZERO_PAGE),
        kernel_end,
        e820,
        initrd,
    })
}

/// Puts the initrd, if any, page-aligned at the top of RAM, at most at
/// `max` and above the kernel; returns where and its size.
fn place_initrd(
    mem: &GuestRam,
    args: &LinuxArgs<'_>,
    max: u64,
    kernel_end: u64,
) -> Result<Option<(u64, u64)>, LinuxError> {
    let Some(path) = args.initrd else {
        return Ok(None);
    };
    let bytes = std::fs::read(path).map_err(|e| LinuxError::Read {
        what: "initrd",
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    let size = bytes.len() as u64;
    let top = max.min(args.ram_size - 1) + 1;
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
    Ok(Some((addr, size)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    fn args(ram_size: u64) -> LinuxArgs<'static> {
        LinuxArgs {
            ram_size,
            vcpus: 2,
            initrd: None,
            cmdline: "console=ttyS0",
        }
    }

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("wasmvisor-linux-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    /// A minimal ELF64 kernel: one PT_LOAD of `code` at `paddr`, and a
    /// PT_NOTE with the PVH entry note when `entry` is given.
    fn elf_kernel(paddr: u64, code: &[u8], entry: Option<u32>) -> Vec<u8> {
        let note: Vec<u8> = match entry {
            Some(e) => [4u32, 4, 18]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .chain(*b"Xen\0")
                .chain(e.to_le_bytes())
                .collect(),
            // Some other note, so the PT_NOTE is there but says nothing of PVH.
            None => [4u32, 4, 1]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .chain(*b"GNU\0")
                .chain(0u32.to_le_bytes())
                .collect(),
        };
        let phnum = 2u16;
        let data_off = 64 + 56 * u64::from(phnum);
        let mut f = Vec::new();
        f.extend_from_slice(b"\x7fELF");
        f.extend_from_slice(&[2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        f.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
        f.extend_from_slice(&1u32.to_le_bytes());
        f.extend_from_slice(&paddr.to_le_bytes()); // e_entry
        f.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
        f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
        f.extend_from_slice(&0u32.to_le_bytes()); // e_flags
        for v in [64u16, 56, phnum, 64, 0, 0] {
            f.extend_from_slice(&v.to_le_bytes());
        }
        let phdr = |f: &mut Vec<u8>, kind: u32, off: u64, addr: u64, len: u64| {
            f.extend_from_slice(&kind.to_le_bytes());
            f.extend_from_slice(&5u32.to_le_bytes());
            for v in [off, addr, addr, len, len, 4] {
                f.extend_from_slice(&v.to_le_bytes());
            }
        };
        let code_len = code.len() as u64;
        phdr(&mut f, 1, data_off, paddr, code_len); // PT_LOAD
        phdr(&mut f, 4, data_off + code_len, 0, note.len() as u64); // PT_NOTE
        f.extend_from_slice(code);
        f.extend_from_slice(&note);
        f
    }

    #[test]
    fn a_pvh_kernel_gets_start_info_memmap_cmdline_and_rsdp() {
        let p = scratch("pvh.elf");
        std::fs::write(&p, elf_kernel(0x100_0000, &[0xf4; 16], Some(0x100_0004))).unwrap();
        let initrd = scratch("pvh.initrd");
        std::fs::write(&initrd, vec![0xa5u8; 5000]).unwrap();
        let ram = 64 << 20;
        let mem = GuestRam::from_ranges(&[(GuestAddress(0), ram as usize)]).unwrap();
        let a = LinuxArgs {
            initrd: Some(&initrd),
            ..args(ram)
        };
        let boot = load_linux(&mem, &p, &a).unwrap();
        assert_eq!(boot.entry, 0x100_0004);
        assert_eq!(boot.mode, BootMode::Protected);
        assert_eq!(boot.info, LinuxEntry::StartInfo(ZERO_PAGE));

        let si: hvm_start_info = mem.read_obj(GuestAddress(ZERO_PAGE)).unwrap();
        assert_eq!((si.magic, si.version), (PVH_MAGIC, 1));
        assert_eq!(si.cmdline_paddr, CMDLINE_ADDR);
        assert_eq!(si.rsdp_paddr, acpi::RSDP_ADDR);
        assert_eq!(si.memmap_entries as usize, boot.e820.len());
        for (i, e) in boot.e820.iter().enumerate() {
            let m: hvm_memmap_table_entry = mem
                .read_obj(GuestAddress(si.memmap_paddr + 24 * i as u64))
                .unwrap();
            assert_eq!((m.addr, m.size, m.type_), (e.addr, e.size, e.kind));
        }
        assert_eq!(si.nr_modules, 1);
        let m: hvm_modlist_entry = mem.read_obj(GuestAddress(si.modlist_paddr)).unwrap();
        assert_eq!((m.paddr, m.size), boot.initrd.unwrap());
        assert_eq!(m.paddr % 4096, 0);
        assert!(m.paddr + m.size <= ram);

        let mut cmdline = [0u8; 14];
        mem.read_slice(&mut cmdline, GuestAddress(CMDLINE_ADDR))
            .unwrap();
        assert_eq!(&cmdline, b"console=ttyS0\0");
        let mut code = [0u8; 16];
        mem.read_slice(&mut code, GuestAddress(0x100_0000)).unwrap();
        assert_eq!(code, [0xf4; 16]);
    }

    #[test]
    fn an_elf_without_a_pvh_note_is_refused_by_name() {
        let p = scratch("nopvh.elf");
        std::fs::write(&p, elf_kernel(0x100_0000, &[0xf4; 16], None)).unwrap();
        let mem = GuestRam::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let err = load_linux(&mem, &p, &args(64 << 20)).unwrap_err();
        assert!(
            err.to_string().contains("without a PVH entry note"),
            "{err}"
        );
    }

    #[test]
    fn start_info_matches_the_pvh_layout() {
        // Offsets from xen/include/public/arch-x86/hvm/start_info.h.
        assert_eq!(offset_of!(hvm_start_info, modlist_paddr), 16);
        assert_eq!(offset_of!(hvm_start_info, cmdline_paddr), 24);
        assert_eq!(offset_of!(hvm_start_info, rsdp_paddr), 32);
        assert_eq!(offset_of!(hvm_start_info, memmap_paddr), 40);
        assert_eq!(offset_of!(hvm_start_info, memmap_entries), 48);
        assert_eq!(std::mem::size_of::<hvm_memmap_table_entry>(), 24);
        assert_eq!(std::mem::size_of::<hvm_modlist_entry>(), 32);
        assert_eq!(offset_of!(boot_params, acpi_rsdp_addr), 0x70);
    }

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
        assert_eq!((map[2].addr, map[2].size), (0xe0000, 0x20000));
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
        let p = scratch("vmlinuz");
        std::fs::write(&p, vec![0u8; 8192]).unwrap();
        let mem = GuestRam::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        let err = load_linux(&mem, &p, &args(16 << 20)).unwrap_err();
        assert!(
            err.to_string()
                .contains("is neither an ELF image nor a bzImage"),
            "{err}"
        );
    }
}
