//! Conversions between the generated WIT types and `wasmvisor-exit`'s
//! domain types. Every match is exhaustive and names each case, so a
//! change to the contract fails to compile here instead of being dropped.

use wasmvisor_exit as exit;

use crate::bindings::wasmvisor::policy::types as wit;
use crate::types::{CpuidLeaf, PolicyInfo, Verdict};

/// A domain exit as the WIT record the policy receives.
pub(crate) fn exit_event(e: &exit::ExitEvent) -> wit::ExitEvent {
    wit::ExitEvent {
        vcpu: e.vcpu,
        seq: e.seq,
        rip: e.rip,
        kind: exit_kind(&e.kind),
    }
}

fn exit_kind(k: &exit::ExitKind) -> wit::ExitKind {
    match *k {
        exit::ExitKind::Io(io) => wit::ExitKind::Io(wit::IoExit {
            port: io.port,
            size: io.size,
            direction: direction(io.direction),
            data: io.data,
        }),
        exit::ExitKind::Mmio(m) => wit::ExitKind::Mmio(wit::MmioExit {
            gpa: m.gpa,
            size: m.size,
            direction: direction(m.direction),
            data: m.data,
        }),
        exit::ExitKind::Msr(m) => wit::ExitKind::Msr(wit::MsrExit {
            index: m.index,
            direction: direction(m.direction),
            value: m.value,
            reason: match m.reason {
                exit::MsrReason::Filtered => wit::MsrReason::Filtered,
                exit::MsrReason::Unknown => wit::MsrReason::Unknown,
                exit::MsrReason::Invalid => wit::MsrReason::Invalid,
            },
        }),
        exit::ExitKind::MemViolation(v) => wit::ExitKind::MemViolation(wit::MemViolation {
            gpa: v.gpa,
            access: match v.access {
                exit::MemAccess::Read => wit::MemAccess::Read,
                exit::MemAccess::Write => wit::MemAccess::Write,
                exit::MemAccess::Execute => wit::MemAccess::Execute,
            },
            size: v.size,
            data: v.data,
        }),
        exit::ExitKind::Debug(d) => wit::ExitKind::Debug(wit::DebugExit {
            cause: match d.cause {
                exit::DebugCause::HwBreakpoint => wit::DebugCause::HwBreakpoint,
                exit::DebugCause::SwBreakpoint => wit::DebugCause::SwBreakpoint,
                exit::DebugCause::SingleStep => wit::DebugCause::SingleStep,
            },
            slot: d.slot,
            dr6: d.dr6,
            dr7: d.dr7,
        }),
        exit::ExitKind::Hlt => wit::ExitKind::Hlt,
        exit::ExitKind::Shutdown { reason } => wit::ExitKind::Shutdown(match reason {
            exit::ShutdownReason::TripleFault => wit::ShutdownReason::TripleFault,
            exit::ShutdownReason::InternalError => wit::ShutdownReason::InternalError,
            exit::ShutdownReason::EntryFailure => wit::ShutdownReason::EntryFailure,
        }),
    }
}

fn direction(d: exit::Direction) -> wit::Direction {
    match d {
        exit::Direction::Read => wit::Direction::Read,
        exit::Direction::Write => wit::Direction::Write,
    }
}

/// A WIT register name as the domain's.
pub(crate) fn reg(r: wit::Reg) -> exit::Reg {
    match r {
        wit::Reg::Rax => exit::Reg::Rax,
        wit::Reg::Rbx => exit::Reg::Rbx,
        wit::Reg::Rcx => exit::Reg::Rcx,
        wit::Reg::Rdx => exit::Reg::Rdx,
        wit::Reg::Rsi => exit::Reg::Rsi,
        wit::Reg::Rdi => exit::Reg::Rdi,
        wit::Reg::Rsp => exit::Reg::Rsp,
        wit::Reg::Rbp => exit::Reg::Rbp,
        wit::Reg::R8 => exit::Reg::R8,
        wit::Reg::R9 => exit::Reg::R9,
        wit::Reg::R10 => exit::Reg::R10,
        wit::Reg::R11 => exit::Reg::R11,
        wit::Reg::R12 => exit::Reg::R12,
        wit::Reg::R13 => exit::Reg::R13,
        wit::Reg::R14 => exit::Reg::R14,
        wit::Reg::R15 => exit::Reg::R15,
        wit::Reg::Rip => exit::Reg::Rip,
        wit::Reg::Rflags => exit::Reg::Rflags,
        wit::Reg::Cr0 => exit::Reg::Cr0,
        wit::Reg::Cr2 => exit::Reg::Cr2,
        wit::Reg::Cr3 => exit::Reg::Cr3,
        wit::Reg::Cr4 => exit::Reg::Cr4,
        wit::Reg::Cr8 => exit::Reg::Cr8,
        wit::Reg::Efer => exit::Reg::Efer,
    }
}

/// A policy's verdict in domain terms. The action list is converted in
/// place where the two layouts allow it.
pub(crate) fn verdict(v: wit::Verdict) -> Verdict {
    match v {
        wit::Verdict::Decline => Verdict::Decline,
        wit::Verdict::Handled(actions) => {
            Verdict::Handled(actions.into_iter().map(action).collect())
        }
    }
}

fn action(a: wit::Action) -> exit::Action {
    match a {
        wit::Action::Resume => exit::Action::Resume,
        wit::Action::CompleteRead(value) => exit::Action::CompleteRead(value),
        wit::Action::Inject(e) => exit::Action::Inject(exit::Exception {
            vector: e.vector,
            error_code: e.error_code,
        }),
        wit::Action::SetReg(w) => exit::Action::SetReg {
            reg: reg(w.reg),
            value: w.value,
        },
        wit::Action::WritePhys(w) => exit::Action::WritePhys {
            gpa: w.gpa,
            data: w.data,
        },
        wit::Action::Allow => exit::Action::Allow,
        wit::Action::Deny => exit::Action::Deny,
        wit::Action::UnprotectRetry => exit::Action::UnprotectRetry,
        wit::Action::Protect(p) => exit::Action::Protect(protect_request(p)),
        wit::Action::Unprotect(r) => exit::Action::Unprotect(gpa_range(r)),
        wit::Action::Step => exit::Action::Step,
        wit::Action::RemoveBreakpoint => exit::Action::RemoveBreakpoint,
        wit::Action::Pause => exit::Action::Pause,
        wit::Action::Stop(s) => exit::Action::Stop(exit::StopRequest {
            clean: s.clean,
            reason: s.reason,
        }),
    }
}

pub(crate) fn gpa_range(r: wit::GpaRange) -> exit::GpaRange {
    exit::GpaRange {
        base: r.base,
        len: r.len,
    }
}

pub(crate) fn protect_request(p: wit::ProtectRequest) -> exit::ProtectRequest {
    exit::ProtectRequest {
        range: gpa_range(p.range),
        mode: match p.mode {
            wit::Protection::WriteProtect => exit::Protection::WriteProtect,
            wit::Protection::NoAccess => exit::Protection::NoAccess,
            wit::Protection::NoExecute => exit::Protection::NoExecute,
        },
    }
}

/// What `init` returned, in domain terms. Port and MSR ranges become
/// inclusive ranges as given: an inverted range is kept so that
/// [`exit::Subscriptions::unsupported`] can report it.
pub(crate) fn subscriptions(s: wit::Subscriptions) -> exit::Subscriptions {
    exit::Subscriptions {
        ports: s.ports.iter().map(|r| r.first..=r.last).collect(),
        mmio: s.mmio.into_iter().map(gpa_range).collect(),
        msrs: s.msrs.iter().map(|r| r.first..=r.last).collect(),
        cpuid: s.cpuid,
        events: event_set(s.events),
        protect: s.protect.into_iter().map(protect_request).collect(),
        capabilities: capabilities(s.capabilities),
        // Declared through host imports during init, not returned.
        constants: Vec::new(),
    }
}

fn event_set(e: wit::EventSet) -> exit::EventSet {
    exit::EventSet {
        hlt: e.contains(wit::EventSet::HLT),
        shutdown: e.contains(wit::EventSet::SHUTDOWN),
        debug: e.contains(wit::EventSet::DEBUG),
        mem_violation: e.contains(wit::EventSet::MEM_VIOLATION),
    }
}

fn capabilities(c: wit::Capabilities) -> exit::Capabilities {
    exit::Capabilities {
        set_registers: c.contains(wit::Capabilities::SET_REGISTERS),
        write_memory: c.contains(wit::Capabilities::WRITE_MEMORY),
        protect_memory: c.contains(wit::Capabilities::PROTECT_MEMORY),
        debug: c.contains(wit::Capabilities::DEBUG),
        stop_vm: c.contains(wit::Capabilities::STOP_VM),
    }
}

pub(crate) fn cpuid_to_wit(l: CpuidLeaf) -> wit::CpuidLeaf {
    let CpuidLeaf {
        function,
        index,
        eax,
        ebx,
        ecx,
        edx,
    } = l;
    wit::CpuidLeaf {
        function,
        index,
        eax,
        ebx,
        ecx,
        edx,
    }
}

pub(crate) fn cpuid_from_wit(l: wit::CpuidLeaf) -> CpuidLeaf {
    let wit::CpuidLeaf {
        function,
        index,
        eax,
        ebx,
        ecx,
        edx,
    } = l;
    CpuidLeaf {
        function,
        index,
        eax,
        ebx,
        ecx,
        edx,
    }
}

pub(crate) fn policy_info(i: wit::PolicyInfo) -> PolicyInfo {
    PolicyInfo {
        name: i.name,
        version: i.version,
        description: i.description,
    }
}

/// A WIT segment register name in domain terms.
pub(crate) fn segment_reg(s: wit::SegmentReg) -> exit::SegmentReg {
    match s {
        wit::SegmentReg::Cs => exit::SegmentReg::Cs,
        wit::SegmentReg::Ds => exit::SegmentReg::Ds,
        wit::SegmentReg::Es => exit::SegmentReg::Es,
        wit::SegmentReg::Fs => exit::SegmentReg::Fs,
        wit::SegmentReg::Gs => exit::SegmentReg::Gs,
        wit::SegmentReg::Ss => exit::SegmentReg::Ss,
        wit::SegmentReg::Tr => exit::SegmentReg::Tr,
        wit::SegmentReg::Ldtr => exit::SegmentReg::Ldtr,
    }
}

/// A segment for the policy.
pub(crate) fn segment_to_wit(s: exit::Segment) -> wit::Segment {
    wit::Segment {
        selector: s.selector,
        base: s.base,
        limit: s.limit,
        attributes: s.attributes,
        unusable: s.unusable,
    }
}

/// A segment from the policy.
pub(crate) fn segment_from_wit(s: wit::Segment) -> exit::Segment {
    exit::Segment {
        selector: s.selector,
        base: s.base,
        limit: s.limit,
        attributes: s.attributes,
        unusable: s.unusable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(base: u64, len: u64) -> wit::GpaRange {
        wit::GpaRange { base, len }
    }

    #[test]
    fn subscriptions_convert_every_field() {
        let s = wit::Subscriptions {
            ports: vec![
                wit::PortRange {
                    first: 0x3f8,
                    last: 0x3ff,
                },
                wit::PortRange { first: 9, last: 3 },
            ],
            mmio: vec![range(0xfee0_0000, 0x1000)],
            msrs: vec![wit::MsrRange {
                first: 0xc000_0080,
                last: 0xc000_0080,
            }],
            cpuid: vec![0x4000_0000],
            events: wit::EventSet::HLT | wit::EventSet::MEM_VIOLATION,
            protect: vec![wit::ProtectRequest {
                range: range(0x1000, 0x2000),
                mode: wit::Protection::NoAccess,
            }],
            capabilities: wit::Capabilities::WRITE_MEMORY | wit::Capabilities::STOP_VM,
        };
        let d = subscriptions(s);
        let inverted = std::ops::RangeInclusive::new(9, 3);
        assert_eq!(d.ports, vec![0x3f8..=0x3ff, inverted]);
        assert_eq!(
            d.mmio,
            vec![exit::GpaRange {
                base: 0xfee0_0000,
                len: 0x1000
            }]
        );
        assert_eq!(d.msrs, vec![0xc000_0080..=0xc000_0080]);
        assert_eq!(d.cpuid, vec![0x4000_0000]);
        assert_eq!(
            d.events,
            exit::EventSet {
                hlt: true,
                mem_violation: true,
                ..exit::EventSet::default()
            }
        );
        assert_eq!(
            d.protect,
            vec![exit::ProtectRequest {
                range: exit::GpaRange {
                    base: 0x1000,
                    len: 0x2000
                },
                mode: exit::Protection::NoAccess,
            }]
        );
        assert_eq!(
            d.capabilities,
            exit::Capabilities {
                write_memory: true,
                stop_vm: true,
                ..exit::Capabilities::default()
            }
        );
        // The inverted range is reported, not dropped.
        assert_eq!(d.unsupported().len(), 1);
    }

    #[test]
    fn all_flags_map_to_all_fields() {
        assert_eq!(
            capabilities(wit::Capabilities::all()),
            exit::Capabilities::ALL
        );
        assert_eq!(
            capabilities(wit::Capabilities::empty()),
            exit::Capabilities::default()
        );
        let all = event_set(wit::EventSet::all());
        assert!(all.hlt && all.shutdown && all.debug && all.mem_violation);
    }

    #[test]
    fn every_action_converts() {
        let wits = vec![
            wit::Action::Resume,
            wit::Action::CompleteRead(7),
            wit::Action::Inject(wit::Exception {
                vector: 13,
                error_code: Some(0),
            }),
            wit::Action::SetReg(wit::RegWrite {
                reg: wit::Reg::Cr3,
                value: 0x1000,
            }),
            wit::Action::WritePhys(wit::PhysWrite {
                gpa: 0x10,
                data: vec![1, 2],
            }),
            wit::Action::Allow,
            wit::Action::Deny,
            wit::Action::UnprotectRetry,
            wit::Action::Protect(wit::ProtectRequest {
                range: range(0, 4096),
                mode: wit::Protection::WriteProtect,
            }),
            wit::Action::Unprotect(range(4096, 4096)),
            wit::Action::Step,
            wit::Action::RemoveBreakpoint,
            wit::Action::Pause,
            wit::Action::Stop(wit::StopRequest {
                clean: true,
                reason: "done".into(),
            }),
        ];
        let Verdict::Handled(actions) = verdict(wit::Verdict::Handled(wits)) else {
            panic!("expected handled");
        };
        let expected = vec![
            exit::Action::Resume,
            exit::Action::CompleteRead(7),
            exit::Action::Inject(exit::Exception::GP),
            exit::Action::SetReg {
                reg: exit::Reg::Cr3,
                value: 0x1000,
            },
            exit::Action::WritePhys {
                gpa: 0x10,
                data: vec![1, 2],
            },
            exit::Action::Allow,
            exit::Action::Deny,
            exit::Action::UnprotectRetry,
            exit::Action::Protect(exit::ProtectRequest {
                range: exit::GpaRange { base: 0, len: 4096 },
                mode: exit::Protection::WriteProtect,
            }),
            exit::Action::Unprotect(exit::GpaRange {
                base: 4096,
                len: 4096,
            }),
            exit::Action::Step,
            exit::Action::RemoveBreakpoint,
            exit::Action::Pause,
            exit::Action::Stop(exit::StopRequest {
                clean: true,
                reason: "done".into(),
            }),
        ];
        assert_eq!(actions, expected);
        assert_eq!(verdict(wit::Verdict::Decline), Verdict::Decline);
    }

    #[test]
    fn exit_events_keep_every_field() {
        let io = exit::ExitEvent {
            vcpu: 1,
            seq: 42,
            rip: 0xfff0,
            kind: exit::ExitKind::Io(exit::IoExit {
                port: 0x3f8,
                size: 1,
                direction: exit::Direction::Write,
                data: 0x41,
            }),
        };
        let w = exit_event(&io);
        assert_eq!((w.vcpu, w.seq, w.rip), (1, 42, 0xfff0));
        let wit::ExitKind::Io(wio) = w.kind else {
            panic!("expected io");
        };
        assert_eq!((wio.port, wio.size, wio.data), (0x3f8, 1, 0x41));
        assert!(matches!(wio.direction, wit::Direction::Write));

        let kinds = [
            exit::ExitKind::Mmio(exit::MmioExit {
                gpa: 0xd000_0000,
                size: 4,
                direction: exit::Direction::Read,
                data: 0,
            }),
            exit::ExitKind::Msr(exit::MsrExit {
                index: 0xce,
                direction: exit::Direction::Read,
                value: 0,
                reason: exit::MsrReason::Invalid,
            }),
            exit::ExitKind::MemViolation(exit::MemViolation {
                gpa: 0x2000,
                access: exit::MemAccess::Execute,
                size: 1,
                data: 0,
            }),
            exit::ExitKind::Debug(exit::DebugExit {
                cause: exit::DebugCause::HwBreakpoint,
                slot: Some(2),
                dr6: 4,
                dr7: 0x400,
            }),
            exit::ExitKind::Hlt,
            exit::ExitKind::Shutdown {
                reason: exit::ShutdownReason::EntryFailure,
            },
        ];
        for kind in kinds {
            let w = exit_kind(&kind);
            let same = match (kind, w) {
                (exit::ExitKind::Mmio(d), wit::ExitKind::Mmio(w)) => {
                    d.gpa == w.gpa
                        && d.size == w.size
                        && matches!(w.direction, wit::Direction::Read)
                }
                (exit::ExitKind::Msr(d), wit::ExitKind::Msr(w)) => {
                    d.index == w.index && matches!(w.reason, wit::MsrReason::Invalid)
                }
                (exit::ExitKind::MemViolation(d), wit::ExitKind::MemViolation(w)) => {
                    d.gpa == w.gpa && matches!(w.access, wit::MemAccess::Execute)
                }
                (exit::ExitKind::Debug(d), wit::ExitKind::Debug(w)) => {
                    d.slot == w.slot
                        && d.dr7 == w.dr7
                        && matches!(w.cause, wit::DebugCause::HwBreakpoint)
                }
                (exit::ExitKind::Hlt, wit::ExitKind::Hlt) => true,
                (exit::ExitKind::Shutdown { .. }, wit::ExitKind::Shutdown(r)) => {
                    matches!(r, wit::ShutdownReason::EntryFailure)
                }
                _ => false,
            };
            assert!(same, "{kind:?}");
        }
    }

    #[test]
    fn cpuid_round_trips() {
        let leaf = CpuidLeaf {
            function: 0x4000_0000,
            index: 1,
            eax: 2,
            ebx: 3,
            ecx: 4,
            edx: 5,
        };
        assert_eq!(cpuid_from_wit(cpuid_to_wit(leaf)), leaf);
    }

    /// The per-exit path allocates nothing beyond the list the component
    /// ABI hands back: the WIT and domain actions share a layout, so the
    /// standard library converts the list in place.
    #[test]
    fn handled_actions_are_converted_in_place() {
        assert_eq!(
            std::mem::size_of::<wit::Action>(),
            std::mem::size_of::<exit::Action>()
        );
        assert_eq!(
            std::mem::align_of::<wit::Action>(),
            std::mem::align_of::<exit::Action>()
        );
        let list = vec![wit::Action::Resume, wit::Action::CompleteRead(1)];
        let before = list.as_ptr() as usize;
        let Verdict::Handled(out) = verdict(wit::Verdict::Handled(list)) else {
            panic!("expected handled");
        };
        assert_eq!(out.as_ptr() as usize, before);
    }

    #[test]
    fn registers_keep_their_names() {
        assert_eq!(reg(wit::Reg::Efer), exit::Reg::Efer);
        assert_eq!(reg(wit::Reg::R15), exit::Reg::R15);
        assert_eq!(reg(wit::Reg::Cr8), exit::Reg::Cr8);
    }
}
