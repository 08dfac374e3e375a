//! Short ways to build the exits a test delivers with
//! [`Harness::exit`](super::Harness::exit).

use crate::{
    DebugCause, DebugExit, Direction, ExitKind, IoExit, MemAccess, MemViolation, MmioExit, MsrExit,
    MsrReason, ShutdownReason,
};

/// DR6.BS: the single-step status bit.
const DR6_BS: u64 = 1 << 14;

/// IN of `size` bytes from `port`.
pub fn io_read(port: u16, size: u8) -> ExitKind {
    ExitKind::Io(IoExit {
        port,
        size,
        direction: Direction::Read,
        data: 0,
    })
}

/// OUT of `data` (`size` bytes) to `port`.
pub fn io_write(port: u16, size: u8, data: u32) -> ExitKind {
    ExitKind::Io(IoExit {
        port,
        size,
        direction: Direction::Write,
        data,
    })
}

/// An MMIO read of `size` bytes at `gpa`.
pub fn mmio_read(gpa: u64, size: u8) -> ExitKind {
    ExitKind::Mmio(MmioExit {
        gpa,
        size,
        direction: Direction::Read,
        data: 0,
    })
}

/// An MMIO write of `data` (`size` bytes) at `gpa`.
pub fn mmio_write(gpa: u64, size: u8, data: u64) -> ExitKind {
    ExitKind::Mmio(MmioExit {
        gpa,
        size,
        direction: Direction::Write,
        data,
    })
}

/// RDMSR of a subscribed MSR.
pub fn rdmsr(index: u32) -> ExitKind {
    ExitKind::Msr(MsrExit {
        index,
        direction: Direction::Read,
        value: 0,
        reason: MsrReason::Filtered,
    })
}

/// WRMSR of `value` to a subscribed MSR.
pub fn wrmsr(index: u32, value: u64) -> ExitKind {
    ExitKind::Msr(MsrExit {
        index,
        direction: Direction::Write,
        value,
        reason: MsrReason::Filtered,
    })
}

/// A read of `size` bytes from a protected page.
pub fn mem_read(gpa: u64, size: u8) -> ExitKind {
    ExitKind::MemViolation(MemViolation {
        gpa,
        access: MemAccess::Read,
        size,
        data: 0,
    })
}

/// A write of `data` (`size` bytes) to a protected page.
pub fn mem_write(gpa: u64, size: u8, data: u64) -> ExitKind {
    ExitKind::MemViolation(MemViolation {
        gpa,
        access: MemAccess::Write,
        size,
        data,
    })
}

/// The hardware breakpoint in `slot` (DR0-3) fired.
pub fn hw_breakpoint(slot: u8) -> ExitKind {
    ExitKind::Debug(DebugExit {
        cause: DebugCause::HwBreakpoint,
        slot: Some(slot),
        dr6: 1 << (slot & 3),
        dr7: 0,
    })
}

/// One instruction was single-stepped.
pub fn single_step() -> ExitKind {
    ExitKind::Debug(DebugExit {
        cause: DebugCause::SingleStep,
        slot: None,
        dr6: DR6_BS,
        dr7: 0,
    })
}

/// The vCPU executed HLT.
pub fn hlt() -> ExitKind {
    ExitKind::Hlt
}

/// The guest can no longer run.
pub fn shutdown(reason: ShutdownReason) -> ExitKind {
    ExitKind::Shutdown(reason)
}
