//! Helpers shared by the contract tests: where built policies live, a fake
//! vCPU, and instance contexts over a small guest RAM.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use wasmvisor_exit::GuestRam;

use vm_memory::GuestAddress;
use wasmvisor_exit::testing::FakeOp;
use wasmvisor_exit::{Capabilities, Direction, ExitEvent, ExitKind, IoExit, Reg};
use wasmvisor_policy::{CaptureConsole, InstanceContext, PolicyEngine, PolicyImage, Shared};

/// Guest RAM size of the test contexts.
pub const RAM_BYTES: usize = 1 << 20;

/// Directory of the built policies: `WASMVISOR_POLICY_DIR`, or the
/// workspace's `target/wasm32-wasip2/policy`.
pub fn policy_dir() -> PathBuf {
    match std::env::var_os("WASMVISOR_POLICY_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/wasm32-wasip2/policy"),
    }
}

/// Path of a built policy; fails the test with the build command if the
/// file is missing.
pub fn policy_path(file: &str, build: &str) -> PathBuf {
    let path = policy_dir().join(file);
    assert!(
        path.is_file(),
        "{} is missing: build it with `{build}` from the workspace root, \
         or point WASMVISOR_POLICY_DIR at a directory holding it",
        path.display()
    );
    path
}

/// One engine for the whole test binary (its ticker thread is shared).
pub fn engine() -> &'static PolicyEngine {
    static ENGINE: OnceLock<PolicyEngine> = OnceLock::new();
    ENGINE.get_or_init(|| PolicyEngine::new().expect("engine"))
}

/// Loads a built policy, compiling each file once per test binary.
pub fn load(file: &str, build: &str) -> PolicyImage {
    static IMAGES: OnceLock<Mutex<HashMap<String, PolicyImage>>> = OnceLock::new();
    let mut images = IMAGES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    images
        .entry(file.to_string())
        .or_insert_with(|| {
            PolicyImage::load(engine(), &policy_path(file, build)).expect("policy loads")
        })
        .clone()
}

/// Shared state capturing console and log output.
pub struct Capture {
    pub console: Arc<CaptureConsole>,
    pub log: Arc<CaptureConsole>,
    pub shared: Arc<Shared>,
}

impl Capture {
    pub fn new(events: Option<&std::path::Path>) -> Capture {
        let console = Arc::new(CaptureConsole::new());
        let log = Arc::new(CaptureConsole::new());
        let shared = Shared::new(console.clone(), events)
            .expect("shared")
            .with_log(log.clone());
        Capture {
            console,
            log,
            shared: Arc::new(shared),
        }
    }

    /// A context for vCPU `vcpu` of a two-vCPU VM.
    pub fn context(&self, name: &str, vcpu: u32, grants: Capabilities) -> InstanceContext {
        InstanceContext {
            policy_index: 0,
            policy_name: name.into(),
            vcpu_index: vcpu,
            vcpu_count: 2,
            memory: GuestRam::from_ranges(&[(GuestAddress(0), RAM_BYTES)]).expect("guest RAM"),
            grants,
            shared: Arc::clone(&self.shared),
            protector: None,
            irq: Default::default(),
            snapshots: Default::default(),
        }
    }
}

/// A port I/O exit.
pub fn io(port: u16, direction: Direction, data: u32) -> ExitEvent {
    ExitEvent {
        vcpu: 0,
        seq: 5,
        rip: 0x1000,
        kind: ExitKind::Io(IoExit {
            port,
            size: 4,
            direction,
            data,
        }),
    }
}

pub use wasmvisor_exit::testing::FakeVcpu;

/// A vCPU whose RAX reads `rax` and other general registers 0; control
/// registers fail like a broken `KVM_GET_SREGS` ioctl.
pub fn vcpu(rax: u64) -> FakeVcpu {
    FakeVcpu::new()
        .with_reg(Reg::Rax, rax)
        .failing(FakeOp::GetControlReg)
}
