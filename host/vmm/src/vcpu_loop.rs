//! The per-vCPU thread: run, classify, dispatch, validate, apply,
//! complete, repeat.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use vm_memory::GuestMemoryMmap;
use wasmvisor_exit::{
    apply, classify, constant_answer, default_actions, perform_access, validate, Action,
    ApplyError, Capabilities, Completion, Constant, ConstantAnswer, Direction, Exception,
    ExitEvent, ExitKind, Flow, GuestEnv, MemAccess, MemViolation, MemoryProtector, Route, Routes,
    Target,
};
use wasmvisor_kvm::{KickList, Kicker, RunOutcome, Vcpu};
use wasmvisor_policy::{CallError, PolicyInstance, Shared, Verdict};

use crate::builtin::BuiltinDevice;
use crate::ledger::OwnedProtector;
use crate::native::NativeHandler;
use crate::outcome::VmOutcome;
use crate::quiesce::Quiesce;
use crate::sandbox::OnFault;
use crate::stats::{PolicyStats, Stats};

/// State shared by all vCPU threads of one VM.
#[derive(Default)]
pub(crate) struct Control {
    /// Set when the VM must stop; every vCPU checks it after each exit.
    pub stop: AtomicBool,
}

/// Fault count and quarantine state of one policy, shared by its
/// instances on every vCPU.
pub(crate) struct PolicyHealth {
    faults: AtomicU64,
    quarantine_after: u64,
    quarantined: AtomicBool,
}

impl PolicyHealth {
    pub fn new(quarantine_after: u64) -> PolicyHealth {
        PolicyHealth {
            faults: AtomicU64::new(0),
            quarantine_after,
            quarantined: AtomicBool::new(false),
        }
    }

    /// Faults so far, over all vCPUs.
    pub fn faults(&self) -> u64 {
        self.faults.load(Ordering::Relaxed)
    }

    fn is_quarantined(&self) -> bool {
        self.quarantined.load(Ordering::Relaxed)
    }

    /// Counts a fault; returns the total and whether this one tipped the
    /// policy into quarantine.
    fn record(&self) -> (u64, bool) {
        let n = self.faults.fetch_add(1, Ordering::AcqRel) + 1;
        let tip = self.quarantine_after != 0
            && n >= self.quarantine_after
            && !self.quarantined.swap(true, Ordering::AcqRel);
        (n, tip)
    }
}

/// One loaded policy as a vCPU thread holds it.
pub(crate) struct VcpuPolicy {
    pub name: String,
    pub instance: PolicyInstance<Vcpu>,
    pub grants: Capabilities,
    pub on_fault: OnFault,
    pub health: Arc<PolicyHealth>,
    /// Its handle on page protections, which remembers what it protected.
    pub protector: Arc<OwnedProtector>,
    /// Answers it declared at init, given by the host without a call.
    pub constants: Vec<Constant>,
}

/// Everything a vCPU thread owns.
pub(crate) struct VcpuWorker {
    pub vcpu: Option<Vcpu>,
    /// By policy slot; `None` for a policy unloaded while the VM ran.
    pub policies: Vec<Option<VcpuPolicy>>,
    pub routes: Arc<Routes>,
    pub builtins: Vec<Arc<dyn BuiltinDevice>>,
    /// The embedder's native handler, consulted before the routes.
    pub native: Option<Arc<dyn NativeHandler>>,
    pub memory: GuestMemoryMmap,
    /// Page protections (memslot layout) of the VM.
    pub protector: Arc<dyn MemoryProtector>,
    /// Console, events and counters, for host-side events.
    pub shared: Arc<Shared>,
    ram_size: u64,
    pub control: Arc<Control>,
    /// Where this vCPU parks while the policies change.
    quiesce: Arc<Quiesce>,
    /// Where this vCPU's thread is registered for kicks.
    kicks: Arc<KickList>,
    pub stats: Stats,
    /// The policy whose stop action ends the VM, for the report.
    answered_by: Option<String>,
}

/// How this vCPU ended.
pub(crate) enum VcpuEnd {
    /// HLT, or stopped because another vCPU asked the VM to stop.
    Done(VmOutcome),
}

/// What every vCPU thread of one VM shares.
#[derive(Clone)]
pub(crate) struct VmHandles {
    pub routes: Arc<Routes>,
    pub builtins: Vec<Arc<dyn BuiltinDevice>>,
    pub native: Option<Arc<dyn NativeHandler>>,
    pub memory: GuestMemoryMmap,
    pub protector: Arc<dyn MemoryProtector>,
    pub shared: Arc<Shared>,
    pub control: Arc<Control>,
    pub quiesce: Arc<Quiesce>,
    pub kicks: Arc<KickList>,
}

impl VcpuWorker {
    pub fn new(vcpu: Vcpu, policies: Vec<VcpuPolicy>, vm: VmHandles) -> VcpuWorker {
        let names: Vec<String> = policies.iter().map(|p| p.name.clone()).collect();
        VcpuWorker {
            vcpu: Some(vcpu),
            policies: policies.into_iter().map(Some).collect(),
            ram_size: vm_memory::GuestMemoryBackend::last_addr(&vm.memory).0 + 1,
            routes: vm.routes,
            builtins: vm.builtins,
            native: vm.native,
            memory: vm.memory,
            protector: vm.protector,
            shared: vm.shared,
            control: vm.control,
            quiesce: vm.quiesce,
            kicks: vm.kicks,
            stats: Stats::new(&names),
            answered_by: None,
        }
    }

    fn vcpu(&mut self) -> &mut Vcpu {
        self.vcpu
            .as_mut()
            .expect("the vCPU is only lent out during a policy call")
    }

    /// Runs until this vCPU halts or the VM stops.
    pub fn run(mut self) -> (VcpuEnd, Stats) {
        let mut vcpu = self.vcpu.take().expect("vCPU present at start");
        let kicker = Kicker::arm(&mut vcpu);
        self.vcpu = Some(vcpu);
        let end = self.run_loop();
        let index = self.vcpu().index() as usize;
        self.kicks.leave(index);
        self.quiesce.leave(index);
        drop(kicker);
        (VcpuEnd::Done(end), self.stats)
    }

    fn run_loop(&mut self) -> VmOutcome {
        // Held for the whole run, so dispatch can borrow the routes while
        // it mutates the worker, without touching the shared refcount on
        // every exit.
        let mut routes = Arc::clone(&self.routes);
        let index = self.vcpu().index() as usize;
        loop {
            let exits = self.vcpu().exits();
            self.quiesce.note_exits(index, exits);
            if self.control.stop.load(Ordering::Acquire) {
                return VmOutcome::Halted;
            }
            if self.quiesce.requested() {
                self.park();
                routes = Arc::clone(&self.routes);
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
                    // Subscribers hear about it; the VM stops regardless.
                    let mut completion = Completion::default();
                    let _ = self.dispatch(&routes, &event, &mut completion);
                    return VmOutcome::GuestFault(fatal);
                }
                RunOutcome::Exit(mut event) => loop {
                    let mut completion = Completion::default();
                    let flow = match self.dispatch_exit(&routes, &mut event, &mut completion) {
                        Ok(flow) => flow,
                        Err(outcome) => return outcome,
                    };
                    let next = self.vcpu().complete(&completion);
                    match flow {
                        Flow::Continue => {}
                        Flow::Halt => return VmOutcome::Halted,
                        Flow::Stop(req) => {
                            return VmOutcome::Stopped {
                                policy: self.answered_by.take().unwrap_or_default(),
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
        }
    }
}

impl VcpuWorker {
    /// Holds this vCPU at its exit boundary while the policies change,
    /// then takes up the new generation.
    fn park(&mut self) {
        let index = self.vcpu().index() as usize;
        let policies = std::mem::take(&mut self.policies);
        let handover = self.quiesce.park(index, policies);
        self.policies = handover.policies;
        if let Some(routes) = handover.routes {
            self.routes = routes;
        }
        for (i, name) in handover.names.iter().enumerate() {
            match self.stats.policies.get_mut(i) {
                Some(row) => row.name.clone_from(name),
                None => self.stats.policies.push(PolicyStats {
                    name: name.clone(),
                    ..Default::default()
                }),
            }
        }
    }
}

/// Dispatch lives in its own impl block: it is the hot path.
impl VcpuWorker {
    /// An MMIO exit inside RAM is an access to a protected page (a
    /// read-only slot or a hole): it becomes a mem-violation event. If the
    /// page is no longer protected, the exit raced a layout change and the
    /// access is simply performed against RAM.
    fn dispatch_exit(
        &mut self,
        routes: &Routes,
        event: &mut ExitEvent,
        completion: &mut Completion,
    ) -> Result<Flow, VmOutcome> {
        if let ExitKind::Mmio(m) = event.kind {
            if m.gpa < self.ram_size {
                let env = GuestEnv {
                    mem: &self.memory,
                    protector: &*self.protector,
                };
                if self.protector.lookup(m.gpa).is_none() {
                    perform_access(event, &env, completion)
                        .map_err(|e| VmOutcome::HostFailure(e.to_string()))?;
                    return Ok(Flow::Continue);
                }
                event.kind = ExitKind::MemViolation(MemViolation {
                    gpa: m.gpa,
                    access: match m.direction {
                        Direction::Read => MemAccess::Read,
                        Direction::Write => MemAccess::Write,
                    },
                    size: m.size,
                    data: m.data,
                });
                let flow = self.dispatch(routes, event, completion);
                self.record_violation(event, completion);
                return flow;
            }
        }
        self.dispatch(routes, event, completion)
    }

    /// Writes a violation and its outcome to the event stream.
    fn record_violation(&self, event: &ExitEvent, completion: &Completion) {
        let ExitKind::MemViolation(v) = event.kind else {
            return;
        };
        let json = format!(
            "{{\"gpa\":\"{:#x}\",\"access\":\"{}\",\"size\":{},\"data\":\"{:#x}\",\"rip\":\"{:#x}\",\"answered_by\":{},\"read\":{}}}",
            v.gpa,
            match v.access {
                MemAccess::Read => "read",
                MemAccess::Write => "write",
                MemAccess::Execute => "execute",
            },
            v.size,
            v.data,
            event.rip,
            match &self.answered_by {
                Some(p) => format!("\"{p}\""),
                None => "null".to_string(),
            },
            completion
                .read
                .map_or("null".to_string(), |r| format!("\"{r:#x}\"")),
        );
        self.shared
            .emit_host("wasmvisor", event.vcpu, "mem-violation", &json);
    }

    /// Finds who answers `event`, gets the answer, checks and applies it.
    fn dispatch(
        &mut self,
        routes: &Routes,
        event: &ExitEvent,
        completion: &mut Completion,
    ) -> Result<Flow, VmOutcome> {
        self.stats.count_exit(&event.kind);
        self.answered_by = None;
        if let Some(native) = &self.native {
            if native.handle(event, completion) {
                self.stats.builtin += 1;
                return Ok(Flow::Continue);
            }
        }
        if let Route::Chain(targets) = classify(event, routes) {
            for target in targets {
                match *target {
                    Target::Policy(i) => {
                        if let Some(flow) = self.ask_policy(usize::from(i), event, completion)? {
                            return Ok(flow);
                        }
                    }
                    Target::Builtin(b) => {
                        if let Some(dev) = self.builtins.get(usize::from(b)) {
                            dev.handle(event, completion);
                            self.stats.builtin += 1;
                            return match dev.ends_run(event) {
                                Some(outcome) => Err(outcome),
                                None => Ok(Flow::Continue),
                            };
                        }
                    }
                }
            }
        }
        self.stats.default += 1;
        let env = GuestEnv {
            mem: &self.memory,
            protector: &*self.protector,
        };
        let vcpu = self.vcpu.as_mut().expect("vCPU present");
        default_actions(event, vcpu, &env, completion)
            .map_err(|e| VmOutcome::HostFailure(e.to_string()))
    }

    /// Asks policy `i`; `None` means it declined or faulted (fail-open:
    /// the next subscriber or the default handler answers).
    fn ask_policy(
        &mut self,
        i: usize,
        event: &ExitEvent,
        completion: &mut Completion,
    ) -> Result<Option<Flow>, VmOutcome> {
        let Some(policy) = self.policies.get_mut(i).and_then(Option::as_mut) else {
            return Ok(None);
        };
        if policy.health.is_quarantined() {
            return Ok(None);
        }
        // Declared constants are answered here, at native cost.
        if !policy.constants.is_empty() {
            if let Some(answer) = constant_answer(&policy.constants, &event.kind) {
                if let ConstantAnswer::Read(value) = answer {
                    completion.read = Some(value);
                }
                let stats = &mut self.stats.policies[i];
                stats.handled += 1;
                stats.constant += 1;
                return Ok(Some(Flow::Continue));
            }
        }
        let grants = policy.grants;
        let started = Instant::now();
        let verdict = policy.instance.handle_exit(event, &mut self.vcpu);
        let took = started.elapsed();
        let stats = &mut self.stats.policies[i];
        stats.time += took;
        stats.max_call_ns = stats.max_call_ns.max(took.as_nanos() as u64);
        let actions = match verdict {
            Ok(Verdict::Decline) => {
                self.stats.policies[i].declined += 1;
                return Ok(None);
            }
            Ok(Verdict::Handled(actions)) => actions,
            // A vCPU ioctl failing inside a host import is the host's
            // fault, not the policy's.
            Err(CallError::Vcpu(e)) => return Err(VmOutcome::HostFailure(e.to_string())),
            Err(e) => return self.fault(i, event, &e.to_string(), completion),
        };
        if let Err(fault) = validate(event, &actions, grants, &self.memory) {
            return self.fault(i, event, &format!("rejected answer: {fault}"), completion);
        }
        // The policy's own protector: its protect actions are on its ledger.
        let Some(policy) = self.policies[i].as_ref() else {
            return Ok(None);
        };
        let env = GuestEnv {
            mem: &self.memory,
            protector: &*policy.protector,
        };
        let vcpu = self
            .vcpu
            .as_mut()
            .expect("vCPU returned by the policy call");
        let flow = match apply(event, &actions, vcpu, &env, completion) {
            Ok(flow) => flow,
            // A protection change the layout refused is the policy's
            // mistake, not the host's.
            Err(ApplyError::Protect(e)) => {
                return self.fault(
                    i,
                    event,
                    &format!("protection change failed: {e}"),
                    completion,
                )
            }
            Err(e) => return Err(VmOutcome::HostFailure(e.to_string())),
        };
        self.stats.policies[i].handled += 1;
        if matches!(flow, Flow::Stop(_)) || matches!(event.kind, ExitKind::MemViolation(_)) {
            self.answered_by = self.policies[i].as_ref().map(|p| p.name.clone());
        }
        Ok(Some(flow))
    }

    /// Handles a policy fault: one log line, the quarantine count, then
    /// the policy's fault mode decides who finishes the exit.
    fn fault(
        &mut self,
        i: usize,
        event: &ExitEvent,
        reason: &str,
        completion: &mut Completion,
    ) -> Result<Option<Flow>, VmOutcome> {
        self.stats.policies[i].faults += 1;
        let Some(policy) = self.policies[i].as_ref() else {
            return Ok(None);
        };
        let (count, quarantined) = policy.health.record();
        let mode = match policy.on_fault {
            OnFault::Open => "failing open",
            OnFault::Gp => "raising #GP in the guest",
            OnFault::Stop => "stopping the VM",
        };
        eprintln!(
            "wasmvisor: policy {} fault {count} on vcpu {} at {} (rip {:#x}): {reason}; {mode}",
            policy.name,
            event.vcpu,
            exit_detail(&event.kind),
            event.rip
        );
        if quarantined {
            eprintln!(
                "wasmvisor: policy {} quarantined after {count} faults: it is skipped from now on",
                policy.name
            );
        }
        match policy.on_fault {
            OnFault::Open => Ok(None),
            // A shutdown cannot take an exception: let the default finish it.
            OnFault::Gp if matches!(event.kind, ExitKind::Shutdown { .. }) => Ok(None),
            OnFault::Gp => {
                let env = GuestEnv {
                    mem: &self.memory,
                    protector: &*self.protector,
                };
                let vcpu = self
                    .vcpu
                    .as_mut()
                    .expect("vCPU returned by the policy call");
                apply(
                    event,
                    &[Action::Inject(Exception::GP)],
                    vcpu,
                    &env,
                    completion,
                )
                .map(Some)
                .map_err(|e| VmOutcome::HostFailure(e.to_string()))
            }
            OnFault::Stop => Err(VmOutcome::PolicyFault {
                policy: policy.name.clone(),
                reason: format!(
                    "vcpu {} at {}: {reason}",
                    event.vcpu,
                    exit_detail(&event.kind)
                ),
            }),
        }
    }
}

/// Names an exit for a log line: kind and address.
fn exit_detail(kind: &ExitKind) -> String {
    match kind {
        ExitKind::Io(io) => format!("an io exit (port {:#x})", io.port),
        ExitKind::Mmio(m) => format!("an mmio exit (gpa {:#x})", m.gpa),
        ExitKind::Msr(m) => format!("an msr exit (msr {:#x})", m.index),
        ExitKind::MemViolation(m) => format!("a mem-violation exit (gpa {:#x})", m.gpa),
        ExitKind::Debug(_) => "a debug exit".to_string(),
        ExitKind::Hlt => "an hlt exit".to_string(),
        ExitKind::Shutdown { .. } => "a shutdown exit".to_string(),
    }
}
