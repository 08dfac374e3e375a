//! Owned snapshots of VM exits, as the rest of the pipeline sees them.

use serde::Serialize;

/// Which way data moves, seen from the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// The guest reads (IN, MMIO load, RDMSR).
    Read,
    /// The guest writes (OUT, MMIO store, WRMSR).
    Write,
}

/// A port I/O access. `data` is the written value, 0 for reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct IoExit {
    pub port: u16,
    pub size: u8,
    pub direction: Direction,
    pub data: u32,
}

/// An access to guest-physical memory without RAM behind it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MmioExit {
    pub gpa: u64,
    pub size: u8,
    pub direction: Direction,
    pub data: u64,
}

/// Why an MSR access left the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MsrReason {
    /// A subscribed MSR, sent out by the MSR filter.
    Filtered,
    /// An MSR KVM does not know.
    Unknown,
    /// An MSR KVM knows, with a value it rejected.
    Invalid,
}

/// RDMSR or WRMSR. `value` is the written value, 0 for reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MsrExit {
    pub index: u32,
    pub direction: Direction,
    pub value: u64,
    pub reason: MsrReason,
}

/// How a guest touched a protected page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemAccess {
    Read,
    Write,
    Execute,
}

/// An access to a protected page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct MemViolation {
    pub gpa: u64,
    pub access: MemAccess,
    pub size: u8,
    pub data: u64,
}

/// What raised a debug exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DebugCause {
    HwBreakpoint,
    SwBreakpoint,
    SingleStep,
}

/// A debug exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DebugExit {
    pub cause: DebugCause,
    pub slot: Option<u8>,
    pub dr6: u64,
    pub dr7: u64,
}

/// Why the guest can no longer run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ShutdownReason {
    /// KVM_EXIT_SHUTDOWN: a triple fault.
    TripleFault,
    /// KVM_EXIT_INTERNAL_ERROR: KVM (here, its emulator) gave up.
    InternalError,
    /// KVM_EXIT_FAIL_ENTRY: the CPU refused the guest state.
    EntryFailure,
}

/// The kind-specific part of an exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum ExitKind {
    Io(IoExit),
    Mmio(MmioExit),
    Msr(MsrExit),
    MemViolation(MemViolation),
    Debug(DebugExit),
    Hlt,
    Shutdown { reason: ShutdownReason },
}

impl ExitKind {
    /// Short name used in logs and statistics.
    pub fn name(&self) -> &'static str {
        match self {
            ExitKind::Io(_) => "io",
            ExitKind::Mmio(_) => "mmio",
            ExitKind::Msr(_) => "msr",
            ExitKind::MemViolation(_) => "mem-violation",
            ExitKind::Debug(_) => "debug",
            ExitKind::Hlt => "hlt",
            ExitKind::Shutdown { .. } => "shutdown",
        }
    }

    /// Size in bytes of the read this exit owes the guest, if it owes one.
    pub fn read_size(&self) -> Option<u8> {
        match self {
            ExitKind::Io(io) if io.direction == Direction::Read => Some(io.size),
            ExitKind::Mmio(m) if m.direction == Direction::Read => Some(m.size),
            ExitKind::Msr(m) if m.direction == Direction::Read => Some(8),
            ExitKind::MemViolation(v) if v.access == MemAccess::Read => Some(v.size),
            _ => None,
        }
    }
}

/// One VM exit, owned, detached from `kvm_run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ExitEvent {
    /// Index of the vCPU that exited.
    pub vcpu: u32,
    /// Exits seen on this vCPU before this one.
    pub seq: u64,
    /// Guest instruction pointer at the exit.
    pub rip: u64,
    #[serde(flatten)]
    pub kind: ExitKind,
}

/// Mask with the low `size` bytes set (`size` in 1..=8).
pub fn size_mask(size: u8) -> u64 {
    match size {
        0 => 0,
        1..=7 => (1u64 << (u32::from(size) * 8)) - 1,
        _ => u64::MAX,
    }
}
