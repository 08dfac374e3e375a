//! The host contract, exercised with a policy that misbehaves on request
//! (`tests/fixtures/hostile`): each limit in an obeyed/violated
//! pair, every host import, every action, recovery after a trap.

mod common;

use std::time::{Duration, Instant};

use common::{io, vcpu, Capture, FakeVcpu, RAM_BYTES};
use wasmvisor_exit::{
    Action, Capabilities, Constant, ConstantTarget, Direction, EventSet, Exception, ExitEvent,
    ExitKind, GpaRange, ProtectRequest, Protection, Reg, StopRequest,
};
use wasmvisor_policy::{
    CallError, CpuidLeaf, Limits, PolicyError, PolicyImage, PolicyInstance, Verdict, WasiGrants,
};

const FILE: &str = "hostile_fixture.wasm";
const BUILD: &str = "make policies";

/// Ports of the fixture (see its `port` module).
mod port {
    pub const DECLINE: u16 = 0x10;
    pub const GET_RAX: u16 = 0x11;
    pub const PANIC: u16 = 0x12;
    pub const SPIN: u16 = 0x13;
    pub const HOG: u16 = 0x14;
    pub const WRITE_READ: u16 = 0x15;
    pub const OUTPUT: u16 = 0x16;
    pub const CALLS: u16 = 0x17;
    pub const CLOCK: u16 = 0x18;
    pub const EVERY_ACTION: u16 = 0x19;
    pub const READ: u16 = 0x1a;
    pub const UNSUPPORTED: u16 = 0x1b;
    pub const GET_CR3: u16 = 0x1c;
    pub const STDIO: u16 = 0x1d;
    pub const LATE_CONSTANT: u16 = 0x1f;
}

/// Host-error codes the fixture answers with.
const UNSUPPORTED: u64 = 0xe4;
const OUT_OF_RANGE: u64 = 0xe1;
const TOO_LARGE: u64 = 0xe2;
const NOT_GRANTED: u64 = 0xe3;

fn image() -> PolicyImage {
    common::load(FILE, BUILD)
}

fn start_with(capture: &Capture, vcpu: u32, grants: Capabilities) -> PolicyInstance<FakeVcpu> {
    let mut p = image()
        .instantiate(capture.context("fixture", vcpu, grants), &Limits::default())
        .expect("instantiates");
    p.init(&[]).expect("init");
    p
}

fn start(capture: &Capture) -> PolicyInstance<FakeVcpu> {
    start_with(capture, 0, Capabilities::default())
}

/// Calls the fixture on `port` and returns the value it completes with.
fn ask(p: &mut PolicyInstance<FakeVcpu>, port: u16, data: u32) -> Result<u64, CallError> {
    let mut vcpu = Some(vcpu(0x42));
    match p.handle_exit(&io(port, Direction::Read, data), &mut vcpu)? {
        Verdict::Handled(actions) => match actions.as_slice() {
            [Action::CompleteRead(v)] => Ok(*v),
            other => panic!("unexpected actions {other:?}"),
        },
        Verdict::Decline => panic!("unexpected decline"),
    }
}

#[test]
fn info_and_subscriptions_arrive_in_domain_terms() {
    let capture = Capture::new(None);
    let mut p = image()
        .instantiate::<FakeVcpu>(
            capture.context("fixture", 0, Capabilities::default()),
            &Limits::default(),
        )
        .unwrap();
    let info = p.info().unwrap();
    assert_eq!(
        (info.name.as_str(), info.version.as_str()),
        ("fixture", "0.1.0")
    );
    let subs = p.init(&[("colour".into(), "blue".into())]).unwrap();
    assert_eq!(subs.ports, vec![0x10..=0x1f]);
    assert_eq!(
        subs.mmio,
        vec![GpaRange {
            base: 0xd000_0000,
            len: 0x1000
        }]
    );
    assert_eq!(subs.cpuid, vec![0x4000_0000]);
    assert_eq!(
        subs.events,
        EventSet {
            hlt: true,
            ..EventSet::default()
        }
    );
    assert_eq!(
        subs.capabilities,
        Capabilities {
            write_memory: true,
            ..Capabilities::default()
        }
    );
}

#[test]
fn init_can_reject_or_trap() {
    let capture = Capture::new(None);
    let ctx = || capture.context("fixture", 0, Capabilities::default());
    let mut p = image()
        .instantiate::<FakeVcpu>(ctx(), &Limits::default())
        .unwrap();
    let err = p
        .init(&[("reject".into(), "no thanks".into())])
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "policy fixture rejected its configuration: no thanks"
    );

    let mut p = image()
        .instantiate::<FakeVcpu>(ctx(), &Limits::default())
        .unwrap();
    let err = p.init(&[("panic".into(), "1".into())]).unwrap_err();
    let PolicyError::Call { export, error, .. } = &err else {
        panic!("expected a call error, got {err}");
    };
    assert_eq!(*export, "init");
    assert!(matches!(error, CallError::Trap(_)), "{error}");
    assert!(!err.to_string().contains('\n'), "{err}");
}

#[test]
fn decline_and_other_exit_kinds() {
    let capture = Capture::new(None);
    let mut p = start(&capture);
    let mut vcpu = Some(vcpu(0));
    let decline = p.handle_exit(&io(port::DECLINE, Direction::Write, 0), &mut vcpu);
    assert_eq!(decline, Ok(Verdict::Decline));
    let hlt = ExitEvent {
        vcpu: 0,
        seq: 0,
        rip: 0,
        kind: ExitKind::Hlt,
    };
    assert_eq!(p.handle_exit(&hlt, &mut vcpu), Ok(Verdict::Decline));
}

#[test]
fn get_reg_reaches_the_lent_vcpu_which_comes_back() {
    let capture = Capture::new(None);
    let mut p = start(&capture);
    let mut vcpu = Some(vcpu(0xabcd));
    let verdict = p
        .handle_exit(&io(port::GET_RAX, Direction::Read, 0), &mut vcpu)
        .unwrap();
    assert_eq!(
        verdict,
        Verdict::Handled(vec![Action::CompleteRead(0xabcd)])
    );
    assert_eq!(vcpu.as_ref().map(|v| v.reads), Some(1));
}

#[test]
fn get_reg_without_a_vcpu_traps_and_the_instance_recovers() {
    let capture = Capture::new(None);
    let mut p = start(&capture);
    let mut none: Option<FakeVcpu> = None;
    let err = p
        .handle_exit(&io(port::GET_RAX, Direction::Read, 0), &mut none)
        .unwrap_err();
    assert_eq!(
        err,
        CallError::Trap("get-reg called outside an exit".into())
    );
    assert_eq!(ask(&mut p, port::GET_RAX, 0), Ok(0x42));
}

#[test]
fn a_vcpu_failure_is_a_host_fault_and_the_vcpu_comes_back() {
    let capture = Capture::new(None);
    let mut p = start(&capture);
    let mut vcpu = Some(vcpu(0));
    let err = p
        .handle_exit(&io(port::GET_CR3, Direction::Read, 0), &mut vcpu)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "a host import failed: KVM_GET_SREGS failed: injected failure"
    );
    assert!(vcpu.is_some());
}

#[test]
fn a_panic_traps_then_the_instance_is_rebuilt_and_reinitialised() {
    let capture = Capture::new(None);
    let mut p = start(&capture);
    assert_eq!(ask(&mut p, port::CALLS, 0), Ok(1));
    assert_eq!(ask(&mut p, port::CALLS, 0), Ok(2));
    let mut vcpu = Some(vcpu(0));
    let err = p
        .handle_exit(&io(port::PANIC, Direction::Read, 0), &mut vcpu)
        .unwrap_err();
    let CallError::Trap(msg) = &err else {
        panic!("expected a trap, got {err}");
    };
    assert!(!msg.contains('\n'), "{msg}");
    assert!(vcpu.is_some(), "the vCPU comes back after a trap");
    // A fresh instance: its state restarted.
    assert_eq!(ask(&mut p, port::CALLS, 0), Ok(1));
}

#[test]
fn a_spinning_policy_times_out_and_recovers() {
    let capture = Capture::new(None);
    let mut p = start(&capture);
    let begin = Instant::now();
    let err = ask(&mut p, port::SPIN, 1).unwrap_err();
    let took = begin.elapsed();
    assert_eq!(err, CallError::Timeout);
    assert_eq!(err.to_string(), "the policy ran past its deadline");
    assert!(took >= Duration::from_millis(9), "{took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(ask(&mut p, port::CALLS, 0), Ok(1));
}

#[test]
fn a_longer_deadline_is_honoured() {
    let capture = Capture::new(None);
    let limits = Limits {
        deadline: Duration::from_millis(60),
        ..Limits::default()
    };
    let mut p = image()
        .instantiate::<FakeVcpu>(
            capture.context("fixture", 0, Capabilities::default()),
            &limits,
        )
        .unwrap();
    p.init(&[]).unwrap();
    let begin = Instant::now();
    assert_eq!(ask(&mut p, port::SPIN, 1), Err(CallError::Timeout));
    assert!(begin.elapsed() >= Duration::from_millis(59));
}

#[test]
fn a_memory_hog_hits_the_cap_and_a_roomier_cap_lets_it_run() {
    let capture = Capture::new(None);
    let mut p = start(&capture);
    let err = ask(&mut p, port::HOG, 0).unwrap_err();
    let CallError::Limit {
        what,
        requested,
        limit,
    } = err
    else {
        panic!("expected a limit error, got {err}");
    };
    assert_eq!((what, limit), ("memory", 16 << 20));
    assert!(requested > limit);
    assert_eq!(ask(&mut p, port::CALLS, 0), Ok(1));

    // Touching 64 MiB of fresh pages takes longer than the default deadline.
    let roomy = Limits {
        memory_bytes: 128 << 20,
        deadline: Duration::from_secs(5),
        ..Limits::default()
    };
    let mut p = image()
        .instantiate::<FakeVcpu>(
            capture.context("fixture", 0, Capabilities::default()),
            &roomy,
        )
        .unwrap();
    p.init(&[]).unwrap();
    assert_eq!(ask(&mut p, port::HOG, 0), Ok(1));
}

#[test]
fn a_cap_below_the_initial_memory_fails_instantiation() {
    let capture = Capture::new(None);
    let tiny = Limits {
        memory_bytes: 256 << 10,
        ..Limits::default()
    };
    let err = image()
        .instantiate::<FakeVcpu>(
            capture.context("fixture", 0, Capabilities::default()),
            &tiny,
        )
        .unwrap_err();
    let PolicyError::Instantiate { error, .. } = &err else {
        panic!("expected an instantiation error, got {err}");
    };
    assert!(
        matches!(error, CallError::Limit { what: "memory", .. }),
        "{err}"
    );
}

#[test]
fn table_cap_obeyed_and_violated() {
    let capture = Capture::new(None);
    let instantiate = |table_elements| {
        let limits = Limits {
            table_elements,
            ..Limits::default()
        };
        image().instantiate::<FakeVcpu>(
            capture.context("fixture", 0, Capabilities::default()),
            &limits,
        )
    };
    // The default cap holds the policy's function table.
    let mut p = instantiate(Limits::default().table_elements).expect("fits the cap");
    p.init(&[]).expect("init");
    assert_eq!(ask(&mut p, port::CALLS, 0), Ok(1));
    // A cap of one element is below the table it needs: refused, precisely.
    let err = instantiate(1).unwrap_err();
    let PolicyError::Instantiate { error, .. } = &err else {
        panic!("expected an instantiation error, got {err}");
    };
    assert!(
        matches!(error, CallError::Limit { what: "table", .. }),
        "{err}"
    );
}

#[test]
fn wasi_grants_open_clocks_and_stdio() {
    let path = common::policy_path(FILE, BUILD);
    let granted = PolicyImage::load_with(
        common::engine(),
        &path,
        WasiGrants {
            clocks: true,
            stdio: true,
        },
    )
    .expect("loads");
    assert_eq!(
        granted.wasi(),
        WasiGrants {
            clocks: true,
            stdio: true
        }
    );
    let capture = Capture::new(None);
    let mut p = granted
        .instantiate::<FakeVcpu>(
            capture.context("fixture", 0, Capabilities::default()),
            &Limits::default(),
        )
        .expect("instantiates");
    p.init(&[]).expect("init");
    // With the clock granted, reading it is an answer, not a trap.
    assert!(ask(&mut p, port::CLOCK, 0).is_ok());
    // Stdio goes to the host's stderr, never to the guest console.
    assert_eq!(ask(&mut p, port::STDIO, 0), Ok(0x50));
    assert_eq!(capture.console.text(), "");
}

#[test]
fn guest_memory_access_needs_the_grant_and_is_bounds_checked() {
    let capture = Capture::new(None);
    let mut denied = start(&capture);
    assert_eq!(ask(&mut denied, port::WRITE_READ, 0x100), Ok(NOT_GRANTED));

    let grants = Capabilities {
        write_memory: true,
        ..Capabilities::default()
    };
    let mut p = start_with(&capture, 0, grants);
    assert_eq!(ask(&mut p, port::WRITE_READ, 0x100), Ok(0x100));
    assert_eq!(ask(&mut p, port::WRITE_READ, 0xdead_beef), Ok(OUT_OF_RANGE));
    let last = (RAM_BYTES - 4) as u32;
    assert_eq!(ask(&mut p, port::WRITE_READ, last), Ok(u64::from(last)));
    assert_eq!(ask(&mut p, port::WRITE_READ, last + 1), Ok(OUT_OF_RANGE));
    assert_eq!(ask(&mut p, port::READ, 0x200), Ok(16));
    assert_eq!(ask(&mut p, port::READ, 0xffff), Ok(TOO_LARGE));
    assert_eq!(
        ask(&mut p, port::READ, (RAM_BYTES - 8) as u32),
        Ok(OUT_OF_RANGE)
    );
}

#[test]
fn page_walks_read_the_vcpus_control_registers() {
    // translate and read-virt walk the guest's page tables from CR0, CR3,
    // CR4 and EFER of the lent vCPU; this fake fails control-register
    // reads, which is a host fault, not something the policy sees.
    let capture = Capture::new(None);
    let mut p = start(&capture);
    let err = ask(&mut p, port::UNSUPPORTED, 0).unwrap_err();
    assert!(matches!(err, CallError::Vcpu(_)), "{err}");
    // The instance is rebuilt and keeps serving.
    assert_eq!(ask(&mut p, port::CALLS, 0), Ok(1));
}

#[test]
fn console_log_events_and_shared_counters() {
    let dir = std::env::temp_dir().join(format!("wasmvisor-policy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let events = dir.join("events.jsonl");
    let capture = Capture::new(Some(&events));
    let mut vcpu0 = start_with(&capture, 0, Capabilities::default());
    let mut vcpu1 = start_with(&capture, 1, Capabilities::default());
    assert_eq!(ask(&mut vcpu0, port::OUTPUT, 0), Ok(1));
    assert_eq!(ask(&mut vcpu1, port::OUTPUT, 0), Ok(2));
    assert_eq!(capture.shared.counter(0, "hits"), Some(2));
    assert_eq!(
        capture.console.text(),
        "hello from vcpu 0\nhello from vcpu 1\n"
    );
    assert_eq!(
        capture.log.text(),
        "[policy fixture vcpu 0] info: exit 5 of 2\n[policy fixture vcpu 1] info: exit 5 of 2\n"
    );
    capture.shared.flush().unwrap();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&events)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[0]["policy"], "fixture");
    assert_eq!(lines[0]["kind"], "probe");
    assert_eq!(lines[0]["data"]["seq"], 5);
    assert_eq!(lines[1]["data"]["raw"], "not an object");
    assert_eq!(lines[2]["vcpu"], 1);
    assert_eq!(capture.shared.events_emitted(0), 4);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn wasi_clocks_are_not_provided() {
    let capture = Capture::new(None);
    let mut p = start(&capture);
    let err = ask(&mut p, port::CLOCK, 0).unwrap_err();
    let CallError::Trap(msg) = &err else {
        panic!("expected a trap, got {err}");
    };
    assert_eq!(
        msg,
        "wasi:clocks/monotonic-clock@0.2.12#now is not available to policies (no clocks)"
    );
    assert_eq!(ask(&mut p, port::CALLS, 0), Ok(1));
}

#[test]
fn wasi_stdio_and_environment_are_empty() {
    let capture = Capture::new(None);
    let mut p = start(&capture);
    // No arguments, no variables; printing neither fails nor shows up.
    assert_eq!(ask(&mut p, port::STDIO, 0), Ok(0x50));
    assert_eq!(capture.console.text(), "");
    assert_eq!(capture.log.text(), "");
}

#[test]
fn handles_are_shareable_and_instances_movable() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<wasmvisor_policy::PolicyEngine>();
    send_sync::<PolicyImage>();
    send_sync::<wasmvisor_policy::Shared>();
    send::<PolicyInstance<FakeVcpu>>();
}

#[test]
fn every_action_arrives_in_domain_terms() {
    let capture = Capture::new(None);
    let mut p = start(&capture);
    let mut vcpu = Some(vcpu(0));
    let verdict = p
        .handle_exit(&io(port::EVERY_ACTION, Direction::Write, 0), &mut vcpu)
        .unwrap();
    let expected = vec![
        Action::Resume,
        Action::CompleteRead(1),
        Action::Inject(Exception::GP),
        Action::SetReg {
            reg: Reg::Rbx,
            value: 2,
        },
        Action::WritePhys {
            gpa: 3,
            data: vec![4, 5],
        },
        Action::Allow,
        Action::Deny,
        Action::UnprotectRetry,
        Action::Protect(ProtectRequest {
            range: GpaRange {
                base: 0x1000,
                len: 0x1000,
            },
            mode: Protection::NoAccess,
        }),
        Action::Unprotect(GpaRange {
            base: 0x2000,
            len: 0x1000,
        }),
        Action::Step,
        Action::RemoveBreakpoint,
        Action::Pause,
        Action::Stop(StopRequest {
            clean: false,
            reason: "bye".into(),
        }),
    ];
    assert_eq!(verdict, Verdict::Handled(expected));
}

#[test]
fn cpuid_entries_pass_through_the_policy() {
    let capture = Capture::new(None);
    let mut p = start(&capture);
    let leaf = CpuidLeaf {
        function: 0x4000_0000,
        index: 0,
        eax: 1,
        ebx: 2,
        ecx: 3,
        edx: 4,
    };
    let out = p.cpuid(leaf).unwrap();
    assert_eq!(
        out,
        CpuidLeaf {
            eax: 0x1234,
            ebx: 0x4000_0000,
            ..leaf
        }
    );
}

#[test]
fn state_moves_to_the_next_generation() {
    let capture = Capture::new(None);
    let mut old = start(&capture);
    for _ in 0..3 {
        ask(&mut old, port::DECLINE + 1, 0).unwrap();
    }
    let state = old.save_state().unwrap();
    assert_eq!(state, 3u64.to_le_bytes());
    let mut new = start(&capture);
    new.restore_state(&state).unwrap();
    assert_eq!(ask(&mut new, port::CALLS, 0), Ok(4));
    let err = new.restore_state(b"bad").unwrap_err();
    assert_eq!(
        err.to_string(),
        "policy fixture rejected the saved state: expected 8 bytes of state, got 3"
    );
}

#[test]
fn instances_move_to_vcpu_threads() {
    let capture = Capture::new(None);
    let threads: Vec<_> = (0..2)
        .map(|vcpu| {
            let mut p = start_with(&capture, vcpu, Capabilities::default());
            std::thread::spawn(move || {
                (0..100)
                    .map(|_| ask(&mut p, port::CALLS, 0).unwrap())
                    .last()
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), Some(100));
    }
}

#[test]
fn constants_are_declared_in_init_only() {
    let capture = Capture::new(None);
    let mut p = start(&capture);
    assert_eq!(ask(&mut p, port::LATE_CONSTANT, 0), Ok(UNSUPPORTED));

    // Declared in init, the constant comes back with the subscriptions;
    // whether it lies inside them is the VMM's check at load.
    let ctx = capture.context("hostile.wasm", 0, Capabilities::default());
    let mut inst = image()
        .instantiate::<FakeVcpu>(ctx, &Limits::default())
        .unwrap();
    let subs = inst
        .init(&[("constant".to_string(), "0x500".to_string())])
        .unwrap();
    assert_eq!(
        subs.constants,
        vec![Constant {
            target: ConstantTarget::Ports(0x500..=0x500),
            value: 0
        }]
    );
    assert_eq!(
        wasmvisor_exit::constants_outside(&subs).as_deref(),
        Some("declares a constant answer for ports 0x500-0x500 outside its subscriptions")
    );
}
