//! The `snapshot-baseline` and `snapshot-reset` imports: a policy asks,
//! the VM acts once the exit in flight is complete (`docs/snapshots.md`).
//!
//! The policy crate only queues the request; the VM that owns the vCPUs
//! implements [`SnapshotRequests`] and carries it out between exits, where
//! every vCPU can be held.

use std::fmt;
use std::sync::Arc;

/// What a policy asks of the VM's snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum SnapshotOp {
    /// Take the baseline once this exit is complete.
    Baseline,
    /// Put the VM back to the baseline once this exit is answered.
    Reset,
}

/// Why the VM refused a request; both surface as `host-error.unsupported`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotRefusal {
    /// No baseline to reset to yet.
    NoBaseline,
    /// This VM cannot be snapshotted (passed-through devices).
    Unsupported(String),
}

/// The VM side of the imports.
pub trait SnapshotRequests: Send + Sync {
    /// Queues `op` for the exit vCPU `vcpu` is handling now.
    fn request(&self, vcpu: u32, op: SnapshotOp) -> Result<(), SnapshotRefusal>;
}

/// What one policy instance may do with snapshots.
#[derive(Clone, Default)]
pub struct SnapshotAccess {
    /// The operator granted `@grant=snapshot`.
    pub granted: bool,
    /// The VM's request queue; `None` where the VM offers no snapshots.
    pub vm: Option<Arc<dyn SnapshotRequests>>,
}

impl fmt::Debug for SnapshotAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotAccess")
            .field("granted", &self.granted)
            .field("vm", &self.vm.is_some())
            .finish()
    }
}
