//! The conversions between the WIT-generated types and the domain types
//! (`host/policy/src/convert.rs`), on arbitrary WIT values: verdicts and
//! actions, subscriptions, policy info, CPUID leaves, and exit events in
//! the other direction.
//!
//! Invariants: nothing panics; every field arrives unchanged in the right
//! place (checked against an independent mapping written here); every
//! converted range is well-formed or `Subscriptions::unsupported` reports
//! it; subscriptions that `unsupported` accepts build routes.

use crate as f;
use arbitrary::{Result, Unstructured};
use wasmvisor_exit as exit;
use wasmvisor_policy::fuzzing::{self as conv, wit};
use wasmvisor_policy::{CpuidLeaf, Verdict};

const WIT_REGS: [wit::Reg; 24] = [
    wit::Reg::Rax,
    wit::Reg::Rbx,
    wit::Reg::Rcx,
    wit::Reg::Rdx,
    wit::Reg::Rsi,
    wit::Reg::Rdi,
    wit::Reg::Rsp,
    wit::Reg::Rbp,
    wit::Reg::R8,
    wit::Reg::R9,
    wit::Reg::R10,
    wit::Reg::R11,
    wit::Reg::R12,
    wit::Reg::R13,
    wit::Reg::R14,
    wit::Reg::R15,
    wit::Reg::Rip,
    wit::Reg::Rflags,
    wit::Reg::Cr0,
    wit::Reg::Cr2,
    wit::Reg::Cr3,
    wit::Reg::Cr4,
    wit::Reg::Cr8,
    wit::Reg::Efer,
];

const GPAS: &[u64] = &[0, 0x1000, 0xd000_0000, 0xffff_f000, u64::MAX];
const LENS: &[u64] = &[0, 1, 0x1000, u64::MAX];

fn wit_range(u: &mut Unstructured) -> Result<wit::GpaRange> {
    Ok(wit::GpaRange {
        base: f::pick_u64(u, GPAS)?,
        len: f::pick_u64(u, LENS)?,
    })
}

fn wit_protection(u: &mut Unstructured) -> Result<wit::Protection> {
    Ok(match u.int_in_range(0..=2u8)? {
        0 => wit::Protection::WriteProtect,
        1 => wit::Protection::NoAccess,
        _ => wit::Protection::NoExecute,
    })
}

fn wit_action(u: &mut Unstructured) -> Result<wit::Action> {
    Ok(match u.int_in_range(0..=13u8)? {
        0 => wit::Action::Resume,
        1 => wit::Action::CompleteRead(u.arbitrary()?),
        2 => wit::Action::Inject(wit::Exception {
            vector: u.arbitrary()?,
            error_code: u.arbitrary()?,
        }),
        3 => wit::Action::SetReg(wit::RegWrite {
            reg: *u.choose(&WIT_REGS)?,
            value: u.arbitrary()?,
        }),
        4 => wit::Action::WritePhys(wit::PhysWrite {
            gpa: u.arbitrary()?,
            data: u.arbitrary()?,
        }),
        5 => wit::Action::Allow,
        6 => wit::Action::Deny,
        7 => wit::Action::UnprotectRetry,
        8 => wit::Action::Protect(wit::ProtectRequest {
            range: wit_range(u)?,
            mode: wit_protection(u)?,
        }),
        9 => wit::Action::Unprotect(wit_range(u)?),
        10 => wit::Action::Step,
        11 => wit::Action::RemoveBreakpoint,
        12 => wit::Action::Pause,
        _ => wit::Action::Stop(wit::StopRequest {
            clean: u.arbitrary()?,
            reason: u.arbitrary()?,
        }),
    })
}

fn event_set(u: &mut Unstructured) -> Result<wit::EventSet> {
    let bits: u8 = u.arbitrary()?;
    let mut s = wit::EventSet::empty();
    for (i, flag) in [
        wit::EventSet::HLT,
        wit::EventSet::SHUTDOWN,
        wit::EventSet::DEBUG,
        wit::EventSet::MEM_VIOLATION,
    ]
    .into_iter()
    .enumerate()
    {
        if bits & (1 << i) != 0 {
            s |= flag;
        }
    }
    Ok(s)
}

fn capabilities(u: &mut Unstructured) -> Result<wit::Capabilities> {
    let bits: u8 = u.arbitrary()?;
    let mut s = wit::Capabilities::empty();
    for (i, flag) in [
        wit::Capabilities::SET_REGISTERS,
        wit::Capabilities::WRITE_MEMORY,
        wit::Capabilities::PROTECT_MEMORY,
        wit::Capabilities::DEBUG,
        wit::Capabilities::STOP_VM,
    ]
    .into_iter()
    .enumerate()
    {
        if bits & (1 << i) != 0 {
            s |= flag;
        }
    }
    Ok(s)
}

fn wit_subscriptions(u: &mut Unstructured) -> Result<wit::Subscriptions> {
    Ok(wit::Subscriptions {
        ports: f::list(u, 4, |u| {
            Ok(wit::PortRange {
                first: u.arbitrary()?,
                last: u.arbitrary()?,
            })
        })?,
        mmio: f::list(u, 4, wit_range)?,
        msrs: f::list(u, 4, |u| {
            let first = f::pick_u64(u, &[0, 0x174, 0xc000_0080, 0xffff_ffff])? as u32;
            let last = if u.arbitrary()? {
                first.saturating_add(u.int_in_range(0..=0x4000)?)
            } else {
                u.arbitrary()?
            };
            Ok(wit::MsrRange { first, last })
        })?,
        cpuid: f::list(u, 4, |u| u.arbitrary())?,
        events: event_set(u)?,
        protect: f::list(u, 2, |u| {
            Ok(wit::ProtectRequest {
                range: wit_range(u)?,
                mode: wit_protection(u)?,
            })
        })?,
        capabilities: capabilities(u)?,
    })
}

/// A case's name from its `Debug` text, without any `Type::` prefix.
fn case(dbg: String) -> String {
    let last = dbg.rsplit("::").next().unwrap_or_default();
    last.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// True if two enums name the same case.
fn same_case(a: impl std::fmt::Debug, b: impl std::fmt::Debug) -> bool {
    case(format!("{a:?}")) == case(format!("{b:?}"))
}

/// The domain register a WIT register must become, by name.
fn same_reg(w: wit::Reg, d: exit::Reg) -> bool {
    same_case(w, d)
}

fn same_range(w: &wit::GpaRange, d: &exit::GpaRange) -> bool {
    (w.base, w.len) == (d.base, d.len)
}

fn same_protection(w: wit::Protection, d: exit::Protection) -> bool {
    matches!(
        (w, d),
        (
            wit::Protection::WriteProtect,
            exit::Protection::WriteProtect
        ) | (wit::Protection::NoAccess, exit::Protection::NoAccess)
            | (wit::Protection::NoExecute, exit::Protection::NoExecute)
    )
}

/// True if `d` is what `w` must convert to.
fn same_action(w: &wit::Action, d: &exit::Action) -> bool {
    use exit::Action as D;
    use wit::Action as W;
    match (w, d) {
        (W::Resume, D::Resume)
        | (W::Allow, D::Allow)
        | (W::Deny, D::Deny)
        | (W::UnprotectRetry, D::UnprotectRetry)
        | (W::Step, D::Step)
        | (W::RemoveBreakpoint, D::RemoveBreakpoint)
        | (W::Pause, D::Pause) => true,
        (W::CompleteRead(a), D::CompleteRead(b)) => a == b,
        (W::Inject(a), D::Inject(b)) => a.vector == b.vector && a.error_code == b.error_code,
        (W::SetReg(a), D::SetReg { reg, value }) => same_reg(a.reg, *reg) && a.value == *value,
        (W::WritePhys(a), D::WritePhys { gpa, data }) => a.gpa == *gpa && a.data == *data,
        (W::Protect(a), D::Protect(b)) => {
            same_range(&a.range, &b.range) && same_protection(a.mode, b.mode)
        }
        (W::Unprotect(a), D::Unprotect(b)) => same_range(a, b),
        (W::Stop(a), D::Stop(b)) => a.clean == b.clean && a.reason == b.reason,
        _ => false,
    }
}

fn check_subscriptions(w: &wit::Subscriptions, d: &exit::Subscriptions, route: bool) {
    let problems = d.unsupported();
    let reported = |needle: &str| problems.iter().any(|p| p.contains(needle));

    assert_eq!(w.ports.len(), d.ports.len());
    for (wr, dr) in w.ports.iter().zip(&d.ports) {
        assert_eq!((wr.first, wr.last), (*dr.start(), *dr.end()));
        if dr.start() > dr.end() {
            assert!(
                reported(&format!(
                    "empty port range {:#x}-{:#x}",
                    dr.start(),
                    dr.end()
                )),
                "{problems:?}"
            );
        }
    }
    assert_eq!(w.msrs.len(), d.msrs.len());
    for (wr, dr) in w.msrs.iter().zip(&d.msrs) {
        assert_eq!((wr.first, wr.last), (*dr.start(), *dr.end()));
        if dr.start() > dr.end() {
            assert!(
                reported(&format!(
                    "empty MSR range {:#x}-{:#x}",
                    dr.start(),
                    dr.end()
                )),
                "{problems:?}"
            );
        }
    }
    assert_eq!(w.mmio.len(), d.mmio.len());
    for (wr, dr) in w.mmio.iter().zip(&d.mmio) {
        assert!(same_range(wr, dr));
        if dr.len == 0 || dr.end().is_none() {
            assert!(
                reported(&format!(
                    "invalid MMIO range base {:#x} len {:#x}",
                    dr.base, dr.len
                )),
                "{problems:?}"
            );
        }
    }
    assert_eq!(w.cpuid, d.cpuid);
    assert_eq!(w.protect.len(), d.protect.len());
    for (wp, dp) in w.protect.iter().zip(&d.protect) {
        assert!(same_range(&wp.range, &dp.range) && same_protection(wp.mode, dp.mode));
    }
    if d.protect
        .iter()
        .any(|p| p.mode == exit::Protection::NoExecute)
    {
        assert!(reported("execute protection"), "{problems:?}");
    }
    let e = &w.events;
    assert_eq!(d.events.hlt, e.contains(wit::EventSet::HLT));
    assert_eq!(d.events.shutdown, e.contains(wit::EventSet::SHUTDOWN));
    assert_eq!(d.events.debug, e.contains(wit::EventSet::DEBUG));
    assert_eq!(
        d.events.mem_violation,
        e.contains(wit::EventSet::MEM_VIOLATION)
    );
    let c = &w.capabilities;
    let dc = d.capabilities;
    assert_eq!(
        dc.set_registers,
        c.contains(wit::Capabilities::SET_REGISTERS)
    );
    assert_eq!(dc.write_memory, c.contains(wit::Capabilities::WRITE_MEMORY));
    assert_eq!(
        dc.protect_memory,
        c.contains(wit::Capabilities::PROTECT_MEMORY)
    );
    assert_eq!(dc.debug, c.contains(wit::Capabilities::DEBUG));
    assert_eq!(dc.stop_vm, c.contains(wit::Capabilities::STOP_VM));

    // What load time accepts must route (sometimes: building routes costs
    // milliseconds under the sanitizer and would dominate this target).
    if problems.is_empty() && route {
        match exit::Routes::build(&[d], &[]) {
            Ok(_) | Err(exit::RoutesError::TooManyMsrRanges { .. }) => {}
            Err(e) => panic!("accepted subscriptions failed to route: {e}"),
        }
    }
}

fn check_exit_event(e: &exit::ExitEvent, w: &wit::ExitEvent) {
    assert_eq!((e.vcpu, e.seq, e.rip), (w.vcpu, w.seq, w.rip));
    let dir = |d: exit::Direction, w: wit::Direction| {
        matches!(
            (d, w),
            (exit::Direction::Read, wit::Direction::Read)
                | (exit::Direction::Write, wit::Direction::Write)
        )
    };
    let ok = match (&e.kind, &w.kind) {
        (exit::ExitKind::Io(d), wit::ExitKind::Io(w)) => {
            (d.port, d.size, d.data) == (w.port, w.size, w.data) && dir(d.direction, w.direction)
        }
        (exit::ExitKind::Mmio(d), wit::ExitKind::Mmio(w)) => {
            (d.gpa, d.size, d.data) == (w.gpa, w.size, w.data) && dir(d.direction, w.direction)
        }
        (exit::ExitKind::Msr(d), wit::ExitKind::Msr(w)) => {
            (d.index, d.value) == (w.index, w.value)
                && dir(d.direction, w.direction)
                && same_case(d.reason, w.reason)
        }
        (exit::ExitKind::MemViolation(d), wit::ExitKind::MemViolation(w)) => {
            (d.gpa, d.size, d.data) == (w.gpa, w.size, w.data) && same_case(d.access, w.access)
        }
        (exit::ExitKind::Debug(d), wit::ExitKind::Debug(w)) => {
            (d.slot, d.dr6, d.dr7) == (w.slot, w.dr6, w.dr7) && same_case(d.cause, w.cause)
        }
        (exit::ExitKind::Hlt, wit::ExitKind::Hlt) => true,
        (exit::ExitKind::Shutdown { reason }, wit::ExitKind::Shutdown(r)) => same_case(reason, r),
        _ => false,
    };
    assert!(ok, "{e:?} became {w:?}");
}

fn run(u: &mut Unstructured) -> Result<()> {
    // Verdicts and actions.
    let verdict = if u.ratio(1, 8)? {
        wit::Verdict::Decline
    } else {
        wit::Verdict::Handled(f::list(u, 8, wit_action)?)
    };
    let expected = match &verdict {
        wit::Verdict::Decline => None,
        wit::Verdict::Handled(a) => Some(a.clone()),
    };
    match (conv::verdict(verdict), expected) {
        (Verdict::Decline, None) => {}
        (Verdict::Handled(d), Some(w)) => {
            assert_eq!(d.len(), w.len());
            for (w, d) in w.iter().zip(&d) {
                assert!(same_action(w, d), "{w:?} became {d:?}");
            }
        }
        (d, w) => panic!("verdict {w:?} became {d:?}"),
    }

    // Subscriptions.
    let s = wit_subscriptions(u)?;
    let d = conv::subscriptions(s.clone());
    check_subscriptions(&s, &d, !u.ratio(7, 8)?);

    // Policy info, registers, CPUID.
    let (name, version, description): (String, String, String) = u.arbitrary()?;
    let info = conv::policy_info(wit::PolicyInfo {
        name: name.clone(),
        version: version.clone(),
        description: description.clone(),
    });
    assert_eq!(
        (info.name, info.version, info.description),
        (name, version, description)
    );
    let r = *u.choose(&WIT_REGS)?;
    assert!(same_reg(r, conv::reg(r)));
    let leaf = CpuidLeaf {
        function: u.arbitrary()?,
        index: u.arbitrary()?,
        eax: u.arbitrary()?,
        ebx: u.arbitrary()?,
        ecx: u.arbitrary()?,
        edx: u.arbitrary()?,
    };
    assert_eq!(conv::cpuid_round_trip(leaf), leaf);

    // Exit events, host to policy.
    let e = f::exit_event(u, f::GPA_HINTS, &[0x3f8], &[0x174])?;
    check_exit_event(&e, &conv::exit_event(&e));
    Ok(())
}

/// One fuzz input: never panics unless an invariant above is broken.
pub fn fuzz(data: &[u8]) {
    let _ = run(&mut Unstructured::new(data));
}
