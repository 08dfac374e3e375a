//! wasmvisor's VMM: turns a configuration into a running VM whose exits
//! go through the policy pipeline, and reports how it ended.

pub mod acpi;
mod bar_maps;
mod builtin;
pub mod config;
pub mod control;
mod cpuid;
mod debug_exit;
mod error;
pub mod hotswap;
mod i8042;
mod ledger;
pub mod linux;
pub mod loader;
mod machine;
mod native;
pub mod outcome;
pub mod pci;
mod policy_set;
pub mod pvh;
mod quiesce;
pub mod sandbox;
mod serial;
mod signals;
pub mod stats;
mod vcpu_loop;

pub use error::VmmError;
pub use machine::{run, run_with_native, RunReport, DEFAULT_LOAD_ADDR};
pub use native::NativeHandler;
