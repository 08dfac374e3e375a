//! What each policy store holds: the instance's context, its WASI state,
//! its limiter, and the slot the vCPU is lent into for the length of an
//! exit call.
//!
//! The store data does not depend on the vCPU type, so one pre-linked
//! image serves any [`VcpuAccess`] implementation: the slot is a boxed
//! `Option<V>` behind a small trait, allocated once per instance, and the
//! vCPU is swapped in and out of it without allocating.

use std::any::Any;
use std::sync::Arc;
use wasmvisor_exit::GuestRam;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmvisor_exit::{
    Capabilities, Constant, IrqAccess, MemoryProtector, Reg, VcpuAccess, VcpuAccessError,
};

use crate::limits::{Limits, StoreLimiter};
use crate::sinks::Shared;

/// Everything the host imports of one (policy, vCPU) instance need.
/// Cheap to clone per vCPU.
#[derive(Clone)]
pub struct InstanceContext {
    /// Index of the policy in the VM's policy list (keys its counters).
    pub policy_index: usize,
    /// Name used in logs, events and errors.
    pub policy_name: String,
    /// The vCPU this instance serves.
    pub vcpu_index: u32,
    /// Number of vCPUs in the VM.
    pub vcpu_count: u32,
    /// Guest RAM, for `read-phys` and `write-phys`.
    pub memory: GuestRam,
    /// The capabilities the operator granted this policy.
    pub grants: Capabilities,
    /// Console, log, events and counters.
    pub shared: Arc<Shared>,
    /// Page protections, if the VM offers them: per policy, so the VM can
    /// tell which pages a policy protected when it is swapped out.
    pub protector: Option<Arc<dyn MemoryProtector>>,
    /// Interrupt lines, and which this policy may drive.
    pub irq: IrqAccess,
    /// The `snapshot-*` imports: whether granted, and the VM's queue.
    pub snapshots: crate::SnapshotAccess,
}

impl std::fmt::Debug for InstanceContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceContext")
            .field("policy_index", &self.policy_index)
            .field("policy_name", &self.policy_name)
            .field("vcpu_index", &self.vcpu_index)
            .field("vcpu_count", &self.vcpu_count)
            .field("grants", &self.grants)
            .field("irq", &self.irq)
            .field("snapshots", &self.snapshots)
            .finish_non_exhaustive()
    }
}

/// The vCPU slot, type-erased: `Option<V>` for the instance's `V`.
pub(crate) trait VcpuSlot: Any + Send {
    /// Reads a register of the lent vCPU; `None` if none is lent.
    fn get_reg(&mut self, reg: Reg) -> Option<Result<u64, VcpuAccessError>>;
    /// The lent vCPU, if any.
    fn access(&mut self) -> Option<&mut dyn VcpuAccess>;
}

impl<V: VcpuAccess + Send + 'static> VcpuSlot for Option<V> {
    fn get_reg(&mut self, reg: Reg) -> Option<Result<u64, VcpuAccessError>> {
        self.as_mut().map(|vcpu| vcpu.get_reg(reg))
    }

    fn access(&mut self) -> Option<&mut dyn VcpuAccess> {
        self.as_mut().map(|vcpu| vcpu as &mut dyn VcpuAccess)
    }
}

/// The data of one policy store.
pub(crate) struct Ctx {
    pub(crate) inst: InstanceContext,
    pub(crate) limiter: StoreLimiter,
    /// The vCPU while an exit call runs, empty otherwise.
    pub(crate) vcpu: Box<dyn VcpuSlot>,
    /// A vCPU backend failure met by a host import during the current
    /// call; it turns the resulting trap into [`crate::CallError::Vcpu`].
    pub(crate) fault: Option<VcpuAccessError>,
    /// The vCPU thread's CPU time when the current call's epoch deadline
    /// first fired; `None` until then (reset before each call).
    pub(crate) cpu_mark: Option<std::time::Duration>,
    /// Constant answers declared so far; `Some` only while `init` runs,
    /// the one time they may be declared.
    pub(crate) constants: Option<Vec<Constant>>,
    /// Import calls of the current export call, when recording or
    /// replaying.
    pub(crate) tape: Option<crate::tape::Tape>,
    /// Counters by `counter-handle` handle.
    pub(crate) counter_handles: Vec<crate::sinks::Counter>,
    wasi: WasiCtx,
    table: ResourceTable,
}

impl Ctx {
    /// Fresh store data for an instance serving vCPUs of type `V`.
    pub(crate) fn new<V: VcpuAccess + Send + 'static>(
        inst: InstanceContext,
        limits: &Limits,
        wasi: crate::wasi::WasiGrants,
    ) -> Ctx {
        Ctx {
            inst,
            limiter: StoreLimiter::new(limits),
            vcpu: Box::new(None::<V>),
            fault: None,
            cpu_mark: None,
            constants: None,
            tape: None,
            counter_handles: Vec::new(),
            wasi: crate::wasi::ctx(wasi),
            table: ResourceTable::new(),
        }
    }

    /// Swaps `vcpu` with the slot's content: called once to lend the vCPU
    /// and once more to take it back.
    pub(crate) fn swap_vcpu<V: 'static>(&mut self, vcpu: &mut Option<V>) {
        let slot: &mut dyn Any = &mut *self.vcpu;
        if let Some(slot) = slot.downcast_mut::<Option<V>>() {
            std::mem::swap(slot, vcpu);
        }
    }
}

impl WasiView for Ctx {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}
