//! The pure half of the KVM exit snapshot (`wasmvisor_kvm::decode`):
//! decoding `kvm_run.internal` for internal errors, the debug-exit cause,
//! MMIO write data and the MSR exit reason, from arbitrary `kvm_run`
//! contents. The decoded event then goes through the default handler and
//! the JSON event encoding, as `Vcpu::run` hands it on.
//!
//! Invariants: nothing panics; the internal-error detail is one printable
//! ASCII line listing at most 15 instruction bytes; a debug slot is the
//! lowest DR6 B0-B3 bit; MMIO data keeps the first 8 bytes, little-endian;
//! a filtered MSR is reported as filtered whatever else KVM says.

use std::sync::{Mutex, OnceLock};
use wasmvisor_exit::GuestRam;

use arbitrary::{Result, Unstructured};
use kvm_ioctls::MsrExitReason;
use wasmvisor_exit::{
    default_actions, Completion, DebugCause, Direction, ExitEvent, ExitKind, GuestEnv, MmioExit,
    MsrExit, MsrReason, ProtectionMap,
};
use wasmvisor_kvm::decode;

fn mem() -> &'static GuestRam {
    static MEM: OnceLock<GuestRam> = OnceLock::new();
    MEM.get_or_init(|| crate::ram(&[(0, 0x1000)]))
}

fn run(u: &mut Unstructured) -> Result<()> {
    // kvm_run.internal: suberror, ndata, data[16].
    let suberror: u32 = if u.arbitrary()? {
        u.int_in_range(0..=4)?
    } else {
        u.arbitrary()?
    };
    let ndata: u32 = if u.arbitrary()? {
        u.int_in_range(0..=17)?
    } else {
        u.arbitrary()?
    };
    let data: [u64; 16] = u.arbitrary()?;
    let detail = decode::internal_error_detail(suberror, ndata, &data);
    assert!(!detail.is_empty());
    assert!(
        detail.bytes().all(|b| b.is_ascii_graphic() || b == b' '),
        "{detail:?}"
    );
    if let Some((_, hex)) = detail.split_once("instruction bytes: ") {
        assert_eq!(suberror, 1);
        let n = hex.split(' ').filter(|s| !s.is_empty()).count();
        assert!(n <= 15, "{detail}");
        let avail = (ndata as usize).min(16) * 8;
        assert!(n <= avail.saturating_sub(9));
    }

    // KVM_EXIT_DEBUG.
    let (exception, dr6, dr7): (u32, u64, u64) = (
        if u.arbitrary()? {
            u.int_in_range(0..=3)?
        } else {
            u.arbitrary()?
        },
        u.arbitrary()?,
        u.arbitrary()?,
    );
    let d = decode::debug_exit(exception, dr6, dr7);
    assert_eq!((d.dr6, d.dr7), (dr6, dr7));
    let low = dr6 & 0xf;
    assert_eq!(d.slot, (low != 0).then(|| low.trailing_zeros() as u8));
    match d.cause {
        DebugCause::SwBreakpoint => assert_eq!(exception, 3),
        DebugCause::HwBreakpoint => assert!(exception != 3 && d.slot.is_some()),
        DebugCause::SingleStep => assert!(exception != 3 && d.slot.is_none()),
    }

    // KVM_EXIT_MMIO write data (kvm-ioctls hands up to 8 bytes; be wider).
    let len = u.int_in_range(0..=12usize)?;
    let bytes = u.bytes(len)?;
    let (size, value) = decode::mmio_write(bytes);
    assert_eq!(usize::from(size), len.min(8));
    assert_eq!(
        &value.to_le_bytes()[..usize::from(size)],
        &bytes[..usize::from(size)]
    );
    if size < 8 {
        assert_eq!(value >> (u32::from(size) * 8), 0);
    }

    // KVM_EXIT_X86_RDMSR/WRMSR reason (kvm-ioctls truncates unknown bits).
    let bits: u32 = u.arbitrary()?;
    let reason = MsrExitReason::from_bits_truncate(bits);
    let r = decode::msr_reason(reason);
    if reason.contains(MsrExitReason::Filter) {
        assert_eq!(r, MsrReason::Filtered);
    } else if reason.contains(MsrExitReason::Unknown) {
        assert_eq!(r, MsrReason::Unknown);
    } else {
        assert_eq!(r, MsrReason::Invalid);
    }

    // Hand the decoded exits on as Vcpu::run does.
    let protector = Mutex::new(ProtectionMap::new(0x1000));
    let gpa: u64 = u.arbitrary()?;
    let kinds = [
        ExitKind::Debug(d),
        ExitKind::Mmio(MmioExit {
            gpa,
            size,
            direction: Direction::Write,
            data: value,
        }),
        ExitKind::Msr(MsrExit {
            index: u.arbitrary()?,
            direction: if u.arbitrary()? {
                Direction::Read
            } else {
                Direction::Write
            },
            value: u.arbitrary()?,
            reason: r,
        }),
    ];
    for kind in kinds {
        let event = ExitEvent {
            vcpu: u.arbitrary()?,
            seq: u.arbitrary()?,
            rip: u.arbitrary()?,
            kind,
        };
        let json = serde_json::to_string(&event).expect("exit events serialize");
        assert!(json.contains(kind.name()));
        let mut vcpu = crate::FakeVcpu::default();
        let mut completion = Completion::default();
        let env = GuestEnv {
            mem: mem(),
            protector: &protector,
        };
        default_actions(&event, &mut vcpu, &env, &mut completion).expect("fake vCPU never fails");
        if let ExitKind::Msr(m) = kind {
            if m.reason != MsrReason::Filtered {
                assert!(completion.msr_fault);
            }
        }
    }
    Ok(())
}

/// One fuzz input: never panics unless an invariant above is broken.
pub fn fuzz(data: &[u8]) {
    let _ = run(&mut Unstructured::new(data));
}
