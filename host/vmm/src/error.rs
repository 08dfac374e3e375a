//! Errors that stop a VM from being built.

use thiserror::Error;
use wasmvisor_kvm::KvmError;
use wasmvisor_policy::PolicyError;

use crate::config::ConfigError;

/// The VM could not be built or started.
#[derive(Debug, Error)]
pub enum VmmError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Usage(String),
    #[error("cannot read {what} {path}: {reason}")]
    Read {
        what: &'static str,
        path: String,
        reason: String,
    },
    #[error("guest {path}: {reason}")]
    Guest { path: String, reason: String },
    #[error(transparent)]
    Kvm(#[from] KvmError),
    #[error(transparent)]
    PolicyLoad(#[from] PolicyError),
    #[error("policy {policy}: {reason}")]
    Policy { policy: String, reason: String },
    #[error("cannot route exits: {0}")]
    Routes(String),
    #[error("{0}")]
    Engine(String),
    #[error(transparent)]
    Linux(#[from] crate::boot::linux::LinuxError),
    #[error("--kernel-profile: {0}")]
    KernelProfile(String),
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    #[error("--gdb: {0}")]
    Gdb(String),
}
