//! classify, validate, apply and the default handler, driven with a fake
//! vCPU and a real `GuestRam`.

use vm_memory::{Bytes, GuestAddress};
use wasmvisor_exit::testing::{io_exit, FakeVcpu};
use wasmvisor_exit::GuestRam;
use wasmvisor_exit::*;

fn mem() -> GuestRam {
    GuestRam::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap()
}

fn protector() -> std::sync::Mutex<ProtectionMap> {
    std::sync::Mutex::new(ProtectionMap::new(0x10000))
}

fn ev(kind: ExitKind) -> ExitEvent {
    ExitEvent {
        vcpu: 0,
        seq: 7,
        rip: 0x8000,
        kind,
    }
}

fn io(port: u16, direction: Direction, size: u8, data: u32) -> ExitEvent {
    io_exit(port, size, direction, data)
}

fn msr(index: u32, direction: Direction, value: u64, reason: MsrReason) -> ExitEvent {
    ev(ExitKind::Msr(MsrExit {
        index,
        direction,
        value,
        reason,
    }))
}

/// A one-byte execute breakpoint at `gva`.
fn execute_bp(gva: u64) -> HwBreakpoint {
    HwBreakpoint {
        kind: HwBreakpointKind::Execute,
        gva,
        len: 1,
    }
}

fn subs_ports(first: u16, last: u16) -> Subscriptions {
    Subscriptions {
        ports: vec![first..=last],
        ..Default::default()
    }
}

#[test]
fn classify_orders_policies_then_builtins() {
    let a = subs_ports(0x3f8, 0x3ff);
    let b = Subscriptions {
        ports: vec![0x3f0..=0x3f8],
        mmio: vec![GpaRange {
            base: 0xd000_0000,
            len: 0x1000,
        }],
        msrs: vec![0x174..=0x176],
        events: EventSet {
            hlt: true,
            ..Default::default()
        },
        ..Default::default()
    };
    let routes = Routes::build(&[&a, &b], &[(vec![0x3f8..=0x3ff], vec![])]).unwrap();
    let chain = |e: &ExitEvent| match classify(e, &routes) {
        Route::Chain(c) => c.to_vec(),
        Route::Default => vec![],
    };
    use Target::*;
    // Overlap at 0x3f8: both policies in load order, then the built-in.
    assert_eq!(
        chain(&io(0x3f8, Direction::Write, 1, 0)),
        vec![Policy(0), Policy(1), Builtin(0)]
    );
    assert_eq!(
        chain(&io(0x3f9, Direction::Write, 1, 0)),
        vec![Policy(0), Builtin(0)]
    );
    assert_eq!(chain(&io(0x3f0, Direction::Read, 1, 0)), vec![Policy(1)]);
    assert_eq!(chain(&io(0x80, Direction::Read, 1, 0)), vec![]);
    let mmio = |gpa| {
        ev(ExitKind::Mmio(MmioExit {
            gpa,
            size: 4,
            direction: Direction::Read,
            data: 0,
        }))
    };
    assert_eq!(chain(&mmio(0xd000_0000)), vec![Policy(1)]);
    assert_eq!(chain(&mmio(0xd000_0fff)), vec![Policy(1)]);
    assert_eq!(chain(&mmio(0xd000_1000)), vec![]);
    assert_eq!(chain(&mmio(0xcfff_ffff)), vec![]);
    assert_eq!(
        chain(&msr(0x175, Direction::Read, 0, MsrReason::Filtered)),
        vec![Policy(1)]
    );
    assert_eq!(
        chain(&msr(0x177, Direction::Read, 0, MsrReason::Unknown)),
        vec![]
    );
    assert_eq!(chain(&ev(ExitKind::Hlt)), vec![Policy(1)]);
    assert_eq!(routes.msr_filter(), &[0x174..=0x176]);
}

#[test]
fn interval_boundaries_are_exact_for_nested_ranges() {
    let outer = Subscriptions {
        msrs: vec![0x100..=0x1ff],
        ..Default::default()
    };
    let inner = Subscriptions {
        msrs: vec![0x150..=0x15f],
        ..Default::default()
    };
    let routes = Routes::build(&[&outer, &inner], &[]).unwrap();
    let at = |i| match classify(&msr(i, Direction::Read, 0, MsrReason::Filtered), &routes) {
        Route::Chain(c) => c.len(),
        Route::Default => 0,
    };
    assert_eq!(
        [
            at(0xff),
            at(0x100),
            at(0x14f),
            at(0x150),
            at(0x15f),
            at(0x160),
            at(0x1ff),
            at(0x200)
        ],
        [0, 1, 1, 2, 2, 1, 1, 0]
    );
    // Merged into one filter range.
    assert_eq!(routes.msr_filter(), &[0x100..=0x1ff]);
}

#[test]
fn too_many_msr_ranges_is_an_error() {
    let many = Subscriptions {
        msrs: (0..17u32).map(|i| i * 0x100..=i * 0x100).collect(),
        ..Default::default()
    };
    assert_eq!(
        Routes::build(&[&many], &[]).unwrap_err(),
        RoutesError::TooManyMsrRanges { needed: 17 }
    );
}

#[test]
fn validate_rejects_wrong_size_wrong_exit_and_ungranted() {
    let m = mem();
    let read = io(0x3fd, Direction::Read, 1, 0);
    let none = Capabilities::default();
    assert!(validate(&read, &[Action::CompleteRead(0x60)], none, &m).is_ok());
    assert_eq!(
        validate(&read, &[Action::CompleteRead(0x160)], none, &m),
        Err(ActionFault::WrongSize {
            value: 0x160,
            size: 1
        })
    );
    assert_eq!(
        validate(&read, &[Action::Resume], none, &m),
        Err(ActionFault::ReadUnanswered { exit: "io" })
    );
    let write = io(0x3f8, Direction::Write, 1, 0x41);
    assert!(matches!(
        validate(&write, &[Action::CompleteRead(1)], none, &m),
        Err(ActionFault::WrongExit { .. })
    ));
    let set = Action::SetReg {
        reg: Reg::Rax,
        value: 1,
    };
    assert!(matches!(
        validate(&write, std::slice::from_ref(&set), none, &m),
        Err(ActionFault::NotGranted { .. })
    ));
    let granted = Capabilities {
        set_registers: true,
        write_memory: true,
        ..Default::default()
    };
    assert!(validate(&write, &[set], granted, &m).is_ok());
    let oob = Action::WritePhys {
        gpa: 0xfffe,
        data: vec![1, 2, 3],
    };
    assert!(matches!(
        validate(&write, &[oob], granted, &m),
        Err(ActionFault::OutOfRam { .. })
    ));
    assert!(matches!(
        validate(
            &write,
            &[
                Action::Resume,
                Action::Stop(StopRequest {
                    clean: true,
                    reason: "x".into()
                })
            ],
            Capabilities::ALL,
            &m
        ),
        Err(ActionFault::Conflicting { .. })
    ));
    let gp_no_code = Action::Inject(Exception {
        vector: 13,
        error_code: None,
    });
    assert!(matches!(
        validate(&write, &[gp_no_code], none, &m),
        Err(ActionFault::BadException { vector: 13, .. })
    ));
    let nx = Action::Protect(ProtectRequest {
        range: GpaRange { base: 0, len: 4096 },
        mode: Protection::NoExecute,
    });
    assert!(matches!(
        validate(&write, &[nx], Capabilities::ALL, &m),
        Err(ActionFault::Unsupported(_))
    ));
}

#[test]
fn apply_completes_reads_writes_memory_and_sets_registers() {
    let m = mem();
    let mut vcpu = FakeVcpu::default();
    let mut c = Completion::default();
    let read = io(0x510, Direction::Read, 4, 0);
    let actions = [
        Action::CompleteRead(0xdead_beef),
        Action::SetReg {
            reg: Reg::Rbx,
            value: 5,
        },
        Action::WritePhys {
            gpa: 0x9000,
            data: vec![0xaa, 0xbb],
        },
    ];
    validate(&read, &actions, Capabilities::ALL, &m).unwrap();
    let p = protector();
    let env = GuestEnv {
        mem: &m,
        protector: &p,
    };
    let flow = apply(&read, &actions, &mut vcpu, &env, &mut c).unwrap();
    assert_eq!(flow, Flow::Continue);
    assert_eq!(c.read, Some(0xdead_beef));
    assert_eq!(vcpu.regs[&Reg::Rbx], 5);
    assert_eq!(m.read_obj::<u16>(GuestAddress(0x9000)).unwrap(), 0xbbaa);
}

#[test]
fn apply_msr_gp_uses_the_fault_flag_not_an_ioctl() {
    let m = mem();
    let mut vcpu = FakeVcpu::default();
    let mut c = Completion::default();
    let e = msr(0x175, Direction::Read, 0, MsrReason::Filtered);
    let actions = [Action::Inject(Exception::GP)];
    validate(&e, &actions, Capabilities::default(), &m).unwrap();
    let p = protector();
    let env = GuestEnv {
        mem: &m,
        protector: &p,
    };
    apply(&e, &actions, &mut vcpu, &env, &mut c).unwrap();
    assert!(c.msr_fault);
    assert!(vcpu.injected.is_empty());
    // On a port read the exception is queued and the read gets all-ones.
    let mut c = Completion::default();
    let e = io(0x60, Direction::Read, 2, 0);
    apply(&e, &actions, &mut vcpu, &env, &mut c).unwrap();
    assert_eq!(vcpu.injected, vec![Exception::GP]);
    assert_eq!(c.read, Some(0xffff));
}

#[test]
fn apply_stop_and_handled_hlt() {
    let m = mem();
    let p = protector();
    let env = GuestEnv {
        mem: &m,
        protector: &p,
    };
    let mut vcpu = FakeVcpu::default();
    let mut c = Completion::default();
    let stop = Action::Stop(StopRequest {
        clean: false,
        reason: "bad".into(),
    });
    let flow = apply(&ev(ExitKind::Hlt), &[stop], &mut vcpu, &env, &mut c).unwrap();
    assert!(matches!(flow, Flow::Stop(StopRequest { clean: false, .. })));
    let flow = apply(
        &ev(ExitKind::Hlt),
        &[Action::Resume],
        &mut vcpu,
        &env,
        &mut c,
    )
    .unwrap();
    assert_eq!(flow, Flow::Continue);
}

#[test]
fn defaults_answer_unclaimed_exits() {
    let mut vcpu = FakeVcpu::default();
    vcpu.msrs.insert(0x174, 0x10);
    let m = mem();
    let p = protector();
    let env = GuestEnv {
        mem: &m,
        protector: &p,
    };
    let run = |e: ExitEvent, vcpu: &mut FakeVcpu| {
        let mut c = Completion::default();
        let flow = default_actions(&e, vcpu, &env, &mut c).unwrap();
        (flow, c)
    };
    let (_, c) = run(io(0x600, Direction::Read, 4, 0), &mut vcpu);
    assert_eq!(c.read, Some(0xffff_ffff));
    let (_, c) = run(io(0x600, Direction::Write, 1, 3), &mut vcpu);
    assert_eq!(c, Completion::default());
    let (_, c) = run(
        msr(0x174, Direction::Read, 0, MsrReason::Filtered),
        &mut vcpu,
    );
    assert_eq!(c.read, Some(0x10));
    let (_, c) = run(
        msr(0x174, Direction::Write, 0x20, MsrReason::Filtered),
        &mut vcpu,
    );
    assert!(!c.msr_fault);
    assert_eq!(vcpu.msrs[&0x174], 0x20);
    let (_, c) = run(
        msr(0x175, Direction::Read, 0, MsrReason::Filtered),
        &mut vcpu,
    );
    assert!(c.msr_fault, "an MSR KVM does not know raises #GP");
    let (_, c) = run(
        msr(0x1234_5678, Direction::Write, 1, MsrReason::Unknown),
        &mut vcpu,
    );
    assert!(c.msr_fault);
    let (flow, _) = run(ev(ExitKind::Hlt), &mut vcpu);
    assert_eq!(flow, Flow::Halt);
    let (flow, _) = run(
        ev(ExitKind::Shutdown {
            reason: ShutdownReason::TripleFault,
        }),
        &mut vcpu,
    );
    assert!(matches!(flow, Flow::Stop(StopRequest { clean: false, .. })));
}

mod model {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// classify agrees with a naive scan of the subscriptions.
        #[test]
        fn classify_matches_naive_scan(
            ranges in proptest::collection::vec((0u32..0x400, 0u32..0x40), 1..6),
            probes in proptest::collection::vec(0u32..0x480, 1..50),
        ) {
            let subs: Vec<Subscriptions> = ranges
                .iter()
                .map(|&(start, len)| Subscriptions { msrs: vec![start..=start + len], ..Default::default() })
                .collect();
            let refs: Vec<&Subscriptions> = subs.iter().collect();
            let routes = Routes::build(&refs, &[]).unwrap();
            for p in probes {
                let expect: Vec<Target> = subs
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.msrs[0].contains(&p))
                    .map(|(i, _)| Target::Policy(i as u16))
                    .collect();
                let got = match classify(&msr(p, Direction::Read, 0, MsrReason::Filtered), &routes) {
                    Route::Chain(c) => c.to_vec(),
                    Route::Default => vec![],
                };
                prop_assert_eq!(got, expect);
            }
        }
    }
}

fn violation(gpa: u64, access: MemAccess, size: u8, data: u64) -> ExitEvent {
    ev(ExitKind::MemViolation(MemViolation {
        gpa,
        access,
        size,
        data,
    }))
}

#[test]
fn mem_violation_allow_deny_and_unprotect_retry() {
    let m = mem();
    let p = protector();
    let page = GpaRange {
        base: 0x9000,
        len: 0x1000,
    };
    p.protect(page, Protection::WriteProtect).unwrap();
    let env = GuestEnv {
        mem: &m,
        protector: &p,
    };
    let mut vcpu = FakeVcpu::default();
    let grants = Capabilities {
        protect_memory: true,
        ..Default::default()
    };
    let write = violation(0x9010, MemAccess::Write, 4, 0xdead_beef);
    let run = |actions: &[Action], vcpu: &mut FakeVcpu| {
        validate(&write, actions, grants, &m).unwrap();
        let mut c = Completion::default();
        apply(&write, actions, vcpu, &env, &mut c).unwrap();
    };
    // deny: the write is dropped.
    run(&[Action::Deny], &mut vcpu);
    assert_eq!(m.read_obj::<u32>(GuestAddress(0x9010)).unwrap(), 0);
    // allow: the host performs it, the page stays protected.
    run(&[Action::Allow], &mut vcpu);
    assert_eq!(
        m.read_obj::<u32>(GuestAddress(0x9010)).unwrap(),
        0xdead_beef
    );
    assert_eq!(p.lookup(0x9010), Some(Protection::WriteProtect));
    // unprotect-retry: the page is unprotected and the write lands.
    m.write_obj(0u32, GuestAddress(0x9010)).unwrap();
    run(&[Action::UnprotectRetry], &mut vcpu);
    assert_eq!(
        m.read_obj::<u32>(GuestAddress(0x9010)).unwrap(),
        0xdead_beef
    );
    assert_eq!(p.lookup(0x9010), None);
    // unprotect-retry needs the grant; allow/deny answer only violations.
    assert!(validate(
        &write,
        &[Action::UnprotectRetry],
        Capabilities::default(),
        &m
    )
    .is_err());
    assert!(matches!(
        validate(
            &io(0x10, Direction::Write, 1, 0),
            &[Action::Allow],
            grants,
            &m
        ),
        Err(ActionFault::WrongExit { .. })
    ));
}

#[test]
fn mem_violation_reads_answered_by_ram_policy_data_or_all_ones() {
    let m = mem();
    m.write_obj(0x1122_3344u32, GuestAddress(0xa000)).unwrap();
    let p = protector();
    let env = GuestEnv {
        mem: &m,
        protector: &p,
    };
    let mut vcpu = FakeVcpu::default();
    let read = violation(0xa000, MemAccess::Read, 4, 0);
    let answer = |actions: &[Action], vcpu: &mut FakeVcpu| {
        validate(&read, actions, Capabilities::default(), &m).unwrap();
        let mut c = Completion::default();
        apply(&read, actions, vcpu, &env, &mut c).unwrap();
        c.read
    };
    assert_eq!(answer(&[Action::Allow], &mut vcpu), Some(0x1122_3344));
    assert_eq!(answer(&[Action::Deny], &mut vcpu), Some(0xffff_ffff));
    assert_eq!(
        answer(&[Action::CompleteRead(0x5a5a)], &mut vcpu),
        Some(0x5a5a)
    );
    // Nobody answered: the default lets the access through.
    let mut c = Completion::default();
    default_actions(&read, &mut vcpu, &env, &mut c).unwrap();
    assert_eq!(c.read, Some(0x1122_3344));
}

#[test]
fn protect_actions_need_whole_pages_of_ram_and_the_grant() {
    let m = mem();
    let e = io(0x10, Direction::Write, 1, 0);
    let grants = Capabilities {
        protect_memory: true,
        ..Default::default()
    };
    let prot = |base, len| {
        Action::Protect(ProtectRequest {
            range: GpaRange { base, len },
            mode: Protection::WriteProtect,
        })
    };
    assert!(validate(&e, &[prot(0x1000, 0x1000)], grants, &m).is_ok());
    assert!(matches!(
        validate(&e, &[prot(0x1001, 0x1000)], grants, &m),
        Err(ActionFault::BadRange { .. })
    ));
    assert!(matches!(
        validate(&e, &[prot(0xf000, 0x2000)], grants, &m),
        Err(ActionFault::BadRange { .. })
    ));
    assert!(matches!(
        validate(&e, &[prot(0x1000, 0x1000)], Capabilities::default(), &m),
        Err(ActionFault::NotGranted { .. })
    ));
}

#[test]
fn an_empty_answer_continues_a_debug_exit_like_resume() {
    let bp = execute_bp(0x8000);
    let event = ev(ExitKind::Debug(DebugExit {
        cause: DebugCause::HwBreakpoint,
        slot: Some(2),
        dr6: 1 << 2,
        dr7: 0,
    }));
    let (m, p) = (mem(), protector());
    let env = GuestEnv {
        mem: &m,
        protector: &p,
    };
    let after = |actions: &[Action]| {
        let mut vcpu = FakeVcpu::default();
        vcpu.debug.hw[2] = Some(bp);
        let mut completion = Completion::default();
        assert_eq!(
            apply(&event, actions, &mut vcpu, &env, &mut completion).unwrap(),
            Flow::Continue
        );
        vcpu.debug
    };
    let resumed = after(&[Action::Resume]);
    // Stepped over: disarmed for one instruction, to be re-armed after.
    assert_eq!(resumed.hw[2], None);
    assert_eq!(resumed.rearm, Some((2, bp)));
    assert_eq!(after(&[]), resumed);
}

#[test]
fn an_answer_without_a_debug_finisher_still_steps_over_the_breakpoint() {
    let bp = execute_bp(0x8000);
    let event = ev(ExitKind::Debug(DebugExit {
        cause: DebugCause::HwBreakpoint,
        slot: Some(0),
        dr6: 1,
        dr7: 0,
    }));
    let (m, p) = (mem(), protector());
    let env = GuestEnv {
        mem: &m,
        protector: &p,
    };
    let mut vcpu = FakeVcpu::default();
    vcpu.debug.hw[0] = Some(bp);
    let set = Action::SetReg {
        reg: Reg::Rax,
        value: 5,
    };
    apply(&event, &[set], &mut vcpu, &env, &mut Completion::default()).unwrap();
    assert_eq!(
        vcpu.debug.rearm,
        Some((0, bp)),
        "stepped over, not re-fired"
    );
    assert_eq!(vcpu.regs.get(&Reg::Rax), Some(&5));
}
