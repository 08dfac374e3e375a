//! The dispatcher without KVM: a fake vCPU (`wasmvisor_exit::testing`),
//! real policy components (the `hostile` fixture, built by `make
//! policies`), real built-in devices and routes. What each port of the
//! fixture does is in tests/fixtures/hostile/src/lib.rs.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use wasmvisor_exit::GuestRam;

use vm_memory::GuestAddress;
use wasmvisor_exit::testing::{io_exit, FakeVcpu};
use wasmvisor_exit::{Completion, Direction, Exception, ExitEvent, Flow, ProtectionMap, Routes};
use wasmvisor_policy::{CaptureConsole, InstanceContext, PolicyEngine, PolicyImage, Shared};

use super::{DispatchParts, Dispatcher};
use crate::devices::builtin::BuiltinDevice;
use crate::devices::debug_exit::DebugExit;
use crate::devices::i8042::I8042;
use crate::outcome::VmOutcome;
use crate::policies::ledger::OwnedProtector;
use crate::policies::sandbox::{OnFault, Sandbox};
use crate::policies::slot::{PolicyHealth, VcpuPolicy};

const RAM: usize = 1 << 20;
/// Ports of the fixture (`hostile`).
const DECLINE: u16 = 0x10;
const GET_RAX: u16 = 0x11;
const PANIC: u16 = 0x12;

fn engine() -> &'static PolicyEngine {
    static ENGINE: OnceLock<PolicyEngine> = OnceLock::new();
    ENGINE.get_or_init(|| PolicyEngine::new().expect("engine"))
}

fn fixture() -> PolicyImage {
    static IMAGE: OnceLock<PolicyImage> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../target/wasm32-wasip2/policy/hostile_fixture.wasm");
            assert!(
                path.is_file(),
                "{} is missing: run `make policies` first",
                path.display()
            );
            PolicyImage::load(engine(), &path).expect("the fixture loads")
        })
        .clone()
}

/// One dispatcher with the fixture as its only policy, configured with
/// `config`, failing as `on_fault` says, and `builtins` behind it.
struct Setup {
    d: Dispatcher<FakeVcpu>,
    routes: Routes,
}

fn setup(
    config: &[(&str, &str)],
    on_fault: OnFault,
    quarantine_after: u64,
    builtins: Vec<Arc<dyn BuiltinDevice>>,
) -> Setup {
    let memory = GuestRam::from_ranges(&[(GuestAddress(0), RAM)]).expect("RAM");
    let shared = Arc::new(
        Shared::new(Arc::new(CaptureConsole::new()), None)
            .expect("shared")
            .with_log(Arc::new(CaptureConsole::new())),
    );
    let protector: Arc<dyn wasmvisor_exit::MemoryProtector> =
        Arc::new(Mutex::new(ProtectionMap::new(RAM as u64)));
    let sandbox = Sandbox::default();
    let ctx = InstanceContext {
        policy_index: 0,
        policy_name: "hostile".into(),
        vcpu_index: 0,
        vcpu_count: 1,
        memory: memory.clone(),
        grants: sandbox.grants,
        shared: Arc::clone(&shared),
        protector: None,
        irq: Default::default(),
        snapshots: Default::default(),
    };
    let mut instance = fixture()
        .instantiate::<FakeVcpu>(ctx, &sandbox.limits)
        .expect("instance");
    let config: Vec<(String, String)> = config
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let subs = instance.init(&config).expect("init");
    let claims: Vec<_> = builtins.iter().map(|b| b.claims()).collect();
    let routes = Routes::build(&[&subs], &claims).expect("routes");
    let policy = VcpuPolicy {
        name: "hostile".into(),
        instance,
        grants: subs.capabilities,
        on_fault,
        health: Arc::new(PolicyHealth::new(quarantine_after)),
        protector: Arc::new(OwnedProtector::new(Arc::clone(&protector), RAM as u64)),
        constants: subs.constants.clone(),
        drives_snapshots: false,
        observer: None,
    };
    let parts = DispatchParts {
        builtins,
        hook: None,
        memory,
        protector,
        shared,
    };
    Setup {
        d: Dispatcher::new(FakeVcpu::new(), vec![policy], parts),
        routes,
    }
}

fn io(port: u16, direction: Direction, data: u32) -> ExitEvent {
    io_exit(port, 1, direction, data)
}

impl Setup {
    fn exit(
        &mut self,
        port: u16,
        direction: Direction,
        data: u32,
    ) -> (Result<Flow, VmOutcome>, Completion) {
        let mut completion = Completion::default();
        let mut event = io(port, direction, data);
        let flow = self
            .d
            .dispatch_exit(&self.routes, &mut event, &mut completion);
        (flow, completion)
    }

    fn stats(&self) -> &crate::stats::PolicyStats {
        &self.d.stats.policies[0]
    }
}

#[test]
fn an_answer_is_applied_to_the_vcpu() {
    let mut s = setup(&[], OnFault::Open, 0, vec![]);
    s.d.vcpu = Some(FakeVcpu::new().with_reg(wasmvisor_exit::Reg::Rax, 0x5a));
    let (flow, c) = s.exit(GET_RAX, Direction::Read, 0);
    assert_eq!(flow, Ok(Flow::Continue));
    assert_eq!(
        c.read,
        Some(0x5a),
        "the fixture read RAX through the lent vCPU"
    );
    assert_eq!((s.stats().handled, s.stats().faults), (1, 0));
}

#[test]
fn a_fault_fails_open_to_the_default_handler() {
    let mut s = setup(&[], OnFault::Open, 0, vec![]);
    let (flow, c) = s.exit(PANIC, Direction::Read, 0);
    assert_eq!(flow, Ok(Flow::Continue));
    assert_eq!(
        c.read,
        Some(0xff),
        "the default answer of an unclaimed port read"
    );
    assert_eq!((s.stats().faults, s.d.stats.default), (1, 1));
}

#[test]
fn a_fault_raises_gp_when_the_policy_says_so() {
    let mut s = setup(&[], OnFault::Gp, 0, vec![]);
    let (flow, _) = s.exit(PANIC, Direction::Write, 1);
    assert_eq!(flow, Ok(Flow::Continue));
    let vcpu = s.d.vcpu.as_ref().expect("the vCPU came back");
    assert_eq!(vcpu.injected, vec![Exception::GP]);
    assert_eq!(s.d.stats.default, 0, "the #GP answered the exit");
}

#[test]
fn a_fault_stops_the_vm_when_the_policy_fails_closed() {
    let mut s = setup(&[], OnFault::Stop, 0, vec![]);
    let (flow, _) = s.exit(PANIC, Direction::Read, 0);
    match flow {
        Err(VmOutcome::PolicyFault { policy, reason }) => {
            assert_eq!(policy, "hostile");
            assert!(reason.contains("port 0x12"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_policy_is_quarantined_after_its_faults() {
    let mut s = setup(&[], OnFault::Open, 2, vec![]);
    let _ = s.exit(PANIC, Direction::Read, 0);
    let health = Arc::clone(&s.d.policies[0].as_ref().unwrap().health);
    assert!(!health.is_quarantined());
    let _ = s.exit(PANIC, Direction::Read, 0);
    assert!(health.is_quarantined(), "two faults tip it over");
    assert_eq!(health.faults(), 2);
    // From now on it is skipped, even for exits it would answer.
    let (flow, c) = s.exit(GET_RAX, Direction::Read, 0);
    assert_eq!(flow, Ok(Flow::Continue));
    assert_eq!(c.read, Some(0xff), "the default handler answered");
    assert_eq!((s.stats().handled, s.stats().faults), (0, 2));
}

#[test]
fn declared_constants_are_answered_without_a_call() {
    let mut s = setup(&[("constant", "0x11")], OnFault::Open, 0, vec![]);
    assert_eq!(s.d.policies[0].as_ref().unwrap().constants.len(), 1);
    let (flow, c) = s.exit(GET_RAX, Direction::Read, 0);
    assert_eq!(flow, Ok(Flow::Continue));
    assert_eq!(c.read, Some(0), "the declared value, not RAX");
    assert_eq!((s.stats().handled, s.stats().constant), (1, 1));
    assert_eq!(
        s.stats().time,
        std::time::Duration::ZERO,
        "no call was made"
    );
}

#[test]
fn the_i8042_reset_ends_the_run() {
    let mut s = setup(&[], OnFault::Open, 0, vec![Arc::new(I8042)]);
    let (flow, c) = s.exit(0x64, Direction::Read, 0);
    assert_eq!((flow, c.read), (Ok(Flow::Continue), Some(0)));
    let (flow, _) = s.exit(0x64, Direction::Write, 0xfe);
    assert_eq!(flow, Err(VmOutcome::Reset));
    assert_eq!(s.d.stats.builtin, 2);
}

#[test]
fn a_declined_exit_goes_down_the_chain_to_a_builtin_device() {
    // The fixture subscribes 0x10-0x1f and declines 0x10; the debug-exit
    // device there answers what it declines.
    let mut s = setup(
        &[],
        OnFault::Open,
        0,
        vec![Arc::new(DebugExit::new(DECLINE))],
    );
    let (flow, c) = s.exit(DECLINE, Direction::Read, 0);
    assert_eq!((flow, c.read), (Ok(Flow::Continue), Some(0)));
    assert_eq!((s.stats().declined, s.d.stats.builtin), (1, 1));
    let (flow, _) = s.exit(DECLINE, Direction::Write, 3);
    assert_eq!(
        flow,
        Err(VmOutcome::DebugExit {
            port: DECLINE,
            value: 3
        })
    );
}
