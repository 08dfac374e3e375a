//! Exit dispatch, apart from the vCPU thread: for one exit, find who
//! answers it (the embedder's hook, the policies in route order with their
//! declared constants, fault modes and quarantine, the built-in devices,
//! then the default handler), check the answer and apply it to the vCPU.
//! It is generic over the vCPU (`VcpuAccess`), so tests drive it with a
//! fake vCPU and real policy components, without KVM (`tests.rs`).

use std::sync::Arc;
use std::time::Instant;
use wasmvisor_exit::GuestRam;

use wasmvisor_exit::{
    apply, classify, constant_answer, default_actions, perform_access, validate, Action,
    ApplyError, Completion, ConstantAnswer, Direction, Exception, ExitEvent, ExitKind, Flow,
    GuestEnv, MemAccess, MemViolation, MemoryProtector, Route, Routes, Target, VcpuAccess,
};
use wasmvisor_policy::{CallError, Shared, Verdict};

use crate::devices::builtin::BuiltinDevice;
use crate::outcome::VmOutcome;
use crate::policies::sandbox::OnFault;
use crate::policies::slot::VcpuPolicy;
use crate::stats::Stats;
use crate::vcpu::hook::ExitHook;

#[cfg(test)]
mod tests;

/// Policy calls timed without `--stats`: one in this many.
pub(crate) const DEFAULT_TIME_EVERY: u32 = 16;

/// What one vCPU's exits are dispatched through.
pub(crate) struct Dispatcher<V> {
    /// The vCPU; lent to a policy's store during its call.
    pub vcpu: Option<V>,
    /// By policy slot; `None` for a policy unloaded while the VM ran.
    pub policies: Vec<Option<VcpuPolicy<V>>>,
    pub builtins: Vec<Arc<dyn BuiltinDevice>>,
    /// The embedder's exit hook, consulted before the routes.
    pub hook: Option<Arc<dyn ExitHook>>,
    pub memory: GuestRam,
    /// Page protections (memslot layout) of the VM.
    pub protector: Arc<dyn MemoryProtector>,
    /// Console, events and counters, for host-side events.
    pub shared: Arc<Shared>,
    ram_size: u64,
    pub stats: Stats,
    /// The policy whose answer ended the exit, when it matters for the
    /// report (a stop) or the event stream (a memory violation).
    pub answered_by: Option<String>,
    /// Policy calls are timed one in this many (an `Instant` pair costs
    /// 70-100 ns here); 1 with `--stats`.
    pub time_every: u32,
}

/// What a dispatcher is built from, besides its vCPU and policies.
pub(crate) struct DispatchParts {
    pub builtins: Vec<Arc<dyn BuiltinDevice>>,
    pub hook: Option<Arc<dyn ExitHook>>,
    pub memory: GuestRam,
    pub protector: Arc<dyn MemoryProtector>,
    pub shared: Arc<Shared>,
}

impl<V> Dispatcher<V> {
    pub fn new(vcpu: V, policies: Vec<VcpuPolicy<V>>, parts: DispatchParts) -> Dispatcher<V> {
        let names: Vec<String> = policies.iter().map(|p| p.name.clone()).collect();
        Dispatcher {
            vcpu: Some(vcpu),
            policies: policies.into_iter().map(Some).collect(),
            ram_size: vm_memory::GuestMemoryBackend::last_addr(&parts.memory).0 + 1,
            builtins: parts.builtins,
            hook: parts.hook,
            memory: parts.memory,
            protector: parts.protector,
            shared: parts.shared,
            stats: Stats::new(&names),
            answered_by: None,
            time_every: DEFAULT_TIME_EVERY,
        }
    }
}

impl<V: VcpuAccess + Send + 'static> Dispatcher<V> {
    /// An MMIO exit inside RAM is an access to a protected page (a
    /// read-only slot or a hole): it becomes a mem-violation event. If the
    /// page is no longer protected, the exit raced a layout change and the
    /// access is simply performed against RAM.
    pub fn dispatch_exit(
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
    pub fn dispatch(
        &mut self,
        routes: &Routes,
        event: &ExitEvent,
        completion: &mut Completion,
    ) -> Result<Flow, VmOutcome> {
        self.stats.count_exit(&event.kind);
        self.answered_by = None;
        if let Some(hook) = &self.hook {
            if hook.handle(event, completion) {
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
        // An observer never answers: it gets a copy, and the next
        // subscriber answers at once.
        if let Some(ring) = &policy.observer {
            ring.push(event);
            self.stats.policies[i].declined += 1;
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
        // Sampled by exit, so that every policy of a sampled exit is timed
        // (by call, two policies taking turns would see one of them only).
        let started = event
            .seq
            .is_multiple_of(u64::from(self.time_every))
            .then(Instant::now);
        let verdict = policy.instance.handle_exit(event, &mut self.vcpu);
        if let Some(started) = started {
            // A sample stands for the calls between samples.
            let took = started.elapsed();
            let stats = &mut self.stats.policies[i];
            stats.time += took * self.time_every;
            stats.max_call_ns = stats.max_call_ns.max(took.as_nanos() as u64);
        }
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
