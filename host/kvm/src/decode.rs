//! Pure decoders for the `kvm_run` fields an exit snapshot reads.
//!
//! Split out of `vcpu.rs` so that they can be tested and fuzzed without
//! `/dev/kvm`: each takes plain values copied out of `kvm_run` (or out of
//! kvm-ioctls' `VcpuExit`) and returns the domain view of them.

use kvm_ioctls::{MsrExitReason, VcpuExit};
use wasmvisor_exit::{DebugCause, DebugExit, Direction, MsrReason, ShutdownReason};

/// Why an MSR access left the kernel. A filtered MSR wins over the other
/// reasons when KVM reports several.
pub fn msr_reason(r: MsrExitReason) -> MsrReason {
    if r.contains(MsrExitReason::Filter) {
        MsrReason::Filtered
    } else if r.contains(MsrExitReason::Unknown) {
        MsrReason::Unknown
    } else {
        MsrReason::Invalid
    }
}

/// A `KVM_EXIT_DEBUG` exit: `#BP` (vector 3) is a software breakpoint;
/// otherwise the lowest DR6 B0–B3 bit names the hardware breakpoint slot
/// that fired, and with none set it is a single step.
pub fn debug_exit(exception: u32, dr6: u64, dr7: u64) -> DebugExit {
    let slot = (0..4u8).find(|i| dr6 & (1 << i) != 0);
    let cause = match (exception, slot) {
        (3, _) => DebugCause::SwBreakpoint,
        (_, Some(_)) => DebugCause::HwBreakpoint,
        _ => DebugCause::SingleStep,
    };
    DebugExit {
        cause,
        slot,
        dr6,
        dr7,
    }
}

/// The bytes of an MMIO write as `(size, little-endian value)`; at most
/// the first 8 bytes are kept.
pub fn mmio_write(data: &[u8]) -> (u8, u64) {
    let mut buf = [0u8; 8];
    let n = data.len().min(8);
    buf[..n].copy_from_slice(&data[..n]);
    (n as u8, u64::from_le_bytes(buf))
}

/// A readable detail for `KVM_EXIT_INTERNAL_ERROR` from
/// `kvm_run.internal`: its `suberror`, `ndata` and `data` words. For an
/// emulation failure it carries the instruction bytes when the emulator
/// reported them.
pub fn internal_error_detail(suberror: u32, ndata: u32, data: &[u64]) -> String {
    let ndata = (ndata as usize).min(data.len());
    let bytes: Vec<u8> = data[..ndata].iter().flat_map(|w| w.to_le_bytes()).collect();
    match suberror {
        // KVM_INTERNAL_ERROR_EMULATION: data = flags, then insn size
        // and up to 15 instruction bytes when flag bit 0 is set.
        1 => {
            let flags = data.first().copied().unwrap_or(0);
            if flags & 1 != 0 && bytes.len() > 9 {
                let len = usize::from(bytes[8]).min(15).min(bytes.len() - 9);
                let insn: Vec<String> = bytes[9..9 + len]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                format!(
                    "the instruction emulator failed; instruction bytes: {}",
                    insn.join(" ")
                )
            } else {
                "the instruction emulator failed".to_string()
            }
        }
        2 => "simultaneous exceptions (double fault during delivery)".to_string(),
        3 => "exception during event delivery".to_string(),
        n => format!("suberror {n}"),
    }
}

/// An exit copied out of `VcpuExit<'_>` so the borrow on the fd ends.
pub(crate) enum RawExit {
    Io(u16, Direction),
    Mmio {
        gpa: u64,
        len: u8,
        write: bool,
        data: u64,
    },
    Msr {
        index: u32,
        direction: Direction,
        value: u64,
        reason: MsrReason,
    },
    Debug(DebugExit),
    Hlt,
    Interrupted,
    Fatal(ShutdownReason, String),
}

impl From<VcpuExit<'_>> for RawExit {
    fn from(exit: VcpuExit<'_>) -> Self {
        match exit {
            VcpuExit::IoIn(port, _) => RawExit::Io(port, Direction::Read),
            VcpuExit::IoOut(port, _) => RawExit::Io(port, Direction::Write),
            VcpuExit::MmioRead(gpa, data) => RawExit::Mmio {
                gpa,
                len: data.len() as u8,
                write: false,
                data: 0,
            },
            VcpuExit::MmioWrite(gpa, data) => {
                let (len, data) = mmio_write(data);
                RawExit::Mmio {
                    gpa,
                    len,
                    write: true,
                    data,
                }
            }
            VcpuExit::X86Rdmsr(m) => RawExit::Msr {
                index: m.index,
                direction: Direction::Read,
                value: 0,
                reason: msr_reason(m.reason),
            },
            VcpuExit::X86Wrmsr(m) => RawExit::Msr {
                index: m.index,
                direction: Direction::Write,
                value: m.data,
                reason: msr_reason(m.reason),
            },
            VcpuExit::Debug(d) => RawExit::Debug(debug_exit(d.exception, d.dr6, d.dr7)),
            VcpuExit::Hlt => RawExit::Hlt,
            VcpuExit::Intr | VcpuExit::IrqWindowOpen => RawExit::Interrupted,
            VcpuExit::Shutdown => RawExit::Fatal(ShutdownReason::TripleFault, String::new()),
            VcpuExit::FailEntry(reason, cpu) => RawExit::Fatal(
                ShutdownReason::EntryFailure,
                format!("hardware entry failure reason {reason:#x} on host cpu {cpu}"),
            ),
            VcpuExit::InternalError => RawExit::Fatal(ShutdownReason::InternalError, String::new()),
            VcpuExit::MemoryFault { gpa, size, .. } => RawExit::Fatal(
                ShutdownReason::InternalError,
                format!("memory fault at gpa {gpa:#x} size {size:#x}"),
            ),
            other => RawExit::Fatal(
                ShutdownReason::InternalError,
                format!("unexpected exit {}", exit_name(&other)),
            ),
        }
    }
}

fn exit_name(exit: &VcpuExit<'_>) -> String {
    let dbg = format!("{exit:?}");
    dbg.split(['(', ' ', '{']).next().unwrap_or("?").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emulation_failure_lists_instruction_bytes() {
        let mut data = [0u64; 16];
        data[0] = 1;
        // insn_size 3, then 0f 0b 90.
        data[1] = u64::from_le_bytes([3, 0x0f, 0x0b, 0x90, 0, 0, 0, 0]);
        assert_eq!(
            internal_error_detail(1, 4, &data),
            "the instruction emulator failed; instruction bytes: 0f 0b 90"
        );
        assert_eq!(
            internal_error_detail(1, 1, &data),
            "the instruction emulator failed"
        );
        assert_eq!(internal_error_detail(7, 0, &[]), "suberror 7");
    }

    #[test]
    fn debug_causes() {
        assert_eq!(debug_exit(3, 1, 0).cause, DebugCause::SwBreakpoint);
        let hw = debug_exit(1, 0b0100, 0x400);
        assert_eq!((hw.cause, hw.slot), (DebugCause::HwBreakpoint, Some(2)));
        assert_eq!(debug_exit(1, 0x4000, 0).cause, DebugCause::SingleStep);
    }

    #[test]
    fn mmio_write_keeps_eight_bytes() {
        assert_eq!(mmio_write(&[0x78, 0x56, 0x34, 0x12]), (4, 0x1234_5678));
        assert_eq!(mmio_write(&[0xff; 12]), (8, u64::MAX));
        assert_eq!(mmio_write(&[]), (0, 0));
    }

    #[test]
    fn filter_wins() {
        let both = MsrExitReason::Filter | MsrExitReason::Unknown;
        assert_eq!(msr_reason(both), MsrReason::Filtered);
        assert_eq!(msr_reason(MsrExitReason::Unknown), MsrReason::Unknown);
        assert_eq!(msr_reason(MsrExitReason::empty()), MsrReason::Invalid);
    }

    #[test]
    fn raw_exits_from_vcpu_exits() {
        let mut io = [0u8; 1];
        assert!(matches!(
            RawExit::from(VcpuExit::IoOut(0x3f8, &io)),
            RawExit::Io(0x3f8, Direction::Write)
        ));
        assert!(matches!(
            RawExit::from(VcpuExit::IoIn(0x60, &mut io)),
            RawExit::Io(0x60, Direction::Read)
        ));
        let mut buf = [0u8; 4];
        assert!(matches!(
            RawExit::from(VcpuExit::MmioRead(0xfee0_0000, &mut buf)),
            RawExit::Mmio {
                gpa: 0xfee0_0000,
                len: 4,
                write: false,
                data: 0
            }
        ));
        assert!(matches!(
            RawExit::from(VcpuExit::MmioWrite(0x1000, &[0x34, 0x12])),
            RawExit::Mmio {
                gpa: 0x1000,
                len: 2,
                write: true,
                data: 0x1234
            }
        ));
        let (mut error, mut data) = (0u8, 0u64);
        let rd = VcpuExit::X86Rdmsr(kvm_ioctls::ReadMsrExit {
            error: &mut error,
            reason: MsrExitReason::Filter,
            index: 0x10,
            data: &mut data,
        });
        assert!(matches!(
            RawExit::from(rd),
            RawExit::Msr {
                index: 0x10,
                direction: Direction::Read,
                value: 0,
                reason: MsrReason::Filtered
            }
        ));
        let wr = VcpuExit::X86Wrmsr(kvm_ioctls::WriteMsrExit {
            error: &mut error,
            reason: MsrExitReason::Unknown,
            index: 0x11,
            data: 7,
        });
        assert!(matches!(
            RawExit::from(wr),
            RawExit::Msr {
                index: 0x11,
                direction: Direction::Write,
                value: 7,
                reason: MsrReason::Unknown
            }
        ));
        let dbg = kvm_bindings::kvm_debug_exit_arch {
            exception: 3,
            dr6: 0,
            dr7: 0,
            ..Default::default()
        };
        match RawExit::from(VcpuExit::Debug(dbg)) {
            RawExit::Debug(d) => assert_eq!(d.cause, DebugCause::SwBreakpoint),
            _ => panic!("not a debug exit"),
        }
        assert!(matches!(RawExit::from(VcpuExit::Hlt), RawExit::Hlt));
        assert!(matches!(
            RawExit::from(VcpuExit::IrqWindowOpen),
            RawExit::Interrupted
        ));
        assert!(matches!(
            RawExit::from(VcpuExit::Shutdown),
            RawExit::Fatal(ShutdownReason::TripleFault, ref s) if s.is_empty()
        ));
        match RawExit::from(VcpuExit::FailEntry(0x21, 5)) {
            RawExit::Fatal(ShutdownReason::EntryFailure, s) => {
                assert_eq!(s, "hardware entry failure reason 0x21 on host cpu 5")
            }
            _ => panic!("not an entry failure"),
        }
        match RawExit::from(VcpuExit::SystemEvent(1, &[])) {
            RawExit::Fatal(ShutdownReason::InternalError, s) => {
                assert_eq!(s, "unexpected exit SystemEvent")
            }
            _ => panic!("not an internal error"),
        }
    }
}
