//! wasmvisor's VMM: turns a configuration into a running VM whose exits
//! go through the policy pipeline, and reports how it ended.

#![forbid(unsafe_code)]

pub mod boot;
pub mod config;
pub mod control;
pub mod devices;
mod error;
pub mod gdb;
mod machine;
pub mod outcome;
pub mod policies;
mod signals;
pub mod snapshot;
pub mod stats;
mod units;
mod vcpu;

// The paths other crates and the fuzz targets use.
pub use boot::{acpi, linux, loader, pvh};
pub use devices::pci;
pub use policies::{hotswap, sandbox};

pub use error::VmmError;
pub use machine::{run, run_with_hook, Remains, RunReport, DEFAULT_LOAD_ADDR};
pub use vcpu::hook::ExitHook;
