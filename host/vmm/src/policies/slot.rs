//! One loaded policy as a vCPU thread holds it (`VcpuPolicy`: its
//! instance on that vCPU, grants, fault mode, constants, protections), and
//! the fault count and quarantine its instances on every vCPU share
//! (`PolicyHealth`). The run loop, the policy set and the quiesce code all
//! hold these; none of them owns the type.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use wasmvisor_exit::{Capabilities, Constant};
use wasmvisor_policy::PolicyInstance;

use crate::policies::ledger::OwnedProtector;
use crate::policies::sandbox::OnFault;
use crate::vcpu::LentVcpu;

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

    pub(crate) fn is_quarantined(&self) -> bool {
        self.quarantined.load(Ordering::Relaxed)
    }

    /// Counts a fault; returns the total and whether this one tipped the
    /// policy into quarantine.
    pub(crate) fn record(&self) -> (u64, bool) {
        let n = self.faults.fetch_add(1, Ordering::AcqRel) + 1;
        let tip = self.quarantine_after != 0
            && n >= self.quarantine_after
            && !self.quarantined.swap(true, Ordering::AcqRel);
        (n, tip)
    }
}

/// One loaded policy as a vCPU thread holds it.
pub(crate) struct VcpuPolicy<V = LentVcpu> {
    pub name: String,
    pub instance: PolicyInstance<V>,
    pub grants: Capabilities,
    pub on_fault: OnFault,
    pub health: Arc<PolicyHealth>,
    /// Its handle on page protections, which remembers what it protected.
    pub protector: Arc<OwnedProtector>,
    /// Answers it declared at init, given by the host without a call.
    pub constants: Vec<Constant>,
    /// It holds `@grant=snapshot`: a reset leaves its state alone.
    pub drives_snapshots: bool,
    /// An observer (`@observe`): its exits go into this vCPU's ring
    /// instead of a call.
    pub observer: Option<Arc<crate::policies::observer::ObserverRing>>,
}
