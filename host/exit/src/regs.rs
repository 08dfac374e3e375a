//! Register names shared by actions, host imports and the vCPU access trait.

/// A register a policy can name (mirrors the WIT `reg` enum).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reg {
    Rax,
    Rbx,
    Rcx,
    Rdx,
    Rsi,
    Rdi,
    Rsp,
    Rbp,
    R8,
    R9,
    R10,
    R11,
    R12,
    R13,
    R14,
    R15,
    Rip,
    Rflags,
    Cr0,
    Cr2,
    Cr3,
    Cr4,
    Cr8,
    Efer,
}

impl Reg {
    /// True for registers that arrive with every exit (sync regs); the
    /// others cost an ioctl to read or write.
    pub fn is_general(self) -> bool {
        !matches!(
            self,
            Reg::Cr0 | Reg::Cr2 | Reg::Cr3 | Reg::Cr4 | Reg::Cr8 | Reg::Efer
        )
    }
}
