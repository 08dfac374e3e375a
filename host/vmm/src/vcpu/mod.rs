//! The vCPU threads: the run loop (`worker`), exit dispatch (`dispatch`,
//! testable without KVM), and the
//! embedder's hook that sees every exit before the policies (`hook`).

pub(crate) mod dispatch;
pub(crate) mod hook;
pub(crate) mod worker;

/// The vCPU as the exit path holds it: boxed, so that lending it to a
/// policy's store for a call moves a pointer, not the whole `Vcpu`.
pub(crate) type LentVcpu = Box<wasmvisor_kvm::Vcpu>;
