//! vCPU registers in an `NT_PRSTATUS` note.
//!
//! The note's descriptor is the x86-64 `struct elf_prstatus` of
//! `<linux/elfcore.h>`, 336 bytes:
//!
//! | offset | size | field |
//! |-------:|-----:|-------|
//! | 0 | 12 | `pr_info` (signal number, code, errno) |
//! | 12 | 2 | `pr_cursig` (then 2 bytes of padding) |
//! | 16 | 16 | `pr_sigpend`, `pr_sighold` |
//! | 32 | 16 | `pr_pid`, `pr_ppid`, `pr_pgrp`, `pr_sid` |
//! | 48 | 64 | `pr_utime`, `pr_stime`, `pr_cutime`, `pr_cstime` |
//! | 112 | 216 | `pr_reg`: `struct user_regs_struct`, 27 × u64 |
//! | 328 | 4 | `pr_fpvalid` (then 4 bytes of padding) |
//!
//! Only `pr_pid` and `pr_reg` are filled; the rest is zero, as QEMU's
//! `dump-guest-memory` leaves it.

/// Size of the x86-64 `struct elf_prstatus`, the `NT_PRSTATUS` descriptor.
pub const PRSTATUS_SIZE: usize = 336;
/// Offset of `pr_pid` in `struct elf_prstatus`.
pub const PR_PID_OFFSET: usize = 32;
/// Offset of `pr_reg` (the `user_regs_struct`) in `struct elf_prstatus`.
pub const PR_REG_OFFSET: usize = 112;
/// Number of registers in the x86-64 `user_regs_struct`.
pub const USER_REGS_COUNT: usize = 27;

/// One vCPU's general registers, in the order of the x86-64
/// `struct user_regs_struct` (`<sys/user.h>`), plus the `pr_pid` of its
/// note.
///
/// Segment registers hold selectors, widened to 64 bits; `fs_base` and
/// `gs_base` the bases. `orig_rax` is the system call number of a task
/// stopped in a system call; a vCPU has none, and `u64::MAX` (-1) says so,
/// as ptrace does outside a system call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[allow(missing_docs)] // The registers are named after themselves.
pub struct CpuRegisters {
    /// `pr_pid` of the note: the vCPU's index + 1, as QEMU's
    /// `dump-guest-memory` writes it. drgn finds CPU `n`'s registers in the
    /// note whose `pr_pid` is `n + 1` when the VMCOREINFO has no
    /// `CRASHTIME` line, that is for a dump taken by a hypervisor
    /// (libdrgn/stack_trace.c, `drgn_get_initial_registers_from_kernel_core_dump`).
    /// A kdump vmcore instead stores the PID of the running task.
    pub pid: u32,
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub orig_rax: u64,
    pub rip: u64,
    pub cs: u64,
    pub eflags: u64,
    pub rsp: u64,
    pub ss: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub ds: u64,
    pub es: u64,
    pub fs: u64,
    pub gs: u64,
}

impl CpuRegisters {
    /// The registers in `user_regs_struct` order.
    pub fn user_regs(&self) -> [u64; USER_REGS_COUNT] {
        [
            self.r15,
            self.r14,
            self.r13,
            self.r12,
            self.rbp,
            self.rbx,
            self.r11,
            self.r10,
            self.r9,
            self.r8,
            self.rax,
            self.rcx,
            self.rdx,
            self.rsi,
            self.rdi,
            self.orig_rax,
            self.rip,
            self.cs,
            self.eflags,
            self.rsp,
            self.ss,
            self.fs_base,
            self.gs_base,
            self.ds,
            self.es,
            self.fs,
            self.gs,
        ]
    }

    /// Registers from a `user_regs_struct`, in its order.
    pub fn from_user_regs(pid: u32, regs: [u64; USER_REGS_COUNT]) -> Self {
        let [r15, r14, r13, r12, rbp, rbx, r11, r10, r9, r8, rax, rcx, rdx, rsi, rdi, orig_rax, rip, cs, eflags, rsp, ss, fs_base, gs_base, ds, es, fs, gs] =
            regs;
        CpuRegisters {
            pid,
            r15,
            r14,
            r13,
            r12,
            rbp,
            rbx,
            r11,
            r10,
            r9,
            r8,
            rax,
            rcx,
            rdx,
            rsi,
            rdi,
            orig_rax,
            rip,
            cs,
            eflags,
            rsp,
            ss,
            fs_base,
            gs_base,
            ds,
            es,
            fs,
            gs,
        }
    }

    /// The `NT_PRSTATUS` descriptor: a little-endian x86-64
    /// `struct elf_prstatus`.
    pub fn to_prstatus(&self) -> [u8; PRSTATUS_SIZE] {
        let mut desc = [0u8; PRSTATUS_SIZE];
        desc[PR_PID_OFFSET..PR_PID_OFFSET + 4].copy_from_slice(&self.pid.to_le_bytes());
        for (i, value) in self.user_regs().iter().enumerate() {
            let at = PR_REG_OFFSET + 8 * i;
            desc[at..at + 8].copy_from_slice(&value.to_le_bytes());
        }
        desc
    }

    /// Reads the PID and registers back from an `NT_PRSTATUS` descriptor;
    /// `None` when it is too short to hold them.
    pub fn from_prstatus(desc: &[u8]) -> Option<Self> {
        let pid = u32::from_le_bytes(
            desc.get(PR_PID_OFFSET..PR_PID_OFFSET + 4)?
                .try_into()
                .ok()?,
        );
        let mut regs = [0u64; USER_REGS_COUNT];
        for (i, reg) in regs.iter_mut().enumerate() {
            let at = PR_REG_OFFSET + 8 * i;
            *reg = u64::from_le_bytes(desc.get(at..at + 8)?.try_into().ok()?);
        }
        Some(Self::from_user_regs(pid, regs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbered() -> CpuRegisters {
        let mut regs = [0u64; USER_REGS_COUNT];
        for (i, reg) in regs.iter_mut().enumerate() {
            *reg = 0x1111_0000_0000_0000 | i as u64;
        }
        CpuRegisters::from_user_regs(7, regs)
    }

    #[test]
    fn registers_sit_at_the_kernel_offsets() {
        let regs = numbered();
        let desc = regs.to_prstatus();
        let at = |offset: usize| u64::from_le_bytes(desc[offset..offset + 8].try_into().unwrap());
        // Offsets from `struct elf_prstatus` and `struct user_regs_struct`
        // (offsetof in C, checked against the kernel headers).
        assert_eq!(u32::from_le_bytes(desc[32..36].try_into().unwrap()), 7);
        assert_eq!(at(112), regs.r15);
        assert_eq!(at(112 + 4 * 8), regs.rbp);
        assert_eq!(at(112 + 10 * 8), regs.rax);
        assert_eq!(at(112 + 16 * 8), regs.rip);
        assert_eq!(at(112 + 17 * 8), regs.cs);
        assert_eq!(at(112 + 18 * 8), regs.eflags);
        assert_eq!(at(112 + 19 * 8), regs.rsp);
        assert_eq!(at(112 + 21 * 8), regs.fs_base);
        assert_eq!(at(112 + 22 * 8), regs.gs_base);
        assert_eq!(at(112 + 26 * 8), regs.gs);
        // pr_fpvalid and the padding after pr_reg stay zero.
        assert!(desc[328..].iter().all(|&b| b == 0));
        assert!(desc[..32].iter().all(|&b| b == 0));
    }

    #[test]
    fn prstatus_round_trips() {
        let regs = numbered();
        assert_eq!(CpuRegisters::from_prstatus(&regs.to_prstatus()), Some(regs));
        assert_eq!(
            CpuRegisters::from_prstatus(&regs.to_prstatus()[..300]),
            None
        );
        assert_eq!(CpuRegisters::from_prstatus(&[]), None);
    }
}
