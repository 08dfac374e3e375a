//! wasmvisor's only door to KVM.
//!
//! This crate owns every kvm-ioctls call and every `unsafe` block that
//! touches KVM or guest-memory mappings. It builds the VM and its RAM,
//! puts vCPUs into real, protected or long mode, turns a `KVM_RUN` exit
//! into an owned [`wasmvisor_exit::ExitEvent`], writes the answer back into
//! `kvm_run`, and kicks vCPUs out of the kernel when the VM must stop.

mod boot;
mod cpuid;
pub mod decode;
mod error;
mod irq_routes;
mod kick;
mod memslots;
mod probe;
pub mod sections;
pub mod teardown;
mod vcpu;
mod vm;
mod vm_state;

pub use boot::{BootMode, BootState, LinuxEntry, HOST_RESERVED_END, MAX_BOOT_VCPUS};
pub use cpuid::CpuidEntry;
pub use error::KvmError;
pub use irq_routes::{IrqRoutes, FIRST_MSI_GSI};
pub use kick::{install_kick_handler, KickList, Kicker};
pub use memslots::{DeviceSlot, MemSlots};
pub use probe::{traps_data_breakpoints, traps_int3};
pub use vcpu::{DebuggerRegs, FatalExit, RunOutcome, Vcpu, VcpuState};
pub use vm::{Vm, MMIO_HOLE_START};
pub use vm_state::VmState;
