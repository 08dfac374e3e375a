//! The per-vCPU thread: run, classify, dispatch, validate, apply,
//! complete, repeat.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use vm_memory::GuestMemoryMmap;
use wasmvisor_exit::{
    apply, classify, default_actions, validate, Capabilities, Completion, ExitEvent, ExitKind,
    Flow, Route, Routes, Target,
};
use wasmvisor_kvm::{Kicker, RunOutcome, Vcpu};
use wasmvisor_policy::{CallError, PolicyInstance, Verdict};

use crate::outcome::VmOutcome;
use crate::serial::NativeSerial;
use crate::stats::Stats;

/// State shared by all vCPU threads of one VM.
#[derive(Default)]
pub(crate) struct Control {
    /// Set when the VM must stop; every vCPU checks it after each exit.
    pub stop: AtomicBool,
}

/// One loaded policy as a vCPU thread holds it.
pub(crate) struct VcpuPolicy {
    pub name: String,
    pub instance: PolicyInstance<Vcpu>,
    pub grants: Capabilities,
}

/// Everything a vCPU thread owns.
pub(crate) struct VcpuWorker {
    pub vcpu: Option<Vcpu>,
    pub policies: Vec<VcpuPolicy>,
    pub routes: Arc<Routes>,
    pub builtins: Vec<NativeSerial>,
    pub memory: GuestMemoryMmap,
    pub control: Arc<Control>,
    pub stats: Stats,
    /// Faults already logged, so each is reported once.
    logged: HashSet<(usize, String)>,
    /// The policy whose stop action ends the VM, for the report.
    answered_by: Option<String>,
}

/// How this vCPU ended.
pub(crate) enum VcpuEnd {
    /// HLT, or stopped because another vCPU asked the VM to stop.
    Done(VmOutcome),
}

impl VcpuWorker {
    pub fn new(
        vcpu: Vcpu,
        policies: Vec<VcpuPolicy>,
        routes: Arc<Routes>,
        builtins: Vec<NativeSerial>,
        memory: GuestMemoryMmap,
        control: Arc<Control>,
    ) -> VcpuWorker {
        let names: Vec<String> = policies.iter().map(|p| p.name.clone()).collect();
        VcpuWorker {
            vcpu: Some(vcpu),
            policies,
            routes,
            builtins,
            memory,
            control,
            stats: Stats::new(&names),
            logged: HashSet::new(),
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
        drop(kicker);
        (VcpuEnd::Done(end), self.stats)
    }

    fn run_loop(&mut self) -> VmOutcome {
        loop {
            if self.control.stop.load(Ordering::Acquire) {
                return VmOutcome::Halted;
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
                    let _ = self.dispatch(&event, &mut completion);
                    return VmOutcome::GuestFault(fatal);
                }
                RunOutcome::Exit(mut event) => loop {
                    let mut completion = Completion::default();
                    let flow = match self.dispatch(&event, &mut completion) {
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

/// Dispatch lives in its own impl block: it is the hot path.
impl VcpuWorker {
    /// Finds who answers `event`, gets the answer, checks and applies it.
    fn dispatch(
        &mut self,
        event: &ExitEvent,
        completion: &mut Completion,
    ) -> Result<Flow, VmOutcome> {
        self.stats.count_exit(&event.kind);
        self.answered_by = None;
        let routes = Arc::clone(&self.routes);
        if let Route::Chain(targets) = classify(event, &routes) {
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
                            return Ok(Flow::Continue);
                        }
                    }
                }
            }
        }
        self.stats.default += 1;
        let vcpu = self.vcpu.as_mut().expect("vCPU present");
        default_actions(event, vcpu, completion).map_err(|e| VmOutcome::HostFailure(e.to_string()))
    }

    /// Asks policy `i`; `None` means it declined or faulted (fail-open:
    /// the next subscriber or the default handler answers).
    fn ask_policy(
        &mut self,
        i: usize,
        event: &ExitEvent,
        completion: &mut Completion,
    ) -> Result<Option<Flow>, VmOutcome> {
        let started = Instant::now();
        let policy = &mut self.policies[i];
        let verdict = policy.instance.handle_exit(event, &mut self.vcpu);
        self.stats.policies[i].time += started.elapsed();
        let actions = match verdict {
            Ok(Verdict::Decline) => {
                self.stats.policies[i].declined += 1;
                return Ok(None);
            }
            Ok(Verdict::Handled(actions)) => actions,
            // A vCPU ioctl failing inside a host import is the host's
            // fault, not the policy's.
            Err(CallError::Vcpu(e)) => return Err(VmOutcome::HostFailure(e.to_string())),
            Err(e) => {
                self.fault(i, event, &e.to_string());
                return Ok(None);
            }
        };
        let grants = self.policies[i].grants;
        if let Err(fault) = validate(event, &actions, grants, &self.memory) {
            self.fault(i, event, &fault.to_string());
            return Ok(None);
        }
        let vcpu = self
            .vcpu
            .as_mut()
            .expect("vCPU returned by the policy call");
        let flow = apply(event, &actions, vcpu, &self.memory, completion)
            .map_err(|e| VmOutcome::HostFailure(e.to_string()))?;
        self.stats.policies[i].handled += 1;
        if matches!(flow, Flow::Stop(_)) {
            self.answered_by = Some(self.policies[i].name.clone());
        }
        Ok(Some(flow))
    }

    /// Counts a policy fault and logs it the first time it happens.
    fn fault(&mut self, i: usize, event: &ExitEvent, reason: &str) {
        self.stats.policies[i].faults += 1;
        if self.logged.insert((i, reason.to_string())) {
            eprintln!(
                "wasmvisor: policy {} faulted on vcpu {} at a {} exit (rip {:#x}): {reason}; falling back to the next handler",
                self.policies[i].name,
                event.vcpu,
                event.kind.name(),
                event.rip
            );
        }
    }
}
