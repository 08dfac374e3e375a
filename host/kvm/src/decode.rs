//! Pure decoders for the `kvm_run` fields an exit snapshot reads.
//!
//! Split out of `vcpu.rs` so that they can be tested and fuzzed without
//! `/dev/kvm`: each takes plain values copied out of `kvm_run` (or out of
//! kvm-ioctls' `VcpuExit`) and returns the domain view of them.

use kvm_ioctls::MsrExitReason;
use wasmvisor_exit::{DebugCause, DebugExit, MsrReason};

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
}
