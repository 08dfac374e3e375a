//! The per-vCPU thread: run the vCPU, hand each exit to the dispatcher
//! (`dispatch`), complete it, repeat; park while the policies change.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use wasmvisor_exit::GuestRam;

use wasmvisor_exit::{Completion, ExitEvent, ExitKind, Flow, MemoryProtector, Routes};
use wasmvisor_kvm::{KickList, Kicker, RunOutcome, Vcpu, VcpuState};
use wasmvisor_policy::Shared;
use wasmvisor_policy::SnapshotOp;

use crate::devices::builtin::BuiltinDevice;
use crate::gdb::{Claim, GdbLink, Holder};
use crate::outcome::VmOutcome;
use crate::policies::quiesce::{Parked, Quiesce};
use crate::policies::slot::VcpuPolicy;
use crate::snapshot::{HeldVcpu, Snapshots};
use crate::stats::{PolicyStats, Stats};
use crate::vcpu::dispatch::{DispatchParts, Dispatcher};
use crate::vcpu::hook::ExitHook;
use crate::vcpu::LentVcpu;

/// Set when the VM must stop; every vCPU checks it after each exit.
#[derive(Default)]
pub(crate) struct StopFlag {
    pub stop: AtomicBool,
}

/// Everything a vCPU thread owns.
pub(crate) struct VcpuWorker {
    /// Dispatch of this vCPU's exits, holding the vCPU and its policies.
    d: Dispatcher<LentVcpu>,
    pub routes: Arc<Routes>,
    pub control: Arc<StopFlag>,
    /// Where this vCPU parks while the policies change.
    quiesce: Arc<Quiesce>,
    /// Where this vCPU's thread is registered for kicks.
    kicks: Arc<KickList>,
    /// Snapshots, baselines and resets, which a policy may ask for.
    snapshots: Arc<Snapshots>,
    /// A state this vCPU could not take back: the run ends with it.
    failed: Option<String>,
    /// `--hold-on-fault`: a guest failure holds this vCPU for inspection.
    hold_on_fault: bool,
    /// `--gdb`: the stub's end of this VM (docs/gdb.md).
    gdb: Option<Arc<GdbLink>>,
}

/// What every vCPU thread of one VM shares.
#[derive(Clone)]
pub(crate) struct VmHandles {
    pub routes: Arc<Routes>,
    pub builtins: Vec<Arc<dyn BuiltinDevice>>,
    pub hook: Option<Arc<dyn ExitHook>>,
    pub memory: GuestRam,
    pub protector: Arc<dyn MemoryProtector>,
    pub shared: Arc<Shared>,
    pub control: Arc<StopFlag>,
    pub quiesce: Arc<Quiesce>,
    pub kicks: Arc<KickList>,
    pub snapshots: Arc<Snapshots>,
    pub hold_on_fault: bool,
    pub gdb: Option<Arc<GdbLink>>,
    /// Time every policy call (`--stats`).
    pub time_every_call: bool,
}

impl VcpuWorker {
    pub fn new(vcpu: Vcpu, policies: Vec<VcpuPolicy>, vm: VmHandles) -> VcpuWorker {
        let parts = DispatchParts {
            builtins: vm.builtins,
            hook: vm.hook,
            memory: vm.memory,
            protector: vm.protector,
            shared: vm.shared,
        };
        let mut d = Dispatcher::new(Box::new(vcpu), policies, parts);
        if vm.time_every_call {
            d.time_every = 1;
        }
        d.stats.timed_every = d.time_every;
        VcpuWorker {
            d,
            routes: vm.routes,
            control: vm.control,
            quiesce: vm.quiesce,
            kicks: vm.kicks,
            snapshots: vm.snapshots,
            failed: None,
            hold_on_fault: vm.hold_on_fault,
            gdb: vm.gdb,
        }
    }

    fn vcpu(&mut self) -> &mut Vcpu {
        self.d
            .vcpu
            .as_mut()
            .expect("the vCPU is only lent out during a policy call")
    }

    /// Runs until this vCPU halts or the VM stops.
    pub fn run(mut self) -> (VmOutcome, Stats) {
        let mut vcpu = self.d.vcpu.take().expect("vCPU present at start");
        let kicker = Kicker::arm(&mut vcpu);
        self.d.vcpu = Some(vcpu);
        let end = self.run_loop();
        let index = self.vcpu().index() as usize;
        self.kicks.leave(index);
        self.quiesce.leave(index);
        if let Some(gdb) = &self.gdb {
            gdb.leave(index);
        }
        drop(kicker);
        (end, self.d.stats)
    }

    fn run_loop(&mut self) -> VmOutcome {
        // Held for the whole run, so dispatch can borrow the routes while
        // it mutates the worker, without touching the shared refcount on
        // every exit.
        let mut routes = Arc::clone(&self.routes);
        let index = self.vcpu().index() as usize;
        self.gdb_hold_if_wanted();
        loop {
            let exits = self.vcpu().exits();
            self.quiesce.note_exits(index, exits);
            if self.control.stop.load(Ordering::Acquire) {
                return VmOutcome::Halted;
            }
            if self.quiesce.requested() {
                self.park();
                self.gdb_hold_if_wanted();
                routes = Arc::clone(&self.routes);
            }
            if let Some(reason) = self.failed.take() {
                return VmOutcome::HostFailure(reason);
            }
            let outcome = match self.vcpu().run() {
                Ok(o) => o,
                Err(e) => return VmOutcome::HostFailure(e.to_string()),
            };
            match outcome {
                RunOutcome::Interrupted => continue,
                RunOutcome::Fatal(fatal) => {
                    let event = ExitEvent {
                        vcpu: fatal.vcpu,
                        seq: self.vcpu().exits(),
                        rip: fatal.rip,
                        kind: ExitKind::Shutdown {
                            reason: fatal.reason,
                        },
                    };
                    // Subscribers hear about it; the VM stops unless one of
                    // them resets it (a fuzzer's finding).
                    let mut completion = Completion::default();
                    let _ = self.d.dispatch(&routes, &event, &mut completion);
                    if self.snapshots.take_request(index) == Some(SnapshotOp::Reset)
                        && self.run_snapshot_op(SnapshotOp::Reset)
                    {
                        routes = Arc::clone(&self.routes);
                        continue;
                    }
                    if self.hold_on_fault {
                        self.hold(&fatal);
                    }
                    return VmOutcome::GuestFault(fatal);
                }
                RunOutcome::Exit(event) if self.gdb_takes(&event) => {
                    routes = Arc::clone(&self.routes);
                    continue;
                }
                RunOutcome::Exit(mut event) => loop {
                    let mut completion = Completion::default();
                    let flow = match self.d.dispatch_exit(&routes, &mut event, &mut completion) {
                        Ok(flow) => flow,
                        Err(outcome) => return outcome,
                    };
                    let next = self.vcpu().complete(&completion);
                    match flow {
                        Flow::Continue => {}
                        Flow::Halt => return VmOutcome::Halted,
                        Flow::Stop(req) => {
                            return VmOutcome::Stopped {
                                policy: self.d.answered_by.take().unwrap_or_default(),
                                clean: req.clean,
                                reason: req.reason,
                            }
                        }
                    }
                    match next {
                        Some(e) => event = e,
                        None => break,
                    }
                },
            }
            if let Some(op) = self.snapshots.take_request(index) {
                self.run_snapshot_op(op);
                routes = Arc::clone(&self.routes);
            }
        }
    }
}

impl VcpuWorker {
    /// Carries out a policy's `snapshot-baseline` or `snapshot-reset` once
    /// the exit that asked is complete, holding the other vCPUs. Returns
    /// whether the VM was reset (by this request, or by another
    /// coordinator while this vCPU waited, which makes it moot).
    fn run_snapshot_op(&mut self, op: SnapshotOp) -> bool {
        let quiesce = Arc::clone(&self.quiesce);
        let _coordinator = loop {
            if let Some(g) = quiesce.try_coordinate() {
                break g;
            }
            if quiesce.requested() {
                if self.park() {
                    return true;
                }
            } else {
                std::thread::yield_now();
            }
        };
        let index = self.vcpu().index() as usize;
        let snapshots = Arc::clone(&self.snapshots);
        // A baseline needs this vCPU's state; a reset only replaces it.
        let state = match op {
            SnapshotOp::Baseline => Some(snapshots.capture_vcpu(self.vcpu())),
            SnapshotOp::Reset => None,
        };
        let own = HeldVcpu {
            index,
            policies: std::mem::take(&mut self.d.policies),
            state,
            apply: None,
        };
        let (own, result) = snapshots.for_vcpu(op, own);
        self.d.policies = own.policies;
        let reset = own.apply.is_some();
        if let Some(state) = own.apply {
            self.apply_state(&state);
        }
        if let Err(e) = result {
            let what = match op {
                SnapshotOp::Baseline => "snapshot-baseline",
                SnapshotOp::Reset => "snapshot-reset",
            };
            eprintln!("wasmvisor: {what} asked by a policy on vCPU {index} failed: {e}");
        }
        reset
    }

    /// Keeps a vCPU whose guest failed where it stopped until the VM is
    /// stopped (a signal, another vCPU's ending), parking like a running
    /// one so that `vm dump` and `vm snapshot` can read it.
    fn hold(&mut self, fatal: &wasmvisor_kvm::FatalExit) {
        eprintln!(
            "wasmvisor: {fatal}; holding the VM for inspection (--hold-on-fault): `wasmvisor vm dump` or `vm snapshot` reads it, Ctrl-C ends the run"
        );
        while !self.control.stop.load(Ordering::Acquire) {
            if self.quiesce.requested() {
                self.park();
                // gdb may look at the failed vCPU too; it does not run again.
                self.gdb_hold_if_wanted();
            } else if let Some(gdb) = self.gdb.clone().filter(|g| g.is_attached()) {
                // A failed vCPU that gdb resumes stops again at once.
                let index = self.vcpu().index() as usize;
                gdb.hold(index, Some(crate::gdb::Stop::Fault), self);
            } else {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }

    /// This vCPU's state after completing its exit in flight.
    fn capture_state(&mut self) -> Result<Box<VcpuState>, String> {
        let snapshots = Arc::clone(&self.snapshots);
        snapshots.capture_vcpu(self.vcpu())
    }

    /// Puts `state` into this vCPU, after completing the exit in flight
    /// (whose completion would otherwise land on the new state at the
    /// next `KVM_RUN`); a failure ends the run.
    fn apply_state(&mut self, state: &VcpuState) {
        let snapshots = Arc::clone(&self.snapshots);
        let result = snapshots
            .settle_vcpu(self.vcpu())
            .and_then(|()| self.vcpu().restore_state(state).map_err(|e| e.to_string()));
        if let Err(e) = result {
            self.failed = Some(format!("cannot restore vCPU state: {e}"));
        }
    }
}

impl VcpuWorker {
    /// Holds this vCPU at its exit boundary while the policies change or a
    /// snapshot is taken, then takes up the new generation (and the state
    /// of a reset). Returns whether the vCPU's state was replaced.
    fn park(&mut self) -> bool {
        let index = self.vcpu().index() as usize;
        let policies = std::mem::take(&mut self.d.policies);
        let state = self.quiesce.capture_wanted().then(|| self.capture_state());
        let handover = self.quiesce.park(index, Parked { policies, state });
        self.d.policies = handover.policies;
        let replaced = handover.apply.is_some();
        if let Some(state) = handover.apply {
            self.apply_state(&state);
        }
        if let Some(routes) = handover.routes {
            self.routes = routes;
        }
        for (i, name) in handover.names.iter().enumerate() {
            match self.d.stats.policies.get_mut(i) {
                Some(row) => row.name.clone_from(name),
                None => self.d.stats.policies.push(PolicyStats {
                    name: name.clone(),
                    ..Default::default()
                }),
            }
        }
        replaced
    }
}

/// The vCPU's side of gdb (docs/gdb.md); nothing runs here without
/// `--gdb`.
impl VcpuWorker {
    /// Holds this vCPU for gdb if gdb stopped the VM (or waits to attach).
    fn gdb_hold_if_wanted(&mut self) {
        if let Some(gdb) = self.gdb.clone() {
            if gdb.hold_wanted() {
                let index = self.vcpu().index() as usize;
                gdb.hold(index, None, self);
            }
        }
    }

    /// Whether gdb takes this exit (its breakpoint or step, a write to a
    /// page it watches): then it is not dispatched, and the vCPU holds for
    /// gdb if it is a stop.
    fn gdb_takes(&mut self, event: &ExitEvent) -> bool {
        let Some(gdb) = self.gdb.as_ref().filter(|g| g.is_attached()).cloned() else {
            return false;
        };
        let vcpu = self
            .d
            .vcpu
            .as_mut()
            .expect("the vCPU is only lent out during a policy call");
        match gdb.claims(event, vcpu, &self.d.memory) {
            Claim::No => false,
            Claim::Done => true,
            Claim::Stop(stop) => {
                let index = self.vcpu().index() as usize;
                gdb.hold(index, Some(stop), self);
                true
            }
        }
    }
}

impl Holder for VcpuWorker {
    fn held_vcpu(&mut self) -> &mut Vcpu {
        self.vcpu()
    }

    fn park_if_asked(&mut self) {
        if self.quiesce.requested() {
            self.park();
        }
    }

    fn stopping(&self) -> bool {
        self.control.stop.load(Ordering::Acquire)
    }
}
