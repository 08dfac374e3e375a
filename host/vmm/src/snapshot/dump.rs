//! Guest RAM as an ELF core file that drgn, crash and gdb read
//! (`wasmvisor vm dump`, `docs/snapshots.md`): one `PT_LOAD` for RAM, an
//! `NT_PRSTATUS` note per vCPU, and, for a Linux guest with a kernel
//! profile, a VMCOREINFO note and the kernel's direct-map and text
//! mappings, laid out as a kdump vmcore is.
//!
//! The VMCOREINFO is written by wasmvisor from the profile: the kernel
//! fills its own only late in boot (`crash_save_vmcoreinfo_init`), after
//! the point where early-boot dumps are taken, and the profile knows the
//! same symbols. It carries the kallsyms tables' addresses, which is what
//! lets drgn name kernel symbols without a vmlinux.

use std::io::Write;

use vm_memory::{Bytes, GuestAddress};
use wasmvisor_coredump::{
    CoreLayout, CpuRegisters, LinuxKernel, MemoryRegion, VirtualMapping, VmcoreInfo,
};
use wasmvisor_exit::{translate, GuestRam, PagingState};
use wasmvisor_kvm::VcpuState;
use wasmvisor_policy::KernelProfile;

/// Where x86-64 Linux maps its image (`__START_KERNEL_map`).
const START_KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;
/// The direct map's base without KASLR (`__PAGE_OFFSET_BASE_L4`).
const DEFAULT_PAGE_OFFSET: u64 = 0xffff_8880_0000_0000;
/// `IA32_LSTAR`, from which the kernel's relocation is learned.
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_EFER: u32 = 0xc000_0080;

/// A vCPU's registers as the core's `NT_PRSTATUS` holds them; `pid` is
/// the vCPU index + 1, the convention drgn reads CPUs by.
pub fn registers(index: usize, s: &VcpuState) -> CpuRegisters {
    let r = &s.regs;
    let sr = &s.sregs;
    CpuRegisters {
        pid: index as u32 + 1,
        r15: r.r15,
        r14: r.r14,
        r13: r.r13,
        r12: r.r12,
        rbp: r.rbp,
        rbx: r.rbx,
        r11: r.r11,
        r10: r.r10,
        r9: r.r9,
        r8: r.r8,
        rax: r.rax,
        rcx: r.rcx,
        rdx: r.rdx,
        rsi: r.rsi,
        rdi: r.rdi,
        orig_rax: u64::MAX,
        rip: r.rip,
        cs: u64::from(sr.cs.selector),
        eflags: r.rflags,
        rsp: r.rsp,
        ss: u64::from(sr.ss.selector),
        fs_base: sr.fs.base,
        gs_base: sr.gs.base,
        ds: u64::from(sr.ds.selector),
        es: u64::from(sr.es.selector),
        fs: u64::from(sr.fs.selector),
        gs: u64::from(sr.gs.selector),
    }
}

fn msr(s: &VcpuState, index: u32) -> Option<u64> {
    s.msrs.iter().find(|m| m.index == index).map(|m| m.data)
}

/// The layout of the core of `ram_bytes` of RAM with these vCPUs; Linux
/// notes and mappings when `kernel` is given and its profile reads.
pub fn layout(
    ram: &GuestRam,
    ram_bytes: u64,
    vcpus: &[(usize, Box<VcpuState>)],
    kernel: Option<&KernelProfile>,
) -> Result<CoreLayout, String> {
    let mut layout = CoreLayout {
        cpus: vcpus.iter().map(|(i, s)| registers(*i, s)).collect(),
        vmcoreinfo: None,
        ram: vec![MemoryRegion {
            gpa: 0,
            len: ram_bytes,
        }],
        mappings: Vec::new(),
    };
    let Some(kernel) = kernel else {
        return Ok(layout);
    };
    let profile = kernel.load()?;
    let boot = vcpus.first().map(|(_, s)| s.as_ref());
    let slide = kernel.slide(|| boot.and_then(|s| msr(s, MSR_LSTAR)));
    let symbols = &profile.symbols;
    let sym = |name: &str| symbols.lookup(name).map(|a| a.wrapping_add(slide));
    let (Some(text), Some(end)) = (sym("_text"), sym("_end")) else {
        return Err("the kernel profile lacks _text or _end".into());
    };
    // Where the image really sits: through the boot CPU's page tables if
    // they map it, else at its link address (a PVH boot).
    let phys_text = boot
        .and_then(|s| {
            let paging = PagingState {
                cr0: s.sregs.cr0,
                cr3: s.sregs.cr3,
                cr4: s.sregs.cr4,
                efer: msr(s, MSR_EFER).unwrap_or(s.sregs.efer),
            };
            translate(ram, &paging, text).ok().map(|t| t.gpa)
        })
        .unwrap_or(text - START_KERNEL_MAP);
    let phys_base = phys_text.wrapping_sub(text - START_KERNEL_MAP);
    let read_u64 = |vaddr: u64| {
        let mut b = [0u8; 8];
        ram.read_slice(&mut b, GuestAddress(vaddr - START_KERNEL_MAP + phys_base))
            .ok()
            .map(|()| u64::from_le_bytes(b))
    };
    let page_offset = sym("page_offset_base")
        .and_then(read_u64)
        .filter(|&v| v != 0)
        .unwrap_or(DEFAULT_PAGE_OFFSET);
    let release = release(ram, profile, &sym, phys_base).unwrap_or_default();
    let tables = symbols.tables().clone();
    let mut lookup = |name: &str| -> Option<u64> {
        match name {
            "kallsyms_names" => tables.names.vaddr,
            "kallsyms_num_syms" => tables.num_syms.vaddr,
            "kallsyms_token_table" => tables.token_table.vaddr,
            "kallsyms_token_index" => tables.token_index.vaddr,
            "kallsyms_markers" => tables.markers.vaddr,
            "kallsyms_seqs_of_names" => tables.seqs_of_names.and_then(|t| t.vaddr),
            "kallsyms_relative_base" => tables.relative_base.and_then(|t| t.vaddr),
            "kallsyms_offsets" if tables.relative_base.is_some() => tables.addresses.vaddr,
            "kallsyms_addresses" if tables.relative_base.is_none() => tables.addresses.vaddr,
            _ => symbols.lookup(name),
        }
    };
    let info = VmcoreInfo::for_linux_x86_64(
        &LinuxKernel {
            release: &release,
            kaslr_offset: slide,
            phys_base,
            five_level_paging: false,
            build_id: None,
        },
        &mut lookup,
    )
    .map_err(|e| format!("cannot describe the kernel for the core: {e}"))?;
    layout.vmcoreinfo = Some(info);
    layout.mappings = vec![
        VirtualMapping {
            vaddr: page_offset,
            gpa: 0,
            len: ram_bytes,
        },
        VirtualMapping {
            vaddr: text,
            gpa: phys_text,
            len: (end - text).min(ram_bytes.saturating_sub(phys_text)),
        },
    ];
    Ok(layout)
}

/// The running kernel's release (`init_uts_ns.name.release`), read from
/// guest memory.
fn release(
    ram: &GuestRam,
    profile: &wasmvisor_profile::Profile,
    sym: &dyn Fn(&str) -> Option<u64>,
    phys_base: u64,
) -> Option<String> {
    let at = sym("init_uts_ns")? + profile.types.offset_of("uts_namespace.name.release")?;
    let mut b = [0u8; 65];
    ram.read_slice(&mut b, GuestAddress(at - START_KERNEL_MAP + phys_base))
        .ok()?;
    let len = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    Some(String::from_utf8_lossy(&b[..len]).into_owned())
}

/// Writes the core of `layout` from `ram` into `out`; returns its size.
pub fn write(out: impl Write, layout: &CoreLayout, ram: &GuestRam) -> Result<u64, String> {
    wasmvisor_coredump::write_core(out, layout, &mut |gpa, buf| {
        ram.read_slice(buf, GuestAddress(gpa))
            .map_err(|e| std::io::Error::other(e.to_string()))
    })
    .map_err(|e| e.to_string())
}

/// What a dump wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DumpReport {
    pub path: String,
    pub bytes: u64,
    pub vcpus: usize,
    /// A VMCOREINFO note was written (a Linux guest with a profile).
    pub vmcoreinfo: bool,
    pub total_us: u64,
}

/// Writes the core of `ram` and `vcpus` to a new file at `path`.
pub fn to_file(
    path: &std::path::Path,
    ram: &GuestRam,
    ram_bytes: u64,
    vcpus: &[(usize, Box<VcpuState>)],
    kernel: Option<&KernelProfile>,
) -> Result<DumpReport, String> {
    let started = std::time::Instant::now();
    let layout = layout(ram, ram_bytes, vcpus, kernel)?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let bytes = write(
        std::io::BufWriter::with_capacity(1 << 20, file),
        &layout,
        ram,
    )
    .inspect_err(|_| {
        let _ = std::fs::remove_file(path);
    })?;
    Ok(DumpReport {
        path: path.display().to_string(),
        bytes,
        vcpus: vcpus.len(),
        vmcoreinfo: layout.vmcoreinfo.is_some(),
        total_us: started.elapsed().as_micros() as u64,
    })
}
