//! Snapshots, restore, fast reset and memory dumps (`docs/snapshots.md`).
//!
//! Every operation runs with every vCPU held at an exit boundary, through
//! the same [`Quiesce`] a hot swap uses, and each held vCPU has completed
//! its exit (`Vcpu::settle`) and read its state before parking. Then:
//!
//! - a **snapshot** writes the vCPUs, the VM's irqchip, PIT and clock,
//!   the built-in devices, every policy's `save-state` and sparse RAM into
//!   a directory ([`format`]);
//! - a **baseline** keeps the same in memory, RAM as a copy of its
//!   non-zero pages, and turns on KVM's dirty log;
//! - a **reset** copies back only the pages written since (KVM's log for
//!   the guest's writes, the RAM mapping's bitmap for the host's) and puts
//!   back the rest of the baseline; each vCPU applies its own state when
//!   it resumes.
//!
//! The coordinator is the control socket's thread, or a vCPU thread when
//! a policy asks through `snapshot-baseline`/`snapshot-reset`: that vCPU
//! does not park, it holds the others and works on itself directly.

mod dump;
pub mod format;
mod memory;
mod restore;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use wasmvisor_exit::GuestRam;
use wasmvisor_kvm::{Vcpu, VcpuState, Vm, VmState};
use wasmvisor_policy::{KernelProfile, SnapshotOp, SnapshotRefusal, SnapshotRequests};

use crate::devices::builtin::BuiltinDevice;
use crate::policies::hotswap::HotSwap;
use crate::policies::quiesce::{Handover, Instances, Paused, Quiesce};

pub use dump::DumpReport;
pub use format::{Snapshot, SnapshotError};
pub use restore::{dump_snapshot, Restore};

/// How long the other vCPUs get to reach an exit boundary.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);

/// One vCPU held for an operation: its policy instances, the state it
/// parked with, and the state it is to resume with.
pub(crate) struct HeldVcpu {
    pub index: usize,
    pub policies: Instances,
    pub state: Option<Result<Box<VcpuState>, String>>,
    pub apply: Option<Box<VcpuState>>,
}

/// What a baseline holds.
struct Baseline {
    ram: memory::SparseRam,
    captured: Captured,
}

/// The VM's state but for RAM, as read while its vCPUs are held.
pub(crate) struct Captured {
    pub vcpus: Vec<(usize, Box<VcpuState>)>,
    pub vm: VmState,
    pub devices: Vec<(&'static str, Vec<u8>)>,
    /// Per policy slot with an instance: its name and the `save-state` of
    /// each held vCPU's instance; `None` for a policy that drives the
    /// snapshots (a reset leaves its state alone).
    pub policies: Vec<CapturedPolicy>,
}

pub(crate) struct CapturedPolicy {
    pub slot: usize,
    pub name: String,
    pub drives: bool,
    pub states: Vec<(usize, Vec<u8>)>,
}

/// What a reset did, for the control reply and the benchmark.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ResetReport {
    /// Pages copied back (written by the guest or the host since).
    pub pages: u64,
    /// The reset with every vCPU held: reading the dirty pages, copying
    /// them back, the VM, device and policy state. Holding the vCPUs and
    /// their putting back their own state as they resume come on top
    /// (a client's round trip shows the whole).
    pub total_us: u64,
    /// Of which: copying the pages back.
    pub copy_us: u64,
    /// Resets so far.
    pub resets: u64,
}

/// What a baseline or snapshot took.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TakeReport {
    pub vcpus: usize,
    /// Bytes of non-zero RAM held (baseline) or written (snapshot).
    pub ram_bytes: u64,
    pub total_us: u64,
}

/// The snapshot coordinator of one VM.
pub(crate) struct Snapshots {
    vm: Arc<Vm>,
    memory: GuestRam,
    mem_bytes: u64,
    quiesce: Arc<Quiesce>,
    kick: Box<dyn Fn() + Send + Sync>,
    builtins: Vec<Arc<dyn BuiltinDevice>>,
    /// Why this VM cannot be snapshotted, if it cannot.
    refusal: Option<String>,
    /// Per vCPU: the operation a policy asked for during the exit in
    /// flight (0 none, 1 baseline, 2 reset).
    requests: Vec<AtomicU8>,
    baseline: Mutex<Option<Baseline>>,
    resets: AtomicU64,
    /// The VM as a snapshot's manifest describes it.
    record: format::VmRecord,
    /// The guest kernel's profile, for a dump's VMCOREINFO.
    kernel: Option<Arc<KernelProfile>>,
}

/// The parts of a VM a [`Snapshots`] works on.
pub(crate) struct SnapshotParts {
    pub vm: Arc<Vm>,
    pub mem_bytes: u64,
    pub vcpus: usize,
    pub quiesce: Arc<Quiesce>,
    pub kick: Box<dyn Fn() + Send + Sync>,
    pub builtins: Vec<Arc<dyn BuiltinDevice>>,
    pub refusal: Option<String>,
    pub record: format::VmRecord,
    pub kernel: Option<Arc<KernelProfile>>,
}

const NO_REQUEST: u8 = 0;
const BASELINE: u8 = 1;
const RESET: u8 = 2;

impl Snapshots {
    pub fn new(parts: SnapshotParts) -> Snapshots {
        Snapshots {
            memory: parts.vm.memory().clone(),
            vm: parts.vm,
            mem_bytes: parts.mem_bytes,
            quiesce: parts.quiesce,
            kick: parts.kick,
            builtins: parts.builtins,
            refusal: parts.refusal,
            requests: (0..parts.vcpus)
                .map(|_| AtomicU8::new(NO_REQUEST))
                .collect(),
            baseline: Mutex::new(None),
            resets: AtomicU64::new(0),
            record: parts.record,
            kernel: parts.kernel,
        }
    }

    fn lock_baseline(&self) -> std::sync::MutexGuard<'_, Option<Baseline>> {
        self.baseline.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// vCPU side, after each exit: the operation a policy asked for while
    /// handling it, if any.
    #[inline]
    pub fn take_request(&self, vcpu: usize) -> Option<SnapshotOp> {
        let slot = self.requests.get(vcpu)?;
        if slot.load(Ordering::Relaxed) == NO_REQUEST {
            return None;
        }
        match slot.swap(NO_REQUEST, Ordering::AcqRel) {
            BASELINE => Some(SnapshotOp::Baseline),
            RESET => Some(SnapshotOp::Reset),
            _ => None,
        }
    }

    /// The vCPU's state after completing its exit in flight.
    pub fn capture_vcpu(&self, vcpu: &mut Vcpu) -> Result<Box<VcpuState>, String> {
        vcpu.settle().map_err(|e| e.to_string())?;
        let msrs = self.vm.saved_msrs(vcpu).map_err(|e| e.to_string())?;
        vcpu.save_state(&msrs, self.vm.has_pc_platform())
            .map(Box::new)
            .map_err(|e| format!("vCPU {}: {e}", vcpu.index()))
    }

    /// Runs `op` on the VM with every vCPU held, from a thread that is not
    /// a vCPU (the control socket). `capture`: the vCPUs read their state.
    pub fn with_held<R>(
        &self,
        capture: bool,
        op: impl FnOnce(&Self, &mut [HeldVcpu]) -> Result<R, String>,
    ) -> Result<R, String> {
        let _coordinator = self.quiesce.coordinate();
        let paused = self
            .quiesce
            .pause_others(None, capture, &*self.kick, PAUSE_TIMEOUT)?;
        let mut held = held_from(paused);
        let result = op(self, &mut held);
        self.quiesce.resume(handovers(held));
        result
    }

    /// Runs a policy's request on the VM from vCPU `own.index`, which the
    /// caller has already made the coordinator and whose state it read:
    /// the other vCPUs are held, `op` runs on all, and they resume.
    /// Returns `own` with what it is to resume with.
    pub fn for_vcpu(&self, op: SnapshotOp, own: HeldVcpu) -> (HeldVcpu, Result<(), String>) {
        let me = own.index;
        // A reset replaces the vCPUs' state without reading it.
        let capture = op == SnapshotOp::Baseline;
        let paused = match self
            .quiesce
            .pause_others(Some(me), capture, &*self.kick, PAUSE_TIMEOUT)
        {
            Ok(p) => p,
            Err(e) => return (own, Err(e)),
        };
        let mut held = held_from(paused);
        held.push(own);
        held.sort_by_key(|h| h.index);
        let result = match op {
            SnapshotOp::Baseline => self.take_baseline(&mut held).map(|_| ()),
            SnapshotOp::Reset => self.reset(&mut held).map(|_| ()),
        };
        let at = held
            .iter()
            .position(|h| h.index == me)
            .expect("own vCPU is held");
        let own = held.remove(at);
        self.quiesce.resume(handovers(held));
        (own, result)
    }

    /// Completes the vCPU's exit in flight, so that a state put into it
    /// next is not disturbed by KVM finishing that exit.
    pub fn settle_vcpu(&self, vcpu: &mut Vcpu) -> Result<(), String> {
        vcpu.settle().map_err(|e| e.to_string())
    }

    /// Reads everything but RAM from the held VM.
    pub fn capture(&self, held: &mut [HeldVcpu]) -> Result<Captured, String> {
        if let Some(why) = &self.refusal {
            return Err(format!("cannot snapshot this VM: {why}"));
        }
        let mut vcpus = Vec::new();
        for h in held.iter() {
            match &h.state {
                Some(Ok(s)) => vcpus.push((h.index, s.clone())),
                Some(Err(e)) => return Err(format!("cannot read vCPU {}: {e}", h.index)),
                None => return Err(format!("vCPU {} parked without its state", h.index)),
            }
        }
        let vm = self.vm.save_state().map_err(|e| e.to_string())?;
        let devices = self.builtins.iter().filter_map(|d| d.save()).collect();
        let mut policies: Vec<CapturedPolicy> = Vec::new();
        for h in held.iter_mut() {
            for (slot, p) in h.policies.iter_mut().enumerate() {
                let Some(p) = p else { continue };
                let at = match policies.iter().position(|c| c.slot == slot) {
                    Some(at) => at,
                    None => {
                        policies.push(CapturedPolicy {
                            slot,
                            name: p.name.clone(),
                            drives: p.drives_snapshots,
                            states: Vec::new(),
                        });
                        policies.len() - 1
                    }
                };
                let state = p
                    .instance
                    .save_state()
                    .map_err(|e| format!("policy {}: save-state failed: {e}", p.name))?;
                policies[at].states.push((h.index, state));
            }
        }
        Ok(Captured {
            vcpus,
            vm,
            devices,
            policies,
        })
    }

    /// Takes the baseline a reset returns to.
    pub fn take_baseline(&self, held: &mut [HeldVcpu]) -> Result<TakeReport, String> {
        let started = Instant::now();
        let captured = self.capture(held)?;
        let ram =
            memory::SparseRam::capture(&self.memory, self.mem_bytes).map_err(|e| e.to_string())?;
        self.vm
            .memslots()
            .start_dirty_log()
            .map_err(|e| format!("cannot start KVM's dirty log: {e}"))?;
        memory::clear_host_dirty(&self.memory);
        let report = TakeReport {
            vcpus: captured.vcpus.len(),
            ram_bytes: ram.held_bytes(),
            total_us: 0,
        };
        *self.lock_baseline() = Some(Baseline { ram, captured });
        Ok(TakeReport {
            total_us: started.elapsed().as_micros() as u64,
            ..report
        })
    }

    /// Puts the held VM back to the baseline; each vCPU gets the state to
    /// resume with in `apply`.
    pub fn reset(&self, held: &mut [HeldVcpu]) -> Result<ResetReport, String> {
        let started = Instant::now();
        let guard = self.lock_baseline();
        let base = guard.as_ref().ok_or("no baseline to reset to")?;
        let mut pages = self
            .vm
            .memslots()
            .take_dirty_pages()
            .map_err(|e| format!("cannot read KVM's dirty log: {e}"))?;
        pages.extend(memory::take_host_dirty(&self.memory));
        pages.sort_unstable();
        pages.dedup();
        let copy_started = Instant::now();
        base.ram.restore(&self.memory, &pages)?;
        // The copies just made are the baseline's own bytes.
        memory::clear_host_dirty(&self.memory);
        let copy_us = copy_started.elapsed().as_micros() as u64;
        let c = &base.captured;
        self.vm.restore_state(&c.vm).map_err(|e| e.to_string())?;
        restore_devices(&self.builtins, &c.devices)?;
        let states: HashMap<usize, &Box<VcpuState>> =
            c.vcpus.iter().map(|(i, s)| (*i, s)).collect();
        for h in held.iter_mut() {
            let state = states.get(&h.index).ok_or_else(|| {
                format!(
                    "vCPU {} was not running when the baseline was taken",
                    h.index
                )
            })?;
            h.apply = Some((*state).clone());
            restore_policies(h, &c.policies, false)?;
        }
        let resets = self.resets.fetch_add(1, Ordering::Relaxed) + 1;
        Ok(ResetReport {
            pages: pages.len() as u64,
            total_us: started.elapsed().as_micros() as u64,
            copy_us,
            resets,
        })
    }

    /// Holds the VM and writes a snapshot of it into `dir`, with the
    /// policies as `swap` has them loaded.
    pub fn write_dir(&self, swap: &HotSwap, dir: &Path) -> Result<TakeReport, String> {
        if let Some(why) = &self.refusal {
            return Err(format!("cannot snapshot this VM: {why}"));
        }
        let loaded = swap.loaded();
        let cpuid: Vec<format::CpuidRecord> = swap
            .cpuid()
            .iter()
            .map(|&e| format::CpuidRecord::from(e))
            .collect();
        let describe = |_: &Captured| {
            Ok(format::Manifest {
                wasmvisor: env!("CARGO_PKG_VERSION").into(),
                vm: self.record.clone(),
                cpuid: cpuid.clone(),
                vcpus: Vec::new(),
                vm_state: "vm.bin".into(),
                memory: "memory.bin".into(),
                devices: Vec::new(),
                policies: loaded
                    .iter()
                    .map(|(name, spec)| format::PolicyRecord {
                        name: name.clone(),
                        path: std::path::absolute(&spec.path)
                            .unwrap_or_else(|_| spec.path.clone())
                            .display()
                            .to_string(),
                        config: spec.config.clone(),
                        sandbox: spec.sandbox.settings(),
                        states: Vec::new(),
                    })
                    .collect(),
                files: Vec::new(),
            })
        };
        self.with_held(true, |s, held| s.write(held, dir, &describe))
    }

    /// Holds the VM and writes its RAM and registers as an ELF core.
    pub fn dump(&self, path: &Path) -> Result<dump::DumpReport, String> {
        self.with_held(true, |s, held| {
            let mut vcpus = Vec::new();
            for h in held.iter() {
                match &h.state {
                    Some(Ok(state)) => vcpus.push((h.index, state.clone())),
                    Some(Err(e)) => return Err(format!("cannot read vCPU {}: {e}", h.index)),
                    None => return Err(format!("vCPU {} parked without its state", h.index)),
                }
            }
            dump::to_file(path, &s.memory, s.mem_bytes, &vcpus, s.kernel.as_deref())
        })
    }

    /// Writes a snapshot of the held VM into `dir`.
    pub fn write(
        &self,
        held: &mut [HeldVcpu],
        dir: &Path,
        describe: &dyn Fn(&Captured) -> Result<format::Manifest, String>,
    ) -> Result<TakeReport, String> {
        let started = Instant::now();
        let captured = self.capture(held)?;
        let mut manifest = describe(&captured)?;
        let mut w = format::Writer::create(dir).map_err(|e| e.to_string())?;
        let mut ram_bytes = 0;
        w.add_with(&manifest.memory.clone(), |out| {
            ram_bytes = memory::write_sparse(&self.memory, self.mem_bytes, out)?;
            Ok(())
        })
        .map_err(|e| e.to_string())?;
        for (index, state) in &captured.vcpus {
            let name = format!("vcpu-{index}.bin");
            w.add(&name, &state.encode()).map_err(|e| e.to_string())?;
            manifest.vcpus.push((*index as u32, name));
        }
        w.add(&manifest.vm_state.clone(), &captured.vm.encode())
            .map_err(|e| e.to_string())?;
        for (name, bytes) in &captured.devices {
            let file = format!("device-{name}.bin");
            w.add(&file, bytes).map_err(|e| e.to_string())?;
            manifest.devices.push((name.to_string(), file));
        }
        for p in &captured.policies {
            let Some(record) = manifest.policies.iter_mut().find(|r| r.name == p.name) else {
                return Err(format!(
                    "policy {} changed while the snapshot was taken",
                    p.name
                ));
            };
            for (vcpu, state) in &p.states {
                let file = format!("policy-{}-vcpu-{vcpu}.state", p.slot);
                w.add(&file, state).map_err(|e| e.to_string())?;
                record.states.push((*vcpu as u32, file));
            }
        }
        w.finish(manifest).map_err(|e| e.to_string())?;
        Ok(TakeReport {
            vcpus: captured.vcpus.len(),
            ram_bytes,
            total_us: started.elapsed().as_micros() as u64,
        })
    }
}

/// Puts the built-in devices' state back by name.
pub(crate) fn restore_devices(
    builtins: &[Arc<dyn BuiltinDevice>],
    saved: &[(impl AsRef<str>, Vec<u8>)],
) -> Result<(), String> {
    for device in builtins {
        let Some((name, _)) = device.save() else {
            continue;
        };
        if let Some((_, bytes)) = saved.iter().find(|(n, _)| n.as_ref() == name) {
            device
                .restore(bytes)
                .map_err(|e| format!("device {name}: {e}"))?;
        }
    }
    Ok(())
}

/// Hands each of `h`'s policy instances its captured state, by slot and
/// name; `all` includes the policies that drive the snapshots (a restore
/// in a new process), which a reset leaves alone.
pub(crate) fn restore_policies(
    h: &mut HeldVcpu,
    saved: &[CapturedPolicy],
    all: bool,
) -> Result<(), String> {
    for p in saved {
        if p.drives && !all {
            continue;
        }
        let Some(Some(policy)) = h.policies.get_mut(p.slot) else {
            continue;
        };
        if policy.name != p.name {
            continue; // swapped for another since: it keeps its own state
        }
        if let Some((_, state)) = p.states.iter().find(|(v, _)| *v == h.index) {
            policy
                .instance
                .restore_state(state)
                .map_err(|e| format!("policy {}: restore-state failed: {e}", p.name))?;
        }
    }
    Ok(())
}

fn held_from(paused: Paused) -> Vec<HeldVcpu> {
    paused
        .vcpus
        .into_iter()
        .zip(paused.states)
        .map(|((index, policies), state)| HeldVcpu {
            index,
            policies,
            state,
            apply: None,
        })
        .collect()
}

fn handovers(held: Vec<HeldVcpu>) -> Vec<(usize, Handover)> {
    held.into_iter()
        .map(|h| {
            (
                h.index,
                Handover {
                    apply: h.apply,
                    ..Handover::unchanged(h.policies)
                },
            )
        })
        .collect()
}

impl SnapshotRequests for Snapshots {
    fn request(&self, vcpu: u32, op: SnapshotOp) -> Result<(), SnapshotRefusal> {
        if let Some(why) = &self.refusal {
            return Err(SnapshotRefusal::Unsupported(why.clone()));
        }
        if op == SnapshotOp::Reset && self.lock_baseline().is_none() {
            return Err(SnapshotRefusal::NoBaseline);
        }
        let slot = self
            .requests
            .get(vcpu as usize)
            .ok_or_else(|| SnapshotRefusal::Unsupported(format!("no vCPU {vcpu}")))?;
        let code = match op {
            SnapshotOp::Baseline => BASELINE,
            SnapshotOp::Reset => RESET,
        };
        slot.store(code, Ordering::Release);
        Ok(())
    }
}
