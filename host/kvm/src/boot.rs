//! The machine state a guest starts in: GDT, identity page tables and the
//! registers of real, protected and long mode.
//!
//! Layout of the host-reserved low memory (documented for guests in
//! `examples/guests/README.md`):
//! - 0x0500: GDT (0x08 flat 32-bit code, 0x10 flat data, 0x18 64-bit code)
//! - 0x1000: PML4, 0x2000: PDPT, 0x3000-0x6fff: four page directories
//!   mapping the first 4 GiB with 2 MiB pages (long mode only)
//! - 0x7000-0x7fff: boot stacks, vCPU i starts with SP = 0x8000 - i*0x100
//!
//! At entry EDI holds the vCPU index and ESI the vCPU count.

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress};
use wasmvisor_exit::GuestRam;

use crate::KvmError;

/// Guest images must load at or above this address.
pub const HOST_RESERVED_END: u64 = 0x8000;
/// The boot stacks fit this many vCPUs.
pub const MAX_BOOT_VCPUS: u32 = 16;

const GDT_ADDR: u64 = 0x500;
const PML4_ADDR: u64 = 0x1000;
const PDPT_ADDR: u64 = 0x2000;
const PD_ADDR: u64 = 0x3000;
const STACK_TOP: u64 = 0x8000;
const STACK_STRIDE: u64 = 0x100;

const SEL_CODE32: u16 = 0x08;
const SEL_DATA: u16 = 0x10;
const SEL_CODE64: u16 = 0x18;
const GDT: [u64; 4] = [
    0,
    0x00cf_9b00_0000_ffff, // flat 32-bit code, accessed
    0x00cf_9300_0000_ffff, // flat data, accessed
    0x00af_9b00_0000_ffff, // 64-bit code, accessed
];

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// The CPU mode a guest starts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootMode {
    /// 16-bit real mode, segments based at 0 (or at the entry's paragraph
    /// when the entry lies above 64 KiB).
    Real,
    /// Flat 32-bit protected mode, paging off.
    Protected,
    /// 64-bit long mode on identity-mapped page tables.
    Long,
}

/// How a Linux kernel is handed its boot information.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinuxEntry {
    /// The 64-bit boot protocol: RSI holds the zero page (`boot_params`).
    ZeroPage(u64),
    /// The PVH boot protocol: EBX holds the `hvm_start_info`, in 32-bit
    /// protected mode with paging off.
    StartInfo(u64),
}

/// Where and how every vCPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootState {
    pub mode: BootMode,
    pub entry: u64,
    pub vcpu_count: u32,
    /// A Linux kernel: its boot information goes in a register instead of
    /// the vCPU index and count, and only the boot vCPU starts at the
    /// entry; the others wait for the kernel's INIT/SIPI in the in-kernel
    /// LAPIC.
    pub linux: Option<LinuxEntry>,
}

impl BootState {
    /// Writes the GDT and page tables into guest RAM.
    pub fn write_tables(&self, mem: &GuestRam) -> Result<(), KvmError> {
        let bytes: Vec<u8> = GDT.iter().flat_map(|d| d.to_le_bytes()).collect();
        write(mem, "the GDT", &bytes, GDT_ADDR)?;
        if self.mode != BootMode::Long {
            return Ok(());
        }
        write(mem, "the PML4", &(PDPT_ADDR | 3).to_le_bytes(), PML4_ADDR)?;
        let pdpt: Vec<u8> = (0..4u64)
            .flat_map(|i| ((PD_ADDR + i * 0x1000) | 3).to_le_bytes())
            .collect();
        write(mem, "the PDPT", &pdpt, PDPT_ADDR)?;
        // Present, writable, 2 MiB page.
        let pd: Vec<u8> = (0..2048u64)
            .flat_map(|i| ((i << 21) | 0x83).to_le_bytes())
            .collect();
        write(mem, "the page directories", &pd, PD_ADDR)
    }

    /// Checks the entry point fits the mode.
    pub fn check(&self) -> Result<(), KvmError> {
        if self.vcpu_count == 0 || self.vcpu_count > MAX_BOOT_VCPUS {
            return Err(KvmError::BadBootState(format!(
                "{} vCPUs requested; wasmvisor supports 1 to {MAX_BOOT_VCPUS}",
                self.vcpu_count
            )));
        }
        let limit = match self.mode {
            BootMode::Real => 0x10_0000,
            BootMode::Protected | BootMode::Long => 0x1_0000_0000,
        };
        if self.entry >= limit {
            return Err(KvmError::BadBootState(format!(
                "entry point {:#x} is out of reach in {:?} mode (limit {limit:#x})",
                self.entry, self.mode
            )));
        }
        Ok(())
    }

    /// Segment and control registers for this mode, on top of KVM's reset
    /// state `base`.
    pub(crate) fn sregs(&self, mut s: kvm_sregs) -> kvm_sregs {
        match self.mode {
            BootMode::Real => {
                let base = if self.entry < 0x1_0000 {
                    0
                } else {
                    self.entry & !0xf
                };
                let seg = kvm_segment {
                    base,
                    limit: 0xffff,
                    selector: (base >> 4) as u16,
                    type_: 3,
                    present: 1,
                    s: 1,
                    ..Default::default()
                };
                s.cs = kvm_segment { type_: 0xb, ..seg };
                s.ds = seg;
                s.es = seg;
                s.fs = seg;
                s.gs = seg;
                s.ss = seg;
                s.cr0 &= !(CR0_PE | CR0_PG);
            }
            BootMode::Protected | BootMode::Long => {
                let long = self.mode == BootMode::Long;
                let data = kvm_segment {
                    base: 0,
                    limit: 0xffff_ffff,
                    selector: SEL_DATA,
                    type_: 3,
                    present: 1,
                    db: 1,
                    s: 1,
                    g: 1,
                    ..Default::default()
                };
                s.cs = kvm_segment {
                    selector: if long { SEL_CODE64 } else { SEL_CODE32 },
                    type_: 0xb,
                    db: u8::from(!long),
                    l: u8::from(long),
                    ..data
                };
                s.ds = data;
                s.es = data;
                s.fs = data;
                s.gs = data;
                s.ss = data;
                s.gdt.base = GDT_ADDR;
                s.gdt.limit = (GDT.len() * 8 - 1) as u16;
                s.cr0 = CR0_PE | CR0_ET;
                if long {
                    s.cr3 = PML4_ADDR;
                    s.cr4 |= CR4_PAE;
                    s.cr0 |= CR0_PG;
                    s.efer |= EFER_LME | EFER_LMA;
                }
            }
        }
        s
    }

    /// General registers for vCPU `index`.
    pub(crate) fn regs(&self, index: u32) -> kvm_regs {
        let ip = match self.mode {
            BootMode::Real if self.entry >= 0x1_0000 => self.entry & 0xf,
            _ => self.entry,
        };
        let (rdi, rsi, rbx) = match self.linux {
            Some(LinuxEntry::ZeroPage(zero_page)) => (0, zero_page, 0),
            Some(LinuxEntry::StartInfo(start_info)) => (0, 0, start_info),
            None => (u64::from(index), u64::from(self.vcpu_count), 0),
        };
        kvm_regs {
            rip: ip,
            rsp: STACK_TOP - u64::from(index) * STACK_STRIDE,
            rdi,
            rsi,
            rbx,
            rflags: 0x2,
            ..Default::default()
        }
    }
}

fn write(mem: &GuestRam, what: &'static str, data: &[u8], gpa: u64) -> Result<(), KvmError> {
    mem.write_slice(data, GuestAddress(gpa))
        .map_err(|e| KvmError::BootWrite {
            what,
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(mode: BootMode, entry: u64) -> BootState {
        BootState {
            mode,
            entry,
            vcpu_count: 2,
            linux: None,
        }
    }

    #[test]
    fn long_mode_tables_identity_map_first_4g() {
        let mem = GuestRam::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        state(BootMode::Long, 0x8000).write_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_ADDR)).unwrap();
        assert_eq!(pml4, PDPT_ADDR | 3);
        let pdpt3: u64 = mem.read_obj(GuestAddress(PDPT_ADDR + 24)).unwrap();
        assert_eq!(pdpt3, (PD_ADDR + 0x3000) | 3);
        // The last 2 MiB page of the fourth directory maps 4 GiB - 2 MiB.
        let last: u64 = mem.read_obj(GuestAddress(PD_ADDR + 2047 * 8)).unwrap();
        assert_eq!(last, (0xFFE0_0000) | 0x83);
        let gdt3: u64 = mem.read_obj(GuestAddress(GDT_ADDR + 24)).unwrap();
        assert_eq!(gdt3, GDT[3]);
    }

    #[test]
    fn regs_carry_index_count_and_own_stack() {
        let r = state(BootMode::Protected, 0x8000).regs(1);
        assert_eq!((r.rip, r.rsp, r.rdi, r.rsi), (0x8000, 0x7f00, 1, 2));
    }

    #[test]
    fn a_linux_entry_passes_the_zero_page_in_rsi() {
        let st = BootState {
            linux: Some(LinuxEntry::ZeroPage(0x7000)),
            ..state(BootMode::Long, 0x100200)
        };
        let r = st.regs(0);
        assert_eq!((r.rip, r.rsi, r.rdi, r.rbx), (0x100200, 0x7000, 0, 0));
    }

    #[test]
    fn a_pvh_entry_passes_the_start_info_in_rbx_in_protected_mode() {
        let st = BootState {
            linux: Some(LinuxEntry::StartInfo(0x7000)),
            ..state(BootMode::Protected, 0x1000000)
        };
        let r = st.regs(0);
        assert_eq!((r.rip, r.rbx, r.rsi), (0x1000000, 0x7000, 0));
        let s = st.sregs(kvm_sregs::default());
        assert_eq!(s.cr0 & CR0_PG, 0, "paging off");
        assert_eq!((s.cs.db, s.cs.l, s.cs.base), (1, 0, 0), "flat 32-bit code");
    }

    #[test]
    fn real_mode_high_entry_uses_segment_base() {
        let st = state(BootMode::Real, 0x12345);
        let s = st.sregs(kvm_sregs::default());
        assert_eq!((s.cs.base, s.cs.selector), (0x12340, 0x1234));
        assert_eq!(st.regs(0).rip, 5);
        assert!(state(BootMode::Real, 0x10_0000).check().is_err());
    }

    #[test]
    fn long_mode_sregs_enable_paging() {
        let s = state(BootMode::Long, 0x8000).sregs(kvm_sregs::default());
        assert_eq!(s.cs.selector, SEL_CODE64);
        assert_eq!(s.cs.l, 1);
        assert_ne!(s.cr0 & CR0_PG, 0);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
    }

    #[test]
    fn vcpu_count_bounds() {
        let mut st = state(BootMode::Long, 0x8000);
        st.vcpu_count = 0;
        assert!(st.check().is_err());
        st.vcpu_count = MAX_BOOT_VCPUS + 1;
        assert!(st.check().is_err());
    }
}
