//! The vCPU threads: the run loop (`worker`), exit dispatch (`dispatch`,
//! testable without KVM), and the
//! embedder's hook that sees every exit before the policies (`hook`).

pub(crate) mod dispatch;
pub(crate) mod hook;
pub(crate) mod worker;
