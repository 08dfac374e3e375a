//! The fuzz targets' bodies, one module each, and the pieces they share:
//! builders that turn fuzzer bytes into domain values (the domain types do
//! not implement `Arbitrary`), a fake vCPU, and small guest-memory helpers.
//!
//! Each module's `fuzz(data)` is one input. Two drivers call them: the
//! cargo-fuzz binaries in `fuzz/libfuzzer` (instrumented, long runs:
//! `make fuzz`), and this crate's `replay` test, which runs every committed
//! seed and a fixed number of mutations of them in the ordinary test build
//! (`make test`), so CI needs no instrumented build of wasmtime.
#![forbid(unsafe_code)]

pub mod classify_validate_apply;
pub mod config;
pub mod exit_snapshot;
pub mod kernel_profile;
pub mod loaders;
pub mod pagewalk;
pub mod wit_action_conversion;

/// One fuzz input in, a panic out if an invariant breaks.
pub type Target = fn(&[u8]);

/// Every target, by the name cargo-fuzz and `fuzz/corpus/NAME` use.
pub const TARGETS: [(&str, Target); 7] = [
    ("classify_validate_apply", classify_validate_apply::fuzz),
    ("config", config::fuzz),
    ("exit_snapshot", exit_snapshot::fuzz),
    ("kernel_profile", kernel_profile::fuzz),
    ("loaders", loaders::fuzz),
    ("pagewalk", pagewalk::fuzz),
    ("wit_action_conversion", wit_action_conversion::fuzz),
];

use std::ops::RangeInclusive;
use wasmvisor_exit::GuestRam;

use arbitrary::{Result, Unstructured};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use wasmvisor_exit::{
    Action, Capabilities, DebugCause, DebugExit, DebugState, Direction, EventSet, Exception,
    ExitEvent, ExitKind, GpaRange, HwBreakpoint, HwBreakpointKind, IoExit, MemAccess, MemViolation,
    MmioExit, MsrExit, MsrReason, ProtectRequest, Protection, Reg, ShutdownReason, StopRequest,
    Subscriptions,
};

/// Every register, in WIT order.
pub const REGS: [Reg; 24] = [
    Reg::Rax,
    Reg::Rbx,
    Reg::Rcx,
    Reg::Rdx,
    Reg::Rsi,
    Reg::Rdi,
    Reg::Rsp,
    Reg::Rbp,
    Reg::R8,
    Reg::R9,
    Reg::R10,
    Reg::R11,
    Reg::R12,
    Reg::R13,
    Reg::R14,
    Reg::R15,
    Reg::Rip,
    Reg::Rflags,
    Reg::Cr0,
    Reg::Cr2,
    Reg::Cr3,
    Reg::Cr4,
    Reg::Cr8,
    Reg::Efer,
];

/// A value from `interesting` most of the time, or any value: keeps the
/// fuzzer near the boundaries that matter (RAM edges, range ends).
pub fn pick_u64(u: &mut Unstructured, interesting: &[u64]) -> Result<u64> {
    if !interesting.is_empty() && u.ratio(3, 4)? {
        let base = *u.choose(interesting)?;
        let delta: i8 = u.arbitrary()?;
        Ok(base.wrapping_add_signed(i64::from(delta)))
    } else {
        u.arbitrary()
    }
}

/// An access size: usually one KVM produces, sometimes anything.
pub fn access_size(u: &mut Unstructured) -> Result<u8> {
    if u.ratio(7, 8)? {
        u.choose(&[1u8, 2, 4, 8]).copied()
    } else {
        u.arbitrary()
    }
}

pub fn direction(u: &mut Unstructured) -> Result<Direction> {
    Ok(if u.arbitrary()? {
        Direction::Read
    } else {
        Direction::Write
    })
}

/// Addresses near the guest RAM used by the targets and near MMIO holes.
pub const GPA_HINTS: &[u64] = &[
    0,
    0x1000,
    0x2000,
    0x3000,
    0x4000,
    0x5000,
    0xd000_0000,
    u64::MAX,
];

/// Any exit event, with addresses biased towards `gpa_hints`, ports and
/// MSRs towards `port_hints` and `msr_hints`.
pub fn exit_event(
    u: &mut Unstructured,
    gpa_hints: &[u64],
    port_hints: &[u64],
    msr_hints: &[u64],
) -> Result<ExitEvent> {
    let kind = match u.int_in_range(0..=6u8)? {
        0 => ExitKind::Io(IoExit {
            port: pick_u64(u, port_hints)? as u16,
            size: access_size(u)?,
            direction: direction(u)?,
            data: u.arbitrary()?,
        }),
        1 => ExitKind::Mmio(MmioExit {
            gpa: pick_u64(u, gpa_hints)?,
            size: access_size(u)?,
            direction: direction(u)?,
            data: u.arbitrary()?,
        }),
        2 => ExitKind::Msr(MsrExit {
            index: pick_u64(u, msr_hints)? as u32,
            direction: direction(u)?,
            value: u.arbitrary()?,
            reason: *u.choose(&[MsrReason::Filtered, MsrReason::Unknown, MsrReason::Invalid])?,
        }),
        3 => ExitKind::MemViolation(MemViolation {
            gpa: pick_u64(u, gpa_hints)?,
            access: *u.choose(&[MemAccess::Read, MemAccess::Write, MemAccess::Execute])?,
            size: access_size(u)?,
            data: u.arbitrary()?,
        }),
        4 => ExitKind::Debug(DebugExit {
            cause: *u.choose(&[
                DebugCause::HwBreakpoint,
                DebugCause::SwBreakpoint,
                DebugCause::SingleStep,
            ])?,
            slot: u.arbitrary()?,
            dr6: u.arbitrary()?,
            dr7: u.arbitrary()?,
        }),
        5 => ExitKind::Hlt,
        _ => ExitKind::Shutdown {
            reason: *u.choose(&[
                ShutdownReason::TripleFault,
                ShutdownReason::InternalError,
                ShutdownReason::EntryFailure,
            ])?,
        },
    };
    Ok(ExitEvent {
        vcpu: u.arbitrary()?,
        seq: u.arbitrary()?,
        rip: u.arbitrary()?,
        kind,
    })
}

pub fn gpa_range(u: &mut Unstructured, hints: &[u64]) -> Result<GpaRange> {
    Ok(GpaRange {
        base: pick_u64(u, hints)?,
        len: pick_u64(u, &[0, 1, 2, 4, 8, 0x1000, 0x10000, u64::MAX])?,
    })
}

pub fn capabilities(u: &mut Unstructured) -> Result<Capabilities> {
    Ok(Capabilities {
        set_registers: u.arbitrary()?,
        write_memory: u.arbitrary()?,
        protect_memory: u.arbitrary()?,
        debug: u.arbitrary()?,
        stop_vm: u.arbitrary()?,
    })
}

pub fn protection(u: &mut Unstructured) -> Result<Protection> {
    u.choose(&[
        Protection::WriteProtect,
        Protection::NoAccess,
        Protection::NoExecute,
    ])
    .copied()
}

/// An exception vector and error code, usually a valid pair.
pub fn exception(u: &mut Unstructured) -> Result<Exception> {
    let vector: u8 = if u.ratio(3, 4)? {
        u.int_in_range(0..=31)?
    } else {
        u.arbitrary()?
    };
    Ok(Exception {
        vector,
        error_code: u.arbitrary()?,
    })
}

/// Any action. `write-phys` data is short and random, or long and filled
/// with one byte (to reach the size limit cheaply).
pub fn action(u: &mut Unstructured, gpa_hints: &[u64]) -> Result<Action> {
    Ok(match u.int_in_range(0..=13u8)? {
        0 => Action::Resume,
        1 => Action::CompleteRead(pick_u64(
            u,
            &[0, 0xff, 0x100, 0xffff, 0x1_0000, 0xffff_ffff, 0x1_0000_0000],
        )?),
        2 => Action::Inject(exception(u)?),
        3 => Action::SetReg {
            reg: *u.choose(&REGS)?,
            value: u.arbitrary()?,
        },
        4 => {
            let gpa = pick_u64(u, gpa_hints)?;
            let data = if u.ratio(7, 8)? {
                let len = u.int_in_range(0..=64usize)?;
                u.bytes(len)?.to_vec()
            } else {
                let len = u.int_in_range(0..=0x11000usize)?;
                vec![u.arbitrary::<u8>()?; len]
            };
            Action::WritePhys { gpa, data }
        }
        5 => Action::Allow,
        6 => Action::Deny,
        7 => Action::UnprotectRetry,
        8 => Action::Protect(ProtectRequest {
            range: gpa_range(u, gpa_hints)?,
            mode: protection(u)?,
        }),
        9 => Action::Unprotect(gpa_range(u, gpa_hints)?),
        10 => Action::Step,
        11 => Action::RemoveBreakpoint,
        12 => Action::Pause,
        _ => Action::Stop(StopRequest {
            clean: u.arbitrary()?,
            reason: u.arbitrary()?,
        }),
    })
}

/// Up to `max` items from `f`.
pub fn list<T>(
    u: &mut Unstructured,
    max: usize,
    mut f: impl FnMut(&mut Unstructured) -> Result<T>,
) -> Result<Vec<T>> {
    let n = u.int_in_range(0..=max)?;
    (0..n).map(|_| f(u)).collect()
}

/// An inclusive range from `hints`; inverted ranges happen too.
pub fn inclusive<T: TryFrom<u64> + Copy>(
    u: &mut Unstructured,
    hints: &[u64],
    max: u64,
) -> Result<RangeInclusive<T>> {
    let first = pick_u64(u, hints)? % (max.wrapping_add(1).max(1));
    let last = if u.ratio(7, 8)? {
        first.saturating_add(u.int_in_range(0..=0x40u64)?).min(max)
    } else {
        pick_u64(u, hints)? % (max.wrapping_add(1).max(1))
    };
    let cv = |v: u64| T::try_from(v).map_err(|_| arbitrary::Error::IncorrectFormat);
    Ok(cv(first)?..=cv(last)?)
}

/// A policy's subscriptions (small lists, so that building routes stays
/// cheap), with ports, MMIO and MSRs biased towards the hints.
pub fn subscriptions(
    u: &mut Unstructured,
    gpa_hints: &[u64],
    port_hints: &[u64],
    msr_hints: &[u64],
) -> Result<Subscriptions> {
    Ok(Subscriptions {
        ports: list(u, 3, |u| {
            inclusive::<u16>(u, port_hints, u64::from(u16::MAX))
        })?,
        mmio: list(u, 3, |u| gpa_range(u, gpa_hints))?,
        msrs: list(u, 3, |u| {
            inclusive::<u32>(u, msr_hints, u64::from(u32::MAX))
        })?,
        cpuid: list(u, 2, |u| u.arbitrary())?,
        events: EventSet {
            hlt: u.arbitrary()?,
            shutdown: u.arbitrary()?,
            debug: u.arbitrary()?,
            mem_violation: u.arbitrary()?,
        },
        protect: if u.ratio(1, 8)? {
            list(u, 2, |u| {
                Ok(ProtectRequest {
                    range: gpa_range(u, gpa_hints)?,
                    mode: protection(u)?,
                })
            })?
        } else {
            Vec::new()
        },
        capabilities: capabilities(u)?,
        // Routing ignores declared constants; `constant_answer` has its
        // own unit tests in host/exit.
        constants: Vec::new(),
    })
}

/// The vCPU that apply and the default handler act on: the shared fake,
/// which records what they do to it (registers, injected exceptions,
/// MSRs, segments, debug state, `set_reg` calls).
pub use wasmvisor_exit::testing::FakeVcpu;

/// A debug state with arbitrary breakpoints and step flags.
pub fn debug_state(u: &mut Unstructured) -> Result<DebugState> {
    let mut hw = [None; 4];
    for slot in &mut hw {
        if u.arbitrary()? {
            *slot = Some(HwBreakpoint {
                kind: *u.choose(&[
                    HwBreakpointKind::Execute,
                    HwBreakpointKind::Write,
                    HwBreakpointKind::ReadWrite,
                ])?,
                gva: u.arbitrary()?,
                len: *u.choose(&[1u8, 2, 4, 8])?,
            });
        }
    }
    Ok(DebugState {
        hw,
        step_always: u.arbitrary()?,
        step_once: u.arbitrary()?,
        ..DebugState::default()
    })
}

/// Fills every RAM region with a pattern that depends on the address, so
/// that any write (even of zeros) shows up in [`snapshot`].
pub fn fill(mem: &GuestRam, seed: u8) {
    for region in mem.iter() {
        let base = region.start_addr().0;
        let bytes: Vec<u8> = (0..region.len())
            .map(|i| ((base + i) as u8 ^ 0xa5).wrapping_add(seed) | 1)
            .collect();
        mem.write_slice(&bytes, region.start_addr())
            .expect("region is RAM");
    }
}

/// Every RAM byte, region by region, with each region's base address.
pub fn snapshot(mem: &GuestRam) -> Vec<(u64, Vec<u8>)> {
    mem.iter()
        .map(|region| {
            let mut buf = vec![0u8; region.len() as usize];
            mem.read_slice(&mut buf, region.start_addr())
                .expect("region is RAM");
            (region.start_addr().0, buf)
        })
        .collect()
}

/// Writes `data` at `gpa` into a snapshot; false if any byte misses RAM.
pub fn write_snapshot(snap: &mut [(u64, Vec<u8>)], gpa: u64, data: &[u8]) -> bool {
    for (i, b) in data.iter().enumerate() {
        let Some(addr) = gpa.checked_add(i as u64) else {
            return false;
        };
        let Some((base, bytes)) = snap
            .iter_mut()
            .find(|(base, bytes)| addr >= *base && addr - *base < bytes.len() as u64)
        else {
            return false;
        };
        bytes[(addr - *base) as usize] = *b;
    }
    true
}

/// Guest RAM with `ranges`, for targets that keep one for the whole run.
pub fn ram(ranges: &[(u64, usize)]) -> GuestRam {
    let ranges: Vec<(GuestAddress, usize)> =
        ranges.iter().map(|&(a, l)| (GuestAddress(a), l)).collect();
    GuestRam::from_ranges(&ranges).expect("valid RAM layout")
}
