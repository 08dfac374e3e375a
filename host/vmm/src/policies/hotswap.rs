//! Changing the policies of a running VM: swap one for another, load a
//! new one, unload one (ADR 0003).
//!
//! A change is prepared while the guest runs: the component is compiled
//! (or taken from the cache), instantiated and initialised on every vCPU,
//! its subscriptions checked and the new routes built. Only then are the
//! vCPUs brought to an exit boundary and held ([`Quiesce`]); while they are
//! held the outgoing instances hand their state to the incoming ones, the
//! outgoing policy's page protections are released and the incoming ones
//! applied, and the MSR filter is replaced. Every exit is therefore handled
//! by exactly one generation, and a change that fails at any step leaves
//! the old policies serving.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use wasmvisor_exit::{Routes, Subscriptions};
use wasmvisor_kvm::{CpuidEntry, Vm};
use wasmvisor_policy::PolicyInstance;

use crate::boot::cpuid::{ask, entries_of};
use crate::config::PolicySpec;
use crate::devices::builtin::BuiltinDevice;
use crate::policies::policy_set::{unique_name, PolicyEnv, Prepared, Slot};
use crate::policies::quiesce::{Handover, Paused, Quiesce};
use crate::policies::routing::{plan_routes, Claims, RoutePlan};
use crate::policies::slot::VcpuPolicy;
use crate::vcpu::LentVcpu;

/// How long the vCPUs get to reach an exit boundary. A policy call in
/// flight is bounded by its deadline, so this is only hit by a host stall.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);

/// One requested change.
#[derive(Debug, Clone)]
pub enum Change {
    /// Replace the policy called `name`, keeping its place in the chain.
    Swap { name: String, spec: PolicySpec },
    /// Add a policy at the end of the chain.
    Load { spec: PolicySpec },
    /// Remove the policy called `name`.
    Unload { name: String },
}

/// What a change did and what it cost.
#[derive(Debug, Clone, Serialize)]
pub struct ChangeReport {
    /// The policy generation now active.
    pub generation: u64,
    /// The policy changed.
    pub name: String,
    /// Compile (or cache load), instantiate and init on every vCPU.
    pub prepare_us: u64,
    /// From asking the vCPUs to pause until all run the new generation.
    pub switch_us: u64,
    /// From the request to active on every vCPU.
    pub total_us: u64,
    /// `hit`, `miss`, `rebuilt` or `off`; empty for an unload.
    pub cache: String,
    /// vCPUs that switched (those still running).
    pub vcpus: usize,
    /// Exits the VM handled between the request and the switch, all by
    /// the old generation (none are handled during the switch itself).
    pub exits_during: u64,
}

/// One loaded policy, for `policy list`.
#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    pub name: String,
    pub path: String,
    pub config: Vec<(String, String)>,
    pub generation: u64,
    pub ports: usize,
    pub msrs: usize,
    pub mmio: usize,
    pub cpuid: usize,
    pub protected_bytes: u64,
    pub faults: u64,
}

struct State {
    slots: Vec<Option<Slot>>,
    /// Names by slot, never shrinking, so statistics keep their rows.
    names: Vec<String>,
    generation: u64,
}

/// The coordinator of policy changes for one VM.
pub struct HotSwap {
    env: PolicyEnv,
    vm: Arc<Vm>,
    quiesce: Arc<Quiesce>,
    kick: Box<dyn Fn() + Send + Sync>,
    builtin_claims: Vec<Claims>,
    /// Told of the policies' MMIO ranges after each change.
    builtins: Vec<Arc<dyn BuiltinDevice>>,
    /// The CPUID table the vCPUs were started with (before per-vCPU APIC
    /// IDs): fixed from the first KVM_RUN on.
    cpuid: Vec<CpuidEntry>,
    default_deadline: Option<Duration>,
    state: Mutex<State>,
}

/// The parts of the VM a [`HotSwap`] works on.
pub(crate) struct HotSwapParts {
    pub env: PolicyEnv,
    pub vm: Arc<Vm>,
    pub quiesce: Arc<Quiesce>,
    pub kick: Box<dyn Fn() + Send + Sync>,
    pub builtin_claims: Vec<Claims>,
    pub builtins: Vec<Arc<dyn BuiltinDevice>>,
    pub cpuid: Vec<CpuidEntry>,
    pub default_deadline: Option<Duration>,
    pub slots: Vec<Slot>,
}

impl HotSwap {
    pub(crate) fn new(parts: HotSwapParts) -> HotSwap {
        let names = parts.slots.iter().map(|s| s.name.clone()).collect();
        HotSwap {
            env: parts.env,
            vm: parts.vm,
            quiesce: parts.quiesce,
            kick: parts.kick,
            builtin_claims: parts.builtin_claims,
            builtins: parts.builtins,
            cpuid: parts.cpuid,
            default_deadline: parts.default_deadline,
            state: Mutex::new(State {
                slots: parts.slots.into_iter().map(Some).collect(),
                names,
                generation: 1,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// KVM memslots the VM's RAM is split into by page protections (1 when
    /// nothing is protected).
    pub fn memslots(&self) -> usize {
        self.vm.memslots().slot_count()
    }

    /// The policies loaded now, in chain order.
    pub fn list(&self) -> (u64, Vec<Listing>) {
        let state = self.lock();
        let list = state
            .slots
            .iter()
            .flatten()
            .map(|s| Listing {
                name: s.name.clone(),
                path: s.spec.path.display().to_string(),
                config: s.spec.config.clone(),
                generation: s.generation,
                ports: s.subs.ports.len(),
                msrs: s.subs.msrs.len(),
                mmio: s.subs.mmio.len(),
                cpuid: s.subs.cpuid.len(),
                protected_bytes: s.protector.protected_bytes(),
                faults: s.health.faults(),
            })
            .collect();
        (state.generation, list)
    }

    /// The CPUID table the vCPUs were started with (before per-vCPU APIC
    /// IDs).
    pub(crate) fn cpuid(&self) -> &[CpuidEntry] {
        &self.cpuid
    }

    /// The loaded policies in chain order, with their specs.
    pub(crate) fn loaded(&self) -> Vec<(String, PolicySpec)> {
        self.lock()
            .slots
            .iter()
            .flatten()
            .map(|s| (s.name.clone(), s.spec.clone()))
            .collect()
    }

    /// The spec a loaded policy was loaded with (for reloading its file).
    pub fn spec_of(&self, name: &str) -> Option<PolicySpec> {
        self.lock()
            .slots
            .iter()
            .flatten()
            .find(|s| s.name == name)
            .map(|s| s.spec.clone())
    }

    /// Applies `change`, or explains why it was refused; a refused change
    /// leaves the running policies untouched.
    pub fn apply(&self, change: Change) -> Result<ChangeReport, String> {
        let started = Instant::now();
        let exits_before = self.quiesce.total_exits();
        let mut state = self.lock();
        let generation = state.generation + 1;
        let (index, name, spec) = target_of(&state, change)?;
        let mut prepared = self.prepare_incoming(&state, index, &name, spec, generation)?;
        let plan = self.plan(&state, index, prepared.as_ref())?;
        let routes = Arc::clone(&plan.routes);
        let prepare_us = started.elapsed().as_micros() as u64;
        let cache = cache_label(prepared.as_ref());

        // From here on the guest is held. Only one coordinator pauses the
        // vCPUs at a time (a snapshot or reset may be under way).
        let switch_started = Instant::now();
        let _coordinator = self.quiesce.coordinate();
        let (mut paused, exits_during) = self.pause_vcpus(exits_before)?;
        let mut incoming = take_instances(prepared.as_mut());
        hand_over_state(&mut paused, index, prepared.as_ref(), &mut incoming)
            .map_err(|e| self.resume_unchanged(e))?;
        self.commit_vm_state(&state, index, prepared.as_ref(), &routes)
            .map_err(|e| self.resume_unchanged(e))?;
        // Mapped device memory the new policies subscribe to is trapped
        // (and what they dropped is mapped) before any vCPU runs again.
        plan.tell_devices(&self.builtins);
        let names = record_name(&mut state, index, &name);
        let vcpus = paused.vcpus.len();
        let (handovers, outgoing) = handovers(
            paused,
            index,
            prepared.as_ref(),
            &mut incoming,
            &routes,
            &names,
        );
        self.quiesce.resume(handovers);
        // Active on every vCPU from here on.
        let switch_us = switch_started.elapsed().as_micros() as u64;
        let total_us = started.elapsed().as_micros() as u64;

        record_slot(&mut state, index, prepared.map(|p| p.slot), generation);
        drop(state);
        // The outgoing instances are dropped here, off the vCPU threads and
        // after the new generation is active (unmapping their memories
        // takes a while).
        drop(outgoing);
        Ok(ChangeReport {
            generation,
            name,
            prepare_us,
            switch_us,
            total_us,
            cache,
            vcpus,
            exits_during,
        })
    }

    /// Prepares the incoming policy (none for an unload) in slot `index`,
    /// with the VM's default deadline unless its spec sets one, and checks
    /// that it keeps the CPUID table as it is.
    fn prepare_incoming(
        &self,
        state: &State,
        index: usize,
        name: &str,
        spec: Option<PolicySpec>,
        generation: u64,
    ) -> Result<Option<Prepared>, String> {
        let mut prepared = match spec {
            Some(spec) if spec.sandbox.observe.is_some() => {
                return Err(format!(
                    "{name}: observers (@observe) are attached when the VM starts; one cannot be swapped or loaded into a running VM"
                ))
            }
            Some(mut spec) => {
                if let (false, Some(d)) = (spec.sandbox.deadline_set, self.default_deadline) {
                    spec.sandbox.limits.deadline = d;
                }
                Some(
                    self.env
                        .prepare(&spec, index, name, generation)
                        .map_err(|e| e.to_string())?,
                )
            }
            None => None,
        };
        let old_subs = state
            .slots
            .get(index)
            .and_then(|s| s.as_ref())
            .map(|s| &s.subs);
        self.check_cpuid(name, old_subs, prepared.as_mut())?;
        Ok(prepared)
    }

    /// Plans the routes of the chain with slot `index` holding `prepared`
    /// (empty for an unload).
    fn plan(
        &self,
        state: &State,
        index: usize,
        prepared: Option<&Prepared>,
    ) -> Result<RoutePlan, String> {
        let empty = Subscriptions::default();
        let subs: Vec<&Subscriptions> = (0..state.slots.len().max(index + 1))
            .map(|i| {
                if i == index {
                    prepared.map_or(&empty, |p| &p.slot.subs)
                } else {
                    state.slots[i].as_ref().map_or(&empty, |s| &s.subs)
                }
            })
            .collect();
        plan_routes(&subs, &self.builtin_claims)
    }

    /// Brings every running vCPU to an exit boundary and holds it; also
    /// returns the exits handled since `exits_before`.
    fn pause_vcpus(&self, exits_before: u64) -> Result<(Paused, u64), String> {
        let paused = self.quiesce.pause(&*self.kick, PAUSE_TIMEOUT)?;
        let exits_during = self.quiesce.total_exits().saturating_sub(exits_before);
        Ok((paused, exits_during))
    }

    /// Rolls back after a failure while the vCPUs are held: they resume
    /// with the policies they had. Returns `error`.
    fn resume_unchanged(&self, error: String) -> String {
        self.quiesce.resume(Vec::new());
        error
    }

    /// While the vCPUs are held: page protections and the MSR filter. On
    /// failure the outgoing policy's protections are put back.
    fn commit_vm_state(
        &self,
        state: &State,
        index: usize,
        incoming: Option<&Prepared>,
        routes: &Routes,
    ) -> Result<(), String> {
        let outgoing = state.slots.get(index).and_then(|s| s.as_ref());
        if let Some(old) = outgoing {
            old.protector
                .release()
                .map_err(|e| format!("cannot release the protections of {}: {e}", old.name))?;
        }
        let restore_old = || {
            if let Some(old) = outgoing {
                for req in &old.subs.protect {
                    let _ = wasmvisor_exit::MemoryProtector::protect(
                        &*old.protector,
                        req.range,
                        req.mode,
                    );
                }
            }
        };
        if let Some(p) = incoming {
            if let Err(e) = p.activate() {
                let _ = p.slot.protector.release();
                restore_old();
                return Err(e.to_string());
            }
        }
        if let Err(e) = self.vm.set_msr_filter(routes.msr_filter()) {
            if let Some(p) = incoming {
                let _ = p.slot.protector.release();
            }
            restore_old();
            return Err(e.to_string());
        }
        Ok(())
    }

    /// CPUID is fixed once the vCPUs have run: a change may keep the
    /// table as it is, never alter it.
    fn check_cpuid(
        &self,
        name: &str,
        old: Option<&Subscriptions>,
        new: Option<&mut Prepared>,
    ) -> Result<(), String> {
        let new_leaves: Vec<u32> = new
            .as_ref()
            .map(|p| p.slot.subs.cpuid.clone())
            .unwrap_or_default();
        if let Some(leaf) = old
            .iter()
            .flat_map(|s| s.cpuid.iter())
            .find(|l| !new_leaves.contains(l))
        {
            return Err(format!(
                "{name} shapes CPUID leaf {leaf:#x}, and the change would drop that: \
                 CPUID cannot change after the first KVM_RUN"
            ));
        }
        let Some(p) = new else { return Ok(()) };
        let Some(inst) = p.instances.first_mut() else {
            return Ok(());
        };
        for &function in &new_leaves {
            for entry in entries_of(&self.cpuid, function) {
                let out = ask(inst, &entry)?;
                if out != entry {
                    return Err(format!(
                        "{name} would change CPUID leaf {function:#x}.{} \
                         (eax {:#x} ebx {:#x} ecx {:#x} edx {:#x} to eax {:#x} ebx {:#x} ecx {:#x} edx {:#x}): \
                         CPUID cannot change after the first KVM_RUN",
                        entry.index, entry.eax, entry.ebx, entry.ecx, entry.edx,
                        out.eax, out.ebx, out.ecx, out.edx
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The slot, name and spec (none for an unload) `change` concerns.
fn target_of(state: &State, change: Change) -> Result<(usize, String, Option<PolicySpec>), String> {
    let find = |state: &State, name: &str| {
        state
            .slots
            .iter()
            .position(|s| s.as_ref().is_some_and(|s| s.name == name))
            .ok_or_else(|| format!("no policy named `{name}` is loaded"))
    };
    let (index, name, spec) = match change {
        Change::Swap { name, spec } => (find(state, &name)?, name, Some(spec)),
        Change::Unload { name } => (find(state, &name)?, name, None),
        Change::Load { spec } => {
            let taken = state.slots.iter().flatten().map(|s| s.name.as_str());
            let name = unique_name(&spec.path, taken);
            (state.slots.len(), name, Some(spec))
        }
    };
    if index > usize::from(u8::MAX) {
        return Err("too many policies have been loaded into this VM".into());
    }
    Ok((index, name, spec))
}

/// The cache outcome of the incoming policy; empty for an unload.
fn cache_label(prepared: Option<&Prepared>) -> String {
    prepared
        .map(|p| p.slot.cache.label().to_string())
        .unwrap_or_default()
}

/// Takes the incoming policy's instances, by vCPU index.
fn take_instances(prepared: Option<&mut Prepared>) -> Vec<Option<PolicyInstance<LentVcpu>>> {
    prepared
        .map(|p| p.instances.drain(..).map(Some).collect())
        .unwrap_or_default()
}

/// State handoff, vCPU by vCPU: the outgoing instance has handled its last
/// exit, the incoming one has not handled its first.
fn hand_over_state(
    paused: &mut Paused,
    index: usize,
    prepared: Option<&Prepared>,
    incoming: &mut [Option<PolicyInstance<LentVcpu>>],
) -> Result<(), String> {
    let Some(p) = prepared else { return Ok(()) };
    for (vcpu, policies) in &mut paused.vcpus {
        let old = policies.get_mut(index).and_then(Option::as_mut);
        let new = incoming.get_mut(*vcpu).and_then(Option::as_mut);
        if let (Some(old), Some(new)) = (old, new) {
            let handoff = old
                .instance
                .save_state()
                .and_then(|bytes| new.restore_state(&bytes));
            if let Err(e) = handoff {
                return Err(format!("state handoff to {} failed: {e}", p.slot.name));
            }
        }
    }
    Ok(())
}

/// Gives slot `index` a name if it is new; returns the names by slot.
fn record_name(state: &mut State, index: usize, name: &str) -> Vec<String> {
    if index == state.names.len() {
        state.names.push(name.to_owned());
    }
    state.names.clone()
}

/// The new generation for each held vCPU: its policies with slot `index`
/// replaced by the incoming instance (none for an unload), and the new
/// routes. Also returns the outgoing instances, in vCPU order.
fn handovers(
    paused: Paused,
    index: usize,
    prepared: Option<&Prepared>,
    incoming: &mut [Option<PolicyInstance<LentVcpu>>],
    routes: &Arc<Routes>,
    names: &[String],
) -> (Vec<(usize, Handover)>, Vec<Option<VcpuPolicy>>) {
    let mut outgoing = Vec::new();
    let handovers = paused
        .vcpus
        .into_iter()
        .map(|(vcpu, mut policies)| {
            if policies.len() <= index {
                policies.resize_with(index + 1, || None);
            }
            let new = match (prepared, incoming.get_mut(vcpu).and_then(Option::take)) {
                (Some(p), Some(instance)) => Some(p.slot.for_vcpu(instance)),
                _ => None,
            };
            outgoing.push(std::mem::replace(&mut policies[index], new));
            (
                vcpu,
                Handover {
                    policies,
                    routes: Some(Arc::clone(routes)),
                    names: names.to_vec(),
                    apply: None,
                },
            )
        })
        .collect();
    (handovers, outgoing)
}

/// Puts `slot` (none after an unload) in place `index` and makes
/// `generation` the active one.
fn record_slot(state: &mut State, index: usize, slot: Option<Slot>, generation: u64) {
    if index == state.slots.len() {
        state.slots.push(slot);
    } else {
        state.slots[index] = slot;
    }
    state.generation = generation;
}
