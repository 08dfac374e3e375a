//! Errors from KVM setup and the run loop.

use thiserror::Error;

/// A KVM operation failed.
#[derive(Debug, Error)]
pub enum KvmError {
    /// `/dev/kvm` could not be opened.
    #[error("cannot open /dev/kvm: {0} (is KVM available and readable by this user?)")]
    Open(#[source] kvm_ioctls::Error),
    /// A KVM ioctl failed.
    #[error("{op} failed: {source}")]
    Ioctl {
        op: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM lacks something wasmvisor needs.
    #[error("KVM lacks {0}, which wasmvisor needs")]
    MissingCapability(&'static str),
    /// Guest RAM could not be created.
    #[error("cannot allocate {size} bytes of guest RAM: {reason}")]
    Memory { size: u64, reason: String },
    /// Writing boot structures into guest RAM failed.
    #[error("cannot write {what} into guest RAM: {reason}")]
    BootWrite { what: &'static str, reason: String },
    /// The requested boot state is impossible.
    #[error("{0}")]
    BadBootState(String),
    /// KVM refused the guest-debug state (breakpoints, single-step) the
    /// run loop needed while the guest ran.
    #[error("cannot set the vCPU's debug state: {0}")]
    Debug(String),
}

impl KvmError {
    pub(crate) fn ioctl(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> KvmError {
        move |source| KvmError::Ioctl { op, source }
    }
}
