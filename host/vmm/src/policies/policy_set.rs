//! Turning a policy spec into a policy ready to serve: compiled (or taken
//! from the cache), instantiated on every vCPU and initialised, with its
//! subscriptions checked. The VM does this for its first policies and for
//! every hot swap, always before the policy handles a single exit.

use std::path::Path;
use std::sync::Arc;
use wasmvisor_exit::GuestRam;

use wasmvisor_exit::{InterruptLines, IrqAccess, MemoryProtector, ProtectionMap, Subscriptions};
use wasmvisor_policy::{
    CacheOutcome, InstanceContext, PolicyEngine, PolicyImage, PolicyInstance, Shared,
    SnapshotAccess, SnapshotRequests,
};

use crate::config::PolicySpec;
use crate::error::VmmError;
use crate::policies::ledger::OwnedProtector;
use crate::policies::slot::{PolicyHealth, VcpuPolicy};
use crate::vcpu::LentVcpu;

/// What preparing a policy needs from the VM.
#[derive(Clone)]
pub(crate) struct PolicyEnv {
    pub engine: PolicyEngine,
    pub memory: GuestRam,
    pub shared: Arc<Shared>,
    pub protector: Arc<dyn MemoryProtector>,
    /// The VM's interrupt lines, if it has an interrupt controller.
    pub irq: Option<Arc<dyn InterruptLines>>,
    pub ram_size: u64,
    pub vcpu_count: u32,
    /// Where the `snapshot-*` imports queue their requests; `None` for a
    /// VM that cannot be snapshotted.
    pub snapshots: Option<Arc<dyn SnapshotRequests>>,
}

/// One policy as the VM knows it, across its vCPUs.
pub(crate) struct Slot {
    pub name: String,
    pub spec: PolicySpec,
    pub subs: Subscriptions,
    /// The policy generation that loaded it.
    pub generation: u64,
    pub health: Arc<PolicyHealth>,
    pub protector: Arc<OwnedProtector>,
    pub cache: CacheOutcome,
}

/// A policy instantiated and initialised on every vCPU, not yet serving.
pub(crate) struct Prepared {
    /// An observer's own instance (`@observe`), which its draining thread
    /// calls; `None` for other policies.
    pub observer_instance: Option<PolicyInstance<LentVcpu>>,
    pub slot: Slot,
    /// By vCPU index.
    pub instances: Vec<PolicyInstance<LentVcpu>>,
}

/// The display name of `path`: its file stem.
pub(crate) fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// A name for a policy from `path` that no name in `taken` has: the stem,
/// else `stem#2`, `stem#3`...
pub(crate) fn unique_name<'a>(path: &Path, taken: impl Iterator<Item = &'a str> + Clone) -> String {
    let stem = stem(path);
    (1..)
        .map(|n| {
            if n == 1 {
                stem.clone()
            } else {
                format!("{stem}#{n}")
            }
        })
        .find(|candidate| !taken.clone().any(|t| t == candidate))
        .expect("some suffix is free")
}

impl PolicyEnv {
    /// Compiles, instantiates and initialises `spec` as policy `index`
    /// named `name`, and checks what its init asked for. Protections it
    /// asks for at init are checked here and applied by [`Prepared::activate`].
    pub fn prepare(
        &self,
        spec: &PolicySpec,
        index: usize,
        name: &str,
        generation: u64,
    ) -> Result<Prepared, VmmError> {
        let policy_err = |reason: String| VmmError::Policy {
            policy: name.to_string(),
            reason,
        };
        let image = PolicyImage::load_with(&self.engine, &spec.path, spec.sandbox.wasi)?;
        let cache = image.cache_outcome().clone();
        let protector = Arc::new(OwnedProtector::new(
            Arc::clone(&self.protector),
            self.ram_size,
        ));
        let mut instances = Vec::new();
        let mut first: Option<Subscriptions> = None;
        let context = |vcpu: u32| InstanceContext {
            policy_index: index,
            policy_name: name.to_string(),
            vcpu_index: vcpu,
            vcpu_count: self.vcpu_count,
            memory: self.memory.clone(),
            grants: spec.sandbox.grants,
            shared: Arc::clone(&self.shared),
            protector: Some(protector.clone() as Arc<dyn MemoryProtector>),
            irq: IrqAccess {
                lines: self.irq.clone(),
                granted: spec.sandbox.irq,
            },
            snapshots: SnapshotAccess {
                granted: spec.sandbox.snapshot,
                vm: self.snapshots.clone(),
            },
        };
        for vcpu in 0..self.vcpu_count {
            let ctx = context(vcpu);
            let mut inst = image.instantiate::<LentVcpu>(ctx, &spec.sandbox.limits)?;
            let sub = inst.init(&spec.config)?;
            match &first {
                None => {
                    self.check(spec, &sub).map_err(policy_err)?;
                    first = Some(sub);
                }
                Some(f) if *f != sub => {
                    return Err(policy_err(format!(
                        "init on vcpu {vcpu} returned different subscriptions than on vcpu 0"
                    )))
                }
                Some(_) => {}
            }
            instances.push(inst);
        }
        // An observer's own instance, for its draining thread: it serves
        // every vCPU's exits (as vCPU 0's instance, for its imports).
        let observer_instance = match spec.sandbox.observe {
            Some(_) => {
                let mut inst = image.instantiate::<LentVcpu>(context(0), &spec.sandbox.limits)?;
                inst.init(&spec.config)?;
                Some(inst)
            }
            None => None,
        };
        Ok(Prepared {
            observer_instance,
            slot: Slot {
                name: name.to_string(),
                spec: spec.clone(),
                subs: first.unwrap_or_default(),
                generation,
                health: Arc::new(PolicyHealth::new(spec.sandbox.quarantine_after)),
                protector,
                cache,
            },
            instances,
        })
    }

    /// What the host cannot honour or the operator did not grant.
    fn check(&self, spec: &PolicySpec, sub: &Subscriptions) -> Result<(), String> {
        if let Some(reason) = sub.unsupported().into_iter().next() {
            return Err(reason);
        }
        if let Some(reason) = wasmvisor_exit::constants_outside(sub) {
            return Err(reason);
        }
        if let Some(cap) = spec.sandbox.missing_grant(sub.capabilities) {
            return Err(format!(
                "asks for the {cap} capability, which was not granted (grant it with @grant={cap})"
            ));
        }
        if !sub.protect.is_empty() && !spec.sandbox.grants.protect_memory {
            return Err("protects memory at init without the protect-memory capability (grant it with @grant=protect-memory)".into());
        }
        // Dry run on an empty map, so a bad range is refused before the
        // policy is switched in rather than half-way through.
        let mut scratch = ProtectionMap::new(self.ram_size);
        for req in &sub.protect {
            scratch.protect(req.range, req.mode).map_err(|e| {
                format!(
                    "cannot protect {:#x}+{:#x}: {e}",
                    req.range.base, req.range.len
                )
            })?;
        }
        Ok(())
    }
}

impl Prepared {
    /// Applies the protections the policy asked for at init.
    pub fn activate(&self) -> Result<(), VmmError> {
        for req in &self.slot.subs.protect {
            self.slot
                .protector
                .protect(req.range, req.mode)
                .map_err(|e| VmmError::Policy {
                    policy: self.slot.name.clone(),
                    reason: format!(
                        "cannot protect {:#x}+{:#x}: {e}",
                        req.range.base, req.range.len
                    ),
                })?;
        }
        Ok(())
    }
}

impl Slot {
    /// How a vCPU thread holds this policy, given its instance there.
    pub fn for_vcpu(&self, instance: PolicyInstance<LentVcpu>) -> VcpuPolicy {
        VcpuPolicy {
            name: self.name.clone(),
            instance,
            grants: self.spec.sandbox.grants,
            on_fault: self.spec.sandbox.on_fault,
            health: Arc::clone(&self.health),
            protector: Arc::clone(&self.protector),
            constants: self.subs.constants.clone(),
            drives_snapshots: self.spec.sandbox.snapshot,
            observer: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stems_made_unique() {
        let p = Path::new("/x/serial.wasm");
        assert_eq!(unique_name(p, [].iter().copied()), "serial");
        assert_eq!(unique_name(p, ["serial"].iter().copied()), "serial#2");
        assert_eq!(
            unique_name(p, ["serial", "serial#2", "noop"].iter().copied()),
            "serial#3"
        );
        // A freed name is reused.
        assert_eq!(unique_name(p, ["serial#2"].iter().copied()), "serial");
    }
}
